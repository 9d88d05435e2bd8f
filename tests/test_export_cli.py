"""``trtq export`` end to end: real model, real digits, real caches; clean errors and no partial files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from tests.test_export_qdq import dq_source, minmax_ranges
from trtq.cache import cache_from_amax, write_cache
from trtq.cli import cli
from trtq.model import load_model

DATA = Path(__file__).resolve().parent / "data"


def trtq(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def table_row(stdout: str, output: str) -> dict[str, str]:
    """The agreement-table line of ``output`` as {column: text}."""
    header = next(line for line in stdout.splitlines() if line.startswith("output"))
    line = next(line for line in stdout.splitlines() if line.startswith(output + " "))
    values = line.split()
    top1 = " ".join(values[6:]) if len(values) > 6 else ""
    return {"samples": values[1], "cosine": values[2], "min_cosine": values[3], "sqnr": values[4],
            "max_err": values[5], "top1": top1, "header": header}


@pytest.fixture(scope="module")
def digits_npy(mnist_digits, tmp_path_factory) -> Path:
    """300 real MNIST digits as the .npy data source (float32 [N,1,28,28], 0..255)."""
    path = tmp_path_factory.mktemp("data") / "digits.npy"
    np.save(path, mnist_digits[0][:300])
    return path


@pytest.fixture(scope="module")
def minmax_cache(mnist_model_path, mnist_digits, tmp_path_factory) -> Path:
    model = load_model(mnist_model_path)
    feeds = [{"Input3": mnist_digits[0][i : i + 1]} for i in range(300)]
    path = tmp_path_factory.mktemp("cache") / "mnist-minmax.cache"
    write_cache(path, cache_from_amax(minmax_ranges(model, feeds), "minmax"))
    return path


def test_qdq_from_a_cache_with_agreement_table(mnist_model_path, minmax_cache, digits_npy, tmp_path):
    out = tmp_path / "mnist.qdq.onnx"
    result = trtq("export", mnist_model_path, "--qdq", "--cache", minmax_cache, "-o", out, "--data", digits_npy)
    assert result.exit_code == 0, result.output
    assert "upgraded the model from opset 8 to opset 13" in result.stderr
    assert (f"wrote {out}: 5 activation Q/DQ pairs, 3 weights (3 per-channel, 3 stored as int8 behind "
            "DequantizeLinear) on 5 nodes") in result.stdout
    row = table_row(result.stdout, "Plus214_Output_0")
    assert row["samples"] == "300"
    assert float(row["cosine"]) >= 0.99 and float(row["sqnr"]) >= 20
    assert float(row["top1"].rstrip(" %")) >= 99.0
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)


def test_calibrate_json_then_export_ranges(mnist_model_path, digits_npy, tmp_path):
    """The whole TensorRT 11 INT8 route: trtq calibrate --json, then trtq export --ranges."""
    ranges = tmp_path / "ranges.json"
    calibrated = trtq("calibrate", mnist_model_path, "--data", digits_npy, "--json", ranges, "-q")
    assert calibrated.exit_code == 0, calibrated.output
    out = tmp_path / "mnist.qdq.onnx"
    result = trtq("export", mnist_model_path, "--qdq", "--ranges", ranges, "-o", out, "--data", digits_npy,
                  "--max-samples", "200")
    assert result.exit_code == 0, result.output
    row = table_row(result.stdout, "Plus214_Output_0")
    assert row["samples"] == "200" and float(row["cosine"]) >= 0.99
    assert float(row["top1"].rstrip(" %")) >= 99.0


def test_exclude_file_with_comments(mnist_model_path, minmax_cache, tmp_path):
    names = tmp_path / "keep.txt"
    names.write_text("# layers to keep in float\n\nConvolution110   # the second conv\nTimes212_Output_0\n")
    out = tmp_path / "out.onnx"
    result = trtq("export", mnist_model_path, "--qdq", "--cache", minmax_cache, "--exclude", f"@{names}", "-o", out)
    assert result.exit_code == 0, result.output
    model = onnx.load(out)
    assert dq_source(model, "Convolution110", 0) is None and dq_source(model, "Times212", 0) is None
    assert dq_source(model, "Convolution28", 0) is not None
    assert "kept in float as asked (--exclude): Convolution110, Times212" in result.stderr


def test_fp16_with_agreement_table(mnist_model_path, digits_npy, tmp_path):
    out = tmp_path / "mnist.fp16.onnx"
    result = trtq("export", mnist_model_path, "--fp16", "-o", out, "--data", digits_npy, "--max-samples", "50")
    assert result.exit_code == 0, result.output
    assert "inputs and outputs stay float32" in result.stdout
    assert "FP16 vs float32 on 50 of 300 samples" in result.stdout
    row = table_row(result.stdout, "Plus214_Output_0")
    assert float(row["cosine"]) > 0.9999 and row["top1"] == "100.00 %"
    model = onnx.load(out)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--qdq", "--cache", "{cache}", "--exclude", "Conv_nope"],
         "no node or node output of the model is named 'Conv_nope'"),
        (["--qdq", "--cache", "{tmp}/missing.cache"], "calibration cache not found"),
        (["--qdq", "--cache", str(DATA / "trt-10.0-entropy2-hackathon.cache")],
         "none of the 3 tensor names in calibration cache"),
        (["--qdq", "--ranges", "{tmp}/missing.json"], "ranges file not found"),
        (["--qdq", "--cache", "{cache}", "--exclude", "@{tmp}/missing.txt"], "exclude list not found"),
    ],
)
def test_user_errors_are_one_line_and_leave_no_file(mnist_model_path, minmax_cache, tmp_path, args, message):
    out = tmp_path / "out.onnx"
    filled = [a.format(cache=minmax_cache, tmp=tmp_path) for a in args]
    result = trtq("export", mnist_model_path, *filled, "-o", out)
    assert result.exit_code == 2
    assert result.stderr.startswith("trtq: error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".out.onnx*"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "choose the export: --qdq (INT8 Q/DQ) or --fp16"),
        (["--qdq"], "--qdq needs exactly one of --cache CACHE or --ranges RANGES.json"),
        (["--fp16", "--cache", "x.cache"], "--fp16 takes no ranges"),
    ],
)
def test_option_misuse_is_a_usage_error(mnist_model_path, tmp_path, args, message):
    result = trtq("export", mnist_model_path, *args, "-o", tmp_path / "out.onnx")
    assert result.exit_code == 2 and message in result.stderr


def test_refuses_to_overwrite_the_source_model(mnist_model_path, tmp_path):
    source = tmp_path / "model.onnx"
    source.write_bytes(Path(mnist_model_path).read_bytes())
    result = trtq("export", source, "--fp16", "-o", source)
    assert result.exit_code == 2 and "is MODEL, which this command reads" in result.stderr
    assert source.read_bytes() == Path(mnist_model_path).read_bytes()
    assert source.read_bytes() == Path(mnist_model_path).read_bytes()
