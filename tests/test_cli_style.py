"""One error style and one starting point: a usage mistake is one line naming the option and the help to read,
exit 2, like every other error trtq reports; ``trtq --help`` starts where the README starts (``trtq quantize``)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from trtq.cli import COMMANDS, cli


@pytest.mark.parametrize(("args", "message"), [
    (["export", "m.onnx", "--qdq"], "Missing option '-o' / '--output'. (see: trtq export --help)"),
    (["quantize", "m.onnx", "-o", "x.onnx", "--calibrator", "foo"], "Invalid value for '--calibrator': 'foo'"),
    (["calibrate", "--nope"], "No such option '--nope'"),
    (["export", "m.onnx", "--fp16", "--cache", "x.cache", "-o", "x.onnx"], "--fp16 takes no ranges"),
    (["nosuch"], "No such command 'nosuch'. (see: trtq --help)"),
    # checked before any calibration: a target no model can meet fails in a second, not after the data pass
    (["quantize", "m.onnx", "--data", "d", "--max-drop", "-5"],
     "Invalid value for '--max-drop': -5.0 is not in the range x>=0"),
])
def test_a_usage_mistake_is_one_line_and_exit_2(args, message):
    result = CliRunner().invoke(cli, args, prog_name="trtq")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trtq: error: ") and message in lines[0], result.stderr


def test_help_starts_with_the_main_job():
    result = CliRunner().invoke(cli, ["--help"])
    assert "trtq quantize calib_data/mnist-8.onnx --data calib_data/mnist -o mnist-8.int8.onnx" in result.output
    listed = [line.split()[0] for line in result.output.split("Commands:")[1].splitlines()
              if line.startswith("  ") and not line.startswith("   ")]
    assert listed[0] == "quantize" and sorted(listed) == sorted(COMMANDS)


def test_the_names_users_bring_from_other_tools_mean_the_same(tmp_path, mnist_model_path):
    """ModelOpt's ``max``, Polygraphy's ``--calibration-cache``, the SQNR target named as quantize names it."""
    data = str(mnist_model_path.parent / "mnist")
    ours, theirs = tmp_path / "minmax.cache", tmp_path / "max.cache"
    for args in (["--calibrator", "minmax", "--cache", ours], ["--calibrator", "max", "--calibration-cache", theirs]):
        result = CliRunner().invoke(cli, ["calibrate", str(mnist_model_path), "--data", data, "-q",
                                          *map(str, args)])
        assert result.exit_code == 0, result.output
    assert theirs.read_bytes() == ours.read_bytes() and b"MinMaxCalibration" in ours.read_bytes()
    keeps = []
    for flag in ("--target-sqnr", "--min-sqnr"):
        keep = tmp_path / f"{flag[2:]}.txt"
        result = CliRunner().invoke(cli, ["sensitivity", str(mnist_model_path), "--cache",
                                          str(ours), "--data", data, "--max-samples", "64", flag, "45",
                                          "--keep-out", str(keep), "-q"])
        assert result.exit_code == 0, result.output
        keeps.append([line for line in keep.read_text().splitlines() if not line.startswith("#")])
    assert keeps[0] == keeps[1]


def test_quantize_without_o_writes_model_int8_onnx_here(tmp_path, monkeypatch, mnist_model_path):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["quantize", str(mnist_model_path), "--data",
                                      str(mnist_model_path.parent / "mnist"), "--calibrator", "minmax", "-q"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"mnist-8.int8.{suffix}" for suffix in ("cache", "keep.txt", "onnx", "report.html", "report.json")]
