"""Which range method suits a model: every method's ranges from ONE set of collected statistics,
each exported as Q/DQ and measured against FP32 in the same pass over the evaluation data.

The statistics are collected once (``trtq calibrate``'s single pass); deriving ranges for another
method costs milliseconds. Evaluation runs the FP32 model once per batch and every method's INT8
model after it (:func:`trtq.export.compare.compare_runs`).

Recommendation: with labels, the highest INT8 top-1 accuracy, where accuracies within one standard
error of the best (sqrt(p(1-p)/n): sampling noise, not a real difference) count as ties broken by
the SQNR of the worst output; without labels, the highest SQNR.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from trtq.accuracy.evaluate import Comparison, Outcome, compare_candidates
from trtq.accuracy.figures import METHOD_COLORS
from trtq.accuracy.labels import Labels
from trtq.calibrate import compute_ranges
from trtq.data import BatchSource
from trtq.errors import TrtqError
from trtq.export import export_qdq
from trtq.export.compare import fake_quant_session, session_runner
from trtq.model import Model
from trtq.ranges import DEFAULT_PERCENTILE, range_function
from trtq.stats import StatsCollector, TensorStats

ACCURACY = "top-1 accuracy"
DEFAULT_CANDIDATES: tuple[tuple[str, float | None], ...] = (
    ("entropy2", None),
    ("minmax", None),
    ("percentile", 99.9),
    ("percentile", 99.99),
    ("percentile", 99.999),
    ("mse", None),
)


def candidate_label(method: str, percentile: float | None) -> str:
    return f"percentile {percentile:g}" if method == "percentile" else method


def method_thresholds(stats: TensorStats, in_use: float | None = None,
                      candidates: Sequence[tuple[str, float | None]] = DEFAULT_CANDIDATES
                      ) -> list[tuple[str, float, str]]:
    """(label, amax, colour) of each candidate method computed on ``stats``, then the range in use:
    the threshold lines of :func:`trtq.accuracy.figures.histogram_chart`."""
    shades = iter(("#2ca02c", "#17becf", "#8c564b", "#bcbd22", "#7f7f7f"))
    lines = []
    for method, percentile in candidates:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            function = range_function(method, percentile if percentile is not None else DEFAULT_PERCENTILE)
        color = next(shades, "#7f7f7f") if method == "percentile" else METHOD_COLORS.get(method, "#7f7f7f")
        lines.append((candidate_label(method, percentile), float(function(stats)), color))
    if in_use is not None:
        lines.append(("in use", float(in_use), METHOD_COLORS["in use"]))
    return lines


@dataclass
class MethodScore:
    label: str
    method: str
    percentile: float | None
    amax: dict[str, float]
    outcome: Outcome

    @property
    def top1(self) -> float | None:
        return None if self.outcome.accuracy is None else self.outcome.accuracy["top1"]


@dataclass
class MethodComparison:
    comparison: Comparison
    scores: list[MethodScore]
    criterion: str

    @property
    def samples(self) -> int:
        return self.comparison.samples

    @property
    def tie_points(self) -> float:
        """Accuracy differences up to one standard error of the best accuracy are ties (in points)."""
        if self.criterion != ACCURACY:
            return 0.0
        top = max(score.top1 for score in self.scores)
        return 100.0 * math.sqrt(top * (1.0 - top) / max(self.samples, 1))

    @property
    def best(self) -> MethodScore:
        """Highest accuracy, ties (within :attr:`tie_points`) broken by SQNR; without labels, highest SQNR."""
        contenders = self.scores
        if self.criterion == ACCURACY:
            top = max(score.top1 for score in self.scores)
            contenders = [s for s in self.scores if 100.0 * (top - s.top1) <= self.tie_points + 1e-9]
        return max(contenders, key=lambda s: (s.outcome.sqnr_db, s.outcome.top1_agreement or 0.0))

    @property
    def rule(self) -> str:
        if self.criterion == ACCURACY:
            return (f"highest top-1 accuracy; differences within one standard error ({self.tie_points:.2f} points) "
                    "are ties, broken by SQNR")
        return "highest SQNR of the worst output"

    def format_table(self) -> str:
        labelled = self.comparison.reference_accuracy is not None
        width = max(len("method"), *(len(s.label) for s in self.scores))
        head = f"{'method':<{width}}  {'SQNR dB':>8}  {'cosine':>9}  {'top-1 agree':>11}"
        if labelled:
            head += f"  {'top-1 acc':>9}  {'drop':>7}"
        lines = [head]
        best = self.best
        for score in self.scores:
            outcome = score.outcome
            sqnr = f"{outcome.sqnr_db:8.2f}" if math.isfinite(outcome.sqnr_db) else f"{'inf':>8}"
            agree = f"{100 * outcome.top1_agreement:.2f} %" if outcome.top1_agreement is not None else "-"
            line = f"{score.label:<{width}}  {sqnr}  {outcome.cosine:9.6f}  {agree:>11}"
            if labelled:
                drop = self.comparison.drop_points(score.label)
                line += f"  {100 * score.top1:7.2f} %  {drop:+7.2f}"
            lines.append(line + ("   <- best" if score is best else ""))
        if labelled:
            lines.append(f"{'FP32':<{width}}  {'':>8}  {'':>9}  {'':>11}  "
                         f"{100 * self.comparison.reference_accuracy['top1']:7.2f} %")
        return "\n".join(lines)

    def document(self) -> dict:
        rows = []
        for score in self.scores:
            outcome = score.outcome
            rows.append({
                "method": score.method,
                "percentile": score.percentile,
                "sqnr_db": outcome.sqnr_db if math.isfinite(outcome.sqnr_db) else None,
                "cosine": outcome.cosine,
                "top1_agreement": outcome.top1_agreement,
                "accuracy": outcome.accuracy,
            })
        return {"samples": self.samples, "criterion": self.rule, "best": self.best.label,
                "fp32_accuracy": self.comparison.reference_accuracy, "methods": rows}


def compare_methods(
    model: Model,
    stats: StatsCollector,
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    candidates: Sequence[tuple[str, float | None]] = DEFAULT_CANDIDATES,
    labels: Labels | None = None,
    logits: str | None = None,
    exclude: Iterable[str] = (),
) -> MethodComparison:
    """Evaluate every candidate method's Q/DQ model against FP32 on ``batches`` in one pass."""
    exclude = list(exclude)
    names = list(model.output_names)
    runners, scores = {}, []
    for method, percentile in candidates:
        label = candidate_label(method, percentile)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 'entropy' explains itself in the calibrate command
            amax = compute_ranges(stats, method, percentile if percentile is not None else DEFAULT_PERCENTILE)
        export = export_qdq(model, amax, exclude=exclude, ranges_source=f"the {label} ranges")
        runners[label] = session_runner(fake_quant_session(export.model), names)
        scores.append((label, method, percentile, amax))
    reference = session_runner(fake_quant_session(model.proto), names)
    comparison = compare_candidates(reference, runners, names, batches, labels=labels,
                                    source=batches if isinstance(batches, BatchSource) else None, logits=logits)
    results = [MethodScore(label, method, percentile, amax, comparison.outcomes[label])
               for label, method, percentile, amax in scores]
    criterion = ACCURACY if comparison.reference_accuracy is not None else "SQNR"
    return MethodComparison(comparison, results, criterion)


def compare_methods_for_calibration(model: Model, stats: StatsCollector, calibration_batches: BatchSource | None,
                                    data_options: Mapping[str, object], *, eval_data: str | None = None,
                                    eval_labels: str | None = None, warn=None) -> tuple[MethodComparison, str]:
    """``trtq calibrate --compare-methods``: evaluate on ``eval_data`` (every sample, opened with the
    calibration's other data options: preprocessing, shapes, batch size) or else on the calibration
    data itself. Returns the comparison and a description of the data it ran on."""
    from trtq.accuracy.labels import read_labels
    from trtq.data.options import open_batches_from_options

    labels = read_labels(eval_labels)
    if eval_data:
        options = {**data_options, "data": eval_data, "data_loader_script": None, "max_samples": None, "seed": None}
        batches = open_batches_from_options(model, options, warn=warn)
    elif calibration_batches is not None:
        batches = calibration_batches
    else:
        raise TrtqError("--compare-methods with --from-stats needs --eval-data PATH to evaluate on")
    return compare_methods(model, stats, batches, labels=labels), batches.description
