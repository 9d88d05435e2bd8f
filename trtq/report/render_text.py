"""Terminal and Markdown renderings of a report, a comparison and benchmark results.

Plain ASCII (no box-drawing characters) so the output survives any terminal encoding and
pastes cleanly into issues; Markdown uses GitHub tables for CI job summaries.
"""

from __future__ import annotations

from collections.abc import Sequence

from trtq.report.compare import ComparePair, Comparison
from trtq.report.model import EngineReport, ReportRow
from trtq.report.precision import KERNEL_CLASS_LABELS
from trtq.report.profile import Profile
from trtq.report.timing import METRIC_LABELS, BenchStats

NAME_WIDTH = 56


def _cut(text: str | None, width: int | None) -> str:
    text = text or "-"
    if width is None or len(text) <= width:
        return text
    keep = width - 3
    return text[: keep - keep // 3] + "..." + text[len(text) - keep // 3 :]


def _num(value: float | None, fmt: str = ".4f") -> str:
    return "-" if value is None else format(value, fmt)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} %"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> list[str]:
    """Fixed-width columns; indices in ``right`` are right-aligned (numbers)."""
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(parts).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> list[str]:
    def esc(c: str) -> str:
        return c.replace("|", "\\|")

    align = ["---:" if i in right else "---" for i in range(len(header))]
    out = ["| " + " | ".join(esc(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return out


def _layer_type(row: ReportRow) -> str:
    layer = row.layer
    if layer.is_qdq:
        return f"{layer.type or '-'}/QDQ"
    return layer.type or "-"


def _ordered_rows(report: EngineReport, sort: str, top: int | None) -> list[ReportRow]:
    rows = list(report.rows)
    if sort == "time":
        rows.sort(key=lambda r: -(r.time_ms or 0.0))
    return rows[:top] if top else rows


def _layer_rows(report: EngineReport, rows: list[ReportRow], width: int | None) -> list[list[str]]:
    index = {id(r): i + 1 for i, r in enumerate(report.rows)}
    return [
        [
            str(index[id(r)]),
            _cut(r.name, width),
            _cut(_layer_type(r), 22),
            r.precision,
            KERNEL_CLASS_LABELS[r.kernel_class] if r.kernel_class != "unknown" else "-",
            _num(r.time_ms),
            _pct(r.time_pct),
        ]
        for r in rows
    ]


def _summary_rows(report: EngineReport) -> list[list[str]]:
    out = []
    for precision, s in report.precision_summary().items():
        bar = "#" * round(s["time_pct"] / 2.5) if report.has_profile else ""
        out.append(
            [
                precision,
                str(int(s["layers"])),
                _num(s["time_ms"] if report.has_profile else None),
                _pct(s["time_pct"] if report.has_profile else None),
                bar,
            ]
        )
    if report.unmatched:
        um = report.unmatched_summary()
        out.append(
            [
                "(profile only)",
                str(int(um["rows"])),
                _num(um["time_ms"]),
                _pct(um["time_pct"]),
                "#" * round(um["time_pct"] / 2.5),
            ]
        )
    return out


def render_report_text(report: EngineReport, *, sort: str = "order", top: int | None = None, wide: bool = False) -> str:
    """The terminal view of one engine: layers, precision summary, lints, notes."""
    width = None if wide else NAME_WIDTH
    lines = [f"Engine   {report.label}  ({len(report.rows)} layers, {report.engine.layout} layer information)"]
    if report.has_profile:
        matched = sum(1 for r in report.rows if r.time_ms is not None)
        lines.append(
            f"Profile  {report.profile_iterations} iteration(s); {matched} of {len(report.rows)} layers timed; "
            f"total {report.total_ms:.4f} ms per inference"
        )
    lines.append("")
    rows = _ordered_rows(report, sort, top)
    table = _layer_rows(report, rows, width)
    if sort == "order" and not top:
        table += [
            [
                "",
                _cut(f"(profile only) {u.name}", width),
                "-",
                "-",
                "-",
                _num(u.average_ms),
                _pct(report.unmatched_pct(u)),
            ]
            for u in report.unmatched
        ]
    lines += format_table(
        ["#", "Layer", "Type", "Precision", "Kernel class", "Time ms", "Share"], table, right=(0, 5, 6)
    )
    if top and top < len(report.rows):
        lines.append(f"(top {top} of {len(report.rows)} layers by {'time' if sort == 'time' else 'order'})")
    lines += ["", "Precision summary"]
    lines += format_table(["Precision", "Layers", "Time ms", "Share", ""], _summary_rows(report), right=(1, 2, 3))
    rf, qdq = report.reformat_summary(), report.qdq_summary()
    timed = report.has_profile
    lines.append(
        f"Reformat layers: {int(rf['layers'])}"
        + (f" ({rf['time_ms']:.4f} ms, {rf['time_pct']:.1f} %)" if timed else "")
        + f"   Q/DQ layers: {int(qdq['layers'])}"
        + (f" ({qdq['time_ms']:.4f} ms, {qdq['time_pct']:.1f} %)" if timed else "")
    )
    lines += ["", f"Lints ({len(report.lints)})"]
    if not report.lints:
        lines.append("  none")
    for lint in report.lints:
        lines.append(f"  [{lint.kind}] {lint.message}")
    if report.notes:
        lines += ["", "Notes"] + [f"  - {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


def _pair_cells(pair: ComparePair, width: int | None) -> list[str]:
    a, b = pair.a, pair.b
    ratio = "-"
    if a and b and a.time_ms and b.time_ms is not None:
        ratio = f"{b.time_ms / a.time_ms:.2f}x"
    return [
        _cut(a.anchor.name if a else "(none)", width),
        a.anchor.precision if a else "-",
        _num(a.time_ms if a else None),
        _cut(b.anchor.name if b else "(none)", width),
        b.anchor.precision if b else "-",
        _num(b.time_ms if b else None),
        _num(pair.delta_ms, "+.4f"),
        ratio,
    ]


def render_compare_text(cmp: Comparison, *, wide: bool = False, markdown: bool = False) -> str:
    """Layer-by-layer alignment of engine A and B, then where B gains and where it loses."""
    width = None if wide else 34
    a, b = cmp.a, cmp.b
    pairs_matched = sum(1 for p in cmp.pairs if p.a and p.b)
    head = [f"A = {a.label}", f"B = {b.label}"]
    if cmp.timed:
        ratio = b.total_ms / a.total_ms if a.total_ms else float("nan")
        head.append(f"total per inference: A {a.total_ms:.4f} ms, B {b.total_ms:.4f} ms (B/A {ratio:.2f}x)")
    head.append(
        f"{pairs_matched} aligned layers, {sum(1 for p in cmp.pairs if p.a and not p.b)} only in A, "
        f"{sum(1 for p in cmp.pairs if p.b and not p.a)} only in B (times include the reformat/Q/DQ layers "
        "feeding each layer)"
    )
    header = ["A layer", "A prec", "A ms", "B layer", "B prec", "B ms", "B-A ms", "B/A"]
    rows = [_pair_cells(p, width) for p in cmp.pairs]
    table = markdown_table if markdown else format_table
    lines = (
        (["### Comparison", ""] + [f"- {h}" for h in head] + [""])
        if markdown
        else ["Comparison"] + [f"  {h}" for h in head] + [""]
    )
    lines += table(header, rows, right=(2, 5, 6, 7))
    if cmp.timed:
        for title, items in (("B gains", cmp.gains()), ("B loses", cmp.losses())):
            lines += ["", f"Where {title} (largest first):" if not markdown else f"**Where {title}:**"]
            if not items:
                lines.append("  none" if not markdown else "- none")
            for p in items:
                name = p.b.anchor.name if p.b else p.a.anchor.name
                detail = ""
                if p.b and p.b.overhead_ms:
                    detail = f"; B spends {p.b.overhead_ms:.4f} ms of it in {len(p.b.overhead)} reformat/Q/DQ layer(s)"
                prefix = "  " if not markdown else "- "
                lines.append(
                    f"{prefix}{_cut(name, width)}: {p.delta_ms:+.4f} ms "
                    f"({p.a.anchor.precision if p.a else '-'} -> {p.b.anchor.precision if p.b else '-'}){detail}"
                )
        oa = sum(s.overhead_ms for s in (p.a for p in cmp.pairs) if s)
        ob = sum(s.overhead_ms for s in (p.b for p in cmp.pairs) if s)
        lines += ["", f"Conversion overhead (reformat + Q/DQ): A {oa:.4f} ms, B {ob:.4f} ms"]
    return "\n".join(lines) + "\n"


def render_report_markdown(report: EngineReport, *, top: int = 15) -> str:
    """A compact report for CI job summaries: summary, lints, the slowest layers, all layers folded."""
    lines = [f"## trtq report: {report.label}", ""]
    lines.append(
        f"{len(report.rows)} layers ({report.engine.layout} layer information)"
        + (f", {report.total_ms:.4f} ms per inference (sum of layer times)" if report.has_profile else "")
    )
    lines += [""] + markdown_table(
        ["Precision", "Layers", "Time ms", "Share"], [r[:4] for r in _summary_rows(report)], right=(1, 2, 3)
    )
    rf, qdq = report.reformat_summary(), report.qdq_summary()
    lines += [
        "",
        f"Reformat layers: {int(rf['layers'])} ({_num(rf['time_ms'])} ms, {_pct(rf['time_pct'])}); "
        f"Q/DQ layers: {int(qdq['layers'])} ({_num(qdq['time_ms'])} ms, {_pct(qdq['time_pct'])})",
        "",
    ]
    lines.append(f"### Lints ({len(report.lints)})")
    lines += [f"- **{lint.kind}**: {lint.message}" for lint in report.lints] or ["- none"]
    header = ["#", "Layer", "Type", "Precision", "Kernel class", "Time ms", "Share"]
    if report.has_profile:
        lines += ["", f"### Slowest {min(top, len(report.rows))} layers"]
        lines += markdown_table(header, _layer_rows(report, _ordered_rows(report, "time", top), None), right=(0, 5, 6))
    lines += ["", "<details><summary>All layers</summary>", ""]
    lines += markdown_table(header, _layer_rows(report, report.rows, None), right=(0, 5, 6))
    lines += ["", "</details>"]
    if report.notes:
        lines += [""] + [f"> {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Benchmarks

_BENCH_METRICS = ("latency", "gpu_compute", "h2d", "d2h", "enqueue", "e2e")


def bench_rows(columns: dict[str, BenchStats]) -> tuple[list[str], list[list[str]]]:
    """Rows ``metric / statistic`` x one column per source, plus a ratio column for two sources."""
    names = list(columns)
    header = ["Metric", *names] + (["ratio"] if len(names) == 2 else [])
    rows: list[list[str]] = []

    def add(label: str, values: list[float | None], fmt: str) -> None:
        cells = ["-" if v is None else format(v, fmt) for v in values]
        if len(values) == 2:
            ratio = "-" if values[0] is None or not values[1] else f"{values[0] / values[1]:.3f}"
            cells.append(ratio)
        rows.append([label, *cells])

    add("Throughput (qps)", [c.throughput_qps for c in columns.values()], ".6g")
    stats_order = ["min", "mean", "median", "p90", "p95", "p99", "max"]
    for key in _BENCH_METRICS:
        if not any(key in c.metrics for c in columns.values()):
            continue
        keys = [k for k in stats_order if any(k in c.metrics.get(key, {}) for c in columns.values())]
        extra = sorted({k for c in columns.values() for k in c.metrics.get(key, {})} - set(keys))
        for stat in keys + extra:
            add(
                f"{METRIC_LABELS.get(key, key)} {stat} (ms)",
                [c.metrics.get(key, {}).get(stat) for c in columns.values()],
                ".6g",
            )
    add("Total host walltime (s)", [c.walltime_s for c in columns.values()], ".6g")
    add("Total GPU compute (s)", [c.total_gpu_compute_s for c in columns.values()], ".6g")
    add("Queries", [float(c.queries) if c.queries is not None else None for c in columns.values()], ".0f")
    return header, rows


def render_bench_text(columns: dict[str, BenchStats], *, markdown: bool = False) -> str:
    """Side-by-side benchmark summary (``ratio`` = first column / second column)."""
    header, rows = bench_rows(columns)
    right = tuple(range(1, len(header)))
    lines = (["## trtq bench", ""] if markdown else []) + (
        markdown_table(header, rows, right) if markdown else format_table(header, rows, right)
    )
    for name, stats in columns.items():
        for w in stats.warnings:
            lines.append(f"{'- ' if markdown else ''}[{name}] warning: {w}")
        if stats.settings:
            desc = ", ".join(f"{k}={v}" for k, v in stats.settings.items())
            lines.append(f"{'- ' if markdown else ''}[{name}] {desc}")
    return "\n".join(lines) + "\n"


def render_profile_text(
    profile: Profile, *, top: int = 10, markdown: bool = False, title: str = "Slowest layers"
) -> str:
    """The slowest rows of a per-layer profile (no layer information: names and times only)."""
    total = profile.total_ms or 1.0
    rows = sorted(profile.rows, key=lambda r: -r.average_ms)[:top]
    table = [
        [
            _cut(r.name, None if markdown else NAME_WIDTH),
            _num(r.average_ms),
            _num(r.median_ms),
            _pct(100.0 * r.average_ms / total),
        ]
        for r in rows
    ]
    header = ["Layer", "Avg ms", "Median ms", "Share"]
    heading = f"{title} ({len(rows)} of {len(profile.rows)}; {profile.iterations} profiled iterations)"
    lines = [f"### {heading}" if markdown else heading]
    lines += (markdown_table if markdown else format_table)(header, table, right=(1, 2, 3))
    return "\n".join(lines) + "\n"
