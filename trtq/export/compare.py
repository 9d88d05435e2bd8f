"""How close an exported model stays to the float32 original, measured with onnxruntime.

Both models see the same feeds; per output we accumulate running sums (no output is kept in
memory), so any number of batches costs O(1) memory:

- cosine similarity of all values, and the worst per-sample cosine (an outlier shows up there);
- SQNR in dB, 10*log10(sum ref^2 / sum (ref - exported)^2) (infinite when they are identical);
- largest and mean absolute difference;
- top-1 agreement (argmax over the last axis) for outputs with more than one class.

Sessions run with basic graph optimisations only and onnxruntime's Q/DQ transformers off: the
extended QDQ fusions would replace the Q/DQ arithmetic by its own integer kernels (u8s8 with
saturation on some x86 CPUs), and the basic level's bias quantization rounds float biases to int32,
neither of which TensorRT computes; the plain Q/DQ graph is the exact fake-quantised reference.
For FP16 models the numbers are optimistic: onnxruntime's CPU runs ops that lack a float16 kernel
in float32 and removes the cast pairs around them, so float16 rounding and overflow inside such
ops does not show (TensorRT computes them in float16).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from trtq.errors import TrtqError


@dataclass(frozen=True)
class OutputAgreement:
    name: str
    samples: int
    cosine: float
    min_sample_cosine: float
    sqnr_db: float
    max_abs_error: float
    mean_abs_error: float
    top1_agreement: float | None  # fraction of samples whose argmax matches; None for one-class outputs
    floating: bool = True  # False for integer/bool outputs (indices, counts): their SQNR is no accuracy measure

    def document(self) -> dict:
        """The JSON form (``trtq evaluate --json``, ``trtq run``): SQNR ``None`` when the outputs are identical."""
        return {
            "cosine": self.cosine,
            "min_sample_cosine": self.min_sample_cosine,
            "sqnr_db": self.sqnr_db if math.isfinite(self.sqnr_db) else None,
            "max_abs": self.max_abs_error,
            "mean_abs": self.mean_abs_error,
            "top1_agreement": self.top1_agreement,
        }


class _Accumulator:
    def __init__(self) -> None:
        self.samples = 0
        self.dot = self.ref_sq = self.out_sq = self.err_sq = 0.0
        self.max_abs_error = self.abs_error_sum = 0.0
        self.values = 0
        self.min_sample_cosine = 1.0
        self.top1_same = self.top1_total = 0
        self.floating = True

    def add(self, reference: np.ndarray, exported: np.ndarray) -> None:
        self.floating = bool(np.issubdtype(np.asarray(reference).dtype, np.floating))
        ref = np.asarray(reference, dtype=np.float64)
        out = np.asarray(exported, dtype=np.float64)
        if ref.shape != out.shape:
            raise TrtqError(f"output shapes differ: float32 model {ref.shape}, exported model {out.shape}")
        if ref.size == 0:
            return
        rows_ref = ref.reshape(ref.shape[0], -1) if ref.ndim >= 1 else ref.reshape(1, 1)
        rows_out = out.reshape(rows_ref.shape)
        diff = rows_ref - rows_out
        abs_diff = np.abs(diff)
        # per-sample sums: the per-sample cosine, and (summed) the totals
        dot, ref_sq, out_sq = (np.sum(rows_ref * rows_out, axis=1), np.sum(rows_ref * rows_ref, axis=1),
                               np.sum(rows_out * rows_out, axis=1))
        self.samples += rows_ref.shape[0]
        self.dot += float(dot.sum())
        self.ref_sq += float(ref_sq.sum())
        self.out_sq += float(out_sq.sum())
        self.err_sq += float(np.sum(diff * diff))
        self.max_abs_error = max(self.max_abs_error, float(abs_diff.max()))
        self.abs_error_sum += float(abs_diff.sum())
        self.values += diff.size
        self.min_sample_cosine = min(self.min_sample_cosine, float(_cosine(dot, ref_sq, out_sq).min()))
        if ref.ndim >= 1 and ref.shape[-1] > 1:
            classes_ref = ref.reshape(-1, ref.shape[-1]).argmax(axis=1)
            classes_out = out.reshape(-1, out.shape[-1]).argmax(axis=1)
            self.top1_same += int(np.count_nonzero(classes_ref == classes_out))
            self.top1_total += classes_ref.size

    def merge(self, other: _Accumulator) -> None:
        """Add the sums of later data (a batch's sums added to a fresh accumulator are the batch's own values,
        so merging batch by batch in order repeats :meth:`add`'s arithmetic exactly)."""
        self.floating = other.floating
        self.samples += other.samples
        self.dot += other.dot
        self.ref_sq += other.ref_sq
        self.out_sq += other.out_sq
        self.err_sq += other.err_sq
        self.max_abs_error = max(self.max_abs_error, other.max_abs_error)
        self.abs_error_sum += other.abs_error_sum
        self.values += other.values
        self.min_sample_cosine = min(self.min_sample_cosine, other.min_sample_cosine)
        self.top1_same += other.top1_same
        self.top1_total += other.top1_total

    def result(self, name: str) -> OutputAgreement:
        cosine = float(_cosine(np.array(self.dot), np.array(self.ref_sq), np.array(self.out_sq)))
        if self.err_sq == 0:
            sqnr = math.inf
        elif self.ref_sq == 0:
            sqnr = -math.inf
        else:
            sqnr = 10.0 * math.log10(self.ref_sq / self.err_sq)
        top1 = self.top1_same / self.top1_total if self.top1_total else None
        mean_abs = self.abs_error_sum / self.values if self.values else 0.0
        return OutputAgreement(name, self.samples, cosine, self.min_sample_cosine, sqnr, self.max_abs_error, mean_abs,
                               top1, self.floating)


def _cosine(dot: np.ndarray, ref_sq: np.ndarray, out_sq: np.ndarray) -> np.ndarray:
    """Cosine similarity; two all-zero vectors agree perfectly (1), one zero vector not at all (0)."""
    norm = np.sqrt(ref_sq * out_sq)
    both_zero = (ref_sq == 0) & (out_sq == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(norm > 0, dot / np.where(norm > 0, norm, 1.0), 0.0)
    return np.where(both_zero, 1.0, value)


# Fusions that rewrite a layer only when its weight (or a neighbour's operand) is a constant: the switchable model's
# weights come through a Where, so with them on, a layer kept in float there computes in another order than the
# same layer in the exported model. Off, as is weight prepacking (another summation order for constant weights
# only), so that every configuration computes bit for bit as its exported model does. The set is the one that made
# the ViT's two models agree exactly (with these off: max difference 0.0; with only prepacking off: 0.001).
WEIGHT_FOLDING_FUSIONS = ("ConvAddFusion", "ConvMulFusion", "ConvBNFusion", "DivMulFusion", "MatMulScaleFusion",
                          "MatmulTransposeFusion", "GemmTransposeFusion")


def fake_quant_session(model: onnx.ModelProto | bytes | str | os.PathLike, arena: bool = True):
    """An onnxruntime session that computes Q/DQ arithmetic as written (no integer-kernel fusions), and the same
    float arithmetic whether a weight is a constant or switched at run time (:data:`WEIGHT_FOLDING_FUSIONS`: on
    a ViT the switchable model and the exported one differed by 0.03 in a sigmoid output, 0.4 points of a
    thresholded map's IoU, from summation order alone). ``arena=False``: its memory goes back after each run
    instead of staying with the session (for the many sessions of a sensitivity ranking, each of which would
    otherwise hold its own peak)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = arena
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    # No Q/DQ rewrites at all: since onnxruntime 1.20 even the basic level quantizes a float Gemm/Conv bias
    # behind Q/DQ inputs to int32 (WeightBiasQuantization), which TensorRT does not do (it adds the bias in float).
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    options.add_session_config_entry("session.disable_prepacking", "1")
    options.log_severity_level = 3
    payload = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    if isinstance(payload, os.PathLike):
        payload = os.fspath(payload)
    return ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(WEIGHT_FOLDING_FUSIONS))


Run = Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]  # feed -> outputs, in the order of `names`
Observer = Callable[[list[np.ndarray], dict[str, list[np.ndarray]]], None]


def session_runner(session, names: Sequence[str], extra_feed: Mapping[str, np.ndarray] | None = None) -> Run:
    """``feed -> outputs`` for ``names``: the feed's entries the session takes, plus ``extra_feed``
    (fixed inputs, e.g. the layer switches of a switchable model)."""
    inputs = [i.name for i in session.get_inputs()]
    names = list(names)
    extra = dict(extra_feed or {})

    def run(feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        values = {name: feed[name] for name in inputs if name in feed}
        values.update(extra)
        return session.run(names, values)

    return run


def compare_runs(
    reference: Run,
    candidates: Mapping[str, Run],
    names: list[str],
    batches: Iterable[Mapping[str, np.ndarray]],
    observe: Observer | None = None,
) -> dict[str, list[OutputAgreement]]:
    """Compare several candidates with one reference on every feed: the reference runs once per
    feed however many candidates there are. ``observe(reference_outputs, {candidate: outputs})``
    sees each batch's outputs (e.g. to score them against labels). Returns candidate -> rows."""
    return fold_sums(batch_sums(reference, candidates, names, batches, observe), names, list(candidates))


BatchSums = dict[str, list[_Accumulator]]  # candidate -> one batch's sums per output, in the order of `names`


def batch_sums(reference: Run, candidates: Mapping[str, Run], names: list[str],
               batches: Iterable[Mapping[str, np.ndarray]], observe: Observer | None = None) -> Iterator[BatchSums]:
    """The running sums of :func:`compare_runs`, batch by batch, each batch's on its own (small, picklable):
    :func:`fold_sums` of them in batch order is :func:`compare_runs`, to the last bit, wherever each
    batch ran (``trtq evaluate --ray``)."""
    for feed in batches:
        reference_outputs = reference(feed)
        outputs, sums = {}, {}
        for key, run in candidates.items():
            outputs[key] = run(feed)
            sums[key] = [_Accumulator() for _ in names]
            for accumulator, ref, out in zip(sums[key], reference_outputs, outputs[key], strict=True):
                accumulator.add(ref, out)
        if observe is not None:
            observe(reference_outputs, outputs)
        yield sums


def fold_sums(parts: Iterable[BatchSums], names: list[str], keys: Sequence[str]) -> dict[str, list[OutputAgreement]]:
    """Candidate -> rows from the batch sums of :func:`batch_sums`, added in the order given."""
    accumulators = {key: [_Accumulator() for _ in names] for key in keys}
    for part in parts:
        for key, per_output in accumulators.items():
            for accumulator, other in zip(per_output, part[key], strict=True):
                accumulator.merge(other)
    if not any(acc.samples for per_output in accumulators.values() for acc in per_output):
        raise TrtqError("no data to compare the models on: the data source yielded no batch")
    return {key: [acc.result(name) for name, acc in zip(names, per_output, strict=True)]
            for key, per_output in accumulators.items()}


def compare_outputs(
    reference: onnx.ModelProto | bytes | str | os.PathLike,
    exported: onnx.ModelProto | bytes | str | os.PathLike,
    batches: Iterable[Mapping[str, np.ndarray]],
) -> list[OutputAgreement]:
    """Run both models on every feed dict of ``batches`` and measure how close their outputs are."""
    ref_session, out_session = fake_quant_session(reference), fake_quant_session(exported)
    names = [o.name for o in ref_session.get_outputs()]
    exported_names = {o.name for o in out_session.get_outputs()}
    missing = [n for n in names if n not in exported_names]
    if missing:
        raise TrtqError(f"the exported model lacks output(s) {', '.join(missing)} of the float32 model")
    runs = {"exported": session_runner(out_session, names)}
    return compare_runs(session_runner(ref_session, names), runs, names, batches)["exported"]


def format_agreement_table(rows: Iterable[OutputAgreement], mean_abs: bool = False) -> str:
    """A short fixed-width table, one line per output (``mean_abs`` adds a mean |err| column)."""
    rows = list(rows)
    width = max([len("output"), *(len(r.name) for r in rows)])
    mean_head = f"  {'mean |err|':>10}" if mean_abs else ""
    lines = [f"{'output':<{width}}  {'samples':>7}  {'cosine':>8}  {'min cos':>8}  {'SQNR dB':>7}  "
             f"{'max |err|':>10}{mean_head}  {'top-1 agree':>11}"]
    for r in rows:
        top1 = f"{100 * r.top1_agreement:.2f} %" if r.top1_agreement is not None else "-"
        mean = f"  {r.mean_abs_error:>10.4g}" if mean_abs else ""
        lines.append(f"{r.name:<{width}}  {r.samples:>7}  {r.cosine:>8.5f}  {r.min_sample_cosine:>8.5f}  "
                     f"{r.sqnr_db:>7.2f}  {r.max_abs_error:>10.4g}{mean}  {top1:>11}")
    return "\n".join(lines)
