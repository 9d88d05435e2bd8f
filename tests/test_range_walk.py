"""The served-cache network walk (issue 15) on stand-in networks, without TensorRT.

The same walk runs on the REAL 10.16 enums and ``trt.Weights`` in test_trt_api_conformance.py
(``test_network_walk_runs_on_the_real_enums_and_weights``), which also checks that every name it uses
exists in the real bindings. Not verified anywhere here: what TensorRT does with the ranges at build time.
"""

from __future__ import annotations

import enum
import types

import numpy as np
import pytest

from tests.fake_network import CACHE, EXPECTED_COUNTS, EXPECTED_SET, FakeLayer, FakeNetwork, FakeTensor, parsed_block
from trtq.trt.range_walk import set_network_ranges


class _Weights:
    def __init__(self, array):
        self._array = np.asarray(array)

    def numpy(self):
        return self._array


def fake_trt():
    data_type = enum.Enum("DataType", "FLOAT HALF BF16 INT8 INT32 INT64 BOOL UINT8")
    layer_type = enum.Enum("LayerType", "CONSTANT SHUFFLE IDENTITY CAST SLICE SQUEEZE UNSQUEEZE ELEMENTWISE "
                                        "CONVOLUTION ACTIVATION")
    return types.SimpleNamespace(DataType=data_type, LayerType=layer_type, Weights=_Weights,
                                 IConstantLayer=type("IConstantLayer", (), {}), __version__="10.16.1.11")


def test_walk_covers_parser_tensors_from_weights_and_their_broadcasts():
    trt = fake_trt()
    network = parsed_block(trt)
    lines = []
    report = set_network_ranges(trt, network, CACHE, echo=lines.append)
    assert report.as_dict() == EXPECTED_COUNTS
    assert report.set_by_walk == pytest.approx(EXPECTED_SET)
    tensors = network.tensors()
    for name, amax in EXPECTED_SET.items():
        assert tensors[name].assignments == [(-amax, amax)], name
    assert tensors["x"].assignments == [] and tensors["y"].assignments == []  # served by the calibrator
    assert tensors["shape_output"].assignments == [] and tensors["flag"].assignments == []  # int64, bool
    assert tensors["zeros_output"].dynamic_range is None  # a range of 0 is never set
    assert lines == ["trtq: network ranges: 2 tensors from the cache, 2 from weights, 4 from the walk, "
                     "5 without a range (conv_out, zeros_output, bf16_output, z, z_reshaped)"]


def test_a_range_set_before_the_walk_is_kept_and_propagated():
    trt = fake_trt()
    dt, lt = trt.DataType, trt.LayerType
    a, b = FakeTensor("a", dt.FLOAT), FakeTensor("b", dt.FLOAT)
    a.dynamic_range = (-4.0, 4.0)
    network = FakeNetwork([a], [FakeLayer(lt.IDENTITY, [a], [b])])
    report = set_network_ranges(trt, network, {})
    assert report.as_dict() == {"cache": 0, "weights": 0, "walk": 1, "none": 0, "without": []}
    assert a.assignments == [(-4.0, 4.0)] and b.assignments == [(-4.0, 4.0)]


def test_configure_implicit_runs_the_walk_on_the_served_path(monkeypatch, tmp_path):
    """build._configure_implicit: the served calibrator gets the cache, the network its walked ranges, and
    the counts reach the manifest through the calibrator."""
    from trtq.trt import build, calibrators, implicit
    from trtq.trt.plan import IMPLICIT, BuildPlan

    trt = fake_trt()
    network = parsed_block(trt)
    made = {}

    def make_calibrator(trt_module, algorithm, **options):
        made.update(options, algorithm=algorithm)
        return types.SimpleNamespace(expected_header="TRT-101601-EntropyCalibration2", close=lambda: None)

    monkeypatch.setattr(calibrators, "make_calibrator", make_calibrator)
    monkeypatch.setattr(implicit, "set_precision_flags", lambda *a, **k: None)
    monkeypatch.setattr(implicit, "apply_keep_precision", lambda *a, **k: {})
    monkeypatch.setattr(implicit, "attach_calibrator", lambda *a, **k: None)
    info = types.SimpleNamespace(patch_version="10.16.1")
    plan = BuildPlan(IMPLICIT, "10.16.1.11", False, True, "percentile", "trtq", "test")
    options = build.BuildOptions(engine_path=tmp_path / "m.engine", int8=True, calibrator="percentile")
    ranges = build.TrtqRanges(dict(CACHE), "test ranges", False)
    lines = []
    calibrator, kept = build._configure_implicit(trt, info, plan, options, None, network, None, None, None, ranges,
                                                 build.ResolvedShapes({}, {}), lines.append)
    assert made["algorithm"] == "entropy2" and b"z:" not in made["served_cache"]  # no zero scale served
    assert calibrator.network_ranges == EXPECTED_COUNTS
    assert any(line.startswith("trtq: network ranges: 2 tensors from the cache") for line in lines)
