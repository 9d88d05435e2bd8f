"""FP16 export: float16 compute, float32 I/O, overflow-prone ops kept in float32, real models and data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.test_export_qdq import run
from trtq.errors import TrtqError
from trtq.export import compare_outputs, export_fp16
from trtq.model import Model, load_model

DATA = Path(__file__).resolve().parent / "data"
FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.input, *g.output, *g.value_info]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


@pytest.fixture(scope="module")
def mnist_with_head(mnist_model_path) -> Model:
    """The zoo MNIST model plus two overflow-prone heads on its real activations: Softmax of the
    logits and the ReduceSumSquare "energy" of the last ReLU (sums of squares of values up to
    ~2500: far beyond float16's 65504)."""
    proto = load_model(mnist_model_path).proto
    extended = onnx.ModelProto()
    extended.CopyFrom(proto)
    g = extended.graph
    g.node.extend([
        helper.make_node("Softmax", ["Plus214_Output_0"], ["probabilities"], name="head_softmax", axis=1),
        helper.make_node("ReduceSumSquare", ["ReLU114_Output_0"], ["energy"], name="head_energy", keepdims=0),
    ])
    g.output.extend([helper.make_tensor_value_info("probabilities", FLOAT, [1, 10]),
                     helper.make_tensor_value_info("energy", FLOAT, [])])
    onnx.checker.check_model(extended, full_check=True)
    return Model(extended)


def test_mnist_fp16_keeps_float32_io_and_runs(mnist_model_path, mnist_digits):
    model = load_model(mnist_model_path)
    result = export_fp16(model)
    exported = result.model
    onnx.checker.check_model(exported, full_check=True)
    assert [(i.name, i.type.tensor_type.elem_type) for i in exported.graph.input if i.name == "Input3"] == [
        ("Input3", FLOAT)]
    assert [(o.name, o.type.tensor_type.elem_type) for o in exported.graph.output] == [("Plus214_Output_0", FLOAT)]
    types = elem_types(exported)
    assert types["Convolution28_Output_0"] == FLOAT16 and types["Times212_Output_0"] == FLOAT16
    # weights are float16 under their original names; nothing float32 is left behind
    for weight in ("Parameter5", "Parameter87", "Parameter193", "Parameter194"):
        assert types[weight] == FLOAT16
    assert not any(t.data_type == FLOAT for t in exported.graph.initializer)
    assert result.casts_added == 2 and not result.fp32_nodes and not result.warnings
    images, _ = mnist_digits
    feeds = [{"Input3": images[i : i + 1]} for i in range(200)]
    (row,) = compare_outputs(model.proto, exported, feeds)
    assert row.top1_agreement == 1.0 and row.cosine > 0.9999 and row.sqnr_db > 50
    assert run(exported, feeds[0])[0].dtype == np.float32


def test_overflow_prone_ops_stay_float32(mnist_with_head, mnist_digits):
    result = export_fp16(mnist_with_head)
    exported = result.model
    onnx.checker.check_model(exported, full_check=True)
    types = elem_types(exported)
    for name in ("head_softmax", "head_energy"):
        n = node(exported, name)
        assert types[n.input[0]] == FLOAT and types[n.output[0]] == FLOAT
        assert name in result.fp32_nodes
    assert any("Softmax is kept in float32 by default" in note for note in result.notes)
    # one cast back to float32 per tensor, shared: the logits output's cast also feeds the softmax
    assert node(exported, "head_softmax").input[0] == "Plus214_Output_0"
    casts = [n for n in exported.graph.node if n.op_type == "Cast"]
    assert len({tuple(n.output) for n in casts}) == len(casts) == result.casts_added
    images, _ = mnist_digits
    feeds = [{"Input3": images[i : i + 1]} for i in range(100)]
    rows = {r.name: r for r in compare_outputs(mnist_with_head.proto, exported, feeds)}
    assert rows["energy"].cosine > 0.9999 and np.isfinite(rows["energy"].max_abs_error)
    assert rows["probabilities"].top1_agreement == 1.0
    # the energies of real digits are beyond float16's range: computed in float16 they would be inf
    # (onnxruntime's CPU runs ReduceSumSquare in float32 and drops the cast pair, so it cannot show
    # the overflow; TensorRT would compute it in float16). Without the block list it would be float16:
    energies = np.array([run(mnist_with_head.proto, f)[2] for f in feeds[:5]])
    assert np.all(energies > np.finfo(np.float16).max)
    naive = export_fp16(mnist_with_head, fp32_op_types=()).model
    assert elem_types(naive)[node(naive, "head_energy").output[0]] == FLOAT16


def test_keep_fp32_by_name_and_unknown_names(mnist_model_path):
    model = load_model(mnist_model_path)
    result = export_fp16(model, keep_fp32=["Convolution110", "Plus214_Output_0"])
    types = elem_types(result.model)
    conv = node(result.model, "Convolution110")
    assert all(types[i] == FLOAT for i in conv.input) and types[conv.output[0]] == FLOAT
    assert result.fp32_nodes == {"Convolution110": "kept by the user", "Plus214": "kept by the user"}
    # Parameter87 is read by the float32 conv only: it stays float32
    assert types["Parameter87"] == FLOAT and types["Parameter5"] == FLOAT16
    with pytest.raises(TrtqError, match="'Conv_nope'"):
        export_fp16(model, keep_fp32=["Conv_nope"])


def test_weights_beyond_the_float16_range_are_clamped_with_a_warning(mnist_model_path):
    proto = onnx.ModelProto()
    proto.CopyFrom(load_model(mnist_model_path).proto)
    bias = next(t for t in proto.graph.initializer if t.name == "Parameter194")
    values = numpy_helper.to_array(bias).copy()
    values[0, :3] = [1e5, -2e5, 7e4]
    bias.CopyFrom(numpy_helper.from_array(values, "Parameter194"))
    result = export_fp16(Model(proto))
    assert result.clamped == {"Parameter194": 3}
    assert result.warnings == ["weight 'Parameter194': 3 value(s) beyond the float16 range clamped to +-65504"]
    converted = numpy_helper.to_array(next(t for t in result.model.graph.initializer if t.name == "Parameter194"))
    assert converted.dtype == np.float16 and list(converted[0, :3]) == [65504, -65504, 65504]
    np.testing.assert_array_equal(converted[0, 3:], values[0, 3:].astype(np.float16))


def test_weight_shared_by_float16_and_float32_nodes_keeps_both_copies():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["a"], name="mm"),
         helper.make_node("Add", ["a", "w"], ["s"], name="add"),
         helper.make_node("Softmax", ["w"], ["sw"], name="softmax_w", axis=1),
         helper.make_node("Mul", ["s", "sw"], ["y"], name="mul")],
        "g", [helper.make_tensor_value_info("x", FLOAT, [8, 8])], [helper.make_tensor_value_info("y", FLOAT, [8, 8])],
        [w])
    model = Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))
    result = export_fp16(model)
    inits = {t.name: t.data_type for t in result.model.graph.initializer}
    assert inits == {"w": FLOAT, "w_fp16": FLOAT16}
    assert node(result.model, "softmax_w").input[0] == "w" and node(result.model, "mm").input[1] == "w_fp16"
    x = rng.standard_normal((8, 8)).astype(np.float32)
    np.testing.assert_allclose(run(result.model, {"x": x})[0], run(model.proto, {"x": x})[0], rtol=2e-2, atol=2e-2)


def test_digits_mlp_fp16_stays_close(tmp_path):
    model = load_model(DATA / "digits_mlp.onnx")
    with np.load(DATA / "digits_split.npz") as split:
        x_test = split["x_test"].astype(np.float32)
    result = export_fp16(model)
    (row,) = compare_outputs(model.proto, result.model, [{"pixels": x_test}])
    assert row.samples == 500 and row.top1_agreement == 1.0 and row.sqnr_db > 50
    assert elem_types(result.model)["fc1_out"] == FLOAT16


def test_subgraph_inputs_and_control_flow_stay_float32():
    """An If branch reads the outer tensor 'r': its producer keeps float32 so the branch stays valid."""
    then_graph = helper.make_graph([helper.make_node("Neg", ["r"], ["t_out"], name="neg")], "then", [],
                                   [helper.make_tensor_value_info("t_out", FLOAT, [4])])
    else_graph = helper.make_graph([helper.make_node("Identity", ["r"], ["e_out"], name="ident")], "else", [],
                                   [helper.make_tensor_value_info("e_out", FLOAT, [4])])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"),
         helper.make_node("Abs", ["x"], ["a"], name="abs"),
         helper.make_node("If", ["cond"], ["branch"], name="if", then_branch=then_graph, else_branch=else_graph),
         helper.make_node("Add", ["branch", "a"], ["y"], name="add")],
        "g",
        [helper.make_tensor_value_info("x", FLOAT, [4]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", FLOAT, [4])])
    model = Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))
    result = export_fp16(model)
    assert result.fp32_nodes["relu"] == "its output is read inside a subgraph"
    assert result.fp32_nodes["if"] == "control flow"
    assert "abs" in result.fp16_nodes and "add" in result.fp16_nodes
    x = np.array([-1.5, 0.25, 2.0, -3.0], np.float32)
    for cond in (True, False):
        feed = {"x": x, "cond": np.array(cond)}
        np.testing.assert_allclose(run(result.model, feed)[0], run(model.proto, feed)[0], rtol=1e-3)


def test_a_qdq_model_converts_to_float16_without_casts_inside(mnist_model_path, mnist_digits):
    """Q/DQ then FP16 (TensorRT 11's INT8 + FP16 layout): Q/DQ run in float16 at opset 19, the only
    Casts are the two at the graph's input and output, and the result still matches FP32."""
    from tests.test_export_qdq import minmax_ranges
    from trtq.export import export_qdq
    from trtq.export.graph import upgrade_opset

    model = load_model(mnist_model_path)
    images, _ = mnist_digits
    qdq = export_qdq(model, minmax_ranges(model, [{"Input3": images[i : i + 1]} for i in range(100)]))
    result = export_fp16(Model(upgrade_opset(qdq.model, 13, 19)))
    exported = result.model
    onnx.checker.check_model(exported, full_check=True)
    casts = [n.name for n in exported.graph.node if n.op_type == "Cast"]
    assert casts == ["Input3_Cast_to_fp16", "Plus214_Output_0_Cast_to_fp32"]
    types = elem_types(exported)
    for n in exported.graph.node:
        if n.op_type == "DequantizeLinear":
            assert types[n.output[0]] == FLOAT16 and types[n.input[1]] == FLOAT16
    feeds = [{"Input3": images[i : i + 1]} for i in range(100, 300)]
    (row,) = compare_outputs(model.proto, exported, feeds)
    assert row.cosine >= 0.99 and row.top1_agreement >= 0.99
