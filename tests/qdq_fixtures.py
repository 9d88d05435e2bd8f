"""Real Q/DQ models for the tests of already-quantized models, made from the real MNIST model and the
digits MLP: by onnxruntime's ``quantize_static`` (QDQ, symmetric int8, per-channel weights: the layout
QAT toolkits export) and by trtq's own ``export --qdq``. Each is made once per session (a second or two)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import version_converter

from tests.conftest import DATA, REPO

MNIST = REPO / "calib_data" / "mnist-8.onnx"


def mnist_opset13(folder: Path) -> Path:
    """mnist-8 upgraded to opset 13 (per-channel Q/DQ needs it) and IR 7 (initializers need not be inputs)."""
    proto = version_converter.convert_version(onnx.load(str(MNIST)), 13)
    proto.ir_version = 7
    weights = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in weights]
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)
    path = folder / "mnist13.onnx"
    onnx.save(proto, str(path))
    return path


def ort_quantize(source: Path, out: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    """onnxruntime's quantize_static: QDQ format, symmetric int8 activations and weights, per channel."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(feeds)

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(source), str(out), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return out


def mnist_feeds(count: int = 32, start: int = 500) -> list[dict[str, np.ndarray]]:
    with np.load(DATA / "mnist-test-first1000.npz") as data:
        images = data["images"].astype(np.float32)[:, None]
    return [{"Input3": images[i:i + 1]} for i in range(start, start + count)]


@pytest.fixture(scope="session")
def qdq_models(tmp_path_factory) -> dict[str, Path]:
    """``fp32`` (mnist at opset 13), ``ort`` (its onnxruntime Q/DQ model), ``trtq`` (trtq's export of it),
    ``mlp`` and ``mlp_ort`` (the digits MLP and its onnxruntime Q/DQ model)."""
    from trtq.calibrate import calibrate
    from trtq.export import export_qdq, save_model
    from trtq.model import load_model

    folder = tmp_path_factory.mktemp("qdq")
    fp32 = mnist_opset13(folder)
    models = {"fp32": fp32, "ort": ort_quantize(fp32, folder / "mnist.ort-qdq.onnx", mnist_feeds())}
    model = load_model(fp32)
    amax = calibrate(model, mnist_feeds(), "minmax").amax
    save_model(export_qdq(model, amax).model, folder / "mnist.trtq-qdq.onnx")
    models["trtq"] = folder / "mnist.trtq-qdq.onnx"
    with np.load(DATA / "digits_split.npz") as data:
        rows = data["x_train"].astype(np.float32)
    mlp = onnx.load(str(DATA / "digits_mlp.onnx"))
    name = mlp.graph.input[0].name
    models["mlp"] = DATA / "digits_mlp.onnx"
    models["mlp_ort"] = ort_quantize(models["mlp"], folder / "mlp.ort-qdq.onnx",
                                     [{name: rows[i:i + 8]} for i in range(0, 64, 8)])
    return models
