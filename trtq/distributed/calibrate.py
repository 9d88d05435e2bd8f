"""Calibration statistics on Ray: the data source cut into shards of whole batches (by sample index, so
``--max-samples/--seed`` pick the same samples), one Ray task per shard returning its
:class:`~trtq.stats.StatsCollector` (numpy arrays), merged on the driver.

The histograms merge exactly and independently of order, and every shard feeds exactly the batches the
single-machine run feeds, so the merged statistics -- and the cache derived from them -- are the same bytes.

What travels: the model's bytes (once, through Ray's object store) and each shard's data source *object*
(paths, selected indices, preprocessing), never the data itself: every worker reads its samples from the
path the driver opened, so the data must be on storage every node mounts at the same path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from trtq.calibrate import CalibrationResult, collect_raw_statistics, compute_ranges, finish_statistics
from trtq.data.base import BatchSource, shard_selection
from trtq.distributed.backend import cluster_cpus, cluster_gpus, gather, ray_session, worker_host
from trtq.errors import TrtqError
from trtq.model import PROTO_LIMIT, Model
from trtq.ranges import DEFAULT_PERCENTILE, METHODS, check_percentile
from trtq.segments import resolve_budget
from trtq.stats import StatsCollector

SHARDS_PER_CPU = 2  # a few more shards than workers evens out the load


def data_path(source: BatchSource) -> Path | None:
    """The file or folder a source reads (None for a source without one)."""
    return getattr(source, "root", None) or getattr(source, "path", None)


def split_source(source: BatchSource, shards: int) -> list[BatchSource]:
    """``source`` as at most ``shards`` sources of whole batches, in order (see :func:`shard_selection`)."""
    selected = getattr(source, "selected", None)
    if selected is None:
        raise TrtqError(f"--ray shards the data by sample index, which {source.description} does not have "
                        "(a data loader script): give --data PATH on shared storage instead")
    return [source.with_selection(part) for part in shard_selection(np.asarray(selected), source.batch_size, shards)]


def model_payload(model: Model) -> tuple[str, object]:
    """What a worker needs to rebuild the model: its bytes, or (over protobuf's 2 GiB) its path."""
    if model.proto.ByteSize() <= PROTO_LIMIT:
        return "bytes", model.proto.SerializeToString()
    if model.path is None:
        raise TrtqError("the model is over 2 GiB and has no path: save it next to its external data first")
    return "path", str(model.path)


def worker_model(payload: tuple[str, object]) -> Model:
    import onnx

    kind, value = payload
    if kind == "path":
        from trtq.model import load_model

        path = Path(str(value))
        if not path.exists():
            raise TrtqError(f"the worker on {worker_host()} cannot read the model at {path}: --ray needs it on "
                            "storage every node mounts at the same path")
        return load_model(path, check=False)
    return Model(onnx.load_from_string(value))


def collect_shard(payload: tuple[str, object], source: BatchSource, keep_histograms: bool,
                  providers: list[str] | None, memory_budget: int | None = None, tensors: list[str] | None = None,
                  fold_device: str | None = None) -> StatsCollector:
    """One Ray task: the raw statistics of one shard (runs on a worker, within the driver's explicit
    ``--memory-budget`` when one was given, else the worker machine's default). ``tensors``: only these
    (``--tensors qdq``); ``fold_device="cuda"``: fold on the worker's GPU when CuPy sees one there (the
    collector's ``capture`` says where it folded)."""
    return collect_raw_statistics(worker_model(payload), worker_source(source), providers=providers,
                                  keep_histograms=keep_histograms, memory_budget=memory_budget, tensors=tensors,
                                  fold_device=worker_fold_device(fold_device))


def worker_fold_device(requested: str | None) -> str | None:
    """Where this worker folds: ``requested`` ("cuda") when its onnxruntime has CUDA and CuPy sees a GPU, the
    host (None) when CuPy is missing; a worker without onnxruntime-gpu is a one-line error naming it."""
    if requested is None:
        return None
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise TrtqError(f"the worker on {worker_host()} has no CUDAExecutionProvider: --device cuda with --ray "
                        "needs onnxruntime-gpu on every GPU node (pip install onnxruntime-gpu)")
    from trtq.trt.device_fold import cupy_available

    return requested if cupy_available() else None


def shards_summary(results: list[StatsCollector], fold_device: str | None) -> dict:
    """The merged shards' ``capture`` (:func:`trtq.calibrate.capture_summary`'s keys): how many shards and
    runs, the kernels that binned, and where the statistics were folded (``gpu_shards`` of them on a GPU
    when ``fold_device`` was asked for)."""
    captures = [stats.capture or {} for stats in results]
    kernels = sorted({k for c in captures for k in (c.get("histogram_kernel") or "").split("+") if k}, reverse=True)
    gpu_shards = sum(1 for c in captures if c.get("fold_device"))
    runs = sum(int(c.get("runs") or 0) for c in captures)
    plan = f"{len(results)} Ray shards, {runs} runs"
    if fold_device is not None and 0 < gpu_shards < len(results):
        plan += f", {gpu_shards} of them folded on the GPU"
    blocked = max((int(c.get("blocked_tensors") or 0) for c in captures), default=0)
    return {"plan": plan, "runs": runs, "budget_bytes": None, "histogram_kernel": "+".join(kernels) or None,
            "blocked_tensors": blocked,
            "fold_device": fold_device if results and gpu_shards == len(results) else None,
            "gpu_shards": gpu_shards if fold_device is not None else None}


def worker_source(source: BatchSource) -> BatchSource:
    """A shard as a worker reads it: its data must be there (one line naming the host when not). It warns
    through the plain channel (:class:`trtq.data.base.SentWithPlainWarnings`)."""
    path = data_path(source)
    if path is not None and not Path(path).exists():
        raise TrtqError(f"the worker on {worker_host()} cannot read the data at {path}: --ray needs the data on "
                        "storage every node mounts at the same path")
    return source


def collect_statistics_ray(model: Model, source: BatchSource, address: str = "local", *,
                           shards: int | None = None, providers: list[str] | None = None,
                           progress: Callable[[int], None] | None = None,
                           keep_histograms: bool = True, tensors: list[str] | None = None,
                           fold_device: str | None = None) -> StatsCollector:
    """:func:`trtq.calibrate.collect_statistics` with the shards as Ray tasks (same statistics).

    ``fold_device="cuda"``: each shard is a task on one GPU (``num_gpus=1``; a cluster without GPUs is a
    one-line error rather than tasks that wait forever) and folds there when its worker has CuPy."""
    with ray_session(address) as ray:
        options: dict = {"num_cpus": 1, "max_retries": 2}
        workers = cluster_cpus(ray)
        if fold_device is not None:
            workers = cluster_gpus(ray)
            if workers < 1:
                raise TrtqError(f"--device cuda with --ray: the Ray cluster at '{address}' offers no GPU (start its "
                                "nodes with GPUs, or calibrate on its CPUs without --device cuda)")
            options["num_gpus"] = 1
        parts = split_source(source, shards or SHARDS_PER_CPU * workers)
        payload = ray.put(model_payload(model))
        task = ray.remote(**options)(collect_shard)
        budget, explicit = resolve_budget(None)
        refs = [task.remote(payload, part, keep_histograms, providers, budget if explicit else None, tensors,
                            fold_device) for part in parts]

        def done(index: int, _stats) -> None:
            if progress is not None:
                progress(parts[index].total_samples)

        results = gather(ray, refs, done)
    merged = StatsCollector(keep_histograms=keep_histograms)
    for stats in results:  # shard order (any order gives the same bytes; this one is also reproducible)
        for tensor in stats:  # Ray hands numpy arrays out read-only (zero-copy from the object store)
            tensor.hist = np.array(tensor.hist)
        merged.merge(stats)
    finished = finish_statistics(model, merged, source)
    finished.capture = shards_summary(results, fold_device)
    return finished


def ray_collector(address: str) -> Callable[..., StatsCollector]:
    """:func:`trtq.calibrate.collect_statistics`'s signature, the shards run as Ray tasks at ``address``
    (the ``collect`` hook of ``calibrate --calibrator auto`` and ``quantize``)."""

    def collect(model: Model, batches: BatchSource, *, providers: list[str] | None = None,
                progress: Callable[[int], None] | None = None, keep_histograms: bool = True,
                tensors: list[str] | None = None, fold_device: str | None = None) -> StatsCollector:
        return collect_statistics_ray(model, batches, address, providers=providers, progress=progress,
                                      keep_histograms=keep_histograms, tensors=tensors, fold_device=fold_device)

    return collect


def calibrate_ray(model: Model, source: BatchSource, calibrator: str = "entropy2", address: str = "local", *,
                  percentile: float = DEFAULT_PERCENTILE, shards: int | None = None,
                  providers: list[str] | None = None, progress: Callable[[int], None] | None = None,
                  keep_histograms: bool | None = None, tensors: list[str] | None = None,
                  fold_device: str | None = None) -> CalibrationResult:
    """:func:`trtq.calibrate.calibrate` on Ray: the same result, the statistics collected in shards."""
    if calibrator not in METHODS:
        raise TrtqError(f"unknown calibrator '{calibrator}' (choose from {', '.join(METHODS)})")
    if calibrator == "percentile":
        check_percentile(percentile)
    started = time.perf_counter()
    if keep_histograms is None:
        keep_histograms = calibrator != "minmax"
    stats = collect_statistics_ray(model, source, address, shards=shards, providers=providers, progress=progress,
                                   keep_histograms=keep_histograms, tensors=tensors, fold_device=fold_device)
    amax = compute_ranges(stats, calibrator, percentile)
    return CalibrationResult(calibrator, amax, stats, percentile, time.perf_counter() - started)
