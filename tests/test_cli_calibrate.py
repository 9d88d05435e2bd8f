"""`trtq calibrate` from the command line: the bundled default, outputs, and every user error
(one line, exit 2, no traceback, no file left behind)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from tests.conftest import REPO
from trtq.cache import read_cache
from trtq.cli import cli

MNIST_DIGITS = REPO / "calib_data" / "mnist"


def run(*args: str, cwd: Path | None = None):
    runner = CliRunner()
    old = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
        return runner.invoke(cli, list(args), catch_exceptions=False)
    finally:
        os.chdir(old)


def assert_user_error(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert "Traceback" not in result.output
    assert any(fragment in line for line in lines), result.output


def test_bundled_default_writes_a_cache_where_it_says(tmp_path, mnist_model_path):
    result = run("calibrate", str(mnist_model_path), "--data", str(MNIST_DIGITS), cwd=tmp_path)
    assert result.exit_code == 0, result.output
    cache_path = tmp_path / "mnist-8-auto.cache"  # the default is auto (trtq's ranges, entropy2's cache header)
    assert f"cache written to {cache_path.name}" in result.output
    cache = read_cache(cache_path)
    assert cache.header == "TRT-101601-EntropyCalibration2"
    assert len(cache.scales) == 12 + 1 and all(s > 0 for s in cache.scales.values())  # + the weight-derived one
    assert "300 samples" in result.output and "(auto: " in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist-8-auto.cache"]  # no temp files


def test_json_stats_and_from_stats(tmp_path, mnist_model_path):
    stats, ranges = tmp_path / "stats.npz", tmp_path / "ranges.json"
    result = run("calibrate", str(mnist_model_path), "--data", str(MNIST_DIGITS), "--max-samples", "50",
                 "--calibrator", "minmax", "--json", str(ranges), "--save-stats", str(stats), "-q")
    assert result.exit_code == 0 and result.output == ""
    document = json.loads(ranges.read_text())
    assert document["samples"] == 50 and document["calibrator"] == "minmax"
    assert document["provenance"]["data"]  # where the data came from
    # re-derive another method without running the model
    cache = tmp_path / "p.cache"
    result = run("calibrate", "--from-stats", str(stats), "--calibrator", "percentile", "--percentile", "99.9",
                 "--cache", str(cache), "--trt-version", "10.0.1")
    assert result.exit_code == 0, result.output
    assert read_cache(cache).header == "TRT-100001-EntropyCalibration2"
    # the same statistics with the same model are accepted; another model is refused
    assert run("calibrate", str(mnist_model_path), "--from-stats", str(stats), "--calibrator", "mse",
               "--cache", str(cache)).exit_code == 0
    # auto chooses by evaluating: from saved statistics it needs data to evaluate on
    assert_user_error(run("calibrate", str(mnist_model_path), "--from-stats", str(stats), "--cache", str(cache)),
                      "--calibrator auto with --from-stats needs MODEL and --eval-data")
    auto = run("calibrate", str(mnist_model_path), "--from-stats", str(stats), "--eval-data", str(MNIST_DIGITS),
               "--json", str(ranges), "-q")
    assert auto.exit_code == 0, auto.output
    chosen = json.loads(ranges.read_text())["provenance"]["options"]["auto"]["chosen"]
    assert chosen in {"mse", "minmax", "entropy2", "percentile 99.99", "percentile 99.999"}
    other = tmp_path / "other.onnx"
    proto = onnx.load(str(mnist_model_path))
    proto.producer_name = "changed"
    onnx.save(proto, str(other))
    assert_user_error(run("calibrate", str(other), "--from-stats", str(stats), "--calibrator", "mse",
                          "--cache", str(cache)), "different model")


def test_entropy_alias_warns(tmp_path, mnist_model_path):
    result = run("calibrate", str(mnist_model_path), "--data", str(MNIST_DIGITS), "--max-samples", "5",
                 "--calibrator", "entropy", "--cache", str(tmp_path / "e.cache"))
    assert result.exit_code == 0
    assert "warning" in result.output and "EntropyCalibrator" in result.output
    assert read_cache(tmp_path / "e.cache").algorithm == "EntropyCalibration"


def test_cli_runs_are_deterministic(tmp_path, mnist_model_path):
    for name in ("a.cache", "b.cache"):
        run("calibrate", str(mnist_model_path), "--data", str(MNIST_DIGITS), "--max-samples", "40", "--seed", "3",
            "--cache", str(tmp_path / name), "-q")
    assert (tmp_path / "a.cache").read_bytes() == (tmp_path / "b.cache").read_bytes()


def dynamic_image_model(path: Path) -> Path:
    """One Relu; input [N, 3, H, W] with H and W dynamic: nothing fixes them for an image folder."""
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def bad_inputs(tmp: Path, model: Path) -> list[tuple[list[str], str]]:
    text_file = tmp / "notes.onnx"
    text_file.write_text("hello")
    broken = onnx.load(str(model))
    broken.graph.node[1].input[0] = "does_not_exist"
    broken_path = tmp / "broken.onnx"
    onnx.save(broken, str(broken_path))
    empty = tmp / "empty"
    empty.mkdir()
    bad_images = tmp / "bad_images"
    bad_images.mkdir()
    (bad_images / "a.png").write_bytes(b"not a png")
    wrong_npz = tmp / "wrong.npz"
    np.savez(wrong_npz, other=np.zeros((2, 1, 28, 28), np.float32))
    bad_script = tmp / "loader.py"
    bad_script.write_text("def load_data():\n    raise RuntimeError('disk on fire')\n    yield {}\n")
    dynamic = dynamic_image_model(tmp / "dynamic.onnx")
    digits = str(MNIST_DIGITS)
    return [
        ([str(tmp / "missing.onnx"), "--data", digits], "not found"),
        ([str(text_file), "--data", digits], "not an ONNX model"),
        ([str(broken_path), "--data", digits], "ONNX checker"),
        ([str(model), "--data", str(tmp / "nowhere")], "nowhere"),
        ([str(model), "--data", str(empty)], "empty"),
        ([str(model), "--data", str(bad_images)], "a.png"),
        ([str(model), "--data", str(wrong_npz)], "Input3"),
        ([str(model), "--data-loader-script", str(bad_script)], "disk on fire"),
        ([str(dynamic), "--data", digits], "'x'"),
        ([str(model), "--data", digits, "--shapes", "nosuch:1x1x28x28"], "nosuch"),
        ([str(model), "--data", digits, "--calibrator", "percentile", "--percentile", "101"], "percentile"),
        ([str(model), "--data", digits, "--cache", str(tmp / "no" / "dir" / "x.cache")], "does not exist"),
    ]


def test_every_bad_input_is_one_line_exit_2_and_leaves_no_file(tmp_path, mnist_model_path):
    work = tmp_path / "work"
    work.mkdir()
    for args, fragment in bad_inputs(tmp_path, mnist_model_path):
        before = sorted(p.name for p in work.iterdir())
        result = run("calibrate", *args, cwd=work)
        assert_user_error(result, fragment)
        assert sorted(p.name for p in work.iterdir()) == before, args


def test_help_imports_neither_tensorrt_nor_cuda_nor_ray():
    code = ("import sys, trtq, trtq.cli; from click.testing import CliRunner; "
            "r = CliRunner().invoke(trtq.cli.cli, ['--help']); assert r.exit_code == 0; "
            "r = CliRunner().invoke(trtq.cli.cli, ['calibrate', '--help']); assert r.exit_code == 0; "
            "banned = ('tensorrt', 'pycuda', 'cuda', 'tensorrt_bindings', 'ray'); "
            "bad = [m for m in sys.modules if m.split('.')[0] in banned]; "
            "print(bad); assert not bad")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("args", [["--version"], ["--help"]])
def test_console_script_is_installed(args):
    done = subprocess.run([sys.executable, "-m", "trtq", *args], capture_output=True, text=True)
    assert done.returncode == 0 and "trtq" in done.stdout
