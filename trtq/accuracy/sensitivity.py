"""Which layers make INT8 inaccurate, why, and which few to keep in higher precision.

Ranking (one pass over a small evaluation set, one onnxruntime session, see :mod:`.switch`):

* ``alone`` (default): each quantized layer in INT8 with everything else in float. Per batch: the
  float run (the reference) plus one run per layer, ``layers + 1`` forward passes. A layer's score
  is its share of the summed output noise of all single-layer runs.
* ``all-but-one``: everything in INT8 except one layer. Per batch: reference, all-INT8, and one run
  per layer (``layers + 2``). A layer's score is the share of the all-INT8 output noise that goes
  away when it alone stays in float.

Output noise = error power / signal power of each output (10^(-SQNR/10)), averaged over outputs.

Error type of a layer (from the |x| statistics of its INT8 activation inputs on the same data, with
the ranges being evaluated, amax ``a`` and step ``s = a / 127``):

* clipping error = sum over values beyond the range of ``(|x| - a)^2``;
* rounding error = sum over in-range non-zero values of ``s^2 / 12`` (uniform rounding noise), or
  ``x^2`` for values below half a step, which round to zero.

Whichever is larger is the error type: "clipping" says the range is too small for the data (a
larger range, e.g. a higher percentile, or minmax, helps); "rounding" says 8-bit steps are too
coarse where the data lives (a smaller range helps only if the tail is negligible; otherwise keep
the layer in FP16).

Keep set (``target_sqnr`` / ``max_drop``): walk down the ranking, add each layer to the set kept in
float, and evaluate the model with that set for real (one run per batch per step) until the target
holds. The set goes to ``trtq export --qdq --exclude @FILE`` (one node name per line).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from trtq.accuracy.downstream import DownstreamRuns
from trtq.accuracy.evaluate import CapturingRunner, Comparison, compare_candidates
from trtq.accuracy.holdout import counted, take_samples
from trtq.accuracy.judge import Measure
from trtq.accuracy.labels import Labels
from trtq.accuracy.switch import Layer, SwitchableModel, build_switchable
from trtq.accuracy.targets import MetricTracker, TaskMetric, logits_index
from trtq.data import BatchSource
from trtq.errors import TrtqError
from trtq.export import QdqExport, export_qdq
from trtq.export.compare import session_runner
from trtq.export.qdq import INT8_MAX
from trtq.model import Model
from trtq.segments import batch_samples, resolve_budget, slices_within_budget
from trtq.stats import StatsCollector, TensorStats

MODES = ("alone", "all-but-one")
MIN_GAIN_DB = 0.1  # a kept layer must raise the SQNR at least this much (or lower the drop)
_ALL_INT8 = "\0all-int8"  # a configuration key no node name can take
_STEP_WIDTH = 28


@dataclass(frozen=True)
class QuantizationError:
    """Expected squared quantization error of one tensor's values, split by cause (sums over values)."""

    clipping: float
    rounding: float
    clipped_fraction: float

    @property
    def kind(self) -> str:
        return "clipping" if self.clipping > self.rounding else "rounding"


def quantization_error(stats: TensorStats, amax: float) -> QuantizationError:
    """Clipping vs rounding error of symmetric int8 with range ``amax`` on the values ``stats`` saw.

    Computed on the fine |x| histogram at the bin centres: values beyond ``amax`` add
    ``(|x| - amax)^2``; values within add ``s^2/12`` (``s = amax/127``), or ``x^2`` when below ``s/2``
    (they round to zero). Exact zeros add nothing.
    """
    if stats.count == 0 or stats.exponent is None or not amax > 0:
        return QuantizationError(0.0, 0.0, 0.0)
    counts, centres = stats.nonzero_histogram()
    beyond = centres > amax
    clipping = float(np.sum(counts[beyond] * (centres[beyond] - amax) ** 2))
    step = amax / INT8_MAX
    inside = ~beyond
    rounding = float(np.sum(counts[inside] * np.minimum(step * step / 12.0, centres[inside] ** 2)))
    return QuantizationError(clipping, rounding, stats.fraction_above(amax))


@dataclass
class LayerSensitivity:
    layer: Layer
    score: float  # share of the output noise attributed to this layer (higher = more harmful)
    sqnr_db: float  # of the configuration measured for it (alone: only it in INT8; all-but-one: only it float)
    top1_agreement: float | None
    accuracy: float | None  # top-1 of that configuration, with labels
    error: QuantizationError

    @property
    def error_type(self) -> str:
        return self.error.kind

    def document(self) -> dict:
        return {
            "node": self.layer.node,
            "op_type": self.layer.op_type,
            "tensors": list(self.layer.tensors),
            "weights": list(self.layer.weights),
            "score": self.score,
            "sqnr_db": _finite(self.sqnr_db),
            "top1_agreement": self.top1_agreement,
            "top1_accuracy": self.accuracy,
            "error_type": self.error_type,
            "clipping_error": self.error.clipping,
            "rounding_error": self.error.rounding,
            "clipped_fraction": self.error.clipped_fraction,
        }


@dataclass
class KeepStep:
    """One verified configuration of the greedy search: ``kept`` in float, the rest INT8."""

    kept: list[str]
    sqnr_db: float
    top1_agreement: float | None
    accuracy: float | None
    drop_points: float | None  # accuracy drop (labels) or 100 x (1 - top-1 agreement), in points
    meets_target: bool
    accepted: bool = True  # False: tried, did not help, not kept

    def document(self) -> dict:
        return {"kept": self.kept, "sqnr_db": _finite(self.sqnr_db), "top1_agreement": self.top1_agreement,
                "top1_accuracy": self.accuracy, "drop_points": self.drop_points, "meets_target": self.meets_target,
                "accepted": self.accepted}


@dataclass
class SensitivityResult:
    mode: str
    samples: int
    ranking: list[LayerSensitivity]
    reference_accuracy: float | None = None
    all_int8: KeepStep | None = None
    steps: list[KeepStep] = field(default_factory=list)
    keep: list[str] | None = None
    target: dict = field(default_factory=dict)
    verified_samples: int | None = None  # samples of the keep steps (the ranking may use fewer)

    def document(self) -> dict:
        document: dict = {
            "mode": self.mode,
            "samples": self.samples,
            "ranking": [entry.document() for entry in self.ranking],
        }
        if self.reference_accuracy is not None:
            document["fp32_top1_accuracy"] = self.reference_accuracy
        if self.all_int8 is not None:
            document["all_int8"] = self.all_int8.document()
        if self.keep is not None:
            document["target"] = self.target
            document["keep"] = self.keep
            document["steps"] = [step.document() for step in self.steps]
        return document


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class SensitivityAnalysis:
    """Holds the switchable model, its one session, the evaluation batches and their float outputs,
    so that ranking and every verification step reuse them (the data is read once)."""

    def __init__(self, model: Model, amax: Mapping[str, float], batches: Iterable[Mapping[str, np.ndarray]], *,
                 exclude: Iterable[str] = (), labels: Labels | None = None, logits: str | None = None,
                 ranges_source: str = "the ranges", metric: TaskMetric | None = None,
                 float_values: Mapping[str, Sequence[tuple[str, np.ndarray]]] | None = None,
                 measure: Measure | None = None):
        """``float_values``: per layer, what it reads instead when in float (a bias corrected for INT8,
        :func:`trtq.accuracy.switch.build_switchable`). ``measure``: task proxies whose view of the output noise
        ranks the layers (:func:`trtq.accuracy.proxies.proxy_noise`) instead of the raw outputs' when one of them
        splits an output into channel groups."""
        self.model = model
        # only a proxy that splits an output (a detection head's probability and box channels) changes what the
        # ranking's noise sees; elsewhere the raw outputs' pooled noise ranks as before
        self.measure = measure if measure is not None and measure.kind == "proxies" and any(
            p.channels for p in measure.proxies.values()) else None
        self.amax = dict(amax)
        self.export: QdqExport = export_qdq(model, amax, exclude=exclude, ranges_source=ranges_source,
                                            check=False)  # only onnxruntime reads it
        self.switchable: SwitchableModel = build_switchable(model.proto, self.export, float_values)
        self.names = list(model.output_names)
        self.logits = logits
        tensors = [t for layer in self.switchable.layers for t in layer.tensors]
        # the data is read once; sensitivity works on a small evaluation set held in memory, in slices small
        # enough that a run's exposed tensors (the reference's statistics, the ``alone`` boundary, about the
        # same quantized tensors, both alive) fit the memory budget
        self.batches = slices_within_budget(model.proto, batches, tensors, resolve_budget(None)[0] // 2)
        if not self.batches:
            raise TrtqError("the data source yielded no batch: nothing to evaluate")
        # the float reference (all switches off, gathering statistics) and every configuration share one session
        self._capture = CapturingRunner(self.switchable.proto, self.names, tensors,
                                        extra_feed=self.switchable.switches([]))
        self.session = self._capture.session
        # id(feed) -> (feed, FP32 outputs): the feed is kept with its outputs so that its id cannot be reused
        # by another feed while cached (a copy of a feed is simply another entry)
        self._reference: dict[int, tuple[Mapping[str, np.ndarray], list[np.ndarray]]] = {}
        self._labels = labels
        self._metric = metric
        self._truth: np.ndarray | None = None
        self._source = batches if isinstance(batches, BatchSource) else None
        self.samples = 0
        # the ranking's evaluations elsewhere (``--ray``: trtq.distributed.sensitivity); same signature as evaluate
        self.rank_evaluator: Callable[..., Comparison] | None = None
        self.progress: Callable[[int], None] | None = None  # called with the samples of each batch a pass is done with
        self.run_progress: Callable[[int], None] | None = None  # called with 1 after each configuration's run

    @property
    def layers(self) -> list[Layer]:
        return self.switchable.layers

    @property
    def stats(self) -> StatsCollector:
        """|x| statistics of every INT8 activation input, on the evaluation data."""
        return self._capture.stats

    def _reference_run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        cached = self._reference.get(id(feed))
        if cached is None or cached[0] is not feed:  # the first pass runs the float model and gathers statistics
            cached = self._reference[id(feed)] = (feed, self._capture(feed))
        return cached[1]

    def evaluate(self, configurations: Mapping[str, Iterable[str]], max_samples: int | None = None,
                 downstream: bool = False) -> Comparison:
        """One pass: every configuration (key -> node names in INT8) against the float reference, on the
        first ``max_samples`` samples (all by default). ``downstream``: configurations of one layer each run
        from that layer on, fed with the FP32 tensors upstream of it (:mod:`.downstream`; same values)."""
        runners = {key: session_runner(self.session, self.names, self.switchable.switches(int8))
                   for key, int8 in configurations.items()}
        reference = self._reference_run
        if downstream:
            runs = DownstreamRuns(self.switchable, self.names)
            runners = {key: runs.runner(next(iter(int8)), runners[key]) if len(list(int8)) == 1 else runners[key]
                       for key, int8 in ((k, list(v)) for k, v in configurations.items())}

            def reference(feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
                outputs = self._reference_run(feed)
                runs.reference(feed)
                return outputs
        tracker = None
        if self._metric is not None:
            truth = self._labels.by_index if self._labels is not None else None
            tracker = MetricTracker(self._metric, self.names, truth)
        if self.run_progress is not None:  # each configuration's run of a feed, for a pass of few, large feeds
            runners = {key: _counted_run(run, self.run_progress) for key, run in runners.items()}
        batches = counted(take_samples(self.batches, max_samples, max_bytes=None, cut=True), self.progress)
        judge = self.measure.judge(self.names, None) if self.measure is not None else None
        comparison = compare_candidates(reference, runners, self.names, batches,
                                        labels=self._labels, source=self._source, logits=self.logits,
                                        metric=tracker, judge=judge)
        self.samples = comparison.samples
        return comparison

    @property
    def held_samples(self) -> int:
        """The samples held for the analysis (what a pass without ``max_samples`` runs)."""
        return sum(batch_samples(feed) for feed in self.batches)

    def rank(self, mode: str = "alone", max_samples: int | None = None) -> SensitivityResult:
        """Rank the quantized layers, most harmful first, on the first ``max_samples`` samples.

        The ranking costs ``layers + 1`` forward passes per sample and only orders the layers (every keep
        step is then verified on all the data), so ``trtq quantize`` ranks on a bounded subset."""
        if mode not in MODES:
            raise TrtqError(f"unknown sensitivity mode '{mode}' (choose from {', '.join(MODES)})")
        nodes = self.switchable.nodes
        if mode == "alone":
            configurations = {node: [node] for node in nodes}
        else:
            configurations = {node: [n for n in nodes if n != node] for node in nodes}
            configurations[_ALL_INT8] = nodes
        evaluate = self.rank_evaluator or self.evaluate
        comparison = evaluate(configurations, max_samples, downstream=mode == "alone")
        result = SensitivityResult(mode, comparison.samples, [], _top1(comparison.reference_accuracy))
        if mode == "alone":
            noise = {node: comparison.outcomes[node].noise for node in nodes}
            if comparison.judgement is not None:  # as the proxies see the outputs
                noise = {node: float(np.mean(comparison.judgement.noise[node])) for node in nodes}
            total = sum(v for v in noise.values() if math.isfinite(v))
            shares = {node: (noise[node] / total if total > 0 else 0.0) for node in nodes}
        else:
            everything = comparison.outcomes[_ALL_INT8]
            result.all_int8 = self._step([], comparison, _ALL_INT8, None, None)
            base = everything.noise
            shares = {node: ((base - comparison.outcomes[node].noise) / base if base > 0 else 0.0) for node in nodes}
        for layer in self.layers:
            outcome = comparison.outcomes[layer.node]
            result.ranking.append(LayerSensitivity(
                layer, shares[layer.node], outcome.sqnr_db, outcome.top1_agreement,
                _top1(outcome.accuracy), self._layer_error(layer)))
        result.ranking.sort(key=lambda entry: entry.score, reverse=True)
        return result

    def _layer_error(self, layer: Layer) -> QuantizationError:
        parts = [quantization_error(self.stats[t], self.amax[t]) for t in layer.tensors if t in self.stats.tensors]
        if not parts:
            return QuantizationError(0.0, 0.0, 0.0)
        return QuantizationError(sum(p.clipping for p in parts), sum(p.rounding for p in parts),
                                 max(p.clipped_fraction for p in parts))

    def _step(self, kept: list[str], comparison: Comparison, key: str, target_sqnr: float | None,
              max_drop: float | None) -> KeepStep:
        outcome = comparison.outcomes[key]
        if comparison.metric_scores:
            drop = comparison.metric_drop_points(key)
        elif comparison.reference_accuracy is not None:
            drop = comparison.drop_points(key)
        elif outcome.top1_agreement is not None:
            drop = 100.0 * (1.0 - outcome.top1_agreement)
        else:
            drop = None
        meets = True
        if target_sqnr is not None:
            meets &= outcome.sqnr_db >= target_sqnr
        if max_drop is not None:
            meets &= drop is not None and drop <= max_drop
        return KeepStep(list(kept), outcome.sqnr_db, outcome.top1_agreement, _top1(outcome.accuracy), drop, meets)

    def _verify(self, kept: list[str], target_sqnr: float | None, max_drop: float | None) -> KeepStep:
        comparison = self.evaluate({"step": [n for n in self.switchable.nodes if n not in kept]})
        return self._step(kept, comparison, "step", target_sqnr, max_drop)

    def check_target(self, target_sqnr: float | None, max_drop: float | None) -> None:
        """Fail before the ranking's runs when :meth:`keep_set` could not measure the target."""
        if target_sqnr is None and max_drop is None:
            raise TrtqError("give a target: --target-sqnr DB and/or --max-drop PCT")
        if max_drop is not None and self._labels is None and self._metric is None and not self._has_classes():
            raise TrtqError("--max-drop needs --labels or an output with class scores (top-1 agreement)")

    def keep_set(self, result: SensitivityResult, *, target_sqnr: float | None = None,
                 max_drop: float | None = None) -> SensitivityResult:
        """Greedy from the top of the ranking until the verified model meets the target; fills
        ``result.keep`` (node names to keep in float) and ``result.steps``.

        Each candidate is verified with a real evaluation of the combined set; one that improves
        neither the SQNR (by ``MIN_GAIN_DB``) nor the drop is not kept (its error is masked by
        others or negligible), so the set stays small. If the ranking runs out first, every
        quantized layer is kept (the float model meets any target).
        """
        self.check_target(target_sqnr, max_drop)
        result.target = {"sqnr_db": target_sqnr, "max_drop_points": max_drop}
        if max_drop is not None:
            result.target["drop_measure"] = (f"metric {self._metric.name}" if self._metric is not None else
                                             "top-1 accuracy" if self._labels is not None else "top-1 agreement")
        best = self._verify([], target_sqnr, max_drop)
        result.all_int8 = result.all_int8 or best
        result.steps = [best]
        for entry in result.ranking:
            if best.meets_target:
                break
            trial = self._verify([*best.kept, entry.layer.node], target_sqnr, max_drop)
            trial.accepted = trial.meets_target or _improves(trial, best)
            result.steps.append(trial)
            if trial.accepted:
                best = trial
        if not best.meets_target:
            best = self._verify(list(self.switchable.nodes), target_sqnr, max_drop)
            result.steps.append(best)
        result.keep = list(best.kept)
        result.verified_samples = self.samples
        return result

    def _has_classes(self) -> bool:
        first = self._reference_run(self.batches[0])
        array = first[logits_index(self.names, self.logits)]
        return array.ndim >= 1 and array.shape[-1] > 1


def _improves(trial: KeepStep, best: KeepStep) -> bool:
    if trial.sqnr_db >= best.sqnr_db + MIN_GAIN_DB:
        return True
    return trial.drop_points is not None and best.drop_points is not None and trial.drop_points < best.drop_points


def _top1(accuracy: dict | None) -> float | None:
    return None if accuracy is None else accuracy["top1"]


def format_ranking(result: SensitivityResult, limit: int | None = None) -> str:
    """The ranking as a fixed-width table, most harmful first."""
    rows = result.ranking[:limit] if limit else result.ranking
    width = max([len("layer"), *(len(e.layer.node) for e in rows)])
    config = "SQNR alone" if result.mode == "alone" else "SQNR w/o it"
    lines = [f"{'#':>3}  {'layer':<{width}}  {'op':<10}  {'score':>7}  {config:>11}  {'top-1 agree':>11}  "
             f"{'error':<8}  {'clipped':>8}"]
    for rank, entry in enumerate(rows, start=1):
        agree = f"{100 * entry.top1_agreement:.2f} %" if entry.top1_agreement is not None else "-"
        sqnr = f"{entry.sqnr_db:.2f} dB" if math.isfinite(entry.sqnr_db) else "inf"
        lines.append(f"{rank:>3}  {entry.layer.node:<{width}}  {entry.layer.op_type:<10}  {100 * entry.score:6.1f}%  "
                     f"{sqnr:>11}  {agree:>11}  {entry.error_type:<8}  {100 * entry.error.clipped_fraction:7.3f}%")
    return "\n".join(lines)


def format_steps(result: SensitivityResult) -> list[str]:
    lines = []
    previous: list[str] = []
    for step in result.steps:
        added = [n for n in step.kept if n not in previous]
        if not step.kept:
            what = "all INT8"
        elif len(added) == 1:
            what = f"+ {added[0]}"
        else:
            what = f"all {len(step.kept)} in float"
        sqnr = f"{step.sqnr_db:.2f} dB" if math.isfinite(step.sqnr_db) else "inf dB"
        drop = f", drop {step.drop_points:.2f} points" if step.drop_points is not None else ""
        if step.meets_target:
            verdict = "meets the target"
        elif not step.kept:
            verdict = "below the target"
        else:
            verdict = "kept" if step.accepted else "no gain, not kept"
        lines.append(f"  {what:<{_STEP_WIDTH}} SQNR {sqnr:>9}{drop}  ({verdict})")
        if step.accepted:
            previous = step.kept
    return lines


def keep_file_text(result: SensitivityResult, model_name: str) -> str:
    """The ``--keep-out`` file: one ONNX node name per line, ``#`` comments (``@FILE`` for --exclude)."""
    target = ", ".join(f"{k}={v}" for k, v in result.target.items() if v is not None)
    lines = [f"# layers of {model_name} to keep in higher precision (trtq sensitivity, {result.mode}; {target})",
             "# use: trtq export MODEL --qdq ... --exclude @FILE"]
    last = result.steps[-1] if result.steps else None
    if last is not None:
        lines.append(f"# verified on {result.verified_samples or result.samples} samples: SQNR {last.sqnr_db:.2f} dB"
                     + (f", drop {last.drop_points:.2f} points" if last.drop_points is not None else ""))
    lines.extend(result.keep or [])
    return "\n".join(lines) + "\n"


def _counted_run(run: Callable[[Mapping[str, np.ndarray]], list[np.ndarray]],
                 progress: Callable[[int], None]) -> Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]:
    def counted_run(feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        outputs = run(feed)
        progress(1)
        return outputs

    return counted_run
