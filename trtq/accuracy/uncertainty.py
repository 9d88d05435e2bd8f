"""How sure a measured drop is: a 95 % interval on per-sample losses, paired comparisons of two
candidates on the same samples, and how many samples would resolve a target.

Why per sample: a drop measured on 24 samples moves by 4 points when one sample flips; a search that
accepts a step because its drop went from 3.1 to 2.8 walks through noise. Every measure of
:mod:`.judge` yields one loss per sample (the FP32 score minus the INT8 score: 0 where they agree),
so every drop has a standard error, and two candidates measured on the same samples can be compared
on their paired differences, where the noise shared by both cancels.

The interval is Agresti and Min's adjusted Wald interval for a paired difference of proportions
(Agresti & Min 2005: add half a discordant pair each way, i.e. pseudo-losses +1 and -1 of weight 1/2 and
a 0 of weight 1), applied to any losses in [-1, 1]: with no disagreement on ``n`` samples the interval
is not [0, 0] but about [0, 2/n] x 100 points — zero failures on 24 samples do not prove a drop under
1 point, and the interval says so. For 0/1 losses it is close to the Wilson interval. For continuous losses
(IoU of a map) the pseudo-losses are as large as the largest loss seen, so the interval is about the usual
t-interval there (pseudo-losses of 1 would swamp losses of a few hundredths).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # two-sided 95 %


@dataclass(frozen=True)
class Estimate:
    """A drop in points with its 95 % interval and the number of units (samples, or batches for a per-batch
    metric) it was measured on."""

    points: float
    low: float
    high: float
    samples: int
    second: float = math.nan  # the losses' mean square (per unit), to project the interval to more samples
    scale: float = 1.0  # the pseudo-losses' magnitude
    floor: float = 0.0
    ceiling: float = 1.0

    def at(self, samples: int) -> Estimate:
        """The interval the same losses would give on ``samples`` units (same mean and spread)."""
        if math.isnan(self.second):
            return self
        return _interval(self.points / 100.0, self.second, samples, self.scale, self.floor, self.ceiling, Z95)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    def describe(self) -> str:
        return f"{self.points:.2f} points (95 % interval {self.low:+.2f} to {self.high:+.2f}, {self.samples} samples)"

    def short(self) -> str:
        return f"{self.points:.2f} ± {self.half_width:.2f}"

    def document(self) -> dict:
        return {"points": self.points, "low": self.low, "high": self.high, "samples": self.samples,
                "confidence": 0.95}


def _moments(values: np.ndarray, weights: np.ndarray | None) -> tuple[float, float, float, int]:
    """(mean, mean square, pseudo-loss scale, effective units) of losses in [-1, 1]."""
    values = np.asarray(values, dtype=np.float64).ravel()
    w = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    n = float(w.sum())
    if values.size == 0 or n <= 0:
        return 0.0, 0.0, 1.0, 0
    # pseudo-observations (see _interval): as large as the largest loss seen (1 for 0/1 losses, and when nothing
    # was lost: no scale is known then)
    largest = float(np.max(np.abs(values)))
    # the effective sample count of unequal weights (per-batch scores of different batch sizes)
    effective = n * n / float(np.dot(w, w)) if weights is not None else n
    return (float(np.dot(w, values) / n), float(np.dot(w, values * values) / n), largest if largest > 0 else 1.0,
            int(round(effective)))


def _interval(mean: float, second: float, units: int, scale: float, floor: float, ceiling: float,
              z: float) -> Estimate:
    """Agresti-Min's adjusted interval: pseudo-losses +scale and -scale of weight 1/2 each and 0 of weight 1 added
    to ``units`` losses of this mean and mean square."""
    if units <= 0:
        return Estimate(0.0, 100.0 * floor, 100.0 * ceiling, 0, second, scale, floor, ceiling)
    total = units + 2.0
    adjusted = mean * units / total
    variance = max((second * units + scale * scale) / total - adjusted * adjusted, 0.0)
    se = math.sqrt(variance / total)
    return Estimate(100.0 * mean, 100.0 * max(adjusted - z * se, floor), 100.0 * min(adjusted + z * se, ceiling),
                    units, second, scale, floor, ceiling)


def estimate(losses: np.ndarray, weights: np.ndarray | None = None, z: float = Z95) -> Estimate:
    """The drop in points (100 x the mean loss) with its 95 % interval (``z``: another width, in standard errors)."""
    values = np.asarray(losses, dtype=np.float64)
    mean, second, scale, units = _moments(values, weights)
    floor = -1.0 if values.size == 0 or values.min() < 0 else 0.0  # losses that cannot be negative: no negative drop
    ceiling = 1.0 if values.size == 0 or values.max() <= 1.0 else math.inf  # fractions: at most 100 points
    return _interval(mean, second, units, scale, floor, ceiling, z)


def better_beyond_noise(candidate: np.ndarray, incumbent: np.ndarray, weights: np.ndarray | None = None) -> bool:
    """Whether ``candidate``'s losses are lower than ``incumbent``'s on the same samples beyond the noise:
    the 95 % interval of the paired improvement (incumbent - candidate) lies above 0."""
    difference = np.asarray(incumbent, dtype=np.float64) - np.asarray(candidate, dtype=np.float64)
    if difference.size == 0:
        return False
    scale = float(np.max(np.abs(difference)))
    if scale == 0:
        return False
    # in units of the largest difference, so that the interval's pseudo-losses (+-1) are on the data's own scale:
    # 0/1 losses are unchanged, a continuous measure (relative error power) is judged by its spread
    interval = estimate(difference / scale, weights)
    return interval.low > 0


def improves(losses: np.ndarray, noise: np.ndarray, reference_losses: np.ndarray, reference_noise: np.ndarray,
             weights: np.ndarray | None = None) -> bool:
    """Whether a configuration beats a reference measured on the same samples beyond the noise: a lower drop, or
    (no higher drop beyond the noise) lower per-sample output noise. Both are paired over the samples both saw
    (the first ``len(losses)``)."""
    seen = len(losses)
    reference_losses, reference_noise = reference_losses[:seen], reference_noise[:seen]
    head = None if weights is None else weights[:seen]
    return better_beyond_noise(losses, reference_losses, head) or (
        not better_beyond_noise(reference_losses, losses, head)
        and better_beyond_noise(noise, reference_noise, head))


@dataclass(frozen=True)
class Resolution:
    """Whether the data decide a target: the interval lies wholly on one side of it."""

    resolved: bool
    meets: bool  # the point estimate is within the target
    samples_needed: int | None  # about how many samples would resolve it (None: resolved, or never)

    def describe(self, target: float, estimate_: Estimate) -> str:
        side = "within" if self.meets else "beyond"
        if self.resolved:
            return f"{side} the {target:g}-point target beyond the noise"
        if self.samples_needed:
            more = f"; about {self.samples_needed} samples would resolve it"
        else:
            more = "; the drop sits so close to the target that no practical sample count would"
        return (f"{side} the {target:g}-point target at the point estimate, but its 95 % interval "
                f"({estimate_.low:+.2f} to {estimate_.high:+.2f}) covers the target: {estimate_.samples} samples "
                f"cannot decide{more}")


def resolve(estimate_: Estimate, target: float) -> Resolution:
    """Whether ``estimate_`` decides ``target`` (points), and about how many samples would: the interval the same
    losses' mean and spread give on more samples (:meth:`Estimate.at`), searched up to 1000 times as many
    (None beyond: a drop on the target itself is never decided)."""
    meets = estimate_.points <= target
    resolved = estimate_.high <= target if meets else estimate_.low > target
    if resolved or estimate_.samples == 0:
        return Resolution(resolved, meets, None)
    # the smallest sample count whose interval, with the same losses' mean and spread, would decide it
    low, high = estimate_.samples, estimate_.samples * 1000
    if not _decides(estimate_.at(high), target, meets):
        return Resolution(False, meets, None)
    while high - low > max(1, low // 100):
        middle = (low + high) // 2
        if _decides(estimate_.at(middle), target, meets):
            high = middle
        else:
            low = middle
    return Resolution(False, meets, high)


def _decides(estimate_: Estimate, target: float, meets: bool) -> bool:
    return estimate_.high <= target if meets else estimate_.low > target


def combine_worst(per_output: Sequence[np.ndarray]) -> np.ndarray:
    """One loss per sample from several outputs' losses: the worst output of each sample (a sample is fine
    only when every output judged is)."""
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in per_output])
    return stacked.max(axis=0)
