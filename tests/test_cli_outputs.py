"""Nothing a user gives a command is lost to its own output: an output that names one of the command's inputs
(the model, its cache, its data) or another output is refused in one line before any work, and an ONNX output
named like an engine is refused with the command that builds one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from trtq.cli import cli

REPO = Path(__file__).resolve().parent.parent
MNIST = REPO / "calib_data" / "mnist"

CASES = {
    "quantize -o MODEL": (["quantize", "m.onnx", "--data", MNIST, "-o", "m.onnx"], "m.onnx (-o) is MODEL"),
    "quantize's float model is MODEL": (["quantize", "m.float.onnx", "--data", MNIST, "-o", "m.onnx"],
                                        "m.float.onnx (OUT.float.onnx) is MODEL"),
    "quantize -o labels": (["quantize", "m.onnx", "--data", MNIST, "--labels", "labels.csv", "-o", "labels.csv"],
                           "(-o) is --labels"),
    "quantize -o .engine": (["quantize", "m.onnx", "--data", MNIST, "-o", "m.engine"],
                            "trtq build m.int8.onnx --int8 -o m.engine"),
    "calibrate --cache MODEL": (["calibrate", "m.onnx", "--data", MNIST, "--cache", "m.onnx"],
                                "m.onnx (--cache) is MODEL"),
    "calibrate --cache = --json": (["calibrate", "m.onnx", "--data", MNIST, "--cache", "x", "--json", "x"],
                                   "the outputs --cache and --json are one file"),
    "calibrate --save-stats --from-stats": (["calibrate", "--from-stats", "m.cache", "--calibrator", "minmax",
                                             "--save-stats", "m.cache", "--cache", "p.cache"],
                                            "(--save-stats) is --from-stats"),
    "evaluate --json CACHE": (["evaluate", "m.onnx", "--cache", "m.cache", "--data", MNIST, "--json", "m.cache"],
                              "m.cache (--json) is --cache"),
    "sensitivity --html MODEL": (["sensitivity", "m.onnx", "--cache", "m.cache", "--data", MNIST, "--html",
                                  "m.onnx"], "m.onnx (--html) is MODEL"),
    "sensitivity --keep-out CACHE": (["sensitivity", "m.onnx", "--cache", "m.cache", "--data", MNIST,
                                      "--max-drop", "1", "--keep-out", "m.cache"], "(--keep-out) is --cache"),
    "quantize -o an --exclude list": (["quantize", "m.onnx", "--data", MNIST, "--exclude", "@labels.csv",
                                       "-o", "labels.csv"], "(-o) is --exclude @labels.csv"),
    "export -o CACHE": (["export", "m.onnx", "--qdq", "--cache", "m.cache", "-o", "m.cache"], "(-o) is --cache"),
    "export -o .plan": (["export", "m.onnx", "--fp16", "-o", "m.plan"], "trtq build m.fp16.onnx --fp16 -o m.plan"),
    "build -o MODEL": (["build", "m.onnx", "--fp16", "-o", "m.onnx"], "m.onnx (-o) is MODEL"),
    "report --json MODEL": (["report", "m.onnx", "--json", "m.onnx"], "m.onnx (--json) is MODEL"),
    "bench --json LOG": (["bench", "--trtexec-log", "run.log", "--json", "run.log"], "(--json) is --trtexec-log"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_no_output_overwrites_an_input(case, tmp_path, monkeypatch, mnist_model_path):
    args, message = CASES[case]
    shutil.copy(mnist_model_path, tmp_path / "m.onnx")
    shutil.copy(mnist_model_path, tmp_path / "m.float.onnx")
    (tmp_path / "m.cache").write_text("TRT-100161-EntropyCalibration2\nInput3: 3c010a14\n")
    (tmp_path / "labels.csv").write_text("0\n")
    (tmp_path / "run.log").write_text("[I] === Performance summary ===\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trtq: error: ") and message in lines[0], result.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written, nothing replaced
