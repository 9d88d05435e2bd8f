"""Small charts drawn once and written as SVG (inline in HTML, or a file) or PNG (Pillow), no matplotlib.

A :class:`Canvas` records rectangles, lines and text in pixel coordinates; ``to_svg`` and ``to_png``
render the same drawing, so the two formats cannot disagree. Four charts use it:

* :func:`histogram_chart` -- a tensor's |x| histogram (log counts) with each range method's
  threshold marked: the classic figure of entropy calibration;
* :func:`bar_chart` -- labelled horizontal bars (the sensitivity ranking);
* :func:`tradeoff_chart` -- accuracy and INT8 MAC share vs layers kept in float (trtq quantize);
* :func:`frontier_chart` -- the drop with its interval vs the share of the MACs in INT8 (trtq quantize).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

import numpy as np

from trtq.stats import TensorStats

FONT_FAMILY = "DejaVu Sans, Helvetica, Arial, sans-serif"
AXIS_COLOR = "#555555"
GRID_COLOR = "#e6e6e6"
BAR_COLOR = "#9fb3c8"

# One colour per range method, for the threshold lines and their legend.
METHOD_COLORS = {
    "entropy2": "#d62728",
    "minmax": "#1f77b4",
    "mse": "#9467bd",
    "percentile": "#2ca02c",
    "in use": "#111111",
}
ERROR_TYPE_COLORS = {"clipping": "#e07b39", "rounding": "#4a7fc1"}


@dataclass
class Canvas:
    width: int
    height: int
    items: list[tuple] = field(default_factory=list)

    def rect(self, x: float, y: float, w: float, h: float, fill: str, title: str | None = None) -> None:
        if w > 0 and h > 0:
            self.items.append(("rect", x, y, w, h, fill, title))

    def line(self, x1: float, y1: float, x2: float, y2: float, color: str = AXIS_COLOR, width: float = 1.0,
             dash: bool = False) -> None:
        self.items.append(("line", x1, y1, x2, y2, color, width, dash))

    def text(self, x: float, y: float, text: str, size: int = 11, color: str = "#222222", anchor: str = "start",
             bold: bool = False) -> None:
        """``y`` is the baseline; ``anchor`` is start, middle or end (as SVG's text-anchor)."""
        self.items.append(("text", x, y, text, size, color, anchor, bold))

    def to_svg(self) -> str:
        parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
                 f'viewBox="0 0 {self.width} {self.height}" font-family="{FONT_FAMILY}">',
                 f'<rect width="{self.width}" height="{self.height}" fill="#ffffff"/>']
        for item in self.items:
            kind = item[0]
            if kind == "rect":
                _, x, y, w, h, fill, title = item
                tip = f"<title>{escape(title)}</title>" if title else ""
                end = f">{tip}</rect>" if tip else "/>"
                parts.append(f'<rect x="{x:.2f}" y="{y:.2f}" width="{w:.2f}" height="{h:.2f}" fill="{fill}"{end}')
            elif kind == "line":
                _, x1, y1, x2, y2, color, width, dash = item
                style = ' stroke-dasharray="5 3"' if dash else ""
                parts.append(f'<line x1="{x1:.2f}" y1="{y1:.2f}" x2="{x2:.2f}" y2="{y2:.2f}" stroke="{color}" '
                             f'stroke-width="{width}"{style}/>')
            else:
                _, x, y, text, size, color, anchor, bold = item
                weight = ' font-weight="bold"' if bold else ""
                parts.append(f'<text x="{x:.2f}" y="{y:.2f}" font-size="{size}" fill="{color}" '
                             f'text-anchor="{anchor}"{weight}>{escape(text)}</text>')
        parts.append("</svg>")
        return "\n".join(parts)

    def to_png(self, scale: int = 2) -> bytes:
        from PIL import Image, ImageDraw

        image = Image.new("RGB", (self.width * scale, self.height * scale), "#ffffff")
        draw = ImageDraw.Draw(image)
        fonts: dict[tuple[int, bool], object] = {}
        for item in self.items:
            kind = item[0]
            if kind == "rect":
                _, x, y, w, h, fill, _ = item
                draw.rectangle([x * scale, y * scale, (x + w) * scale - 1, (y + h) * scale - 1], fill=fill)
            elif kind == "line":
                _, x1, y1, x2, y2, color, width, dash = item
                _png_line(draw, [c * scale for c in (x1, y1, x2, y2)], color, max(1, round(width * scale)), dash,
                          scale)
            else:
                _, x, y, text, size, color, anchor, bold = item
                key = (size * scale, bold)
                if key not in fonts:
                    fonts[key] = _font(*key)
                font = fonts[key]
                width = draw.textlength(text, font=font)
                left = x * scale - {"start": 0.0, "middle": width / 2, "end": width}[anchor]
                ascent = font.getmetrics()[0] if hasattr(font, "getmetrics") else size * scale
                draw.text((left, y * scale - ascent), text, fill=color, font=font)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
        return buffer.getvalue()


def _png_line(draw, coords: list[float], color: str, width: int, dash: bool, scale: int) -> None:
    if not dash:
        draw.line(coords, fill=color, width=width)
        return
    x1, y1, x2, y2 = coords
    length = math.hypot(x2 - x1, y2 - y1)
    on, off = 5 * scale, 3 * scale
    position = 0.0
    while position < length:
        end = min(position + on, length)
        a, b = position / length, end / length
        draw.line([x1 + a * (x2 - x1), y1 + a * (y2 - y1), x1 + b * (x2 - x1), y1 + b * (y2 - y1)],
                  fill=color, width=width)
        position += on + off


def _font(size: int, bold: bool):
    from PIL import ImageFont

    for name in (("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"), "Arial.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 ships a scalable default font
    except TypeError:
        return ImageFont.load_default()


def nice_ticks(high: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to about ``high``."""
    if high <= 0 or not math.isfinite(high):
        return [0.0]
    raw = high / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(int(high / step) + 1)]


def _format_number(value: float) -> str:
    return f"{value:.4g}"


def histogram_chart(stats: TensorStats, thresholds: Sequence[tuple[str, float, str]], *, title: str | None = None,
                    width: int = 760, height: int = 320, columns: int = 240) -> Canvas:
    """|x| histogram of a tensor (exact zeros left out, log count axis) with vertical threshold lines.

    ``thresholds`` = (label, amax, colour); the legend lists each with its value and the share of
    values it clips.
    """
    canvas = Canvas(width, height)
    left, right, top = 62, 34, 40
    legend_columns = 2
    legend_rows = math.ceil(len(thresholds) / legend_columns)
    bottom = 44 + 18 * legend_rows
    plot_w, plot_h = width - left - right, height - top - bottom
    canvas.text(left, 18, title or f"|x| of {stats.name}", size=13, bold=True)
    zeros = f", {stats.zeros} exact zeros not drawn" if stats.zeros else ""
    canvas.text(left, 33, f"{stats.count} values, absmax {_format_number(stats.absmax)}{zeros}", size=10,
                color=AXIS_COLOR)

    high = max([stats.absmax, *(v for _, v, _ in thresholds if math.isfinite(v))]) * 1.03 or 1.0
    edges = np.linspace(0.0, high, columns + 1)
    if stats.exponent is not None:
        counts, centres = stats.nonzero_histogram()
        shown, _ = np.histogram(np.minimum(centres, high * (1 - 1e-12)), bins=edges, weights=counts)
    else:
        shown = np.zeros(columns)
    peak = max(float(shown.max()), 1.0)
    decades = max(1, math.ceil(math.log10(peak + 1)))

    def y_of(count: float) -> float:
        return top + plot_h * (1 - math.log10(count + 1) / decades)

    def x_of(value: float) -> float:
        return left + plot_w * value / high

    canvas.text(left - 6, y_of(0) + 4, "0", size=10, anchor="end", color=AXIS_COLOR)
    for decade in range(1, decades + 1):
        y = y_of(10**decade)
        if y < top - 1:
            break
        canvas.line(left, y, left + plot_w, y, GRID_COLOR)
        label = f"{10**decade}" if decade < 4 else f"1e{decade}"
        canvas.text(left - 6, y + 4, label, size=10, anchor="end", color=AXIS_COLOR)
    column_w = plot_w / columns
    for i, count in enumerate(shown):
        if count > 0:
            y = y_of(count)
            canvas.rect(left + i * column_w, y, max(column_w - 0.3, 0.6), top + plot_h - y, BAR_COLOR,
                        f"{_format_number(edges[i])}-{_format_number(edges[i + 1])}: {int(count)}")
    canvas.line(left, top + plot_h, left + plot_w, top + plot_h)
    canvas.line(left, top, left, top + plot_h)
    for tick in nice_ticks(high):
        x = x_of(tick)
        canvas.line(x, top + plot_h, x, top + plot_h + 4)
        canvas.text(x, top + plot_h + 16, _format_number(tick), size=10, anchor="middle", color=AXIS_COLOR)
    canvas.text(left + plot_w + 6, top + plot_h + 4, "|x|", size=10, color=AXIS_COLOR)
    canvas.text(14, top - 6, "count", size=10, color=AXIS_COLOR)

    slot = plot_w / legend_columns
    for i, (label, value, color) in enumerate(thresholds):
        x = x_of(value)
        canvas.line(x, top, x, top + plot_h, color, width=2.0 if label == "in use" else 1.5, dash=label == "in use")
        row, col = divmod(i, legend_columns)
        lx, ly = left + col * slot, top + plot_h + 34 + 18 * row
        canvas.line(lx, ly - 4, lx + 18, ly - 4, color, width=2.0, dash=label == "in use")
        clipped = stats.fraction_above(value)
        canvas.text(lx + 24, ly, f"{label} = {_format_number(value)} (clips {100 * clipped:.3g} %)", size=10)
    return canvas


def bar_chart(rows: Sequence[tuple[str, float, str, str]], *, title: str, legend: Sequence[tuple[str, str]] = (),
              value_label: str = "", width: int = 760, bar_height: int = 16) -> Canvas:
    """Horizontal bars, top to bottom: (label, value >= 0, colour, text after the bar)."""
    label_w = min(300, 12 + 7 * max([len(r[0]) for r in rows] + [4]))
    gap, top = 6, 44
    height = top + len(rows) * (bar_height + gap) + 34
    canvas = Canvas(width, height)
    canvas.text(12, 18, title, size=13, bold=True)
    x = 12.0
    for name, color in legend:
        canvas.rect(x, 27, 12, 10, color)
        canvas.text(x + 16, 36, name, size=10)
        x += 24 + 6.5 * len(name)
    plot_w = width - label_w - 150
    peak = max([r[1] for r in rows if math.isfinite(r[1])] + [1e-12])
    for i, (label, value, color, note) in enumerate(rows):
        y = top + i * (bar_height + gap)
        shown = label if len(label) <= 40 else label[:37] + "..."
        canvas.text(label_w - 8, y + bar_height - 4, shown, size=11, anchor="end")
        length = plot_w * max(value, 0.0) / peak if math.isfinite(value) else plot_w
        canvas.rect(label_w, y, max(length, 1.0), bar_height, color, f"{label}: {note}")
        canvas.text(label_w + max(length, 1.0) + 6, y + bar_height - 4, note, size=10, color=AXIS_COLOR)
    axis_y = top + len(rows) * (bar_height + gap)
    canvas.line(label_w, top - 2, label_w, axis_y)
    if value_label:
        canvas.text(label_w, axis_y + 18, value_label, size=10, color=AXIS_COLOR)
    return canvas



def tradeoff_chart(points: Sequence[tuple[int, float, bool, float | None]], *, title: str, target: float | None = None,
                   width: int = 760, height: int = 300) -> Canvas:
    """Accuracy vs layers kept in float: ``points`` = (layers kept, SQNR dB, meets target, INT8 MAC share or
    None). SQNR on the left axis (dots green where the target is met, red where not), the share of the MACs
    still in INT8 on the right axis (dashed), ``target`` as a horizontal line."""
    left, right, top, bottom = 56, 64, 40, 42
    canvas = Canvas(width, height)
    canvas.text(12, 18, title, size=13, bold=True)
    plot_w, plot_h = width - left - right, height - top - bottom
    finite = [p[1] for p in points if math.isfinite(p[1])]
    high = max([*finite, target or 0.0, 1.0]) * 1.1
    most = max(max((p[0] for p in points), default=0), 1)

    def x(kept: int) -> float:
        return left + plot_w * kept / most

    def y(value: float) -> float:
        return top + plot_h * (1.0 - min(value, high) / high)

    for tick in nice_ticks(high):
        canvas.line(left, y(tick), left + plot_w, y(tick), GRID_COLOR)
        canvas.text(left - 6, y(tick) + 4, _format_number(tick), size=10, anchor="end", color=AXIS_COLOR)
    for share in (0.0, 0.5, 1.0):
        canvas.text(left + plot_w + 6, top + plot_h * (1.0 - share) + 4, f"{100 * share:.0f} %", size=10,
                    color=AXIS_COLOR)
    for kept in sorted({int(t) for t in nice_ticks(most) if t == int(t) and t <= most}):  # spaced, never overlapping
        canvas.text(x(kept), top + plot_h + 16, str(kept), size=10, anchor="middle", color=AXIS_COLOR)
    canvas.line(left, top, left, top + plot_h)
    canvas.line(left, top + plot_h, left + plot_w, top + plot_h)
    if target is not None:
        canvas.line(left, y(target), left + plot_w, y(target), "#2ca02c", 1.0, dash=True)
        canvas.text(left + 6, y(target) - 4, f"target {target:g} dB", size=10, color="#2ca02c")
    previous = previous_share = None
    for kept, sqnr, meets, share in points:
        value = sqnr if math.isfinite(sqnr) else high
        if previous is not None:
            canvas.line(x(previous[0]), y(previous[1]), x(kept), y(value), "#444444", 1.5)
        if share is not None:
            share_y = top + plot_h * (1.0 - share)
            if previous_share is not None:
                canvas.line(x(previous_share[0]), previous_share[1], x(kept), share_y, "#1f77b4", 1.5, dash=True)
            previous_share = (kept, share_y)
        canvas.rect(x(kept) - 4, y(value) - 4, 8, 8, "#2ca02c" if meets else "#d62728", f"{kept} kept: {value:.2f} dB")
        previous = (kept, value)
    canvas.text(left, height - 8, "layers kept in float  (solid: SQNR of the worst output, dB;  dashed, right axis: "
                "share of the MACs still in INT8)", size=10, color=AXIS_COLOR)
    return canvas


@dataclass(frozen=True)
class FrontierPoint:
    """One measured configuration on the frontier chart."""

    share: float  # of the MACs in INT8
    drop: float  # points
    low: float
    high: float
    meets: bool
    label: str


def frontier_chart(points: Sequence[FrontierPoint], *, title: str, target: float | None,
                   width: int = 760, height: int = 320) -> Canvas:
    """The task proxy's drop (points, with its 95 % interval as a bar) against the share of the MACs in INT8, for
    every configuration measured: what each step towards FP32 buys and costs. Green where the target is met, red
    where not; ``target`` as a dashed line. The best trade-offs are low and to the right."""
    left, right, top, bottom = 56, 24, 40, 46
    canvas = Canvas(width, height)
    canvas.text(12, 18, title, size=13, bold=True)
    plot_w, plot_h = width - left - right, height - top - bottom
    high = max([*(p.high for p in points), *(p.drop for p in points), target or 0.0, 0.5]) * 1.1
    shares = [p.share for p in points]
    low_share = min([*shares, 1.0])
    span_low = max(0.0, math.floor(low_share * 10) / 10 - 0.05) if shares else 0.0

    def x(share: float) -> float:
        return left + plot_w * (share - span_low) / max(1.0 - span_low, 1e-9)

    def y(value: float) -> float:
        return top + plot_h * (1.0 - max(min(value, high), 0.0) / high)

    for tick in nice_ticks(high):
        canvas.line(left, y(tick), left + plot_w, y(tick), GRID_COLOR)
        canvas.text(left - 6, y(tick) + 4, _format_number(tick), size=10, anchor="end", color=AXIS_COLOR)
    steps = 5
    for i in range(steps + 1):
        share = span_low + (1.0 - span_low) * i / steps
        canvas.text(x(share), top + plot_h + 16, f"{100 * share:.0f} %", size=10, anchor="middle", color=AXIS_COLOR)
    canvas.line(left, top, left, top + plot_h)
    canvas.line(left, top + plot_h, left + plot_w, top + plot_h)
    if target is not None:
        canvas.line(left, y(target), left + plot_w, y(target), "#2ca02c", 1.0, dash=True)
        canvas.text(left + plot_w - 4, y(target) - 4, f"target {target:g} points", size=10, color="#2ca02c",
                    anchor="end")
    for point in sorted(points, key=lambda p: p.share):
        color = "#2ca02c" if point.meets else "#d62728"
        canvas.line(x(point.share), y(point.low), x(point.share), y(point.high), color, 1.0)
        canvas.rect(x(point.share) - 4, y(point.drop) - 4, 8, 8, color,
                    f"{point.label}: drop {point.drop:.2f} points ({point.low:+.2f} to {point.high:+.2f}), "
                    f"{100 * point.share:.1f} % of the MACs in INT8")
    canvas.text(left, height - 10, "share of the MACs in INT8 (right: more INT8)   vertical: drop in points, bar: "
                "95 % interval", size=10, color=AXIS_COLOR)
    return canvas
