"""Judge on every calibration sample without judging a range on the data it saw: cross-fitting.

Why: holding out 1 batch in 5 left ``trtq quantize`` 24-32 evaluation samples on real data, where one
differing string is 4 points and a keep search walks through noise. Statistics merge exactly (power-of-two
histograms add bin for bin, whatever the order), so the calibration pass keeps one statistics collector per
fold: the batches held for judging (the first ones, up to ``max_samples`` samples and ``MAX_EVAL_BYTES`` of input)
are dealt to ``folds`` folds in turn, the batches after them calibrate only. Fold ``j`` is judged by ranges from
the merge of every other fold and the calibrate-only rest: each sample judged by ranges that never saw it, at the
cost of one evaluation pass per candidate (its Q/DQ model exported once per fold), not ``folds`` calibrations.
The model written takes its ranges from all the statistics.

A source of a single batch cannot be split: that batch serves both, and :attr:`CrossFit.shared` says so.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from trtq.accuracy.holdout import MAX_EVAL_BYTES, feed_bytes
from trtq.segments import batch_samples
from trtq.stats import StatsCollector

DEFAULT_FOLDS = 4

Feed = Mapping[str, np.ndarray]


@dataclass
class CrossFit:
    """The judged batches (in memory, in feed order), the fold of each, and the statistics per fold."""

    held: list[dict[str, np.ndarray]]
    fold_of: list[int]
    fold_stats: list[StatsCollector]
    rest: StatsCollector | None
    fed: int
    shared: bool = False
    _training: dict[int, StatsCollector] = field(default_factory=dict)

    @property
    def folds(self) -> int:
        return len(self.fold_stats)

    @property
    def samples(self) -> int:
        return sum(batch_samples(b) for b in self.held)

    def training_stats(self, fold: int) -> StatsCollector:
        """The statistics of every batch but those of ``fold`` (merged once, then reused)."""
        if fold not in self._training:
            parts = [s for j, s in enumerate(self.fold_stats) if j != fold or self.shared]
            if self.rest is not None:
                parts.append(self.rest)
            self._training[fold] = merge_all(parts)
        return self._training[fold]

    def total(self) -> StatsCollector:
        """The statistics of every batch: what the written model's ranges come from."""
        return merge_all([*self.fold_stats, *([self.rest] if self.rest is not None else [])])

    def describe(self) -> str:
        if self.shared:
            return (f"the calibration data itself ({self.samples} samples: one batch cannot be split; "
                    "give --eval-data or more batches for an honest measurement)")
        return (f"{self.samples} calibration samples, cross-fitted in {self.folds} folds (each judged by ranges "
                "from the other folds)")

    def feed_folds(self) -> dict[int, int]:
        """id(feed) -> fold, for the runners that dispatch a feed to its fold's model."""
        return {id(feed): fold for feed, fold in zip(self.held, self.fold_of, strict=True)}


def merge_all(parts: list[StatsCollector]) -> StatsCollector:
    """A new collector holding the merge of ``parts`` (none of them changed)."""
    merged = copy.deepcopy(parts[0])
    for part in parts[1:]:
        merged.merge(copy.deepcopy(part))
    return merged


class _Stream:
    """The source's batches after the held ones, as a data source (its provenance kept)."""

    def __init__(self, source: Iterable[Feed], iterator: Iterator[Feed]):
        self.source, self.iterator = source, iterator

    def __iter__(self) -> Iterator[Feed]:
        return self.iterator

    def provenance(self) -> dict:
        return self.source.provenance() if hasattr(self.source, "provenance") else {}


class HeldHead:
    """A data source passed through unchanged while its first batches (up to ``max_samples`` samples and
    ``max_bytes`` of input) are kept in :attr:`held`: with ``--eval-data``, the calibration samples the
    error-reducing steps are fitted on (the evaluation data judges, it never fits)."""

    def __init__(self, source: Iterable[Feed], max_samples: int, max_bytes: int = MAX_EVAL_BYTES):
        self.source, self.max_samples, self.max_bytes = source, max_samples, max_bytes
        self.held: list[dict[str, np.ndarray]] = []

    def __iter__(self) -> Iterator[Feed]:
        samples = size = 0
        for feed in self.source:
            if samples < self.max_samples and size < self.max_bytes:
                self.held.append(dict(feed))
                samples += batch_samples(feed)
                size += feed_bytes(feed)
            yield feed

    def read(self) -> list[dict[str, np.ndarray]]:
        """Read only the held batches (for a collector that reads the source elsewhere, e.g. in Ray workers: the
        source is read a second time, so it must be re-iterable, as every data source of trtq is)."""
        samples = size = 0
        for feed in self.source:
            if samples >= self.max_samples or size >= self.max_bytes:
                break
            self.held.append(dict(feed))
            samples += batch_samples(feed)
            size += feed_bytes(feed)
        return self.held

    def __getattr__(self, name: str):  # provenance(), total_samples, ... of the source
        return getattr(self.source, name)


def cross_fit(source: Iterable[Feed], gather: Callable[[Iterable[Feed]], StatsCollector], *,
              folds: int = DEFAULT_FOLDS, max_samples: int = 256, max_bytes: int = MAX_EVAL_BYTES,
              gather_groups: Callable[[list[Feed], list[int]], list[StatsCollector]] | None = None) -> CrossFit:
    """Read ``source`` once: hold its first batches for judging, deal them to folds, and collect the statistics
    of each fold and of the rest with ``gather`` (``collect_statistics`` with its options bound). ``gather_groups``
    (``collect_statistics_groups``): every fold's statistics in one capture, the same as ``gather`` per fold."""
    iterator = iter(source)
    held: list[dict[str, np.ndarray]] = []
    samples = size = 0
    for feed in iterator:
        held.append(dict(feed))
        samples += batch_samples(feed)
        size += feed_bytes(feed)
        if samples >= max_samples or size >= max_bytes:
            break
    count = min(folds, len(held))
    shared = count < 2
    count = max(count, 1)
    fold_of = [index % count for index in range(len(held))]
    if not held:
        fold_stats = []
    elif gather_groups is not None:
        fold_stats = gather_groups(held, fold_of)
    else:
        fold_stats = [gather([b for b, f in zip(held, fold_of, strict=True) if f == j]) for j in range(count)]
    following = next(iterator, None)
    rest = gather(_Stream(source, itertools.chain([following], iterator))) if following is not None else None
    fed = samples + (rest.samples if rest is not None else 0)
    return CrossFit(held, fold_of, fold_stats, rest, fed, shared=shared)


@dataclass
class FoldPlan:
    """Which ranges judge which feed: per fold the statistics its ranges come from, and each judged feed's fold
    (a feed not listed, e.g. of ``--eval-data``, is judged by fold 0: then the only one, from all the data)."""

    training: list[StatsCollector]
    fold_of_feed: dict[int, int] = field(default_factory=dict)

    @classmethod
    def single(cls, stats: StatsCollector) -> FoldPlan:
        return cls([stats])

    @classmethod
    def of(cls, crossfit: CrossFit) -> FoldPlan:
        return cls([crossfit.training_stats(j) for j in range(crossfit.folds)], crossfit.feed_folds())

    @property
    def folds(self) -> int:
        return len(self.training)

    def dispatch(self, runs: list[Callable[[Feed], list[np.ndarray]]]) -> Callable[[Feed], list[np.ndarray]]:
        """One runner from one per fold: each feed goes to its fold's."""
        if len(runs) == 1:
            return runs[0]
        folds = self.fold_of_feed

        def run(feed: Feed) -> list[np.ndarray]:
            return runs[folds.get(id(feed), 0)](feed)

        return run

    def ranges(self, derive: Callable[[StatsCollector], dict[str, float]],
               complete: Mapping[str, float] | None = None) -> list[dict[str, float]]:
        """Per fold, ``derive(training statistics)``; with ``complete`` (the ranges of all the data), a tensor
        whose fold range defines no scale (all zero in the other folds) takes the complete one, so every fold's
        Q/DQ model quantizes the same tensors."""
        result = []
        for stats in self.training:
            amax = dict(derive(stats))
            if complete is not None:
                for name, value in complete.items():
                    if not (amax.get(name, 0.0) > 0 and np.isfinite(amax.get(name, 0.0))):
                        amax[name] = value
            result.append(amax)
        return result
