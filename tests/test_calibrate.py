"""End-to-end calibration on the real MNIST model with real digits (API level, no data layer needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from trtq.cache import read_cache
from trtq.calibrate import calibrate, compute_ranges, ranges_from_stats, read_ranges_json
from trtq.errors import TrtqError
from trtq.model import Model, load_model
from trtq.stats import StatsCollector

CPU = ["CPUExecutionProvider"]


def batches_of(images: np.ndarray, size: int):
    return [{"Input3": images[i:i + size]} for i in range(0, len(images), size)]


@pytest.fixture(scope="module")
def mnist(mnist_model_path):
    return load_model(mnist_model_path)


def test_minmax_ranges_equal_the_true_absmax_of_every_tensor(mnist, mnist_digits):
    images = mnist_digits[0][:200]
    result = calibrate(mnist, batches_of(images, 1), "minmax", providers=CPU)
    # independent reference: onnx's pure-numpy evaluator, digit by digit
    evaluator = ReferenceEvaluator(mnist.proto)
    names = list(result.amax)
    node_names = [n for n in names if n != "Input3"]
    truth = dict.fromkeys(names, 0.0)
    for image in images:
        values = evaluator.run(node_names, {"Input3": image[None]})
        for name, value in zip(node_names, values, strict=True):
            truth[name] = max(truth[name], float(np.abs(value).max()))
        truth["Input3"] = max(truth["Input3"], float(np.abs(image).max()))
    assert set(names) == set(mnist.calibration_tensors())
    assert "Parameter193_reshape1" not in names  # a reshaped weight: folded by TensorRT, no range
    for name in names:
        assert result.amax[name] == pytest.approx(truth[name], rel=1e-5), name
    assert result.samples == 200 and result.stats.batches == 200


def test_minmax_skips_the_histogram_unless_asked_and_says_so_when_another_method_needs_it(mnist, mnist_digits,
                                                                                          tmp_path):
    batches = batches_of(mnist_digits[0][:20], 1)
    lean = calibrate(mnist, batches, "minmax", providers=CPU)
    full = calibrate(mnist, batches, "minmax", providers=CPU, keep_histograms=True)
    assert lean.amax == full.amax and lean.document() == full.document()
    assert all(s.hist.size == 0 for s in lean.stats) and all(s.hist.sum() == s.count for s in full.stats)
    for method in ("entropy2", "percentile", "mse"):
        with pytest.raises(TrtqError, match="without a histogram"):
            compute_ranges(lean.stats, method)
    with pytest.raises(TrtqError, match="without a histogram"):
        lean.stats.save(tmp_path / "stats.npz")
    assert not (tmp_path / "stats.npz").exists()
    assert compute_ranges(full.stats, "entropy2") == calibrate(mnist, batches, "entropy2", providers=CPU).amax


def test_same_input_gives_a_byte_identical_cache(mnist, mnist_digits, tmp_path):
    images = mnist_digits[0][:100]
    paths = []
    for run in range(2):
        result = calibrate(mnist, batches_of(images, 1), "entropy2", providers=CPU)
        paths.append(result.write_cache(tmp_path / f"run{run}.cache"))
    assert paths[0].read_bytes() == paths[1].read_bytes()
    cache = read_cache(paths[0])
    assert cache.header == "TRT-101601-EntropyCalibration2"
    # graph order, then the weight-derived tensor (the Reshape of the MatMul weight, max|w|/127)
    assert list(cache.scales) == mnist.calibration_tensors() + ["Parameter193_reshape1"]


@pytest.mark.parametrize("method", ["entropy2", "minmax", "percentile", "mse"])
def test_batch_size_changes_ranges_by_at_most_one_bin(dynamic_mnist, mnist_digits, method):
    images = mnist_digits[0][:240]
    results = [calibrate(dynamic_mnist, batches_of(images, size), method, providers=CPU, keep_histograms=True)
               for size in (1, 7, 240)]
    reference = results[0]
    for other in results[1:]:
        for name, amax in reference.amax.items():
            _, width = reference.stats[name].histogram()
            assert abs(other.amax[name] - amax) <= width + 1e-6 * amax, (name, other.amax[name], amax, width)


def test_saved_statistics_reproduce_every_method(mnist, mnist_digits, tmp_path):
    result = calibrate(mnist, batches_of(mnist_digits[0][:50], 1), "entropy2", providers=CPU)
    path = result.stats.save(tmp_path / "stats.npz")
    loaded = StatsCollector.load(path)
    assert loaded.meta["model_sha256"] == mnist.sha256
    for method in ("entropy2", "minmax", "percentile", "mse"):
        assert ranges_from_stats(loaded, method).amax == compute_ranges(result.stats, method)


def test_json_document_and_reader(mnist, mnist_digits, tmp_path):
    result = calibrate(mnist, batches_of(mnist_digits[0][:20], 1), "percentile", percentile=99.9, providers=CPU)
    path = result.write_json(tmp_path / "ranges.json")
    document = json.loads(path.read_text())
    assert document["calibrator"] == "percentile" and document["samples"] == 20
    assert document["model"] == "mnist-8.onnx"
    assert document["provenance"]["model_sha256"] == mnist.sha256
    assert document["provenance"]["options"]["percentile"] == 99.9
    entry = document["tensors"]["ReLU32_Output_0"]
    assert entry["scale"] == pytest.approx(entry["amax"] / 127, rel=1e-6)
    assert entry["min"] == 0.0 and entry["absmax"] == entry["max"] >= entry["amax"]
    assert read_ranges_json(path) == result.all_amax()  # data ranges and the weight-derived one


def test_ranges_reader_rejects_other_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"tensors": {"x": {"amax": "big"}}}')
    with pytest.raises(TrtqError, match="no valid 'amax'"):
        read_ranges_json(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(TrtqError, match="not a trtq ranges JSON"):
        read_ranges_json(bad)


def tiny_model(op: str) -> Model:
    """x -> op(x) -> y, to produce NaN (Log of negatives) or all zeros (Mul by 0)."""
    nodes = [helper.make_node("Log", ["x"], ["y"], name="log")] if op == "log" else [
        helper.make_node("Mul", ["x", "zero"], ["y"], name="mul")]
    inits = [] if op == "log" else [numpy_helper.from_array(np.zeros(1, np.float32), "zero")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], inits)
    return Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))


def test_nan_values_are_ignored_with_a_warning_and_never_reach_the_cache():
    model = tiny_model("log")
    result = calibrate(model, [{"x": np.array([[-1, 1, 2, 4]], np.float32)}], "entropy2", providers=CPU)
    assert result.stats["y"].nonfinite == 1
    assert any("NaN/Inf" in line for line in result.problems())
    assert np.isfinite(list(result.amax.values())).all()
    assert b"nan" not in result.cache().to_bytes().lower()


def test_all_zero_tensor_gets_range_zero_with_a_warning():
    model = tiny_model("mul")
    result = calibrate(model, [{"x": np.ones((2, 4), np.float32)}], "entropy2", providers=CPU)
    assert result.amax["y"] == 0.0
    problems = [line for line in result.problems() if "range of 0" in line]
    assert problems == ["1 tensor(s) have a range of 0 and are left out of the cache (a zero scale is never "
                        "written): 'y' (all zeros on the calibration data); TensorRT keeps their layers out of "
                        "INT8 (it warns 'Missing scale')"]
    text = result.cache().to_bytes().decode()
    assert "y" not in result.cache().scales and ": 00000000" not in text and text.splitlines()[1:] == ["x: 3c010204"]
    assert result.document()["tensors"]["y"]["in_cache"] is False


def test_empty_data_is_an_error(mnist):
    with pytest.raises(TrtqError, match="no batch"):
        calibrate(mnist, [], "minmax", providers=CPU)


def test_read_ranges_tells_a_cache_from_a_ranges_json(mnist, mnist_digits, tmp_path):
    from trtq.calibrate import read_ranges

    result = calibrate(mnist, batches_of(mnist_digits[0][:10], 1), "minmax", providers=CPU)
    from_json = read_ranges(result.write_json(tmp_path / "r.json"))
    from_cache = read_ranges(result.write_cache(tmp_path / "r.cache"))
    assert from_json == result.all_amax()  # the data ranges and the weight-derived one
    assert from_cache.keys() == result.all_amax().keys()
    for name, amax in result.all_amax().items():  # the cache holds float32 scales
        assert from_cache[name] == pytest.approx(amax, rel=1e-6)
    (tmp_path / "binary.bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TrtqError, match="neither a TensorRT calibration cache nor"):
        read_ranges(tmp_path / "binary.bin")
