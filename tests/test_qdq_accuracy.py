"""Already-quantized models through evaluate, sensitivity and back through export (issue 13, items 5-6)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from tests.conftest import DATA
from trtq.accuracy.existing_qdq import rank_pairs, reference_for
from trtq.cli import cli
from trtq.model import load_model

BROKEN = "Convolution110_Output_0_QuantizeLinear"


def trtq(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def digits(tmp_path_factory, mnist_digits):
    folder = tmp_path_factory.mktemp("eval")
    images, labels = mnist_digits
    np.save(folder / "x.npy", images[:200])
    np.save(folder / "y.npy", labels[:200])
    return folder / "x.npy", folder / "y.npy"


@pytest.fixture(scope="module")
def broken(qdq_models, tmp_path_factory):
    """The onnxruntime Q/DQ mnist with one activation pair's scale x 0.01 (its tensor clips badly)."""
    proto = onnx.load(str(qdq_models["ort"]))
    node = next(n for n in proto.graph.node if n.name == BROKEN)
    assert sum(node.input[1] in n.input for n in proto.graph.node) == 2  # this pair's own scale
    scale = next(t for t in proto.graph.initializer if t.name == node.input[1])
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(0.01), scale.name))
    path = tmp_path_factory.mktemp("broken") / "mnist.broken.onnx"
    onnx.save(proto, str(path))
    return path


def test_evaluate_against_the_fp32_twin_per_output_and_with_labels(qdq_models, digits, tmp_path):
    x, y = digits
    out = tmp_path / "e.json"
    run = trtq("evaluate", qdq_models["ort"], "--reference", qdq_models["fp32"], "--data", x, "--labels", y,
               "--json", out)
    assert run.exit_code == 0, run.output
    assert "FP32 model mnist13.onnx vs the model's own Q/DQ on 200 samples" in run.output
    assert "Plus214_Output_0" in run.output and "drop" in run.output
    document = json.loads(out.read_text())
    assert document["quantization"]["pairs"] == 18 and document["reference"] == "FP32 model mnist13.onnx"
    row = document["outputs"]["Plus214_Output_0"]
    assert row["sqnr_db"] > 15 and row["top1_agreement"] > 0.95
    assert document["accuracy"]["fp32"]["top1"] > 0.95 and document["accuracy"]["int8"]["top1"] > 0.95


def test_evaluate_without_a_reference_uses_the_graph_without_its_pairs(qdq_models, digits):
    x, y = digits
    run = trtq("evaluate", qdq_models["trtq"], "--data", x, "--labels", y)
    assert run.exit_code == 0, run.output
    assert "the same graph without its Q/DQ pairs vs the model's own Q/DQ" in run.output


def test_evaluate_refuses_ranges_for_a_quantized_model_and_a_reference_for_a_float_one(qdq_models, digits, tmp_path):
    x, _ = digits
    run = trtq("evaluate", qdq_models["ort"], "--cache", tmp_path / "c.cache", "--data", x)
    assert run.exit_code == 2 and "--cache would be ignored" in run.output
    run = trtq("evaluate", qdq_models["ort"], "--reference", qdq_models["trtq"], "--data", x)
    assert run.exit_code == 2 and "is quantized too" in run.output
    run = trtq("evaluate", qdq_models["fp32"], "--reference", qdq_models["fp32"], "--cache", tmp_path / "c",
               "--data", x)
    assert run.exit_code == 2 and "--reference is for a MODEL that is already quantized" in run.output


def test_the_digits_mlp_qdq_model_against_its_fp32_model(qdq_models, tmp_path):
    with np.load(DATA / "digits_split.npz") as data:
        np.save(tmp_path / "x.npy", data["x_test"].astype(np.float32))
        np.save(tmp_path / "y.npy", data["y_test"].astype(np.int64))
    run = trtq("evaluate", qdq_models["mlp_ort"], "--reference", qdq_models["mlp"], "--data", tmp_path / "x.npy",
               "--labels", tmp_path / "y.npy", "--json", tmp_path / "e.json")
    assert run.exit_code == 0, run.output
    document = json.loads((tmp_path / "e.json").read_text())
    assert document["samples"] == 500 and abs(document["accuracy"]["fp32"]["top1"]
                                              - document["accuracy"]["int8"]["top1"]) < 0.05


def test_sensitivity_ranks_a_deliberately_broken_pair_first(broken, qdq_models, mnist_digits):
    model = load_model(broken)
    images = mnist_digits[0][:64]
    batches = [{"Input3": images[i:i + 1]} for i in range(len(images))]
    result = rank_pairs(model, batches, reference_for(model, load_model(qdq_models["fp32"])), target_sqnr=25)
    assert result.ranking[0].pair.name == BROKEN
    assert result.ranking[0].without.sqnr_db > result.baseline.sqnr_db + 10
    assert result.to_drop is not None and result.to_drop[0].name == BROKEN


def test_sensitivity_drop_list_then_export_remove_qdq_meets_the_target(broken, qdq_models, digits, tmp_path):
    x, y = digits
    drop = tmp_path / "drop.txt"
    run = trtq("sensitivity", broken, "--reference", qdq_models["fp32"], "--data", x, "--max-samples", 64,
               "--target-sqnr", 25, "--keep-out", drop, "--json", tmp_path / "s.json")
    assert run.exit_code == 0, run.output
    first = next(line for line in run.output.splitlines() if line.split()[:1] == ["1"])
    assert first.split()[1] == BROKEN
    names = [line for line in drop.read_text().splitlines() if line and not line.startswith("#")]
    assert names[0] == BROKEN
    trimmed = tmp_path / "trimmed.onnx"
    assert trtq("export", broken, "--remove-qdq", f"@{drop}", "-o", trimmed).exit_code == 0
    run = trtq("evaluate", trimmed, "--reference", qdq_models["fp32"], "--data", x, "--max-samples", 64,
               "--json", tmp_path / "e.json")
    assert run.exit_code == 0, run.output
    assert json.loads((tmp_path / "e.json").read_text())["outputs"]["Plus214_Output_0"]["sqnr_db"] >= 25
