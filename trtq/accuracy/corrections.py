"""The error-reducing steps of ``trtq quantize``: before any layer is kept in float, shrink the INT8 error itself.

Each step changes the model the Q/DQ export starts from (never the FP32 reference it is judged against), is
measured end to end on the judged samples like every other configuration, and is adopted only when it beats the
configuration before it beyond the noise (:func:`trtq.accuracy.uncertainty.improves`): on the real models we
measured, bias correction added 4 dB of output SQNR to YOLOv8n and cost 1 dB on a text recogniser whose
all-INT8 error is already chaotic, so "helps" is a measurement, not an assumption. What each step bought (drop
and SQNR before and after, seconds) goes to the console, the JSON and the report, adopted or not.

Steps, cheapest first: ``bias`` (:mod:`.bias`). Each has a switch (``trtq quantize --no-bias-correction``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from trtq.accuracy.bias import fit_bias_correction
from trtq.accuracy.evaluate import Comparison
from trtq.accuracy.judge import Judgement
from trtq.accuracy.search import Verifier
from trtq.accuracy.uncertainty import Estimate, improves

STEPS = ("bias",)  # in the order they run
STEP_TITLES = {"bias": "bias correction"}
Feed = Mapping[str, np.ndarray]


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
        return STEP_TITLES.get(self.name, self.name)

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
    """The calibration batches each fold's correction is fitted on: without ``--eval-data`` the judged batches of
    that fold (a fold's judged model takes the *other* folds' fits); with it, the held calibration batches."""
    if held is not None:
        return [list(held)]
    folds = verifier.plan.folds
    sets: list[list[Feed]] = [[] for _ in range(folds)]
    for feed in verifier.batches:
        sets[verifier.plan.fold_of_feed.get(id(feed), 0)].append(feed)
    return sets


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
        return StepOutcome("bias", False, "no calibration batch held to fit it on", before, None, sqnr_before,
                           math.nan, 0.0, {}), None
    correction = fit_bias_correction(verifier.model, fold_ranges, fit_sets, ranges_source)
    if correction is None:
        return StepOutcome("bias", False, "no quantized layer with a bias to correct", before, None, sqnr_before,
                           math.nan, time.perf_counter() - started, {}), None
    comparison = verifier.compare({"bias": verifier.qdq_runner(fold_ranges, (), ranges_source, correction)})
    judgement = comparison.judgement
    after = judgement.drop("bias") if judgement is not None else None
    sqnr_after = comparison.outcomes["bias"].sqnr_db
    if judgement is not None and reference.judgement is not None:
        base = reference.judgement
        adopted, reason = _adopt(judgement, "bias", base, reference_key, meets, (sqnr_before, sqnr_after))
    else:  # an SQNR target only: higher is better
        adopted = sqnr_after > sqnr_before
        reason = "higher SQNR" if adopted else "no higher SQNR"
    if adopted:
        verifier.correction = correction
    outcome = StepOutcome("bias", adopted, reason, before, after, sqnr_before, sqnr_after,
                          time.perf_counter() - started, correction.document())
    return outcome, comparison if adopted else None
