"""Real engines: ``trtq build`` on a machine with TensorRT (10.x or 11.x), a CUDA binding and a GPU.

These tests build MNIST engines from ``calib_data/`` and run them on held-out real digits against
onnxruntime. They are marked ``gpu`` and skip, saying what is missing, everywhere else. They exercise
whichever path the installed TensorRT takes (10.x: TensorRT's own calibrator fed through device
buffers; 11.x: trtq's ranges as Q/DQ) and check the manifest against what happened. TensorRT and the
CUDA backend come from the ``tensorrt_gpu`` fixture (tests/trt_api_env.py, shared by every GPU test).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parent.parent
CALIB_IMAGES = REPO / "calib_data" / "mnist"  # the first 300 MNIST test digits
HELD_OUT = slice(300, 800)  # digits of mnist-test-first1000.npz that calibration never saw


class EngineRunner:
    """Runs a serialized single-input, single-output engine one sample at a time."""

    def __init__(self, trt, backend, engine_path: Path):
        self.trt, self.backend = trt, backend
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        assert self.engine is not None
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.out_shape = tuple(self.engine.get_tensor_shape(self.output))
        self.stream = backend.stream_create()
        self.d_in = backend.malloc(4 * 28 * 28)
        self.d_out = backend.malloc(4 * int(np.prod(self.out_shape)))
        self.context.set_tensor_address(self.input, self.d_in)
        self.context.set_tensor_address(self.output, self.d_out)

    def top1(self, images: np.ndarray) -> np.ndarray:
        result = np.empty(self.out_shape, np.float32)
        predictions = []
        for image in images:
            self.backend.memcpy_htod(self.d_in, np.ascontiguousarray(image[None], dtype=np.float32), self.stream)
            assert self.context.execute_async_v3(self.stream)
            self.backend.memcpy_dtoh(result, self.d_out, self.stream)
            self.backend.stream_synchronize(self.stream)
            predictions.append(int(result.argmax()))
        return np.array(predictions)

    def close(self) -> None:
        self.backend.free(self.d_in)
        self.backend.free(self.d_out)
        self.backend.stream_destroy(self.stream)


def _onnxruntime_top1(model_path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return np.array([session.run(None, {"Input3": image[None]})[0].argmax() for image in images])


def _build(args: list[str], engine: Path) -> dict:
    """Run ``trtq build ... -o ENGINE --json``; the manifest printed on stdout is the sidecar file."""
    from trtq.cli import cli

    result = CliRunner().invoke(cli, ["build", *args, "-o", str(engine), "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(Path(f"{engine}.json").read_text())
    printed = result.stdout[result.stdout.find("{"):]  # older click mixes stderr lines in before it
    assert json.loads(printed) == manifest
    return manifest


def _check_engine(tensorrt_gpu, engine: Path, model: Path, digits) -> tuple[float, float]:
    trt, backend = tensorrt_gpu
    images, labels = digits
    runner = EngineRunner(trt, backend, engine)
    try:
        predicted = runner.top1(images[HELD_OUT])
    finally:
        runner.close()
    reference = _onnxruntime_top1(model, images[HELD_OUT])
    return float((predicted == reference).mean()), float((predicted == labels[HELD_OUT]).mean())


def test_mnist_int8_entropy2_engine_agrees_with_onnxruntime_and_reuses_its_cache(tensorrt_gpu, tmp_path,
                                                                               mnist_model_path, mnist_digits):
    trt, _ = tensorrt_gpu
    engine, cache = tmp_path / "mnist-int8.engine", tmp_path / "mnist.cache"
    manifest = _build([str(mnist_model_path), "--int8", "--calibrator", "entropy2", "--data", str(CALIB_IMAGES),
                       "--cache", str(cache)], engine)
    assert engine.is_file()
    assert manifest["precisions"] == ["fp32", "int8"] and manifest["versions"]["tensorrt"] == trt.__version__
    assert manifest["engine"]["bytes"] == engine.stat().st_size
    assert manifest["gpu"]["name"] and manifest["gpu"]["compute_capability"]
    implicit = manifest["path"]["kind"] == "implicit-quantization"
    assert implicit == trt.__version__.startswith("10.")
    if implicit:  # TensorRT calibrated on the 300 digits through trtq's device buffers, and wrote the cache
        assert manifest["calibration"]["batches"] == 300 and manifest["calibration"]["cache_written"]
        assert cache.read_text().splitlines()[0] == manifest["calibration"]["cache_header"]
    else:  # trtq calibrated and the engine was built from the Q/DQ model
        assert manifest["onnx"]["built_from"]["variant"] == "qdq"
    agreement, accuracy = _check_engine(tensorrt_gpu, engine, mnist_model_path, mnist_digits)
    assert agreement >= 0.97 and accuracy >= 0.95

    again = _build([str(mnist_model_path), "--int8", "--data", str(CALIB_IMAGES), "--cache", str(cache)],
                   tmp_path / "again.engine")
    if implicit:
        assert again["calibration"]["cache_used"] and again["calibration"]["batches"] == 0
    else:
        assert again["calibration"]["ranges"].startswith(f"calibration cache {cache}")


def test_mnist_fp16_engine_agrees_with_onnxruntime(tensorrt_gpu, tmp_path, mnist_model_path, mnist_digits):
    engine = tmp_path / "mnist-fp16.engine"
    manifest = _build([str(mnist_model_path), "--fp16"], engine)
    assert manifest["precisions"] == ["fp32", "fp16"] and manifest["calibration"] is None
    agreement, accuracy = _check_engine(tensorrt_gpu, engine, mnist_model_path, mnist_digits)
    assert agreement >= 0.99 and accuracy >= 0.97


def test_mnist_int8_percentile_ranges_come_from_trtq(tensorrt_gpu, tmp_path, mnist_model_path, mnist_digits):
    engine = tmp_path / "mnist-p.engine"
    manifest = _build([str(mnist_model_path), "--int8", "--calibrator", "percentile", "--percentile", "99.99",
                       "--data", str(CALIB_IMAGES)], engine)
    assert manifest["calibration"]["source"] == "trtq" and manifest["calibration"]["percentile"] == 99.99
    agreement, accuracy = _check_engine(tensorrt_gpu, engine, mnist_model_path, mnist_digits)
    assert agreement >= 0.97 and accuracy >= 0.95
