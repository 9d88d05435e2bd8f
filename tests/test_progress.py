"""No long step is silent: in a log (not a terminal) evaluate, sensitivity and quantize say how far they are at each
quarter of their samples."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from trtq.cli import cli

MNIST = Path(__file__).resolve().parent.parent / "calib_data" / "mnist"


def _quarters(stderr: str, label: str) -> list[int]:
    return [int(m) for m in re.findall(rf"^{label}: \d+/300 samples \((\d+) %\)", stderr, re.MULTILINE)]


def test_evaluate_and_sensitivity_report_each_quarter_in_a_log(tmp_path, mnist_model_path):
    cache = tmp_path / "m.cache"
    assert CliRunner().invoke(cli, ["calibrate", str(mnist_model_path), "--data", str(MNIST), "--calibrator",
                                    "minmax", "--cache", str(cache), "-q"]).exit_code == 0
    common = [str(mnist_model_path), "--cache", str(cache), "--data", str(MNIST)]
    evaluated = CliRunner().invoke(cli, ["evaluate", *common])
    assert evaluated.exit_code == 0, evaluated.output
    assert _quarters(evaluated.stderr, "evaluating") == [25, 50, 75, 100]
    ranked = CliRunner().invoke(cli, ["sensitivity", *common])
    assert ranked.exit_code == 0, ranked.output
    assert _quarters(ranked.stderr, "ranking") == [25, 50, 75, 100]
    quiet = CliRunner().invoke(cli, ["sensitivity", *common, "-q"])
    assert "ranking:" not in quiet.stderr


def test_quantize_says_how_far_its_range_choice_and_ranking_are(tmp_path, mnist_model_path):
    result = CliRunner().invoke(cli, ["quantize", str(mnist_model_path), "--data", str(MNIST), "--labels",
                                      str(MNIST / "labels.csv"), "--max-drop", "0.01", "--min-sqnr", "60",
                                      "-o", str(tmp_path / "q.onnx")])
    assert result.exit_code == 3, result.output
    lines = re.findall(r"^  ranking: (\d+)/(\d+) layer runs", result.stderr, re.MULTILINE)
    assert len(lines) == 4 and lines[-1][0] == lines[-1][1]
    # so does the range choice's pass (every candidate method on every judged sample)
    methods = re.findall(r"^  range methods: (\d+)/(\d+) samples", result.stderr, re.MULTILINE)
    assert len(methods) == 4 and methods[-1][0] == methods[-1][1]
