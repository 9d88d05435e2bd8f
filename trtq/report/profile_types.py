"""The per-layer profile data: :class:`LayerTiming` rows and the :class:`Profile` that holds them.

A leaf module (it imports nothing from trtq) so that both the profile readers
(:mod:`trtq.report.profile`) and the trtexec log parser (:mod:`trtq.report.trtexec_log`, whose
``--dumpProfile`` tables are profiles too) can import it without importing each other in a circle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass
class LayerTiming:
    """Timing of one profiled layer, per inference unless the name says otherwise."""

    name: str
    total_ms: float  # summed over all profiled iterations
    average_ms: float  # total_ms / iterations
    median_ms: float | None = None  # absent in TensorRT 8.x files
    percentage: float | None = None  # as written by trtexec


@dataclass
class Profile:
    """A per-layer profile. ``iterations`` is trtexec's ``count``."""

    iterations: int
    rows: list[LayerTiming]
    source: str = ""

    @property
    def total_ms(self) -> float:
        """Sum of the per-inference averages: the profiled time of one inference."""
        return float(sum(r.average_ms for r in self.rows))

    def to_export_json(self) -> str:
        """The ``--exportProfile`` layout, so files trtq writes load wherever trtexec's do."""
        total = sum(r.total_ms for r in self.rows) or 1.0
        lines = ["[", f'  {{ "count" : {self.iterations} }}']
        for r in self.rows:
            entry = {"name": r.name, "timeMs": r.total_ms, "averageMs": r.average_ms}
            if r.median_ms is not None:
                entry["medianMs"] = r.median_ms
            entry["percentage"] = 100.0 * r.total_ms / total
            lines.append(", " + json.dumps(entry))
        lines.append("]")
        return "\n".join(lines) + "\n"
