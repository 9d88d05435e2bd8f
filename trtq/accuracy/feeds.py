"""The judged samples fed to onnxruntime several at a time: every pass of the quantize loop runs them all.

Why: the data sources yield batches of the model's batch size, 1 by default, and the loop runs its judged samples
through FP32 and each candidate many times (range choice, corrections, ranking, each keep step, the final check).
On the 2-core machine of ``docs/accuracy.md`` (``scripts/bench_feeds.py``) a ViT-S's Q/DQ model ran an image in
0.187 s alone and 0.164 s in a feed of 8 (FP32: 0.171 and 0.145 s): 13-15 % of every pass.

Rules, so that nothing but the time changes:

- only batches of one fold are merged (a feed goes to its fold's model), and only consecutive ones of that fold;
  the merged feeds of the folds are dealt in turn, so a pass that stops early has seen every fold;
- every sample keeps its own loss: the new order of the samples is returned, and labels follow it;
- only where the model is known to take them: the caller checks the first merged feed against its parts
  (:func:`same_outputs`) and keeps the batches as they were otherwise (a graph with a fixed Reshape, an output whose
  batch is not on axis 0);
- at most ``FEED_SAMPLES`` samples and ``MAX_FEED_BYTES`` of input a feed: big inputs (a 640x640 page) gain little
  and would multiply the activations held at once. Both are judgements resting on one model: on the ViT-S a feed of
  16 ran FP32 6 % faster than one of 8 (0.136 against 0.145 s a sample) and its Q/DQ model 2 % (0.160 against
  0.164 s), and the bytes cap is there for memory, not measured against it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from trtq.segments import batch_samples, shape_key

FEED_SAMPLES = 8
MAX_FEED_BYTES = 8 << 20
Feed = Mapping[str, np.ndarray]


@dataclass
class Merged:
    """The merged feeds, the fold of each, the original batches each holds, and each judged sample's position in
    the original order (``order[new position] = old position``)."""

    feeds: list[dict[str, np.ndarray]]
    folds: list[int]
    parts: list[list[int]]
    order: np.ndarray

    def fold_of_feed(self) -> dict[int, int]:
        return {id(feed): fold for feed, fold in zip(self.feeds, self.folds, strict=True)}


def merge_feeds(batches: Sequence[Feed], fold_of: Callable[[Feed], int], samples: int = FEED_SAMPLES,
                max_bytes: int = MAX_FEED_BYTES) -> Merged | None:
    """``batches`` merged by the module docstring's rules; None when nothing would merge (one batch, batches of
    different shapes or already as large as a feed)."""
    if len(batches) < 2:
        return None
    key = shape_key(batches[0])
    counts = [batch_samples(b) for b in batches]
    if any(shape_key(b) != key for b in batches) or min(counts) < 1:
        return None
    per_sample = sum(np.asarray(v).nbytes for v in batches[0].values()) / counts[0]
    size = min(samples, max(1, int(max_bytes // max(per_sample, 1))))
    starts = np.concatenate([[0], np.cumsum(counts)])
    by_fold: dict[int, list[list[int]]] = {}
    for index, batch in enumerate(batches):
        groups = by_fold.setdefault(fold_of(batch), [])
        if groups and sum(counts[i] for i in groups[-1]) + counts[index] <= size:
            groups[-1].append(index)
        else:
            groups.append([index])
    if all(len(group) == 1 for groups in by_fold.values() for group in groups):
        return None
    parts, folds = [], []
    for turn in range(max(len(groups) for groups in by_fold.values())):
        for fold in sorted(by_fold):
            if turn < len(by_fold[fold]):
                parts.append(by_fold[fold][turn])
                folds.append(fold)
    feeds = [{name: np.concatenate([np.asarray(batches[i][name]) for i in group]) for name in batches[0]}
             for group in parts]
    order = np.concatenate([np.arange(starts[i], starts[i + 1]) for group in parts for i in group])
    return Merged(feeds, folds, parts, order)


def same_outputs(merged: Sequence[np.ndarray], separate: Sequence[Sequence[np.ndarray]]) -> bool:
    """Whether a merged feed's outputs are its parts' outputs stacked on axis 0 (to float rounding: another batch
    size may sum in another order)."""
    for index, output in enumerate(merged):
        pieces = [np.asarray(outputs[index]) for outputs in separate]
        if any(p.ndim == 0 for p in pieces) or np.ndim(output) == 0:
            return False
        stacked = np.concatenate(pieces)
        output = np.asarray(output)
        if stacked.shape != output.shape or stacked.dtype != output.dtype:
            return False
        if np.issubdtype(output.dtype, np.floating):
            scale = float(np.max(np.abs(stacked))) if stacked.size else 0.0
            if not np.allclose(output, stacked, rtol=1e-3, atol=1e-4 * max(scale, 1e-12), equal_nan=True):
                return False
        elif not np.array_equal(output, stacked):
            return False
    return True
