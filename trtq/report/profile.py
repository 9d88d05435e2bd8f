"""Per-layer timings: trtexec ``--exportProfile`` JSON, ``--dumpProfile`` tables, IProfiler runs.

All three become a :class:`Profile` (defined in :mod:`trtq.report.profile_types`, which the trtexec
log parser shares, and re-exported here) whose rows are joined to layers by name. Rows that match
no layer (Myelin reports its sub-kernels, e.g. ``node_conv2d_myl0_1``, under names the layer
information does not use) are kept and counted, never dropped, so the total stays right.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trtq.errors import TrtqError
from trtq.fileio import read_input_text
from trtq.report.layers import EngineLayers, Layer
from trtq.report.profile_types import LayerTiming, Profile
from trtq.report.trtexec_log import parse_trtexec_log

__all__ = [
    "JoinedLayer",
    "LayerTimeCollector",
    "LayerTiming",
    "Profile",
    "ProfileJoin",
    "join_profile",
    "load_profile",
    "parse_profile_json",
]


def parse_profile_json(doc: Any, source: str = "profile") -> Profile:
    """Parse trtexec ``--exportProfile`` JSON (with or without ``medianMs``)."""
    if not isinstance(doc, list) or not doc:
        raise TrtqError(f"{source} is not a trtexec --exportProfile file: expected a JSON list")
    iterations = 1
    rows: list[LayerTiming] = []
    for entry in doc:
        if not isinstance(entry, dict):
            raise TrtqError(f"{source}: unexpected entry {entry!r:.80}")
        try:
            if "count" in entry and "name" not in entry:
                iterations = int(entry["count"])
                continue
            total = float(entry["timeMs"])
            median, pct = entry.get("medianMs"), entry.get("percentage")
            rows.append(
                LayerTiming(
                    name=str(entry["name"]),
                    total_ms=total,
                    average_ms=float(entry.get("averageMs", total / max(iterations, 1))),
                    median_ms=float(median) if median is not None else None,
                    percentage=float(pct) if pct is not None else None,
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TrtqError(f"{source}: not an --exportProfile entry (name, timeMs, numbers): {entry!r:.80}") from exc
    return Profile(iterations=iterations, rows=rows, source=source)


def load_profile(path: str | os.PathLike) -> Profile:
    """Read a profile: ``--exportProfile`` JSON, or a trtexec log with a ``--dumpProfile`` table."""
    p = Path(path)
    text = read_input_text(p, "profile file", errors="replace")
    head = text.lstrip()[:1]
    if head in ("[", "{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            doc = None  # a log line starts with "[date]"; fall through to the log parser
        if isinstance(doc, dict):
            hint = " (it looks like layer information: pass it as the first argument)" if "Layers" in doc else ""
            raise TrtqError(f"{p} is not a trtexec --exportProfile file{hint}")
        if doc is not None:
            return parse_profile_json(doc, source=str(p))
    log = parse_trtexec_log(text, source=str(p))
    if log.profile is None:
        raise TrtqError(
            f"{p} has no per-layer profile: expected trtexec --exportProfile JSON or a log run with --dumpProfile"
        )
    return log.profile


class LayerTimeCollector:
    """Collects ``IProfiler.report_layer_time`` calls exactly as trtexec's ``Profiler`` does.

    Layers arrive in execution order once per profiled inference; a new iteration starts when
    the first layer's name comes round again. Pure Python, so it is testable without a GPU; the
    profiler reports of :func:`trtq.trt.runner.time_engine` are replayed into it.
    """

    def __init__(self) -> None:
        self._names: list[str] = []
        self._times: list[list[float]] = []
        self._cursor = 0
        self.iterations = 0

    def report_layer_time(self, layer_name: str, ms: float) -> None:
        if self._cursor >= len(self._names):
            first = bool(self._names) and self._names[0] == layer_name
            if not self._names or first:
                self.iterations += 1
            if first:
                self._cursor = 0
            else:
                self._names.append(layer_name)
                self._times.append([])
                self._cursor = len(self._names) - 1
        self._times[self._cursor].append(float(ms))
        self._cursor += 1

    def profile(self, source: str = "IProfiler") -> Profile:
        """Per-layer totals, averages over iterations and medians, as ``--exportProfile`` has them."""
        iterations = max(self.iterations, 1)
        rows = []
        for name, times in zip(self._names, self._times, strict=True):
            arr = np.asarray(times, dtype=np.float64)
            total = float(arr.sum())
            rows.append(
                LayerTiming(name=name, total_ms=total, average_ms=total / iterations, median_ms=float(np.median(arr)))
            )
        grand = sum(r.total_ms for r in rows) or 1.0
        for r in rows:
            r.percentage = 100.0 * r.total_ms / grand
        return Profile(iterations=iterations, rows=rows, source=source)


@dataclass
class JoinedLayer:
    """A layer with its timing (``None`` when the profile has no row for it)."""

    layer: Layer
    timing: LayerTiming | None


@dataclass
class ProfileJoin:
    """Layers in engine order with their timings, plus the profile rows that matched no layer."""

    rows: list[JoinedLayer]
    unmatched: list[LayerTiming] = field(default_factory=list)
    has_profile: bool = False

    @property
    def matched_count(self) -> int:
        return sum(1 for r in self.rows if r.timing is not None)

    @property
    def total_ms(self) -> float:
        return float(
            sum(r.timing.average_ms for r in self.rows if r.timing is not None)
            + sum(u.average_ms for u in self.unmatched)
        )


def join_profile(engine: EngineLayers, profile: Profile | None) -> ProfileJoin:
    """Attach profile rows to layers by exact name; keep every row that matches none."""
    if profile is None:
        return ProfileJoin(rows=[JoinedLayer(layer, None) for layer in engine.layers])
    by_name: dict[str, LayerTiming] = {}
    duplicates: list[LayerTiming] = []
    for row in profile.rows:
        if row.name in by_name:
            duplicates.append(row)  # the same name twice: keep it visible rather than summing silently
        else:
            by_name[row.name] = row
    layer_names = {layer.name for layer in engine.layers}
    rows = [JoinedLayer(layer, by_name.get(layer.name)) for layer in engine.layers]
    unmatched = [row for row in profile.rows if row.name not in layer_names]
    unmatched += [row for row in duplicates if row.name in layer_names]
    return ProfileJoin(rows=rows, unmatched=unmatched, has_profile=True)
