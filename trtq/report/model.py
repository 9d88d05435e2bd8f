"""The report model: the rows, lints and summaries `trtq report` shows for one engine.

Plain data built from an :class:`~trtq.report.layers.EngineLayers` and optionally a
:class:`~trtq.report.profile_types.Profile` (by :func:`trtq.report.analysis.build_report`), so the
terminal, Markdown, JSON and HTML renderers all show the same numbers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from trtq.report.layers import EngineLayers, Layer
from trtq.report.precision import KERNEL_CLASS_LABELS, PRECISIONS
from trtq.report.profile_types import LayerTiming

# Layer kinds TensorRT has INT8 kernels for; a float one of these in an INT8 engine is a fallback.
_INT8_CAPABLE = re.compile(r"convolution|deconvolution|pooling|gemm|matmul|matrixmultiply|fullyconnected")


@dataclass
class ReportRow:
    """One engine layer in the report."""

    layer: Layer
    time_ms: float | None
    time_pct: float | None

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def precision(self) -> str:
        return self.layer.precision

    @property
    def kernel_class(self) -> str:
        return self.layer.kernel_class

    @property
    def int8_capable(self) -> bool:
        layer = self.layer
        if layer.is_reformat or layer.is_qdq or layer.is_noop:
            return False
        kind = f"{layer.type or ''} {layer.parameter_type or ''}".lower()
        return bool(_INT8_CAPABLE.search(kind))

    def to_dict(self) -> dict[str, Any]:
        layer = self.layer
        return {
            "name": layer.name,
            "type": layer.type,
            "precision": self.precision,
            "kernel_class": self.kernel_class,
            "time_ms": self.time_ms,
            "time_pct": self.time_pct,
            "onnx_nodes": list(layer.onnx_nodes),
            "tactic": layer.tactic,
            "origin": layer.origin,
            "reformat": layer.is_reformat,
            "qdq": layer.is_qdq,
            "inputs": [_tensor_dict(t) for t in layer.inputs],
            "outputs": [_tensor_dict(t) for t in layer.outputs],
        }


def _tensor_dict(t: Any) -> dict[str, Any]:
    return {
        "name": t.name,
        "dims": list(t.dims) if t.dims is not None else None,
        "dtype": t.dtype,
        "format": t.raw_type,
    }


@dataclass
class Lint:
    """A performance or precision hazard with a one-line explanation."""

    kind: str  # int8-fallback | reformat-cost | unfused-qdq | missing-range; ONNX Q/DQ lints: see qdq_lints.py
    message: str
    layer: str | None = None
    time_ms: float | None = None
    time_pct: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "layer": self.layer,
            "message": self.message,
            "time_ms": self.time_ms,
            "time_pct": self.time_pct,
        }

    @classmethod
    def of_row(cls, kind: str, row: ReportRow, message: str) -> Lint:
        """A lint about one layer, carrying that layer's time."""
        return cls(kind=kind, message=message, layer=row.layer.name, time_ms=row.time_ms, time_pct=row.time_pct)


@dataclass
class EngineReport:
    """Everything `trtq report` shows for one engine."""

    label: str
    engine: EngineLayers
    rows: list[ReportRow]
    unmatched: list[LayerTiming]
    has_profile: bool
    total_ms: float | None
    profile_iterations: int | None = None
    lints: list[Lint] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    int8_expected: bool = False
    ranges_checked: bool = False

    def unmatched_pct(self, row: LayerTiming) -> float | None:
        return 100.0 * row.average_ms / self.total_ms if self.total_ms else None

    def precision_summary(self) -> dict[str, dict[str, float]]:
        """``{"INT8": {"layers": N, "time_ms": T, "time_pct": P}, ...}`` over engine layers only."""
        return self._grouped_by(lambda r: r.precision, PRECISIONS)

    def kernel_class_summary(self) -> dict[str, dict[str, float]]:
        return self._grouped_by(lambda r: r.kernel_class, KERNEL_CLASS_LABELS)

    def _grouped_by(self, key: Callable[[ReportRow], str], order: Iterable[str]) -> dict[str, dict[str, float]]:
        groups: dict[str, list[ReportRow]] = {}
        for row in self.rows:
            groups.setdefault(key(row), []).append(row)
        return {k: self._group(groups[k]) for k in order if k in groups}

    def _group(self, rows: list[ReportRow]) -> dict[str, float]:
        return {
            "layers": len(rows),
            "time_ms": sum(r.time_ms or 0.0 for r in rows),
            "time_pct": sum(r.time_pct or 0.0 for r in rows),
        }

    def reformat_summary(self) -> dict[str, float]:
        """Reformat layers that do work (TensorRT's elided "NoOp" copies are not counted)."""
        return self._group([r for r in self.rows if r.layer.is_reformat and not r.layer.is_noop])

    def qdq_summary(self) -> dict[str, float]:
        return self._group([r for r in self.rows if r.layer.is_qdq])

    def unmatched_summary(self) -> dict[str, float]:
        ms = sum(u.average_ms for u in self.unmatched)
        return {
            "rows": len(self.unmatched),
            "time_ms": ms,
            "time_pct": 100.0 * ms / self.total_ms if self.total_ms else 0.0,
        }

    def summary_dict(self) -> dict[str, Any]:
        return {
            "layers": len(self.rows),
            "total_ms": self.total_ms,
            "profile_iterations": self.profile_iterations,
            "precision": self.precision_summary(),
            "kernel_class": self.kernel_class_summary(),
            "reformat": self.reformat_summary(),
            "qdq": self.qdq_summary(),
            "unmatched_profile": self.unmatched_summary(),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": {
                "label": self.label,
                "source": self.engine.source,
                "layout": self.engine.layout,
                "io_tensors": list(self.engine.io_tensors),
            },
            "layers": [r.to_dict() for r in self.rows],
            "unmatched_profile": [
                {"name": u.name, "time_ms": u.average_ms, "time_pct": self.unmatched_pct(u)} for u in self.unmatched
            ],
            "summary": self.summary_dict(),
            "lints": [lint.to_dict() for lint in self.lints],
            "notes": list(self.notes),
        }
