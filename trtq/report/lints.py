"""The lint rules of `trtq report`: performance and precision hazards found in one engine's layers.

Four rules, each a function of an :class:`~trtq.report.model.EngineReport` returning
:class:`~trtq.report.model.Lint` items with a one-line explanation and a fix: INT8-capable layers
that ran in float (``int8-fallback``), costly reformats (``reformat-cost``), Q/DQ layers TensorRT
could not fuse (``unfused-qdq``) and tensors without a range (``missing-range``).
:func:`lint_report` runs them in that order.
"""

from __future__ import annotations

import re

from trtq.report.layers import EngineLayers, Layer
from trtq.report.model import EngineReport, Lint

REFORMAT_THRESHOLD_PCT = 5.0
FLOAT_PRECISIONS = ("FP32", "TF32", "FP16", "BF16")

# An ONNX Add among the nodes a layer fused (a residual connection).
_ADD_NODE = re.compile(r"(^|[_/.])add(_|\d|$)")
# TensorRT-internal tensor names (reformat copies, Myelin temporaries): never in a range file.
_INTERNAL_TENSOR = re.compile(r"^Reformatted |_myl\d|^__myl")


def format_pct(value: float | None) -> str:
    """A share of the total as lint and note messages write it."""
    return f"{value:.1f} %" if value is not None else "n/a"


def format_ms(value: float | None) -> str:
    """A time as lint and note messages write it."""
    return f"{value:.4g} ms" if value is not None else "n/a"


def lint_report(
    report: EngineReport,
    *,
    int8_expected: bool,
    reformat_threshold_pct: float = REFORMAT_THRESHOLD_PCT,
    ranges: set[str] | None = None,
    ranges_source: str = "the range file",
    missing_scale: list[str] | None = None,
) -> list[Lint]:
    """Every rule's lints, in the order the report lists them; INT8 fallbacks only when INT8 was expected."""
    lints = _int8_fallback_lints(report) if int8_expected else []
    lints += _reformat_lints(report, reformat_threshold_pct)
    lints += _unfused_qdq_lints(report)
    lints += _missing_range_lints(report, ranges, ranges_source, missing_scale)
    return lints


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
            cost = f", {format_ms(row.time_ms)} ({format_pct(row.time_pct)})" if row.time_ms is not None else ""
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
                f"reformat '{layer.name}' costs {format_pct(row.time_pct)} ({format_ms(row.time_ms)}) "
                f"> {threshold_pct:g} %: {why}",
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
                        + (f" ({format_ms(ms)}, {format_pct(pct)})" if has_time else "")
                        + "; remove the redundant pair or quantize the layer between them"
                    ),
                )
            )
            continue
        cost = f" ({format_ms(row.time_ms)}, {format_pct(row.time_pct)})" if row.time_ms is not None else ""
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
