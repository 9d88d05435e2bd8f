"""TensorRT's native calibration cache: ``TRT-<version>-<Algo>`` then ``name: <hex>`` lines.

``<hex>`` is the IEEE-754 float32 bit pattern of the *scale* (amax/127) printed as a big-endian
hex integer. TensorRT itself prints it without zero padding; trtq writes 8 digits and reads both.
Tensor names may contain spaces, brackets and ``:`` — each line is split at its last ``": "``.
"""

from __future__ import annotations

import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from trtq.errors import TrtqError
from trtq.fileio import atomic_write, read_input_bytes
from trtq.range_methods import CACHE_HEADERS, TENSORRT_CACHE_HEADERS

DEFAULT_TRT_VERSION = "10.16.1"

# calibrator name -> algorithm word in the cache header (TensorRT's CalibrationAlgoType): views of
# :data:`trtq.range_methods.RANGE_METHODS`, the methods TensorRT computes, then every cache trtq writes
ALGORITHM_NAMES = TENSORRT_CACHE_HEADERS
HEADER_ALGORITHM = CACHE_HEADERS

_HEADER = re.compile(r"^TRT-(\d+)-([A-Za-z0-9]+)$")


def version_code(version: str) -> str:
    """``NV_TENSORRT_VERSION`` as TensorRT prints it in the header.

    10.x and later: major*10000 + minor*100 + patch (10.16.1 -> 101601; 10.0.1 -> 100001).
    8.x and earlier: major*1000 + minor*100 + patch (8.6.0 -> 8600).
    """
    parts = version.strip().split(".")
    try:
        major, minor, patch = (int(p) for p in (parts + ["0", "0"])[:3])
    except ValueError as exc:
        raise TrtqError(f"bad TensorRT version '{version}': expected MAJOR.MINOR.PATCH, e.g. 10.16.1") from exc
    if major >= 10:
        return str(major * 10000 + minor * 100 + patch)
    return str(major * 1000 + minor * 100 + patch)


def scale_to_hex(scale: float) -> str:
    """float32 bits of ``scale`` as 8 lowercase hex digits (big-endian)."""
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"scale must be finite and non-negative, got {scale}")
    return struct.pack(">f", scale).hex()


def hex_to_scale(text: str) -> float:
    """Inverse of :func:`scale_to_hex`; accepts TensorRT's unpadded form (``0``, ``3c00f9f4``)."""
    text = text.strip().lower()
    if text.startswith("0x"):
        text = text[2:]
    if not text or len(text) > 8 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"not a float32 hex pattern: '{text}'")
    return struct.unpack(">f", bytes.fromhex(text.zfill(8)))[0]


@dataclass
class CalibrationCache:
    """The contents of a cache file. ``scales`` maps tensor name -> scale (= amax/127)."""

    version: str  # numeric code as in the header, e.g. "101601"
    algorithm: str  # the header word, e.g. EntropyCalibration2
    scales: dict[str, float] = field(default_factory=dict)

    @property
    def header(self) -> str:
        return f"TRT-{self.version}-{self.algorithm}"

    def amax(self) -> dict[str, float]:
        """Tensor name -> amax (= scale * 127), the dynamic range TensorRT derives."""
        return {name: float(scale) * 127.0 for name, scale in self.scales.items()}

    def to_bytes(self) -> bytes:
        """The file's bytes. A zero scale is never written (see :func:`cache_from_amax`)."""
        lines = [self.header]
        lines.extend(f"{name}: {scale_to_hex(scale)}" for name, scale in self.scales.items() if scale != 0.0)
        return ("\n".join(lines) + "\n").encode()

    def matches(self, version: str, algorithm: str) -> bool:
        """True when TensorRT ``version`` (code) with ``algorithm`` would accept this cache."""
        return self.version == version and self.algorithm == algorithm


def parse_cache(data: bytes | str, source: str = "cache") -> CalibrationCache:
    """Parse a TensorRT calibration cache; errors name the file and line."""
    text = data.decode("utf-8", errors="strict") if isinstance(data, bytes) else data
    lines = text.splitlines()
    if not lines:
        raise TrtqError(f"{source} is empty; a TensorRT calibration cache starts with a TRT-<version>-<Algo> line")
    match = _HEADER.match(lines[0].strip())
    if not match:
        raise TrtqError(
            f"{source} is not a TensorRT calibration cache: first line is '{lines[0][:60]}', "
            "expected TRT-<version>-<Algo>"
        )
    cache = CalibrationCache(version=match.group(1), algorithm=match.group(2))
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(": ")
        if not sep:
            name, sep, value = line.rpartition(":")
        if not sep or not name:
            raise TrtqError(f"{source} line {number}: expected '<tensor name>: <hex scale>', got '{line[:80]}'")
        try:
            cache.scales[name] = hex_to_scale(value)
        except ValueError as exc:
            raise TrtqError(f"{source} line {number}: {exc}") from exc
    return cache


def read_cache(path: str | os.PathLike) -> CalibrationCache:
    cache_path = Path(path)
    data = read_input_bytes(cache_path, "calibration cache")
    try:
        return parse_cache(data, source=str(cache_path))
    except UnicodeDecodeError as exc:
        raise TrtqError(f"{cache_path} is not a TensorRT calibration cache (binary data)") from exc


def cache_from_amax(
    amax: dict[str, float], calibrator: str, trt_version: str = DEFAULT_TRT_VERSION
) -> CalibrationCache:
    """Build a cache for ``calibrator``'s ranges (name -> amax) as TensorRT ``trt_version`` writes it.

    A range whose float32 scale is 0 (an all-zero tensor, no finite value) gets no entry: TensorRT then
    keeps that tensor's layers out of INT8 with its "Missing scale" warning, where a zero scale is
    suspected of failing builds (TensorRT#4446, #3020) and a tiny one would crush real values to 0.
    """
    try:
        algorithm = HEADER_ALGORITHM[calibrator]
    except KeyError as exc:
        raise TrtqError(f"unknown calibrator '{calibrator}' (known: {', '.join(HEADER_ALGORITHM)})") from exc
    scales = {}
    for name, value in amax.items():
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"amax of '{name}' must be finite and non-negative, got {value}")
        scale = _float32_scale(value)
        if scale != 0.0:
            scales[name] = scale
    return CalibrationCache(version=version_code(trt_version), algorithm=algorithm, scales=scales)


def _float32_scale(amax: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", amax / 127.0))[0])


def scale_is_zero(amax: float) -> bool:
    """True when ``amax`` gives a float32 scale of 0 (amax 0, or below ~1.8e-43): no cache entry."""
    return math.isfinite(amax) and amax >= 0 and _float32_scale(amax) == 0.0


def write_cache(path: str | os.PathLike, cache: CalibrationCache) -> Path:
    return atomic_write(path, cache.to_bytes())
