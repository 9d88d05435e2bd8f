"""Accuracy of an already-quantized (Q/DQ, QAT) model, measured on its own scales: ``trtq evaluate`` and
``trtq sensitivity`` for a model with Q/DQ of its own.

The quantized model runs as it is in onnxruntime (the fake-quantised arithmetic TensorRT's INT8 layers
reproduce). Its reference is its FP32 twin (``--reference FP32.onnx``) or, without one, the same graph with
every Q/DQ pair removed (:func:`trtq.export.existing.float_twin`: scale-preserving, weights dequantized to
float), so what is measured is what the Q/DQ costs. Sensitivity removes one pair at a time, ranks the pairs
by how much closer to the reference the model gets without each, and, for a target, finds how many pairs
from the top of that ranking must go (each prefix verified on the same data).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from trtq.accuracy.evaluate import Comparison, Outcome, compare_candidates
from trtq.accuracy.labels import Labels
from trtq.errors import TrtqError
from trtq.export.compare import fake_quant_session, session_runner
from trtq.export.existing import float_twin, reference_weights, remove_qdq
from trtq.model import Model
from trtq.qdq_model import QdqPair

QUANTIZED = "int8"  # the candidate key of the model as it is (format_accuracy's label)


@dataclass
class Reference:
    proto: onnx.ModelProto
    description: str
    float_weights: dict[str, np.ndarray] = field(default_factory=dict)  # stored integer weight -> FP32 weight
    note: str = ""  # what this reference cannot measure (said once by the commands)


def reference_for(model: Model, twin: Model | None) -> Reference:
    """The FP32 twin, checked to have the same inputs and outputs, or the model without its Q/DQ pairs."""
    stored = [p for p in model.quantization.pairs if p.q_node is None and p.kind == "weight"]
    if twin is None:
        note = ""
        if stored:
            rankable = [p for p in model.quantization.pairs if p.kind != "bias"]
            if len(stored) == len(rankable):
                raise TrtqError(f"{model.name} stores all its {len(stored)} quantized weights as integers "
                                "(DequantizeLinear only) and quantizes no activation: without their float values "
                                "there is nothing to compare with; give --reference FP32.onnx")
            note = (f"{len(stored)} weights are stored as integers (DequantizeLinear only): without --reference "
                    "their rounding is not measured (the comparison uses the same dequantized values)")
        return Reference(float_twin(model), "the same graph without its Q/DQ pairs", note=note)
    if twin.quantization.explicit:
        raise TrtqError(f"--reference {twin.name} is quantized too; give the FP32 model the Q/DQ model came from")
    mine = sorted(s.name for s in model.inputs), list(model.output_names)
    theirs = sorted(s.name for s in twin.inputs), list(twin.output_names)
    if mine != theirs:
        raise TrtqError(f"--reference {twin.name} is not {model.name}'s FP32 twin: inputs/outputs {theirs[0]} -> "
                        f"{theirs[1]} vs {mine[0]} -> {mine[1]}")
    weights = reference_weights(model, twin.proto)
    note = ""
    if len(weights) < len(stored):
        note = (f"{len(stored) - len(weights)} of {len(stored)} integer-stored weights have no same-named "
                f"consumer in {twin.name}: removing their pairs keeps the dequantized values")
    return Reference(twin.proto, f"FP32 model {twin.name}", weights, note)


def _run(proto: onnx.ModelProto, names: Sequence[str]):
    return session_runner(fake_quant_session(proto), names)


def evaluate_existing(model: Model, batches, reference: Reference, *, labels: Labels | None = None,
                      logits: str | None = None, source=None) -> Comparison:
    """The Q/DQ model as it is vs ``reference``, per output (and with labels, accuracy of both)."""
    names = list(model.output_names)
    return compare_candidates(_run(reference.proto, names), {QUANTIZED: _run(model.proto, names)}, names, batches,
                              labels=labels, source=source, logits=logits)


@dataclass
class PairEffect:
    pair: QdqPair
    without: Outcome  # the model with this one pair removed, vs the reference
    drop: float | None  # top-1 points lost vs the reference without this pair (labels, else agreement)


@dataclass
class QdqSensitivity:
    reference: str
    samples: int
    baseline: Outcome
    baseline_drop: float | None
    ranking: list[PairEffect]
    steps: list[tuple[int, Outcome, float | None]]  # (pairs removed from the top, outcome, drop)
    to_drop: list[QdqPair] | None  # None: no target given, or not met even with every ranked pair removed
    target: str | None

    def document(self) -> dict:
        def outcome(o: Outcome, drop: float | None) -> dict:
            sqnr = o.sqnr_db
            return {"sqnr_db": sqnr if math.isfinite(sqnr) else None, "top1_agreement": o.top1_agreement,
                    "accuracy": o.accuracy, "drop_points": drop}

        return {
            "reference": self.reference, "samples": self.samples, "baseline": outcome(self.baseline,
                                                                                     self.baseline_drop),
            "ranking": [{"pair": e.pair.name, "tensor": e.pair.tensor, "kind": e.pair.kind,
                         "without": outcome(e.without, e.drop)} for e in self.ranking],
            "target": self.target, "drop": None if self.to_drop is None else [p.name for p in self.to_drop],
        }


def _drop(comparison: Comparison, key: str) -> float | None:
    if comparison.reference_accuracy is not None:
        return comparison.drop_points(key)
    agreement = comparison.outcomes[key].top1_agreement
    return None if agreement is None else 100.0 * (1.0 - agreement)


def rank_pairs(model: Model, batches: list[Mapping[str, np.ndarray]], reference: Reference, *,
               labels: Labels | None = None, logits: str | None = None, target_sqnr: float | None = None,
               max_drop: float | None = None, source=None) -> QdqSensitivity:
    """Remove one pair at a time and rank; with a target, the shortest prefix of the ranking that meets it."""
    names = list(model.output_names)
    pairs = [p for p in model.quantization.pairs if p.kind != "bias"]  # int32 biases cost nothing measurable
    if not pairs:
        raise TrtqError(f"{model.name} has no Q/DQ pairs to rank")
    reference_run = _run(reference.proto, names)
    candidates = {QUANTIZED: _run(model.proto, names)}
    for index, pair in enumerate(pairs):
        candidates[f"without:{index}"] = _run(remove_qdq(model, [pair], reference.float_weights), names)
    first = compare_candidates(reference_run, candidates, names, batches, labels=labels, source=source,
                               logits=logits)
    effects = [PairEffect(pair, first.outcomes[f"without:{i}"], _drop(first, f"without:{i}"))
               for i, pair in enumerate(pairs)]
    effects.sort(key=lambda e: (e.without.noise, e.drop if e.drop is not None else 0.0))

    def met(outcome: Outcome, drop: float | None) -> bool:
        return ((target_sqnr is None or outcome.sqnr_db >= target_sqnr)
                and (max_drop is None or (drop is not None and drop <= max_drop)))

    baseline, baseline_drop = first.outcomes[QUANTIZED], _drop(first, QUANTIZED)
    steps: list[tuple[int, Outcome, float | None]] = []
    to_drop = None
    target = None
    if target_sqnr is not None or max_drop is not None:
        target = " and ".join(t for t in (f"SQNR >= {target_sqnr:g} dB" if target_sqnr is not None else "",
                                          f"top-1 drop <= {max_drop:g} points" if max_drop is not None else "") if t)
        if met(baseline, baseline_drop):
            to_drop = []
        else:
            prefixes = {f"top:{k}": _run(remove_qdq(model, [e.pair for e in effects[:k]], reference.float_weights),
                                         names)
                        for k in range(1, len(effects) + 1)}
            verified = compare_candidates(reference_run, prefixes, names, batches, labels=labels, source=source,
                                          logits=logits)
            for k in range(1, len(effects) + 1):
                outcome, drop = verified.outcomes[f"top:{k}"], _drop(verified, f"top:{k}")
                steps.append((k, outcome, drop))
                if met(outcome, drop):
                    to_drop = [e.pair for e in effects[:k]]
                    break
    return QdqSensitivity(reference.description, first.samples, baseline, baseline_drop, effects, steps, to_drop,
                          target)


def format_pair_ranking(result: QdqSensitivity, limit: int | None = None) -> str:
    def sqnr(o: Outcome) -> str:
        return "inf" if not math.isfinite(o.sqnr_db) else f"{o.sqnr_db:.1f}"

    def drop(value: float | None) -> str:
        return "-" if value is None else f"{value:+.2f}"

    lines = [f"{'rank':>4}  {'pair (QuantizeLinear / stored weight)':<44} {'kind':<10} {'SQNR without':>12} "
             f"{'drop without':>12}",
             f"{'':>4}  {'(all pairs, as the model is)':<44} {'':<10} {sqnr(result.baseline):>12} "
             f"{drop(result.baseline_drop):>12}"]
    for rank, effect in enumerate(result.ranking[:limit] if limit else result.ranking, start=1):
        lines.append(f"{rank:>4}  {effect.pair.name:<44} {effect.pair.kind:<10} {sqnr(effect.without):>12} "
                     f"{drop(effect.drop):>12}")
    return "\n".join(lines)


def drop_file_text(result: QdqSensitivity, model_name: str) -> str:
    pairs = result.to_drop or []
    stored = any(p.q_node is None and p.kind == "weight" for p in pairs)
    reference = " --reference FP32.onnx" if stored and result.reference.startswith("FP32 model") else ""
    head = (f"# Q/DQ pairs of {model_name} to remove for {result.target} vs {result.reference} (trtq sensitivity)\n"
            f"# use: trtq export MODEL --remove-qdq @FILE{reference} -o MODEL.trimmed.onnx, then trtq build\n")
    return head + "".join(f"{p.name}\n" for p in pairs)
