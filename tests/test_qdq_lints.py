"""The ONNX-only Q/DQ placement lints (`trtq report MODEL.onnx`): real Q/DQ models made from the real
MNIST model and the digits MLP (onnxruntime's quantize_static, trtq's own export) and one small
hand-built graph per rule, each also in a fixed form that must be lint-clean."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from tests.qdq_fixtures import mnist_feeds
from trtq.cli import cli
from trtq.model import load_model
from trtq.report.qdq_lints import lint_model_file, lint_qdq_model, looks_like_onnx

LINT_KEYS = {"kind", "layer", "message", "time_ms", "time_pct"}  # as the engine lints' JSON


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _kinds(path: Path) -> Counter:
    return Counter(lint.kind for lint in lint_model_file(path).lints)


# -- real models ---------------------------------------------------------------------------------


def test_onnxruntime_mnist_lints(qdq_models) -> None:
    """onnxruntime's default op types quantize the bias Adds and the output; its MatMul weight stays per tensor."""
    lints = lint_model_file(qdq_models["ort"]).lints
    assert Counter(lint.kind for lint in lints) == {
        "quantized-bias": 3, "qdq-splits-fusion": 3, "per-tensor-weight": 1, "qdq-float-consumer": 1}
    by_kind = {lint.kind: lint for lint in lints}
    assert "'Parameter193_reshape1' of MatMul 'Times212'" in by_kind["per-tensor-weight"].message
    assert "10 output channels" in by_kind["per-tensor-weight"].message
    assert "network output 'Plus214_Output_0'" in by_kind["qdq-float-consumer"].message
    assert "--remove-qdq Plus214_Output_0_QuantizeLinear" in by_kind["qdq-float-consumer"].message
    splits = [lint.message for lint in lints if lint.kind == "qdq-splits-fusion"]
    assert any("Conv 'Convolution28'" in m and "bias Add 'Plus30'" in m for m in splits)
    biases = {lint.layer for lint in lints if lint.kind == "quantized-bias"}
    assert biases == {"Parameter6_DequantizeLinear", "Parameter88_DequantizeLinear", "Parameter194_DequantizeLinear"}


def test_onnxruntime_mlp_lints(qdq_models) -> None:
    """The MLP's Gemm biases are int32 (fine); its MatMul + Add is quantized like mnist's."""
    assert _kinds(qdq_models["mlp_ort"]) == {"quantized-bias": 1, "qdq-splits-fusion": 1, "qdq-float-consumer": 1}


def test_trtq_own_export_is_lint_clean(qdq_models) -> None:
    result = lint_model_file(qdq_models["trtq"])
    assert result.lints == [] and result.notes == []
    assert result.quantization.pairs


def test_trtq_export_of_the_residual_mlp_is_lint_clean(qdq_models) -> None:
    from tests.conftest import DATA
    from trtq.calibrate import calibrate
    from trtq.export import export_qdq
    from trtq.model import Model

    with np.load(DATA / "digits_split.npz") as data:
        rows = data["x_train"].astype(np.float32)
    model = load_model(qdq_models["mlp"])
    name = model.graph.input[0].name
    amax = calibrate(model, [{name: rows[i:i + 8]} for i in range(0, 64, 8)], "minmax").amax
    exported = export_qdq(model, amax).model
    quantization = Model(exported).quantization
    assert len(quantization.pairs) == 7 and quantization.float_layers == []
    assert lint_qdq_model(exported, quantization) == []


def test_cli_prints_one_line_per_lint_and_exits_0(qdq_models, tmp_path) -> None:
    out = tmp_path / "lints.json"
    run = _run("report", qdq_models["ort"], "--json", out)
    assert run.exit_code == 0, run.output
    lines = run.output.splitlines()
    assert lines[0].startswith(f"{qdq_models['ort']}: 18 Q/DQ pairs")
    assert "Lints (8)" in lines
    assert sum(1 for line in lines if line.startswith("  [")) == 8
    doc = json.loads(out.read_text())
    assert len(doc["lints"]) == 8 and all(set(lint) == LINT_KEYS for lint in doc["lints"])
    assert doc["model"]["quantization"]["pairs"] == 18 and doc["notes"] == []


def test_cli_markdown(qdq_models) -> None:
    run = _run("report", qdq_models["ort"], "--markdown")
    assert run.exit_code == 0 and "### Lints (8)" in run.output and "- **per-tensor-weight**:" in run.output


def test_a_float_model_is_a_note_and_exit_0(qdq_models, tmp_path) -> None:
    out = tmp_path / "lints.json"
    run = _run("report", qdq_models["fp32"], "--json", out)
    assert run.exit_code == 0, run.output
    assert "Lints (0)" in run.output and "has no Q/DQ: nothing to lint" in run.output
    doc = json.loads(out.read_text())
    assert doc["lints"] == [] and "nothing to lint" in doc["notes"][0]


def test_engine_options_are_refused_for_an_onnx_model(qdq_models) -> None:
    for option in (["--html", "r.html"], ["--profile", qdq_models["ort"]], ["--expect-int8"]):
        run = _run("report", qdq_models["ort"], *option)
        assert run.exit_code == 2, run.output
        lines = run.output.strip().splitlines()
        assert len(lines) == 1 and option[0].split("/")[0] in lines[0] and "is an ONNX model" in lines[0]


def test_onnx_found_by_content_not_only_suffix(qdq_models, tmp_path) -> None:
    bare = tmp_path / "model"
    bare.write_bytes(qdq_models["ort"].read_bytes())
    assert looks_like_onnx(bare) and looks_like_onnx(qdq_models["trtq"])
    junk = tmp_path / "model.bin"
    junk.write_bytes(b"\x00\x01binary plan")
    text = tmp_path / "layers.json"
    text.write_text("{}")
    assert not looks_like_onnx(junk) and not looks_like_onnx(text)
    run = _run("report", bare)
    assert run.exit_code == 0 and "Lints (8)" in run.output


def test_a_broken_qdq_model_is_bad_input(qdq_models, tmp_path) -> None:
    """The bad-input checks of Q/DQ models run first: one line naming the node, exit 2."""
    proto = onnx.load(str(qdq_models["trtq"]))
    scale = next(t for t in proto.graph.initializer if t.name == "Input3_scale")
    scale.CopyFrom(numpy_helper.from_array(np.array(-1.0, np.float32), "Input3_scale"))
    path = tmp_path / "negative.onnx"
    onnx.save(proto, str(path))
    run = _run("report", path)
    assert run.exit_code == 2
    assert len(run.output.strip().splitlines()) == 1 and "negative" in run.output and "Input3" in run.output


# -- hand-built graphs, one per rule -------------------------------------------------------------

def _f(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


class Graph:
    """A tiny model builder: float inputs, initializers, Q/DQ pairs with a given scale."""

    def __init__(self):
        self.nodes, self.inits = [], []

    def const(self, name, value, dtype=np.float32):
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def qdq(self, tensor, scale, axis=None):
        s = self.const(f"{tensor}_s", scale)
        z = self.const(f"{tensor}_z", np.zeros(np.shape(scale), np.int8), np.int8)
        attrs = {"axis": axis} if axis is not None else {}
        self.nodes.append(helper.make_node("QuantizeLinear", [tensor, s, z], [f"{tensor}_q"], f"{tensor}_Q", **attrs))
        self.nodes.append(helper.make_node("DequantizeLinear", [f"{tensor}_q", s, z], [f"{tensor}_dq"],
                                           f"{tensor}_DQ", **attrs))
        return f"{tensor}_dq"

    def node(self, op, inputs, output, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [output], output, **attrs))
        return output

    def weight(self, name, shape, per_channel=True):
        rng = np.random.default_rng(0)
        w = self.const(name, rng.standard_normal(shape).astype(np.float32))
        scale = np.full(shape[0], 0.02, np.float32) if per_channel else np.float32(0.02)
        return self.qdq(w, scale, axis=0 if per_channel else None)

    def model(self, inputs, outputs, path: Path) -> Path:
        graph = helper.make_graph(self.nodes, "g", inputs, outputs, self.inits)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        proto.ir_version = 7
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path))
        return path


def _conv_block(g: Graph, x: str, name: str, channels: int = 4) -> str:
    """An INT8 3x3 Conv: Q/DQ on its input and per-channel weights."""
    weight = g.weight(f"{name}_w", [channels, channels, 3, 3])
    return g.node("Conv", [g.qdq(x, 0.05), weight], name, pads=[1, 1, 1, 1])


def _lints(path: Path):
    model = load_model(path)
    return lint_qdq_model(model.proto, model.quantization)


def test_dq_into_softmax_and_the_fixed_form(tmp_path) -> None:
    def build(softmax: bool) -> Path:
        g = Graph()
        y = _conv_block(g, "x", "conv")
        if softmax:
            out = g.node("Softmax", [g.node("Reshape", [g.qdq(y, 0.1), g.const("shp", [1, -1], np.int64)], "flat")],
                         "prob", axis=1)
        else:
            out = g.node("Softmax", [g.node("Reshape", [y, g.const("shp", [1, -1], np.int64)], "flat")], "prob", axis=1)
        return g.model([_f("x", [1, 4, 8, 8])], [_f(out, [1, 256])], tmp_path / f"softmax{softmax}.onnx")

    lints = _lints(build(True))
    assert [lint.kind for lint in lints] == ["qdq-float-consumer"]
    assert "feeds only Softmax 'prob'" in lints[0].message and lints[0].layer == "conv_Q"
    assert _lints(build(False)) == []


def test_residual_add_with_a_float_skip_input_and_the_fixed_form(tmp_path) -> None:
    def build(skip_quantized: bool) -> Path:
        g = Graph()
        x_dq = g.qdq("x", 0.05)
        main = g.node("Relu", [g.node("Conv", [x_dq, g.weight("w1", [4, 4, 3, 3])], "conv1", pads=[1, 1, 1, 1])], "r1")
        main = g.node("Conv", [g.qdq(main, 0.05), g.weight("w2", [4, 4, 3, 3])], "conv2", pads=[1, 1, 1, 1])
        skip = "r1_dq" if skip_quantized else "r1"  # quantized: the skip input shares conv2's input pair
        out = g.node("Relu", [g.node("Add", [main, skip], "add")], "r2")
        out = g.node("Conv", [g.qdq(out, 0.1), g.weight("w3", [4, 4, 1, 1])], "conv3")
        return g.model([_f("x", [1, 4, 8, 8])], [_f(out, [1, 4, 8, 8])], tmp_path / f"res{skip_quantized}.onnx")

    lints = _lints(build(False))
    assert [lint.kind for lint in lints] == ["residual-skip-float"]
    assert "skip input 'r1' has no Q/DQ while 'conv2'" in lints[0].message and lints[0].layer == "add"
    assert _lints(build(True)) == []


def test_qdq_between_conv_and_its_batchnorm(tmp_path) -> None:
    g = Graph()
    y = _conv_block(g, "x", "conv")
    c = 4
    bn = g.node("BatchNormalization", [g.qdq(y, 0.1), g.const("g", np.ones(c)), g.const("b", np.zeros(c)),
                                       g.const("m", np.zeros(c)), g.const("v", np.ones(c))], "bn")
    path = g.model([_f("x", [1, 4, 8, 8])], [_f(bn, [1, 4, 8, 8])], tmp_path / "bn.onnx")
    lints = _lints(path)
    assert [lint.kind for lint in lints] == ["qdq-splits-fusion"]
    assert "BatchNormalization 'bn'" in lints[0].message and "move it after 'bn'" in lints[0].message


def test_per_tensor_conv_weight_and_int8_conv_bias(tmp_path) -> None:
    def build(per_channel: bool, int8_bias: bool) -> Path:
        g = Graph()
        bias = g.const("bias", np.full(4, 0.5))
        if int8_bias:
            bias = g.qdq(bias, np.float32(0.004))
        y = g.node("Conv", [g.qdq("x", 0.05), g.weight("w", [4, 4, 3, 3], per_channel=per_channel), bias], "conv")
        return g.model([_f("x", [1, 4, 8, 8])], [_f(y, [1, 4, 6, 6])], tmp_path / f"w{per_channel}{int8_bias}.onnx")

    lints = _lints(build(per_channel=False, int8_bias=True))
    assert sorted(lint.kind for lint in lints) == ["per-tensor-weight", "quantized-bias"]
    weight = next(lint for lint in lints if lint.kind == "per-tensor-weight")
    assert "'w' of Conv 'conv' has one scale for its 4 output channels" in weight.message
    assert "axis 0" in weight.message
    assert _lints(build(per_channel=True, int8_bias=False)) == []


def test_concat_of_different_scales_and_the_fixed_form(tmp_path) -> None:
    def build(scales: tuple[float, float]) -> Path:
        g = Graph()
        a = g.node("Relu", [g.qdq("x", 0.05)], "a")
        b = g.node("Sigmoid", ["x"], "b")
        cat = g.node("Concat", [g.qdq(a, scales[0]), g.qdq(b, scales[1])], "cat", axis=1)
        y = g.node("Conv", [cat, g.weight("w", [4, 8, 1, 1])], "conv")
        return g.model([_f("x", [1, 4, 8, 8])], [_f(y, [1, 4, 8, 8])], tmp_path / f"cat{scales[1]}.onnx")

    lints = _lints(build((0.05, 0.008)))
    assert [lint.kind for lint in lints] == ["concat-scales"]
    assert "0.05 from 'a'" in lints[0].message and "0.008 from 'b'" in lints[0].message
    assert _lints(build((0.05, 0.05))) == []


@pytest.mark.parametrize("op", ["Relu", "MaxPool", "Transpose", "Slice"])
def test_pass_through_and_int8_consumers_are_not_linted(tmp_path, op) -> None:
    """A DQ feeding Relu/MaxPool, or an INT8 Conv through Transpose/Slice: TensorRT uses the pair."""
    g = Graph()
    x = g.qdq("x", 0.05)
    if op == "MaxPool":
        y = g.node("MaxPool", [x], "y", kernel_shape=[1, 1])
    elif op == "Transpose":
        y = g.node("Transpose", [x], "y", perm=[0, 1, 3, 2])
    elif op == "Slice":
        y = g.node("Slice", [x, g.const("st", [0], np.int64), g.const("en", [8], np.int64),
                             g.const("ax", [3], np.int64)], "y")
    else:
        y = g.node("Relu", [x], "y")
    z = g.node("Conv", [g.qdq(y, 0.05) if op in ("Relu", "MaxPool") else y, g.weight("w", [4, 4, 1, 1])], "conv")
    path = g.model([_f("x", [1, 4, 8, 8])], [_f(z, [1, 4, 8, 8])], tmp_path / f"{op}.onnx")
    assert _lints(path) == []


def test_export_qdq_notes_no_lint_for_its_own_placement(qdq_models, tmp_path) -> None:
    digits_npy = tmp_path / "digits.npy"
    np.save(digits_npy, np.concatenate([f["Input3"] for f in mnist_feeds(16, start=0)]))
    cache = tmp_path / "fp32.cache"
    assert _run("calibrate", qdq_models["fp32"], "--data", digits_npy, "--calibrator", "minmax",
                "--cache", cache).exit_code == 0
    run = _run("export", qdq_models["fp32"], "--qdq", "--cache", cache, "-o", tmp_path / "q.onnx")
    assert run.exit_code == 0, run.output
    assert "Q/DQ lint" not in run.output
    assert lint_model_file(tmp_path / "q.onnx").lints == []
