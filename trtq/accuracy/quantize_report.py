"""The HTML report of ``trtq quantize``: the pictures a user needs to trust the INT8 model.

* accuracy vs the number of layers kept in float, with the share of the MACs still in INT8 (what
  each kept layer costs in speed);
* what each error-reducing step (bias correction, layer-output ranges) bought, adopted or not;
* the range-method candidates ``auto`` measured, and the tensors whose guards changed a range;
* the sensitivity ranking (when the search ran);
* the |x| histogram with every method's threshold for the tensors whose choice mattered most
  (where the candidates' ranges disagree most, and the inputs of the kept layers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from trtq.accuracy.auto import tied_within_noise
from trtq.accuracy.figures import FrontierPoint, frontier_chart, tradeoff_chart
from trtq.accuracy.quantize_result import QuantizeResult
from trtq.accuracy.report import (
    Figure,
    _db,
    _figure_html,
    _page,
    _table,
    histogram_figures,
    ranking_figure,
    with_samples,
)
from trtq.ranges import range_function

MAX_HISTOGRAMS = 8


def _steps_figure(result: QuantizeResult, mac_shares: Sequence[float | None]) -> Figure:
    frontier = [FrontierPoint(share, step.drop.points, step.drop.low, step.drop.high, step.meets_target, step.step)
                for step, share in zip(result.steps, mac_shares, strict=True)
                if step.drop is not None and share is not None]
    if frontier and result.target.max_drop is not None:
        canvas = frontier_chart(frontier, title="drop (points) vs share of the MACs in INT8, every configuration "
                                "measured", target=result.target.max_drop)
        return Figure("steps", canvas, f"drop on the {result.target.drop_measure}; each point is a configuration the "
                      f"loop measured, its bar the 95 % interval on {result.eval_samples} samples; low and to the "
                      "right is better, green meets the target")
    points = [(len(step.kept), step.sqnr_db, step.meets_target, share)
              for step, share in zip(result.steps, mac_shares, strict=True)]
    canvas = tradeoff_chart(points, title="worst-output SQNR (dB) vs layers kept in float (every verified "
                            "configuration)",
                            target=result.target.min_sqnr)
    return Figure("steps", canvas, "each point is a configuration the loop measured; the last one is the model written")


INLINE_NAMES = 8  # layer names listed in the page's header; more go to their own section at the end


def _names(names: Sequence[str], of: int | None = None) -> str:
    """A list of layer names for the page's header: all of a few, else how many and the first ones."""
    if not names:
        return "nothing"
    if len(names) <= INLINE_NAMES:
        return ", ".join(names)
    total = f" of {of}" if of else ""
    return f"{len(names)}{total} layers ({', '.join(names[:3])}, ...: all in the last section and the keep list)"


def _measure_lines(result: QuantizeResult) -> list[str]:
    """What each output was judged by, and why."""
    if result.measure is None:
        return []
    if result.measure.kind != "proxies":
        return [f"measure: {result.measure.describe()}"]
    return [f"output '{name}': {proxy.name}, {proxy.describe()}" for name, proxy in result.measure.proxies.items()]


def _corrections_table(result: QuantizeResult) -> str:
    """One row per step tried (:mod:`.corrections`): the drop and SQNR of all-INT8 before and after, adopted or not."""
    def drop(estimate) -> str:
        return "-" if estimate is None else f"{estimate.points:.2f} ({estimate.low:+.2f} to {estimate.high:+.2f})"

    def db(value: float) -> str:
        return "-" if math.isnan(value) else _db(value)

    rows = [(c.title, drop(c.drop_before), drop(c.drop_after), db(c.sqnr_before), db(c.sqnr_after),
             "adopted" if c.adopted else "not tried" if math.isnan(c.sqnr_after) else "not adopted", c.reason,
             f"{c.seconds:.1f}") for c in result.corrections]
    return _table(["step", "drop before, points (95 % interval)", "drop after", "SQNR dB before", "SQNR dB after",
                   "", "why", "seconds"], rows, numeric=(1, 2, 3, 4, 7))


def mattering_tensors(result: QuantizeResult, limit: int = MAX_HISTOGRAMS) -> list[str]:
    """Tensors whose range choice mattered most: the kept layers' inputs first, then those where
    the candidate methods' ranges disagree most (max/min amax ratio)."""
    chosen: list[str] = []
    if result.sensitivity is not None:
        kept = set(result.keep)
        for entry in result.sensitivity.ranking:
            if entry.layer.node in kept:
                chosen.extend(t for t in entry.layer.tensors if t not in chosen)
    if result.auto is not None and result.auto.candidate_ranges:  # the ranges auto measured: no new searches
        candidates = list(result.auto.candidate_ranges.values())
    else:
        candidates = [{s.name: float(range_function(m, p or 99.99)(s)) for s in result.stats if s.count}
                      for m, p in (("entropy2", None), ("mse", None), ("percentile", 99.99), ("minmax", None))]
    spread = []
    for s in result.stats:
        if not s.count or s.absmax == 0 or s.name not in result.amax:
            continue
        values = [ranges[s.name] for ranges in candidates if s.name in ranges]
        if not values:
            continue
        low = min(values)
        spread.append(((max(values) / low) if low > 0 else math.inf, s.name))
    spread.sort(reverse=True)
    chosen.extend(name for _, name in spread if name not in chosen)
    return chosen[:limit]


def quantize_figures(result: QuantizeResult, mac_shares: Sequence[float | None]) -> list[Figure]:
    figures = [_steps_figure(result, mac_shares)]
    if result.sensitivity is not None:
        figures.append(ranking_figure(result.sensitivity))
    # the statistics the ranges were computed from: the calibration data, not the judged samples
    figures.extend(histogram_figures(result.stats, result.amax, mattering_tensors(result),
                                     data="the calibration data"))
    return figures


def quantize_html(result: QuantizeResult, figures: Sequence[Figure], *, model: str, data: str,
                  mac_shares: Sequence[float | None]) -> str:
    verdict = ("INT8 model written" if result.ok else f"no INT8 model written: {result.failure}")
    if result.ok and result.undecided:
        verdict += (" — undecided: it misses the target at the point estimate, only inside the noise (no "
                    "configuration measured met it)")
    step_rows = [(s.step, len(s.kept), _db(s.sqnr_db), "-" if s.drop is None else
                  f"{s.drop.points:.2f} ({s.drop.low:+.2f} to {s.drop.high:+.2f})",
                  "-" if share is None else f"{100 * share:.1f} %", "yes" if s.meets_target else "no",
                  f"{s.seconds:.2f}") for s, share in zip(result.steps, mac_shares, strict=True)]
    steps = [f for f in figures if f.name == "steps"]
    sections = [("Verified configurations",
                 "".join(_figure_html(f) for f in steps)
                 + _table(["configuration", "kept", "SQNR dB", "drop, points (95 % interval)", "INT8 MAC share",
                           "meets target",
                           "seconds"], step_rows, numeric=(1, 2, 3, 4, 6)))]
    if result.corrections:
        sections.append(("Error-reducing steps", _corrections_table(result)))
    if result.auto is not None:
        tied = set(tied_within_noise(result.auto))
        rows = [(c.label, _db(c.sqnr_db), "-" if c.drop is None else
                 f"{c.drop.points:.2f} ({c.drop.low:+.2f} to {c.drop.high:+.2f})", c.guarded,
                 "yes" if c.meets_target else "no", "chosen" if c.label == result.auto.label else
                 "tied within the noise" if c.label in tied else "")
                for c in result.auto.candidates]
        body = _table(["method (guarded)", "SQNR dB", "drop, points (95 % interval)", "tensors guarded",
                       "meets target", ""],
                      rows, numeric=(1, 2, 3))
        degenerate = result.auto.degenerate()
        if degenerate:
            body += _table(["tensor", "why its range is not searched"],
                           [(d.name, d.describe()) for d in degenerate[:60]])
        sections.append(("Range method (auto)", body))
    if result.sensitivity is not None:
        sections.append(("Sensitivity ranking", "".join(_figure_html(f) for f in figures if f.name == "ranking")))
    histograms = [f for f in figures if f.name.startswith("hist-")]
    if histograms:
        sections.append(("Tensors whose range mattered most", "".join(_figure_html(f) for f in histograms)))
    meta = [f"model: {model}", f"calibration: {with_samples(data, result.stats.samples)}",
            f"judged on: {result.eval_description}", f"target: {result.target.describe()}",
            *_measure_lines(result),
            f"ranges: {result.method}" + (" (chosen by auto)" if result.auto is not None else ""),
            f"kept in float: {_names(result.keep, result.layers)}", verdict]
    if result.excluded:
        meta.insert(-1, f"kept in float as asked (--exclude): {_names(result.excluded)}")
    if len(result.keep) + len(result.excluded) > INLINE_NAMES:
        rows = [*((name, "asked (--exclude)") for name in result.excluded),
                *((name, "the search") for name in result.keep)]
        sections.append(("Layers kept in float", _table(["layer", "kept by"], rows)))
    scores = result.describe_scores()
    if scores is not None:
        meta.insert(-1, scores)
    if result.float_model is not None:
        meta.insert(-1, "float model changed (smoothed or bias-corrected): TensorRT 10 builds the .float.onnx "
                        "beside the Q/DQ model, with the cache; TensorRT 11 the Q/DQ model")
    resolution = result.resolution()
    if resolution is not None:
        meta.append(f"uncertainty: {resolution.describe(result.target.max_drop, result.steps[-1].drop)}")
    if not result.ok and result.steps:
        best = result.best_step
        share = result.mac_share(best.kept)
        meta.append(f"best measured: {best.step}, drop {best.drop_points:.2f} points"
                    + (f", {100 * share:.1f} % of the MACs in INT8" if share is not None else "")
                    if best.drop is not None else f"best measured: {best.step}")
    meta.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
                + f" ({result.passes} evaluation passes)")
    title = "trtq quantize: a verified INT8 model" if result.ok else "trtq quantize: no INT8 model (target missed)"
    return _page(title, meta, sections)

