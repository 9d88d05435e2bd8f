"""The evaluation set of ``trtq quantize`` / ``--calibrator auto`` when the user gives no ``--eval-data``:
a deterministic split of the calibration data, made while the calibration pass reads it.

Rule: of every ``HOLDOUT_EVERY`` batches, the second (batch index ``k % HOLDOUT_EVERY == 1``) is held
out for evaluation and not calibrated on, until ``max_samples`` evaluation samples (or ``MAX_EVAL_BYTES``
of input data) are held; later batches all calibrate. Holding out whole batches keeps the data sources
untouched (ranges do not depend on batching: the statistics are batch-size invariant), and evaluating on
data the ranges never saw keeps the measurement honest (on its own calibration data, a method that clips
nothing looks best). A source of a single batch cannot be split: that batch serves both, and
:attr:`shared` says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from trtq.accuracy.labels import Labels, labels_for_fed
from trtq.data import BatchSource
from trtq.segments import batch_samples

HOLDOUT_EVERY = 5
DEFAULT_EVAL_SAMPLES = 256
MAX_EVAL_BYTES = 256 << 20  # the evaluation set is held in memory: at most this much input data (e.g. 54 images
# of 3x640x640 float32), whatever --max-eval-samples says


def feed_bytes(feed: Mapping[str, np.ndarray]) -> int:
    return int(sum(np.asarray(v).nbytes for v in feed.values()))


@dataclass
class HoldoutSplit:
    """Wraps the calibration batches; collects the held-out ones (in memory) as it yields the rest."""

    batches: Iterable[Mapping[str, np.ndarray]]
    max_samples: int = DEFAULT_EVAL_SAMPLES
    held: list[dict[str, np.ndarray]] = field(default_factory=list)
    held_positions: list[np.ndarray] = field(default_factory=list)  # sample positions in feed order
    fed: int = 0  # samples the source yielded (calibrated + held out)
    shared: bool = False

    def __iter__(self) -> Iterator[Mapping[str, np.ndarray]]:
        self.held, self.held_positions, self.fed, self.shared = [], [], 0, False
        held_samples, held_bytes, first = 0, 0, None
        for index, feed in enumerate(self.batches):
            samples = batch_samples(feed)
            positions = np.arange(self.fed, self.fed + samples)
            self.fed += samples
            if index == 0:
                first = (dict(feed), positions)
            if index % HOLDOUT_EVERY == 1 and held_samples < self.max_samples and held_bytes < MAX_EVAL_BYTES:
                self.held.append(dict(feed))
                self.held_positions.append(positions)
                held_samples += samples
                held_bytes += feed_bytes(feed)
                continue
            yield feed
        if not self.held and first is not None:  # one batch: it is both calibrated on and evaluated
            self.held, self.held_positions, self.shared = [first[0]], [first[1]], True

    @property
    def samples(self) -> int:
        return int(sum(p.size for p in self.held_positions))

    def provenance(self) -> dict:
        """The wrapped source's record (what was fed is that source, split or not)."""
        return self.batches.provenance() if hasattr(self.batches, "provenance") else {}

    def describe(self) -> str:
        if self.shared:
            return (f"the calibration data itself ({self.samples} samples: one batch cannot be split; "
                    "give --eval-data for an honest measurement)")
        return (f"{self.samples} samples held out from the calibration data (1 batch in {HOLDOUT_EVERY}, "
                "not calibrated on)")

    def labels(self, all_labels: np.ndarray) -> np.ndarray:
        """The held-out samples' labels, from the labels of every sample fed (in feed order)."""
        return all_labels[np.concatenate(self.held_positions)] if self.held_positions else all_labels[:0]


def take_samples(batches: Iterable[Mapping[str, np.ndarray]], max_samples: int | None,
                 max_bytes: int | None = MAX_EVAL_BYTES, cut: bool = False) -> list[Mapping[str, np.ndarray]]:
    """The first whole batches of ``batches`` in memory, up to ``max_samples`` samples (all for None) and
    ``max_bytes`` of input data (no cap for None), read once. The feeds themselves, not copies: the
    sensitivity analysis keys its FP32 outputs by feed. ``cut``: the last feed cut to exactly ``max_samples``
    (a new feed) where a whole one would pass it."""
    held, samples, size = [], 0, 0
    for feed in batches:
        if max_samples is not None and samples >= max_samples or max_bytes is not None and size >= max_bytes:
            break
        if cut and max_samples is not None and samples + batch_samples(feed) > max_samples:
            feed = {name: np.asarray(value)[:max_samples - samples] for name, value in feed.items()}
        held.append(feed)
        samples += batch_samples(feed)
        size += feed_bytes(feed)
    return held


def counted(batches: Iterable[Mapping[str, np.ndarray]],
            progress: Callable[[int], None] | None) -> Iterator[Mapping[str, np.ndarray]]:
    """``batches``, calling ``progress(samples)`` after each one is used: a long pass reports as it goes."""
    for feed in batches:
        yield feed
        if progress is not None:
            progress(batch_samples(feed))


@dataclass
class EvalSet:
    """Evaluation batches held in memory, their labels in feed order (or None), and what they are."""

    batches: list[dict[str, np.ndarray]]
    labels: np.ndarray | None
    description: str

    @property
    def samples(self) -> int:
        return sum(batch_samples(b) for b in self.batches)


def read_eval_set(source: BatchSource, labels: Labels | None = None,
                  max_samples: int | None = DEFAULT_EVAL_SAMPLES) -> EvalSet:
    """``--eval-data``: its first samples in memory (:func:`take_samples`), with their labels lined up."""
    batches = take_samples(source, max_samples)
    fed = sum(batch_samples(b) for b in batches)
    truth = labels_for_fed(labels, source, fed) if labels is not None else None
    return EvalSet(batches, truth, f"{fed} samples of {source.description}")
