"""Layer-output-aware ranges: each quantized activation's amax chosen by the error of its consumers' outputs.

Why: every range method scores a tensor by its own values (clipping and rounding error of the activation, or
the histogram's information loss). What a network feels is the error of the layer that reads the tensor: a
convolution averages rounding noise over its kernel but passes clipped outliers on whole, so the best amax
for the layer's output is not the best for the tensor. AIMET's sequential MSE (``apply_seq_mse``) chooses each
scale by that output error; this is its activation half, on the ONNX graph with onnxruntime.

How: for each activation tensor read by a quantized Conv / ConvTranspose / Gemm / MatMul, candidates around the
current amax (``FACTORS`` times it, none above the tensor's largest |value|) are scored by the summed squared
error of every such consumer's output, computed with INT8 weights and the candidate-quantized tensor against
the float consumer on the float tensor (the consumer's other activation inputs stay float: the error scored is
this tensor's). The FP32 values of the tensors are recorded on a few calibration samples (``FIT_SAMPLES``), in
groups that fit the memory budget; each consumer's float output is computed once per batch, each candidate
costs one run of the consumers alone.

Cross-fitting (:mod:`.crossfit`): errors are summed per fold; fold ``k``'s choice minimises the other folds'
sum, the written model's all of them. The candidates are relative to the amax of all the data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtq.capture import with_extra_outputs
from trtq.export.graph import GraphIndex, constant_value, node_label
from trtq.export.qdq import INT8_MAX, QdqExport, _weight_axis, weight_scales
from trtq.model import Model
from trtq.segments import batch_samples, estimate_sizes, resolve_budget

Feed = Mapping[str, np.ndarray]
FACTORS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.12, 1.25, 1.4, 1.6, 2.0)  # candidates: these times the current amax
FIT_SAMPLES = 32  # calibration samples the errors are measured on, over all folds
_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_PROBE_OPSET = 13


@dataclass
class Probe:
    """One activation tensor, the quantized layers that read it, and its candidate amax values."""

    tensor: str
    consumers: list[int]  # node indices in the model graph
    candidates: np.ndarray
    inputs: list[str] = field(default_factory=list)  # float tensors the consumers read (the tensor first)
    current: float = 0.0  # its amax before


def plan_probes(model: Model, export: QdqExport, amax: Mapping[str, float],
                maxima: Mapping[str, float]) -> list[Probe]:
    """A probe per activation tensor with a quantized weighted consumer that has a constant weight."""
    graph = model.graph
    index = GraphIndex(graph)
    quantized = set(export.plan.quantized_nodes)
    constants = model.constant_tensors
    probes = []
    for tensor in dict.fromkeys(export.activation_tensors):
        readers = [i for i, _slot in index.consumers.get(tensor, [])
                   if graph.node[i].op_type in _WEIGHTED and node_label(graph.node[i]) in quantized
                   and any(name in constants for name in graph.node[i].input[:2] if name)]
        current = float(amax.get(tensor, 0.0))
        if not readers or not current > 0 or not np.isfinite(current):
            continue
        largest = float(maxima.get(tensor, current))
        values = sorted({min(current * f, max(largest, current)) for f in FACTORS})
        readers = list(dict.fromkeys(readers))
        inputs = [tensor] + [name for i in readers for name in graph.node[i].input
                             if name and name != tensor and name not in constants]
        probes.append(Probe(tensor, readers, np.array(values, dtype=np.float64), list(dict.fromkeys(inputs)),
                            current))
    return probes


def _probe_models(model: Model, probe: Probe, types: Mapping[str, int]) -> tuple[bytes, bytes, list[str]]:
    """(float consumers, quantized consumers, the float outputs' names): the float model outputs each consumer's
    output; the quantized one reads the tensor through Q/DQ at the ``scale`` input, the weights as INT8 values,
    the float outputs as inputs, and outputs the summed squared error of all consumers."""
    graph = model.graph
    constants = model.constant_tensors
    float_nodes, quant_nodes, initializers, quant_initializers = [], [], [], []
    seen: set[str] = set()
    float_outputs = []
    for position, node_index in enumerate(probe.consumers):
        node = graph.node[node_index]
        float_node, quant_node = onnx.NodeProto(), onnx.NodeProto()
        float_node.CopyFrom(node)
        quant_node.CopyFrom(node)
        for slot, name in enumerate(node.input):
            if not name or name not in constants:
                continue
            value = constant_value(model, name)
            if name not in seen:
                initializers.append(numpy_helper.from_array(value, name))
                seen.add(name)
            if slot < 2 and value.ndim >= 1:  # the weight, as TensorRT holds it: int8 per output channel
                axis = _weight_axis(node, slot, value.ndim)
                scales = weight_scales(value, axis)
                shape = [1] * value.ndim
                if axis is not None:
                    shape[axis] = -1
                rounded = np.clip(np.rint(value / scales.reshape(shape)), -INT8_MAX - 1, INT8_MAX)
                quantized_name = f"{name}__trtq_int8_{position}"
                quant_initializers.append(numpy_helper.from_array(
                    (rounded * scales.reshape(shape)).astype(value.dtype), quantized_name))
                quant_node.input[slot] = quantized_name
        for slot, name in enumerate(node.input):
            if name == probe.tensor:
                quant_node.input[slot] = "trtq_probe_dequantized"
        del float_node.output[:], quant_node.output[:]
        float_node.output.append(f"trtq_probe_float_{position}")
        quant_node.output.append(f"trtq_probe_int8_{position}")
        float_nodes.append(float_node)
        quant_nodes.append(quant_node)
        float_outputs.append(float_node.output[0])

    def value_info(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, types.get(name, TensorProto.FLOAT), None)

    inputs = [value_info(name) for name in probe.inputs]
    float_graph = helper.make_graph(float_nodes, "trtq_probe_float", inputs,
                                    [onnx.ValueInfoProto(name=n) for n in float_outputs], initializers)
    errors = []
    tail = [helper.make_node("QuantizeLinear", [probe.tensor, "trtq_probe_scale", "trtq_probe_zero"],
                             ["trtq_probe_quantized"]),
            helper.make_node("DequantizeLinear", ["trtq_probe_quantized", "trtq_probe_scale", "trtq_probe_zero"],
                             ["trtq_probe_dequantized"])]
    for position, name in enumerate(float_outputs):
        tail.append(helper.make_node("Sub", [f"trtq_probe_int8_{position}", name], [f"trtq_probe_diff_{position}"]))
        tail.append(helper.make_node("ReduceSumSquare", [f"trtq_probe_diff_{position}"],
                                     [f"trtq_probe_error_{position}"], keepdims=0))
        errors.append(f"trtq_probe_error_{position}")
    total = errors[0]
    if len(errors) > 1:
        tail.append(helper.make_node("Sum", errors, ["trtq_probe_error"]))
        total = "trtq_probe_error"
    zero = numpy_helper.from_array(np.array(0, dtype=np.int8), "trtq_probe_zero")
    quant_graph = helper.make_graph(
        tail[:2] + quant_nodes + tail[2:], "trtq_probe_int8",
        [*inputs, helper.make_tensor_value_info("trtq_probe_scale", TensorProto.FLOAT, []),
         *[helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in float_outputs]],
        [onnx.ValueInfoProto(name=total)], [*initializers, *quant_initializers, zero])
    opset = [helper.make_opsetid("", max(_PROBE_OPSET, model.opset))]
    make = (lambda g: helper.make_model(g, opset_imports=opset, ir_version=8).SerializeToString())  # noqa: E731
    return make(float_graph), make(quant_graph), float_outputs


def _groups(model: Model, probes: Sequence[Probe], feed: Feed, budget: int) -> list[list[Probe]]:
    """Probes in groups whose recorded tensors fit ``budget`` bytes for the batch ``feed``."""
    sizes = estimate_sizes(model.proto, feed, batch_samples(feed)) or {}
    largest = max(sizes.values(), default=0.0)
    groups: list[list[Probe]] = [[]]
    used = 0.0
    for probe in probes:
        size = sum(sizes.get(name, largest) for name in probe.inputs)
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0.0
        groups[-1].append(probe)
        used += size
    return [g for g in groups if g]


def fit_sets_within(fit_sets: Sequence[Sequence[Feed]], samples: int = FIT_SAMPLES) -> list[list[Feed]]:
    """Each fold's first batches, up to its share of ``samples`` (at least one batch per fold that has one): every
    fold's choice is made on the other folds' errors, so none may be empty."""
    share = -(-samples // max(len(fit_sets), 1))
    chosen: list[list[Feed]] = []
    for batches in fit_sets:
        taken, picked = 0, []
        for feed in batches:
            if taken >= share:
                break
            picked.append(feed)
            taken += batch_samples(feed)
        chosen.append(picked)
    return chosen


@dataclass
class OutputRanges:
    """The chosen amax of every probed tensor: per fold (from the other folds' errors) and overall."""

    fold_choices: list[dict[str, float]]
    total_choice: dict[str, float]
    errors: dict[str, np.ndarray]  # tensor -> [folds, candidates] summed squared errors
    candidates: dict[str, np.ndarray]
    current: dict[str, float]  # the amax before
    samples: int
    skipped: dict[str, str] = field(default_factory=dict)  # tensor -> why it kept its amax

    def apply(self, fold_ranges: Sequence[Mapping[str, float]], amax: Mapping[str, float]
              ) -> tuple[list[dict[str, float]], dict[str, float]]:
        return ([{**ranges, **choice} for ranges, choice in zip(fold_ranges, self.fold_choices, strict=True)],
                {**amax, **self.total_choice})

    def document(self) -> dict:
        ratios = np.array([self.total_choice[t] / self.current[t] for t in self.total_choice if self.current[t] > 0])
        return {"tensors": len(self.total_choice), "samples": self.samples,
                "lowered": int(np.sum(ratios < 0.999)), "raised": int(np.sum(ratios > 1.001)),
                "median_factor": float(np.median(ratios)) if ratios.size else None, "skipped": self.skipped}


def fit_output_ranges(model: Model, export: QdqExport, amax: Mapping[str, float], maxima: Mapping[str, float],
                      fit_sets: Sequence[Sequence[Feed]]) -> OutputRanges | None:
    """Score every probe's candidates on each fold's batches and choose (module docstring). None: nothing to probe."""
    from trtq.export.compare import fake_quant_session

    probes = plan_probes(model, export, amax, maxima)
    sets = fit_sets_within(fit_sets)
    feeds = [feed for batches in sets for feed in batches]
    if not probes or not feeds:
        return None
    types = model.tensor_types
    errors = {p.tensor: np.zeros((len(sets), len(p.candidates))) for p in probes}
    budget = resolve_budget(None)[0] // 2
    skipped: dict[str, str] = {}
    graph_inputs = {spec.name for spec in model.inputs}
    for group in _groups(model, probes, feeds[0], budget):
        names = list(dict.fromkeys(name for p in group for name in p.inputs))
        computed = [n for n in names if n not in graph_inputs]
        recorder = fake_quant_session(with_extra_outputs(model.proto, computed), arena=False)
        recorded = [[{**{n: feed[n] for n in names if n in graph_inputs},
                      **dict(zip(computed, recorder.run(computed, dict(feed)), strict=True))} for feed in batches]
                    for batches in sets]
        del recorder
        for probe in group:
            try:
                _score(model, probe, types, recorded, errors[probe.tensor])
            except Exception as exc:  # an op onnxruntime cannot run alone: the tensor keeps its amax
                skipped[probe.tensor] = str(exc).splitlines()[0][:200]
        del recorded
    scored = [p for p in probes if p.tensor not in skipped]
    chosen = _choose(scored, errors, len(sets), sum(batch_samples(f) for f in feeds))
    chosen.current = {p.tensor: float(amax[p.tensor]) for p in scored}
    chosen.skipped = skipped
    return chosen


def _score(model: Model, probe: Probe, types: Mapping[str, int], recorded: list[list[dict[str, np.ndarray]]],
           errors: np.ndarray) -> None:
    """Add each candidate's summed squared output error, per fold, to ``errors`` ([folds, candidates])."""
    from trtq.export.compare import fake_quant_session

    float_bytes, quant_bytes, float_outputs = _probe_models(model, probe, types)
    float_session = fake_quant_session(float_bytes, arena=False)
    quant_session = fake_quant_session(quant_bytes, arena=False)
    for fold, tensors in enumerate(recorded):
        for values in tensors:
            feed = {name: values[name] for name in probe.inputs}
            reference = dict(zip(float_outputs, float_session.run(float_outputs, feed), strict=True))
            for position, candidate in enumerate(probe.candidates):
                scale = np.array(np.float32(candidate) / np.float32(INT8_MAX), dtype=np.float32)
                result = quant_session.run(None, {**feed, **reference, "trtq_probe_scale": scale})[0]
                errors[fold, position] += float(result)


def _choose(probes: Sequence[Probe], errors: dict[str, np.ndarray], folds: int, samples: int) -> OutputRanges:
    fold_choices: list[dict[str, float]] = [{} for _ in range(folds)]
    total_choice = {}
    for probe in probes:
        table = errors[probe.tensor]
        total = table.sum(axis=0)
        total_choice[probe.tensor] = float(probe.candidates[int(np.argmin(total))]) if np.any(total > 0) \
            else probe.current
        for fold in range(folds):
            others = total - table[fold] if folds > 1 else total
            fold_choices[fold][probe.tensor] = (float(probe.candidates[int(np.argmin(others))]) if np.any(others > 0)
                                                else probe.current)
    return OutputRanges(fold_choices, total_choice, errors, {p.tensor: p.candidates for p in probes}, {}, samples)
