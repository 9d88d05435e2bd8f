"""Already-quantized models through calibrate, quantize and export (issue 13, item 3 and export --remove-qdq)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from tests.qdq_fixtures import mnist_feeds
from trtq.cli import cli
from trtq.model import load_model


def trtq(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def digits_npy(tmp_path_factory):
    path = tmp_path_factory.mktemp("digits") / "digits.npy"
    np.save(path, np.concatenate([f["Input3"] for f in mnist_feeds(16, start=0)]))
    return path


def _one_error_line(run) -> str:
    lines = run.output.strip().splitlines()
    assert run.exit_code == 2 and len(lines) == 1, run.output
    return lines[0]


@pytest.mark.parametrize("key", ["ort", "trtq"])
def test_calibrate_quantize_and_export_qdq_refuse_a_quantized_model_and_write_nothing(qdq_models, tmp_path,
                                                                                        digits_npy, key):
    model = qdq_models[key]
    runs = {
        "calibrate": trtq("calibrate", model, "--data", digits_npy, "--calibrator", "minmax",
                          "--cache", tmp_path / "c.cache"),
        "quantize": trtq("quantize", model, "--data", digits_npy, "-o", tmp_path / "q.onnx"),
        "export": trtq("export", model, "--qdq", "--ranges", tmp_path / "absent.json", "-o", tmp_path / "e.onnx"),
    }
    for name, run in runs.items():
        line = _one_error_line(run)
        assert "is already quantized (" in line and "TensorRT builds it with the model's own scales" in line, name
    assert "would ignore a calibration cache" in runs["calibrate"].output
    assert "--only-unquantized" in runs["export"].output
    assert list(tmp_path.iterdir()) == []


def test_only_unquantized_is_for_quantized_models(qdq_models, tmp_path):
    line = _one_error_line(trtq("export", qdq_models["fp32"], "--qdq", "--only-unquantized", "--ranges",
                                tmp_path / "r.json", "-o", tmp_path / "e.onnx"))
    assert "has no Q/DQ of its own" in line


def test_only_unquantized_quantizes_the_float_layers_and_never_touches_an_existing_pair(qdq_models, tmp_path,
                                                                                        digits_npy):
    # a Q/DQ model with one layer left in float: trtq's export keeping Convolution110 out
    fp32 = qdq_models["fp32"]
    assert trtq("calibrate", fp32, "--data", digits_npy, "--calibrator", "minmax", "--cache",
                tmp_path / "fp32.cache").exit_code == 0
    partial = tmp_path / "partial.onnx"
    assert trtq("export", fp32, "--qdq", "--cache", tmp_path / "fp32.cache", "--exclude", "Convolution110",
                "-o", partial).exit_code == 0
    before = load_model(partial)
    assert before.quantization.float_layers == ["Convolution110"]
    out = tmp_path / "full.onnx"
    run = trtq("export", partial, "--qdq", "--only-unquantized", "--cache", tmp_path / "fp32.cache", "-o", out)
    assert run.exit_code == 0, run.output
    after = load_model(out)
    assert after.quantization.float_layers == [] and after.quantization.problems() == []
    # node by node: every node of the input is in the output unchanged, except the one input of the layer
    # that now reads a new Q/DQ pair; every existing pair's nodes and scales are identical
    new_nodes = {n.name: n for n in after.graph.node}
    changed = []
    for node in before.graph.node:
        twin = new_nodes[node.name]
        if twin != node:
            changed.append(node.name)
            assert twin.op_type == node.op_type and list(twin.output) == list(node.output)
    assert changed == ["Convolution110"]
    old_pairs = {p.name: p for p in before.quantization.pairs}
    for pair in after.quantization.pairs:
        if pair.name in old_pairs:
            assert pair == old_pairs[pair.name]
            assert np.array_equal(pair.scale, old_pairs[pair.name].scale)
    added = [p for p in after.quantization.pairs if p.name not in old_pairs]
    assert {p.kind for p in added} == {"activation", "weight"} and len(added) == 2
    before_inits = {t.name: t for t in before.graph.initializer}
    after_inits = {t.name: t for t in after.graph.initializer}
    # every initializer is kept as it was, but the float weight of the layer newly quantized: stored as int8
    gone = [name for name in before_inits if name not in after_inits]
    assert gone == ["Parameter87"] and after_inits["Parameter87_int8"].data_type == onnx.TensorProto.INT8
    assert all(after_inits[name] == tensor for name, tensor in before_inits.items() if name not in gone)


def _run(proto_or_path, x):
    data = proto_or_path.SerializeToString() if isinstance(proto_or_path, onnx.ModelProto) else str(proto_or_path)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {"Input3": x})[0]


def test_remove_all_pairs_gives_back_the_fp32_graph(qdq_models, tmp_path, mnist_digits):
    out = tmp_path / "float.onnx"
    run = trtq("export", qdq_models["trtq"], "--remove-qdq", "*", "-o", out)
    assert run.exit_code == 0 and "8 Q/DQ pairs removed" in run.output
    fp32 = onnx.load(str(qdq_models["fp32"]))
    twin = onnx.load(str(out))
    assert not load_model(out).quantization.explicit
    # trtq's export folded the reshaped MatMul weight into an initializer; otherwise node by node equal
    expected = [n for n in fp32.graph.node if n.name != "Times212_reshape1"]
    for a, b in zip(twin.graph.node, expected, strict=True):
        if a.name == "Times212":
            assert list(a.input) == ["Pooling160_Output_0_reshape0", "Parameter193_reshape1_folded"]
        else:
            assert a == b
    x = mnist_digits[0][:1]
    assert np.array_equal(_run(out, x), _run(qdq_models["fp32"], x))


def test_remove_one_pair_of_an_onnxruntime_model_and_unknown_names(qdq_models, tmp_path):
    drop = tmp_path / "drop.txt"
    drop.write_text("# pairs to drop\nConvolution28_Output_0\nParameter5_DequantizeLinear\n")
    out = tmp_path / "trimmed.onnx"
    run = trtq("export", qdq_models["ort"], "--remove-qdq", f"@{drop}", "-o", out)
    assert run.exit_code == 0 and "2 Q/DQ pairs removed" in run.output and "16 kept" in run.output
    q = load_model(out).quantization
    assert len(q.pairs) == 16 and "Convolution28" in q.float_layers
    line = _one_error_line(trtq("export", qdq_models["ort"], "--remove-qdq", "nope", "-o", tmp_path / "x.onnx"))
    assert "no Q/DQ pair named 'nope'" in line and not (tmp_path / "x.onnx").exists()


def test_build_int8_of_a_qdq_model_does_not_run_quantize(qdq_models, tmp_path):
    """`trtq build --int8` without --calibrator runs trtq quantize for a float model (it needs --data); a Q/DQ
    model is built as it is, so the same command asks for no data: here it stops only at TensorRT itself."""
    run = trtq("build", qdq_models["ort"], "--int8", "-o", tmp_path / "q.engine")
    line = _one_error_line(run)
    assert "--data" not in line and ("TensorRT" in line or "tensorrt" in line), line
    assert not any(tmp_path.iterdir())
