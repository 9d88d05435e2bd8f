"""``trtq quantize``: from an FP32 ONNX model to a *verified* INT8 Q/DQ model, in one call.

The loop (each step reuses what the previous one computed):

1. one calibration pass: statistics of every float tensor (histograms kept), with a deterministic
   evaluation split when no evaluation data is given (:mod:`.holdout`);
2. the range choice: ``auto`` measures every guarded range method end to end and keeps the closest
   to FP32 (:mod:`.auto`); a named method is used as is, and measured the same way;
3. if the all-INT8 model misses the target: the sensitivity ranking of :mod:`.sensitivity` and its
   verified keep-in-float search (the layers named go to ``--exclude`` / ``--keep-precision``);
4. the final Q/DQ export with that keep set, evaluated again on its own (the model written is the
   model measured).

A target met only by keeping nearly every layer in float (more than ``MAX_KEPT_SHARE`` of them) is a
failure: the report is written, no model pretending to be INT8 is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from trtq.accuracy.auto import AutoChoice, choose_ranges, drop_of
from trtq.accuracy.evaluate import Comparison, compare_candidates
from trtq.accuracy.holdout import DEFAULT_EVAL_SAMPLES, HoldoutSplit, batch_samples
from trtq.accuracy.labels import Labels, labels_for_fed
from trtq.accuracy.macs import int8_mac_share, layer_macs
from trtq.accuracy.sensitivity import SensitivityAnalysis, SensitivityResult
from trtq.accuracy.targets import MetricTracker, Target, TaskMetric, has_class_scores, resolve_target
from trtq.cache import DEFAULT_TRT_VERSION, CalibrationCache, cache_from_amax
from trtq.calibrate import collect_statistics, compute_ranges
from trtq.data import BatchSource
from trtq.errors import TrtqError
from trtq.export import QdqExport, export_qdq
from trtq.export.compare import Run, fake_quant_session, session_runner
from trtq.model import Model
from trtq.ranges import DEFAULT_PERCENTILE, METHODS
from trtq.stats import StatsCollector

RANK_SAMPLES = 64  # the sensitivity ranking's samples: it orders layers; every keep step is verified on all
# (analysis, ranges source) -> close: runs the ranking's evaluations elsewhere (trtq.distributed.sensitivity.use_ray)
RankBackend = Callable[[SensitivityAnalysis, str], Callable[[], None]]
MAX_KEPT_SHARE = 0.9  # keeping more than this share of the quantized layers in float is not INT8
CALIBRATORS = ("auto", *METHODS)


@dataclass
class Verification:
    """One measured configuration of the loop."""

    step: str
    kept: list[str]
    sqnr_db: float
    drop_points: float | None
    meets_target: bool
    seconds: float

    def document(self) -> dict:
        return {"step": self.step, "kept": self.kept, "sqnr_db": self.sqnr_db if math.isfinite(self.sqnr_db) else None,
                "drop_points": self.drop_points, "meets_target": self.meets_target, "seconds": self.seconds}


@dataclass
class QuantizeResult:
    """Everything ``trtq quantize`` decided and measured; ``export`` is None when it failed."""

    target: Target
    calibrator: str
    method: str  # the method whose ranges were used (auto: the one it chose)
    amax: dict[str, float]
    stats: StatsCollector
    eval_description: str
    eval_samples: int
    keep: list[str]
    steps: list[Verification]
    export: QdqExport | None
    auto: AutoChoice | None = None
    sensitivity: SensitivityResult | None = None
    final: Comparison | None = None
    failure: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    quantized_nodes: list[str] = field(default_factory=list)  # of the all-INT8 model
    macs: dict[str, int] = field(default_factory=dict)  # per layer, one evaluation batch

    @property
    def layers(self) -> int:
        """Quantized layers of the all-INT8 model."""
        return len(self.quantized_nodes)

    def mac_share(self, kept: Sequence[str]) -> float | None:
        """Share of the quantized layers' MACs still in INT8 with ``kept`` in float (None: unknown)."""
        return int8_mac_share(self.macs, self.quantized_nodes, list(kept))

    @property
    def mac_shares(self) -> list[float | None]:
        return [self.mac_share(step.kept) for step in self.steps]

    @property
    def usable_amax(self) -> dict[str, float]:
        """The ranges that define an int8 scale, with the weight-derived tensors' max|w| (recorded with the
        statistics) after the data ranges: a tensor without one (all zero, no finite value) is left out of
        the cache, so TensorRT keeps it in higher precision; a zero scale is never written."""
        weights = (self.stats.meta.get("weights") or {}).get("amax", {})
        merged = {**{k: float(v) for k, v in weights.items() if k not in self.amax}, **self.amax}
        return {name: value for name, value in merged.items() if value > 0 and math.isfinite(value)}

    def cache(self, trt_version: str = DEFAULT_TRT_VERSION) -> CalibrationCache:
        """The TensorRT 10 cache of these ranges (``EntropyCalibration2`` header: trtq serves its own ranges
        through an entropy calibrator that gets no batches)."""
        return cache_from_amax(self.usable_amax, "auto", trt_version)

    def keep_text(self, model_name: str) -> str:
        """The keep list: one ONNX node name per line, `#` comments (`--exclude @FILE`, `--keep-precision @FILE`)."""
        last = self.steps[-1] if self.steps else None
        lines = [f"# layers of {model_name} kept in float by trtq quantize (target {self.target.describe()})",
                 "# use: trtq export MODEL --qdq ... --exclude @FILE, or trtq build --keep-precision @FILE"]
        if last is not None:
            lines.append(f"# verified on {self.eval_samples} samples: {_describe(last)}")
        return "\n".join([*lines, *self.keep]) + "\n"

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def final_step(self) -> Verification:
        return self.steps[-1]

    def document(self) -> dict:
        document = {
            "format": "trtq-quantize-1",
            "ok": self.ok,
            "failure": self.failure,
            "target": self.target.document(),
            "calibrator": self.calibrator,
            "method": self.method,
            "calibration_samples": self.stats.samples,
            "evaluation": {"data": self.eval_description, "samples": self.eval_samples},
            "layers": self.layers,
            "keep": self.keep,
            "steps": [{**s.document(), "int8_mac_share": share} for s, share in zip(self.steps, self.mac_shares,
                                                                                     strict=True)],
            "seconds": self.seconds,
            "tensors": {name: {"amax": value, "scale": value / 127.0, "source": "data"}
                        for name, value in self.amax.items()},
        }
        for name, value in self.usable_amax.items():  # weight-derived tensors: in the cache, not in the Q/DQ model
            if name not in self.amax:
                document["tensors"][name] = {"amax": value, "scale": value / 127.0, "source": "weights"}
        if self.auto is not None:
            document["auto"] = self.auto.document()
            document["tensors"] = {name: {**entry, "flags": list(self.auto.diagnoses[name].flags)}
                                   if name in self.auto.diagnoses else entry
                                   for name, entry in document["tensors"].items()}
        if self.sensitivity is not None:
            document["sensitivity"] = self.sensitivity.document()
        if self.export is not None:
            document["quantized_nodes"] = list(self.export.plan.quantized_nodes)
        return document


def check_inputs_finite(model: Model, stats: StatsCollector) -> None:
    """Calibration data with no finite value in a model input cannot give a range: an error, not a zero scale."""
    for spec in model.inputs:
        if spec.name in stats.tensors and stats[spec.name].count == 0:
            found = stats[spec.name].nonfinite
            raise TrtqError(f"input '{spec.name}' has no finite value in the calibration data "
                            f"({found} NaN/Inf values): nothing to derive its range from")


def quantize(model: Model, calibration: Iterable[Mapping[str, np.ndarray]], *,
             eval_batches: Sequence[Mapping[str, np.ndarray]] | None = None,
             eval_labels: np.ndarray | None = None,
             calibration_labels: Labels | None = None,
             metric: TaskMetric | None = None,
             min_sqnr: float | None = None, max_drop: float | None = None,
             calibrator: str = "auto", percentile: float = DEFAULT_PERCENTILE,
             logits: str | None = None, mode: str = "alone",
             max_eval_samples: int = DEFAULT_EVAL_SAMPLES,
             progress: Callable[[int], None] | None = None,
             note: Callable[[str], None] | None = None,
             collect: Callable[..., StatsCollector] | None = None,
             rank_backend: RankBackend | None = None) -> QuantizeResult:
    """The whole loop of the module docstring. ``eval_batches`` (held in memory) with ``eval_labels``
    (in their order) is the evaluation set; without it the calibration data is split and
    ``calibration_labels`` (lined up by the calibration source) give the held-out samples' labels.

    ``collect`` replaces :func:`collect_statistics` when ``eval_batches`` are given (the hold-out split
    streams through this process); ``rank_backend(analysis, ranges_source)`` makes the sensitivity ranking
    evaluate elsewhere and returns the function that closes it (``--ray``: both give the local results)."""
    if calibrator not in CALIBRATORS:
        raise TrtqError(f"unknown calibrator '{calibrator}' (choose from {', '.join(CALIBRATORS)})")
    say = note or (lambda _message: None)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    split = None
    if eval_batches is None:
        split = HoldoutSplit(calibration, max_eval_samples)
        source = split
    else:
        source = calibration
    gather = collect if collect is not None and split is None else collect_statistics
    stats = gather(model, source, progress=progress, keep_histograms=True)
    check_inputs_finite(model, stats)
    timings["calibration"] = time.perf_counter() - started

    if split is not None:
        batches = split.held
        description = split.describe()
        labels = None
        if calibration_labels is not None:
            every = labels_for_fed(calibration_labels, calibration if isinstance(calibration, BatchSource) else None,
                                   split.fed)
            labels = split.labels(every)
    else:
        batches = list(eval_batches)
        description = f"{sum(batch_samples(b) for b in batches)} samples of the evaluation data"
        labels = eval_labels
    if not batches:
        raise TrtqError("the evaluation data yielded no batch: nothing to verify the INT8 model on")
    eval_samples = sum(batch_samples(b) for b in batches)
    if labels is not None and len(labels) != eval_samples:
        raise TrtqError(f"{len(labels)} labels for {eval_samples} evaluation samples: they must match one to one")

    names = list(model.output_names)
    reference = session_runner(fake_quant_session(model.proto), names)  # FP32, shared by every measurement
    target = resolve_target(min_sqnr, max_drop, metric=metric, labelled=labels is not None,
                            class_scores=has_class_scores(reference(batches[0]), names, logits))
    say(f"target: {target.describe()}; evaluated on {description}")

    step_started = time.perf_counter()
    auto = None
    if calibrator == "auto":
        auto = choose_ranges(model, stats, batches, target, labels=labels, metric=metric, logits=logits,
                             reference=reference)
        amax, method = auto.amax, auto.label
        chosen = auto.chosen
        first_step = Verification(f"all INT8 ({method})", [], chosen.sqnr_db, chosen.drop_points,
                                  chosen.meets_target, time.perf_counter() - step_started)
    else:
        amax, method = compute_ranges(stats, calibrator, percentile), calibrator
        comparison = _measure(reference, model, amax, [], batches, labels, metric, logits)
        sqnr, drop = comparison.outcomes["int8"].sqnr_db, _drop(target, comparison)
        first_step = Verification(f"all INT8 ({method})", [], sqnr, drop, target.meets(sqnr, drop),
                                  time.perf_counter() - step_started)
    timings["range choice"] = time.perf_counter() - step_started
    steps = [first_step]
    quantized_nodes = list(export_qdq(model, amax, ranges_source=f"the {method} ranges").plan.quantized_nodes)
    layers = len(quantized_nodes)

    keep: list[str] = []
    sensitivity = None
    if not first_step.meets_target:
        step_started = time.perf_counter()
        say(f"all INT8 misses the target ({_describe(first_step)}): ranking the {layers} quantized layers")
        analysis = SensitivityAnalysis(model, amax, batches, logits=logits, metric=metric,
                                       labels=Labels("evaluation labels", by_index=labels) if labels is not None
                                       else None, ranges_source=f"the {method} ranges")
        close = rank_backend(analysis, f"the {method} ranges") if rank_backend is not None else None
        try:
            sensitivity = analysis.rank(mode, max_samples=RANK_SAMPLES)
        finally:
            if close is not None:  # the keep-set steps run here, one after the other
                close()
        analysis.keep_set(sensitivity, target_sqnr=target.min_sqnr, max_drop=target.max_drop)
        keep = list(sensitivity.keep or [])
        for step in sensitivity.steps[1:]:
            if step.accepted:
                steps.append(Verification(f"keep {len(step.kept)} in float", list(step.kept), step.sqnr_db,
                                          step.drop_points if target.drop_measure else None, step.meets_target,
                                          0.0))
        timings["sensitivity"] = time.perf_counter() - step_started

    result = QuantizeResult(target, calibrator, method, amax, stats, description, eval_samples, keep,
                            steps, None, auto, sensitivity, seconds=timings, quantized_nodes=quantized_nodes,
                            macs=layer_macs(model.proto, batches[0]))
    if layers and len(keep) > MAX_KEPT_SHARE * layers:
        result.failure = (f"the target ({target.describe()}) is met only with {len(keep)} of {layers} quantized "
                          "layers kept in float: that is not an INT8 model")
        timings["total"] = time.perf_counter() - started
        return result

    step_started = time.perf_counter()
    export = export_qdq(model, amax, exclude=keep, ranges_source=f"the {method} ranges")
    final = _measure(reference, model, amax, keep, batches, labels, metric, logits, exported=export)
    sqnr, drop = final.outcomes["int8"].sqnr_db, _drop(target, final)
    steps.append(Verification("final Q/DQ model", keep, sqnr, drop, target.meets(sqnr, drop),
                              time.perf_counter() - step_started))
    timings["final check"] = time.perf_counter() - step_started
    result.export, result.final = export, final
    if not steps[-1].meets_target:
        result.failure = f"the final INT8 model misses the target ({_describe(steps[-1])}; {target.describe()})"
    timings["total"] = time.perf_counter() - started
    return result


def _drop(target: Target, comparison: Comparison) -> float | None:
    """The candidate's drop on the target's measure (None when the target measures no drop)."""
    return drop_of(comparison, "int8") if target.drop_measure else None


def _describe(step: Verification) -> str:
    sqnr = f"SQNR {step.sqnr_db:.2f} dB" if math.isfinite(step.sqnr_db) else "SQNR inf"
    return sqnr + (f", drop {step.drop_points:.2f} points" if step.drop_points is not None else "")


def _measure(reference: Run, model: Model, amax: Mapping[str, float], keep: list[str],
             batches: Sequence[Mapping[str, np.ndarray]], labels: np.ndarray | None, metric: TaskMetric | None,
             logits: str | None, exported: QdqExport | None = None) -> Comparison:
    """FP32 (``reference``) vs the Q/DQ model (``exported``, else exported here with ``keep`` in float)."""
    export = exported or export_qdq(model, amax, exclude=keep)
    names = list(model.output_names)
    candidate = session_runner(fake_quant_session(export.model), names)
    tracker = MetricTracker(metric, names, labels) if metric is not None else None
    return compare_candidates(reference, {"int8": candidate}, names, batches, logits=logits, metric=tracker,
                              labels=Labels("evaluation labels", by_index=labels) if labels is not None else None)


def format_steps(result: QuantizeResult) -> list[str]:
    """One line per verified configuration."""
    width = max(len(s.step) for s in result.steps)
    return [f"  {s.step:<{width}}  {_describe(s)}  ({'meets the target' if s.meets_target else 'misses the target'})"
            for s in result.steps]
