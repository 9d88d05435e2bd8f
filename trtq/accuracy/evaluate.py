"""Simulated INT8 vs FP32 on held-out data: the Q/DQ export run in onnxruntime, measured per output.

The INT8 model is exactly what ``trtq export --qdq`` writes (symmetric int8, per-tensor activation
scales from the ranges, per-channel weight scales), run with the session options under which
onnxruntime computes the plain fake-quantised arithmetic (see :mod:`trtq.export.compare`). The
comparison loop is :func:`trtq.export.compare.compare_runs`: one FP32 run per batch serves any
number of INT8 candidates (methods, sensitivity configurations). Labels, when given, add top-1/top-5
accuracy of the FP32 model and of each candidate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from trtq.accuracy.holdout import counted
from trtq.accuracy.judge import Judge, Judgement
from trtq.accuracy.labels import Labels, check_labels, labels_for_fed
from trtq.accuracy.targets import MetricTracker, logits_index
from trtq.capture import with_extra_outputs
from trtq.data import BatchSource
from trtq.errors import TrtqError
from trtq.export import OutputAgreement, QdqExport, export_qdq
from trtq.export.compare import Run, compare_runs, fake_quant_session, session_runner
from trtq.model import Model
from trtq.segments import batch_samples, micro_batches, resolve_budget, samples_within_budget, shape_key
from trtq.stats import StatsCollector

TOP_K = 5


@dataclass
class Outcome:
    """How one INT8 candidate agrees with FP32 (and, with labels, how accurate it is)."""

    rows: list[OutputAgreement]
    accuracy: dict[str, float | None] | None = None  # {"top1", "top5"} as fractions
    logits: str | None = None

    @property
    def _measured(self) -> list[OutputAgreement]:
        """The float outputs (integer/bool outputs such as argmax indices have no meaningful SQNR), or every
        output when none is float."""
        return [r for r in self.rows if r.floating] or self.rows

    @property
    def sqnr_db(self) -> float:
        """The worst float output's SQNR (inf when every output is identical)."""
        return min(r.sqnr_db for r in self._measured)

    @property
    def cosine(self) -> float:
        return min(r.cosine for r in self.rows)

    @property
    def noise(self) -> float:
        """Error power relative to signal power, averaged over the outputs (10^(-SQNR/10))."""
        return float(np.mean([10.0 ** (-r.sqnr_db / 10.0) if math.isfinite(r.sqnr_db) else
                              (0.0 if r.sqnr_db > 0 else math.inf) for r in self._measured]))

    @property
    def top1_agreement(self) -> float | None:
        row = next((r for r in self.rows if r.name == self.logits), None)
        return None if row is None else row.top1_agreement


@dataclass
class Comparison:
    """FP32 vs several candidates on one pass over the data."""

    samples: int
    outcomes: dict[str, Outcome]
    reference_accuracy: dict[str, float | None] | None = None
    logits: str | None = None
    metric_scores: dict | None = None  # task metric: candidate key (None: FP32) -> mean score
    judgement: Judgement | None = None  # per-sample losses on the target's measure (trtq.accuracy.judge)

    def drop_points(self, key: str) -> float | None:
        """FP32 top-1 minus the candidate's, in percentage points (None without labels)."""
        if self.reference_accuracy is None:
            return None
        return 100.0 * (self.reference_accuracy["top1"] - self.outcomes[key].accuracy["top1"])

    def metric_drop_points(self, key: str) -> float | None:
        """The task metric's FP32 score minus the candidate's, x 100 (None without a metric)."""
        if not self.metric_scores:
            return None
        return 100.0 * (self.metric_scores[None] - self.metric_scores[key])


class Predictions:
    """Top-k class indices of the logits output per sample, for the reference and every candidate."""

    def __init__(self, index: int, name: str, keys: Iterable[str]):
        self.index, self.name = index, name
        self.top: dict[str | None, list[np.ndarray]] = {key: [] for key in [None, *keys]}
        self.classes = 0

    def _top(self, logits: np.ndarray) -> np.ndarray:
        array = np.asarray(logits)
        if array.ndim < 2:
            raise TrtqError(f"output '{self.name}' has shape {list(array.shape)}; accuracy needs one row of class "
                            "scores per sample ([batch, classes])")
        rows = array.reshape(array.shape[0], -1)
        self.classes = rows.shape[1]
        order = np.argsort(-rows, axis=1, kind="stable")  # ties: the first index, as argmax
        return order[:, :TOP_K]

    def observe(self, reference: list[np.ndarray], outputs: dict[str, list[np.ndarray]]) -> None:
        self.top[None].append(self._top(reference[self.index]))
        for key, values in outputs.items():
            self.top[key].append(self._top(values[self.index]))

    def merge(self, other: Predictions) -> None:
        """Append the predictions of later batches (another shard of the same pass, in order)."""
        for key, parts in other.top.items():
            self.top[key].extend(parts)
        self.classes = max(self.classes, other.classes)

    @property
    def samples(self) -> int:
        return sum(len(t) for t in self.top[None])

    def accuracy(self, labels: np.ndarray) -> dict[str | None, dict[str, float | None]]:
        if labels.size and (labels.min() < 0 or labels.max() >= self.classes):
            bad = int(labels[(labels < 0) | (labels >= self.classes)][0])
            raise TrtqError(f"label {bad} is out of range for output '{self.name}' with {self.classes} classes")
        result = {}
        for key, parts in self.top.items():
            top = np.concatenate(parts) if parts else np.zeros((0, 1), dtype=np.int64)
            hits = top == labels[:, None]
            result[key] = {
                "top1": float(hits[:, 0].mean()) if len(top) else 0.0,
                "top5": float(hits[:, :TOP_K].any(axis=1).mean()) if self.classes >= TOP_K and len(top) else None,
            }
        return result


class CapturingRunner:
    """Runs a float model and folds chosen tensors of each batch into |x| statistics on the way.

    The tensors become extra outputs of the same run, so the statistics of the evaluation data cost
    no extra pass; graph inputs are taken from the feed. ``extra_feed`` adds fixed inputs (the layer
    switches of a switchable model, all off). Its :attr:`session` also serves plain runs of the model:
    the extra outputs are intermediate tensors the model computes anyway.

    Exposed tensors are all alive until the run ends, so a batch whose tensors would not fit in the memory
    budget (:func:`trtq.segments.resolve_budget`, ``--memory-budget``) runs in slices along axis 0 whose
    outputs are concatenated: the same outputs and statistics as one run (both are per sample), at a bounded
    peak (YOLOv8n at 640: ~237 MB a sample exposed).
    """

    def __init__(self, proto: onnx.ModelProto, names: Sequence[str], tensors: Iterable[str],
                 extra_feed: Mapping[str, np.ndarray] | None = None, memory_budget: int | None = None):
        self.names = list(names)
        self.tensors = list(dict.fromkeys(tensors))
        self.input_names = {i.name for i in proto.graph.input}
        self.fetched = [t for t in self.tensors if t not in self.input_names and t not in self.names]
        self.session = fake_quant_session(with_extra_outputs(proto, self.fetched))
        self.extra_feed = dict(extra_feed or {})
        self.stats = StatsCollector(self.tensors)
        self.budget = resolve_budget(memory_budget)[0]
        self._proto = proto
        self._run_samples: dict[tuple, int | None] = {}  # input shapes past axis 0 -> samples a run (None: all)
        self.largest_run = 0  # the most samples one run took (what the tests check the slicing by)

    def __call__(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        samples = batch_samples(feed)
        key = shape_key(feed)
        size = self._samples_a_run(key, feed)
        if size is None or size >= samples:
            return self._fold(feed, samples, self._run(feed))
        parts, seen = [], 0
        for part, count in micro_batches(feed, samples, size):
            outputs = self._run(part)
            if any(np.ndim(o) == 0 or np.shape(o)[0] != count for o in outputs):
                # an output without the samples on axis 0 (a count, a flat list of boxes): slices would not
                # concatenate to the batch's outputs. Nothing of this batch is folded yet: run it whole.
                self._run_samples[key] = None
                return self._fold(feed, samples, self._run(feed))
            seen += count
            parts.append(self._fold(part, count, outputs, batches=int(seen == samples)))
        return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]

    def sliced(self, run: Run) -> Run:
        """``run`` fed the way this runner slices a feed (decided when this runner first saw its shapes, so it
        must run first on each feed), outputs concatenated: the INT8 candidate of an evaluation runs on the
        same slices as its reference, so its own activation memory is bounded by the same budget."""

        def run_sliced(feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            samples = batch_samples(feed)
            size = self._run_samples.get(shape_key(feed))
            if size is None or size >= samples:
                return run(feed)
            parts = [run(part) for part, _ in micro_batches(feed, samples, size)]
            return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]

        return run_sliced

    def _samples_a_run(self, key: tuple, feed: Mapping[str, np.ndarray]) -> int | None:
        """Samples a run takes so that its exposed tensors stay within the budget; None for the whole batch
        (also when an output is declared with a fixed first dimension: it cannot carry the samples)."""
        if key not in self._run_samples:
            size = samples_within_budget(self._proto, feed, [*self.fetched, *self.names], self.budget)
            declared = {o.name: o.type.tensor_type.shape.dim for o in self._proto.graph.output}
            if any(declared.get(name) and declared[name][0].HasField("dim_value") for name in self.names):
                size = None
            self._run_samples[key] = size
        return self._run_samples[key]

    def _run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return session_runner(self.session, [*self.names, *self.fetched], self.extra_feed)(feed)

    def _fold(self, feed: Mapping[str, np.ndarray], samples: int, results: list[np.ndarray],
              batches: int = 1) -> list[np.ndarray]:
        """Fold a run's captured tensors into the statistics (a slice of a batch counts the batch only on its
        last run); returns its outputs."""
        outputs = results[: len(self.names)]
        captured = dict(zip(self.fetched, results[len(self.names):], strict=True))
        del results
        for name in self.tensors:
            if name in self.input_names:
                captured[name] = np.asarray(feed[name])
            elif name in self.names:
                captured[name] = outputs[self.names.index(name)]
        self.stats.update(captured, samples, batches)
        self.largest_run = max(self.largest_run, samples)
        return outputs


def compare_candidates(
    reference: Run,
    candidates: Mapping[str, Run],
    names: Sequence[str],
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    labels: Labels | None = None,
    source: BatchSource | None = None,
    logits: str | None = None,
    metric: MetricTracker | None = None,
    judge: Judge | None = None,
) -> Comparison:
    """One pass over ``batches``: FP32 once per batch, every candidate after it, accuracy with labels,
    the task metric's score of each candidate with ``metric`` (a fresh tracker per pass), and with ``judge``
    (a fresh one per pass) every candidate's per-sample losses on the target's measure."""
    names = list(names)
    index = logits_index(names, logits)
    if labels is not None:
        check_labels(labels, source)  # before the long part
    predictions = Predictions(index, names[index], candidates) if labels is not None else None
    observers = [o.observe for o in (predictions, metric, judge) if o is not None]

    def observe(reference_outputs: list[np.ndarray], outputs: dict[str, list[np.ndarray]]) -> None:
        for observer in observers:
            observer(reference_outputs, outputs)

    rows = compare_runs(reference, candidates, names, batches, observe=observe if observers else None)
    comparison = finish_comparison(rows, names, index, predictions, labels, source, metric)
    if judge is not None:
        comparison.judgement = judge.result()
        if comparison.judgement.reference_score is not None and comparison.metric_scores is None:
            comparison.metric_scores = {None: comparison.judgement.reference_score,
                                        **comparison.judgement.candidate_scores}
    return comparison


def finish_comparison(rows: Mapping[str, list[OutputAgreement]], names: Sequence[str], index: int,
                      predictions: Predictions | None, labels: Labels | None, source: BatchSource | None,
                      metric: MetricTracker | None = None) -> Comparison:
    """The :class:`Comparison` of :func:`compare_candidates` from its pass's rows and predictions (also those
    of a pass run elsewhere in parts: ``trtq evaluate --ray``)."""
    samples = max((r.samples for per in rows.values() for r in per), default=0)
    reference_accuracy = None
    accuracy: dict = {}
    if predictions is not None:
        samples = predictions.samples
        truth = labels_for_fed(labels, source, samples)
        accuracy = predictions.accuracy(truth)
        reference_accuracy = accuracy[None]
    outcomes = {key: Outcome(per, accuracy.get(key), names[index]) for key, per in rows.items()}
    return Comparison(samples, outcomes, reference_accuracy, names[index],
                      metric.scores() if metric is not None else None)


@dataclass
class Evaluation:
    """``trtq evaluate``'s result: FP32 vs the simulated INT8 model on held-out data."""

    comparison: Comparison
    export: QdqExport
    amax: dict[str, float]
    stats: StatsCollector | None = None  # |x| statistics of the quantized activations on this data

    @property
    def outcome(self) -> Outcome:
        return self.comparison.outcomes["int8"]

    @property
    def samples(self) -> int:
        return self.comparison.samples

    def document(self) -> dict:
        """The ``--json`` document (accuracy present with labels; SQNR null when outputs are identical)."""
        outputs = {r.name: r.document() for r in self.outcome.rows}
        document: dict = {"samples": self.samples, "outputs": outputs}
        if self.comparison.reference_accuracy is not None:
            document["accuracy"] = {"fp32": self.comparison.reference_accuracy, "int8": self.outcome.accuracy}
            document["accuracy_output"] = self.comparison.logits
        document["quantized_nodes"] = list(self.export.plan.quantized_nodes)
        return document


def evaluate_int8(
    model: Model,
    amax: Mapping[str, float],
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    exclude: Iterable[str] = (),
    labels: Labels | None = None,
    logits: str | None = None,
    collect_stats: bool = False,
    ranges_source: str = "the ranges",
    progress: Callable[[int], None] | None = None,
) -> Evaluation:
    """Export the Q/DQ model from ``amax`` and compare it with ``model`` on ``batches`` (``progress(samples)``
    after each batch).

    ``collect_stats`` also gathers the |x| statistics of every tensor that gets an activation
    Q/DQ, on this data (for the histogram figures), during the same FP32 runs.
    """
    export = export_qdq(model, amax, exclude=exclude, ranges_source=ranges_source)
    names = list(model.output_names)
    capture = None
    if collect_stats:
        capture = CapturingRunner(model.proto, names, export.activation_tensors)
        reference = capture
    else:
        reference = session_runner(fake_quant_session(model.proto), names)
    candidate = session_runner(fake_quant_session(export.model), names)
    if capture is not None:
        candidate = capture.sliced(candidate)
    comparison = compare_candidates(reference, {"int8": candidate}, names, counted(batches, progress), labels=labels,
                                    source=batches if isinstance(batches, BatchSource) else None, logits=logits)
    return Evaluation(comparison, export, dict(amax), capture.stats if capture is not None else None)


def format_accuracy(comparison: Comparison, keys: Sequence[str] = ("int8",)) -> list[str]:
    """Accuracy lines: FP32, then each candidate with its drop in points."""
    if comparison.reference_accuracy is None:
        return []

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f} %"

    ref = comparison.reference_accuracy
    lines = [f"accuracy on {comparison.samples} labelled samples (output '{comparison.logits}'):",
             f"  {'FP32':<10} top-1 {pct(ref['top1']):>8}  top-5 {pct(ref['top5']):>8}"]
    for key in keys:
        acc = comparison.outcomes[key].accuracy
        drop = comparison.drop_points(key)
        lines.append(f"  {key.upper() if key == 'int8' else key:<10} top-1 {pct(acc['top1']):>8}  "
                     f"top-5 {pct(acc['top5']):>8}  drop {drop:+.2f} points")
    return lines
