"""One tensor's statistics for one batch, computed with any numpy-compatible array module.

:meth:`trtq.stats.TensorStats.update` folds host arrays with numpy or the compiled kernel. On a GPU machine
the captured tensors are already in device memory (onnxruntime-gpu with IO binding), and copying each one to
the host costs more than reducing it there. :func:`batch_stats` does the reduction with ``xp`` (CuPy there,
numpy in the tests) and returns small host statistics that :meth:`TensorStats.merge` folds in.

Why it is the same, bit for bit: every figure is an exact operation on the float32 values: min, max,
counts, and each value's fine bin ``floor(|x| * 2**shift)``, where the power-of-two factor makes the product
exact (float64 beyond float32's exponent range, as on the host). A fresh batch's histogram is anchored at its
own absmax exponent, and merging power-of-two histograms is exact, so ``merge(batch_stats(x))`` equals
``update(x)`` whichever module did the arithmetic (``tests/test_array_stats.py``; the device side in a
``gpu``-marked test).
"""

from __future__ import annotations

import math

import numpy as np

from trtq.stats import FINE_BINS, FINE_LOG2, TensorStats, finite_extremes


def batch_stats(xp, name: str, values, keep_histogram: bool = True, weight: int = 1) -> TensorStats:
    """The statistics of ``values`` (an ``xp`` array, any float dtype) alone, as host numbers, each value
    counted ``weight`` times: what ``TensorStats(name).update(values, weight)`` gives."""
    stats = TensorStats(name, keep_histogram=keep_histogram)
    if weight < 1:
        return stats
    x = values.reshape(-1)
    if x.dtype != xp.float32:
        x = x.astype(xp.float32)
    if x.size == 0:
        return stats
    x, lo, hi, nonfinite = finite_extremes(xp, x)
    stats.nonfinite = nonfinite * weight
    if x is None:
        return stats
    stats.min, stats.max = lo, hi
    stats.count = int(x.size) * weight
    if not keep_histogram:
        return stats
    top = max(-lo, hi)
    if top == 0.0:
        stats.hist[0] = stats.zeros = int(x.size) * weight
        return stats
    stats.exponent = math.frexp(top)[1]
    shift = FINE_LOG2 - stats.exponent
    scaled = xp.abs(x) if -120 < shift < 120 else xp.abs(x.astype(xp.float64))
    scaled *= scaled.dtype.type(math.ldexp(1.0, shift))
    counts = xp.bincount(scaled.astype(xp.int64), minlength=FINE_BINS)
    stats.hist = _to_host(counts).astype(np.int64) * weight
    stats.zeros = int(xp.count_nonzero(x == 0)) * weight
    return stats


def _to_host(array) -> np.ndarray:
    get = getattr(array, "get", None)  # CuPy's device-to-host copy
    return np.asarray(get() if get is not None else array)
