"""Shared test fixtures: paths to the repository's real data (never ../shared at run time)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest_plugins = ["tests.trt_api_env", "tests.qdq_fixtures"]  # real TensorRT bindings; real Q/DQ models

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def mnist_model_path() -> Path:
    """The ONNX Model Zoo MNIST classifier bundled in calib_data/ (opset 8, static batch 1, raw 0-255 input)."""
    return REPO / "calib_data" / "mnist-8.onnx"


@pytest.fixture(scope="session")
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The first 1,000 real MNIST test digits as float32 [N,1,28,28] in 0..255, and their labels."""
    with np.load(DATA / "mnist-test-first1000.npz") as data:
        return data["images"].astype(np.float32)[:, None], data["labels"].astype(np.int64)
