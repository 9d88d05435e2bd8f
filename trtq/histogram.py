"""The |x| binning kernel behind :meth:`trtq.stats.TensorStats.update`: most of what statistics cost.

A value's fine bin is ``floor(|x| * 2**shift)`` computed in float32 (the power-of-two factor is exact), so
any implementation that does that arithmetic gives the same counts bit for bit. Two do:

* ``numba`` (``pip install 'trtq[fast]'``): one compiled pass per value, |x|, the bin, the zero count, the
  min and the max together, four sub-histograms so that neighbouring equal bins do not serialise the
  increments. Measured on this project's 2-core machine, 26 M ReLU-like float32 values: 0.97 ns a value
  (1.22 for the earlier bins-only kernel after numpy's min and max passes) against numpy's 3.2 (numpy makes
  four passes: abs, scale, cast to an index array, bincount). It releases the GIL, so the statistics threads
  still fold several tensors at once. Compiled on first use and cached on disk (numba's cache: next to this
  file, else the user's cache folder). Once a tensor's range covers a new batch (the usual case after its
  first run), :func:`add_bins_in_range` folds it with no numpy pass at all.
* ``numpy``: the fallback, always available, chunked so the temporaries stay a few MB. ``np.bincount``
  is most of its cost (1.9 of ~2.5 ns a value in cache; splitting the counts over lanes to break the
  chain of equal bins that ReLU zeros make did not pay).

numba is imported only for a tensor of at least :data:`COMPILED_MIN_VALUES` values: for small models its
import (~0.25 s) would cost more than it saves. ``TRTQ_HISTOGRAM=numpy`` forces the fallback;
:func:`kernel_used` says which one ran, for the summary and the benchmark.
"""

from __future__ import annotations

import os
import threading

import numpy as np

HIST_CHUNK = 1 << 18  # values binned at a time by the numpy path
COMPILED_MIN_VALUES = 1 << 16  # below this a tensor is binned by numpy (numba's import would not pay)
KERNEL_ENV = "TRTQ_HISTOGRAM"  # "numpy" forces the fallback

_lock = threading.Lock()
_compiled = None  # the numba kernel once loaded, False when numba is unavailable or disabled
_used: set[str] = set()


def kernel_used() -> str | None:
    """Which kernel binned values in this process ("numba", "numpy", "numba+numpy"), None before any."""
    if not _used:
        return None
    return "+".join(sorted(_used, reverse=True))


def compiled_available() -> bool:
    """Whether the numba kernel can be used here (loads it: numba's import and, once, its compilation)."""
    return _load_compiled() is not None


def add_bins(hist: np.ndarray, x: np.ndarray, factor: float) -> int:
    """Add each value's bin ``floor(|x| * factor)`` to ``hist`` (int64) and return the count of exact zeros.

    ``x`` is 1-D, finite float32 or float64 (float64 only for extreme magnitudes, where the factor is not
    representable in float32), every ``|x| * factor`` below ``hist.size``.
    """
    folded = add_bins_in_range(hist, x, factor)
    if folded is not None:
        return folded[0]
    _used.add("numpy")
    return _add_bins_numpy(hist, x, factor)


def add_bins_in_range(hist: np.ndarray, x: np.ndarray, factor: float) -> tuple[int, float, float] | None:
    """The compiled pass: add each value's bin to ``hist`` and return ``(exact zeros, min, max)``, what
    :func:`add_bins` after a min and a max pass would give, when ``hist``'s range already covers ``x``.

    None, with ``hist`` untouched, when it does not apply: no compiled kernel, ``x`` not float32 or small,
    or a value that is NaN, infinite or not below ``hist.size / factor`` (the caller then takes the general
    path, which widens the range).
    """
    if x.dtype != np.float32 or x.size < COMPILED_MIN_VALUES:
        return None
    kernel = _load_compiled()
    if kernel is None:
        return None
    zeros, lo, hi = kernel(np.ascontiguousarray(x), np.float32(factor), np.float32(hist.size), hist)
    if zeros < 0:
        return None
    _used.add("numba")
    return int(zeros), float(lo) + 0.0, float(hi) + 0.0  # + 0.0: -0.0 as 0.0, as the numpy path gives it


def _add_bins_numpy(hist: np.ndarray, x: np.ndarray, factor: float) -> int:
    zeros = 0
    for start in range(0, x.size, HIST_CHUNK):
        chunk = x[start:start + HIST_CHUNK]
        scaled = np.abs(chunk)
        scaled *= scaled.dtype.type(factor)
        counts = np.bincount(scaled.astype(np.intp), minlength=hist.size)
        if counts[0]:  # exact zeros can only be in bin 0: count them only when it is not empty
            zeros += int(np.count_nonzero(chunk == 0))  # (x == 0) then a count: ~5x faster than on float32
        hist += counts
    return zeros


def _load_compiled():
    global _compiled
    if _compiled is None:
        with _lock:
            if _compiled is None:
                _compiled = _compile() or False
    return _compiled or None


def _compile():
    if os.environ.get(KERNEL_ENV, "").strip().lower() == "numpy":
        return None
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def add_bins_in_range_float32(x, factor, limit, hist):  # pragma: no cover - compiled: tested through callers
        n = x.size
        bins = hist.size
        sub = np.zeros((4, bins), np.int64)
        zeros = 0
        lo = x[0]
        hi = x[0]
        whole = n - n % 4
        for i in range(0, whole, 4):
            v0 = x[i]
            v1 = x[i + 1]
            v2 = x[i + 2]
            v3 = x[i + 3]
            a = abs(v0) * factor
            b = abs(v1) * factor
            c = abs(v2) * factor
            d = abs(v3) * factor
            if not (a < limit and b < limit and c < limit and d < limit):  # NaN, Inf or out of range
                return -1, lo, hi
            lo = min(lo, min(min(v0, v1), min(v2, v3)))
            hi = max(hi, max(max(v0, v1), max(v2, v3)))
            zeros += (v0 == 0) + (v1 == 0) + (v2 == 0) + (v3 == 0)
            sub[0, np.intp(a)] += 1
            sub[1, np.intp(b)] += 1
            sub[2, np.intp(c)] += 1
            sub[3, np.intp(d)] += 1
        for i in range(whole, n):
            v = x[i]
            a = abs(v) * factor
            if not a < limit:
                return -1, lo, hi
            lo = min(lo, v)
            hi = max(hi, v)
            zeros += v == 0
            sub[0, np.intp(a)] += 1
        for k in range(4):
            for j in range(bins):
                hist[j] += sub[k, j]
        return zeros, lo, hi

    try:  # compile (or load from numba's cache)
        add_bins_in_range_float32(np.zeros(4, np.float32), np.float32(1.0), np.float32(8.0), np.zeros(8, np.int64))
    except Exception:  # noqa: BLE001 - a broken numba install: the numpy path is always right
        return None
    return add_bins_in_range_float32
