"""The report model: per-layer rows, precision summary, lints, and engine-vs-engine comparison.

Inputs are an :class:`~trtq.report.layers.EngineLayers` and optionally a
:class:`~trtq.report.profile.Profile`; everything here is plain data so the terminal, Markdown,
JSON and HTML renderers all show the same numbers.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from trtq.report.layers import EngineLayers, Layer
from trtq.report.precision import KERNEL_CLASS_LABELS, PRECISIONS
from trtq.report.profile import LayerTiming, Profile, join_profile

REFORMAT_THRESHOLD_PCT = 5.0
FLOAT_PRECISIONS = ("FP32", "TF32", "FP16", "BF16")

# Layer kinds TensorRT has INT8 kernels for; a float one of these in an INT8 engine is a fallback.
_INT8_CAPABLE = re.compile(r"convolution|deconvolution|pooling|gemm|matmul|matrixmultiply|fullyconnected")
# TensorRT-internal tensor names (reformat copies, Myelin temporaries): never in a range file.
_ADD_NODE = re.compile(r"(^|[_/.])add(_|\d|$)")
_INTERNAL_TENSOR = re.compile(r"^Reformatted |_myl\d|^__myl")


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

    kind: str  # int8-fallback | reformat-cost | unfused-qdq | missing-range
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


def _pct(value: float | None) -> str:
    return f"{value:.1f} %" if value is not None else "n/a"


def _ms(value: float | None) -> str:
    return f"{value:.4g} ms" if value is not None else "n/a"


def _producers(engine: EngineLayers) -> dict[str, Layer]:
    out: dict[str, Layer] = {}
    for layer in engine.layers:
        for t in layer.outputs:
            out.setdefault(t.name, layer)
    return out


def _consumers(engine: EngineLayers) -> dict[str, list[Layer]]:
    out: dict[str, list[Layer]] = {}
    for layer in engine.layers:
        for t in layer.inputs:
            out.setdefault(t.name, []).append(layer)
    return out


def _real_producer(layer: Layer, producers: dict[str, Layer]) -> Layer:
    """Walk back through reformat/no-op copies to the layer that computed the tensor."""
    seen = {layer.name}
    while (layer.is_reformat or layer.is_noop) and layer.inputs and layer.inputs[0].name in producers:
        prev = producers[layer.inputs[0].name]
        if prev.name in seen:
            break
        seen.add(prev.name)
        layer = prev
    return layer


def _int8_fallback_lints(report: EngineReport) -> list[Lint]:
    lints = []
    for row in report.rows:
        if row.int8_capable and row.precision in FLOAT_PRECISIONS:
            layer = row.layer
            cost = f", {_ms(row.time_ms)} ({_pct(row.time_pct)})" if row.time_ms is not None else ""
            lints.append(
                Lint.of_row(
                    "int8-fallback",
                    row,
                    f"'{layer.name}' ({layer.type}) ran in {row.precision} although INT8 was requested{cost}: "
                    "its input has no Q/DQ (explicit quantization) or no dynamic range (calibration), "
                    "or TensorRT found no faster INT8 kernel",
                )
            )
    return lints


def _reformat_lints(report: EngineReport, threshold_pct: float) -> list[Lint]:
    lints = []
    for row in report.rows:
        layer = row.layer
        if not layer.is_reformat or layer.is_noop or row.time_pct is None or row.time_pct <= threshold_pct:
            continue
        src = layer.inputs[0] if layer.inputs else None
        dst = layer.outputs[0] if layer.outputs else None
        if src is not None and dst is not None and src.dtype != dst.dtype:
            why = f"converts {src.dtype} to {dst.dtype}; keep neighbouring layers in one precision" + (
                " or give the engine that I/O type (trtexec --inputIOFormats/--outputIOFormats)"
                if src.name in report.engine.io_tensors or dst.name in report.engine.io_tensors
                else ""
            )
        else:
            why = "changes only the memory layout between kernels that want different formats"
        lints.append(
            Lint.of_row(
                "reformat-cost",
                row,
                f"reformat '{layer.name}' costs {_pct(row.time_pct)} ({_ms(row.time_ms)}) > {threshold_pct:g} %: {why}",
            )
        )
    return lints


def _unfused_qdq_lints(report: EngineReport) -> list[Lint]:
    producers = _producers(report.engine)
    consumers = _consumers(report.engine)
    by_name = {r.layer.name: r for r in report.rows}
    lints: list[Lint] = []
    paired: set[str] = set()
    for row in report.rows:
        layer = row.layer
        if not layer.is_qdq or layer.name in paired:
            continue
        src = layer.inputs[0] if layer.inputs else None
        dst = layer.outputs[0] if layer.outputs else None
        dequantize = src is not None and src.dtype == "INT8" and (dst is None or dst.dtype != "INT8")
        role = "dequantize" if dequantize else "quantize"
        # A dequantize feeding a quantize: the pair round-trips through float and does no work.
        partner = None
        if dequantize and dst is not None:
            partner = next((c for c in consumers.get(dst.name, []) if c.is_qdq and c.name != layer.name), None)
        if partner is not None:
            paired.update({layer.name, partner.name})
            other = by_name.get(partner.name)
            ms = (row.time_ms or 0.0) + ((other.time_ms or 0.0) if other else 0.0)
            pct = (row.time_pct or 0.0) + ((other.time_pct or 0.0) if other else 0.0)
            has_time = row.time_ms is not None
            lints.append(
                Lint(
                    kind="unfused-qdq",
                    layer=layer.name,
                    time_ms=ms if has_time else None,
                    time_pct=pct if has_time else None,
                    message=(
                        f"Q/DQ pair left unfused: '{layer.name}' then '{partner.name}' convert INT8 to float and back"
                        + (f" ({_ms(ms)}, {_pct(pct)})" if has_time else "")
                        + "; remove the redundant pair or quantize the layer between them"
                    ),
                )
            )
            continue
        cost = f" ({_ms(row.time_ms)}, {_pct(row.time_pct)})" if row.time_ms is not None else ""
        if src is not None and src.name in report.engine.io_tensors and not dequantize:
            why = f"it quantizes the network input '{src.name}' (needed unless the engine takes INT8 input)"
        elif not dequantize and src is not None and src.name in producers:
            prod = _real_producer(producers[src.name], producers)
            writes = prod.outputs[0].dtype if prod.outputs else src.dtype
            parts = [*prod.name.split(" + "), *prod.onnx_nodes]
            fused_add = any(_ADD_NODE.search(part.strip().lower()) for part in parts)
            if fused_add:
                fix = "quantize the Add's other input (the residual branch) so the fused layer can write INT8"
            else:
                fix = f"add Q/DQ on the input of '{prod.name}' too, so it runs in INT8 and the quantize fuses into it"
            why = f"its producer '{prod.name}' ({prod.type}) writes {writes}; {fix}"
        elif dequantize and dst is not None and consumers.get(dst.name):
            cons = consumers[dst.name][0]
            why = f"its consumer '{cons.name}' ({cons.type}) has no INT8 kernel that could absorb it"
        else:
            why = "TensorRT found no neighbouring layer to fuse it into"
        lints.append(
            Lint.of_row(
                "unfused-qdq",
                row,
                f"unfused {role} layer '{layer.name}' "
                f"({src.dtype if src else '?'} -> {dst.dtype if dst else '?'}){cost}: {why}",
            )
        )
    return lints


def _missing_range_lints(
    report: EngineReport, ranges: set[str] | None, ranges_source: str, missing_scale: list[str] | None
) -> list[Lint]:
    lints: list[Lint] = []
    seen: set[str] = set()
    if ranges is not None:
        for row in report.rows:
            if not row.int8_capable:
                continue
            for t in [*row.layer.inputs, *row.layer.outputs]:
                if not t.name or t.name in seen or _INTERNAL_TENSOR.search(t.name) or t.name in ranges:
                    continue
                seen.add(t.name)
                lints.append(
                    Lint(
                        kind="missing-range",
                        layer=row.layer.name,
                        message=(
                            f"tensor '{t.name}' of '{row.layer.name}' has no range in {ranges_source}: "
                            "TensorRT cannot run the layers reading or writing it in INT8"
                        ),
                    )
                )
    for name in missing_scale or []:
        if name in seen:
            continue
        seen.add(name)
        lints.append(
            Lint(
                kind="missing-range",
                message=(
                    f"tensor '{name}' had no scale when the engine was built (TensorRT's build log): "
                    "layers reading or writing it fell back to a float kernel"
                ),
            )
        )
    return lints


def build_report(
    engine: EngineLayers,
    profile: Profile | None = None,
    *,
    label: str = "",
    expect_int8: bool | None = None,
    ranges: set[str] | None = None,
    ranges_source: str = "the range file",
    missing_scale: list[str] | None = None,
    build_precision: str | None = None,
    reformat_threshold_pct: float = REFORMAT_THRESHOLD_PCT,
) -> EngineReport:
    """Join layers and profile, summarise, and lint.

    ``expect_int8=None`` decides from the evidence: INT8 layers or Q/DQ layers in the engine,
    ``INT8`` in the build log's precision, or tensors the build log says lacked a scale.
    """
    join = join_profile(engine, profile)
    total = join.total_ms if join.has_profile else None
    rows = []
    for jl in join.rows:
        ms = jl.timing.average_ms if jl.timing is not None else None
        pct = 100.0 * ms / total if ms is not None and total else (0.0 if ms is not None else None)
        rows.append(ReportRow(layer=jl.layer, time_ms=ms, time_pct=pct))
    report = EngineReport(
        label=label or engine.source,
        engine=engine,
        rows=rows,
        unmatched=join.unmatched,
        has_profile=join.has_profile,
        total_ms=total,
        profile_iterations=profile.iterations if profile is not None else None,
    )
    if expect_int8 is None:
        expect_int8 = (
            any(r.precision == "INT8" or r.layer.is_qdq for r in rows)
            or bool(build_precision and "INT8" in build_precision.upper())
            or bool(missing_scale)
        )
    report.int8_expected = expect_int8
    if not engine.detailed:
        report.notes.append(
            "names-only layer information: precision, tactics and lints need an engine built with "
            "--profilingVerbosity=detailed (ProfilingVerbosity.DETAILED)"
        )
    if profile is None:
        report.notes.append(
            "no per-layer profile given: times are unknown (pass --profile, e.g. trtexec --exportProfile)"
        )
    elif join.matched_count == 0 and rows:
        report.notes.append(f"no profile row matched a layer name: is {profile.source} from this engine?")
    if join.unmatched:
        um = report.unmatched_summary()
        report.notes.append(
            f"{um['rows']} profile rows match no layer (Myelin sub-kernels or another build): kept as "
            f"'profile only' rows, {_ms(um['time_ms'])} ({_pct(um['time_pct'])} of the total)"
        )
    if expect_int8:
        report.lints += _int8_fallback_lints(report)
    report.lints += _reformat_lints(report, reformat_threshold_pct)
    report.lints += _unfused_qdq_lints(report)
    report.lints += _missing_range_lints(report, ranges, ranges_source, missing_scale)
    report.ranges_checked = ranges is not None or missing_scale is not None
    if not report.ranges_checked and expect_int8:
        report.notes.append("tensors without ranges: not checked (pass --ranges CACHE|JSON or --build-log LOG)")
    return report


# ----------------------------------------------------------------------------------------------
# Engine-vs-engine comparison


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
