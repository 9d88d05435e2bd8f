"""The compiled binning kernel (numba, ``trtq[fast]``) gives the numpy fallback's counts bit for bit."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from trtq import histogram
from trtq.stats import FINE_BINS, TensorStats

needs_numba = pytest.mark.skipif(not histogram.compiled_available(),
                                 reason="numba is not installed (pip install 'trtq[fast]'): only numpy's path runs")


def both_kernels(values: np.ndarray, factor: float) -> tuple[tuple[np.ndarray, int], tuple[np.ndarray, int]]:
    compiled_hist, numpy_hist = np.zeros(FINE_BINS, np.int64), np.zeros(FINE_BINS, np.int64)
    compiled_zeros = histogram.add_bins(compiled_hist, values, factor)
    numpy_zeros = histogram._add_bins_numpy(numpy_hist, values, factor)
    return (compiled_hist, compiled_zeros), (numpy_hist, numpy_zeros)


def factor_for(values: np.ndarray) -> float:
    top = float(np.abs(values).max())
    return math.ldexp(1.0, int(math.log2(FINE_BINS)) - math.frexp(top)[1])


@needs_numba
@pytest.mark.parametrize("kind", ["relu", "gaussian", "heavy_tail", "bin_edges", "odd_length", "tiny"])
def test_compiled_kernel_counts_equal_numpy_bit_for_bit(kind):
    rng = np.random.default_rng(3)
    n = 300_001  # not a multiple of 4: the tail loop runs
    if kind == "relu":
        values = np.maximum(rng.standard_normal(n), 0)
    elif kind == "gaussian":
        values = rng.standard_normal(n) * 3.7
    elif kind == "heavy_tail":
        values = rng.standard_t(1.5, n)
    elif kind == "bin_edges":  # values exactly on fine-bin edges and just below them
        edges = np.arange(FINE_BINS, dtype=np.float64) / FINE_BINS
        values = np.concatenate([edges, np.nextafter(edges.astype(np.float32), np.float32(0)), -edges] * 7)[:n]
    elif kind == "odd_length":
        values = rng.uniform(-1, 1, 65_539)
    else:
        values = rng.standard_normal(n) * 1e-31  # tiny magnitudes: a factor near float32's largest
    values = values.astype(np.float32)
    (compiled, compiled_zeros), (reference, reference_zeros) = both_kernels(values, factor_for(values))
    np.testing.assert_array_equal(compiled, reference)
    assert compiled_zeros == reference_zeros == np.count_nonzero(values == 0)
    assert compiled.sum() == values.size


@needs_numba
def test_statistics_are_identical_with_either_kernel(tmp_path):
    """Whole TensorStats (histogram, zeros, exponent growth over batches) from two processes, one forced to
    numpy with TRTQ_HISTOGRAM=numpy: the saved statistics are equal array for array."""
    script = (
        "import sys, numpy as np\n"
        "from trtq.stats import StatsCollector\n"
        "from trtq import histogram\n"
        "rng = np.random.default_rng(5)\n"
        "c = StatsCollector(['a', 'b'])\n"
        "for scale in (0.5, 3.0, 40.0):\n"
        "    c.update({'a': np.maximum(rng.standard_normal(200_000) * scale, 0).astype(np.float32),\n"
        "              'b': (rng.standard_t(2, 100_000) * scale).astype(np.float32)}, 1)\n"
        "c.save(sys.argv[1])\n"
        "print(histogram.kernel_used())\n"
    )
    used = {}
    for kernel in ("default", "numpy"):
        env = {**os.environ, histogram.KERNEL_ENV: kernel}
        out = subprocess.run([sys.executable, "-c", script, str(tmp_path / f"{kernel}.npz")], env=env,
                             capture_output=True, text=True, check=True)
        used[kernel] = out.stdout.strip()
    assert used == {"default": "numba", "numpy": "numpy"}
    with np.load(tmp_path / "default.npz") as a, np.load(tmp_path / "numpy.npz") as b:
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_small_tensors_and_float64_use_numpy_and_are_counted():
    stats = TensorStats("t")
    stats.update(np.array([0.0, 0.5, -1.0, 2.0], dtype=np.float32))
    assert stats.hist.sum() == 4 and stats.zeros == 1
    extreme = TensorStats("e")  # shift outside float32's exact range: the float64 path
    extreme.update(np.array([0.0, 1e-38, 3e-37], dtype=np.float32))
    assert extreme.hist.sum() == 3 and extreme.zeros == 1 and extreme.hist[FINE_BINS - 1] + extreme.hist[
        FINE_BINS // 2:].sum() >= 1


@needs_numba
def test_the_one_pass_kernel_folds_in_range_batches_as_the_general_path(monkeypatch):
    """After a tensor's first batch the range usually covers the next ones: min, max, zeros and bins then come
    from one compiled pass. Batches in range, beyond it (the range widens), with NaN/Inf, with -0.0 extremes
    and sub-normal values give the statistics of the numpy path exactly; the one-pass kernel really ran."""
    import trtq.stats

    rng = np.random.default_rng(11)
    n = 100_003
    batches = [rng.standard_normal(n) * 8, np.maximum(rng.standard_normal(n), 0), rng.standard_normal(n) * 2,
               np.where(rng.random(n) < 0.5, -0.0, rng.standard_normal(n) * 1e-40), rng.standard_normal(n) * 50,
               np.concatenate([rng.standard_normal(n - 2), [np.nan, np.inf]]), -np.abs(rng.standard_normal(n)),
               np.full(n, -0.0)]
    batches = [b.astype(np.float32) for b in batches]
    one_pass = []
    real = trtq.stats.add_bins_in_range

    def counting(hist, x, factor):
        folded = real(hist, x, factor)
        one_pass.append(folded is not None)
        return folded

    monkeypatch.setattr(trtq.stats, "add_bins_in_range", counting)
    compiled = TensorStats("t")
    for batch in batches:
        compiled.update(batch)
    assert one_pass == [True, True, True, False, False]  # in range; 50x: widened; NaN, and none after it

    monkeypatch.setattr(histogram, "_compiled", False)  # numba off: the numpy path only
    reference = TensorStats("t")
    for batch in batches:
        reference.update(batch)
    for field in ("count", "nonfinite", "zeros", "min", "max", "exponent"):
        assert getattr(compiled, field) == getattr(reference, field), field
    np.testing.assert_array_equal(compiled.hist, reference.hist)


@needs_numba
@pytest.mark.parametrize("kernel", ["compiled", "numpy"])
def test_a_negative_zero_extreme_is_kept_as_zero(monkeypatch, kernel):
    """Which of 0.0 and -0.0 a min or max pass returns is the kernel's choice: both paths keep 0.0, so the
    saved statistics do not depend on the kernel."""
    if kernel == "numpy":
        monkeypatch.setattr(histogram, "_compiled", False)
    values = -np.abs(np.random.default_rng(2).standard_normal(100_000)).astype(np.float32)
    values[::7] = -0.0
    stats = TensorStats("t")
    stats.update(values)  # the general path (no range yet)
    stats.update(values[::-1].copy())  # in range: the one-pass kernel where numba runs
    assert stats.max == 0.0 and math.copysign(1.0, stats.max) == 1.0
