"""The error-reducing steps of ``trtq quantize``: before any layer is kept in float, shrink the INT8 error itself.

Each step changes the model the Q/DQ export starts from (never the FP32 reference it is judged against), is
measured end to end on the judged samples like every other configuration, and is adopted only when it beats the
configuration before it beyond the noise (:func:`_adopt`). "Helps" is a measurement, not an assumption: on the
eight real models of ``docs/error-reduction.md`` no step was adopted (YOLOv8n's bias correction, the closest:
proxy drop 11.9 -> 10.5 points and SQNR 26.5 -> 29.2 dB on 64 judged images, inside the noise). What each step
bought (drop and SQNR before and after, seconds) goes to the console, the JSON and the report, adopted or not.

Steps, in order (:data:`STEPS`): ``smooth`` (:mod:`.smooth`, ``--no-smoothing``), ``ranges`` (:mod:`.output_ranges`,
only with ``--output-ranges``: its choices on 32-64 samples did not carry over to held-out data) and ``bias``
(:mod:`.bias`, ``--no-bias-correction``). Each is measured where the one before left the model: the bias shifts
at the weights and ranges the model will have.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from trtq.accuracy.bias import fit_bias_correction
from trtq.accuracy.evaluate import Comparison
from trtq.accuracy.judge import Judgement
from trtq.accuracy.output_ranges import fit_output_ranges
from trtq.accuracy.search import Verifier
from trtq.accuracy.smooth import OUTLIER_RATIO, channel_maxima, find_groups, smooth
from trtq.accuracy.uncertainty import Estimate, improves
from trtq.stats import StatsCollector

STEPS = ("smooth", "ranges", "bias")  # every step, in the order they run (each measured where the one before left)
DEFAULT_STEPS = ("smooth", "bias")  # layer-output ranges only when asked: on the real models measured it rarely helped


@dataclass(frozen=True)
class StepKind:
    """How one step is named: in tables, in the configuration it adds, and in the progress line before it runs."""

    title: str
    adjective: str
    doing: str


STEP_KINDS = {
    "smooth": StepKind("SmoothQuant", "smoothed",
                       "looking for activations with outlier channels read by quantized MatMul / Gemm layers"),
    "ranges": StepKind("layer-output ranges", "layer-output ranges",
                       "each activation's amax chosen by its consumers' output error"),
    "bias": StepKind("bias correction", "bias-corrected",
                     "measuring each INT8 layer's mean output shift per channel, then the corrected model"),
}
Feed = Mapping[str, np.ndarray]
# --eval-data with --ray: the calibration data goes to Ray in shards, none stays here to fit a step on (the evaluation
# data judges, it never fits)
NOTHING_HELD = "no calibration batch held here to fit it on (--ray shards the calibration data)"


@dataclass
class StepOutcome:
    """What one error-reducing step did: measured against the configuration before it, adopted or not."""

    name: str
    adopted: bool
    reason: str
    drop_before: Estimate | None
    drop_after: Estimate | None
    sqnr_before: float
    sqnr_after: float
    seconds: float
    detail: dict

    @property
    def title(self) -> str:
        return STEP_KINDS[self.name].title

    @property
    def adjective(self) -> str:
        return STEP_KINDS[self.name].adjective

    def describe(self) -> str:
        if self.drop_after is None and math.isnan(self.sqnr_after):
            return f"{self.title}: {self.reason}"
        before = f"{self.drop_before.points:.2f}" if self.drop_before is not None else "-"
        after = f"{self.drop_after.short()}" if self.drop_after is not None else "-"
        return (f"{self.title}: drop {before} -> {after} points, SQNR {_db(self.sqnr_before)} -> "
                f"{_db(self.sqnr_after)} dB: {'adopted' if self.adopted else 'not adopted'} ({self.reason})")

    def document(self) -> dict:
        return {"step": self.name, "adopted": self.adopted, "reason": self.reason,
                "drop_before": self.drop_before.document() if self.drop_before is not None else None,
                "drop_after": self.drop_after.document() if self.drop_after is not None else None,
                "sqnr_db_before": _finite(self.sqnr_before), "sqnr_db_after": _finite(self.sqnr_after),
                "seconds": self.seconds, **self.detail}


def _db(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else ("inf" if value > 0 else "-")


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _adopt(judgement: Judgement, key: str, reference: Judgement, reference_key: str,
           meets: Callable[[float, float | None], bool], sqnr: tuple[float, float]) -> tuple[bool, str]:
    """Whether a step's configuration replaces the one before it, and why: it must beat it beyond the noise
    (:func:`improves`), not raise the drop's point estimate (lower output noise alone does not pay for a
    changed answer), and not lose a target the one before met."""
    after, before = judgement.drop(key), reference.drop(reference_key)
    if not improves(judgement.losses[key], judgement.noise[key], reference.losses[reference_key],
                    reference.noise[reference_key], reference.unit_weights):
        return False, "not better beyond the noise"
    if after.points > before.points:
        return False, "lower output noise, but a higher drop"
    if meets(sqnr[0], before.points) and not meets(sqnr[1], after.points):
        return False, "it would lose the target"
    return True, "better beyond the noise"


def fit_sets_of(verifier: Verifier, held: Sequence[Feed] | None) -> list[list[Feed]]:
    """The calibration batches each fold's correction is fitted on: without ``--eval-data`` (``held`` None) the
    judged batches of that fold (a fold's judged model takes the *other* folds' fits); with it, the held
    calibration batches (none with ``--ray``: never the evaluation batches)."""
    if held is not None:
        return [list(held)]
    folds = verifier.plan.folds
    sets: list[list[Feed]] = [[] for _ in range(folds)]
    for feed in verifier.batches:
        sets[verifier.plan.fold_of_feed.get(id(feed), 0)].append(feed)
    return sets


def try_smoothing(verifier: Verifier, amax: dict[str, float], fold_ranges: list[dict[str, float]],
                  fit_sets: list[list[Feed]], reference: Comparison, reference_key: str, ranges_source: str,
                  meets: Callable[[float, float | None], bool],
                  derive: Callable[[StatsCollector, Sequence[str]], dict[str, float]]
                  ) -> tuple[StepOutcome, Comparison | None, tuple[list[dict[str, float]], dict[str, float]]]:
    """SmoothQuant (:mod:`.smooth`) where an activation read by quantized MatMul / Gemm layers has outlier channels:
    the smoothed tensors' ranges from a statistics pass of the smoothed model on the held calibration samples
    (``derive(stats, tensors)``: the chosen method, per fold from the other folds), measured and adopted
    (``verifier.base``) when better beyond the noise. Returns the outcome, the comparison when adopted, and the
    ranges to go on with."""
    from trtq.accuracy.crossfit import merge_all
    from trtq.calibrate import collect_statistics_groups
    from trtq.export import export_qdq

    started = time.perf_counter()
    unchanged = (fold_ranges, amax)
    base = verifier.base

    def skipped(reason: str, detail: dict | None = None) -> StepOutcome:
        before = reference.judgement.drop(reference_key) if reference.judgement is not None else None
        return StepOutcome("smooth", False, reason, before, None, reference.outcomes[reference_key].sqnr_db, math.nan,
                           time.perf_counter() - started, detail or {})

    held = [feed for batches in fit_sets for feed in batches]
    if not held:
        return skipped(NOTHING_HELD), None, unchanged
    groups = find_groups(base, export_qdq(base, amax, exclude=verifier.excluded, ranges_source=ranges_source,
                                          check=False).plan.quantized_nodes)
    if not groups:
        return skipped("no quantized MatMul / Gemm with a constant weight reads an activation"), None, unchanged
    smoothing = smooth(base, groups, channel_maxima(base, groups, held))
    if not smoothing.groups:
        largest = max(smoothing.outlier_ratios.values(), default=0.0)
        return skipped(f"no activation with outlier channels (largest channel max / median {largest:.1f} < "
                       f"{OUTLIER_RATIO:g})", smoothing.document()), None, unchanged
    new = list(smoothing.renamed.values())
    filled = [batches for batches in fit_sets if batches]  # every fold's statistics in one capture
    fold_stats = collect_statistics_groups(smoothing.model, [feed for batches in filled for feed in batches],
                                           [k for k, batches in enumerate(filled) for _feed in batches], tensors=new)
    total = merge_all(fold_stats)
    training = [merge_all([s for j, s in enumerate(fold_stats) if j != k]) if len(fold_stats) > 1 else total
                for k in range(len(fold_stats))]
    total_new = derive(total, new)
    fold_new = [derive(stats, new) for stats in training] if len(fold_stats) == len(fold_ranges) \
        else [total_new] * len(fold_ranges)
    new_folds = [{**ranges, **extra} for ranges, extra in zip(fold_ranges, fold_new, strict=True)]
    comparison = verifier.compare({"smooth": verifier.qdq_runner(new_folds, (), ranges_source, None,
                                                                 smoothing.model)})
    outcome = _outcome("smooth", comparison, reference, reference_key, meets, started, smoothing.document())
    if not outcome.adopted:
        return outcome, None, unchanged
    verifier.base = smoothing.model
    return outcome, comparison, (new_folds, {**amax, **total_new})


def try_output_ranges(verifier: Verifier, stats: StatsCollector, amax: dict[str, float],
                      fold_ranges: list[dict[str, float]], fit_sets: list[list[Feed]], reference: Comparison,
                      reference_key: str, ranges_source: str, meets: Callable[[float, float | None], bool]
                      ) -> tuple[StepOutcome, Comparison | None, tuple[list[dict[str, float]], dict[str, float]]]:
    """Choose layer-output-aware ranges, measure the all-INT8 model with them, adopt them when better beyond the noise.
    Returns the outcome, the comparison when adopted, and the (fold ranges, ranges) to go on with."""
    from trtq.calibrate import compute_ranges
    from trtq.export import export_qdq

    started = time.perf_counter()
    before = reference.judgement.drop(reference_key) if reference.judgement is not None else None
    sqnr_before = reference.outcomes[reference_key].sqnr_db
    unchanged = (fold_ranges, amax)
    if not any(fit_sets):
        return StepOutcome("ranges", False, NOTHING_HELD, before, None, sqnr_before, math.nan, 0.0, {}), None, unchanged
    chosen = fit_output_ranges(verifier.base, export_qdq(verifier.base, amax, exclude=verifier.excluded,
                                                         ranges_source=ranges_source, check=False), amax,
                               compute_ranges(stats, "minmax"), fit_sets)
    if chosen is None:
        return StepOutcome("ranges", False, "no activation read by a quantized layer with a weight", before, None,
                           sqnr_before, math.nan, time.perf_counter() - started, {}), None, unchanged
    new_folds, new_amax = chosen.apply(fold_ranges, amax)
    comparison = verifier.compare({"ranges": verifier.qdq_runner(new_folds, (), ranges_source)})
    outcome = _outcome("ranges", comparison, reference, reference_key, meets, started, chosen.document())
    return outcome, (comparison if outcome.adopted else None), ((new_folds, new_amax) if outcome.adopted
                                                              else unchanged)


def _outcome(name: str, comparison: Comparison, reference: Comparison, reference_key: str,
             meets: Callable[[float, float | None], bool], started: float, detail: dict) -> StepOutcome:
    """The outcome of step ``name`` measured as candidate ``name`` of ``comparison`` against ``reference``."""
    judgement, base = comparison.judgement, reference.judgement
    before = base.drop(reference_key) if base is not None else None
    after = judgement.drop(name) if judgement is not None else None
    sqnr_before, sqnr_after = reference.outcomes[reference_key].sqnr_db, comparison.outcomes[name].sqnr_db
    if judgement is not None and base is not None:
        adopted, reason = _adopt(judgement, name, base, reference_key, meets, (sqnr_before, sqnr_after))
    else:  # an SQNR target only: higher is better
        adopted = sqnr_after > sqnr_before
        reason = "higher SQNR" if adopted else "no higher SQNR"
    return StepOutcome(name, adopted, reason, before, after, sqnr_before, sqnr_after, time.perf_counter() - started,
                       detail)


def try_bias_correction(verifier: Verifier, fold_ranges: list[dict[str, float]], fit_sets: list[list[Feed]],
                        reference: Comparison, reference_key: str, ranges_source: str,
                        meets: Callable[[float, float | None], bool]) -> tuple[StepOutcome, Comparison | None]:
    """Fit the bias correction, measure the corrected all-INT8 model against FP32, adopt it (``verifier.correction``)
    when it beats ``reference`` (its candidate ``reference_key``, the same samples) beyond the noise. Returns the
    outcome and, when adopted, the comparison that measured it (the reference of the steps after it)."""
    started = time.perf_counter()
    before = reference.judgement.drop(reference_key) if reference.judgement is not None else None
    sqnr_before = reference.outcomes[reference_key].sqnr_db
    if not any(fit_sets):
        return StepOutcome("bias", False, NOTHING_HELD, before, None, sqnr_before, math.nan, 0.0, {}), None
    correction = fit_bias_correction(verifier.base, fold_ranges, fit_sets, ranges_source, verifier.excluded)
    if correction is None:
        return StepOutcome("bias", False, "no quantized layer with a bias to correct", before, None, sqnr_before,
                           math.nan, time.perf_counter() - started, {}), None
    comparison = verifier.compare({"bias": verifier.qdq_runner(fold_ranges, (), ranges_source, correction)})
    outcome = _outcome("bias", comparison, reference, reference_key, meets, started, correction.document())
    if outcome.adopted:
        verifier.correction = correction
    return outcome, comparison if outcome.adopted else None


@dataclass
class StepState:
    """Where the steps stand: the configuration the next step must beat (a comparison and its candidate key) and
    the ranges every later export uses; :func:`run_steps` updates it as steps are adopted."""

    reference: Comparison
    key: str
    fold_ranges: list[dict[str, float]]
    amax: dict[str, float]
    measured: list[Comparison | None] = field(default_factory=list)  # per step run: its comparison when adopted


def run_steps(verifier: Verifier, steps: Sequence[str], state: StepState, stats: StatsCollector,
              fit_sets: list[list[Feed]], ranges_source: str, meets: Callable[[float, float | None], bool],
              measure_range: Callable, say: Callable[[str], None]) -> list[StepOutcome]:
    """Run the ``steps`` in :data:`STEPS` order, each against the configuration the ones before left; returns their
    outcomes (``state`` holds what was adopted). ``measure_range``: the chosen method, for the new tensors of
    SmoothQuant."""
    def derive(statistics: StatsCollector, names: Sequence[str]) -> dict[str, float]:
        wanted = set(names)
        return {s.name: float(measure_range(s)) for s in statistics if s.name in wanted}

    outcomes = []
    for name in [s for s in STEPS if s in steps]:
        say(f"{STEP_KINDS[name].title}: {STEP_KINDS[name].doing}")
        if name == "smooth":
            outcome, measured, (state.fold_ranges, state.amax) = try_smoothing(
                verifier, state.amax, state.fold_ranges, fit_sets, state.reference, state.key, ranges_source, meets,
                derive)
        elif name == "ranges":
            outcome, measured, (state.fold_ranges, state.amax) = try_output_ranges(
                verifier, stats, state.amax, state.fold_ranges, fit_sets, state.reference, state.key, ranges_source,
                meets)
        else:
            outcome, measured = try_bias_correction(verifier, state.fold_ranges, fit_sets, state.reference, state.key,
                                                    ranges_source, meets)
        say(f"  {outcome.describe()}")
        outcomes.append(outcome)
        state.measured.append(measured)
        if measured is not None:
            state.reference, state.key = measured, name
    return outcomes
