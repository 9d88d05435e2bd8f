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
