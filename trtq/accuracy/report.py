"""Figures and a self-contained HTML page (inline SVG, no script, no network) for evaluate/sensitivity.

The same :class:`~trtq.accuracy.figures.Canvas` drawings go inline into the HTML and, with
``--plot-dir``, into ``NAME.svg`` and ``NAME.png`` files.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

from trtq import __version__
from trtq.accuracy.evaluate import Evaluation, Outcome
from trtq.accuracy.figures import ERROR_TYPE_COLORS, Canvas, bar_chart, histogram_chart
from trtq.accuracy.methods import method_thresholds
from trtq.accuracy.sensitivity import SensitivityResult, quantization_error
from trtq.errors import TrtqError
from trtq.fileio import atomic_write
from trtq.stats import StatsCollector

MAX_HISTOGRAMS = 24
PLOT_FORMATS = ("svg", "png")

_STYLE = " ".join([
    "body{font:14px/1.4 system-ui,Helvetica,Arial,sans-serif;color:#222;margin:24px;max-width:1100px}",
    "h1{font-size:21px;margin:0 0 6px} h2{font-size:16px;margin:26px 0 8px;padding-bottom:3px;"
    "border-bottom:1px solid #ccc}",
    "p.meta{margin:2px 0;color:#555;font-size:13px} p.note,figcaption{color:#666;font-size:12px}",
    "table{border-collapse:collapse;font-size:12px;margin:6px 0} th{background:#f3f3f3;text-align:left}",
    "th,td{padding:3px 9px;border-bottom:1px solid #e8e8e8} .n{text-align:right;font-variant-numeric:tabular-nums}",
    "figure{margin:14px 0}",
])


@dataclass
class Figure:
    name: str  # file stem under --plot-dir
    canvas: Canvas
    caption: str = ""


def file_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "tensor"


def check_plot_dir(path: str | os.PathLike) -> Path:
    """Fail before any work when the plot folder cannot be made or written."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise TrtqError(f"--plot-dir {folder} exists and is not a folder")
    parent = folder if folder.exists() else folder.parent
    if not parent.is_dir():
        raise TrtqError(f"cannot create --plot-dir {folder}: {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise TrtqError(f"cannot write into {parent}")
    return folder


def write_figures(figures: Sequence[Figure], folder: str | os.PathLike,
                  formats: Iterable[str] = PLOT_FORMATS) -> list[Path]:
    """Write every figure as ``NAME.svg`` / ``NAME.png`` into ``folder`` (created if missing)."""
    folder = Path(folder)
    folder.mkdir(exist_ok=True)
    written = []
    for figure in figures:
        for fmt in formats:
            data = figure.canvas.to_svg() if fmt == "svg" else figure.canvas.to_png()
            written.append(atomic_write(folder / f"{figure.name}.{fmt}", data))
    return written


def _unique(names: Iterable[str]) -> list[str]:
    seen: dict[str, int] = {}
    result = []
    for name in names:
        stem = file_stem(name)
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        result.append(stem if count == 0 else f"{stem}-{count}")
    return result


def histogram_figures(stats: StatsCollector, amax: dict[str, float], tensors: Sequence[str] | None = None,
                      limit: int = MAX_HISTOGRAMS, data: str = "the evaluation data") -> list[Figure]:
    """One histogram per tensor, thresholds of every method (on these statistics) and the range in use.

    Without ``tensors``: the ``limit`` tensors with the highest expected quantization error relative
    to their signal, shown in graph order.
    """
    if tensors is None:
        candidates = [s.name for s in stats if s.count and s.name in amax]
        if len(candidates) > limit:
            def relative_error(name: str) -> float:
                s = stats[name]
                error = quantization_error(s, amax[name])
                counts, centres = s.nonzero_histogram()
                power = float((counts * centres**2).sum()) or 1.0
                return (error.clipping + error.rounding) / power

            keep = set(sorted(candidates, key=relative_error, reverse=True)[:limit])
            candidates = [n for n in candidates if n in keep]
        tensors = candidates
    else:
        missing = [t for t in tensors if t not in stats.tensors]
        if missing:
            known = ", ".join(list(stats.tensors)[:8])
            raise TrtqError(f"--plot-tensor '{missing[0]}' is not a quantized activation of the model "
                            f"(e.g. {known})")
    figures = []
    for name, stem in zip(tensors, _unique(tensors), strict=True):
        s = stats[name]
        canvas = histogram_chart(s, method_thresholds(s, amax.get(name)), title=f"|x| of {name}")
        figures.append(Figure(f"hist-{stem}", canvas, f"|x| histogram of {name} on {data} ({stats.samples} samples)"))
    return figures


def with_samples(data: str, samples: int) -> str:
    """A data description with the samples used, unless it already starts with that count ("300 images from ...")."""
    return data if data.split(" ", 1)[0] == str(samples) else f"{data} ({samples} samples)"


def describe_keep_target(target: dict) -> str:
    """The sensitivity keep-set target as a user reads it (``SQNR >= 30 dB and top-1 agreement drop <= 0.5
    points``), not its JSON keys."""
    parts = []
    if target.get("sqnr_db") is not None:
        parts.append(f"SQNR >= {target['sqnr_db']:g} dB")
    if target.get("max_drop_points") is not None:
        parts.append(f"{target.get('drop_measure') or 'top-1'} drop <= {target['max_drop_points']:g} points")
    return " and ".join(parts) or "none"


def ranking_figure(result: SensitivityResult, limit: int = 40) -> Figure:
    rows = []
    for entry in result.ranking[:limit]:
        note = f"{100 * entry.score:.1f} %  ({entry.error_type})"
        rows.append((entry.layer.node, max(entry.score, 0.0), ERROR_TYPE_COLORS[entry.error_type], note))
    what = "each layer alone in INT8" if result.mode == "alone" else "each layer alone kept in float"
    canvas = bar_chart(rows, title=f"INT8 sensitivity ({what}, {result.samples} samples)",
                       legend=[(f"{k} dominates", c) for k, c in ERROR_TYPE_COLORS.items()],
                       value_label="share of the output error")
    return Figure("ranking", canvas, "layers ranked by their share of the INT8 output error")


# -- HTML -------------------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: Iterable[int] = ()) -> str:
    numeric = set(numeric)
    head = "".join(f'<th class="n">{escape(h)}</th>' if i in numeric else f"<th>{escape(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = "".join(f'<td class="n">{escape(str(v))}</td>' if i in numeric else f"<td>{escape(str(v))}</td>"
                        for i, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _figure_html(figure: Figure) -> str:
    caption = f"<figcaption>{escape(figure.caption)}</figcaption>" if figure.caption else ""
    return f"<figure>{figure.canvas.to_svg()}{caption}</figure>"


def _page(title: str, meta: Sequence[str], sections: Sequence[tuple[str, str]]) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{escape(title)}</h1>"]
    parts += [f'<p class="meta">{escape(line)}</p>' for line in meta]
    parts += [f"<h2>{escape(heading)}</h2>{body}" for heading, body in sections]
    parts.append(f'<p class="note">trtq {escape(__version__)}</p></body></html>')
    return "\n".join(parts)


def _db(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "inf"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _outcome_table(outcome: Outcome) -> str:
    rows = [(r.name, r.samples, f"{r.cosine:.6f}", f"{r.min_sample_cosine:.6f}", _db(r.sqnr_db),
             f"{r.max_abs_error:.4g}", f"{r.mean_abs_error:.4g}", _pct(r.top1_agreement)) for r in outcome.rows]
    return _table(["output", "samples", "cosine", "min sample cosine", "SQNR dB", "max |err|", "mean |err|",
                   "top-1 agreement"], rows, numeric=range(1, 8))


def evaluation_html(evaluation: Evaluation, *, model: str, data: str, ranges: str,
                    figures: Sequence[Figure]) -> str:
    comparison = evaluation.comparison
    sections = [("FP32 vs simulated INT8", _outcome_table(evaluation.outcome))]
    if comparison.reference_accuracy is not None:
        ref, int8 = comparison.reference_accuracy, evaluation.outcome.accuracy
        rows = [("FP32", _pct(ref["top1"]), _pct(ref["top5"]), ""),
                ("INT8 (simulated)", _pct(int8["top1"]), _pct(int8["top5"]),
                 f"{comparison.drop_points('int8'):+.2f}")]
        sections.append((f"Accuracy (output {comparison.logits})",
                         _table(["model", "top-1", "top-5", "top-1 drop (points)"], rows, numeric=(1, 2, 3))))
    if figures:
        note = ('<p class="note">Bars: |x| of the tensor on the evaluation data (log scale). Lines: the range each '
                'method would choose on these statistics; dashed black: the range being evaluated.</p>')
        sections.append(("Activation histograms", note + "".join(_figure_html(f) for f in figures)))
    quantized = ", ".join(evaluation.export.plan.quantized_nodes)
    meta = [f"model: {model}", f"ranges: {ranges}", f"data: {with_samples(data, evaluation.samples)}",
            f"INT8 layers ({len(evaluation.export.plan.quantized_nodes)}): {quantized}"]
    return _page("trtq evaluate: simulated INT8 vs FP32", meta, sections)


def sensitivity_html(result: SensitivityResult, *, model: str, data: str, ranges: str,
                     figures: Sequence[Figure]) -> str:
    ranking_rows = []
    for rank, entry in enumerate(result.ranking, start=1):
        ranking_rows.append((rank, entry.layer.node, entry.layer.op_type, ", ".join(entry.layer.tensors),
                             f"{100 * entry.score:.1f} %", _db(entry.sqnr_db), _pct(entry.top1_agreement),
                             entry.error_type, f"{100 * entry.error.clipped_fraction:.3f} %"))
    config = "SQNR, only it INT8" if result.mode == "alone" else "SQNR, all but it INT8"
    table = _table(["#", "layer", "op", "INT8 inputs", "score", config, "top-1 agreement", "error type",
                    "clipped"], ranking_rows, numeric=(0, 4, 5, 6, 8))
    chart = [f for f in figures if f.name == "ranking"]
    sections = [("Ranking", "".join(_figure_html(f) for f in chart) + table)]
    if result.keep is not None:
        step_rows = []
        for step in result.steps:
            step_rows.append((", ".join(step.kept) or "(none: all INT8)", _db(step.sqnr_db),
                              _pct(step.top1_agreement), "-" if step.drop_points is None else f"{step.drop_points:.2f}",
                              "yes" if step.meets_target else "no", "yes" if step.accepted else "no"))
        target = describe_keep_target(result.target)
        body = (f'<p class="meta">target: {escape(target)}; keep in higher precision: '
                f"<b>{escape(', '.join(result.keep) or 'nothing')}</b></p>"
                + _table(["kept in float", "SQNR dB", "top-1 agreement", "drop (points)", "meets target", "kept"],
                         step_rows, numeric=(1, 2, 3)))
        sections.append(("Layers to keep in higher precision (verified)", body))
    histograms = [f for f in figures if f.name != "ranking"]
    if histograms:
        sections.append(("INT8 inputs of the top layers", "".join(_figure_html(f) for f in histograms)))
    meta = [f"model: {model}", f"ranges: {ranges}", f"data: {with_samples(data, result.samples)}",
            f"mode: {result.mode}"]
    return _page("trtq sensitivity: which layers INT8 hurts", meta, sections)
