"""trtq's own latency measurement of a TensorRT engine, timed the way trtexec times it.

The GPU side (events, the two-queries-in-flight loop, CUDA graphs, the ``IProfiler`` run and the
engine inspector) is :func:`trtq.trt.runner.time_engine`, which returns plain data. This module
turns that into what ``trtq bench`` reports: the statistics of :func:`trtq.report.timing.summarize`
(trtexec's definitions), a per-layer :class:`~trtq.report.profile.Profile` and the engine's layers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trtq.errors import TrtqError
from trtq.report.layers import EngineLayers, parse_layer_info
from trtq.report.profile import LayerTimeCollector, Profile
from trtq.report.timing import BenchStats, QueryTimes, summarize
from trtq.report.trtexec_cmd import BenchSettings
from trtq.shapes import Shape, format_shape_spec


@dataclass
class GpuBenchResult:
    stats: BenchStats
    trace: list[dict[str, float]]
    profile: Profile | None
    layers: EngineLayers | None
    device: dict[str, Any]
    trt_version: str
    warmup_queries: int
    shapes: dict[str, Shape]
    notes: list[str] = field(default_factory=list)


def run_gpu_bench(
    engine_path: str | os.PathLike,
    settings: BenchSettings,
    *,
    backend_name: str | None = None,
    profile_iterations: int = 0,
    echo: Callable[[str], None] | None = None,
) -> GpuBenchResult:
    """Measure ``engine_path`` on the GPU (see :mod:`trtq.trt.runner` for the exact procedure) and
    summarise it as trtexec does."""
    from trtq.trt.runner import time_engine

    run = time_engine(
        engine_path,
        warmup_ms=settings.warmup_ms,
        iterations=settings.iterations,
        duration_s=settings.duration_s,
        cuda_graph=settings.cuda_graph,
        data_transfers=settings.data_transfers,
        spin_wait=settings.spin_wait,
        shapes=settings.shapes,
        backend_name=backend_name,
        profile_iterations=profile_iterations,
        echo=echo,
    )
    trace = run.trace
    times = QueryTimes(
        enqueue=np.array([r["endEnqMs"] - r["startEnqMs"] for r in trace], dtype=np.float32),
        h2d=np.array([r["h2dMs"] for r in trace], dtype=np.float32),
        compute=np.array([r["computeMs"] for r in trace], dtype=np.float32),
        d2h=np.array([r["d2hMs"] for r in trace], dtype=np.float32),
        walltime_ms=trace[-1]["endD2hMs"] - trace[0]["startH2dMs"],
    )
    stats = summarize(times, settings.percentiles)
    described = settings.describe()
    described.update(
        {"cuda_graph": run.cuda_graph, "shapes": format_shape_spec(run.shapes) if run.shapes else "static"}
    )
    stats.settings = described

    profile = None
    if run.layer_times is not None:
        collector = LayerTimeCollector()
        for name, ms in run.layer_times:
            collector.report_layer_time(name, ms)
        profile = collector.profile(source="trtq bench (IProfiler)")

    notes = list(run.notes)
    layers = None
    if run.layer_information is not None:
        try:
            layers = parse_layer_info(run.layer_information, source=str(engine_path))
        except TrtqError as exc:
            notes.append(f"layer information unavailable: {exc}")
    return GpuBenchResult(
        stats=stats,
        trace=trace,
        profile=profile,
        layers=layers,
        device=run.device,
        trt_version=run.trt_version,
        warmup_queries=run.warmup_queries,
        shapes=run.shapes,
        notes=notes,
    )
