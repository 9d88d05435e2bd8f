"""Range methods against hand-computed histograms and straightforward reference implementations."""

from __future__ import annotations

import numpy as np
import pytest

from trtq.errors import TrtqError
from trtq.ranges import (
    entropy2_amax,
    entropy_divergences,
    minmax_amax,
    mse_amax,
    percentile_amax,
    range_function,
)
from trtq.stats import HIST_BINS, TensorStats


def kl(p, q) -> float:
    p = np.asarray(p, float) / np.sum(p)
    q = np.asarray(q, float) / np.sum(q)
    nz = p > 0
    return float(np.sum(p[nz] * np.log(p[nz] / q[nz])))


def reference_divergences(h, levels=128, start=128):
    """The GTC 2017 pseudocode, one candidate at a time."""
    h = np.asarray(h, float)
    out = []
    for i in range(start, h.size + 1):
        p = h[:i].copy()
        p[i - 1] += h[i:].sum()
        group = (np.arange(i) * levels) // i
        q = np.zeros(i)
        for g in range(levels):
            members = group == g
            nonempty = members & (h[:i] > 0)
            if nonempty.any():
                q[nonempty] = h[:i][members].sum() / nonempty.sum()
        if q.sum() == 0 or np.any((p > 0) & (q == 0)):
            out.append(np.inf)
        else:
            out.append(kl(p, q))
    return np.array(out)


def test_gtc_merge_example():
    # GTC 2017: P = [1,0,2,3,5,3,1,7] quantized to 2 levels gives Q = [2,0,2,2,4,4,4,4]
    p = [1, 0, 2, 3, 5, 3, 1, 7]
    divergence = entropy_divergences(p, levels=2, start=8)
    assert divergence.shape == (1,)
    assert divergence[0] == pytest.approx(kl(p, [2, 0, 2, 2, 4, 4, 4, 4]), rel=1e-12)


def test_outliers_fold_into_last_kept_bin():
    h = [1, 0, 2, 3, 5, 3, 1, 7, 4, 2]  # candidate i=8 keeps 8 bins; 6 outliers join bin 7
    divergence = entropy_divergences(h, levels=2, start=8)
    assert divergence[0] == pytest.approx(kl([1, 0, 2, 3, 5, 3, 1, 13], [2, 0, 2, 2, 4, 4, 4, 4]), rel=1e-12)


def test_outliers_on_an_empty_bin_make_the_candidate_impossible():
    divergence = entropy_divergences([1, 2, 0, 5], levels=2, start=3)
    assert divergence[0] == np.inf and np.isfinite(divergence[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_search_equals_the_pseudocode(seed):
    rng = np.random.default_rng(seed)
    h = rng.poisson(np.exp(-np.arange(400) / rng.uniform(20, 200)) * 80).astype(float)
    h[rng.random(400) < 0.15] = 0
    fast, slow = entropy_divergences(h), reference_divergences(h)
    np.testing.assert_array_equal(np.isfinite(fast), np.isfinite(slow))
    np.testing.assert_allclose(fast[np.isfinite(slow)], slow[np.isfinite(slow)], rtol=1e-9, atol=1e-12)


def stats_of(values) -> TensorStats:
    stats = TensorStats("t")
    stats.update(np.asarray(values, dtype=np.float32))
    return stats


def test_entropy2_threshold_follows_the_documented_conventions():
    rng = np.random.default_rng(5)
    values = np.concatenate([rng.laplace(size=100_000), np.zeros(50_000)])  # heavy tail + a spike of zeros
    stats = stats_of(values)
    counts, width = stats.histogram()
    counts[0] -= stats.zeros  # convention: exact zeros leave bin 0
    best = 128 + int(np.argmin(reference_divergences(counts)))  # first minimum
    assert entropy2_amax(stats) == pytest.approx(min((best + 0.5) * width, stats.absmax))
    assert entropy2_amax(stats) < 0.9 * stats.absmax  # the heavy tail is clipped


def test_entropy2_ignores_exact_zeros():
    rng = np.random.default_rng(6)
    values = np.abs(rng.standard_normal(50_000))
    with_zeros = stats_of(np.concatenate([values, np.zeros(500_000)]))
    assert entropy2_amax(with_zeros) == pytest.approx(entropy2_amax(stats_of(values)))


def test_minmax_is_absmax():
    assert minmax_amax(stats_of([-7.5, 3.0, 0.0])) == 7.5


def test_percentile_on_a_known_distribution():
    stats = stats_of(np.arange(1, 10_001, dtype=np.float32))  # |x| uniform on 1..10000
    assert percentile_amax(stats, 50.0) == pytest.approx(5000, rel=2e-3)
    assert percentile_amax(stats, 99.0) == pytest.approx(9900, rel=2e-3)
    assert percentile_amax(stats, 100.0) == 10000.0
    counted = stats_of(np.concatenate([np.zeros(9999), [5.0]]))  # zeros count as data
    assert percentile_amax(counted, 99.0) < 5.0 * 0.01


def reference_mse(stats: TensorStats) -> float:
    counts, width = stats.histogram()
    h = stats.hist.astype(float)
    h[0] -= stats.zeros
    centres = (np.arange(h.size) + 0.5) * stats.fine_width
    best = None
    for i in range(128, HIST_BINS + 1):
        step = i * width / 127
        quantized = np.minimum(np.floor(centres / step + 0.5), 127) * step
        error = np.sum(h * (centres - quantized) ** 2)
        if best is None or error < best[0]:
            best = (error, i * width)
    return min(best[1], stats.absmax)


@pytest.mark.parametrize("kind", ["normal", "laplace", "relu"])
def test_mse_equals_brute_force(kind):
    rng = np.random.default_rng(7)
    values = {"normal": rng.standard_normal(100_000), "laplace": rng.laplace(size=100_000),
              "relu": np.maximum(rng.standard_normal(100_000), 0)}[kind]
    stats = stats_of(values)
    assert mse_amax(stats) == pytest.approx(reference_mse(stats), rel=1e-12)


def test_methods_order_on_heavy_tails():
    rng = np.random.default_rng(8)
    stats = stats_of(rng.laplace(size=200_000))
    assert percentile_amax(stats, 99.99) < minmax_amax(stats)
    assert mse_amax(stats) < minmax_amax(stats)
    assert entropy2_amax(stats) < minmax_amax(stats)


def test_degenerate_tensors():
    assert entropy2_amax(stats_of(np.zeros(10))) == 0.0
    assert mse_amax(stats_of(np.zeros(10))) == 0.0
    constant = stats_of(np.full(1000, 3.0))
    for method in ("entropy2", "mse", "percentile", "minmax"):
        assert 0 < range_function(method)(constant) <= 3.0
        assert range_function(method)(constant) == pytest.approx(3.0, rel=0.01)


@pytest.mark.parametrize("bad", [0.0, -1.0, 100.5, float("nan")])
def test_percentile_must_be_in_range(bad):
    with pytest.raises(TrtqError, match="percentile"):
        range_function("percentile", bad)


def test_entropy_alias_warns():
    from trtq.calibrate import compute_ranges
    from trtq.stats import StatsCollector

    assert range_function("entropy") is entropy2_amax
    collector = StatsCollector(["t"])
    collector.update({"t": np.arange(-5, 6, dtype=np.float32)}, samples=1)
    with pytest.warns(UserWarning, match="EntropyCalibrator"):
        assert compute_ranges(collector, "entropy") == compute_ranges(collector, "entropy2")
    with pytest.raises(TrtqError, match="unknown calibrator"):
        range_function("kl")
