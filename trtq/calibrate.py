"""The calibration API: data batches -> statistics (one pass) -> ranges (any method) -> cache / JSON.

    >>> from trtq.model import load_model
    >>> from trtq.data import open_batches
    >>> from trtq.calibrate import calibrate
    >>> model = load_model("calib_data/mnist-8.onnx")
    >>> result = calibrate(model, open_batches(model, "calib_data/mnist"), "entropy2")
    >>> result.write_cache("mnist-8.cache")
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trtq import __version__
from trtq.autorange import data_independent_tensors
from trtq.cache import DEFAULT_TRT_VERSION, CalibrationCache, cache_from_amax, parse_cache, scale_is_zero, write_cache
from trtq.capture import ActivationCapture
from trtq.errors import TrtqError
from trtq.fileio import read_input_bytes, read_input_text, write_json
from trtq.model import Model
from trtq.ranges import DEFAULT_PERCENTILE, ENTROPY_ALIAS_NOTE, METHODS, check_percentile, range_function
from trtq.stats import StatsCollector, TensorStats
from trtq.versions import package_version

RANGES_FORMAT = "trtq-ranges-1"

def default_workers() -> int:
    """Threads for folding tensors into statistics and for the range searches."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores))


def collect_statistics(model: Model, batches: Iterable[dict[str, np.ndarray]], *,
                       providers: list[str] | None = None,
                       progress: Callable[[int], None] | None = None,
                       workers: int | None = None, keep_histograms: bool = True,
                       memory_budget: int | None = None, tensors: list[str] | None = None,
                       fold_device: str | None = None) -> StatsCollector:
    """Run every batch through the model once and fold each calibrated tensor into its statistics.

    The capture runs each batch within ``memory_budget`` bytes of activations (default:
    :func:`trtq.segments.default_memory_budget`), in micro-batches and graph segments when needed; the
    tensors of run k are folded in by a thread pool, one task per tensor (numpy and the compiled kernel
    release the GIL), while onnxruntime executes run k+1 (it releases the GIL too): at most two runs'
    activations are alive, however many batches there are. ``progress`` gets the sample count of each
    finished micro-batch. The data source's ``provenance()`` (when it has one) is recorded in the
    statistics' ``meta["data"]``, how the runs were cut in ``capture``.
    ``keep_histograms=False`` keeps min/max/count only: enough for ``minmax``, and most of the cost saved.
    ``tensors``: only these (e.g. :func:`trtq.export.qdq.qdq_activation_tensors`, all a TensorRT 11 Q/DQ
    export needs); onnxruntime then optimises the graph between them (their names survive as outputs).
    ``fold_device="cuda"``: the captured tensors stay on the GPU and are folded there
    (:mod:`trtq.trt.device_fold`; onnxruntime-gpu and CuPy), the same statistics bit for bit.
    """
    collector = collect_raw_statistics(model, batches, providers=providers, progress=progress, workers=workers,
                                       keep_histograms=keep_histograms, memory_budget=memory_budget,
                                       tensors=tensors, fold_device=fold_device)
    return finish_statistics(model, collector, batches)


def collect_statistics_groups(model: Model, batches: Sequence[dict[str, np.ndarray]], groups: Sequence[int], *,
                              progress: Callable[[int], None] | None = None, keep_histograms: bool = True,
                              tensors: list[str] | None = None) -> list[StatsCollector]:
    """The statistics of each group of ``batches`` (batch ``i`` in group ``groups[i]``, groups numbered from 0), in
    one capture: one run plan and one set of sessions instead of one per group (on a ViT-S in 20 graph segments,
    about 2.5 s a group). Each group's statistics are exactly :func:`collect_statistics` of its batches alone: the
    statistics do not depend on how the runs are cut (``tests/test_crossfit.py``, bit for bit)."""
    if len(groups) != len(batches):
        raise ValueError(f"{len(groups)} groups for {len(batches)} batches")
    collectors = collect_raw_statistics(model, batches, progress=progress, keep_histograms=keep_histograms,
                                        tensors=tensors, groups=groups)
    return [finish_statistics(model, collector, batches) for collector in collectors]


def collect_raw_statistics(model: Model, batches: Iterable[dict[str, np.ndarray]], *,
                           providers: list[str] | None = None,
                           progress: Callable[[int], None] | None = None,
                           workers: int | None = None, keep_histograms: bool = True,
                           memory_budget: int | None = None, tensors: list[str] | None = None,
                           fold_device: str | None = None, groups: Sequence[int] | None = None):
    """The batches' statistics of the tensors actually captured (aliases not yet filled in, no provenance):
    what one shard of a distributed calibration returns; :func:`finish_statistics` completes the merge.
    ``groups``: one collector per group (batch ``i`` in ``groups[i]``), returned as a list."""
    everything = model.calibration_tensors()
    subset = tensors is not None and set(tensors) != set(everything)
    if tensors is not None:
        unknown = sorted(set(tensors) - set(everything))
        if unknown:
            raise TrtqError(f"not a calibrated tensor of {model.name}: {', '.join(unknown[:5])}")
    tensors = [t for t in everything if tensors is None or t in set(tensors)]
    # rearrangements and unions of other tensors (Reshape, Concat, a Split's input) are not captured:
    # :func:`finish_statistics` gives them their sources' statistics, exactly what capturing them would
    derived = set(model.value_aliases(tensors)) | set(model.value_unions(tensors))
    independent = data_independent_tensors(model.proto)
    with ActivationCapture(model, [t for t in tensors if t not in derived], providers=providers,
                           memory_budget=memory_budget, optimize=subset, fold_device=fold_device) as capture, \
            ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="trtq-stats") as pool:
        collectors = [StatsCollector(meta={"model": model.name, "model_sha256": model.sha256},
                                     keep_histograms=keep_histograms)
                      for _ in range(max(groups, default=-1) + 1 if groups is not None else 1)]
        pending: list[Future] = []
        pending_samples = 0
        fed = -1  # the index of the batch the capture last took: the runs it yields are that batch's

        def finish() -> None:
            for future in pending:
                future.result()  # re-raises a failure of a task
            if pending_samples and progress is not None:
                progress(pending_samples)

        def counted() -> Iterator[dict[str, np.ndarray]]:
            nonlocal fed
            for fed, feed in enumerate(batches):  # noqa: B007 - read by the loop below, between yields
                yield feed

        for run in capture.iterate(counted()):
            finish()
            collector = collectors[groups[fed]] if groups is not None else collectors[0]
            # computed from shapes and constants only: the same in every run, counted once per sample
            weights = {name: run.run_samples for name in independent if name in run.tensors}
            pending = collector.submit(run.tensors, run.samples, pool, batches=run.batches, weights=weights)
            pending_samples = run.samples
            del run
        finish()
        for collector in collectors:
            collector.capture = capture_summary(capture, collector.keep_histograms)
    return collectors if groups is not None else collectors[0]


def capture_summary(capture: ActivationCapture, histograms: bool = True) -> dict:
    """How the statistics were collected: the runs' plan and the binning kernel (for the summary line;
    None when no histogram was made)."""
    from trtq.histogram import kernel_used

    return {"plan": capture.plan.describe() if capture.plan else None, "runs": capture.runs,
            "budget_bytes": capture.budget, "histogram_kernel": kernel_used() if histograms else None,
            "fold_device": capture.fold_device, "blocked_tensors": len(capture.blocked_tensors)}


def finish_statistics(model: Model, collector: StatsCollector, batches: object) -> StatsCollector:
    """Graph order, alias copies, the data's provenance and the weights' ranges: the last step of
    :func:`collect_statistics`, also run on the merged shards of a distributed calibration."""
    tensors = model.calibration_tensors()
    if collector.batches == 0:
        raise TrtqError("the data source produced no batch: nothing to calibrate")
    collector.meta.update(model=model.name, model_sha256=model.sha256)  # a shard's worker saw only the bytes
    derive = derived_statistics(collector, model.value_aliases(tensors), model.value_unions(tensors))
    ordered = {name: stats for name in tensors if (stats := derive(name)) is not None}  # graph order
    collector.tensors = ordered
    collector.meta["tensors"] = list(ordered)
    collector.meta["data"] = batches.provenance() if hasattr(batches, "provenance") else {}
    from trtq.weights import weight_ranges

    collector.meta["weights"] = weight_ranges(model).as_meta()  # max|w| of weight-derived tensors, saved along
    return collector


def derived_statistics(collector: StatsCollector, aliases: dict[str, str],
                       unions: dict[str, list[list[str]]]) -> Callable[[str], TensorStats | None]:
    """A lookup of any tensor's statistics: captured, an alias's (a copy of its source's) or a union's (the
    merge of its parts', the first way of :meth:`~trtq.model.Model.value_unions` whose parts all have
    statistics); None when neither it nor its sources were captured. Merged statistics are exactly those of
    the values together, so a derived tensor gets what capturing it would have given (tested bit for bit)."""
    known: dict[str, TensorStats] = dict(collector.tensors)

    def lookup(name: str, path: frozenset[str] = frozenset()) -> TensorStats | None:
        if name in known:
            return known[name]
        if name in path:  # not derivable through itself
            return None
        path = path | {name}
        made = None
        for way in unions.get(name, ()):
            parts = [lookup(part, path) for part in way]
            if all(part is not None for part in parts):
                made = TensorStats(name, keep_histogram=collector.keep_histograms)
                for part in parts:
                    made.merge(part)
                break
        if made is None and name in aliases:
            source = lookup(aliases[name], path)
            if source is not None:
                made = dataclasses.replace(source, name=name, hist=source.hist.copy())
        if made is not None:
            known[name] = made
        return made

    return lookup


def compute_ranges(stats: StatsCollector, calibrator: str, percentile: float = DEFAULT_PERCENTILE) -> dict[str, float]:
    """Tensor name -> amax with ``calibrator``'s method, from statistics already collected."""
    method = range_function(calibrator, percentile)
    if calibrator == "entropy":
        warnings.warn(ENTROPY_ALIAS_NOTE, UserWarning, stacklevel=2)
    with ThreadPoolExecutor(max_workers=default_workers(), thread_name_prefix="trtq-ranges") as pool:
        values = list(pool.map(method, stats))  # each search is numpy work that releases the GIL
    return {s.name: float(v) for s, v in zip(stats, values, strict=True)}


@dataclass
class CalibrationResult:
    """Ranges of one method, with the statistics and provenance they came from."""

    calibrator: str
    amax: dict[str, float]
    stats: StatsCollector
    percentile: float = DEFAULT_PERCENTILE
    seconds: float = 0.0
    details: dict | None = None  # how the ranges were chosen (auto: the candidates and the method picked)
    # weight-derived tensors (trtq.weights): max|w| from the initializers, never from data; see add_weight_ranges
    weights: dict[str, float] = field(default_factory=dict)
    weights_unavailable: dict[str, str] = field(default_factory=dict)
    weights_note: str | None = "not computed (no model)"  # None once add_weight_ranges has run

    def __post_init__(self) -> None:
        saved = self.stats.meta.get("weights") if self.weights_note is not None and not self.weights else None
        if isinstance(saved, dict):  # computed with the statistics (collect_statistics): every method gets them
            self._set_weights(saved.get("amax", {}), saved.get("unavailable", {}))

    def _set_weights(self, amax: dict[str, float], unavailable: dict[str, str]) -> None:
        self.weights = {k: float(v) for k, v in amax.items() if k not in self.amax}
        self.weights_unavailable = {k: str(v) for k, v in unavailable.items() if k not in self.amax}
        self.weights_note = None

    @property
    def samples(self) -> int:
        return self.stats.samples

    @property
    def data(self) -> dict:
        """Where the calibration data came from (the data source's provenance)."""
        return self.stats.meta.get("data", {})

    def add_weight_ranges(self, model: Model) -> CalibrationResult:
        """Give every weight-derived float tensor of ``model`` its max|w|, for statistics saved without them
        (a no-op when :func:`collect_statistics` recorded them). Tensors with a data range keep it."""
        if self.weights_note is None:
            return self
        from trtq.weights import weight_ranges

        found = weight_ranges(model)
        self._set_weights(found.amax, found.unavailable)
        return self

    def all_amax(self) -> dict[str, float]:
        """Data ranges then weight-derived ranges: what the cache holds (less the zero ones)."""
        return {**self.amax, **self.weights}

    def zero_ranges(self) -> list[str]:
        """Tensors whose range is 0 (all zeros, or no finite value): the cache leaves them out."""
        return zero_range_names(self.all_amax())

    def without_range(self) -> dict[str, str]:
        """Tensor -> why it has no entry in the cache."""
        reasons = {}
        for name in self.zero_ranges():
            s = self.stats.tensors.get(name)
            if s is None:
                reasons[name] = "weight-derived, all zeros"
            elif s.count == 0:
                reasons[name] = "no finite value on the calibration data"
            else:
                reasons[name] = "all zeros on the calibration data"
        reasons.update(self.weights_unavailable)
        return reasons

    def problems(self) -> list[str]:
        """Lines that need the user's attention: one per tensor with NaN/Inf, one for all zero ranges."""
        lines = []
        for s in self.stats:
            if s.nonfinite:
                lines.append(f"tensor '{s.name}' had {s.nonfinite} NaN/Inf values; they were ignored")
        zeros = self.zero_ranges()
        if zeros:
            lines.append(zero_range_warning(zeros, self.without_range()))
        return lines

    def most_clipped(self, top: int = 5) -> list[tuple[str, float, float]]:
        """``(name, fraction of values beyond amax, amax/absmax)`` for the most clipped tensors."""
        rows = []
        for s in self.stats:
            amax = self.amax[s.name]
            fraction = s.fraction_above(amax)
            if fraction > 0:
                rows.append((s.name, fraction, amax / s.absmax if s.absmax else 1.0))
        rows.sort(key=lambda r: r[1], reverse=True)
        return rows[:top]

    def cache(self, trt_version: str | None = None) -> CalibrationCache:
        return cache_from_amax(self.all_amax(), self.calibrator, trt_version or DEFAULT_TRT_VERSION)

    def write_cache(self, path: str | os.PathLike, trt_version: str | None = None) -> Path:
        return write_cache(path, self.cache(trt_version))

    def document(self, trt_version: str | None = None) -> dict:
        """The ``--json`` document: per-tensor ranges plus where they came from."""
        cache = self.cache(trt_version)
        tensors = {}
        for s in self.stats:
            tensors[s.name] = {
                "amax": self.amax[s.name],
                "scale": cache.scales.get(s.name, 0.0),
                "source": "data",
                "min": s.min if s.count else 0.0,
                "max": s.max if s.count else 0.0,
                "absmax": s.absmax,
                "clipped_fraction": s.fraction_above(self.amax[s.name]),
            }
        for name, value in self.weights.items():
            tensors[name] = {"amax": value, "scale": cache.scales.get(name, 0.0), "source": "weights"}
        missing = self.without_range()
        for name, entry in tensors.items():
            if name not in cache.scales:
                entry["in_cache"] = False
                entry["why"] = missing.get(name, "range 0")
        options = {"calibrator": self.calibrator, "cache_header": cache.header}
        if self.calibrator == "percentile":
            options["percentile"] = self.percentile
        if self.details:
            options[self.calibrator] = self.details
        return {
            "format": RANGES_FORMAT,
            "calibrator": self.calibrator,
            "model": self.stats.meta.get("model"),
            "samples": self.samples,
            "tensors": tensors,
            "without_range": {k: v for k, v in missing.items() if k not in tensors},
            "weights": {"tensors": len(self.weights), "note": self.weights_note},
            "provenance": {
                "trtq": __version__,
                "onnxruntime": package_version("onnxruntime", "onnxruntime-gpu"),
                "numpy": np.__version__,
                "model_sha256": self.stats.meta.get("model_sha256"),
                "data": self.data,
                "batches": self.stats.batches,
                "options": options,
            },
        }

    def write_json(self, path: str | os.PathLike, trt_version: str | None = None) -> Path:
        return write_json(path, self.document(trt_version))


def calibrate(model: Model, batches: Iterable[dict[str, np.ndarray]], calibrator: str = "entropy2", *,
              percentile: float = DEFAULT_PERCENTILE, providers: list[str] | None = None,
              progress: Callable[[int], None] | None = None,
              keep_histograms: bool | None = None,
              tensors: list[str] | None = None, fold_device: str | None = None) -> CalibrationResult:
    """Collect statistics over ``batches`` and compute ``calibrator``'s ranges.

    ``keep_histograms``: None (default) keeps them when the method needs them, i.e. for every method
    but ``minmax``; pass True to re-derive other methods from ``result.stats`` or to save them.
    ``tensors``: calibrate only these, ``fold_device``: where to fold (see :func:`collect_statistics`).
    """
    if calibrator not in METHODS:
        raise TrtqError(f"unknown calibrator '{calibrator}' (choose from {', '.join(METHODS)})")
    if calibrator == "percentile":
        check_percentile(percentile)  # before the long part
    started = time.perf_counter()
    if keep_histograms is None:
        keep_histograms = calibrator != "minmax"
    stats = collect_statistics(model, batches, providers=providers, progress=progress,
                               keep_histograms=keep_histograms, tensors=tensors, fold_device=fold_device)
    amax = compute_ranges(stats, calibrator, percentile)
    return CalibrationResult(calibrator, amax, stats, percentile, time.perf_counter() - started)


def zero_range_names(amax: dict[str, float]) -> list[str]:
    """Names whose range gives a zero float32 scale: left out of every cache trtq writes."""
    return [name for name, value in amax.items() if scale_is_zero(value)]


def zero_range_warning(names: list[str], reasons: dict[str, str] | None = None) -> str:
    """The one warning for all tensors left out of the cache because their range is 0."""
    shown = ", ".join(f"'{n}' ({(reasons or {}).get(n, 'range 0')})" for n in names[:10])
    more = f" and {len(names) - 10} more" if len(names) > 10 else ""
    return (f"{len(names)} tensor(s) have a range of 0 and are left out of the cache (a zero scale is never "
            f"written): {shown}{more}; TensorRT keeps their layers out of INT8 (it warns 'Missing scale')")


def ranges_from_stats(stats: StatsCollector, calibrator: str,
                      percentile: float = DEFAULT_PERCENTILE) -> CalibrationResult:
    """Re-derive ranges with any method from saved statistics, without running the model."""
    started = time.perf_counter()
    amax = compute_ranges(stats, calibrator, percentile)
    return CalibrationResult(calibrator, amax, stats, percentile, time.perf_counter() - started)


def read_ranges_json(path: str | os.PathLike) -> dict[str, float]:
    """Tensor name -> amax from a ``trtq calibrate --json`` file."""
    return parse_ranges_json(read_input_text(path, "ranges file"), str(path))


def read_ranges(path: str | os.PathLike) -> dict[str, float]:
    """Tensor name -> amax from a TensorRT calibration cache or a ranges JSON, told apart by content."""
    data = read_input_bytes(path, "ranges file")
    if data.startswith(b"TRT-"):
        return parse_cache(data, source=str(path)).amax()
    try:
        return parse_ranges_json(data.decode("utf-8"), str(path))
    except UnicodeDecodeError as exc:
        raise TrtqError(f"{path} is neither a TensorRT calibration cache nor a trtq ranges JSON file") from exc


def parse_ranges_json(text: str, source: str) -> dict[str, float]:
    """Tensor name -> amax from the text of a ``trtq calibrate --json`` document."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TrtqError(f"{source} is not a trtq ranges JSON file ({type(exc).__name__})") from exc
    tensors = document.get("tensors") if isinstance(document, dict) else None
    if not isinstance(tensors, dict):
        raise TrtqError(f"{source} is not a trtq ranges JSON file (no 'tensors' object)")
    amax = {}
    for name, entry in tensors.items():
        value = entry.get("amax") if isinstance(entry, dict) else None
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise TrtqError(f"{source}: tensor '{name}' has no valid 'amax'")
        amax[name] = float(value)
    return amax
