"""What a drop is measured on, and the per-sample losses of every candidate of one evaluation pass.

A :class:`Measure` is chosen once per run (:func:`choose_measure`), in this order:

1. ``--metric FILE.py:FUNC``: the user's task metric, FP32 score minus INT8 score (a metric that returns one
   number per sample is judged per sample; one number per batch, per batch);
2. ``--labels``: top-1 accuracy of the class-score output, FP32 minus INT8, per sample (-1, 0 or +1);
3. otherwise the task proxies of :mod:`.proxies`, each output by what it means (``--metric NAME[=OUTPUT]`` names
   them, else they are inferred): a sample's loss is its worst judged output's ``1 - agreement``.

A :class:`Judge` is the observer of one pass (:func:`trtq.export.compare.compare_runs`): per batch it scores the
FP32 reference and every candidate, keeping one loss per sample and candidate, and the per-sample relative
error power (the continuous tie-break). :class:`Judgement` turns them into drops with intervals
(:mod:`.uncertainty`) and answers "is this candidate better than that one beyond the noise".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from trtq.accuracy.proxies import Proxy, proxy_noise, relative_noise
from trtq.accuracy.targets import TaskMetric, logits_index
from trtq.accuracy.uncertainty import Estimate, better_beyond_noise, combine_worst, estimate
from trtq.errors import TrtqError


@dataclass(frozen=True)
class Measure:
    """The drop's measure: exactly one of ``metric``, ``labelled`` or ``proxies``."""

    metric: TaskMetric | None = None
    labelled: bool = False
    proxies: Mapping[str, Proxy] = field(default_factory=dict)
    logits: str | None = None  # the class-score output of ``labelled``

    @property
    def kind(self) -> str:
        return "metric" if self.metric is not None else "labels" if self.labelled else "proxies"

    def describe(self) -> str:
        if self.metric is not None:
            return f"metric {self.metric.name}"
        if self.labelled:
            return "top-1 accuracy"
        return "task proxy " + ", ".join(f"{proxy.name} of '{name}'" for name, proxy in self.proxies.items())

    def document(self) -> dict:
        document: dict = {"kind": self.kind, "describe": self.describe()}
        if self.proxies and self.metric is None and not self.labelled:
            document["outputs"] = {name: proxy.document() for name, proxy in self.proxies.items()}
        return document

    def judge(self, names: Sequence[str], labels: np.ndarray | None = None) -> Judge:
        """A fresh observer for one pass over evaluation batches whose labels (in order) are ``labels``."""
        if self.labelled and labels is None:
            raise TrtqError("the accuracy measure needs the evaluation labels")
        return Judge(self, list(names), labels)


def choose_measure(*, metric: TaskMetric | None, labelled: bool, proxies: Mapping[str, Proxy],
                   logits: str | None = None) -> Measure:
    """The measure of the module docstring's order."""
    if metric is not None:
        return Measure(metric=metric)
    if labelled:
        return Measure(labelled=True, logits=logits)
    if not proxies:
        raise TrtqError("no output to judge: the model has no output a proxy applies to")
    return Measure(proxies=dict(proxies))


class Judge:
    """Per-sample losses of every candidate against FP32 in one pass (an ``observe`` hook)."""

    def __init__(self, measure: Measure, names: list[str], labels: np.ndarray | None):
        self.measure, self.names, self.labels = measure, names, labels
        self.offset = 0
        self.losses: dict[str, list[np.ndarray]] = {}
        self.weights: list[np.ndarray] = []
        self.per_output: dict[str, dict[str, list[np.ndarray]]] = {}
        self.noise: dict[str, list[np.ndarray]] = {}
        self.reference_scores: list[np.ndarray] = []
        self.candidate_scores: dict[str, list[np.ndarray]] = {}
        self._index = logits_index(names, measure.logits) if measure.labelled else 0

    def observe(self, reference: list[np.ndarray], outputs: dict[str, list[np.ndarray]]) -> None:
        if self.measure.kind == "proxies":  # the samples axis of a judged output (a [T, B, C] sequence: 1)
            name, proxy = next(iter(self.measure.proxies.items()))
            samples = _samples_of(reference[self.names.index(name)], proxy)
        else:
            samples = int(np.shape(reference[0])[0]) if np.ndim(reference[0]) else 1
        truth = None
        if self.labels is not None:
            truth = self.labels[self.offset:self.offset + samples]
        self.offset += samples
        fp32 = dict(zip(self.names, reference, strict=True))
        if self.measure.metric is not None:
            reference_score = _scores(self.measure.metric(fp32, fp32, truth, per_sample=True), samples)
            self.reference_scores.append(reference_score)
            self.weights.append(np.full(len(reference_score), samples / len(reference_score)))
        elif self.measure.labelled:
            self.reference_scores.append(_correct(reference[self._index], truth))
            self.weights.append(np.ones(samples))
        else:
            self.weights.append(np.ones(samples))
        for key, values in outputs.items():
            self._score(key, fp32, dict(zip(self.names, values, strict=True)), truth, samples)

    def _score(self, key: str, fp32: dict, int8: dict, truth: np.ndarray | None, samples: int) -> None:
        measure = self.measure
        noise = []
        for name, proxy in (measure.proxies or {}).items():
            noise.append(proxy_noise(proxy, np.moveaxis(fp32[name], proxy.batch_axis, 0),
                                     np.moveaxis(int8[name], proxy.batch_axis, 0)))
        if not noise:  # the metric / labels measures: the noise of every float output
            noise = [relative_noise(fp32[n], int8[n]) for n in self.names
                     if np.issubdtype(np.asarray(fp32[n]).dtype, np.floating) and np.ndim(fp32[n])
                     and np.shape(fp32[n])[0] == samples]
        self.noise.setdefault(key, []).append(np.mean(noise, axis=0) if noise else np.zeros(samples))
        if measure.metric is not None:
            score = _scores(measure.metric(fp32, int8, truth, per_sample=True), samples)
            if len(score) != len(self.reference_scores[-1]):
                raise TrtqError(f"--metric {measure.metric.name} returned {len(score)} values for one batch and "
                                f"{len(self.reference_scores[-1])} for another run of it")
            self.candidate_scores.setdefault(key, []).append(score)
            loss = self.reference_scores[-1] - score
        elif measure.labelled:
            correct = _correct(int8[self.names[self._index]], truth)
            self.candidate_scores.setdefault(key, []).append(correct)
            loss = self.reference_scores[-1] - correct
        else:
            per = {name: 1.0 - proxy.agreement(fp32[name], int8[name]) for name, proxy in measure.proxies.items()}
            outputs = self.per_output.setdefault(key, {})
            for name, value in per.items():
                outputs.setdefault(name, []).append(value)
            loss = combine_worst(list(per.values()))
        self.losses.setdefault(key, []).append(np.asarray(loss, dtype=np.float64))

    def result(self) -> Judgement:
        join = (lambda parts: np.concatenate(parts) if parts else np.zeros(0))  # noqa: E731
        return Judgement(
            self.measure,
            {key: join(parts) for key, parts in self.losses.items()},
            join(self.weights),
            {key: {name: join(parts) for name, parts in per.items()} for key, per in self.per_output.items()},
            {key: join(parts) for key, parts in self.noise.items()},
            reference_score=(float(np.average(join(self.reference_scores), weights=join(self.weights)))
                             if self.reference_scores else None),
            candidate_scores={key: float(np.average(join(parts), weights=join(self.weights)))
                              for key, parts in self.candidate_scores.items()},
            score_estimates=self._score_estimates(join),
        )

    def _score_estimates(self, join) -> dict[str, Estimate]:
        """FP32's (``"fp32"``) and each candidate's task score as an estimate with its 95 % interval (in points:
        100 x the mean score), so that a score is never shown without its uncertainty."""
        if not self.reference_scores:
            return {}
        unit = unit_weights(join(self.weights))
        parts = {"fp32": self.reference_scores, **self.candidate_scores}
        return {key: estimate(join(values), unit) for key, values in parts.items()}


def unit_weights(weights: np.ndarray) -> np.ndarray | None:
    """None for plain per-sample losses (each unit counts once), else each unit's samples."""
    return None if weights.size == 0 or np.all(weights == 1) else weights


def _samples_of(values: np.ndarray, proxy: Proxy) -> int:
    shape = np.shape(values)
    return int(shape[proxy.batch_axis]) if len(shape) > proxy.batch_axis else 1


def _scores(value: float | np.ndarray, samples: int) -> np.ndarray:
    """A metric's return as per-unit scores: one per sample when it returned ``samples`` numbers, else one
    for the batch."""
    array = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if array.size not in (1, samples):
        raise TrtqError(f"a metric returned {array.size} values for a batch of {samples} samples: return one "
                        "number for the batch or one per sample")
    return array


def _correct(logits: np.ndarray, truth: np.ndarray | None) -> np.ndarray:
    rows = np.asarray(logits).reshape(np.shape(logits)[0], -1)
    return (np.argmax(rows, axis=1) == truth).astype(np.float64)


@dataclass
class Judgement:
    """The per-sample losses of one pass: candidate key -> losses (aligned across candidates)."""

    measure: Measure
    losses: dict[str, np.ndarray]
    weights: np.ndarray
    per_output: dict[str, dict[str, np.ndarray]]
    noise: dict[str, np.ndarray]
    reference_score: float | None = None
    candidate_scores: dict[str, float] = field(default_factory=dict)
    score_estimates: dict[str, Estimate] = field(default_factory=dict)  # "fp32" and each candidate, with intervals

    @property
    def unit_weights(self) -> np.ndarray | None:
        return unit_weights(self.weights)

    def drop(self, key: str) -> Estimate:
        return estimate(self.losses[key], self.unit_weights)

    def output_drops(self, key: str) -> dict[str, Estimate]:
        return {name: estimate(values) for name, values in self.per_output.get(key, {}).items()}

    def better(self, key: str, than: str) -> bool:
        """``key``'s drop lower than ``than``'s beyond the noise (paired, same samples)."""
        return better_beyond_noise(self.losses[key], self.losses[than], self.unit_weights)

    def quieter(self, key: str, than: str) -> bool:
        """``key``'s output noise (per-sample relative error power) lower than ``than``'s beyond the noise."""
        return better_beyond_noise(self.noise[key], self.noise[than], self.unit_weights)

    def mean_noise(self, key: str) -> float:
        values = self.noise.get(key)
        return float(np.mean(values)) if values is not None and values.size else 0.0

    def noise_db(self, key: str) -> float:
        """The mean per-sample noise as a SQNR-like figure in dB (inf without noise)."""
        noise = self.mean_noise(key)
        return math.inf if noise <= 0 else -10.0 * math.log10(noise)
