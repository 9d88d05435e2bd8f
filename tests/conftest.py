"""Shared test fixtures: paths to the repository's real data (never ../shared at run time)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest_plugins = ["tests.trt_api_env", "tests.qdq_fixtures"]  # real TensorRT bindings; real Q/DQ models

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local Ray instance (2 CPUs) for a module's tests: trtq's ray_session finds it initialised and reuses
    it (``pytest.mark.usefixtures("local_ray")``; the module skips itself when ray is not installed)."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def mnist_model_path() -> Path:
    """The ONNX Model Zoo MNIST classifier bundled in calib_data/ (opset 8, static batch 1, raw 0-255 input)."""
    return REPO / "calib_data" / "mnist-8.onnx"


@pytest.fixture(scope="session")
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The first 1,000 real MNIST test digits as float32 [N,1,28,28] in 0..255, and their labels."""
    with np.load(DATA / "mnist-test-first1000.npz") as data:
        return data["images"].astype(np.float32)[:, None], data["labels"].astype(np.int64)


@pytest.fixture(scope="session")
def dynamic_mnist(mnist_model_path):
    """The zoo model with a dynamic batch: input dim 'N' and the flattening Reshape made [-1, 256]."""
    import onnx
    from onnx import numpy_helper

    from trtq.model import Model

    proto = onnx.load(str(mnist_model_path))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    for i, init in enumerate(proto.graph.initializer):
        if init.name == "Pooling160_Output_0_reshape0_shape":
            proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.array([-1, 256], np.int64), init.name))
    onnx.checker.check_model(proto)
    return Model(proto)
