"""Bias correction (:mod:`trtq.accuracy.bias`) on a real trained model: the digits MLP (Gemm with transB=1, MatMul +
bias Add, Gemm with transB=0) on scikit-learn's real handwritten digits, and the MNIST zoo CNN (Conv without a bias
input, its bias in a following Add) on real MNIST digits.

What is asserted: the shift folded into each bias is the layer's own mean output shift, recomputed here with numpy
from the layer's float input in the Q/DQ model; the correction lowers every layer's mean output error per channel on
held-out digits; a layer switched to float reads its original bias (the switchable model's all-float configuration is
the FP32 model bit for bit); each cross-fitted fold's correction comes from the other folds' samples only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from trtq.accuracy.bias import find_sites, fit_bias_correction, measure_shifts, measurement_model
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
