"""A self-contained HTML report with inline SVG charts (no JavaScript, no network, no new dependency).

Charts: time share per precision (donut + table), per-layer latency bars coloured by precision,
and, with a second engine, a per-layer A-vs-B chart (A to the left, B to the right) with the
difference, plus stacked precision totals of both engines.
"""

from __future__ import annotations

import math
from html import escape

from trtq import __version__
from trtq.report.compare import Comparison
from trtq.report.model import EngineReport
from trtq.report.precision import KERNEL_CLASS_LABELS

# One colour per precision; the screenshot test looks for these exact values.
PRECISION_COLORS = {
    "INT8": "#2e9e44",
    "FP8": "#0f7b6c",
    "FP16": "#2f6fdb",
    "BF16": "#8a56d6",
    "TF32": "#e08a1e",
    "FP32": "#d64545",
    "INT32": "#7f7f7f",
    "UNKNOWN": "#b8b8b8",
}
PROFILE_ONLY_COLOR = "#e3c94a"
GAIN_COLOR = "#1b7f3b"
LOSS_COLOR = "#c0392b"
MAX_BAR_LAYERS = 300

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1220px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#666;font-size:13px} table{border-collapse:collapse;font-size:12px}
td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:left} th{background:#f6f6f6}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;margin-right:6px}
.flex{display:flex;gap:32px;align-items:center;flex-wrap:wrap} ul.lints li{margin:3px 0;font-size:13px}
.kind{font-family:monospace;background:#f3f3f3;padding:0 4px;border-radius:3px} svg text{font-size:11px}
.note{color:#666;font-size:12px}
"""


def _color(precision: str) -> str:
    return PRECISION_COLORS.get(precision, PRECISION_COLORS["UNKNOWN"])


def _display(label: str) -> str:
    """File labels are shown by their name; the full path stays in the page title."""
    return label.replace("\\", "/").rsplit("/", 1)[-1] or label


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def donut_svg(shares: list[tuple[str, float, str]], size: int = 220, caption: str = "") -> str:
    """Ring chart; ``shares`` = (label, value, colour). Segments are dashed circles, so 100 % works too."""
    total = sum(v for _, v, _ in shares) or 1.0
    radius, stroke = size * 0.32, size * 0.18
    circumference = 2 * math.pi * radius
    cx = cy = size / 2
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" role="img" '
        f'aria-label="{escape(caption)}">'
    ]
    offset = 0.0
    for label, value, color in shares:
        length = circumference * value / total
        if length <= 0:
            continue
        parts.append(
            f'<circle cx="{cx}" cy="{cy}" r="{radius:.2f}" fill="none" stroke="{color}" stroke-width="{stroke:.2f}" '
            f'stroke-dasharray="{length:.3f} {circumference - length:.3f}" stroke-dashoffset="{-offset:.3f}" '
            f'transform="rotate(-90 {cx} {cy})"><title>{escape(label)}: {100 * value / total:.1f} %</title></circle>'
        )
        offset += length
    if caption:
        parts.append(
            f'<text x="{cx}" y="{cy + 4}" text-anchor="middle" style="font-size:13px">{escape(caption)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def layer_bars_svg(report: EngineReport, width: int = 1180) -> tuple[str, str]:
    """Horizontal latency bar per layer (engine order), coloured by precision. Returns (svg, note)."""
    rows = [(r.name, r.time_ms or 0.0, r.precision, r.time_pct) for r in report.rows]
    rows += [(f"(profile only) {u.name}", u.average_ms, None, report.unmatched_pct(u)) for u in report.unmatched]
    note = ""
    if len(rows) > MAX_BAR_LAYERS:
        keep = sorted(range(len(rows)), key=lambda i: -rows[i][1])[:MAX_BAR_LAYERS]
        rows = [rows[i] for i in sorted(keep)]
        total = len(report.rows) + len(report.unmatched)
        note = f"showing the {MAX_BAR_LAYERS} slowest of {total} layers, in engine order"
    label_w, value_w, bar_h, gap = 360, 120, 14, 4
    plot_w = width - label_w - value_w
    peak = max((t for _, t, _, _ in rows), default=0.0) or 1.0
    height = len(rows) * (bar_h + gap) + 8
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        'aria-label="per-layer latency">'
    ]
    for i, (name, ms, precision, pct) in enumerate(rows):
        y = 4 + i * (bar_h + gap)
        color = _color(precision) if precision else PROFILE_ONLY_COLOR
        bar = max(plot_w * ms / peak, 1.0 if ms > 0 else 0.0)
        tip = f"{name} | {precision or 'profile only'} | {ms:.4f} ms" + (f" | {pct:.1f} %" if pct is not None else "")
        parts.append(
            f"<g><title>{escape(tip)}</title>"
            f'<text x="{label_w - 6}" y="{y + bar_h - 3}" text-anchor="end">{escape(_short(name, 58))}</text>'
            f'<rect x="{label_w}" y="{y}" width="{bar:.2f}" height="{bar_h}" fill="{color}"/>'
            f'<text x="{label_w + bar + 4:.2f}" y="{y + bar_h - 3}" fill="#444">{ms:.4f} ms'
            + (f" ({pct:.1f} %)" if pct is not None else "")
            + "</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts), note


def stacked_precision_svg(reports: list[EngineReport], width: int = 1180) -> str:
    """One horizontal bar per engine, split by precision, on a common ms scale."""
    label_w, bar_h, gap = 260, 26, 14
    plot_w = width - label_w - 120
    peak = max((r.total_ms or 0.0) for r in reports) or 1.0
    height = len(reports) * (bar_h + gap) + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        'aria-label="time per precision">'
    ]
    for i, report in enumerate(reports):
        y = 5 + i * (bar_h + gap)
        parts.append(
            f'<text x="{label_w - 8}" y="{y + bar_h / 2 + 4}" text-anchor="end">'
            f"{escape(_short(_display(report.label), 40))}</text>"
        )
        x = float(label_w)
        segments = [(p, s["time_ms"]) for p, s in report.precision_summary().items()]
        segments.append(("profile only", report.unmatched_summary()["time_ms"]))
        for precision, ms in segments:
            w = plot_w * ms / peak
            if w <= 0:
                continue
            color = PROFILE_ONLY_COLOR if precision == "profile only" else _color(precision)
            parts.append(
                f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{bar_h}" fill="{color}">'
                f"<title>{escape(precision)}: {ms:.4f} ms</title></rect>"
            )
            x += w
        parts.append(f'<text x="{x + 6:.2f}" y="{y + bar_h / 2 + 4}">{(report.total_ms or 0):.4f} ms</text>')
    parts.append("</svg>")
    return "".join(parts)


def compare_svg(cmp: Comparison, width: int = 1180) -> str:
    """Per aligned layer: A's time to the left of the axis, B's to the right, difference at the end."""
    label_w, delta_w, bar_h, gap = 300, 150, 13, 5
    half = (width - label_w - delta_w) / 2
    axis = label_w + half
    peak = max([p.a.time_ms or 0.0 for p in cmp.pairs if p.a] + [p.b.time_ms or 0.0 for p in cmp.pairs if p.b]) or 1.0
    height = len(cmp.pairs) * (bar_h + gap) + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        'aria-label="per-layer comparison">',
        f'<text x="{axis - 6}" y="14" text-anchor="end" style="font-weight:bold">'
        f"A: {escape(_short(_display(cmp.a.label), 50))}</text>",
        f'<text x="{axis + 6}" y="14" style="font-weight:bold">B: {escape(_short(_display(cmp.b.label), 50))}</text>',
        f'<text x="{width - delta_w + 8}" y="14" style="font-weight:bold">B - A</text>',
    ]
    for i, pair in enumerate(cmp.pairs):
        y = 24 + i * (bar_h + gap)
        name = pair.a.anchor.name if pair.a else pair.b.anchor.name
        both = " / ".join(seg.anchor.name for seg in (pair.a, pair.b) if seg)
        parts.append(
            f'<text x="{label_w - 6}" y="{y + bar_h - 2}" text-anchor="end">{escape(_short(name, 48))}'
            f"<title>{escape(both)}</title></text>"
        )
        for seg, direction in ((pair.a, -1), (pair.b, 1)):
            if seg is None or seg.time_ms is None:
                continue
            # the layer itself in its precision's colour, the conversions feeding it lighter, further out
            own = half * (seg.anchor.time_ms or 0.0) / peak
            extra = half * seg.overhead_ms / peak
            color = _color(seg.anchor.precision)
            tip = (
                f"{seg.anchor.name} | {seg.anchor.precision} | {seg.time_ms:.4f} ms, of which "
                f"{seg.overhead_ms:.4f} ms in {len(seg.overhead)} reformat/Q/DQ layer(s)"
            )
            x_own = axis - own if direction < 0 else axis
            x_extra = axis - own - extra if direction < 0 else axis + own
            parts.append(
                f"<g><title>{escape(tip)}</title>"
                f'<rect x="{x_own:.2f}" y="{y}" width="{own:.2f}" height="{bar_h}" fill="{color}"/>'
                + (
                    f'<rect x="{x_extra:.2f}" y="{y}" width="{extra:.2f}" height="{bar_h}" fill="{color}" '
                    f'fill-opacity="0.35" stroke="{color}" stroke-width="0.8"/>'
                    if extra > 0
                    else ""
                )
                + "</g>"
            )
        delta = pair.delta_ms
        if delta is not None:
            color = GAIN_COLOR if delta < 0 else LOSS_COLOR if delta > 0 else "#444"
            parts.append(f'<text x="{width - delta_w + 8}" y="{y + bar_h - 2}" fill="{color}">{delta:+.4f} ms</text>')
    parts.append(f'<line x1="{axis}" y1="20" x2="{axis}" y2="{height}" stroke="#333" stroke-width="1"/>')
    parts.append("</svg>")
    return "".join(parts)


def _precision_table(report: EngineReport) -> str:
    rows = []
    for precision, s in report.precision_summary().items():
        rows.append(
            f'<tr><td><span class="sw" style="background:{_color(precision)}"></span>{precision}</td>'
            f'<td class="n">{int(s["layers"])}</td>'
            f'<td class="n">{s["time_ms"]:.4f}</td><td class="n">{s["time_pct"]:.1f} %</td></tr>'
            if report.has_profile
            else f'<tr><td><span class="sw" style="background:{_color(precision)}"></span>{precision}</td>'
            f'<td class="n">{int(s["layers"])}</td><td class="n">-</td><td class="n">-</td></tr>'
        )
    if report.unmatched:
        um = report.unmatched_summary()
        rows.append(
            f'<tr><td><span class="sw" style="background:{PROFILE_ONLY_COLOR}"></span>profile only</td>'
            f'<td class="n">{int(um["rows"])}</td><td class="n">{um["time_ms"]:.4f}</td>'
            f'<td class="n">{um["time_pct"]:.1f} %</td></tr>'
        )
    rf, qdq = report.reformat_summary(), report.qdq_summary()
    extra = (
        f'<p class="note">Reformat layers: {int(rf["layers"])} ({rf["time_ms"]:.4f} ms, {rf["time_pct"]:.1f} %) '
        f"&middot; Q/DQ layers: {int(qdq['layers'])} ({qdq['time_ms']:.4f} ms, {qdq['time_pct']:.1f} %)</p>"
    )
    return (
        '<table><tr><th>Precision</th><th class="n">Layers</th><th class="n">Time ms</th>'
        '<th class="n">Share</th></tr>' + "".join(rows) + "</table>" + extra
    )


def _layer_table(report: EngineReport) -> str:
    out = [
        '<table><tr><th class="n">#</th><th>Layer</th><th>Type</th><th>Precision</th><th>Kernel class</th>'
        '<th>ONNX nodes</th><th class="n">Time ms</th><th class="n">Share</th></tr>'
    ]
    for i, r in enumerate(report.rows, 1):
        out.append(
            f'<tr><td class="n">{i}</td><td title="{escape(r.layer.tactic or "")}">{escape(r.name)}</td>'
            f"<td>{escape(r.layer.type or '-')}{'/QDQ' if r.layer.is_qdq else ''}</td>"
            f'<td><span class="sw" style="background:{_color(r.precision)}"></span>{r.precision}</td>'
            f"<td>{escape(KERNEL_CLASS_LABELS[r.kernel_class])}</td><td>{escape(', '.join(r.layer.onnx_nodes))}</td>"
            f'<td class="n">{"-" if r.time_ms is None else f"{r.time_ms:.4f}"}</td>'
            f'<td class="n">{"-" if r.time_pct is None else f"{r.time_pct:.1f} %"}</td></tr>'
        )
    for u in report.unmatched:
        pct = report.unmatched_pct(u)
        out.append(
            f'<tr><td></td><td>{escape(u.name)}</td><td colspan="4">profile only (no layer of this name)</td>'
            f'<td class="n">{u.average_ms:.4f}</td><td class="n">{"-" if pct is None else f"{pct:.1f} %"}</td></tr>'
        )
    out.append("</table>")
    return "".join(out)


def _engine_section(report: EngineReport, title: str) -> str:
    shares = [
        (p, s["time_ms"] if report.has_profile else s["layers"], _color(p))
        for p, s in report.precision_summary().items()
    ]
    if report.unmatched:
        shares.append(("profile only", report.unmatched_summary()["time_ms"], PROFILE_ONLY_COLOR))
    caption = "time share" if report.has_profile else "layer count"
    meta = f"{len(report.rows)} layers ({escape(report.engine.layout)} layer information)"
    if report.has_profile:
        meta += (
            f" &middot; {report.total_ms:.4f} ms per inference (sum of per-layer times, "
            f"{report.profile_iterations} profiled iteration(s))"
        )
    html = [
        f"<h2>{escape(title)}: precision</h2>",
        f'<p class="meta">{meta}</p>',
        f'<div class="flex">{donut_svg(shares, caption=caption)}{_precision_table(report)}</div>',
    ]
    lints = (
        "".join(
            f'<li><span class="kind">{escape(lint.kind)}</span> {escape(lint.message)}</li>' for lint in report.lints
        )
        or "<li>none</li>"
    )
    html.append(f'<h2>{escape(title)}: lints ({len(report.lints)})</h2><ul class="lints">{lints}</ul>')
    if report.has_profile:
        svg, note = layer_bars_svg(report)
        html.append(
            f"<h2>{escape(title)}: latency per layer</h2>"
            + (f'<p class="note">{escape(note)}</p>' if note else "")
            + svg
        )
    html.append(
        f"<details><summary>{escape(title)}: all {len(report.rows)} layers</summary>{_layer_table(report)}</details>"
    )
    if report.notes:
        html.append("".join(f'<p class="note">{escape(n)}</p>' for n in report.notes))
    return "".join(html)


def render_html(report: EngineReport, comparison: Comparison | None = None) -> str:
    """The whole report as one HTML document: the comparison first (if any), then each engine."""
    title = f"trtq report: {report.label}"
    if comparison is not None:
        title = f"trtq report: {comparison.a.label} vs {comparison.b.label}"
    legend = " ".join(
        f'<span><span class="sw" style="background:{c}"></span>{p}</span>' for p, c in PRECISION_COLORS.items()
    )
    head = [f"<h1>{escape(title)}</h1>", f'<p class="meta">precision colours: {legend} &middot; trtq {__version__}</p>']
    body = []
    if comparison is not None:
        a, b = comparison.a, comparison.b
        body.append(
            "<h2>A vs B: where B gains and where it loses</h2>"
            f'<p class="note">A = {escape(a.label)}; B = {escape(b.label)}. Each row is one compute layer aligned '
            "by type and tensor shapes; its time includes the reformat/Q/DQ layers that feed it (the lighter part "
            "of each bar).</p>"
        )
        if comparison.timed:
            body.append(stacked_precision_svg([a, b]))
            body.append(compare_svg(comparison))
        else:
            body.append('<p class="note">No per-layer profiles for both engines: only precisions are compared.</p>')
        body.append(_engine_section(a, f"A ({_display(a.label)})"))
        body.append(_engine_section(b, f"B ({_display(b.label)})"))
    else:
        body.append(_engine_section(report, _display(report.label)))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        + "".join(head)
        + "".join(body)
        + "</body></html>\n"
    )
