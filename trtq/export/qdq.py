"""Explicit INT8 quantization: write QuantizeLinear/DequantizeLinear pairs from trtq's ranges.

TensorRT 11 builds INT8 only from Q/DQ models (strong typing; calibrators are gone). This module
places Q/DQ the way TensorRT fuses them (the rule below, after ModelOpt's ONNX PTQ placement) and
computes every scale itself: activations from the given amax, weights from their own values.

Placement rule (``plan_qdq``):

1. **Weighted ops** Conv, ConvTranspose, Gemm, MatMul: every non-constant input gets a per-tensor
   activation Q/DQ (symmetric int8, zero point 0, scale = amax/127); every constant input (an
   initializer or anything computed from initializers only) gets a weight Q/DQ with scales from
   its own absmax: per output channel on axis 0 for Conv, axis 1 for ConvTranspose, axis 0 for
   Gemm with ``transB=1`` and axis 1 without, the last axis for a MatMul ``B`` of rank >= 2;
   per tensor for a constant ``A`` or a 1-D ``B``. Biases (Conv/Gemm input 2) are never quantized.
   A node whose inputs are all constant is left alone (TensorRT folds it).
2. **Pooling** MaxPool, AveragePool, GlobalAveragePool: the data input gets an activation Q/DQ,
   so the pool runs in INT8 between INT8 layers.
3. **Add with two non-constant inputs** (a residual add), when both inputs have ranges: if one
   input is the output of a quantized Conv/ConvTranspose reached through a single-consumer chain
   of BatchNormalization, Relu, bias Add or constant Mul, TensorRT fuses the add into that
   convolution and only the *other* (skip) input gets Q/DQ. When both inputs come from different
   such convolutions, the input whose producer lies deeper in the graph (longest path from the
   inputs) is the fused main branch. Otherwise both inputs get Q/DQ.
4. A node is quantized completely or not at all: if any activation it needs has no usable range
   (absent, zero or non-finite) or it is excluded by the user, it gets no Q/DQ. One Q/DQ pair per
   tensor is shared by all its quantized consumers; other consumers keep reading the float tensor.

Weights stay float in the file behind a QuantizeLinear -> DequantizeLinear pair (the layout ModelOpt
writes; TensorRT folds the pair into int8 weights). A weight computed from initializers (e.g. a
Reshape of one) is folded into a new ``<name>_folded`` initializer first. Per-channel
``DequantizeLinear`` (its ``axis`` attribute) needs opset 13, float16 Q/DQ needs 19: older models are
upgraded with onnx's version converter and the export says so. New nodes and tensors are named
after the tensor they quantize: ``<tensor>_QuantizeLinear``, ``<tensor>_scale``, ``<tensor>_dequantized``.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtq.errors import TrtqError
from trtq.export.graph import (
    GraphIndex,
    NameAllocator,
    brief_list,
    check_exported,
    constant_value,
    node_label,
    prune_unused,
    resolve_nodes,
    upgrade_opset,
)
from trtq.export.ranges import split_ranges
from trtq.model import Model

QDQ_OPSET = 13  # QuantizeLinear/DequantizeLinear with a per-channel axis
QDQ_FLOAT16_OPSET = 19  # QuantizeLinear accepts float16 input from opset 19
INT8_MAX = 127.0

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
POOLING_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool")
RESIDUAL_BACKBONE_OPS = ("Conv", "ConvTranspose")
# Ops TensorRT fuses between a convolution and a residual add (a bias Add / constant Mul included).
RESIDUAL_CHAIN_OPS = ("BatchNormalization", "Relu")
_QUANTIZABLE_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)


@dataclass(frozen=True)
class QdqPoint:
    """One Q/DQ pair to insert: on ``tensor``, read by ``consumers`` ((node index, input slot))."""

    tensor: str
    kind: str  # "activation" or "weight"
    axis: int | None  # per-channel axis of a weight; None = per tensor
    consumers: tuple[tuple[int, int], ...]


@dataclass
class QdqPlan:
    """Where Q/DQ goes and why some quantizable nodes get none."""

    points: list[QdqPoint] = field(default_factory=list)
    quantized_nodes: list[str] = field(default_factory=list)
    excluded_nodes: list[str] = field(default_factory=list)
    missing_ranges: dict[str, list[str]] = field(default_factory=dict)  # tensor -> nodes kept in float
    unusable_ranges: dict[str, list[str]] = field(default_factory=dict)  # tensor -> nodes kept in float
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (node, reason)
    existing_nodes: list[str] = field(default_factory=list)  # already quantized by the model (only_unquantized)
    rewired: dict[tuple[int, int], str] = field(default_factory=dict)  # (node, slot) -> an existing DQ output
    weight_values: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class QdqExport:
    """The Q/DQ model and what the export did, for the user and for tests."""

    model: onnx.ModelProto
    plan: QdqPlan
    opset_before: int
    opset_after: int
    unmatched_range_names: list[str]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def activation_tensors(self) -> list[str]:
        return [p.tensor for p in self.plan.points if p.kind == "activation"]

    @property
    def weight_tensors(self) -> list[tuple[str, int | None]]:
        return [(p.tensor, p.axis) for p in self.plan.points if p.kind == "weight"]


def activation_scale(amax: float, dtype: np.dtype) -> np.ndarray:
    """An activation's per-tensor scale as the export writes it (amax / 127, in float32, then the tensor's type):
    what a session fed the scale at run time must be given to compute bit for bit as the written model."""
    return np.asarray(amax / INT8_MAX, dtype=np.float32).astype(dtype)


def _weight_axis(node: onnx.NodeProto, slot: int, rank: int) -> int | None:
    """Output-channel axis of a constant input of a weighted op, or None for per-tensor scales."""
    if node.op_type == "Conv":
        return 0 if rank >= 2 else None
    if node.op_type == "ConvTranspose":
        return 1 if rank >= 2 else None
    if node.op_type == "Gemm":
        if slot != 1:
            return None
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul":
        return rank - 1 if slot == 1 and rank >= 2 else None
    return None


def weight_scales(weight: np.ndarray, axis: int | None) -> np.ndarray:
    """Symmetric int8 scales (absmax/127) per channel on ``axis`` (or one for the tensor).

    An all-zero channel gets scale 1.0: it quantizes to exactly 0 with any scale, and a zero
    scale would make QuantizeLinear divide by zero.
    """
    magnitude = np.abs(weight.astype(np.float32))
    if axis is None:
        absmax = np.asarray(magnitude.max() if magnitude.size else 0.0, dtype=np.float32)
    else:
        reduce_axes = tuple(a for a in range(weight.ndim) if a != axis)
        absmax = magnitude.max(axis=reduce_axes) if reduce_axes else magnitude
    scales = absmax / INT8_MAX
    return np.where(scales > 0, scales, 1.0).astype(np.float32)


class _Planner:
    def __init__(self, model: Model, amax: Mapping[str, float], excluded: set[int], only_unquantized: bool = False):
        self.model = model
        self.graph = model.graph
        self.index = GraphIndex(self.graph)
        self.constant = model.constant_tensors
        self.types = model.tensor_types
        self.usable, unusable = split_ranges(dict(amax))
        self.unusable = set(unusable)
        self.excluded = excluded
        self.plan = QdqPlan()
        self.activation_uses: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.weight_uses: dict[tuple[str, int | None], list[tuple[int, int]]] = defaultdict(list)
        self.quantized: set[int] = set()
        self.existing: dict[str, str] = {}  # only_unquantized: tensor -> the model's own DQ output of it
        self.dq_outputs: set[str] = set()
        self.existing_indices: set[int] = set()
        if only_unquantized:
            from trtq.export.existing import existing_qdq

            self.existing, self.dq_outputs = existing_qdq(model)

    def _range_problem(self, tensor: str, label: str) -> bool:
        """Record why ``tensor`` cannot be quantized for node ``label``; True if it cannot."""
        if tensor in self.usable:
            return False
        bucket = self.plan.unusable_ranges if tensor in self.unusable else self.plan.missing_ranges
        bucket.setdefault(tensor, []).append(label)
        return True

    def _is_float(self, tensor: str) -> bool:
        return self.types.get(tensor, TensorProto.FLOAT) in _QUANTIZABLE_TYPES

    def _weighted(self, node_index: int, node: onnx.NodeProto) -> None:
        slots = [s for s in (0, 1) if s < len(node.input) and node.input[s]]  # input 2 is a bias
        if node.op_type in ("Conv", "ConvTranspose") and node.input[0] in self.constant:
            return  # a convolution of a constant: TensorRT folds it
        if all(node.input[s] in self.constant for s in slots):
            return
        if not all(self._is_float(node.input[s]) for s in slots):
            return
        label = node_label(node)
        if node_index in self.excluded:
            self.plan.excluded_nodes.append(label)
            return
        activations = [s for s in slots if node.input[s] not in self.constant]
        problems = [self._range_problem(node.input[s], label) for s in activations]
        if any(problems):
            return
        weights: list[tuple[int, int | None]] = []
        for slot in slots:
            if slot in activations:
                continue
            name = node.input[slot]
            value = self.plan.weight_values.get(name)
            if value is None:
                value = constant_value(self.model, name)
                self.plan.weight_values[name] = value
            if not np.all(np.isfinite(value)):
                self.plan.skipped.append((label, f"weight '{name}' has non-finite values"))
                return
            weights.append((slot, _weight_axis(node, slot, value.ndim)))
        for slot in activations:
            self.activation_uses[node.input[slot]].append((node_index, slot))
        for slot, axis in weights:
            self.weight_uses[(node.input[slot], axis)].append((node_index, slot))
        self.quantized.add(node_index)
        self.plan.quantized_nodes.append(label)

    def _pooling(self, node_index: int, node: onnx.NodeProto) -> None:
        tensor = node.input[0]
        if tensor in self.constant or not self._is_float(tensor):
            return
        label = node_label(node)
        if node_index in self.excluded:
            self.plan.excluded_nodes.append(label)
            return
        if self._range_problem(tensor, label):
            return
        self.activation_uses[tensor].append((node_index, 0))
        self.quantized.add(node_index)
        self.plan.quantized_nodes.append(label)

    def _backbone(self, tensor: str) -> int | None:
        """The quantized convolution TensorRT would fuse an add on ``tensor`` into, if any."""
        nodes = self.graph.node
        outputs = self.index.graph_outputs
        while True:
            producer = self.index.producer.get(tensor)
            if producer is None or tensor in outputs or len(self.index.consumers.get(tensor, [])) != 1:
                return None
            node = nodes[producer]
            if node.op_type in RESIDUAL_BACKBONE_OPS:
                return producer if producer in self.quantized else None
            if node.op_type in RESIDUAL_CHAIN_OPS:
                tensor = node.input[0]
                continue
            if node.op_type in ("Add", "Mul"):
                variable = [i for i in node.input if i and i not in self.constant]
                if len(variable) == 1 and len(node.input) == 2:
                    tensor = variable[0]
                    continue
            return None

    def _depths(self) -> list[int]:
        """Longest path (in nodes) from the graph inputs to each node: the deeper branch of a
        residual add is the one with the convolutions, the shallower one the shortcut."""
        depth_of_tensor: dict[str, int] = {}
        depths = []
        for node in self.graph.node:
            depth = 1 + max((depth_of_tensor.get(i, 0) for i in node.input if i), default=0)
            depths.append(depth)
            for out in node.output:
                depth_of_tensor[out] = depth
        return depths

    def _residual_add(self, node_index: int, node: onnx.NodeProto, depths: list[int]) -> None:
        inputs = [i for i in node.input if i]
        if len(inputs) != 2 or any(i in self.constant or not self._is_float(i) for i in inputs):
            return
        label = node_label(node)
        if node_index in self.excluded:
            self.plan.excluded_nodes.append(label)
            return
        problems = [self._range_problem(t, label) for t in inputs]
        if any(problems):
            return
        backbones = [self._backbone(t) for t in inputs]
        if backbones[0] is not None and backbones[1] is not None and backbones[0] != backbones[1]:
            main = 0 if depths[backbones[0]] >= depths[backbones[1]] else 1
            slots = [1 - main]
        elif (backbones[0] is None) != (backbones[1] is None):
            slots = [0] if backbones[0] is None else [1]
        else:
            slots = [0, 1]
        for slot in slots:
            self.activation_uses[node.input[slot]].append((node_index, slot))
        self.quantized.add(node_index)
        self.plan.quantized_nodes.append(label)

    def run(self) -> QdqPlan:
        domains = ("", "ai.onnx")
        for node_index, node in enumerate(self.graph.node):
            if node.domain not in domains or not node.input:
                continue
            if self.dq_outputs and any(i in self.dq_outputs for i in node.input):
                if node.op_type in (*WEIGHTED_OPS, *POOLING_OPS, "Add"):
                    self.plan.existing_nodes.append(node_label(node))
                self.existing_indices.add(node_index)  # quantized by the model itself: never touched
                continue
            if node.op_type in WEIGHTED_OPS:
                self._weighted(node_index, node)
            elif node.op_type in POOLING_OPS:
                self._pooling(node_index, node)
        depths = self._depths()
        for node_index, node in enumerate(self.graph.node):
            if node.domain in domains and node.op_type == "Add" and node_index not in self.existing_indices:
                self._residual_add(node_index, node, depths)
        for tensor, uses in self.activation_uses.items():
            if tensor in self.existing:  # the model quantizes this tensor already: its consumers read that pair
                self.plan.rewired.update({use: self.existing[tensor] for use in uses})
                continue
            self.plan.points.append(QdqPoint(tensor, "activation", None, tuple(uses)))
        for (tensor, axis), uses in self.weight_uses.items():
            self.plan.points.append(QdqPoint(tensor, "weight", axis, tuple(uses)))
        return self.plan


def plan_qdq(model: Model, amax: Mapping[str, float], exclude: Iterable[str] = (), *,
             only_unquantized: bool = False) -> QdqPlan:
    """Decide where Q/DQ goes in ``model`` (see the module docstring for the rule). ``only_unquantized``:
    the model has Q/DQ of its own; only the layers it left in float get Q/DQ (:mod:`trtq.export.existing`)."""
    excluded = resolve_nodes(model.graph, exclude)
    return _Planner(model, amax, excluded, only_unquantized).run()


def qdq_activation_tensors(model: Model, exclude: Iterable[str] = ()) -> list[str]:
    """The activation tensors :func:`export_qdq` puts Q/DQ on (graph order): the only ranges a TensorRT 11
    Q/DQ model uses. A TensorRT 10 cache wants every tensor (:meth:`trtq.model.Model.calibration_tensors`)."""
    everything = model.calibration_tensors()
    plan = plan_qdq(model, dict.fromkeys(everything, 1.0), exclude)
    wanted = {p.tensor for p in plan.points if p.kind == "activation"}
    return [t for t in everything if t in wanted]


def _tensor_dtype(model: Model, point: QdqPoint, plan: QdqPlan) -> int:
    if point.kind == "weight":
        return helper.np_dtype_to_tensor_dtype(plan.weight_values[point.tensor].dtype)
    return model.tensor_types.get(point.tensor, TensorProto.FLOAT)


def _insert(model: Model, plan: QdqPlan, amax: Mapping[str, float]) -> onnx.ModelProto:
    proto = copy.deepcopy(model.proto)
    graph = proto.graph
    index = GraphIndex(graph)
    fresh = NameAllocator(graph)
    initializer_names = {t.name for t in graph.initializer}
    first: list[onnx.NodeProto] = []  # Q/DQ of graph inputs and weights: at the top
    after: dict[int, list[onnx.NodeProto]] = defaultdict(list)  # Q/DQ right after the producer
    new_initializers: list[onnx.TensorProto] = []
    folded: dict[str, str] = {}

    for point in plan.points:
        dtype = _tensor_dtype(model, point, plan)
        np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
        source = point.tensor
        if point.kind == "weight":
            value = plan.weight_values[point.tensor]
            if point.tensor not in initializer_names:
                # A weight computed from initializers (e.g. Reshape of one): store the folded value,
                # so that TensorRT sees a constant straight into Q/DQ.
                if point.tensor not in folded:
                    folded[point.tensor] = fresh(f"{point.tensor}_folded")
                    new_initializers.append(numpy_helper.from_array(value, folded[point.tensor]))
                source = folded[point.tensor]
            scales = weight_scales(value, point.axis)
        else:
            scales = activation_scale(amax[point.tensor], np_dtype)
        scale_name = fresh(f"{point.tensor}_scale")
        zero_name = fresh(f"{point.tensor}_zero_point")
        new_initializers.append(numpy_helper.from_array(scales.astype(np_dtype), scale_name))
        new_initializers.append(numpy_helper.from_array(np.zeros(scales.shape, dtype=np.int8), zero_name))
        quantized = fresh(f"{point.tensor}_quantized")
        dequantized = fresh(f"{point.tensor}_dequantized")
        axis = {"axis": point.axis} if point.axis is not None else {}
        pair = [
            helper.make_node("QuantizeLinear", [source, scale_name, zero_name], [quantized],
                             name=fresh(f"{point.tensor}_QuantizeLinear"), **axis),
            helper.make_node("DequantizeLinear", [quantized, scale_name, zero_name], [dequantized],
                             name=fresh(f"{point.tensor}_DequantizeLinear"), **axis),
        ]
        producer = index.producer.get(source)
        (first if producer is None else after[producer]).extend(pair)
        for node_index, slot in point.consumers:
            graph.node[node_index].input[slot] = dequantized

    for (node_index, slot), tensor in plan.rewired.items():
        graph.node[node_index].input[slot] = tensor
    nodes = list(first)
    for node_index, node in enumerate(graph.node):
        nodes.append(node)
        nodes.extend(after.get(node_index, []))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_initializers)
    prune_unused(graph, model.constant_tensors)
    return proto


def _opset_for(model: Model, plan: QdqPlan) -> int:
    needs_fp16 = any(_tensor_dtype(model, p, plan) != TensorProto.FLOAT for p in plan.points)
    return QDQ_FLOAT16_OPSET if needs_fp16 else QDQ_OPSET


def export_qdq(
    model: Model,
    amax: Mapping[str, float],
    *,
    exclude: Iterable[str] = (),
    ranges_source: str = "the ranges",
    only_unquantized: bool = False,
    check: bool = True,
) -> QdqExport:
    """Build the Q/DQ ONNX model of ``model`` from activation ranges ``amax`` (tensor -> amax).

    ``exclude`` names nodes (or their output tensors) to keep in higher precision. Raises
    :class:`TrtqError` when the ranges match no tensor of the model or nothing can be quantized.
    ``check=False`` skips the full ONNX checker (0.75 s on a ViT-S): for the quantize loop's internal candidates,
    which only onnxruntime reads (it validates what it loads); every model trtq writes is checked.
    """
    exclude = list(exclude)
    tensor_names = {s.name for s in model.inputs} | {o for n in model.graph.node for o in n.output if o}
    matched = [name for name in amax if name in tensor_names]
    if not matched:
        examples = ", ".join(repr(n) for n in list(amax)[:3])
        raise TrtqError(
            f"none of the {len(amax)} tensor names in {ranges_source} is a tensor of {model.name}"
            + (f" (e.g. {examples})" if examples else "")
            + "; were the ranges computed for another model?"
        )
    unmatched = [name for name in amax if name not in tensor_names]
    resolve_nodes(model.graph, exclude)  # unknown names fail before any upgrade work

    opset_before = model.opset
    working = model
    if working.opset < QDQ_OPSET:
        working = Model(upgrade_opset(model.proto, working.opset, QDQ_OPSET), model.path)
    plan = plan_qdq(working, amax, exclude, only_unquantized=only_unquantized)
    target = _opset_for(working, plan)
    if working.opset < target:  # float16 tensors to quantize
        working = Model(upgrade_opset(working.proto, working.opset, target), model.path)
        plan = plan_qdq(working, amax, exclude, only_unquantized=only_unquantized)

    notes: list[str] = []
    warnings: list[str] = []
    if plan.unusable_ranges:
        for tensor, nodes in plan.unusable_ranges.items():
            warnings.append(
                f"range of '{tensor}' is {amax[tensor]!r}, which defines no int8 scale: "
                f"no Q/DQ for it; kept in float: {brief_list(nodes)}"
            )
    for label, reason in plan.skipped:
        warnings.append(f"node {label} kept in float: {reason}")
    if not plan.points and not plan.rewired:
        reasons = []
        if plan.existing_nodes:
            reasons.append(f"the model quantizes {len(plan.existing_nodes)} layer(s) itself")
        if plan.missing_ranges:
            reasons.append(f"{len(plan.missing_ranges)} input tensor(s) have no range")
        if plan.excluded_nodes:
            reasons.append(f"{len(plan.excluded_nodes)} node(s) excluded")
        if plan.unusable_ranges:
            reasons.append(f"{len(plan.unusable_ranges)} range(s) are zero or non-finite")
        why = "; ".join(reasons) or "the model has no Conv, ConvTranspose, Gemm, MatMul, pooling or residual Add"
        raise TrtqError(f"nothing to quantize in {model.name}: {why}")

    if working.opset != opset_before:
        reasons = []
        if opset_before < QDQ_OPSET:
            reasons.append(f"per-channel DequantizeLinear (its axis attribute) needs opset >= {QDQ_OPSET}")
        if working.opset >= QDQ_FLOAT16_OPSET:
            reasons.append(f"QuantizeLinear of float16 tensors needs opset >= {QDQ_FLOAT16_OPSET}")
        notes.append(f"upgraded the model from opset {opset_before} to opset {working.opset}: {' and '.join(reasons)}")
    if plan.missing_ranges:
        kept = sorted({n for nodes in plan.missing_ranges.values() for n in nodes})
        notes.append(
            f"{len(kept)} quantizable node(s) kept in float because {len(plan.missing_ranges)} input "
            f"tensor(s) have no range in {ranges_source}: {brief_list(kept)} "
            f"(tensors: {brief_list(plan.missing_ranges)})"
        )
    if plan.existing_nodes:
        notes.append(f"{len(plan.existing_nodes)} layer(s) keep the model's own Q/DQ, untouched: "
                     f"{brief_list(plan.existing_nodes)}")
    if plan.excluded_nodes:
        notes.append(f"kept in float as asked (--exclude): {brief_list(plan.excluded_nodes)}")
    if unmatched:
        notes.append(
            f"{len(unmatched)} of {len(amax)} names in {ranges_source} are not tensors of this model "
            f"(ignored): {brief_list(unmatched, 3)}"
        )

    exported = _insert(working, plan, amax)
    if check:
        check_exported(exported, "Q/DQ")
    return QdqExport(
        model=exported, plan=plan, opset_before=opset_before, opset_after=working.opset,
        unmatched_range_names=unmatched, notes=notes, warnings=warnings,
    )
