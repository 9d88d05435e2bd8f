"""Statistics collection: exact counts, power-of-two histogram growth, order/batch invariance, save/load."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trtq.errors import TrtqError
from trtq.histogram import HIST_CHUNK
from trtq.stats import FINE_BINS, HIST_BINS, StatsCollector, TensorStats


def collect(chunks) -> TensorStats:
    stats = TensorStats("t")
    for chunk in chunks:
        stats.update(np.asarray(chunk, dtype=np.float32))
    return stats


def test_min_max_absmax_count_zeros():
    # -0.0 is a zero; a value smaller than one fine bin lands in bin 0 but is not one
    stats = collect([[0.0, -3.0, 2.0], [-0.0, 0.5, 1e-30]])
    assert (stats.min, stats.max, stats.absmax) == (-3.0, 2.0, 3.0)
    assert stats.count == 6 and stats.zeros == 2
    assert stats.hist.sum() == 6 and stats.hist[0] == 3


def test_histogram_bins_are_exact_on_a_power_of_two_grid():
    # absmax 3 -> range [0, 4); fine bin width 4 / 16384; 1.0 lands exactly at bin 4096
    stats = collect([[1.0, 3.0, 2.5]])
    assert stats.exponent == 2
    assert stats.fine_width == 4 / FINE_BINS
    assert stats.hist[4096] == 1 and stats.hist[int(3.0 * FINE_BINS / 4)] == 1


def test_growth_merges_bins_exactly():
    rng = np.random.default_rng(0)
    small = rng.uniform(-1, 1, 10_000)
    large = rng.uniform(-100, 100, 10_000)
    grown = collect([small, large])
    direct = collect([np.concatenate([small, large])])
    assert grown.exponent == direct.exponent
    np.testing.assert_array_equal(grown.hist, direct.hist)


def test_histogram_is_independent_of_batch_order_and_size():
    rng = np.random.default_rng(1)
    values = (rng.standard_normal(200_000) * np.exp(rng.uniform(-3, 3, 200_000))).astype(np.float32)
    reference = collect([values])
    for sizes in ([7, 1000, 50_000], [199_999, 1], [1, 2, 3, 5, 8, 13, 21]):
        cuts = np.cumsum(sizes)
        chunks = np.split(values, cuts[cuts < values.size])
        for order in (chunks, chunks[::-1]):
            stats = collect(order)
            assert stats.exponent == reference.exponent
            np.testing.assert_array_equal(stats.hist, reference.hist)
            assert stats.absmax == reference.absmax


def test_a_tensor_larger_than_one_binning_chunk_counts_every_value_once():
    rng = np.random.default_rng(2)
    values = np.maximum(rng.standard_normal(3 * HIST_CHUNK + 5), 0).astype(np.float32)  # ReLU: exact zeros
    whole = collect([values])
    pieces = collect(np.array_split(values, 97))  # every piece well below one chunk
    np.testing.assert_array_equal(whole.hist, pieces.hist)
    assert whole.count == values.size == whole.hist.sum()
    assert whole.zeros == pieces.zeros == np.count_nonzero(values == 0)


def test_coarse_view_has_2048_bins_covering_at_most_125_percent_of_absmax():
    for absmax in (1.0, 1.0001, 1.5, 1.9999, 3.3e-5, 7.1e4):
        stats = collect([[0.1 * absmax, absmax]])
        counts, width = stats.histogram()
        assert counts.size == HIST_BINS and counts.sum() == 2
        assert absmax <= HIST_BINS * width <= 1.25 * absmax + 1e-12
        assert counts[-1] >= 0 and counts[int(absmax / width) if absmax / width < HIST_BINS else -1] == 1


def test_nonfinite_values_are_counted_apart():
    stats = collect([[1.0, np.nan, -np.inf, 2.0, np.inf]])
    assert stats.nonfinite == 3 and stats.count == 2 and stats.absmax == 2.0
    assert np.isfinite(stats.hist).all()


def test_all_zero_tensor():
    stats = collect([np.zeros(100)])
    counts, width = stats.histogram()
    assert stats.absmax == 0.0 and width == 0.0 and counts[0] == 100 and stats.zeros == 100


def test_float16_and_float64_inputs():
    stats = collect([np.array([0.5, -1.5], dtype=np.float16)])
    assert stats.absmax == 1.5
    stats = collect([np.array([1e-45, 3.0], dtype=np.float64)])
    assert stats.count == 2


def test_extreme_magnitudes_do_not_overflow():
    tiny = collect([[1e-38, -3e-39]])
    assert tiny.absmax == pytest.approx(1e-38) and tiny.hist.sum() == 2
    huge = collect([[3e38, 1.0]])
    assert huge.absmax == pytest.approx(3e38) and huge.hist.sum() == 2


def test_fraction_above():
    stats = collect([np.arange(1, 101, dtype=np.float32)])
    assert stats.fraction_above(50.0) == pytest.approx(0.5, abs=0.011)
    assert stats.fraction_above(100.0) == 0.0


def test_save_load_round_trip(tmp_path):
    collector = StatsCollector(["a", "b", "zero"], meta={"model": "m.onnx"})
    rng = np.random.default_rng(3)
    collector.update({"a": rng.normal(size=(4, 8)), "b": rng.uniform(size=10), "zero": np.zeros(3)}, samples=4)
    path = collector.save(tmp_path / "stats.npz")
    loaded = StatsCollector.load(path)
    assert loaded.samples == 4 and loaded.batches == 1 and loaded.meta["model"] == "m.onnx"
    for name in ("a", "b", "zero"):
        original, back = collector[name], loaded[name]
        np.testing.assert_array_equal(original.hist, back.hist)
        assert (original.count, original.zeros, original.exponent) == (back.count, back.zeros, back.exponent)
        assert original.min == back.min or (math.isinf(original.min) and math.isinf(back.min))


def test_load_rejects_other_files(tmp_path):
    bad = tmp_path / "x.npz"
    np.savez(bad, a=np.arange(3))
    with pytest.raises(TrtqError, match="not a trtq statistics file"):
        StatsCollector.load(bad)
    with pytest.raises(TrtqError, match="not found"):
        StatsCollector.load(tmp_path / "missing.npz")


def test_merged_statistics_equal_one_pass_over_both(mnist_digits):
    """Statistics of two parts of the data merge into exactly those of one pass (auto calibrates on the
    held-out batches after choosing, and merges them in)."""
    from trtq.stats import TensorStats

    images = mnist_digits[0]
    parts = [images[:7] * 0.01, images[7:40], np.zeros((3, 1, 28, 28), np.float32), images[40:90] * 3.0]
    for order in (parts, parts[::-1], parts[2:] + parts[:2]):
        whole = TensorStats("x")
        for part in order:
            whole.update(part)
        pieces = []
        for part in order:
            piece = TensorStats("x")
            piece.update(part)
            pieces.append(piece)
        merged = pieces[0]
        for piece in pieces[1:]:
            merged.merge(piece)
        assert merged.exponent == whole.exponent and np.array_equal(merged.hist, whole.hist)
        assert (merged.count, merged.zeros, merged.min, merged.max) == (whole.count, whole.zeros, whole.min, whole.max)
