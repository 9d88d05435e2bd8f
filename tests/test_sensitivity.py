"""Per-layer INT8 sensitivity on real models and real digits: the switchable model computes exactly the
exported configurations, a deliberately broken range is found and blamed on clipping, the verified
keep set really meets its target and is accepted by ``trtq export --exclude @FILE``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from trtq.accuracy import SensitivityAnalysis, build_switchable, quantization_error
from trtq.accuracy.evaluate import fake_quant_session
from trtq.cache import cache_from_amax, write_cache
from trtq.calibrate import calibrate
from trtq.capture import with_extra_outputs
from trtq.cli import cli
from trtq.errors import TrtqError
from trtq.export import compare_outputs, export_qdq, read_name_list
from trtq.model import Model, load_model

DATA = Path(__file__).resolve().parent / "data"


def trtq(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def digits():
    model = load_model(DATA / "digits_mlp.onnx")
    with np.load(DATA / "digits_split.npz") as split:
        x_train, x_test = split["x_train"].astype(np.float32), split["x_test"].astype(np.float32)
    result = calibrate(model, [{"pixels": x_train[i:i + 100]} for i in range(0, len(x_train), 100)], "entropy2")
    feeds = [{"pixels": x_test[i:i + 100]} for i in range(0, len(x_test), 100)]
    return model, result, feeds


@pytest.fixture(scope="module")
def mnist(mnist_model_path, mnist_digits):
    """mnist-8 with entropy2 ranges from the first 300 real test digits, and 200 other digits to evaluate on."""
    model = load_model(mnist_model_path)
    images, _ = mnist_digits
    result = calibrate(model, [{"Input3": x[None]} for x in images[:300]], "entropy2")
    return model, result, [{"Input3": x[None]} for x in images[300:500]]


def test_switchable_model_computes_each_exported_configuration(digits):
    model, result, feeds = digits
    export = export_qdq(model, result.amax)
    switchable = build_switchable(model.proto, export)
    assert switchable.nodes == ["fc1", "fc2_matmul", "residual_add", "fc3"]  # graph order
    assert set(switchable.nodes) == set(export.plan.quantized_nodes)
    assert {layer.node: layer.tensors for layer in switchable.layers} == {
        "fc1": ("scaled",), "fc2_matmul": ("h1",), "residual_add": ("h2", "h1"), "fc3": ("res",)}
    session = fake_quant_session(switchable.proto)
    x = np.concatenate([f["pixels"] for f in feeds])

    def switched(int8):
        return session.run(None, {"pixels": x, **switchable.switches(int8)})[0]

    exported = fake_quant_session(export.model).run(None, {"pixels": x})[0]
    np.testing.assert_array_equal(switched(switchable.nodes), exported)
    fp32 = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(switched([]), fp32.run(None, {"pixels": x})[0], rtol=1e-5, atol=1e-5)
    # one layer alone in INT8 is exactly the export that keeps every other layer in float
    alone = export_qdq(model, result.amax, exclude=["fc1", "residual_add", "fc3"]).model
    np.testing.assert_array_equal(switched(["fc2_matmul"]), fake_quant_session(alone).run(None, {"pixels": x})[0])


def test_a_layer_kept_in_float_computes_as_in_the_exported_model_bit_for_bit(mnist):
    """The keep search measures configurations on the switchable model (weights through a Where) and writes the
    exported one (constant weights): onnxruntime must compute a float layer the same way in both, or a model as
    sensitive as a ViT's thresholded map measures 0.4 points between them (here: Conv + bias Add, which
    ConvAddFusion folds only for a constant weight)."""
    model, result, feeds = mnist
    switchable = build_switchable(model.proto, export_qdq(model, result.amax))
    session = fake_quant_session(switchable.proto)
    x = np.concatenate([f["Input3"] for f in feeds[:32]])
    for kept in (["Convolution28"], ["Convolution28", "Convolution110"], ["Times212", "Pooling66"]):
        exported = export_qdq(model, result.amax, exclude=kept).model
        int8 = [n for n in switchable.nodes if n not in kept]
        switched = np.concatenate([session.run(None, {"Input3": x[i:i + 1], **switchable.switches(int8)})[0]
                                   for i in range(len(x))])
        written = fake_quant_session(exported)
        np.testing.assert_array_equal(switched, np.concatenate([written.run(None, {"Input3": x[i:i + 1]})[0]
                                                                for i in range(len(x))]))


def test_quantization_error_split_matches_the_real_values(mnist):
    """Clipping and rounding error estimated from the histogram vs computed on the actual activations."""
    model, result, feeds = mnist
    analysis = SensitivityAnalysis(model, result.amax, feeds)
    analysis.rank()
    name = "ReLU32_Output_0"
    probe = with_extra_outputs(model.proto, [name])
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = np.abs(np.concatenate([session.run([name], feed)[0].ravel() for feed in feeds]).astype(np.float64))
    amax = result.amax[name]
    step = amax / 127
    estimated = quantization_error(analysis.stats[name], amax)
    clipped = values[values > amax]
    assert estimated.clipping == pytest.approx(np.sum((clipped - amax) ** 2), rel=0.02)
    inside = values[(values <= amax) & (values > 0)]
    actual_rounding = np.sum((inside - np.round(inside / step) * step) ** 2)
    assert estimated.rounding == pytest.approx(actual_rounding, rel=0.1)
    assert estimated.clipped_fraction == pytest.approx(len(clipped) / len(values), abs=2e-4)


@pytest.mark.parametrize("mode", ["alone", "all-but-one"])
def test_a_broken_range_is_ranked_first_and_blamed_on_clipping(mnist, mode):
    model, result, feeds = mnist
    amax = dict(result.amax)
    amax["Pooling66_Output_0"] *= 0.01  # the input of Convolution110 only
    ranking = SensitivityAnalysis(model, amax, feeds).rank(mode).ranking
    assert [entry.layer.node for entry in ranking][0] == "Convolution110"
    assert ranking[0].error_type == "clipping" and ranking[0].error.clipped_fraction > 0.05
    assert ranking[0].score > 0.9
    assert sorted((e.score for e in ranking), reverse=True) == [e.score for e in ranking]


def test_broken_range_on_the_mlp_too(digits):
    model, result, feeds = digits
    amax = dict(result.amax)
    amax["res"] *= 0.01  # the input of fc3
    ranking = SensitivityAnalysis(model, amax, feeds).rank().ranking
    assert ranking[0].layer.node == "fc3" and ranking[0].error_type == "clipping"


def test_ranking_costs_one_run_per_layer_plus_the_reference(digits, monkeypatch):
    """alone: per batch the float reference, one float run that keeps the boundary tensors, and one run per
    layer of the sub-model that starts at that layer (never the full switchable model)."""
    import trtq.accuracy.downstream as downstream

    model, result, feeds = digits
    analysis = SensitivityAnalysis(model, result.amax, feeds)
    calls = {"switched": 0, "reference": 0, "downstream": 0}

    class Counting:
        def __init__(self, session, key):
            self.session, self.key = session, key

        def run(self, *args, **kwargs):
            calls[self.key] += 1
            return self.session.run(*args, **kwargs)

        def get_inputs(self):
            return self.session.get_inputs()

    real = downstream.fake_quant_session
    monkeypatch.setattr(downstream, "fake_quant_session", lambda proto, **kw: Counting(real(proto, **kw), "downstream"))
    analysis.session = Counting(analysis.session, "switched")
    analysis._capture.session = Counting(analysis._capture.session, "reference")
    analysis.rank("alone")
    assert calls == {"switched": 0, "reference": len(feeds), "downstream": (len(analysis.layers) + 1) * len(feeds)}


def test_downstream_ranking_equals_the_full_model_runs(mnist, digits):
    """Running each layer from where it sits, on the FP32 tensors upstream, gives the ranking of full runs."""
    for model, result, feeds in (mnist, digits):
        analysis = SensitivityAnalysis(model, result.amax, feeds[:60])
        nodes = analysis.switchable.nodes
        fast = analysis.evaluate({node: [node] for node in nodes}, downstream=True)
        full = analysis.evaluate({node: [node] for node in nodes}, downstream=False)
        for node in nodes:
            assert fast.outcomes[node].noise == pytest.approx(full.outcomes[node].noise, rel=1e-3, abs=1e-12)


def test_keep_set_meets_the_target_when_checked_independently(mnist):
    model, result, feeds = mnist
    analysis = SensitivityAnalysis(model, result.amax, feeds)
    ranked = analysis.rank()
    all_int8 = compare_outputs(model.proto, export_qdq(model, result.amax).model, feeds)[0].sqnr_db
    target = all_int8 + 6.0
    analysis.keep_set(ranked, target_sqnr=target)
    assert ranked.steps[0].kept == [] and not ranked.steps[0].meets_target
    assert ranked.steps[-1].meets_target and ranked.keep == ranked.steps[-1].kept
    assert 1 <= len(ranked.keep) < len(analysis.layers)
    assert ranked.keep[0] == ranked.ranking[0].layer.node
    kept = export_qdq(model, result.amax, exclude=ranked.keep).model
    assert compare_outputs(model.proto, kept, feeds)[0].sqnr_db >= target


def test_cli_keep_file_feeds_export_exclude(mnist, tmp_path):
    model, result, _ = mnist
    cache = tmp_path / "m.cache"
    amax = dict(result.amax)
    amax["ReLU114_Output_0"] *= 0.05
    write_cache(cache, cache_from_amax(amax, "entropy2"))
    data = tmp_path / "digits.npy"
    with np.load(DATA / "mnist-test-first1000.npz") as split:
        np.save(data, split["images"][600:750, None].astype(np.float32))
    keep, report = tmp_path / "keep.txt", tmp_path / "s.json"
    run = trtq("sensitivity", model.path, "--cache", cache, "--data", data, "--max-drop", 0.5,
               "--keep-out", keep, "--json", report, "--html", tmp_path / "s.html", "--plot-dir", tmp_path / "plots")
    assert run.exit_code == 0, run.output
    document = json.loads(report.read_text())
    first = document["ranking"][0]
    assert first["node"] == "Pooling160" and first["tensors"] == ["ReLU114_Output_0"]
    assert first["error_type"] == "clipping"
    assert set(first) >= {"node", "tensors", "score", "error_type"}
    assert document["samples"] == 150 and document["keep"] == read_name_list([f"@{keep}"])
    assert "Pooling160" in document["keep"] and document["steps"][-1]["meets_target"]
    assert "ranking.svg" in {p.name for p in (tmp_path / "plots").iterdir()}
    exported = tmp_path / "kept.qdq.onnx"
    run = trtq("export", model.path, "--qdq", "--cache", cache, "--exclude", f"@{keep}", "-o", exported)
    assert run.exit_code == 0, run.output
    note = next(line for line in run.stderr.splitlines() if "kept in float as asked (--exclude): " in line)
    assert sorted(note.split("(--exclude): ")[1].split(", ")) == sorted(document["keep"])


def test_keep_out_needs_a_target(mnist, tmp_path):
    model, result, _ = mnist
    write_cache(tmp_path / "m.cache", cache_from_amax(result.amax, "entropy2"))
    run = trtq("sensitivity", model.path, "--cache", tmp_path / "m.cache", "--data", DATA.parent.parent
               / "calib_data" / "mnist", "--keep-out", tmp_path / "keep.txt")
    assert run.exit_code == 2 and "--keep-out needs a target" in run.stderr
    assert not (tmp_path / "keep.txt").exists()


def test_max_drop_without_labels_or_classes_is_refused_before_the_ranking(tmp_path):
    """A one-value regression output has no top-1 to drop: the command says so before any ranking run."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="regress")], "regression",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
        [numpy_helper.from_array(rng.standard_normal((8, 1)).astype(np.float32), "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    x = rng.standard_normal((16, 8)).astype(np.float32)
    analysis = SensitivityAnalysis(Model(proto), {"x": float(np.abs(x).max())}, [{"x": x}])
    with pytest.raises(TrtqError, match="--max-drop needs --labels or an output with class scores"):
        analysis.check_target(None, 1.0)
    analysis.check_target(20.0, None)  # an SQNR target needs no classes
    onnx.save(proto, tmp_path / "regression.onnx")
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "r.json").write_text(json.dumps({"tensors": {"x": {"amax": float(np.abs(x).max())}}}))
    run = trtq("sensitivity", tmp_path / "regression.onnx", "--ranges", tmp_path / "r.json", "--data",
               tmp_path / "x.npy", "--max-drop", 1, "--json", tmp_path / "s.json")
    assert run.exit_code == 2 and "--max-drop needs --labels or an output with class scores" in run.stderr
    assert "INT8 sensitivity on" not in run.stdout and not (tmp_path / "s.json").exists()
