"""Range methods: from a tensor's statistics to its amax (the symmetric INT8 range [-amax, amax]).

Each method is a function ``(stats, **options) -> amax``. The threshold searches evaluate every
candidate at once with prefix sums (no Python loop per candidate or per bin), so a search over
the 1,921 candidates of a 2048-bin histogram costs about a millisecond.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from trtq.errors import TrtqError
from trtq.range_methods import ALIASES, TRTQ_METHODS
from trtq.stats import FINE_BINS, HIST_BINS, TensorStats

QUANT_LEVELS = 128  # int8 symmetric: 128 non-negative levels 0..127
START_BIN = 128  # the smallest candidate keeps 128 bins (as TensorRT's search)
DEFAULT_PERCENTILE = 99.99

METHODS = TRTQ_METHODS  # the methods of trtq.range_methods trtq computes, each a function below
METHOD_ALIASES = ALIASES  # the names users bring from other tools for exactly one of them (trtq.range_methods)


def minmax_amax(stats: TensorStats) -> float:
    """``max |x|``: nothing is clipped (TensorRT's MinMaxCalibrator)."""
    return stats.absmax


@functools.lru_cache(maxsize=8)
def _group_bounds(n: int, levels: int, start: int) -> np.ndarray:
    """``b[i - start, k] = ceil(k * i / levels)``: where group k of candidate i starts (read-only)."""
    cand = np.arange(start, n + 1)
    k = np.arange(levels + 1)
    bounds = -((-k[None, :] * cand[:, None]) // levels)
    bounds.flags.writeable = False
    return bounds


@functools.lru_cache(maxsize=8)
def _group_index(n: int, levels: int, start: int) -> tuple[np.ndarray, int]:
    """Each (candidate, group) as an index into a table of groups keyed by (first bin, width).

    A group's KL terms depend only on where it starts and how many bins it spans, and widths never
    exceed ``ceil(n / levels)``: ~35 k distinct groups instead of 1,921 x 128 pairs (read-only).
    """
    bounds = _group_bounds(n, levels, start)
    widths = np.diff(bounds, axis=1)
    stride = int(widths.max()) + 1
    index = bounds[:, :-1] * stride + widths
    index.flags.writeable = False
    return index, stride


def entropy_divergences(counts: np.ndarray, levels: int = QUANT_LEVELS, start: int = START_BIN) -> np.ndarray:
    """KL(P||Q) for every candidate bin count ``i`` in ``[start, len(counts)]`` (index ``i - start``).

    The algorithm of TensorRT's entropy calibration (GTC 2017, S7310, "8-bit Inference with
    TensorRT"), for candidate ``i``:

    * P = the first ``i`` bins, with the mass of all later bins (the outliers) added to bin ``i-1``;
    * Q = the first ``i`` bins *without* the outliers, merged into ``levels`` groups, each group's
      mass spread evenly over its non-empty bins (empty bins stay empty: the slide's example
      P=[1,0,2,3,5,3,1,7] in 2 levels gives Q=[2,0,2,2,4,4,4,4]);
    * both normalised; KL = sum p log(p/q). A bin where P > 0 but Q = 0 (the outliers landed on
      an empty bin) gives infinity: that candidate cannot be chosen.

    Convention: bin ``j`` belongs to group ``floor(j * levels / i)`` (groups of i/levels bins, as
    the quantizer's steps are, rather than integer-width groups with a larger last one).

    Vectorised with prefix sums: with N = total mass and C_i = mass of the first i bins,
    ``KL_i = (sum P log P - sum P log Q) / N + log(C_i / N)``, where ``sum P log P`` is a prefix sum
    of ``h log h`` plus the outlier bin, and ``sum P log Q`` is ``sum_k S_k log(S_k / c_k)`` over the
    groups (S_k = mass, c_k = non-empty bins) plus the outliers' share in the last group.
    """
    h = np.asarray(counts, dtype=np.float64)
    n = h.size
    if n < start:
        raise ValueError(f"need at least {start} bins, got {n}")
    total = h.sum()
    cand = np.arange(start, n + 1)  # number of bins kept
    if total <= 0:
        return np.zeros(cand.size)
    mass = np.concatenate(([0.0], np.cumsum(h)))  # mass[i] = sum h[:i]
    nonempty = np.concatenate(([0.0], np.cumsum(h > 0, dtype=np.float64)))
    h_log_h = np.zeros(n)
    np.log(h, out=h_log_h, where=h > 0)
    h_log_h *= h
    xlogx_prefix = np.concatenate(([0.0], np.cumsum(h_log_h)))

    last = h[cand - 1]
    kept = mass[cand]
    outliers = total - kept
    edge = last + outliers  # P's last bin
    edge_log = np.zeros(cand.size)
    np.log(edge, out=edge_log, where=edge > 0)
    sum_p_log_p = xlogx_prefix[cand - 1] + edge * edge_log

    # every possible group: first bin b (0..n), width w (0..stride-1); S = its mass, c = its non-empty bins
    index, stride = _group_index(n, levels, start)
    first = np.arange(n + 1)[:, None]
    last_bin = np.minimum(first + np.arange(stride)[None, :], n)  # groups past the end are never indexed
    group_mass = mass[last_bin] - mass[first]
    per_bin = group_mass / np.maximum(nonempty[last_bin] - nonempty[first], 1.0)
    # empty groups: log of a tiny number, multiplied by their zero mass (a masked log is 3x slower)
    log_per_bin = np.log(np.maximum(per_bin, 1e-300)).ravel()
    terms = (group_mass.ravel() * log_per_bin)[index]  # S_k log(S_k / c_k) of each candidate's groups
    sum_p_log_q = terms.sum(axis=1)
    # the outliers sit on bin i-1, which is in the last group: they meet that group's Q value
    sum_p_log_q += outliers * log_per_bin.take(index[:, -1])

    with np.errstate(divide="ignore", invalid="ignore"):
        kl = (sum_p_log_p - sum_p_log_q) / total + np.log(kept / total)
    kl[((last == 0) & (outliers > 0)) | (kept <= 0)] = np.inf
    return kl


def entropy2_amax(stats: TensorStats) -> float:
    """TensorRT's EntropyCalibrator2 search on the tensor's 2048-bin |x| histogram.

    Conventions (TensorRT's exact implementation is not public; see ``entropy_divergences``):

    * zero bin: exact zeros are removed from bin 0 before the search. They are represented
      exactly at any scale, so they say nothing about the best threshold, and after a ReLU their
      spike would otherwise dominate the first group and push the threshold down (NVIDIA's
      pytorch-quantization suppresses the same spike with ``bins[0] = bins[1]``);
    * threshold position: ``(i + 0.5) * bin_width`` for the best candidate ``i``, as NVIDIA's
      published pseudocode states, capped at the tensor's absmax (a larger range only adds
      rounding error);
    * ties: the first (smallest) minimum, the first index the pseudocode's search finds.
    """
    absmax = stats.absmax
    counts, width = stats.histogram(HIST_BINS)
    if absmax == 0.0 or width == 0.0:
        return 0.0
    counts = counts.copy()
    counts[0] = max(0.0, counts[0] - stats.zeros)
    if counts.sum() <= 0:
        return absmax
    divergence = entropy_divergences(counts)
    if not np.isfinite(divergence).any():
        return absmax
    best = START_BIN + int(np.argmin(divergence))
    return min((best + 0.5) * width, absmax)


def percentile_amax(stats: TensorStats, percentile: float = DEFAULT_PERCENTILE) -> float:
    """The ``percentile``-th percentile of |x| (zeros included), interpolated within its fine bin.

    100 gives the exact absmax.
    """
    check_percentile(percentile)
    if percentile >= 100.0 or stats.count == 0:
        return stats.absmax
    stats.require_histogram()
    if stats.exponent is None:
        return stats.absmax
    hist = stats.hist
    target = stats.count * percentile / 100.0
    cumulative = np.cumsum(hist)
    index = int(np.searchsorted(cumulative, target, side="left"))
    index = min(index, hist.size - 1)
    before = float(cumulative[index - 1]) if index > 0 else 0.0
    inside = float(hist[index])
    fraction = (target - before) / inside if inside > 0 else 1.0
    amax = (index + fraction) * stats.fine_width
    return min(amax, stats.absmax)


@functools.lru_cache(maxsize=16)
def _level_bounds(group: int) -> np.ndarray:
    """First fine bin of levels 1..127 for each candidate ``T = i * group`` fine bins (read-only).

    With step ``s = T / 127``, level k takes the fine-bin centres in ``[(k - 0.5) s, (k + 0.5) s)``;
    the level above k starts at the first bin ``j`` whose centre ``(j + 0.5)`` reaches ``(k + 0.5) s``.
    """
    cand = np.arange(START_BIN, HIST_BINS + 1, dtype=np.float64)
    k = np.arange(QUANT_LEVELS - 1, dtype=np.float64)  # 0..126: the upper boundary of levels 0..126
    step = cand * group / (QUANT_LEVELS - 1)
    bounds = np.ceil((k[None, :] + 0.5) * step[:, None] - 0.5).astype(np.int64)
    np.clip(bounds, 0, FINE_BINS, out=bounds)
    bounds.flags.writeable = False
    return bounds


def mse_amax(stats: TensorStats) -> float:
    """The threshold that minimises the total squared quantisation error of the tensor's values.

    Candidates: the 1,921 edges ``T = i * w`` (i = 128..2048) of the 2048-bin view. The error is
    exact for values at the fine-histogram bin centres: with step ``s = T / 127`` a value rounds
    to level ``k = min(round(|x| / s), 127)`` (the last level also takes the clipped values), so
    ``E(T) = sum_k sum_{x in level k} (|x| - k s)^2 = S2 - 2 s sum_k k n1_k + s^2 sum_k k^2 n0_k``
    with n0, n1 the count and sum of |x| per level. Abel summation turns both level sums into sums
    of prefix sums at the 127 level boundaries, so each candidate costs two gathers. Exact zeros
    have no error and are left out. The result is capped at the absmax.
    """
    absmax = stats.absmax
    counts, width = stats.histogram(HIST_BINS)
    if absmax == 0.0 or width == 0.0:
        return absmax
    group = int(round(width / stats.fine_width))
    h, _ = stats.nonzero_histogram()
    centres = np.arange(h.size) + 0.5  # in fine-bin units; the error scales by fine_width**2
    s0 = np.concatenate(([0.0], np.cumsum(h)))
    s1 = np.concatenate(([0.0], np.cumsum(h * centres)))
    top = QUANT_LEVELS - 1  # 127
    bounds = _level_bounds(group)
    k = np.arange(top, dtype=np.float64)
    # sum_k k n1_k = 127 * S1 - sum_{k<127} s1[u_k];  sum_k k^2 n0_k = 127^2 S0 - sum_{k<127} (2k+1) s0[u_k]
    level_sum = top * s1[-1] - s1[bounds].sum(axis=1)
    level_sq_count = top * top * s0[-1] - s0[bounds] @ (2.0 * k + 1.0)
    step = np.arange(START_BIN, HIST_BINS + 1) * group / top
    error = -2.0 * step * level_sum + step * step * level_sq_count  # + S2, the same for all
    best = START_BIN + int(np.argmin(error))
    return min(best * width, absmax)


def check_percentile(percentile: float) -> None:
    if not (0.0 < percentile <= 100.0) or math.isnan(percentile):
        raise TrtqError(f"percentile must be in (0, 100], got {percentile}")


ENTROPY_ALIAS_NOTE = (
    "TensorRT does not document how its legacy EntropyCalibrator differs from EntropyCalibrator2 (only that it "
    "calibrates after layer fusion); trtq computes the entropy2 search and labels the cache EntropyCalibration"
)


def range_function(method: str, percentile: float = DEFAULT_PERCENTILE) -> Callable[[TensorStats], float]:
    """The amax function for a method name (``entropy`` is computed as ``entropy2``: ENTROPY_ALIAS_NOTE)."""
    if method in ("entropy2", "entropy"):  # entropy: see ENTROPY_ALIAS_NOTE
        return entropy2_amax
    if method == "minmax":
        return minmax_amax
    if method == "percentile":
        check_percentile(percentile)
        return lambda stats: percentile_amax(stats, percentile)
    if method == "mse":
        return mse_amax
    raise TrtqError(f"unknown calibrator '{method}' (choose from {', '.join(METHODS)})")
