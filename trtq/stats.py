"""Per-tensor statistics, collected in one streaming pass, from which every range method works.

Histogram design (why it is order- and batch-size-invariant)
-------------------------------------------------------------
TensorRT's calibrators keep a 2048-bin histogram of |x| whose range starts at the first batch's
maximum and "is increased by a power of two" when later data exceeds it (TensorRT developer
guide). The result then depends on which batch came first and on the batch size.

trtq anchors the histogram range to powers of two instead: it always covers ``[0, 2**e)`` with
``e`` the smallest exponent such that every value seen is below ``2**e``, in ``FINE_BINS`` bins.
When a larger value arrives, ``e`` grows and groups of ``2**k`` neighbouring bins merge exactly
(bin edges of a power-of-two grid nest). A value's bin is ``floor(|x| * 2**(log2(FINE_BINS) - e))``,
an exact float operation. The final histogram is therefore identical whatever the batch order or
batch size: it depends only on the multiset of values.

The range methods want TensorRT's 2048 bins spanning the data, not up to twice the data. The fine
histogram has 8x more bins than that, and since the largest value lies in the upper half of
``[0, 2**e)``, the 2048-bin view (:meth:`TensorStats.histogram`) merges the smallest whole number
``g`` of fine bins (4 <= g <= 8) that lets 2048 bins cover the data: its range ends at most 25 %
above the tensor's absmax (TensorRT's own can end up to 100 % above it).

Only ``minmax`` can do without the histogram; :func:`trtq.calibrate.calibrate` then skips it
(``keep_histogram=False``); the histogram is most of what collecting statistics costs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trtq.errors import TrtqError
from trtq.fileio import atomic_path
from trtq.histogram import add_bins, add_bins_in_range

HIST_BINS = 2048  # what the range methods see (TensorRT's histogram size)
FINE_BINS = 8 * HIST_BINS  # what is collected
FINE_LOG2 = int(math.log2(FINE_BINS))
STATS_FORMAT = "trtq-stats-1"


def finite_extremes(xp, x):
    """``(finite values, their min, their max, NaN/Inf count)`` of flat float32 ``x`` with array module ``xp``
    (numpy here, CuPy on the GPU: :mod:`trtq.array_stats`); the values None when none is finite. Only one
    min and one max pass when every value is finite, the usual case."""
    lo, hi = float(x.min()) + 0.0, float(x.max()) + 0.0  # + 0.0: a -0.0 extreme as 0.0, whichever kernel
    if math.isfinite(lo) and math.isfinite(hi):
        return x, lo, hi, 0
    finite = xp.isfinite(x)
    kept = int(xp.count_nonzero(finite))
    if kept == 0:
        return None, math.inf, -math.inf, int(x.size)
    values = x[finite]
    return values, float(values.min()) + 0.0, float(values.max()) + 0.0, int(x.size) - kept


@dataclass
class TensorStats:
    """Running statistics of one tensor. Only finite values are counted; NaN/Inf are tallied apart."""

    name: str
    count: int = 0
    nonfinite: int = 0
    zeros: int = 0
    min: float = math.inf
    max: float = -math.inf
    exponent: int | None = None  # the histogram covers [0, 2**exponent)
    hist: np.ndarray = field(default_factory=lambda: np.zeros(FINE_BINS, dtype=np.int64))
    keep_histogram: bool = True  # False: min/max/count only (enough for minmax, not for the other methods)

    def __post_init__(self) -> None:
        if not self.keep_histogram:
            self.hist = np.zeros(0, dtype=np.int64)

    def require_histogram(self) -> None:
        """Raise a clear error when a method needs the histogram these statistics did not keep."""
        if not self.keep_histogram:
            raise TrtqError(f"the statistics of tensor '{self.name}' were collected without a histogram "
                            "(enough for minmax only); collect them again with histograms kept")

    @property
    def absmax(self) -> float:
        """max |x| over the finite values seen (0.0 when none)."""
        if self.count == 0:
            return 0.0
        return float(max(-self.min, self.max))

    @property
    def fine_width(self) -> float:
        """Width of one fine bin (0.0 before any non-zero value)."""
        if self.exponent is None:
            return 0.0
        return math.ldexp(1.0, self.exponent - FINE_LOG2)

    def update(self, values: np.ndarray, weight: int = 1) -> None:
        """Fold one batch of this tensor into the statistics, each value counted ``weight`` times.

        ``weight`` > 1 serves tensors computed from shapes and constants only (anchor grids): the same
        values in every run, so the capture counts them once per sample, which keeps their statistics
        independent of how the samples were cut into batches and runs.
        """
        if weight < 1:
            return
        fold_into = getattr(values, "fold_into", None)
        if fold_into is not None:  # a tensor in device memory (trtq.trt.device_fold): reduced where it lives
            fold_into(self, weight)
            return
        x = np.asarray(values)
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        x = x.reshape(-1)
        if x.size == 0:
            return
        if weight == 1 and self._fold_in_range(x):
            return
        x, lo, hi, nonfinite = finite_extremes(np, x)
        self.nonfinite += nonfinite * weight
        if x is None:
            return
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        self.count += x.size * weight
        if not self.keep_histogram:
            return
        top = max(-lo, hi)
        if top == 0.0:
            self.hist[0] += x.size * weight
            self.zeros += x.size * weight
            return
        exponent = math.frexp(top)[1]  # top < 2**exponent
        if self.exponent is None:
            self.exponent = exponent
        elif exponent > self.exponent:
            self._grow(exponent)
        factor, x = self._bin_factor(x)
        if weight == 1:
            self.zeros += add_bins(self.hist, x, factor)
        else:
            counts = np.zeros(FINE_BINS, dtype=np.int64)
            self.zeros += add_bins(counts, x, factor) * weight
            self.hist += counts * weight

    def _fold_in_range(self, x: np.ndarray) -> bool:
        """Fold ``x`` in one compiled pass (:func:`~trtq.histogram.add_bins_in_range`) when the histogram's
        range already covers it, the usual case after a tensor's first run; False (nothing folded) when the
        general path must run: no range yet, no compiled kernel, a NaN/Inf or a value beyond the range. A
        tensor that held NaN/Inf before (an attention mask's -inf) goes to the general path at once: the pass
        would stop at its first NaN/Inf each time."""
        if not self.keep_histogram or self.exponent is None or self.nonfinite:
            return False
        factor, exact_in_float32 = self._factor()
        folded = add_bins_in_range(self.hist, x, factor) if exact_in_float32 else None
        if folded is None:
            return False
        zeros, lo, hi = folded
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += x.size
        self.zeros += zeros
        return True

    def merge(self, other: TensorStats) -> None:
        """Fold in the statistics of the same tensor on other data: exactly what updating with that data
        would give (histograms on power-of-two grids merge bin for bin, whatever the order)."""
        if self.keep_histogram != other.keep_histogram:
            raise TrtqError(f"cannot merge statistics of '{self.name}' with and without a histogram")
        self.count += other.count
        self.nonfinite += other.nonfinite
        self.zeros += other.zeros
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        if not self.keep_histogram or other.exponent is None:
            if self.keep_histogram and other.exponent is None:
                self.hist[0] += other.hist[0]
            return
        hist = other.hist
        if self.exponent is None:
            hist = hist.copy()
            hist[0] += self.hist[0]
            self.hist, self.exponent = hist, other.exponent
            return
        if other.exponent > self.exponent:
            self._grow(other.exponent)
        elif other.exponent < self.exponent:
            widened = TensorStats(other.name, exponent=other.exponent, hist=other.hist.copy())
            widened._grow(self.exponent)
            hist = widened.hist
        self.hist += hist

    def _factor(self) -> tuple[float, bool]:
        """The power-of-two factor that maps |x| to its fine bin, and whether it is exact in float32 (else
        the values are scaled in float64: extreme magnitudes)."""
        shift = FINE_LOG2 - self.exponent
        return math.ldexp(1.0, shift), -120 < shift < 120

    def _bin_factor(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """The factor (:meth:`_factor`) and the values to multiply it by. |x| < 2**exponent and the scaling is
        exact, so every bin index is below FINE_BINS."""
        factor, exact_in_float32 = self._factor()
        return factor, x if exact_in_float32 else x.astype(np.float64)

    def _grow(self, exponent: int) -> None:
        """Widen the range to [0, 2**exponent): neighbouring bins merge exactly."""
        factor_log2 = exponent - self.exponent
        merged = np.zeros(FINE_BINS, dtype=np.int64)
        if factor_log2 >= FINE_LOG2:  # everything seen so far fits in the new first bin
            merged[0] = self.hist.sum()
        else:
            factor = 1 << factor_log2
            merged[: FINE_BINS // factor] = self.hist.reshape(-1, factor).sum(axis=1)
        self.hist = merged
        self.exponent = exponent

    def histogram(self, bins: int = HIST_BINS) -> tuple[np.ndarray, float]:
        """The |x| histogram as ``bins`` bins spanning the data, and the bin width.

        Returns float64 counts (exact below 2**53) and the width; the last bin ends at
        ``bins * width >= absmax``. An all-zero tensor gives all counts in bin 0 and width 0.
        """
        self.require_histogram()
        if self.exponent is None:
            counts = np.zeros(bins, dtype=np.float64)
            counts[0] = self.hist[0]
            return counts, 0.0
        used = int(np.flatnonzero(self.hist)[-1]) + 1  # fine bins up to the largest value
        group = max(1, -(-used // bins))
        if group * bins > FINE_BINS:  # only when bins does not divide FINE_BINS nicely
            group = FINE_BINS // bins
        counts = self.hist[: group * bins].reshape(bins, group).sum(axis=1).astype(np.float64)
        return counts, group * self.fine_width

    def nonzero_histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """The fine |x| histogram without the exact zeros (they quantize exactly at any scale and carry no
        signal), as float64 counts, with the bin centres."""
        self.require_histogram()
        counts = self.hist.astype(np.float64)
        counts[0] = max(0.0, counts[0] - self.zeros)
        return counts, (np.arange(counts.size) + 0.5) * self.fine_width

    def fraction_above(self, threshold: float) -> float:
        """Share of the finite values with |x| > threshold (estimated at fine-bin resolution)."""
        if self.count == 0 or threshold >= self.absmax:
            return 0.0
        self.require_histogram()
        if self.exponent is None:
            return 0.0
        edge = min(FINE_BINS, int(math.ceil(threshold / self.fine_width)))
        return float(self.hist[edge:].sum()) / self.count


class StatsCollector:
    """Statistics for a set of tensors, filled batch by batch."""

    def __init__(self, names: list[str] | None = None, meta: dict | None = None, keep_histograms: bool = True):
        self.keep_histograms = keep_histograms
        self.tensors: dict[str, TensorStats] = {n: TensorStats(n, keep_histogram=keep_histograms)
                                                 for n in names or []}
        self.samples = 0
        self.batches = 0
        self.meta: dict = dict(meta or {})
        # how the model ran (trtq.calibrate.capture_summary): for the summary line, never saved (it changes no
        # statistic, and saved statistics must be the same bytes however the runs were cut)
        self.capture: dict | None = None

    def update(self, activations: dict[str, np.ndarray], samples: int, batches: int = 1,
               weights: dict[str, int] | None = None) -> None:
        """Fold one batch in. The dict is emptied as it goes, so each tensor is freed once counted.
        (A batch captured in several runs counts its samples and the batch once: ``samples``/``batches`` 0
        on the other runs.) ``weights``: tensor -> how many times each of its values counts (default 1)."""
        weights = weights or {}
        for stats, values in self._claim(activations, samples, batches):
            stats.update(values, weights.get(stats.name, 1))

    def submit(self, activations: dict[str, np.ndarray], samples: int, pool: Executor,
               batches: int = 1, weights: dict[str, int] | None = None) -> list[Future]:
        """Fold one batch in on ``pool`` (one task per tensor; numpy releases the GIL in the heavy parts).

        The caller must wait for the returned futures before submitting the next batch, so that each
        tensor's statistics are only ever touched by one task. ``activations`` is emptied.
        """
        weights = weights or {}
        return [pool.submit(stats.update, values, weights.get(stats.name, 1))
                for stats, values in self._claim(activations, samples, batches)]

    def _claim(self, activations: dict[str, np.ndarray], samples: int,
               batches: int) -> Iterator[tuple[TensorStats, np.ndarray]]:
        """Count the batch, then hand out each tensor with its statistics, emptying ``activations``."""
        self.samples += samples
        self.batches += batches
        while activations:
            name, values = activations.popitem()
            stats = self.tensors.get(name)
            if stats is None:
                stats = self.tensors[name] = TensorStats(name, keep_histogram=self.keep_histograms)
            yield stats, values

    def merge(self, other: StatsCollector) -> None:
        """Fold in statistics collected on other data (same model): as if one pass had seen both."""
        for name, stats in other.tensors.items():
            if name in self.tensors:
                self.tensors[name].merge(stats)
            else:
                self.tensors[name] = stats
        self.samples += other.samples
        self.batches += other.batches

    def __getitem__(self, name: str) -> TensorStats:
        return self.tensors[name]

    def __iter__(self):
        return iter(self.tensors.values())

    def __len__(self) -> int:
        return len(self.tensors)

    def save(self, path: str | Path) -> Path:
        """Save as ``.npz`` (no pickles), atomically. Histograms compress well (mostly zeros)."""
        stats = list(self.tensors.values())
        for s in stats:
            s.require_histogram()
        meta = {**self.meta, "format": STATS_FORMAT, "fine_bins": FINE_BINS,
                "samples": self.samples, "batches": self.batches}
        arrays = {
            "names": np.array([s.name for s in stats], dtype=np.str_),
            "count": np.array([s.count for s in stats], dtype=np.int64),
            "nonfinite": np.array([s.nonfinite for s in stats], dtype=np.int64),
            "zeros": np.array([s.zeros for s in stats], dtype=np.int64),
            "min": np.array([s.min for s in stats], dtype=np.float64),
            "max": np.array([s.max for s in stats], dtype=np.float64),
            # -2**31 marks "no non-zero value yet" (npz has no None)
            "exponent": np.array([-(2**31) if s.exponent is None else s.exponent for s in stats], dtype=np.int64),
            "hist": np.stack([s.hist for s in stats]) if stats else np.zeros((0, FINE_BINS), np.int64),
            "meta": np.array(json.dumps(meta)),
        }
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> StatsCollector:
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if meta.get("format") != STATS_FORMAT or meta.get("fine_bins") != FINE_BINS:
                    raise TrtqError(f"{path} was written by an incompatible trtq version ({meta.get('format')})")
                collector = cls(meta={k: v for k, v in meta.items()
                                      if k not in ("format", "fine_bins", "samples", "batches")})
                collector.samples = int(meta.get("samples", 0))
                collector.batches = int(meta.get("batches", 0))
                for i, name in enumerate(data["names"].tolist()):
                    exponent = int(data["exponent"][i])
                    collector.tensors[name] = TensorStats(
                        name=name, count=int(data["count"][i]), nonfinite=int(data["nonfinite"][i]),
                        zeros=int(data["zeros"][i]), min=float(data["min"][i]), max=float(data["max"][i]),
                        exponent=None if exponent == -(2**31) else exponent,
                        hist=np.array(data["hist"][i], dtype=np.int64),
                    )
        except FileNotFoundError as exc:
            raise TrtqError(f"statistics file not found: {path}") from exc
        except (KeyError, ValueError, OSError) as exc:
            raise TrtqError(f"{path} is not a trtq statistics file ({type(exc).__name__}: {exc})") from exc
        return collector
