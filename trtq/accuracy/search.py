"""The keep-in-float search of ``trtq quantize``: which prefix of the sensitivity ranking to keep in float,
found in a logarithmic number of verified configurations, each judged per sample with its uncertainty.

Why not one layer at a time: on a ViT with 126 quantized layers the one-at-a-time walk re-verified the model
58 times on the whole evaluation set and gave up after 30 minutes. Keeping the ``k`` most harmful layers gets
more accurate as ``k`` grows (not strictly, but the ranking orders by the noise each layer adds), so the search
gallops (k = 1, 2, 4, ... up to the most a model may keep and still be INT8) until a configuration meets the
target, then bisects between the last miss and the first hit: about 2 log2(layers) verifications. A gallop
that reaches the most a model may keep and still misses stops there: no smaller set can meet the target. The gallop
starts where the ranking says the target could first be met (:func:`first_probe`): a ViT whose all-INT8 model
loses 20 points does not need its 1, 2, 4 ... layers measured, and a start too late only bisects from higher.

The order is the ranking's layers by harm per compute: each layer's score (its share of the output noise) over the
share of the quantized MACs that keeping it in float takes out of INT8. What a user buys INT8 for is the compute in
INT8 (``int8_mac_share``), not a count of layers: on a ViT the residual Adds, which carry no MACs, rank among the most
harmful layers, and keeping them costs nothing that a count of layers would charge. A layer without MACs is charged
``ZERO_MAC_COST`` of an average layer's share (it still costs a float path in TensorRT, and a score is not a
measured gain), so an Add that barely matters does not go before a MatMul that matters much.

A configuration meets the target when its drop is within it *and* it is better than all-INT8 beyond the noise
(on the drop, or on the output noise that every kept layer lowers): a step inside the noise is no step. For the same
reason the bisection stops when its last hit's drop is not lower than its last miss's beyond the noise (paired, on
every sample): each prefix between them could only be told from either by chance, and the hit is kept. On the ViT
it measured 1 bisection step where it had measured 5, each a pass over every sample, and kept 113 layers in float
where it had kept 107 (``docs/performance.md``): fewer layers in INT8, for a choice the data back.

Every configuration is verified by :class:`Verifier`: one pass over the evaluation batches, FP32 once per batch,
the candidate on the switchable model of each feed's fold (:mod:`.crossfit`), judged by :mod:`.judge`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx

from trtq.accuracy.bias import BiasCorrection
from trtq.accuracy.crossfit import FoldPlan
from trtq.accuracy.evaluate import Comparison, compare_candidates
from trtq.accuracy.feeds import merge_feeds, same_outputs
from trtq.accuracy.judge import Judge, Judgement, Measure
from trtq.accuracy.scale_feed import ScaledModel, scale_fed
from trtq.accuracy.switch import SwitchableModel, build_switchable
from trtq.accuracy.uncertainty import Estimate, better_beyond_noise, estimate, improves
from trtq.export import export_qdq
from trtq.export.compare import Run, fake_quant_session, session_runner
from trtq.model import Model
from trtq.segments import batch_samples

ZERO_MAC_COST = 0.5  # a MAC-less layer's cost in the keep order, as a share of an average layer's MACs
EARLY_STOP_Z = 3.0  # standard errors beyond the target before a keep step's pass stops early
SCALED_SESSIONS = 2  # scale-fed Q/DQ sessions kept for later candidates (the range choice's, a correction's)
MAX_CACHED_OUTPUT_BYTES = 64 << 20  # FP32 outputs of the evaluation set kept between passes up to this much
Feed = Mapping[str, np.ndarray]
_CURRENT = object()  # "the verifier's adopted correction"


class Verifier:
    """FP32 vs candidate configurations on the evaluation batches, judged per sample.

    The FP32 outputs are computed once and reused by every pass when they fit ``MAX_CACHED_OUTPUT_BYTES``
    (a recogniser's ``[256, 40, 6625]`` scores do not: they are recomputed per pass)."""

    def __init__(self, model: Model, batches: Sequence[dict[str, np.ndarray]], measure: Measure,
                 labels: np.ndarray | None, plan: FoldPlan, excluded: Sequence[str] = ()):
        self.model, self.batches, self.measure, self.labels, self.plan = model, list(batches), measure, labels, plan
        self.excluded = tuple(excluded)  # the user's layers kept in float (``--exclude``): in every configuration
        self.names = list(model.output_names)
        self._fp32 = session_runner(fake_quant_session(model.proto), self.names)
        self._cache: dict[int, list[np.ndarray]] | None = {}
        self._cached_bytes = 0
        self._switchable: list[tuple[SwitchableModel, object, dict[str, np.ndarray]]] | None = None
        self._scaled_sessions: dict[tuple, tuple[Model, tuple[ScaledModel, object] | None]] = {}
        self.correction: BiasCorrection | None = None  # adopted by the loop: every later export starts from it
        self.base: Model = model  # what the Q/DQ exports start from: the FP32 model, or its smoothed equivalent
        self.passes = 0
        self._fp32_seconds = 0.0
        self._fp32_samples = 0
        self._run_seconds = 0.0
        self._runs = 0

    @property
    def seconds_per_sample(self) -> float | None:
        """What one run of a sample costs, FP32 or Q/DQ, as measured by the passes so far (None before any)."""
        if self._runs:
            return self._run_seconds / self._runs
        return self._fp32_seconds / self._fp32_samples if self._fp32_samples else None

    def merge_feeds(self) -> bool:
        """Feed the judged samples several at a time (:mod:`.feeds`), before any pass: the batches, their folds
        and the labels are replaced by the merged ones when the model gives the same outputs for a merged feed as
        for its parts. Returns whether they were merged."""
        merged = merge_feeds(self.batches, lambda feed: self.plan.fold_of_feed.get(id(feed), 0))
        if merged is None:
            return False
        try:
            together = self._fp32(merged.feeds[0])
            apart = [self._fp32(self.batches[i]) for i in merged.parts[0]]
        except Exception:  # noqa: BLE001 - onnxruntime's own errors: the model does not take a larger batch
            return False
        if not same_outputs(together, apart):
            return False
        self.batches = merged.feeds
        self.plan = FoldPlan(self.plan.training, merged.fold_of_feed())
        if self.labels is not None:
            self.labels = np.asarray(self.labels)[merged.order]
        self._cache, self._cached_bytes = {}, 0
        return True

    def reference(self, feed: Feed) -> list[np.ndarray]:
        if self._cache is not None and id(feed) in self._cache:
            return self._cache[id(feed)]
        started = time.perf_counter()
        outputs = self._fp32(feed)
        self._fp32_seconds += time.perf_counter() - started
        self._fp32_samples += batch_samples(feed)
        if self._cache is not None:
            self._cached_bytes += sum(np.asarray(o).nbytes for o in outputs)
            if self._cached_bytes > MAX_CACHED_OUTPUT_BYTES:
                self._cache = None
            else:
                self._cache[id(feed)] = outputs
        return outputs

    def compare(self, candidates: Mapping[str, Run], stop: Callable[[Judge], bool] | None = None,
                progress: Callable[[int], None] | None = None) -> Comparison:
        """One pass: every candidate (already dispatching feeds to their fold's model) against FP32. ``stop(judge)``
        is asked before each batch after the first: True ends the pass there (a sequential test that has seen
        enough), and the comparison holds the batches judged so far, in order. ``progress(samples)`` after each
        batch."""
        self.passes += 1
        judge = self.measure.judge(self.names, self.labels)
        started, runs = time.perf_counter(), len(candidates) + 1

        def batches():
            for index, feed in enumerate(self.batches):
                if index and stop is not None and stop(judge):
                    return
                yield feed
                if progress is not None:
                    progress(batch_samples(feed))

        comparison = compare_candidates(self.reference, candidates, self.names, batches(), judge=judge)
        self._run_seconds += time.perf_counter() - started
        self._runs += runs * comparison.samples
        return comparison

    def float_model(self, fold: int | None = None, keep: Sequence[str] = (),
                    correction: BiasCorrection | None | object = _CURRENT, base: Model | None = None) -> Model:
        """The float model the Q/DQ export of fold ``fold`` (None: the written model) starts from: the adopted base
        (the FP32 model, or its smoothed equivalent) or ``base``, with the adopted bias correction (or
        ``correction``) folded into the layers not kept in float."""
        correction = self.correction if correction is _CURRENT else correction
        base = base if base is not None else self.base
        if correction is None:
            return base
        return correction.corrected(base, fold, [*self.excluded, *keep])

    def qdq_runner(self, fold_ranges: list[dict[str, float]], exclude: Sequence[str] = (),
                   ranges_source: str = "the ranges", correction: BiasCorrection | None | object = _CURRENT,
                   base: Model | None = None) -> Run:
        """The Q/DQ model of each fold's ranges (``exclude`` and the user's exclusions in float), one runner
        dispatching by fold. Without a bias correction every fold's model is the same but for its activation
        scales: one session fed each fold's scales (:mod:`.scale_feed`) serves them all."""
        exclude = [*self.excluded, *exclude]
        if (self.correction if correction is _CURRENT else correction) is None:
            float_model = base if base is not None else self.base
            scaled = self._scaled(float_model, exclude, fold_ranges, ranges_source)
            if scaled is not None:
                model, session = scaled
                return self.plan.dispatch([session_runner(session, self.names, model.feed(amax))
                                           for amax in fold_ranges])
        runs = [session_runner(fake_quant_session(export_qdq(self.float_model(fold, exclude, correction, base),
                                                             amax, exclude=exclude, ranges_source=ranges_source,
                                                             check=False).model), self.names)
                for fold, amax in enumerate(fold_ranges)]
        return self.plan.dispatch(runs)

    def _scaled(self, model: Model, exclude: Sequence[str], fold_ranges: Sequence[Mapping[str, float]],
                ranges_source: str) -> tuple[ScaledModel, object] | None:
        """The Q/DQ model of ``model`` with its activation scales fed (:mod:`.scale_feed`) and its session, made
        once per (model, exclusions) and kept for the next candidates (the last ``SCALED_SESSIONS``); None where
        it does not serve ``fold_ranges``."""
        key = (id(model), tuple(exclude))
        if key in self._scaled_sessions:
            kept = self._scaled_sessions.pop(key)
            self._scaled_sessions[key] = kept
            made = kept[1]
            return made if made is not None and all(made[0].fits(amax) for amax in fold_ranges) else None
        scaled = scale_fed(export_qdq(model, fold_ranges[0], exclude=exclude, ranges_source=ranges_source,
                                      check=False), fold_ranges)
        made = (scaled, fake_quant_session(scaled.proto)) if scaled is not None else None
        self._scaled_sessions[key] = (model, made)  # the model held: its id stays its own
        while len(self._scaled_sessions) > SCALED_SESSIONS:
            self._scaled_sessions.pop(next(iter(self._scaled_sessions)))
        return made

    def fp16_runner(self, fold_ranges: list[dict[str, float]], keep: Sequence[str], ranges_source: str) -> Run:
        """Each fold's Q/DQ model (``keep`` and the user's exclusions out of INT8) with its float part in FP16, as
        ``--float-precision fp16`` writes it (:func:`fp16_qdq_model`), one runner dispatching by fold."""
        exclude = [*self.excluded, *keep]
        runs = []
        for fold, amax in enumerate(fold_ranges):
            model = self.float_model(fold, exclude)
            qdq = export_qdq(model, amax, exclude=exclude, ranges_source=ranges_source, check=False).model
            runs.append(session_runner(fake_quant_session(fp16_qdq_model(model, qdq, exclude).proto), self.names))
        return self.plan.dispatch(runs)

    def use_switchable(self, fold_ranges: list[dict[str, float]], ranges_source: str) -> list[str]:
        """Build the switchable model (:mod:`.switch`) of each fold (same layers: the folds quantize the same
        tensors); returns the quantized layers' node names. A layer switched to float reads its original bias.
        Without a bias correction the folds differ only in their activation scales: one model, fed each fold's."""
        if self.correction is None:
            export = export_qdq(self.base, fold_ranges[0], exclude=self.excluded, ranges_source=ranges_source,
                                check=False)
            scaled = scale_fed(export, fold_ranges)
            if scaled is not None:
                switchable = build_switchable(self.model.proto, replace(export, model=scaled.proto))
                session = fake_quant_session(switchable.proto)
                self._switchable = [(switchable, session, scaled.feed(amax)) for amax in fold_ranges]
                return switchable.nodes
        built = []
        for fold, amax in enumerate(fold_ranges):
            corrected = self.float_model(fold)
            values = self.correction.float_values(self.base, corrected) if self.correction is not None else None
            switchable = build_switchable(self.model.proto, export_qdq(corrected, amax, exclude=self.excluded,
                                                                       ranges_source=ranges_source, check=False),
                                          values)
            built.append((switchable, fake_quant_session(switchable.proto), {}))
        self._switchable = built
        return built[0][0].nodes

    def keep_runner(self, keep: Sequence[str]) -> Run:
        """The configuration with ``keep`` in float and every other quantized layer in INT8."""
        assert self._switchable is not None, "use_switchable first"
        kept = set(keep)
        runs = [session_runner(session, self.names, {**switchable.switches([n for n in switchable.nodes
                                                                              if n not in kept]), **scales})
                for switchable, session, scales in self._switchable]
        return self.plan.dispatch(runs)


def fp16_qdq_model(model: Model, qdq: onnx.ModelProto, kept: Sequence[str]):
    """``qdq`` (a Q/DQ model of ``model``) with its float part in FP16, its Q/DQ at opset 19 and float32 inputs and
    outputs: what TensorRT 11 builds for ``--best`` (:func:`trtq.trt.explicit.strongly_typed_model`, pure onnx), the
    ``kept`` layers in FP16 too. Returns the typed model (``.proto``, ``.notes``, ``.warnings``)."""
    from trtq.trt.explicit import strongly_typed_model

    return strongly_typed_model(model, int8=True, fp16=True, keep_precision=dict.fromkeys(kept, "fp16"), qdq=qdq)


@dataclass
class Verified:
    """One configuration the search measured."""

    kept: list[str]
    drop: Estimate | None
    sqnr_db: float
    noise_db: float
    meets_target: bool
    seconds: float

    @property
    def drop_points(self) -> float | None:
        return None if self.drop is None else self.drop.points


def verified(comparison: Comparison, key: str, kept: Sequence[str], meets: Callable[[float, float | None], bool],
             seconds: float) -> Verified:
    """The :class:`Verified` record of candidate ``key`` of a pass (``meets(sqnr, drop)``: the target's check)."""
    judgement = comparison.judgement
    drop = judgement.drop(key) if judgement is not None else None
    sqnr = comparison.outcomes[key].sqnr_db
    return Verified(list(kept), drop, sqnr, judgement.noise_db(key) if judgement is not None else math.nan,
                    meets(sqnr, None if drop is None else drop.points), seconds)


def cost_ordered(ranking: Sequence[tuple[str, float]], macs: Mapping[str, int]) -> list[str]:
    """The keep search's order (module docstring): ``(layer, score)`` pairs of the sensitivity ranking sorted by
    score per share of the MACs; the ranking's own order when no layer's MACs are known, and among equals."""
    total = sum(macs.get(layer, 0) for layer, _score in ranking)
    if total <= 0:
        return [layer for layer, _score in ranking]
    floor = ZERO_MAC_COST / len(ranking)

    def harm_per_compute(item: tuple[int, tuple[str, float]]) -> tuple[float, int]:
        position, (layer, score) = item
        return -max(score, 0.0) / max(macs.get(layer, 0) / total, floor), position

    return [layer for _position, (layer, _score) in sorted(enumerate(ranking), key=harm_per_compute)]


def first_probe(shares: Sequence[float] | None, drop: float | None, max_drop: float | None, max_keep: int) -> int:
    """The gallop's first prefix: the shortest one holding the share of the ranked output noise that all-INT8's
    ``drop`` must lose to reach ``max_drop`` if the drop were proportional to the noise (1 without a drop target,
    a drop, or the layers' shares of the ranking). Only where the search starts: every prefix is measured."""
    if not shares or drop is None or max_drop is None or drop <= max_drop:
        return 1
    positive = np.maximum(np.asarray(shares, dtype=np.float64), 0.0)
    if positive.sum() <= 0:
        return 1
    needed = 1.0 - max(max_drop, 0.0) / drop
    cumulative = np.cumsum(positive) / positive.sum()
    return int(min(max(1, int(np.searchsorted(cumulative, needed - 1e-12)) + 1), max_keep))


def search_keep(verifier: Verifier, ranking: Sequence[str], meets: Callable[[float, float | None], bool],
                max_keep: int, baseline: Judgement, baseline_key: str,
                note: Callable[[str], None] = lambda _m: None,
                max_drop: float | None = None,
                shares: Sequence[float] | None = None) -> tuple[list[Verified], int | None]:
    """Gallop then bisect over prefixes of ``ranking`` (module docstring). Returns every configuration measured,
    in order, and the size of the smallest prefix found to meet the target (None: none within ``max_keep``).
    ``shares``: each ranked layer's share of the output noise, in the order of ``ranking``: the gallop starts at
    :func:`first_probe` instead of 1.

    ``baseline`` is the judgement of the pass that measured all-INT8 (candidate ``baseline_key``) on the same
    batches in the same order: a prefix must beat it beyond the noise, compared sample by sample. With a drop target
    ``max_drop``, a configuration's pass stops early when, at a quarter, half or three quarters of the samples, its
    drop is ``EARLY_STOP_Z`` standard errors beyond the target: it cannot meet it."""
    steps: list[Verified] = []
    reference_losses, reference_noise = baseline.losses[baseline_key], baseline.noise[baseline_key]
    weights = baseline.unit_weights

    total = len(reference_losses)
    looked: set[int] = set()

    def hopeless(judge: Judge) -> bool:
        """At the first batch past each quarter of the samples, whether the drop is beyond the target by more than
        ``EARLY_STOP_Z`` standard errors (wider than the 95 % interval: three looks must not stop a configuration
        whose full pass would meet the target, Pocock's rule of thumb)."""
        parts = judge.losses.get("step", [])
        seen = sum(len(p) for p in parts)
        quarter = 4 * seen // total
        if max_drop is None or quarter < 1 or quarter >= 4 or quarter in looked:
            return False
        looked.add(quarter)
        return estimate(np.concatenate(parts), z=EARLY_STOP_Z).low > max_drop

    sizes: dict[int, tuple[np.ndarray, bool]] = {0: (np.asarray(reference_losses), False)}  # losses, partial

    def separable(low: int, high: int) -> bool:
        """Whether prefix ``high`` has a lower drop than prefix ``low`` beyond the noise (a pass stopped early as
        hopeless counts as beyond)."""
        (low_losses, low_partial), (high_losses, _) = sizes[low], sizes[high]
        return low_partial or better_beyond_noise(high_losses, low_losses, weights)

    def measure(size: int) -> bool:
        looked.clear()
        started = time.perf_counter()
        kept = list(ranking[:size])
        comparison = verifier.compare({"step": verifier.keep_runner(kept)}, stop=hopeless)
        step = verified(comparison, "step", kept, meets, time.perf_counter() - started)
        judgement = comparison.judgement
        partial = False
        if judgement is not None:
            losses, noise = judgement.losses["step"], judgement.noise["step"]
            partial = len(losses) < total
            beyond = improves(losses, noise, reference_losses, reference_noise, weights)
            step.meets_target = step.meets_target and beyond and not partial
            sizes[size] = (np.asarray(losses), partial)
        steps.append(step)
        drop = f"drop {step.drop.short()} points" if step.drop is not None else f"SQNR {step.sqnr_db:.2f} dB"
        stopped = f", stopped after {len(judgement.losses['step'])} of {total} samples" if partial else ""
        note(f"  keep {size:>3} in float: {drop} ({'meets' if step.meets_target else 'misses'} the target{stopped})")
        return step.meets_target

    low, high, size = 0, None, first_probe(shares, baseline.drop(baseline_key).points if max_drop is not None else None,
                                           max_drop, max_keep)
    while size <= max_keep:
        if measure(size):
            high = size
            break
        low = size
        if size == max_keep:
            break
        size = min(2 * size, max_keep)
    if high is None:
        return steps, None
    while high - low > 1:
        if low in sizes and not separable(low, high):
            note(f"  keep {low} and keep {high} in float do not differ beyond the noise on {total} samples: no prefix "
                 f"between them can be told from either; keeping {high}")
            break
        middle = (low + high) // 2
        if measure(middle):
            high = middle
        else:
            low = middle
    return steps, high
