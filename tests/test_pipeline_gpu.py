"""The pipeline's GPU side. Writing a report from an engine's layers works anywhere (tested here on the
layer and profile JSON that TensorRT wrote for a real A100 engine); building, benchmarking and reporting
real engines through ``trtq run`` needs TensorRT and a GPU (marked ``gpu``: skipped elsewhere, saying
what is missing)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from trtq.cli import cli
from trtq.errors import TrtqError
from trtq.fileio import sha256_file
from trtq.pipeline.config import DataConfig, ModelConfig, Variant
from trtq.pipeline.steps import Layout, write_report_files

REPO = Path(__file__).resolve().parent.parent
RESNET = Path(__file__).resolve().parent / "data" / "report" / "a100-resnet"


def test_report_files_from_real_engine_layers(tmp_path):
    from trtq.report.layers import load_layer_info
    from trtq.report.profile import load_profile

    model = ModelConfig(0, "resnet", tmp_path / "resnet.onnx", (Variant("int8", "entropy2"),),
                        DataConfig("models[0].data", tmp_path), DataConfig("models[0].eval", tmp_path))
    variant = model.variants[0]
    files, summary = write_report_files(load_layer_info(RESNET / "qat.graph.json"),
                                        load_profile(RESNET / "qat.profile.json"), "resnet/int8-entropy2", variant,
                                        None, "the ranges", tmp_path, Layout(model))
    assert sorted(files) == ["resnet/int8-entropy2/report.html", "resnet/int8-entropy2/report.json",
                             "resnet/int8-entropy2/report.md"]
    document = json.loads(files["resnet/int8-entropy2/report.json"].read_text())
    assert len(document["layers"]) == summary["layers"] > 10
    assert "INT8" in summary["precision"] and summary["total_ms"] > 0
    assert document["summary"]["precision"]["INT8"]["layers"] == summary["precision"]["INT8"]["layers"]
    assert "resnet/int8-entropy2" in files["resnet/int8-entropy2/report.md"].read_text()
    assert files["resnet/int8-entropy2/report.html"].read_text().lstrip().lower().startswith("<!doctype html")


@pytest.fixture(scope="module")
def gpu_ready():
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("TensorRT is not installed (pip install 'trtq[trt]')")
    from trtq.pipeline.environment import describe_machine

    try:
        machine = describe_machine(probe_gpu=True)
    except TrtqError as exc:
        pytest.skip(f"no usable TensorRT/GPU here: {exc}")
    if not machine.gpu_ready:
        pytest.skip(f"no usable TensorRT/GPU here: {machine.gpu_reason}")
    return machine


@pytest.mark.gpu
@pytest.mark.slow
def test_run_builds_benches_and_reports_the_engines(gpu_ready, tmp_path):
    config = tmp_path / "trtq.toml"
    text = (REPO / "trtq.toml").read_text().replace('"calib_data/', f'"{REPO}/calib_data/')
    config.write_text(text.replace("[gates]", "[bench]\nduration_s = 0.5\nprofile_iterations = 5\n\n[gates]\n"
                                              "max_latency_ms = 1000.0"))
    out = tmp_path / "artifacts"
    result = CliRunner().invoke(cli, ["run", str(config), "-o", str(out), "--require-gpu"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["versions"]["tensorrt"] and doc["versions"]["gpu"] and doc["versions"]["driver"]
    for variant in ("int8-entropy2", "fp16"):
        for step in ("build", "bench", "report"):
            assert doc["actions"][f"mnist/{variant}/{step}"]["action"] == "ran"
        engine = out / f"mnist/{variant}/mnist-8.engine"
        assert doc["files"][f"mnist/{variant}/mnist-8.engine"]["sha256"] == sha256_file(engine)
        built = json.loads((out / f"mnist/{variant}/mnist-8.engine.json").read_text())
        assert built["engine"]["sha256"] == sha256_file(engine)
        expected = ["fp32", "int8"] if variant.startswith("int8") else ["fp32", "fp16"]
        assert built["precisions"] == expected
        entry = doc["models"]["mnist"]["variants"][variant]
        assert entry["latency"]["latency_ms"]["median"] > 0
        latency_gate = next(g for g in entry["gates"] if g["gate"] == "max_latency_ms")
        assert latency_gate["status"] == "pass"
        report = json.loads((out / f"mnist/{variant}/report.json").read_text())
        assert report["layers"]
        if variant.startswith("int8"):
            assert "INT8" in report["summary"]["precision"]

    again = tmp_path / "again"
    shutil.copytree(out, again)
    result = CliRunner().invoke(cli, ["run", str(config), "-o", str(again)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads((again / "manifest.json").read_text())
    assert all(a["action"] == "reused" for a in doc["actions"].values()), doc["actions"]
