"""Latency statistics defined exactly as trtexec defines them (``sampleReporting.cpp``).

trtexec keeps every time as a 32-bit float and computes in float32:

- per query: enqueue = host enqueue duration; H2D, GPU compute, D2H from CUDA events;
  latency = H2D + GPU compute + D2H;
- per metric, over the queries sorted ascending: min, max, mean (a float32 running sum over
  the sorted values, divided by the count), median (the average of the two middle values when
  the count is even), and each percentile P as ``timings[max(n - 1 - int((1 - P/100) * n), 0)]``
  with the bracket evaluated in float32 (for n = 10, P = 90 this picks index 8, not 9);
- coefficient of variance = sqrt(mean squared deviation) / mean * 100 (float32);
- throughput = queries / total host walltime, where the walltime runs from the first query's
  H2D start to the last query's D2H end; Total GPU Compute Time = mean GPU compute * queries.

The functions here reproduce those numbers from per-query times (trtq's own measurement, or a
trtexec ``--exportTimes`` file), so trtq's figures and trtexec's are directly comparable.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trtq.errors import TrtqError
from trtq.fileio import read_input_text

DEFAULT_PERCENTILES: tuple[float, ...] = (90.0, 95.0, 99.0)

# Metric keys (JSON) -> the names trtexec prints in its performance summary.
METRIC_LABELS = {
    "latency": "Latency",
    "enqueue": "Enqueue Time",
    "h2d": "H2D Latency",
    "gpu_compute": "GPU Compute Time",
    "d2h": "D2H Latency",
    "e2e": "End-to-End Host Latency",
}

# trtexec's warning thresholds (printEpilog).
ENQUEUE_BOUND_FRACTION = 0.8
UNSTABLE_COEFF_VAR_PCT = 1.0

_F32 = np.float32


def percentile_key(p: float) -> str:
    """90 -> ``"p90"``, 99.9 -> ``"p99.9"`` (the JSON key for a percentile)."""
    return "p" + format(float(p), "g")


def percentile_index(count: int, p: float) -> int:
    """Index into the ascending timings that trtexec reports as percentile ``p`` (float32 rule)."""
    if count <= 0:
        raise ValueError("no timings")
    if not 0.0 <= p <= 100.0:
        raise TrtqError(f"percentile {p} is not in [0, 100]")
    exclude = int(_F32(_F32(1.0) - _F32(p) / _F32(100.0)) * _F32(count))
    return max(count - 1 - exclude, 0)


@dataclass
class MetricStats:
    """Statistics of one metric in ms; ``percentiles`` maps P -> value."""

    min: float
    max: float
    mean: float
    median: float
    percentiles: dict[float, float] = field(default_factory=dict)
    coeff_var_pct: float | None = None

    def to_dict(self) -> dict[str, float]:
        out = {"min": self.min, "max": self.max, "mean": self.mean, "median": self.median}
        for p, v in self.percentiles.items():
            out[percentile_key(p)] = v
        return out


def metric_stats(values: Any, percentiles: tuple[float, ...] = DEFAULT_PERCENTILES) -> MetricStats:
    """trtexec's ``getPerformanceResult`` on one metric (values in ms)."""
    ordered = np.sort(np.asarray(values, dtype=_F32))
    n = ordered.size
    if n == 0:
        raise TrtqError("no timed queries to summarise")
    # std::accumulate over the sorted values with a float accumulator: a sequential float32 sum.
    mean = _F32(np.cumsum(ordered, dtype=_F32)[-1]) / _F32(n)
    m = n // 2
    median = ordered[m] if n % 2 else (ordered[m - 1] + ordered[m]) / _F32(2)
    diffs = ordered - mean
    variance = _F32(np.cumsum(diffs * diffs, dtype=_F32)[-1]) / _F32(n)
    coeff = float("inf") if mean == 0 else float(np.sqrt(variance) / mean * _F32(100))
    return MetricStats(
        min=float(ordered[0]),
        max=float(ordered[-1]),
        mean=float(mean),
        median=float(median),
        percentiles={float(p): float(ordered[percentile_index(n, p)]) for p in percentiles},
        coeff_var_pct=coeff,
    )


@dataclass
class QueryTimes:
    """Per-query times in ms (float32, as trtexec stores them) and the walltime of the run."""

    enqueue: np.ndarray
    h2d: np.ndarray
    compute: np.ndarray
    d2h: np.ndarray
    walltime_ms: float

    def __post_init__(self) -> None:
        self.enqueue = np.asarray(self.enqueue, dtype=_F32)
        self.h2d = np.asarray(self.h2d, dtype=_F32)
        self.compute = np.asarray(self.compute, dtype=_F32)
        self.d2h = np.asarray(self.d2h, dtype=_F32)
        sizes = {a.size for a in (self.enqueue, self.h2d, self.compute, self.d2h)}
        if len(sizes) != 1:
            raise TrtqError("per-query time arrays differ in length")

    @property
    def count(self) -> int:
        return int(self.compute.size)

    @property
    def latency(self) -> np.ndarray:
        """H2D + GPU compute + D2H, summed in trtexec's order and precision."""
        return (self.h2d + self.compute) + self.d2h


@dataclass
class BenchStats:
    """A performance summary: trtq's own, recomputed from times, or parsed from a trtexec log.

    ``metrics`` maps ``latency``, ``gpu_compute``, ``h2d``, ``d2h``, ``enqueue`` (and ``e2e`` for
    8.x logs) to ``{"min", "max", "mean", "median", "p90", ...}`` in ms, as far as known.
    """

    throughput_qps: float | None = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    queries: int | None = None
    walltime_s: float | None = None
    total_gpu_compute_s: float | None = None
    gpu_coeff_var_pct: float | None = None
    warnings: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.throughput_qps is not None:
            out["throughput_qps"] = self.throughput_qps
        for key in ("latency", "gpu_compute", "h2d", "d2h", "enqueue", "e2e"):
            if key in self.metrics:
                out[key] = dict(self.metrics[key])
        for key in ("queries", "walltime_s", "total_gpu_compute_s", "gpu_coeff_var_pct"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.warnings:
            out["warnings"] = list(self.warnings)
        if self.settings:
            out["settings"] = dict(self.settings)
        return out


def throughput_qps(queries: int, walltime_ms: float, batch: int = 1) -> float:
    """trtexec's ``batch * queries / walltimeMs * 1000`` in float32."""
    return float(_F32(batch * queries) / _F32(walltime_ms) * _F32(1000))


def performance_warnings(
    enqueue_median: float | None,
    h2d_median: float | None,
    compute_median: float | None,
    d2h_median: float | None,
    coeff_var_pct: float | None,
) -> list[str]:
    """The warnings trtexec prints after its summary, under the same conditions."""
    out: list[str] = []
    if compute_median is None:
        return out
    if enqueue_median is not None and enqueue_median > ENQUEUE_BOUND_FRACTION * compute_median:
        out.append("Throughput may be bound by Enqueue Time rather than GPU Compute (try CUDA graphs).")
    if h2d_median is not None and h2d_median >= compute_median:
        out.append("Throughput may be bound by host-to-device transfers for the inputs.")
    if d2h_median is not None and d2h_median >= compute_median:
        out.append("Throughput may be bound by device-to-host transfers for the outputs.")
    if coeff_var_pct is not None and coeff_var_pct > UNSTABLE_COEFF_VAR_PCT:
        out.append(f"GPU compute time is unstable, with coefficient of variance = {coeff_var_pct:g}%.")
    return out


def summarize(times: QueryTimes, percentiles: tuple[float, ...] = DEFAULT_PERCENTILES) -> BenchStats:
    """trtexec's ``printEpilog`` numbers for the given per-query times."""
    if times.count == 0:
        raise TrtqError("no timed queries to summarise")
    if times.walltime_ms <= 0:
        raise TrtqError("total walltime must be positive")
    per_metric = {
        "latency": metric_stats(times.latency, percentiles),
        "enqueue": metric_stats(times.enqueue, percentiles),
        "h2d": metric_stats(times.h2d, percentiles),
        "gpu_compute": metric_stats(times.compute, percentiles),
        "d2h": metric_stats(times.d2h, percentiles),
    }
    walltime = _F32(times.walltime_ms)
    compute = per_metric["gpu_compute"]
    return BenchStats(
        throughput_qps=throughput_qps(times.count, times.walltime_ms),
        metrics={k: v.to_dict() for k, v in per_metric.items()},
        queries=times.count,
        walltime_s=float(walltime / _F32(1000)),
        total_gpu_compute_s=float(_F32(compute.mean) * _F32(times.count) / _F32(1000)),
        gpu_coeff_var_pct=compute.coeff_var_pct,
        warnings=performance_warnings(
            per_metric["enqueue"].median,
            per_metric["h2d"].median,
            compute.median,
            per_metric["d2h"].median,
            compute.coeff_var_pct,
        ),
    )


_TRACE_KEYS = ("startEnqMs", "endEnqMs", "startH2dMs", "endD2hMs", "computeMs")


def query_times_from_trace(records: Any, source: str = "times", warmup_ms: float | None = None) -> QueryTimes:
    """Per-query times from trtexec ``--exportTimes`` records.

    Durations come from ``h2dMs``/``computeMs``/``d2hMs`` (written with more significant digits
    than the start/end stamps); enqueue from ``endEnqMs - startEnqMs``; the walltime from the
    first ``startH2dMs`` to the last ``endD2hMs``. TensorRT 10.x writes only timed queries; 8.x
    wrote the warm-up ones too; pass ``warmup_ms`` to drop queries whose compute started earlier.
    """
    if not isinstance(records, list) or not records:
        raise TrtqError(f"{source} is not a trtexec --exportTimes file: expected a non-empty JSON list")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or any(k not in rec for k in _TRACE_KEYS):
            raise TrtqError(f"{source}: record {i} lacks the --exportTimes keys ({', '.join(_TRACE_KEYS)})")
    if warmup_ms is not None:
        records = [r for r in records if float(r.get("startComputeMs", r["startH2dMs"])) >= warmup_ms]
        if not records:
            raise TrtqError(f"{source}: no query starts after the {warmup_ms} ms warm-up")

    def column(key: str) -> np.ndarray:
        return np.array([float(r.get(key, 0.0)) for r in records], dtype=_F32)

    start_h2d = _F32(records[0]["startH2dMs"])
    end_d2h = _F32(records[-1]["endD2hMs"])
    return QueryTimes(
        enqueue=column("endEnqMs") - column("startEnqMs"),
        h2d=column("h2dMs"),
        compute=column("computeMs"),
        d2h=column("d2hMs"),
        walltime_ms=float(end_d2h - start_h2d),
    )


def load_export_times(path: str | os.PathLike, warmup_ms: float | None = None) -> QueryTimes:
    """Read a trtexec ``--exportTimes`` JSON file."""
    text = read_input_text(path, "times file")
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TrtqError(f"cannot read times file {path}: {exc}") from exc
    return query_times_from_trace(records, source=str(path), warmup_ms=warmup_ms)


def export_times_json(records: list[dict[str, float]]) -> str:
    """Write per-query records in trtexec's ``--exportTimes`` layout (one object per query)."""
    return "[\n" + "\n, ".join(json.dumps(r) for r in records) + "\n]\n"
