"""``trtq quantize``: from an FP32 ONNX model to a *verified* INT8 Q/DQ model, in one call.

The loop (each step reuses what the previous one computed):

1. one calibration pass: statistics of every float tensor (histograms kept); without ``--eval-data`` the
   first calibration batches are cross-fitted (:mod:`.crossfit`): every judged sample is judged by ranges
   from the other folds, so the decisions rest on up to ``max_eval_samples`` samples, not 1 batch in 5;
2. the measure (:mod:`.judge`): the task metric, else accuracy with labels, else each output's task proxy
   (:mod:`.proxies`), every drop with its 95 % interval (:mod:`.uncertainty`);
3. the range choice: ``auto`` measures every guarded range method end to end and keeps the least drop,
   ties within the noise going to the highest SQNR (:mod:`.auto`); a named method is measured the same way;
4. if the all-INT8 model misses the target: the sensitivity ranking of :mod:`.sensitivity`, then the
   smallest prefix of it to keep in float, found by galloping and bisection (:mod:`.search`), each step
   accepted only when it beats all-INT8 beyond the noise;
5. the final Q/DQ export with that keep set, verified once more the same way (per fold: the written model's
   ranges come from all the statistics, each judged sample's from the folds that never saw it).

A target met only by keeping nearly every layer in float (more than ``MAX_KEPT_SHARE`` of them) is a
failure: the report is written, no model pretending to be INT8 is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

import numpy as np

from trtq.accuracy.auto import AUTO_CANDIDATES, choose_ranges, default_measure
from trtq.accuracy.corrections import DEFAULT_STEPS, StepOutcome, StepState, fit_sets_of, run_steps
from trtq.accuracy.crossfit import DEFAULT_FOLDS, FoldPlan, HeldHead, cross_fit
from trtq.accuracy.evaluate import Comparison
from trtq.accuracy.holdout import DEFAULT_EVAL_SAMPLES, batch_samples, take_samples
from trtq.accuracy.labels import Labels, labels_for_fed
from trtq.accuracy.macs import layer_macs
from trtq.accuracy.proxies import Proxy
from trtq.accuracy.quantize_result import QuantizeResult, Verification, describe_step
from trtq.accuracy.search import Verifier, cost_ordered, fp16_qdq_model, search_keep, verified
from trtq.accuracy.sensitivity import SensitivityAnalysis
from trtq.accuracy.targets import Target, TaskMetric, resolve_target
from trtq.calibrate import collect_statistics, collect_statistics_groups, compute_ranges
from trtq.data import BatchSource
from trtq.errors import TrtqError
from trtq.export import export_qdq
from trtq.export.graph import node_key, resolve_nodes
from trtq.export.int8_weights import store_int8_weights
from trtq.messages import quarter_progress
from trtq.model import Model
from trtq.range_methods import AUTO
from trtq.ranges import DEFAULT_PERCENTILE, METHODS, range_function
from trtq.stats import StatsCollector

RANK_SAMPLES = 64  # the sensitivity ranking's samples at most: it orders layers; every keep step is verified on all
# the fewest samples the ranking takes, budget or not: on the ViT (126 layers, 18 s a sample) 2 samples ordered
# the layers as 8 did (Spearman 0.93, 29 of the top 32 and 57 of the top 64 the same; docs/error-reduction.md); with
# 4 its ranking alone took 85 of the 328 s the whole run took
MIN_RANK_SAMPLES = 2
# a ranking run from its layer on, per sample, against a judged pass's full Q/DQ run: on the ViT 0.142 s against
# 0.164 s (its switches' Where and every Q/DQ pair run whatever the switch; the ranking runs one sample at a time)
DOWNSTREAM_COST = 0.85
RANK_SECONDS = 60.0  # the ranking's time budget: its samples are cut to fit it (it costs layers + 1 runs a sample)
# (analysis, ranges source) -> close: runs the ranking's evaluations elsewhere (trtq.distributed.sensitivity.use_ray)
RankBackend = Callable[[SensitivityAnalysis, str], Callable[[], None]]
MAX_KEPT_SHARE = 0.9  # keeping more than this share of the quantized layers in float is not INT8
CALIBRATORS = (AUTO, *METHODS)
FLOAT_PRECISIONS = ("fp32", "fp16")


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
             proxies: Mapping[str, Proxy] | None = None,
             min_sqnr: float | None = None, max_drop: float | None = None,
             calibrator: str = "auto", percentile: float = DEFAULT_PERCENTILE,
             logits: str | None = None, mode: str = "alone",
             max_eval_samples: int = DEFAULT_EVAL_SAMPLES,
             folds: int = DEFAULT_FOLDS,
             steps: Sequence[str] = DEFAULT_STEPS,
             exclude: Sequence[str] = (),
             float_precision: str = "fp32",
             progress: Callable[[int], None] | None = None,
             note: Callable[[str], None] | None = None,
             collect: Callable[..., StatsCollector] | None = None,
             rank_backend: RankBackend | None = None) -> QuantizeResult:
    """The whole loop of the module docstring. ``eval_batches`` (held in memory) with ``eval_labels``
    (in their order) is the evaluation set; without it the first calibration batches (up to
    ``max_eval_samples``) are cross-fitted in ``folds`` folds (:mod:`.crossfit`) and ``calibration_labels``
    (lined up by the calibration source) give their labels. ``proxies``: the outputs' proxies named by
    ``--metric NAME=OUTPUT`` (else inferred). ``steps``: the error-reducing steps to try (:mod:`.corrections`).
    ``exclude``: nodes (names or output names) the user keeps in float: in float in every configuration, never
    ranked, corrected or counted among the quantized layers; written first in the keep list.
    ``float_precision``: ``fp16`` writes the model's float part (the kept layers too) in FP16, as TensorRT 11 builds
    ``--best``, and the final check judges that model; every earlier decision is made with the float part in FP32.

    ``collect`` replaces :func:`collect_statistics` when ``eval_batches`` are given (``--ray``: the calibration
    shards); ``rank_backend(analysis, ranges_source)`` makes the sensitivity ranking evaluate elsewhere and
    returns the function that closes it (``--ray``: both give the local results)."""
    if calibrator not in CALIBRATORS:
        raise TrtqError(f"unknown calibrator '{calibrator}' (choose from {', '.join(CALIBRATORS)})")
    if float_precision not in FLOAT_PRECISIONS:
        raise TrtqError(f"unknown float precision '{float_precision}' (choose from {', '.join(FLOAT_PRECISIONS)})")
    say = note or (lambda _message: None)
    excluded = [node_key(model.graph.node[i]) for i in sorted(resolve_nodes(model.graph, exclude))]
    timings: dict[str, float] = {}
    started = time.perf_counter()
    data = _evaluation_data(model, calibration, eval_batches, eval_labels, calibration_labels, max_eval_samples,
                            folds, progress, collect)
    stats, batches, labels, plan, description, fit_held = data
    check_inputs_finite(model, stats)
    timings["calibration"] = time.perf_counter() - started
    eval_samples = sum(batch_samples(b) for b in batches)

    verifier = Verifier(model, batches, None, labels, plan, excluded)
    if metric is None:  # the built-in measures judge each sample alone; a user's metric sees the batches it was given
        verifier.merge_feeds()
    batches = verifier.batches
    verifier.measure = measure = default_measure(verifier, metric=metric, labels=labels, named=proxies,
                                                 logits=logits)
    target = resolve_target(min_sqnr, max_drop, measure.describe())
    say(f"target: {target.describe()}; judged on {description}")
    if measure.kind == "proxies":
        for name, proxy in measure.proxies.items():
            say(f"  output '{name}': {proxy.name}: {proxy.describe()}")

    step_started = time.perf_counter()
    if calibrator == "auto":
        say(f"measuring {len(AUTO_CANDIDATES)} range methods against FP32 on {eval_samples} samples (one pass)")
        auto = choose_ranges(verifier, stats, target, progress=quarter_progress("  range methods", eval_samples, say))
        amax, method, fold_ranges, baseline, key = auto.amax, auto.label, auto.fold_ranges, auto.comparison, auto.label
    else:
        auto, method, key = None, calibrator, "int8"
        amax = compute_ranges(stats, calibrator, percentile)
        fold_ranges = plan.ranges(lambda s: compute_ranges(s, calibrator, percentile), complete=amax)
        baseline = verifier.compare({key: verifier.qdq_runner(fold_ranges, ranges_source=f"the {method} ranges")})
    if excluded:
        say(f"kept in float as asked (--exclude): {len(excluded)} layers")
    first = verified(baseline, key, [], target.meets, time.perf_counter() - step_started)
    configurations = [Verification(f"all INT8 ({method})", [], first.sqnr_db, first.drop, first.meets_target,
                                   first.seconds)]
    timings["range choice"] = time.perf_counter() - step_started
    source = f"the {method} ranges"
    corrections: list[StepOutcome] = []
    if steps and configurations[0].meets_target:
        say("all INT8 meets the target: no error-reducing step tried")
    elif steps:
        method_name, method_percentile = (auto.method, auto.percentile) if auto is not None else (calibrator,
                                                                                               percentile)
        state = StepState(baseline, key, fold_ranges, amax)
        corrections = run_steps(verifier, steps, state, stats, fit_sets_of(verifier, fit_held), source, target.meets,
                                range_function(method_name, method_percentile or DEFAULT_PERCENTILE), say)
        baseline, key, fold_ranges, amax = state.reference, state.key, state.fold_ranges, state.amax
        for outcome, measured in zip(corrections, state.measured, strict=True):
            timings[outcome.title] = outcome.seconds
            if measured is not None:
                step = verified(measured, outcome.name, [], target.meets, outcome.seconds)
                configurations.append(Verification(f"all INT8, {outcome.adjective}", [], step.sqnr_db, step.drop,
                                                   step.meets_target, step.seconds))
    steps = configurations
    quantized_nodes = list(export_qdq(model, amax, exclude=excluded, ranges_source=source,
                                      check=False).plan.quantized_nodes)
    layers = len(quantized_nodes)
    result = QuantizeResult(target, calibrator, method, amax, stats, description, eval_samples, [], steps, None,
                            auto, seconds=timings, quantized_nodes=quantized_nodes,
                            macs=layer_macs(model.proto, batches[0]), measure=measure, corrections=corrections,
                            excluded=excluded)

    keep: list[str] | None = []
    if not steps[-1].meets_target:
        keep = _keep_search(result, verifier, fold_ranges, baseline, key, mode, rank_backend, say)
    undecided = False
    if keep is None and _within_the_noise(result):
        # the best configuration misses the target only inside the noise (its interval covers the target): the
        # data cannot decide, which is said, not a reason to write nothing
        best = result.best_step
        keep, undecided = list(best.kept), True
        say(f"no configuration met the target at its point estimate; the best ({best.step}: {describe_step(best)}) "
            "is within the noise of it: taken, undecided")
    if keep is None:
        best = result.best_step
        result.failure = (f"the target ({target.describe()}) is not met with up to {MAX_KEPT_SHARE:.0%} of the "
                          f"{layers} quantized layers kept in float, and more is not an INT8 model; the best "
                          f"measured keeps {len(best.kept)} in float: {describe_step(best)}")
        timings["total"] = time.perf_counter() - started
        result.passes = verifier.passes
        return result
    result.keep = keep

    step_started = time.perf_counter()
    written = verifier.float_model(None, keep)
    export = export_qdq(written, amax, exclude=[*excluded, *keep], ranges_source=source)
    if written is not model:  # smoothed or bias-corrected: TensorRT 10 builds this one with the cache
        result.float_model = written.proto
    result.float_precision = float_precision
    if float_precision == "fp16":
        typed = fp16_qdq_model(written, export.model, [*excluded, *keep])
        export = replace(export, model=typed.proto, notes=[*export.notes, *typed.notes],
                         warnings=[*export.warnings, *typed.warnings])
        runner = verifier.fp16_runner(fold_ranges, keep, source)
    else:  # the weights as int8 behind DequantizeLinear: what the fake-quant pairs compute (bit for bit), 1/4 the size
        export = replace(export, model=store_int8_weights(export.model).model)
        runner = verifier.qdq_runner(fold_ranges, keep, source)
    comparison = verifier.compare({"int8": runner})
    final = verified(comparison, "int8", keep, target.meets, time.perf_counter() - step_started)
    if undecided and final.drop is not None and target.max_drop is not None and target.min_sqnr is None:
        final.meets_target = final.drop.low <= target.max_drop  # not beyond the target beyond the noise
    result.undecided = undecided
    title = "final Q/DQ model" + (" (float part in FP16)" if float_precision == "fp16" else "")
    steps.append(Verification(title, keep, final.sqnr_db, final.drop, final.meets_target, final.seconds))
    timings["final check"] = time.perf_counter() - step_started
    result.export, result.final = export, comparison
    if not steps[-1].meets_target:
        result.failure = f"the final INT8 model misses the target ({describe_step(steps[-1])}; {target.describe()})"
    timings["total"] = time.perf_counter() - started
    result.passes = verifier.passes
    return result


def _evaluation_data(model: Model, calibration: Iterable[Mapping[str, np.ndarray]],
                     eval_batches: Sequence[Mapping[str, np.ndarray]] | None, eval_labels: np.ndarray | None,
                     calibration_labels: Labels | None, max_eval_samples: int, folds: int,
                     progress: Callable[[int], None] | None, collect: Callable[..., StatsCollector] | None):
    """(all statistics, judged batches, their labels, the fold plan, a description of the judged data, the
    calibration batches held to fit corrections on with ``--eval-data``: None without, the judged ones serve)."""
    if eval_batches is not None:
        gather = collect or collect_statistics
        head = HeldHead(calibration, max_eval_samples)
        stats = gather(model, head, progress=progress, keep_histograms=True)
        batches = list(eval_batches)
        if not batches:
            raise TrtqError("the evaluation data yielded no batch: nothing to verify the INT8 model on")
        samples = sum(batch_samples(b) for b in batches)
        if eval_labels is not None and len(eval_labels) != samples:
            raise TrtqError(f"{len(eval_labels)} labels for {samples} evaluation samples: they must match one to one")
        if not head.held and isinstance(calibration, BatchSource):  # read elsewhere (Ray): a second, short read
            head.read()
        held = head.held
        return stats, batches, eval_labels, FoldPlan.single(stats), f"{samples} samples of the evaluation data", held

    def gather(source):
        return collect_statistics(model, source, progress=progress, keep_histograms=True)

    def gather_groups(batches, groups):
        return collect_statistics_groups(model, batches, groups, progress=progress, keep_histograms=True)

    fit = cross_fit(calibration, gather, folds=folds, max_samples=max_eval_samples, gather_groups=gather_groups)
    if not fit.held:
        raise TrtqError("the calibration data yielded no batch: nothing to calibrate")
    stats = fit.total()
    stats.meta["data"] = calibration.provenance() if hasattr(calibration, "provenance") else {}
    labels = None
    if calibration_labels is not None:
        every = labels_for_fed(calibration_labels, calibration if isinstance(calibration, BatchSource) else None,
                               fit.fed)
        labels = every[:fit.samples]
    return stats, fit.held, labels, FoldPlan.of(fit), fit.describe(), None


def rank_sample_count(layers: int, seconds_per_sample: float | None, available: int,
                      seconds_per_layer: float = 0.0) -> int:
    """Samples for the ranking: as many as fit ``RANK_SECONDS`` at ``layers + 1`` runs a sample (a run from the
    layer under test on costs ``DOWNSTREAM_COST`` of a full one) after each layer's fixed cost (its sub-model's
    session: ``seconds_per_layer``), within ``MIN_RANK_SAMPLES`` and ``RANK_SAMPLES``. The ranking only orders the
    layers by a continuous measure (output noise), which few samples already order; every configuration taken is
    verified on all the samples."""
    if not seconds_per_sample or seconds_per_sample <= 0:
        return min(RANK_SAMPLES, available)
    left = RANK_SECONDS - layers * seconds_per_layer
    fitting = int(left / ((layers + 1) * DOWNSTREAM_COST * seconds_per_sample)) if left > 0 else 0
    return max(1, min(available, RANK_SAMPLES, max(MIN_RANK_SAMPLES, fitting)))


def _within_the_noise(result: QuantizeResult) -> bool:
    """Whether the best configuration measured on every sample misses a drop target only inside the noise: its
    95 % interval reaches down to the target, and it keeps at most ``MAX_KEPT_SHARE`` of the layers in float."""
    target = result.target
    if target.max_drop is None or target.min_sqnr is not None or not result.steps:
        return False
    best = result.best_step
    return (best.drop is not None and best.drop.low <= target.max_drop
            and len(best.kept) <= MAX_KEPT_SHARE * max(result.layers, 1))


def _complete_the_most_promising(result: QuantizeResult, verifier: Verifier, target: Target,
                                 say: Callable[[str], None]) -> None:
    """After a failed search: a configuration whose pass stopped early but whose partial drop is below every complete
    one's is measured on all the samples, so that the best configuration named is a measured one."""
    measured = [s for s in result.steps if s.drop is not None]
    if not measured:
        return
    whole = max(s.drop.samples for s in measured)
    complete = min((s.drop.points for s in measured if s.drop.samples == whole), default=math.inf)
    partial = [s for s in measured if s.drop.samples < whole and s.drop.points < complete]
    if not partial:
        return
    promising = min(partial, key=lambda s: s.drop.points)
    started = time.perf_counter()
    comparison = verifier.compare({"step": verifier.keep_runner(promising.kept)})
    step = verified(comparison, "step", promising.kept, target.meets, time.perf_counter() - started)
    step.meets_target = False  # not better than all-INT8 beyond the noise was never asked: it is only a recommendation
    say(f"  keep {len(step.kept):>3} in float, on all {whole} samples: drop {step.drop.short()} points")
    result.steps.append(Verification(f"keep {len(step.kept)} in float (all samples)", step.kept, step.sqnr_db,
                                     step.drop, False, step.seconds))


def _keep_search(result: QuantizeResult, verifier: Verifier, fold_ranges: list[dict[str, float]],
                 baseline: Comparison, key: str, mode: str, rank_backend: RankBackend | None,
                 say: Callable[[str], None]) -> list[str] | None:
    """Rank the quantized layers, then search the smallest prefix of the ranking, ordered by harm per MAC, to keep
    in float (:mod:`.search`); the measured configurations join ``result.steps``. None: no prefix within
    ``MAX_KEPT_SHARE`` of the layers meets the target."""
    started = time.perf_counter()
    layers, method, target = result.layers, result.method, result.target
    source = f"the {method} ranges"
    built = time.perf_counter()
    written = verifier.float_model(None)  # with the adopted correction; a layer switched to float reads its own bias
    values = verifier.correction.float_values(verifier.model, written) if verifier.correction is not None else None
    analysis = SensitivityAnalysis(written, result.amax, verifier.batches, exclude=verifier.excluded, logits=None,
                                   ranges_source=source, float_values=values, measure=verifier.measure)
    # each layer's run from its own Q/DQ on needs a session of its part of the switchable model: about half the
    # cost of the whole one's, which building the analysis just measured
    per_layer = 0.5 * (time.perf_counter() - built)
    rank_samples = rank_sample_count(layers, verifier.seconds_per_sample, result.eval_samples, per_layer)
    say(f"all INT8 misses the target ({describe_step(result.steps[-1])}): ranking the {layers} quantized layers on "
        f"{rank_samples} samples")
    close = rank_backend(analysis, source) if rank_backend is not None else None
    # the loop's longest silent step: said by configuration runs (a few large feeds would leave long silences)
    feeds = len(take_samples(analysis.batches, rank_samples, max_bytes=None, cut=True))
    configurations = len(analysis.switchable.nodes) + (mode != "alone")
    analysis.run_progress = quarter_progress("  ranking", configurations * feeds, say, unit="layer runs")
    try:
        sensitivity = analysis.rank(mode, max_samples=rank_samples)
    finally:
        if close is not None:
            close()
    result.sensitivity = sensitivity
    result.seconds["ranking"] = time.perf_counter() - started
    started = time.perf_counter()
    nodes = verifier.use_switchable(fold_ranges, source)
    switchable = set(nodes)
    ranking = cost_ordered([(entry.layer.node, entry.score) for entry in sensitivity.ranking
                            if entry.layer.node in switchable], result.macs)
    max_keep = max(1, int(math.floor(MAX_KEPT_SHARE * layers)))
    say(f"searching the layers to keep in float, most harm per MAC first (at most {max_keep}), each step on "
        f"{result.eval_samples} samples:")
    share_of = {entry.layer.node: entry.score for entry in sensitivity.ranking}
    measured, size = search_keep(verifier, ranking, target.meets, max_keep, baseline.judgement, key, note=say,
                                 max_drop=target.max_drop, shares=[share_of[node] for node in ranking])
    for step in measured:
        result.steps.append(Verification(f"keep {len(step.kept)} in float", step.kept, step.sqnr_db, step.drop,
                                         step.meets_target, step.seconds))
    if size is None:
        _complete_the_most_promising(result, verifier, target, say)
        result.seconds["keep search"] = time.perf_counter() - started
        return None
    result.seconds["keep search"] = time.perf_counter() - started
    keep = list(ranking[:size])
    sensitivity.keep = keep
    return keep
