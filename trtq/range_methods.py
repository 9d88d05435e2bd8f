"""Every INT8 range method trtq knows, in one table that every other module reads.

Why one table: a method's name, the names users bring for it from other tools, the TensorRT 10 calibrator class
that implements it and the algorithm word its calibration cache carries were spread over ten lists in six modules
(calibrate, quantize, build, the cache writer, the TensorRT layer), and a method added to one list and not to
another was accepted by one command and refused by the next. The lists those modules use are views of this table.
"""

from __future__ import annotations

from dataclasses import dataclass

AUTO = "auto"  # ``trtq quantize`` / ``--calibrator auto``: a measured choice among the methods trtq computes
AUTO_CACHE_HEADER = "EntropyCalibration2"  # what TensorRT 10 reads trtq-computed ranges through (trtexec too)


@dataclass(frozen=True)
class RangeMethod:
    name: str
    tensorrt_class: str | None  # the TensorRT 10.x calibrator that computes it (all removed in 11); None: trtq only
    cache_header: str  # the algorithm word of its calibration cache's header
    trtq_computes: bool  # trtq derives it from its own statistics (``trtq calibrate``, ``quantize``, ``export``)
    aliases: tuple[str, ...] = ()  # the names other tools give exactly this method


RANGE_METHODS: tuple[RangeMethod, ...] = (
    RangeMethod("entropy2", "IInt8EntropyCalibrator2", "EntropyCalibration2", True),
    RangeMethod("entropy", "IInt8EntropyCalibrator", "EntropyCalibration", True),
    # ModelOpt's ``max`` and onnxruntime's symmetric ``MinMax`` compute exactly this (ModelOpt: "with
    # ActivationSymmetric ... equivalent to max"); onnxruntime's Entropy and Percentile are not aliased: other
    # searches and defaults than TensorRT's and trtq's
    RangeMethod("minmax", "IInt8MinMaxCalibrator", "MinMaxCalibration", True, ("max", "MinMax")),
    # trtq-only methods reach TensorRT 10 through an EntropyCalibrator2 that never sees a batch, so their cache
    # carries that header (trtexec --calib also reads caches through an IInt8EntropyCalibrator2)
    RangeMethod("percentile", None, "EntropyCalibration2", True),
    RangeMethod("mse", None, "EntropyCalibration2", True),
    RangeMethod("legacy", "IInt8LegacyCalibrator", "LegacyCalibration", False),
)

TRTQ_METHODS = tuple(m.name for m in RANGE_METHODS if m.trtq_computes)
TENSORRT_CLASSES = {m.name: m.tensorrt_class for m in RANGE_METHODS if m.tensorrt_class is not None}
TRTQ_ONLY = tuple(m.name for m in RANGE_METHODS if m.tensorrt_class is None)
# the header word of each method TensorRT computes, then of every cache trtq writes (its own methods and auto)
TENSORRT_CACHE_HEADERS = {m.name: m.cache_header for m in RANGE_METHODS if m.tensorrt_class is not None}
CACHE_HEADERS = {**TENSORRT_CACHE_HEADERS, **{m.name: m.cache_header for m in RANGE_METHODS}, AUTO: AUTO_CACHE_HEADER}
ALIASES = {alias: m.name for m in RANGE_METHODS for alias in m.aliases}
