"""`trtq report` from the command line on the real fixture files: terminal, JSON, Markdown, HTML, errors."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.report_data import A100, HANDMADE, TRTEXEC
from trtq.cli import cli

LAYER_KEYS = {"name", "type", "precision", "kernel_class", "time_ms", "time_pct", "onnx_nodes"}


def _run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_terminal_report_of_qat_engine() -> None:
    result = _run("report", A100 / "qat.graph.json", "--profile", A100 / "qat.profile.json")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "37 layers" in out and "total 1.0957 ms per inference" in out
    summary = out[out.index("Precision summary"):]
    assert "INT8           22   0.7107  64.9 %" in summary
    assert "FP16           11   0.1915  17.5 %" in summary
    assert "FP32            4   0.1935  17.7 %" in summary
    assert "Lints (12)" in out and "[int8-fallback] 'MaxPool_12' (TiledPooling) ran in FP32" in out
    assert "INT8 tensor core" in out and "INT8 no tensor core (DP4A)" in out


def test_sibling_profile_is_found_and_announced() -> None:
    result = CliRunner().invoke(cli, ["report", str(A100 / "fp16.graph.json")])
    assert result.exit_code == 0
    assert "using the profile beside" in result.output and "fp16.profile.json" in result.output
    assert "1.0168 ms" in result.output


def test_json_report_schema(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = _run("report", A100 / "qat.graph.json", "--json", out, "-q")
    assert result.exit_code == 0 and result.output == ""
    doc = json.loads(out.read_text())
    assert len(doc["layers"]) == 37
    assert all(LAYER_KEYS <= set(layer) for layer in doc["layers"])
    conv = doc["layers"][1]
    assert (conv["name"], conv["precision"], conv["kernel_class"]) == (
        "conv1.weight + QuantizeLinear_7 + Conv_9", "INT8", "int8_dp4a")
    assert conv["time_ms"] == 0.201728 and conv["time_pct"] == pytest.approx(18.4112, abs=1e-3)
    precision = doc["summary"]["precision"]
    assert list(precision) == ["INT8", "FP16", "FP32"]
    assert precision["INT8"]["layers"] == 22 and precision["INT8"]["time_ms"] == pytest.approx(0.710656)
    assert {lint["kind"] for lint in doc["lints"]} == {"int8-fallback", "unfused-qdq"}
    assert all(set(lint) >= {"kind", "layer", "message"} for lint in doc["lints"])


def test_json_of_10_16_file_has_onnx_nodes(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert _run("report", TRTEXEC / "exportLayerInfo.json", "--profile", TRTEXEC / "result-05.log", "--json",
                out, "-q").exit_code == 0
    doc = json.loads(out.read_text())
    assert doc["layers"][0]["onnx_nodes"] == ["node_conv2d", "node_relu"]
    assert doc["layers"][0]["time_ms"] is None  # no profile row of that name (another build)
    assert len(doc["unmatched_profile"]) == 13 and doc["summary"]["unmatched_profile"]["rows"] == 13
    pool = next(layer for layer in doc["layers"] if layer["name"] == "node_max_pool2d")
    assert pool["time_ms"] == 0.0045


def test_compare_fp16_qat(tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    result = _run("report", A100 / "fp16.graph.json", "--compare", A100 / "qat.graph.json", "--json", out)
    assert result.exit_code == 0, result.output
    assert "A 1.0168 ms, B 1.0957 ms (B/A 1.08x)" in result.output
    assert "23 aligned layers, 0 only in A, 0 only in B" in result.output
    assert "Where B gains" in result.output and "Where B loses" in result.output
    doc = json.loads(out.read_text())["compare"]
    assert doc["matched_pairs"] == 23
    assert doc["b"]["precision"]["INT8"]["layers"] == 22
    assert doc["pairs"][0]["b"]["overhead_layers"] == ["QuantizeLinear_2"]
    assert doc["pairs"][0]["delta_ms"] == pytest.approx(0.070656)


def test_markdown_for_ci() -> None:
    result = _run("report", A100 / "qat.graph.json", "--markdown", "--compare", A100 / "fp16.graph.json")
    assert result.exit_code == 0
    out = result.stdout  # the "using the profile beside" notes go to stderr
    assert out.startswith("## trtq report: ")
    assert "| INT8 | 22 | 0.7107 | 64.9 % |" in out
    assert "### Lints (12)" in out and "- **int8-fallback**:" in out
    assert "<details><summary>All layers</summary>" in out
    assert "### Comparison" in out and "| A layer | A prec |" in out


def test_html_written_atomically(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    result = _run("report", HANDMADE / "layerinfo-11.x-handmade.json", "--profile",
                  HANDMADE / "trtexec-11.4-handmade.log", "--html", out, "-q")
    assert result.exit_code == 0
    page = out.read_text()
    assert "conv1 + relu1" in page and "<svg" in page
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temporary files left


def test_sort_by_time_and_top() -> None:
    result = _run("report", A100 / "qat.graph.json", "--profile", A100 / "qat.profile.json", "--sort", "time",
                  "--top", "3")
    assert result.exit_code == 0
    rows = [line for line in result.stdout.splitlines() if re.match(r"^\s*\d+\s{2}\S", line)]
    assert len(rows) == 3
    assert rows[0].split()[0] == "2" and "conv1.weight" in rows[0]  # 0.2017 ms, layer #2
    assert rows[1].split()[0] == "3" and "MaxPool_12" in rows[1]  # 0.0952 ms
    assert rows[2].split()[0] == "1" and "QuantizeLinear_2" in rows[2]  # 0.0614 ms
    assert "(top 3 of 37 layers by time)" in result.stdout


def test_ranges_and_build_log_options(tmp_path: Path) -> None:
    ranges = tmp_path / "ranges.json"
    ranges.write_text(json.dumps({"calibrator": "entropy2", "tensors": {"input.1": {"amax": 2.5}}}))
    result = _run("report", A100 / "qat.graph.json", "--ranges", ranges, "--build-log",
                  HANDMADE / "trtexec-8.6-handmade.log", "--json", tmp_path / "r.json", "-q")
    assert result.exit_code == 0, result.output
    lints = json.loads((tmp_path / "r.json").read_text())["lints"]
    missing = [lint for lint in lints if lint["kind"] == "missing-range"]
    assert any("fc1_out" in lint["message"] for lint in missing)
    assert not any("'input.1'" in lint["message"] for lint in missing)
    assert len(missing) > 2


def test_ranges_from_a_calibration_cache(tmp_path: Path) -> None:
    cache = tmp_path / "model.cache"
    cache.write_text("TRT-101601-EntropyCalibration2\ninput.1: 3c010204\n")
    result = _run("report", A100 / "qat.graph.json", "--ranges", cache, "--json", tmp_path / "r.json", "-q")
    assert result.exit_code == 0, result.output
    lints = json.loads((tmp_path / "r.json").read_text())["lints"]
    assert any(lint["kind"] == "missing-range" for lint in lints)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "missing.json"], "file not found: missing.json"),
        (["report", str(TRTEXEC / "result-01.log")], "this looks like a trtexec log"),
        (["report", str(A100 / "qat.graph.json"), "--compare-profile", str(A100 / "qat.profile.json")],
         "--compare-profile needs --compare"),
        (["report", str(A100 / "qat.graph.json"), "--profile", str(A100 / "qat.graph.json")],
         "not a trtexec --exportProfile file"),
        (["report", str(A100 / "qat.graph.json"), "--profile", str(TRTEXEC / "result-01.log")],
         "has no per-layer profile"),
        (["report", str(A100 / "qat.graph.json"), "--html", "/nonexistent-dir/r.html"], "does not exist"),
    ],
)
def test_user_errors_are_one_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith("trtq: note:")]
    assert len(lines) == 1 and lines[0].startswith("trtq: error:") and message in lines[0], result.output


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_engine_file_without_tensorrt(tmp_path: Path) -> None:
    engine = tmp_path / "model.plan"
    engine.write_bytes(b"\x00\x01binary plan")
    result = CliRunner().invoke(cli, ["report", str(engine)])
    assert result.exit_code == 2
    assert "tensorrt" in result.output and "--exportLayerInfo" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_broken_onnx_file_is_one_line_error(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x08\x07")  # the suffix says ONNX: it goes to the Q/DQ lints, which cannot read it
    result = CliRunner().invoke(cli, ["report", str(model)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "is not an ONNX model" in lines[0], result.output
