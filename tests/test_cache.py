"""TensorRT calibration cache: format details and the round trip of a real cache."""

from __future__ import annotations

import struct

import pytest

from tests.conftest import DATA
from trtq.cache import (
    CalibrationCache,
    cache_from_amax,
    hex_to_scale,
    parse_cache,
    read_cache,
    scale_to_hex,
    version_code,
    write_cache,
)
from trtq.errors import TrtqError

REAL_CACHE = DATA / "trt-10.0-entropy2-hackathon.cache"


def test_real_cache_round_trips_byte_for_byte(tmp_path):
    cache = read_cache(REAL_CACHE)
    assert cache.header == "TRT-100001-EntropyCalibration2"
    assert list(cache.scales) == ["inputT0", "(Unnamed Layer* 0) [PluginV3_V3ONE]_output", "outputT0"]
    out = write_cache(tmp_path / "copy.cache", cache)
    assert out.read_bytes() == REAL_CACHE.read_bytes()


def test_real_cache_values_decode_as_big_endian_float32():
    cache = read_cache(REAL_CACHE)
    assert cache.scales["inputT0"] == struct.unpack(">f", bytes.fromhex("3ebfcfb9"))[0]
    assert cache.amax()["outputT0"] == pytest.approx(0.38250762 * 127, rel=1e-6)


def test_known_scale_from_tensorrt_notes():
    # images: 3c00f9f4 -> 0.0078721 -> amax 0.99976 (an input in [0, 1])
    assert hex_to_scale("3c00f9f4") * 127 == pytest.approx(0.99976, abs=1e-5)
    assert scale_to_hex(hex_to_scale("3c00f9f4")) == "3c00f9f4"


def test_unpadded_hex_and_names_with_colons_and_spaces():
    text = (
        "TRT-8401-EntropyCalibration2\n366: 0\nInput:0: 3c010a14\n"
        "(Unnamed Layer* 4) [Fully Connected]_output: 3dc6a9ed\n"
    )
    cache = parse_cache(text)
    assert cache.scales["366"] == 0.0
    assert cache.scales["Input:0"] == pytest.approx(0.0078759, rel=1e-4)
    assert "(Unnamed Layer* 4) [Fully Connected]_output" in cache.scales
    assert scale_to_hex(0.0) == "00000000"  # trtq always writes 8 digits


@pytest.mark.parametrize(
    ("version", "code"), [("10.16.1", "101601"), ("10.0.1", "100001"), ("8.6.0", "8600"), ("8.4.1", "8401"),
                          ("11.4.0.106", "110400")],
)
def test_version_codes(version, code):
    assert version_code(version) == code


def test_headers_per_calibrator():
    amax = {"x": 1.0}
    assert cache_from_amax(amax, "entropy2").header == "TRT-101601-EntropyCalibration2"
    assert cache_from_amax(amax, "minmax", "10.0.1").header == "TRT-100001-MinMaxCalibration"
    assert cache_from_amax(amax, "entropy").header.endswith("-EntropyCalibration")
    assert cache_from_amax(amax, "legacy").header.endswith("-LegacyCalibration")
    # trtq-only methods are served to TensorRT through an EntropyCalibrator2 (as trtexec --calib does)
    assert cache_from_amax(amax, "percentile").header.endswith("-EntropyCalibration2")


def test_scale_is_amax_over_127_in_float32():
    cache = cache_from_amax({"t": 254.0}, "minmax")
    assert cache.scales["t"] == struct.unpack(">f", struct.pack(">f", 2.0))[0]
    assert cache.to_bytes().decode().splitlines()[1] == "t: 40000000"


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "empty"), ("hello\nx: 1\n", "not a TensorRT calibration cache"),
     ("TRT-101601-EntropyCalibration2\nx 3c00f9f4\n", "line 2"),
     ("TRT-101601-EntropyCalibration2\nx: zz\n", "line 2")],
)
def test_bad_caches_name_the_problem(text, message):
    with pytest.raises(TrtqError, match=message):
        parse_cache(text)


def test_missing_cache_file(tmp_path):
    with pytest.raises(TrtqError, match="not found"):
        read_cache(tmp_path / "nope.cache")


def test_matches_checks_version_and_algorithm():
    cache = CalibrationCache("101601", "EntropyCalibration2")
    assert cache.matches("101601", "EntropyCalibration2")
    assert not cache.matches("100001", "EntropyCalibration2")
    assert not cache.matches("101601", "MinMaxCalibration")
