"""SmoothQuant for transformer blocks: outlier channels of a MatMul's activation migrated into its weights.

Why: a transformer's LayerNorm and GELU outputs carry a few channels tens of times larger than the rest
(Xiao et al., *SmoothQuant*, 2022; Dettmers et al., *LLM.int8()*). One per-tensor INT8 scale must cover them,
so the other channels get a handful of levels; the weights, quantized per output channel, have room to spare.
Per input channel ``j``, ``X[:, j] / s_j`` times ``s_j W[j, :]`` is the same product in float, and with
``s_j = max|X_j|^a / max|W_j|^(1-a)`` (``a = ALPHA``) both factors have their ranges balanced.

What it does to the ONNX graph: for each activation ``X`` read by quantized MatMul / Gemm layers with constant
weights (a block's Q, K and V projections share theirs), ``Mul(X, 1/s)`` feeds those layers (the tensor's other
readers, e.g. a residual Add, still read ``X``), and their weights are scaled by ``s`` along the input axis. The
float model computes the same values up to float rounding (``tests/test_smooth.py``); TensorRT fuses the Mul into
the pointwise op before it. Only activations whose channel maxima have outliers (the largest over
``OUTLIER_RATIO`` times the median) are smoothed. The ranges of the new tensors come from a statistics pass of the
smoothed model on the held calibration samples, with the method chosen for the rest, per fold (cross-fitted).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from trtq.accuracy.bias import stored_constant
from trtq.export.graph import GraphIndex, NameAllocator, node_label
from trtq.model import Model

Feed = Mapping[str, np.ndarray]
ALPHA = 0.5  # migration strength: the square root balances activation and weight ranges
OUTLIER_RATIO = 8.0  # a channel maximum this many times the median one makes an activation worth smoothing
_MIN_SCALE, _MAX_SCALE = 1e-4, 1e4


@dataclass
class SmoothGroup:
    """An activation and the quantized layers reading it whose weights absorb its channel scales."""

    tensor: str
    layers: list[str]  # node labels
    weights: list[tuple[str, int]]  # (weight tensor, its input-channel axis) per layer
    channels: int


@dataclass
class Smoothing:
    """The smoothed model and what it did."""

    model: Model
    groups: list[SmoothGroup]
    scales: dict[str, np.ndarray]  # tensor -> s
    renamed: dict[str, str]  # tensor -> the tensor its layers now read (X * 1/s)
    outlier_ratios: dict[str, float] = field(default_factory=dict)  # every candidate's max/median channel maximum

    def document(self) -> dict:
        return {"activations": len(self.groups), "layers": sum(len(g.layers) for g in self.groups),
                "alpha": ALPHA, "outlier_ratio_threshold": OUTLIER_RATIO,
                "largest_outlier_ratios": dict(sorted(self.outlier_ratios.items(), key=lambda kv: -kv[1])[:5])}


def _weight(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """A stored weight: an initializer or a ``Constant`` node's value (Paddle's exporter writes those)."""
    return stored_constant(graph, name)


def find_groups(model: Model, quantized_nodes: Sequence[str]) -> list[SmoothGroup]:
    """Activations read by quantized MatMul (2-D constant ``B``) / Gemm (constant ``B``) layers, grouped per tensor."""
    graph = model.graph
    wanted = set(quantized_nodes)
    constants = model.constant_tensors
    groups: dict[str, SmoothGroup] = {}
    for node in graph.node:
        if node_label(node) not in wanted or node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        activation, weight = node.input[0], node.input[1]
        if weight not in constants or activation in constants:
            continue
        value = _weight(graph, weight)
        if value is None or value.ndim != 2:
            continue
        if node.op_type == "Gemm":
            attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attributes.get("transA", 0):
                continue
            axis = 1 if attributes.get("transB", 0) else 0
        else:
            axis = 0
        group = groups.setdefault(activation, SmoothGroup(activation, [], [], value.shape[axis]))
        if group.channels != value.shape[axis]:
            continue
        group.layers.append(node_label(node))
        group.weights.append((weight, axis))
    return list(groups.values())


def channel_maxima(model: Model, groups: Sequence[SmoothGroup], batches: Sequence[Feed]) -> dict[str, np.ndarray]:
    """Per group activation, max |X| per channel (its last axis) over ``batches``: one pass with ``ReduceMax``
    outputs added to the model."""
    from trtq.export.compare import fake_quant_session

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    graph = proto.graph
    fresh = NameAllocator(graph)
    outputs = []
    for group in groups:
        shape = fresh(f"{group.tensor}_trtq_rows_shape")
        graph.initializer.append(numpy_helper.from_array(np.array([-1, group.channels], dtype=np.int64), shape))
        rows, magnitude, maximum = (fresh(f"{group.tensor}_trtq_{what}") for what in ("rows", "abs", "channel_max"))
        graph.node.extend([helper.make_node("Reshape", [group.tensor, shape], [rows]),
                           helper.make_node("Abs", [rows], [magnitude]),
                           helper.make_node("ReduceMax", [magnitude], [maximum], axes=[0], keepdims=0)])
        outputs.append(maximum)
    del graph.output[:]
    graph.output.extend(helper.make_empty_tensor_value_info(name) for name in outputs)
    if model.opset >= 18:  # ReduceMax takes its axes as an input from opset 18
        _axes_as_inputs(graph, fresh)
    session = fake_quant_session(proto, arena=False)
    result = {g.tensor: np.zeros(g.channels) for g in groups}
    for feed in batches:
        for group, value in zip(groups, session.run(outputs, dict(feed)), strict=True):
            result[group.tensor] = np.maximum(result[group.tensor], np.asarray(value, dtype=np.float64))
    return result


def _axes_as_inputs(graph: onnx.GraphProto, fresh: NameAllocator) -> None:
    for node in graph.node:
        if node.op_type == "ReduceMax" and any(a.name == "axes" for a in node.attribute):
            axes = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "axes")
            kept = [a for a in node.attribute if a.name != "axes"]
            del node.attribute[:]
            node.attribute.extend(kept)
            name = fresh(f"{node.output[0]}_axes")
            graph.initializer.append(numpy_helper.from_array(np.array(axes, dtype=np.int64), name))
            node.input.append(name)


def smooth_scales(group: SmoothGroup, x_max: np.ndarray, weights: Sequence[np.ndarray]) -> np.ndarray:
    """``s_j = max|X_j|^a / max|W_j|^(1-a)`` over the group's weights (rows of the input channel ``j``)."""
    w_max = np.max([np.max(np.abs(np.moveaxis(w, axis, 0)), axis=1) for w, (_, axis) in
                    zip(weights, group.weights, strict=True)], axis=0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        scales = np.power(x_max, ALPHA) / np.power(w_max, 1.0 - ALPHA)
    scales = np.where(np.isfinite(scales) & (scales > 0) & (x_max > 0) & (w_max > 0), scales, 1.0)
    return np.clip(scales, _MIN_SCALE, _MAX_SCALE)


def outlier_ratio(x_max: np.ndarray) -> float:
    median = float(np.median(x_max))
    return float(np.max(x_max)) / median if median > 0 else 0.0


def smooth(model: Model, groups: Sequence[SmoothGroup], maxima: Mapping[str, np.ndarray],
           min_ratio: float = OUTLIER_RATIO) -> Smoothing:
    """The smoothed model: the groups whose activation has outlier channels (max / median channel maximum of at
    least ``min_ratio``) get ``Mul(X, 1/s)`` and ``s``-scaled weights (new initializers: a weight shared with a
    layer outside the group keeps its values there)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    graph = proto.graph
    fresh = NameAllocator(graph)
    index = GraphIndex(graph)
    labels = {node_label(n): i for i, n in enumerate(graph.node)}
    ratios = {g.tensor: outlier_ratio(maxima[g.tensor]) for g in groups}
    chosen = [g for g in groups if ratios[g.tensor] >= min_ratio]
    scales, renamed = {}, {}
    inserts: dict[int, list[onnx.NodeProto]] = {}
    for group in chosen:
        weights = [_weight(graph, name) for name, _axis in group.weights]
        s = smooth_scales(group, maxima[group.tensor], weights)
        scales[group.tensor] = s
        dtype = weights[0].dtype
        inverse = fresh(f"{group.tensor}_trtq_smooth_inverse")
        graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(dtype), inverse))
        smoothed = fresh(f"{group.tensor}_smoothed")
        renamed[group.tensor] = smoothed
        positions = [labels[label] for label in group.layers]
        inserts.setdefault(min(positions), []).append(
            helper.make_node("Mul", [group.tensor, inverse], [smoothed], name=fresh(f"{group.tensor}_Smooth")))
        for position, (weight_name, axis), value in zip(positions, group.weights, weights, strict=True):
            node = graph.node[position]
            shape = [1] * value.ndim
            shape[axis] = -1
            scaled = fresh(f"{weight_name}_smoothed")
            graph.initializer.append(numpy_helper.from_array((value * s.reshape(shape)).astype(value.dtype), scaled))
            node.input[0] = smoothed
            node.input[1] = scaled
    del index
    nodes = []
    for position, node in enumerate(graph.node):
        nodes.extend(inserts.get(position, []))
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    originals = {name for g in chosen for name, _axis in g.weights}
    keep = [t for t in graph.initializer if t.name not in originals or t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return Smoothing(Model(proto, model.path), chosen, scales, renamed, ratios)
