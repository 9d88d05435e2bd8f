"""What "accurate enough" means for ``trtq quantize``: the target, the measures it is judged on,
and the user's own task metric (``--metric FILE.py:FUNC``).

Measures (all computed on the same evaluation pass, FP32 vs the INT8 candidate):

* **drop** in points, on the measure of :mod:`.judge`: with ``--metric FILE.py:FUNC``, 100 x (the metric's
  FP32 score minus its INT8 score: return fractions, see :class:`TaskMetric`); else with labels, the top-1
  accuracy drop; else the task proxies of :mod:`.proxies`: each output judged by what it means (top-1
  agreement of class scores, greedy-decoded CTC sequences, IoU of a thresholded probability map, cosine of
  anything else). Every drop carries its 95 % interval (:mod:`.uncertainty`).
* **SQNR** of the worst output (dB): reported for every configuration as a diagnostic; a target only when
  asked (``--min-sqnr``). It predicts neither a CTC decoder's string nor a thresholded map: a text detector
  whose map matched FP32's at IoU 0.976 all-INT8 measured 18.7 dB, so a default SQNR bound refused good models.

Default target (when the user names none): at most ``DEFAULT_MAX_DROP`` point lost on the measure — the
accuracy a careful engineer accepts for INT8.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trtq.data.base import one_line
from trtq.data.script import load_function, parse_script_spec
from trtq.errors import TrtqError

DEFAULT_MAX_DROP = 1.0  # points


@dataclass(frozen=True)
class Target:
    """The accuracy target: every given bound must hold."""

    min_sqnr: float | None = None
    max_drop: float | None = None
    drop_measure: str | None = None  # "metric NAME", "top-1 accuracy", "top-1 agreement"
    defaulted: bool = False

    def describe(self) -> str:
        parts = []
        if self.min_sqnr is not None:
            parts.append(f"SQNR >= {self.min_sqnr:g} dB")
        if self.max_drop is not None:
            parts.append(f"{self.drop_measure} drop <= {self.max_drop:g} points")
        return " and ".join(parts) + (" (default)" if self.defaulted else "")

    def meets(self, sqnr_db: float, drop: float | None) -> bool:
        if self.min_sqnr is not None and not sqnr_db >= self.min_sqnr:
            return False
        return self.max_drop is None or (drop is not None and drop <= self.max_drop)

    def document(self) -> dict:
        return {"min_sqnr_db": self.min_sqnr, "max_drop_points": self.max_drop, "drop_measure": self.drop_measure,
                "default": self.defaulted}


def resolve_target(min_sqnr: float | None, max_drop: float | None, measure: str) -> Target:
    """The target from the user's bounds, or the default one (module docstring); ``measure`` says what the drop is
    measured on (:meth:`trtq.accuracy.judge.Measure.describe`)."""
    for name, value in (("--min-sqnr", min_sqnr), ("--max-drop", max_drop)):
        if value is not None and not math.isfinite(value):
            raise TrtqError(f"{name} must be a finite number, got {value}")
    if max_drop is not None and max_drop < 0:
        raise TrtqError(f"--max-drop must be >= 0 points, got {max_drop}")
    if min_sqnr is not None or max_drop is not None:
        return Target(min_sqnr, max_drop, measure if max_drop is not None else None)
    return Target(None, DEFAULT_MAX_DROP, measure, defaulted=True)


def looks_like_class_scores(shape: Sequence[int]) -> bool:
    """A ``[batch, classes]`` output (two or more classes): where top-1 agreement means something."""
    return len(shape) == 2 and shape[1] > 1


def logits_index(names: Sequence[str], logits: str | None) -> int:
    """Which output holds the class scores: ``logits`` by name, else the first output."""
    if logits is None:
        return 0
    if logits not in names:
        raise TrtqError(f"--logits '{logits}' is not an output of the model (its outputs: {', '.join(names)})")
    return list(names).index(logits)


def has_class_scores(outputs: Sequence[np.ndarray], names: Sequence[str], logits: str | None = None) -> bool:
    """Whether the logits output (``logits``, else the first) of one batch's outputs holds class scores."""
    return looks_like_class_scores(np.shape(outputs[logits_index(list(names), logits)]))


MetricFunction = Callable[[dict, dict, "np.ndarray | None"], float]


@dataclass
class TaskMetric:
    """The user's task metric: ``FUNC(fp32, int8, labels) -> float``, higher is better.

    Contract (documented in docs/quantize.md): called once per evaluation batch with ``fp32`` and
    ``int8`` dicts of output name -> numpy array (the batch dimension first) and ``labels`` (the
    batch's integer labels, or None without ``--labels``); returns one finite number for the batch,
    or one per sample (then the drop's interval is per sample, tighter than per batch).
    The run's score is the sample-weighted mean over batches. trtq also calls it with the FP32
    outputs in both places (``FUNC(fp32, fp32, labels)``): that is the reference score, so the
    drop is ``reference - int8`` — a metric comparing INT8 with FP32 (box F1 vs the FP32 boxes)
    has reference 1.0, one judging against labels (exact-match accuracy) its FP32 accuracy.
    The drop is always 100 x (reference - INT8) points, so a metric should return fractions in [0, 1], as
    accuracies are.
    """

    name: str
    function: MetricFunction

    def __call__(self, fp32: Mapping[str, np.ndarray], int8: Mapping[str, np.ndarray],
                 labels: np.ndarray | None, per_sample: bool = False) -> float | np.ndarray:
        """The batch's score; ``per_sample``: as an array (one number per sample when the metric returns one per
        sample, else the batch's one number), so that its uncertainty can be known."""
        try:
            value = self.function(dict(fp32), dict(int8), labels)
        except Exception as exc:  # the user's code: any failure is theirs to see in one line
            raise TrtqError(f"--metric {self.name} raised {one_line(exc)}") from exc
        try:
            numbers = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TrtqError(f"--metric {self.name} returned {type(value).__name__}, not a number") from exc
        if numbers.ndim > 1 or numbers.size == 0:
            raise TrtqError(f"--metric {self.name} returned an array of shape {list(numbers.shape)}: return one "
                            "number for the batch or one per sample")
        if not np.all(np.isfinite(numbers)):
            bad = numbers[~np.isfinite(numbers)].ravel()[0]
            raise TrtqError(f"--metric {self.name} returned {bad}, not a finite number")
        if per_sample:
            return numbers.ravel()
        return float(numbers.mean())


def load_metric(spec: str) -> TaskMetric:
    """``FILE.py:FUNC`` (FUNC defaults to ``metric``) -> the loaded :class:`TaskMetric`."""
    path, function = parse_script_spec(spec)
    if function == "load_data":  # parse_script_spec's default is the data loader's
        function = "metric"
    return TaskMetric(f"{Path(path).name}:{function}", load_function(Path(path), function, "--metric script"))


@dataclass
class MetricTracker:
    """Scores every candidate of an evaluation pass with the task metric, batch by batch
    (an ``observe`` hook of :func:`trtq.export.compare.compare_runs`)."""

    metric: TaskMetric
    names: list[str]
    labels: np.ndarray | None = None
    offset: int = 0
    weights: float = 0.0
    sums: dict = field(default_factory=dict)

    def observe(self, reference: list[np.ndarray], outputs: dict[str, list[np.ndarray]]) -> None:
        fp32 = dict(zip(self.names, reference, strict=True))
        samples = int(np.asarray(reference[0]).shape[0]) if np.ndim(reference[0]) else 1
        labels = None
        if self.labels is not None:
            labels = self.labels[self.offset:self.offset + samples]
        self.offset += samples
        self.weights += samples
        self.sums[None] = self.sums.get(None, 0.0) + samples * self.metric(fp32, fp32, labels)
        for key, values in outputs.items():
            score = self.metric(fp32, dict(zip(self.names, values, strict=True)), labels)
            self.sums[key] = self.sums.get(key, 0.0) + samples * score

    def scores(self) -> dict:
        """Candidate key (None: the FP32 reference) -> mean score."""
        return {key: total / self.weights for key, total in self.sums.items()} if self.weights else {}
