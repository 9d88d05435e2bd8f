"""Engine-vs-engine comparison: two reports of one model aligned layer by layer.

Conversion layers (reformats, Q/DQ, no-ops) are charged to the compute layer they feed
(:class:`Segment`); segments are paired by type and I/O shape in execution order, as in TensorRT's
trex, so the time each precision choice gains or costs is visible per layer.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from trtq.report.layers import Layer
from trtq.report.model import EngineReport, ReportRow


def _kind(layer: Layer) -> str:
    text = f"{layer.parameter_type or ''} {layer.type or ''}".lower()
    for token, kind in (
        ("deconv", "deconv"),
        ("conv", "conv"),
        ("pool", "pool"),
        ("gemm", "gemm"),
        ("matrixmultiply", "gemm"),
        ("matmul", "gemm"),
        ("fullyconnected", "gemm"),
    ):
        if token in text:
            return kind
    return (layer.type or "?").lower()


def _signature(layer: Layer) -> tuple[Any, ...]:
    """Type and I/O dimensions without the batch: what stays equal across precisions (as in trex)."""
    din = layer.inputs[0].dims[1:] if layer.inputs and layer.inputs[0].dims else None
    dout = layer.outputs[0].dims[1:] if layer.outputs and layer.outputs[0].dims else None
    return (_kind(layer), din, dout)


@dataclass
class Segment:
    """A compute layer plus the reformat/Q/DQ/no-op layers that run just before it."""

    anchor: ReportRow
    overhead: list[ReportRow] = field(default_factory=list)

    @property
    def time_ms(self) -> float | None:
        if self.anchor.time_ms is None:
            return None
        return self.anchor.time_ms + sum(r.time_ms or 0.0 for r in self.overhead)

    @property
    def overhead_ms(self) -> float:
        return sum(r.time_ms or 0.0 for r in self.overhead)


def segments(report: EngineReport) -> list[Segment]:
    """Group rows so that conversion layers are charged to the compute layer they feed."""
    out: list[Segment] = []
    pending: list[ReportRow] = []
    for row in report.rows:
        layer = row.layer
        if layer.is_reformat or layer.is_qdq or layer.is_noop:
            pending.append(row)
            continue
        out.append(Segment(anchor=row, overhead=pending))
        pending = []
    if pending:
        if out:
            out[-1].overhead.extend(pending)
        else:
            out.append(Segment(anchor=pending[0], overhead=pending[1:]))
    return out


@dataclass
class ComparePair:
    a: Segment | None
    b: Segment | None
    exact: bool = True  # False when paired by position inside a block of differing signatures

    @property
    def delta_ms(self) -> float | None:
        ta = self.a.time_ms if self.a else None
        tb = self.b.time_ms if self.b else None
        if ta is None and tb is None:
            return None
        if (self.a and ta is None) or (self.b and tb is None):
            return None
        return (tb or 0.0) - (ta or 0.0)

    def to_dict(self) -> dict[str, Any]:
        def side(seg: Segment | None) -> dict[str, Any] | None:
            if seg is None:
                return None
            return {
                "layer": seg.anchor.name,
                "type": seg.anchor.layer.type,
                "precision": seg.anchor.precision,
                "kernel_class": seg.anchor.kernel_class,
                "time_ms": seg.time_ms,
                "layer_time_ms": seg.anchor.time_ms,
                "overhead_ms": seg.overhead_ms,
                "overhead_layers": [r.name for r in seg.overhead],
            }

        return {"a": side(self.a), "b": side(self.b), "delta_ms": self.delta_ms, "exact_match": self.exact}


@dataclass
class Comparison:
    a: EngineReport
    b: EngineReport
    pairs: list[ComparePair]

    @property
    def timed(self) -> bool:
        return self.a.has_profile and self.b.has_profile

    def gains(self, top: int = 5) -> list[ComparePair]:
        """Pairs where B is faster than A, largest saving first."""
        timed = [p for p in self.pairs if p.delta_ms is not None and p.delta_ms < 0]
        return sorted(timed, key=lambda p: p.delta_ms)[:top]

    def losses(self, top: int = 5) -> list[ComparePair]:
        """Pairs where B is slower than A (or exists only in B), largest cost first."""
        timed = [p for p in self.pairs if p.delta_ms is not None and p.delta_ms > 0]
        return sorted(timed, key=lambda p: -p.delta_ms)[:top]

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": {"label": self.a.label, "total_ms": self.a.total_ms, "precision": self.a.precision_summary()},
            "b": {"label": self.b.label, "total_ms": self.b.total_ms, "precision": self.b.precision_summary()},
            "pairs": [p.to_dict() for p in self.pairs],
            "matched_pairs": sum(1 for p in self.pairs if p.a and p.b),
            "only_a": sum(1 for p in self.pairs if p.a and not p.b),
            "only_b": sum(1 for p in self.pairs if p.b and not p.a),
        }


def compare_reports(a: EngineReport, b: EngineReport) -> Comparison:
    """Align two engines of one model layer by layer (type + shapes, in execution order)."""
    seg_a, seg_b = segments(a), segments(b)
    sig_a = [_signature(s.anchor.layer) for s in seg_a]
    sig_b = [_signature(s.anchor.layer) for s in seg_b]
    pairs: list[ComparePair] = []
    matcher = difflib.SequenceMatcher(None, sig_a, sig_b, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            pairs += [ComparePair(seg_a[i], seg_b[j]) for i, j in zip(range(i1, i2), range(j1, j2), strict=True)]
            continue
        common = min(i2 - i1, j2 - j1) if op == "replace" else 0
        for k in range(common):
            same_kind = sig_a[i1 + k][0] == sig_b[j1 + k][0]
            if same_kind:
                pairs.append(ComparePair(seg_a[i1 + k], seg_b[j1 + k], exact=False))
            else:
                pairs += [ComparePair(seg_a[i1 + k], None), ComparePair(None, seg_b[j1 + k])]
        pairs += [ComparePair(seg_a[i], None) for i in range(i1 + common, i2)]
        pairs += [ComparePair(None, seg_b[j]) for j in range(j1 + common, j2)]
    return Comparison(a=a, b=b, pairs=pairs)
