"""Weight-derived tensors get max|w|/127 in every cache (issue 15); no zero scale is ever written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from trtq.cache import read_cache
from trtq.calibrate import calibrate
from trtq.cli import cli
from trtq.errors import TrtqError
from trtq.model import FLOAT_TYPES, Model, load_model
from trtq.weights import INITIALIZER_REASON, weight_derived_tensors, weight_ranges

CPU = ["CPUExecutionProvider"]
RNG = np.random.default_rng(15)
SLOPE = RNG.uniform(-0.3, 0.2, 4).astype(np.float32)  # PReLU slopes
BIAS = RNG.normal(size=4).astype(np.float32)  # a LayerNorm/SE-style bias, reshaped to [1, 4, 1, 1]
HALF = RNG.normal(size=4).astype(np.float16)  # a float16 weight cast to float
ZERO = np.zeros(4, np.float32)  # an all-zero bias


def prelu_block() -> Model:
    """x -> PRelu(Unsqueeze(slope)) -> + Reshape(bias) -> * Constant -> + Cast(half) -> + Unsqueeze(zero) -> y,
    plus integer tensors (a Constant int64 shape, Shape(x)) that must never get a range."""
    f = TensorProto.FLOAT
    inits = [numpy_helper.from_array(SLOPE, "slope"), numpy_helper.from_array(BIAS, "bias"),
             numpy_helper.from_array(HALF, "half"), numpy_helper.from_array(ZERO, "zero"),
             numpy_helper.from_array(np.array([1, 2], np.int64), "axes")]
    nodes = [
        helper.make_node("Unsqueeze", ["slope", "axes"], ["slope_u"], name="slope_unsqueeze"),
        helper.make_node("PRelu", ["x", "slope_u"], ["p"], name="prelu"),
        helper.make_node("Constant", [], ["bias_shape"], name="bias_shape_const",
                         value=numpy_helper.from_array(np.array([1, 4, 1, 1], np.int64))),
        helper.make_node("Reshape", ["bias", "bias_shape"], ["bias_r"], name="bias_reshape"),
        helper.make_node("Add", ["p", "bias_r"], ["a"], name="add_bias"),
        helper.make_node("Constant", [], ["gain"], name="gain_const",
                         value=numpy_helper.from_array(np.array([-2.5], np.float32))),
        helper.make_node("Mul", ["a", "gain"], ["m"], name="mul_gain"),
        helper.make_node("Cast", ["half"], ["half_f"], name="cast_half", to=f),
        helper.make_node("Unsqueeze", ["half_f", "axes"], ["half_u"], name="half_unsqueeze"),
        helper.make_node("Add", ["m", "half_u"], ["h"], name="add_half"),
        helper.make_node("Unsqueeze", ["zero", "axes"], ["zero_u"], name="zero_unsqueeze"),
        helper.make_node("Add", ["h", "zero_u"], ["y"], name="add_zero"),
        helper.make_node("Shape", ["x"], ["x_shape"], name="shape"),
    ]
    graph = helper.make_graph(nodes, "prelu_block", [helper.make_tensor_value_info("x", f, ["n", 4, 3, 3])],
                              [helper.make_tensor_value_info("y", f, ["n", 4, 3, 3]),
                               helper.make_tensor_value_info("x_shape", TensorProto.INT64, [4])], inits)
    return Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))


EXPECTED = {"slope_u": np.abs(SLOPE).max(), "bias_r": np.abs(BIAS).max(), "gain": 2.5,
            "half_f": np.abs(HALF.astype(np.float32)).max(), "half_u": np.abs(HALF.astype(np.float32)).max(),
            "zero_u": 0.0}


def _scale(amax: float) -> float:
    return float(np.float32(np.float32(amax) / np.float32(127.0)))


def _batches(n: int = 4):
    return [{"x": RNG.normal(size=(2, 4, 3, 3)).astype(np.float32)} for _ in range(n)]


@pytest.fixture(scope="module")
def mnist(mnist_model_path):
    return load_model(mnist_model_path)


def float_tensors(model: Model) -> list[str]:
    """Every float tensor of the ONNX graph: float inputs, initializers and node outputs."""
    types = model.tensor_types
    names = [s.name for s in model.inputs if s.is_float]
    names += [t.name for t in model.graph.initializer if t.data_type in FLOAT_TYPES]
    names += [o for n in model.graph.node for o in n.output if o and types.get(o) in FLOAT_TYPES]
    return names


def assert_every_float_tensor_is_covered(model: Model, result, cache) -> None:
    missing = result.without_range()
    for name in float_tensors(model):
        if name in model.initializer_names:
            assert INITIALIZER_REASON  # a weight: TensorRT quantizes it itself (the build sets its constant layer)
            assert name not in cache.scales
            continue
        assert (name in cache.scales) != (name in missing), name  # an entry, or a stated reason, never both
        assert cache.scales.get(name, 1.0) > 0, name


def test_weight_derived_tensors_are_found_and_integers_are_not():
    model = prelu_block()
    assert weight_derived_tensors(model) == ["slope_u", "bias_r", "gain", "half_f", "half_u", "zero_u"]
    found = weight_ranges(model)
    assert found.evaluator == "onnxruntime" and found.unavailable == {}
    assert found.amax == pytest.approx(EXPECTED, rel=1e-6)
    assert "bias_shape" not in found.amax and "x_shape" not in found.amax  # int64: never a range


def test_reference_evaluator_is_the_fallback(monkeypatch):
    import trtq.weights as weights

    def broken(sub):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(weights, "_run_onnxruntime", broken)
    found = weights.weight_ranges(prelu_block())
    assert found.evaluator == "onnx.reference" and found.amax == pytest.approx(EXPECTED, rel=1e-6)
    monkeypatch.setattr(weights, "_run_reference", broken)
    found = weights.weight_ranges(prelu_block())
    assert found.amax == {} and set(found.unavailable) == set(EXPECTED)
    assert all(why.startswith("could not evaluate the weight-only subgraph (onnxruntime: no kernel")
               for why in found.unavailable.values())


@pytest.mark.parametrize("method", ["entropy2", "minmax", "percentile", "mse"])
def test_every_method_cache_has_weight_ranges_and_no_zero_scale(method, tmp_path):
    model = prelu_block()
    result = calibrate(model, _batches(), method, providers=CPU)
    cache = read_cache(result.write_cache(tmp_path / "m.cache"))
    text = (tmp_path / "m.cache").read_text()
    assert ": 00000000" not in text and not any(line.endswith(": 0") for line in text.splitlines())
    for name, amax in EXPECTED.items():
        if amax:
            assert cache.scales[name] == _scale(amax), name  # max|w|/127, computed independently
        else:
            assert name not in cache.scales
    assert result.without_range() == {"zero_u": "weight-derived, all zeros"}
    assert "bias_shape" not in cache.scales and "x_shape" not in cache.scales
    assert_every_float_tensor_is_covered(model, result, cache)
    document = result.document()
    assert document["tensors"]["slope_u"]["source"] == "weights" and document["tensors"]["x"]["source"] == "data"
    assert document["tensors"]["zero_u"]["in_cache"] is False
    assert sum(entry["source"] == "weights" for entry in document["tensors"].values()) == 6


def test_mnist_reshaped_weight_gets_max_abs_over_127(mnist, mnist_digits, tmp_path):
    weight = next(numpy_helper.to_array(t) for t in mnist.graph.initializer if t.name == "Parameter193")
    result = calibrate(mnist, [{"Input3": d[None]} for d in mnist_digits[0][:8]], "minmax", providers=CPU)
    cache = read_cache(result.write_cache(tmp_path / "mnist.cache"))
    assert result.weights == {"Parameter193_reshape1": float(np.abs(weight).max())}
    assert cache.scales["Parameter193_reshape1"] == _scale(np.abs(weight).max())
    assert ": 00000000" not in (tmp_path / "mnist.cache").read_text()
    assert result.without_range() == {}
    assert_every_float_tensor_is_covered(mnist, result, cache)


def test_zero_scales_are_never_written_even_when_asked():
    from trtq.cache import CalibrationCache, cache_from_amax

    cache = cache_from_amax({"a": 0.0, "b": 1e-45, "c": 1.0}, "minmax")
    assert list(cache.scales) == ["c"]  # 1e-45 / 127 is 0 in float32 as well
    text = CalibrationCache("101601", "MinMaxCalibration", {"a": 0.0, "c": 0.5}).to_bytes().decode()
    assert text.splitlines() == ["TRT-101601-MinMaxCalibration", "c: 3f000000"]


def _save(model: Model, path):
    import onnx

    onnx.save(model.proto, str(path))
    return path


def test_cli_summary_says_where_each_range_came_from(tmp_path):
    model_path = _save(prelu_block(), tmp_path / "block.onnx")
    np.save(tmp_path / "x.npy", RNG.normal(size=(8, 4, 3, 3)).astype(np.float32))
    result = CliRunner().invoke(cli, ["calibrate", str(model_path), "--data", str(tmp_path / "x.npy"),
                                      "--calibrator", "minmax", "--cache", str(tmp_path / "b.cache"),
                                      "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    assert "6 tensors from data, 5 from weights, 1 without a range (1 weight-derived, all zeros)" in result.output
    warnings = [line for line in result.output.splitlines() if "range of 0" in line]
    assert len(warnings) == 1 and "'zero_u' (weight-derived, all zeros)" in warnings[0]
    document = json.loads((tmp_path / "b.json").read_text())
    assert {k for k, v in document["tensors"].items() if v["source"] == "weights"} == set(EXPECTED)
    assert ": 00000000" not in (tmp_path / "b.cache").read_text()


def test_cli_input_without_a_finite_value_is_an_error_and_writes_nothing(tmp_path):
    model_path = _save(prelu_block(), tmp_path / "block.onnx")
    np.save(tmp_path / "nan.npy", np.full((4, 4, 3, 3), np.nan, np.float32))
    out = tmp_path / "out"
    out.mkdir()
    result = CliRunner().invoke(cli, ["calibrate", str(model_path), "--data", str(tmp_path / "nan.npy"),
                                      "--calibrator", "minmax", "--cache", str(out / "b.cache"),
                                      "--json", str(out / "b.json")])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if "error" in line]
    assert len(errors) == 1 and "input 'x' has no finite value in the calibration data" in errors[0]
    assert list(out.iterdir()) == []


def test_saved_statistics_carry_the_weight_ranges(tmp_path, mnist_model_path, mnist_digits):
    np.save(tmp_path / "d.npy", mnist_digits[0][:8])
    first = CliRunner().invoke(cli, ["calibrate", str(mnist_model_path), "--data", str(tmp_path / "d.npy"),
                                     "--calibrator", "minmax", "--save-stats", str(tmp_path / "s.npz"),
                                     "--cache", str(tmp_path / "a.cache")])
    assert first.exit_code == 0, first.output
    assert "12 tensors from data, 1 from weights, 0 without a range" in first.output
    again = CliRunner().invoke(cli, ["calibrate", "--from-stats", str(tmp_path / "s.npz"), "--calibrator", "minmax",
                                     "--cache", str(tmp_path / "b.cache")])
    assert again.exit_code == 0, again.output
    assert "12 tensors from data, 1 from weights, 0 without a range" in again.output  # from the statistics
    assert read_cache(tmp_path / "b.cache").scales == read_cache(tmp_path / "a.cache").scales
    with_model = CliRunner().invoke(cli, ["calibrate", str(mnist_model_path), "--from-stats", str(tmp_path / "s.npz"),
                                          "--calibrator", "minmax", "--cache", str(tmp_path / "c.cache")])
    assert with_model.exit_code == 0, with_model.output
    assert read_cache(tmp_path / "c.cache").scales == read_cache(tmp_path / "a.cache").scales


def test_statistics_saved_without_weight_ranges_say_so(tmp_path, mnist_model_path, mnist_digits):
    from trtq.calibrate import ranges_from_stats
    from trtq.stats import StatsCollector

    np.save(tmp_path / "d.npy", mnist_digits[0][:4])
    first = CliRunner().invoke(cli, ["calibrate", str(mnist_model_path), "--data", str(tmp_path / "d.npy"),
                                     "--calibrator", "minmax", "--save-stats", str(tmp_path / "s.npz"), "-q",
                                     "--cache", str(tmp_path / "x.cache")])
    assert first.exit_code == 0, first.output
    stats = StatsCollector.load(tmp_path / "s.npz")
    del stats.meta["weights"]  # as an older trtq saved them
    result = ranges_from_stats(stats, "minmax")
    assert result.weights == {} and result.weights_note == "not computed (no model)"
    from trtq.commands.calibrate import range_sources_line

    assert range_sources_line(result) == "12 tensors from data, weights not computed (no model), 0 without a range"
    assert result.add_weight_ranges(load_model(mnist_model_path)).weights.keys() == {"Parameter193_reshape1"}


def test_load_model_round_trip_keeps_the_weight_ranges(tmp_path):
    model = load_model(_save(prelu_block(), tmp_path / "block.onnx"))
    assert weight_ranges(model).amax == pytest.approx(EXPECTED, rel=1e-6)


def test_the_api_error_for_nan_inputs_is_a_trtq_error():
    from trtq.accuracy.quantize import check_inputs_finite

    model = prelu_block()
    result = calibrate(model, [{"x": np.full((2, 4, 3, 3), np.nan, np.float32)}], "minmax", providers=CPU)
    with pytest.raises(TrtqError, match="input 'x' has no finite value"):
        check_inputs_finite(model, result.stats)
