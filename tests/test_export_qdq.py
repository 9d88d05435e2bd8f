"""Q/DQ export on real models and real digits: placement, scales, validity, accuracy vs FP32."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtq.errors import TrtqError
from trtq.export import compare_outputs, export_qdq, plan_qdq, weight_scales
from trtq.export.compare import compare_runs
from trtq.model import Model, load_model

DATA = Path(__file__).resolve().parent / "data"
MNIST_INPUT = "Input3"
MNIST_OUTPUT = "Plus214_Output_0"


# --- helpers shared by the export tests -------------------------------------------------------


def minmax_ranges(model: Model, feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Per-tensor absmax of every calibration tensor over ``feeds`` (minmax calibration), read with
    onnxruntime by exposing the tensors as extra graph outputs."""
    names = model.calibration_tensors()
    probe = onnx.ModelProto()
    probe.CopyFrom(model.proto)
    existing = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names if n not in existing)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    amax: dict[str, float] = {}
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed), strict=True):
            amax[name] = max(amax.get(name, 0.0), float(np.abs(value).max()))
    return amax


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray], basic: bool = False) -> list[np.ndarray]:
    options = ort.SessionOptions()
    if basic:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def producer_of(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto | None:
    return next((n for n in model.graph.node if tensor in n.output), None)


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def dq_source(model: onnx.ModelProto, node_name: str, slot: int) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
    """(Q, DQ) feeding input ``slot`` of node ``node_name``, or None when it reads a float tensor."""
    node = next(n for n in model.graph.node if n.name == node_name)
    dq = producer_of(model, node.input[slot])
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q = producer_of(model, dq.input[0])
    assert q is not None and q.op_type == "QuantizeLinear"
    return q, dq


def axis_of(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "axis"), None)


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist(mnist_model_path) -> Model:
    return load_model(mnist_model_path)


@pytest.fixture(scope="module")
def mnist_feeds(mnist_digits) -> tuple[list[dict], list[dict], np.ndarray]:
    """Calibration feeds (digits 0-199) and held-out evaluation feeds (digits 200-699) with labels."""
    images, labels = mnist_digits
    calibration = [{MNIST_INPUT: images[i : i + 1]} for i in range(200)]
    evaluation = [{MNIST_INPUT: images[i : i + 1]} for i in range(200, 700)]
    return calibration, evaluation, labels[200:700]


@pytest.fixture(scope="module")
def mnist_qdq(mnist, mnist_feeds):
    return export_qdq(mnist, minmax_ranges(mnist, mnist_feeds[0]))


@pytest.fixture(scope="module")
def digits() -> tuple[Model, dict[str, np.ndarray]]:
    model = load_model(DATA / "digits_mlp.onnx")
    with np.load(DATA / "digits_split.npz") as split:
        return model, {k: split[k] for k in split.files}


@pytest.fixture(scope="module")
def digits_ranges(digits) -> dict[str, float]:
    model, split = digits
    return minmax_ranges(model, [{"pixels": split["x_train"][:256].astype(np.float32)}])


# --- MNIST (ONNX Model Zoo, opset 8) --------------------------------------------------------------


def test_mnist_qdq_is_a_valid_opset13_model(mnist_qdq):
    model = mnist_qdq.model
    onnx.checker.check_model(model, full_check=True)
    assert mnist_qdq.opset_before == 8
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 13
    assert any("opset 8 to opset 13" in note for note in mnist_qdq.notes)
    # weights are initializers only (IR >= 4), not graph inputs as in the IR-3 original
    assert [i.name for i in model.graph.input] == [MNIST_INPUT]
    names = [n.name for n in model.graph.node]
    assert len(names) == len(set(names)) and all(names)


def test_mnist_qdq_placement_follows_the_rule(mnist_qdq):
    model = mnist_qdq.model
    # 2 Conv (input + weight), 2 MaxPool (input), 1 MatMul (input + weight): 5 activations, 3 weights
    assert ops(model)["QuantizeLinear"] == 8 and ops(model)["DequantizeLinear"] == 8
    assert sorted(mnist_qdq.activation_tensors) == sorted(
        [MNIST_INPUT, "ReLU32_Output_0", "Pooling66_Output_0", "ReLU114_Output_0", "Pooling160_Output_0_reshape0"]
    )
    for node, slot in [("Convolution28", 0), ("Convolution28", 1), ("Pooling66", 0), ("Convolution110", 0),
                       ("Convolution110", 1), ("Pooling160", 0), ("Times212", 0), ("Times212", 1)]:
        assert dq_source(model, node, slot) is not None, (node, slot)
    # bias adds, relus and the reshape read float tensors
    for node in ("Plus30", "ReLU32", "Plus112", "ReLU114", "Plus214", "Times212_reshape0"):
        assert all(dq_source(model, node, s) is None for s in range(len(next(
            n for n in model.graph.node if n.name == node).input)))
    # new names explain themselves
    q, dq = dq_source(model, "Convolution28", 0)
    assert (q.name, dq.name) == ("Input3_QuantizeLinear", "Input3_DequantizeLinear")


def test_mnist_activation_scales_are_amax_over_127(mnist, mnist_feeds, mnist_qdq):
    amax = minmax_ranges(mnist, mnist_feeds[0])
    for tensor in mnist_qdq.activation_tensors:
        q = next(n for n in mnist_qdq.model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
        scale, zero = initializer(mnist_qdq.model, q.input[1]), initializer(mnist_qdq.model, q.input[2])
        assert scale.shape == () and axis_of(q) is None
        assert scale == pytest.approx(amax[tensor] / 127, rel=1e-6)
        assert zero.dtype == np.int8 and zero == 0


def test_mnist_weights_are_per_output_channel(mnist, mnist_qdq):
    model = mnist_qdq.model
    for conv, weight in (("Convolution28", "Parameter5"), ("Convolution110", "Parameter87")):
        q, dq = dq_source(model, conv, 1)
        assert q.input[0] == weight and axis_of(q) == 0 and axis_of(dq) == 0
        values = numpy_helper.to_array(next(t for t in mnist.graph.initializer if t.name == weight))
        expected = np.abs(values).reshape(values.shape[0], -1).max(axis=1) / 127
        np.testing.assert_allclose(initializer(model, q.input[1]), expected, rtol=1e-6)
    # the MatMul weight is Reshape(Parameter193): folded into an initializer, quantized per column
    q, dq = dq_source(model, "Times212", 1)
    folded = initializer(model, q.input[0])
    assert folded.shape == (256, 10) and axis_of(q) == 1 and axis_of(dq) == 1
    np.testing.assert_allclose(initializer(model, q.input[1]), np.abs(folded).max(axis=0) / 127, rtol=1e-6)
    original = numpy_helper.to_array(next(t for t in mnist.graph.initializer if t.name == "Parameter193"))
    np.testing.assert_array_equal(folded, original.reshape(256, 10))
    # the Reshape that produced it, and its inputs, are gone
    assert not any(n.name == "Times212_reshape1" for n in model.graph.node)
    assert not any(t.name == "Parameter193" for t in model.graph.initializer)


def test_mnist_qdq_agrees_with_fp32_on_held_out_digits(mnist, mnist_feeds, mnist_qdq):
    _, evaluation, labels = mnist_feeds
    rows = compare_outputs(mnist.proto, mnist_qdq.model, evaluation)
    (row,) = rows
    assert row.name == MNIST_OUTPUT and row.samples == 500
    assert row.top1_agreement >= 0.99
    assert row.cosine >= 0.99 and row.min_sample_cosine >= 0.98
    assert row.sqnr_db >= 20
    # onnxruntime with all its optimisations (QDQ fusions into integer kernels) runs it too
    fp32_session = ort.InferenceSession(mnist.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    int8_session = ort.InferenceSession(mnist_qdq.model.SerializeToString(), providers=["CPUExecutionProvider"])
    fp32 = np.array([fp32_session.run(None, f)[0].argmax() for f in evaluation])
    int8 = np.array([int8_session.run(None, f)[0].argmax() for f in evaluation])
    assert np.mean(fp32 == int8) >= 0.99
    assert abs(np.mean(int8 == labels) - np.mean(fp32 == labels)) <= 0.01


def test_exclude_by_node_name_and_by_output_name(mnist, mnist_feeds):
    amax = minmax_ranges(mnist, mnist_feeds[0][:20])
    by_node = export_qdq(mnist, amax, exclude=["Convolution110"])
    by_output = export_qdq(mnist, amax, exclude=["Convolution110_Output_0"])
    for result in (by_node, by_output):
        model = result.model
        assert dq_source(model, "Convolution110", 0) is None and dq_source(model, "Convolution110", 1) is None
        assert dq_source(model, "Convolution28", 0) is not None
        # Pooling66's output fed only the excluded conv: no pair for it; Parameter87 not quantized
        assert "Pooling66_Output_0" not in result.activation_tensors
        assert ops(model)["QuantizeLinear"] == 6
        assert result.plan.excluded_nodes == ["Convolution110"]
        assert any("Convolution110" in note for note in result.notes)


def test_exclude_keeps_a_shared_pair_for_other_consumers():
    """x feeds Conv a (excluded) and Conv b: b still reads x through Q/DQ, a reads x itself."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["a"], name="conv_a"),
         helper.make_node("Conv", ["x", "w"], ["b"], name="conv_b"),
         helper.make_node("Add", ["a", "b"], ["y"], name="add")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], [w])
    model = Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))
    result = export_qdq(model, {"x": 3.0, "a": 10.0, "b": 10.0}, exclude=["conv_a"])
    conv_a = next(n for n in result.model.graph.node if n.name == "conv_a")
    assert list(conv_a.input) == ["x", "w"]
    assert dq_source(result.model, "conv_b", 0)[0].input[0] == "x"
    # pairs: x and w for conv_b, and a for the add (b is conv_b's output, fused into it by TensorRT)
    assert ops(result.model)["QuantizeLinear"] == 3
    assert dq_source(result.model, "add", 0) is not None and dq_source(result.model, "add", 1) is None


def test_unknown_exclude_names_are_an_error_naming_them(mnist):
    with pytest.raises(TrtqError, match="'Conv_nope', 'also missing'"):
        export_qdq(mnist, {MNIST_INPUT: 255.0}, exclude=["Convolution28", "Conv_nope", "also missing"])


def test_ranges_matching_no_tensor_are_an_error(mnist):
    with pytest.raises(TrtqError, match="none of the 2 tensor names in the ranges is a tensor of mnist-8.onnx"):
        export_qdq(mnist, {"inputT0": 1.0, "outputT0": 2.0})


def test_missing_ranges_leave_consumers_in_float_and_say_which(mnist, mnist_feeds):
    amax = minmax_ranges(mnist, mnist_feeds[0][:20])
    del amax["Pooling66_Output_0"]
    amax["not_in_this_model"] = 1.0
    result = export_qdq(mnist, amax)
    assert result.plan.missing_ranges == {"Pooling66_Output_0": ["Convolution110"]}
    assert dq_source(result.model, "Convolution110", 0) is None and dq_source(result.model, "Convolution110", 1) is None
    assert dq_source(result.model, "Pooling66", 0) is not None
    assert any("1 quantizable node(s) kept in float" in n and "Convolution110" in n for n in result.notes)
    assert result.unmatched_range_names == ["not_in_this_model"]


@pytest.mark.parametrize("bad", [0.0, float("inf"), float("nan")])
def test_zero_or_non_finite_range_means_no_qdq_and_a_warning(mnist, mnist_feeds, bad):
    amax = minmax_ranges(mnist, mnist_feeds[0][:20])
    amax["ReLU114_Output_0"] = bad
    result = export_qdq(mnist, amax)
    assert "ReLU114_Output_0" not in result.activation_tensors
    assert dq_source(result.model, "Pooling160", 0) is None
    assert dq_source(result.model, "Times212", 0) is not None
    assert len(result.warnings) == 1 and "'ReLU114_Output_0'" in result.warnings[0]
    assert "Pooling160" in result.warnings[0]
    onnx.checker.check_model(result.model, full_check=True)


def test_nothing_to_quantize_is_an_error(mnist):
    with pytest.raises(TrtqError, match="nothing to quantize in mnist-8.onnx: 5 input tensor"):
        export_qdq(mnist, {"Plus214_Output_0": 10.0})


def test_the_callers_model_is_not_modified(mnist, mnist_feeds):
    before = mnist.proto.SerializeToString()
    export_qdq(mnist, minmax_ranges(mnist, mnist_feeds[0][:5]))
    assert mnist.proto.SerializeToString() == before


# --- digits MLP (Gemm transB=1, MatMul, Gemm transB=0, residual Add) ------------------------------


def test_digits_mlp_placement_and_weight_axes(digits, digits_ranges):
    model, _ = digits
    result = export_qdq(model, digits_ranges)
    exported = result.model
    onnx.checker.check_model(exported, full_check=True)
    assert result.opset_before == result.opset_after == 13 and not result.notes
    assert dict(result.weight_tensors) == {"W1": 0, "W2": 1, "W3": 1}
    # h1 feeds fc2_matmul and the residual add: one shared pair
    assert sorted(result.activation_tensors) == ["h1", "h2", "res", "scaled"]
    assert ops(exported)["QuantizeLinear"] == 7
    assert dq_source(exported, "fc2_matmul", 0)[1] is dq_source(exported, "residual_add", 1)[1]
    # no conv backbone: both residual inputs are quantized; biases and the constant Mul are not
    assert dq_source(exported, "residual_add", 0) is not None
    for node, slot in (("fc1", 2), ("fc3", 2), ("fc2_bias", 0), ("fc2_bias", 1), ("normalize", 0)):
        assert dq_source(exported, node, slot) is None
    scales = initializer(exported, dq_source(exported, "fc1", 1)[0].input[1])
    assert scales.shape == (48,)  # W1 is [48 out, 64 in] with transB=1
    assert initializer(exported, dq_source(exported, "fc3", 1)[0].input[1]).shape == (10,)


def test_digits_mlp_qdq_keeps_accuracy_on_the_held_out_split(digits, digits_ranges):
    model, split = digits
    result = export_qdq(model, digits_ranges)
    x_test, y_test = split["x_test"].astype(np.float32), split["y_test"]
    feeds = [{"pixels": x_test[i : i + 100]} for i in range(0, len(x_test), 100)]
    (row,) = compare_outputs(model.proto, result.model, feeds)
    assert row.samples == 500 and row.cosine >= 0.99 and row.top1_agreement >= 0.99 and row.sqnr_db >= 25
    fp32_accuracy = np.mean(run(model.proto, {"pixels": x_test})[0].argmax(1) == y_test)
    int8_accuracy = np.mean(run(result.model, {"pixels": x_test})[0].argmax(1) == y_test)
    assert fp32_accuracy >= 0.95
    assert int8_accuracy >= fp32_accuracy - 0.01


def test_digits_mlp_from_opset_11_is_upgraded(digits, digits_ranges):
    model, split = digits
    old = onnx.ModelProto()
    old.CopyFrom(model.proto)
    old.opset_import[0].version = 11
    onnx.checker.check_model(old, full_check=True)
    result = export_qdq(Model(old), digits_ranges)
    assert result.opset_before == 11 and result.opset_after == 13
    assert any("opset 11 to opset 13" in n for n in result.notes)
    onnx.checker.check_model(result.model, full_check=True)
    assert all(axis_of(n) is not None for n in result.model.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0].startswith("W"))
    feed = {"pixels": split["x_test"][:50].astype(np.float32)}
    np.testing.assert_allclose(run(result.model, feed, basic=True)[0],
                               run(export_qdq(model, digits_ranges).model, feed, basic=True)[0], rtol=1e-5)


def test_float16_model_gets_float16_qdq_at_opset_19(digits, digits_ranges):
    """An FP16 export quantized afterwards (ModelOpt's default layout): scales are float16, opset 19."""
    from trtq.export import export_fp16

    model, split = digits
    result = export_qdq(Model(export_fp16(model).model), digits_ranges)
    assert result.opset_before == 13 and result.opset_after == 19
    assert result.notes == ["upgraded the model from opset 13 to opset 19: QuantizeLinear of float16 tensors "
                            "needs opset >= 19"]
    onnx.checker.check_model(result.model, full_check=True)
    scale = initializer(result.model, dq_source(result.model, "fc1", 0)[0].input[1])
    assert scale.dtype == np.float16
    feeds = [{"pixels": split["x_test"].astype(np.float32)}]
    (row,) = compare_outputs(model.proto, result.model, feeds)
    assert row.cosine >= 0.99 and row.top1_agreement >= 0.99


# --- placement rules on small graphs (structure only) ---------------------------------------------


def _model(nodes, inputs, outputs, weights, opset=13) -> Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in weights.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8  # what onnxruntime >= 1.14 reads
    return Model(proto)


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_conv_transpose_weights_are_per_channel_on_axis_1():
    rng = np.random.default_rng(1)
    model = _model([helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="deconv")],
                   [_vi("x", [1, 4, 5, 5])], [_vi("y", [1, 6, 7, 7])],
                   {"w": rng.standard_normal((4, 6, 3, 3)).astype(np.float32), "b": np.ones(6, np.float32)})
    result = export_qdq(model, {"x": 2.0})
    q, dq = dq_source(result.model, "deconv", 1)
    assert axis_of(q) == axis_of(dq) == 1 and initializer(result.model, q.input[1]).shape == (6,)
    assert dq_source(result.model, "deconv", 2) is None
    run(result.model, {"x": rng.standard_normal((1, 4, 5, 5)).astype(np.float32)})


def test_a_weight_onnxruntime_cannot_compute_is_a_one_line_error():
    """A MatMul weight produced by an op onnxruntime does not know: the error names the weight, in one line."""
    nodes = [helper.make_node("Scramble", ["w"], ["w_scrambled"], name="scramble", domain="example.custom"),
             helper.make_node("MatMul", ["x", "w_scrambled"], ["y"], name="mm")]
    model = _model(nodes, [_vi("x", [1, 4])], [_vi("y", [1, 3])], {"w": np.ones((4, 3), np.float32)})
    model.proto.opset_import.append(helper.make_opsetid("example.custom", 1))
    with pytest.raises(TrtqError) as info:
        export_qdq(model, {"x": 1.0})
    message = str(info.value)
    assert message.startswith("cannot compute the constant weight 'w_scrambled' from initializers: ")
    assert "\n" not in message and "Scramble" in message


def test_attention_matmul_quantizes_both_activations():
    model = _model([helper.make_node("MatMul", ["q", "k"], ["scores"], name="bmm1"),
                    helper.make_node("Softmax", ["scores"], ["p"], name="softmax", axis=-1),
                    helper.make_node("MatMul", ["p", "v"], ["y"], name="bmm2")],
                   [_vi("q", [2, 8, 16]), _vi("k", [2, 16, 8]), _vi("v", [2, 8, 16])], [_vi("y", [2, 8, 16])], {})
    result = export_qdq(model, {"q": 3.0, "k": 3.0, "p": 1.0, "v": 2.0, "scores": 20.0})
    assert sorted(result.activation_tensors) == ["k", "p", "q", "v"] and not result.weight_tensors
    assert dq_source(result.model, "softmax", 0) is None


def test_residual_add_quantizes_only_the_skip_input_of_a_conv_branch():
    """x -> conv1 -> relu -> t; t -> conv2 -> bias Add -> BatchNormalization -> y; Add(y, t): TensorRT
    fuses the add into conv2, so only t (already quantized for conv2) is quantized there."""
    rng = np.random.default_rng(2)
    weights = {"w1": rng.standard_normal((4, 4, 3, 3)).astype(np.float32),
               "w2": rng.standard_normal((4, 4, 3, 3)).astype(np.float32),
               "bias": rng.standard_normal((1, 4, 1, 1)).astype(np.float32),
               "gamma": np.ones(4, np.float32), "beta": np.zeros(4, np.float32),
               "mean": np.zeros(4, np.float32), "var": np.ones(4, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["t"], name="relu"),
             helper.make_node("Conv", ["t", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "bias"], ["c2b"], name="bias_add"),
             helper.make_node("BatchNormalization", ["c2b", "gamma", "beta", "mean", "var"], ["y"], name="bn"),
             helper.make_node("Add", ["y", "t"], ["out"], name="residual"),
             helper.make_node("GlobalAveragePool", ["out"], ["pooled"], name="gap")]
    model = _model(nodes, [_vi("x", [1, 4, 6, 6])], [_vi("pooled", [1, 4, 1, 1])], weights)
    amax = {"x": 3.0, "c1": 9.0, "t": 9.0, "c2": 30.0, "c2b": 30.0, "y": 30.0, "out": 35.0}
    result = export_qdq(model, amax)
    exported = result.model
    assert dq_source(exported, "residual", 0) is None  # the fused conv branch
    assert dq_source(exported, "residual", 1)[1] is dq_source(exported, "conv2", 0)[1]  # shared pair on t
    assert dq_source(exported, "gap", 0) is not None
    assert sorted(result.activation_tensors) == ["out", "t", "x"]
    assert ops(exported)["QuantizeLinear"] == 5
    # with conv2 excluded there is no quantized backbone: both add inputs get Q/DQ
    both = export_qdq(model, amax, exclude=["conv2"]).model
    assert dq_source(both, "residual", 0) is not None and dq_source(both, "residual", 1) is not None


def test_residual_add_between_two_conv_branches_quantizes_the_shallower_one():
    """A ResNet downsample block: main branch conv_a -> relu -> conv_b, shortcut conv_s; the add
    fuses into conv_b (the deeper branch) and the shortcut output gets Q/DQ."""
    rng = np.random.default_rng(3)
    weights = {k: rng.standard_normal((4, 4, 1, 1)).astype(np.float32) for k in ("wa", "wb", "ws")}
    nodes = [helper.make_node("Conv", ["x", "ws"], ["s"], name="conv_s"),
             helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a"),
             helper.make_node("Relu", ["a"], ["ar"], name="relu_a"),
             helper.make_node("Conv", ["ar", "wb"], ["b"], name="conv_b"),
             helper.make_node("Add", ["s", "b"], ["y"], name="residual")]
    model = _model(nodes, [_vi("x", [1, 4, 4, 4])], [_vi("y", [1, 4, 4, 4])], weights)
    result = export_qdq(model, {"x": 1.0, "s": 4.0, "a": 4.0, "ar": 4.0, "b": 8.0})
    assert dq_source(result.model, "residual", 0) is not None
    assert dq_source(result.model, "residual", 1) is None


def test_weight_scales_guard_zero_channels_and_pick_the_axis():
    weight = np.array([[0.0, 0.0], [-2.54, 1.27], [0.5, -0.25]], dtype=np.float32)
    np.testing.assert_allclose(weight_scales(weight, 0), [1.0, 0.02, 0.5 / 127], rtol=1e-6)
    np.testing.assert_allclose(weight_scales(weight, 1), [0.02, 0.01], rtol=1e-6)
    assert weight_scales(weight, None) == pytest.approx(0.02)
    zero_model = _model([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)],
                        [_vi("x", [2, 2])], [_vi("y", [2, 3])], {"w": weight})
    result = export_qdq(zero_model, {"x": 1.0})
    x = np.array([[1.0, -0.5], [0.25, 0.75]], dtype=np.float32)
    y = run(result.model, {"x": x}, basic=True)[0]
    assert np.all(np.isfinite(y)) and np.all(y[:, 0] == 0)  # the all-zero output channel stays exactly 0


def test_plan_without_ranges_records_every_missing_tensor(mnist):
    plan = plan_qdq(mnist, {})
    assert not plan.points
    assert set(plan.missing_ranges) == {MNIST_INPUT, "ReLU32_Output_0", "ReLU114_Output_0"} | {
        "Pooling66_Output_0", "Pooling160_Output_0_reshape0"}


@pytest.mark.slow
def test_digits_script_regenerates_the_committed_files(tmp_path):
    """scripts/make_digits_mlp.py is seeded: re-running it gives the committed model and split."""
    pytest.importorskip("sklearn", reason="the digits script needs scikit-learn (pip install scikit-learn)")
    import subprocess
    import sys

    script = DATA.parent.parent / "scripts" / "make_digits_mlp.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], check=True, capture_output=True)
    regenerated = onnx.load(tmp_path / "digits_mlp.onnx")
    committed = onnx.load(DATA / "digits_mlp.onnx")
    for new, old in zip(regenerated.graph.initializer, committed.graph.initializer, strict=True):
        np.testing.assert_allclose(numpy_helper.to_array(new), numpy_helper.to_array(old), rtol=1e-4, atol=1e-5)
    with np.load(tmp_path / "digits_split.npz") as new, np.load(DATA / "digits_split.npz") as old:
        assert all(np.array_equal(new[k], old[k]) for k in old.files)


def test_agreement_numbers_over_batches_match_numpy_on_the_whole_data():
    """The running sums give what numpy computes on all outputs at once (batches of different sizes)."""
    rng = np.random.default_rng(7)
    reference = rng.standard_normal((23, 10))
    exported = reference + rng.normal(scale=0.3, size=reference.shape)
    exported[5] = -reference[5]  # one sample far off: the worst per-sample cosine is -1
    feeds = [{"rows": np.arange(start, stop)} for start, stop in ((0, 8), (8, 9), (9, 23))]
    (row,) = compare_runs(lambda feed: [reference[feed["rows"]]], {"x": lambda feed: [exported[feed["rows"]]]},
                          ["out"], feeds)["x"]
    diff = reference - exported
    assert row.samples == 23
    assert row.cosine == pytest.approx(np.sum(reference * exported) / np.linalg.norm(reference)
                                       / np.linalg.norm(exported))
    per_sample = np.sum(reference * exported, axis=1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(
        exported, axis=1)
    assert row.min_sample_cosine == pytest.approx(per_sample.min()) == pytest.approx(-1.0)
    assert row.sqnr_db == pytest.approx(10 * np.log10(np.sum(reference**2) / np.sum(diff**2)))
    assert row.max_abs_error == pytest.approx(np.abs(diff).max())
    assert row.mean_abs_error == pytest.approx(np.abs(diff).mean())
    assert row.top1_agreement == pytest.approx(np.mean(reference.argmax(1) == exported.argmax(1)))


# --- weights stored as int8 behind DequantizeLinear (trtq/export/int8_weights.py) ----------------------------


def test_int8_weights_compute_the_fake_quant_model_bit_for_bit_in_a_quarter_of_the_bytes(mnist, mnist_feeds, mnist_qdq,
                                                                                            digits, digits_ranges):
    from trtq.export.int8_weights import store_int8_weights

    model, split = digits
    digits_qdq = export_qdq(model, digits_ranges).model
    for qdq, feeds in ((mnist_qdq.model, mnist_feeds[1][:64]),
                       (digits_qdq, [{"pixels": split["x_test"][:64].astype(np.float32)}])):
        stored = store_int8_weights(qdq)
        onnx.checker.check_model(stored.model, full_check=True)
        quantized = {n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
        weights = [t for t in qdq.graph.initializer if t.name in quantized]
        assert stored.weights == len(weights) and ops(stored.model)["QuantizeLinear"] == ops(qdq)["QuantizeLinear"] - \
            len(weights)
        float_bytes = sum(numpy_helper.to_array(t).nbytes for t in weights)
        assert stored.saved_bytes == float_bytes - float_bytes // 4  # 4 bytes a weight become 1
        assert qdq.ByteSize() - stored.model.ByteSize() >= 0.7 * stored.saved_bytes
        for feed in feeds:  # the DequantizeLinear sees the same int8 values: outputs identical to the last bit
            assert all(a.tobytes() == b.tobytes() for a, b in zip(run(qdq, feed), run(stored.model, feed),
                                                                     strict=True))
        int8 = [t for t in stored.model.graph.initializer if t.name.endswith("_int8")]
        assert len(int8) == len(weights) and all(t.data_type == TensorProto.INT8 for t in int8)


def test_quantize_values_is_onnx_quantize_linear():
    from trtq.export.int8_weights import quantize_values

    weight = np.array([[0.5, -0.5, 1.5, 2.5], [127.4, -200.0, 0.49, -0.51]], dtype=np.float32)
    per_tensor = quantize_values(weight, np.array(1.0, np.float32), np.array(0, np.int8), 1)
    assert per_tensor.tolist() == [[0, 0, 2, 2], [127, -128, 0, -1]]  # half to even, saturated
    per_row = quantize_values(weight, np.array([0.5, 2.0], np.float32), np.array([0, 0], np.int8), 0)
    assert per_row.tolist() == [[1, -1, 3, 5], [64, -100, 0, 0]]
    unsigned = quantize_values(weight, np.array(1.0, np.float32), np.array(128, np.uint8), 1)
    assert unsigned.dtype == np.uint8 and unsigned[1].tolist() == [255, 0, 128, 127]
