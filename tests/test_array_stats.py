"""trtq.array_stats: one batch's statistics with any array module, merged, equal bit for bit to a host fold.

The numpy tests here are the CPU side of folding on the GPU (trtq.trt.device_fold): the same function runs
there with CuPy. The ``gpu``-marked tests compare the device with the host where CuPy sees a GPU (and, for
the capture, where onnxruntime-gpu is installed); they skip with the reason everywhere else.
"""

from __future__ import annotations

import numpy as np
import pytest

from trtq.array_stats import batch_stats
from trtq.capture import ActivationCapture
from trtq.model import load_model
from trtq.stats import StatsCollector, TensorStats


def assert_same(a: TensorStats, b: TensorStats) -> None:
    assert (a.count, a.nonfinite, a.zeros, a.min, a.max, a.exponent) == \
        (b.count, b.nonfinite, b.zeros, b.min, b.max, b.exponent)
    assert a.hist.dtype == b.hist.dtype and a.hist.tobytes() == b.hist.tobytes()


def host_and_merged(batches, keep: bool = True, weight: int = 1, xp=np) -> tuple[TensorStats, TensorStats]:
    host, merged = TensorStats("t", keep_histogram=keep), TensorStats("t", keep_histogram=keep)
    for batch in batches:
        host.update(np.asarray(batch.get() if hasattr(batch, "get") else batch), weight)
        merged.merge(batch_stats(xp, "t", batch, keep, weight))
    return host, merged


@pytest.fixture(scope="module")
def mnist_activations(mnist_model_path, mnist_digits) -> dict[str, list[np.ndarray]]:
    """Every calibrated tensor of the MNIST zoo model on 12 real digits, one digit a batch."""
    model = load_model(mnist_model_path)
    runs: dict[str, list[np.ndarray]] = {}
    with ActivationCapture(model, providers=["CPUExecutionProvider"]) as capture:
        for image in mnist_digits[0][:12]:
            for name, array in capture.run({"Input3": image[None]}).items():
                runs.setdefault(name, []).append(array)
    return runs


def test_real_activations_merge_to_the_host_statistics(mnist_activations):
    assert len(mnist_activations) > 10
    for batches in mnist_activations.values():
        assert_same(*host_and_merged(batches))


def _edge_batches() -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(7)
    normal = rng.standard_normal((6, 5000)).astype(np.float32)
    with_bad = normal[0].copy()
    with_bad[[3, 70, 900]] = [np.nan, np.inf, -np.inf]
    growing = [normal[i] * 4.0 ** i for i in range(4)]  # the histogram widens batch after batch
    shrinking = growing[::-1]
    relu = np.maximum(normal[1], 0)  # exact zeros
    return {
        "growing": growing, "shrinking": shrinking, "relu": [relu, relu * 3],
        "nonfinite": [with_bad, normal[2]], "all nonfinite": [np.full(8, np.nan, np.float32), normal[3]],
        "all zero": [np.zeros(100, np.float32), normal[4]], "tiny (float64 path)": [normal[5] * 1e-39],
        "huge": [normal[5] * 1e37], "float16": [normal[0].astype(np.float16)], "empty": [np.zeros(0, np.float32)],
        "float64": [normal[1].astype(np.float64) * 1e-3],
    }


@pytest.mark.parametrize("case", list(_edge_batches()))
@pytest.mark.parametrize(("keep", "weight"), [(True, 1), (True, 3), (False, 1)])
def test_edge_cases_merge_to_the_host_statistics(case, keep, weight):
    assert_same(*host_and_merged(_edge_batches()[case], keep, weight))


class HostStandIn:
    """What the capture hands the collector for a tensor on the GPU (trtq.trt.device_fold.DeviceTensor),
    with numpy in place of CuPy: the collector must let the tensor fold itself."""

    folded = 0

    def __init__(self, array: np.ndarray):
        self.array = array

    def fold_into(self, stats: TensorStats, weight: int = 1) -> None:
        HostStandIn.folded += 1
        stats.merge(batch_stats(np, stats.name, self.array, stats.keep_histogram, weight))


def test_the_collector_lets_a_device_tensor_fold_itself(mnist_activations):
    host, device = StatsCollector(), StatsCollector()
    count = len(next(iter(mnist_activations.values())))
    for k in range(count):
        host.update({name: runs[k] for name, runs in mnist_activations.items()}, 1)
        device.update({name: HostStandIn(runs[k]) for name, runs in mnist_activations.items()}, 1)
    assert HostStandIn.folded == count * len(mnist_activations)
    assert sorted(host.tensors) == sorted(device.tensors)
    for name in host.tensors:
        assert_same(host[name], device[name])


def test_folding_on_a_device_onnxruntime_cannot_use_is_one_line_error(mnist_model_path):
    from trtq.errors import TrtqError

    model = load_model(mnist_model_path)
    with pytest.raises(TrtqError, match="CUDAExecutionProvider"):
        ActivationCapture(model, providers=["CPUExecutionProvider"], fold_device="cuda")
    with pytest.raises(TrtqError, match="cannot fold statistics on 'tpu'"):
        ActivationCapture(model, providers=["CPUExecutionProvider"], fold_device="tpu")


def _cupy_or_skip():
    try:
        import cupy
    except ImportError:
        pytest.skip("CuPy is not installed (pip install 'trtq[device-stats]')")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("CuPy sees no GPU")
    except Exception as exc:  # noqa: BLE001 - no driver: a skip with CUDA's reason
        pytest.skip(f"CuPy sees no GPU: {exc}")
    return cupy


@pytest.mark.gpu
def test_device_statistics_equal_the_host_statistics_byte_for_byte(mnist_activations):
    cupy = _cupy_or_skip()
    cases = {**_edge_batches(), **{f"mnist {n}": runs for n, runs in mnist_activations.items()}}
    for case, batches in cases.items():
        for keep, weight in ((True, 1), (True, 3), (False, 1)):
            host, device = host_and_merged([cupy.asarray(b) for b in batches], keep, weight, xp=cupy)
            try:
                assert_same(host, device)
            except AssertionError as exc:
                raise AssertionError(f"{case} (histogram {keep}, weight {weight}): {exc}") from exc


@pytest.mark.gpu
def test_capture_folded_on_the_gpu_gives_the_host_cache(mnist_model_path, mnist_digits):
    import onnxruntime as ort

    from trtq.calibrate import calibrate

    _cupy_or_skip()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed (CUDAExecutionProvider missing)")
    model = load_model(mnist_model_path)
    feeds = [{"Input3": image[None]} for image in mnist_digits[0][:64]]
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    on_host = calibrate(model, feeds, "entropy2", providers=cuda)
    on_device = calibrate(model, feeds, "entropy2", providers=cuda, fold_device="cuda")
    assert on_device.stats.capture["fold_device"] == "cuda"
    for name in on_host.stats.tensors:
        assert_same(on_host.stats[name], on_device.stats[name])
    assert on_host.cache().to_bytes() == on_device.cache().to_bytes()


def test_device_tensor_wraps_an_ortvalue_and_says_what_is_missing():
    import importlib.util

    import onnxruntime as ort

    from trtq.errors import TrtqError
    from trtq.trt.device_fold import DeviceTensor

    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    tensor = DeviceTensor(ort.OrtValue.ortvalue_from_numpy(array), "tensor(float)")
    assert tensor.shape == (2, 3, 4) and tensor.nbytes == array.nbytes
    np.testing.assert_array_equal(tensor.numpy(), array)
    with pytest.raises(TrtqError, match="cannot fold a tensor\\(int64\\) tensor"):
        DeviceTensor(ort.OrtValue.ortvalue_from_numpy(np.zeros(3, np.int64)), "tensor(int64)")
    if importlib.util.find_spec("cupy") is None:
        with pytest.raises(TrtqError, match=r"needs the Python package 'cupy'.*trtq\[device-stats\]"):
            tensor.fold_into(TensorStats("t"))


@pytest.fixture
def io_binding_on_the_host(monkeypatch) -> list[str]:
    """The GPU capture path (IO binding, device tensors folded by the collector, boundary tensors brought back
    to the host for the next segment) made to run on the CPU: onnxruntime binds the outputs to the host and
    numpy stands in for CuPy. Yields the names of the tensors folded through that path."""
    import trtq.capture
    import trtq.trt.device_fold as device_fold

    monkeypatch.setattr(trtq.capture, "OUTPUT_DEVICES", {"cuda": "cpu"})
    monkeypatch.setattr(device_fold, "load_cupy", lambda: np)
    monkeypatch.setattr(device_fold.DeviceTensor, "as_cupy", lambda self: self.ortvalue.numpy())
    folded: list[str] = []
    real_fold = device_fold.DeviceTensor.fold_into
    monkeypatch.setattr(device_fold.DeviceTensor, "fold_into",
                        lambda self, stats, weight=1: (folded.append(stats.name), real_fold(self, stats, weight)))
    return folded


CUDA_THEN_CPU = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_the_io_binding_capture_gives_the_host_statistics(io_binding_on_the_host, dynamic_mnist, mnist_digits,
                                                          monkeypatch):
    # the host in the plain layout, as the device capture runs (the NCHWc layout's kernels differ in the last bits
    # where onnxruntime blocks a convolution: MNIST's second one on an AVX2 CPU)
    monkeypatch.setenv("TRTQ_LAYOUT", "nchw")
    """What this cannot check is CuPy itself (the gpu-marked tests above)."""
    import warnings

    from trtq.calibrate import calibrate
    from trtq.segments import memory_budget_scope

    feeds = [{"Input3": mnist_digits[0][i:i + 8]} for i in range(0, 48, 8)]
    for budget in (1 << 30, 150 << 10):  # the whole graph, then graph segments
        io_binding_on_the_host.clear()
        with memory_budget_scope(budget):
            on_host = calibrate(dynamic_mnist, feeds, "entropy2", providers=["CPUExecutionProvider"])
            with warnings.catch_warnings():  # onnxruntime: CUDA is not available here, the CPU runs it
                warnings.simplefilter("ignore", UserWarning)
                bound = calibrate(dynamic_mnist, feeds, "entropy2", fold_device="cuda", providers=CUDA_THEN_CPU)
        assert bound.stats.capture["fold_device"] == "cuda" and len(set(io_binding_on_the_host)) >= 5
        assert ("segments" in bound.stats.capture["plan"]) == (budget < 1 << 30), bound.stats.capture["plan"]
        for name in on_host.stats.tensors:
            assert_same(on_host.stats[name], bound.stats[name])
        assert on_host.cache().to_bytes() == bound.cache().to_bytes()


def test_a_ray_shard_folds_where_its_worker_can(monkeypatch, io_binding_on_the_host, dynamic_mnist, mnist_digits):
    monkeypatch.setenv("TRTQ_LAYOUT", "nchw")  # the host in the device capture's layout (see the test above)
    """``collect_shard`` as a Ray worker runs it (here in this process): with onnxruntime's CUDA provider and
    CuPy it folds through the device path, without CuPy on the host, without the provider it is one line;
    either way the shard's statistics are the host's."""
    import warnings

    import onnxruntime as ort

    import trtq.trt.device_fold as device_fold
    from trtq.calibrate import collect_raw_statistics
    from trtq.distributed.calibrate import collect_shard, model_payload, shards_summary
    from trtq.errors import TrtqError

    feeds = [{"Input3": mnist_digits[0][i:i + 8]} for i in range(0, 32, 8)]
    payload = model_payload(dynamic_mnist)
    with pytest.raises(TrtqError) as caught:  # this machine's onnxruntime has no CUDA provider
        collect_shard(payload, feeds, True, CUDA_THEN_CPU, fold_device="cuda")
    assert "has no CUDAExecutionProvider" in str(caught.value) and "\n" not in str(caught.value)

    host = collect_raw_statistics(dynamic_mnist, feeds, providers=["CPUExecutionProvider"])
    monkeypatch.setattr(ort, "get_available_providers", lambda: CUDA_THEN_CPU)
    shards = []
    for cupy_there in (True, False):
        monkeypatch.setattr(device_fold, "cupy_available", lambda cupy_there=cupy_there: cupy_there)
        io_binding_on_the_host.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            shard = collect_shard(payload, feeds, True, CUDA_THEN_CPU, fold_device="cuda")
        assert shard.capture["fold_device"] == ("cuda" if cupy_there else None)
        assert bool(io_binding_on_the_host) == cupy_there
        for name in host.tensors:
            assert_same(host[name], shard[name])
        shards.append(shard)
    both = shards_summary(shards, "cuda")
    assert both["gpu_shards"] == 1 and both["fold_device"] is None and "1 of them folded on the GPU" in both["plan"]
    assert shards_summary(shards[:1], "cuda")["fold_device"] == "cuda"
    assert shards_summary(shards[1:], "cuda")["gpu_shards"] == 0
    assert shards_summary(shards, None)["gpu_shards"] is None


def test_a_cuda_error_while_folding_is_one_line_naming_the_tensor(monkeypatch):
    import onnxruntime as ort

    import trtq.trt.device_fold as device_fold
    from trtq.errors import TrtqError

    def out_of_memory(self):
        raise RuntimeError("cudaErrorMemoryAllocation: out of memory\n  (CuPy's traceback lines)")

    monkeypatch.setattr(device_fold, "load_cupy", lambda: np)
    monkeypatch.setattr(device_fold.DeviceTensor, "as_cupy", out_of_memory)
    tensor = device_fold.DeviceTensor(ort.OrtValue.ortvalue_from_numpy(np.ones(4, np.float32)), "tensor(float)")
    with pytest.raises(TrtqError) as caught:
        tensor.fold_into(TensorStats("conv1"))
    assert str(caught.value) == "folding tensor 'conv1' on the GPU failed: cudaErrorMemoryAllocation: out of memory"
