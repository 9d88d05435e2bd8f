"""Bias correction: each INT8 layer's mean output shift per channel, measured on calibration data and folded
into its bias (Nagel et al., *Data-Free Quantization*, 2019, empirical form; PPQ's ``BiasCorrectionPass``).

Why: rounding a layer's weights and clipping its input are not zero-mean errors per output channel. A
depthwise convolution with a few weights per channel, or an activation clipped at a percentile, shifts the
channel's mean; the shift passes through every later layer (a ReLU turns it into lost or added activations)
and a decision at the end moves. A constant per channel is exactly what a bias can absorb, in float, for free:
TensorRT adds the bias in float after the int8 accumulation, on both generations.

What is measured: the layer's *own* shift at its INT8 inputs, ``mean(Wq * Q(x)) - mean(W * x)`` over samples and
positions, per output channel, where ``x`` is the float activation the quantized model feeds that layer. One
pass of one model measures every layer at once: the Q/DQ model with, beside each quantized layer, a shadow copy
reading the float tensors its Q/DQ pairs quantize (:func:`measurement_model`). Correcting the own shifts leaves
no shift for a later layer to inherit (each upstream layer's is removed), so layers are not corrected twice
for one error, as measuring every layer's total shift in one pass would (a later layer would also undo an
upstream shift that the upstream layer removes itself).

Where a bias lives: a Conv / ConvTranspose / Gemm's bias input (added when absent), a MatMul's single-consumer
``Add`` of a constant vector. A layer with neither, or a bias that is not a per-channel constant, is left as
it is and counted.

A layer kept in float takes its original bias back: the correction is for its INT8 error. Cross-fitting
(:mod:`.crossfit`): the shifts are summed per fold, and each fold's judged model takes the shifts of the *other*
folds' samples; the written model takes all of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from trtq.export.graph import GraphIndex, NameAllocator, node_label
from trtq.model import Model

Feed = Mapping[str, np.ndarray]
_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_REDUCE_MEAN_AXES_INPUT_OPSET = 18  # ReduceMean takes its axes as an input from opset 18


@dataclass(frozen=True)
class BiasSite:
    """Where one quantized layer's correction goes."""

    node: str  # the layer's node label (as the Q/DQ plan names it)
    output: str  # the layer's output: its per-channel mean is measured there
    channels: int
    channel_axis: int  # 1 (Conv, ConvTranspose) or -1 (Gemm, MatMul)
    holder: str  # label of the node whose input holds the bias: the layer itself or its bias Add
    slot: int  # that input's slot
    bias: str | None  # the bias initializer (None: the layer has none yet, a zero one is added)
    scale: float = 1.0  # what the holder multiplies the bias by (a Gemm's beta)

    @property
    def layer_id(self) -> str:
        """How the keep list and the switchable model name the layer: its node name, else its output."""
        return self.output if "->" in self.node else self.node


@dataclass
class SiteSearch:
    """The sites of a model, and the quantized layers that have none (with why)."""

    sites: list[BiasSite] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _initializer(graph: onnx.GraphProto, name: str) -> onnx.TensorProto | None:
    return next((t for t in graph.initializer if t.name == name), None)


def stored_constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The value of an initializer or of a ``Constant`` node's output (what exporters such as Paddle's write
    weights as); None for anything computed."""
    tensor = _initializer(graph, name)
    if tensor is not None:
        return numpy_helper.to_array(tensor)
    node = next((n for n in graph.node if n.op_type == "Constant" and name in n.output), None)
    if node is None:
        return None
    attribute = next((a for a in node.attribute if a.name == "value"), None)
    return numpy_helper.to_array(attribute.t) if attribute is not None else None


def _attribute(node: onnx.NodeProto, name: str, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _channel_vector(graph: onnx.GraphProto, name: str, channels: int) -> bool:
    """Whether ``name`` is a stored constant holding one value per channel ([C], [1, C], [1, ..., C])."""
    value = stored_constant(graph, name)
    if value is None:
        return False
    dims = list(value.shape)
    return bool(dims) and dims[-1] == channels and all(d == 1 for d in dims[:-1])


def find_sites(model: Model, quantized_nodes: Iterable[str]) -> SiteSearch:
    """The bias site of every quantized Conv / ConvTranspose / Gemm / MatMul of ``model`` with a constant weight."""
    graph = model.graph
    index = GraphIndex(graph)
    wanted = set(quantized_nodes)
    outputs = {o.name for o in graph.output}
    found = SiteSearch()
    for node in graph.node:
        label = node_label(node)
        if label not in wanted or node.op_type not in _WEIGHTED or len(node.input) < 2:
            continue
        weight = stored_constant(graph, node.input[1])
        if weight is None or weight.ndim < 2:
            found.skipped[label] = "its weight is not a stored constant matrix"
            continue
        dims = list(weight.shape)
        if node.op_type == "Conv":
            channels, axis = dims[0], 1
        elif node.op_type == "ConvTranspose":
            channels, axis = dims[1] * int(_attribute(node, "group", 1)), 1
        elif node.op_type == "Gemm":
            channels, axis = (dims[0] if _attribute(node, "transB", 0) else dims[1]), -1
        else:
            channels, axis = dims[-1], -1
        output = node.output[0]
        if node.op_type != "MatMul":
            beta = float(_attribute(node, "beta", 1.0)) if node.op_type == "Gemm" else 1.0
            bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
            if bias is not None and not _channel_vector(graph, bias, channels):
                found.skipped[label] = f"its bias '{bias}' is not a constant per-channel vector"
                continue
            if beta == 0.0:
                found.skipped[label] = "its Gemm beta is 0"
                continue
            found.sites.append(BiasSite(label, output, channels, axis, label, 2, bias, beta))
            continue
        readers = index.consumers.get(output, [])
        add = graph.node[readers[0][0]] if len(readers) == 1 and output not in outputs else None
        if add is None or add.op_type != "Add":
            found.skipped[label] = "a MatMul without a bias Add"
            continue
        slot = 1 - readers[0][1]
        if not _channel_vector(graph, add.input[slot], channels):
            found.skipped[label] = "its Add does not add a constant per-channel vector"
            continue
        found.sites.append(BiasSite(label, output, channels, axis, node_label(add), slot, add.input[slot]))
    return found


def _channel_mean(graph_nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto], fresh: NameAllocator,
                  tensor: str, site: BiasSite, opset: int) -> str:
    """Append nodes computing the mean of ``tensor`` per channel (all other axes reduced); returns its name."""
    if site.channel_axis == 1:
        shape, axes = [0, site.channels, -1], [0, 2]  # [N, C, spatial...] -> [N, C, S]
    else:
        shape, axes = [-1, site.channels], [0]  # [..., C] -> [M, C]
    shape_name = fresh(f"{tensor}_trtq_channels_shape")
    initializers.append(numpy_helper.from_array(np.array(shape, dtype=np.int64), shape_name))
    flat = fresh(f"{tensor}_trtq_channels")
    graph_nodes.append(helper.make_node("Reshape", [tensor, shape_name], [flat], name=fresh(f"{flat}_Reshape")))
    mean = fresh(f"{tensor}_trtq_channel_mean")
    if opset >= _REDUCE_MEAN_AXES_INPUT_OPSET:
        axes_name = fresh(f"{tensor}_trtq_mean_axes")
        initializers.append(numpy_helper.from_array(np.array(axes, dtype=np.int64), axes_name))
        graph_nodes.append(helper.make_node("ReduceMean", [flat, axes_name], [mean], keepdims=0,
                                            name=fresh(f"{mean}_ReduceMean")))
    else:
        graph_nodes.append(helper.make_node("ReduceMean", [flat], [mean], axes=axes, keepdims=0,
                                            name=fresh(f"{mean}_ReduceMean")))
    return mean


def measurement_model(qdq: onnx.ModelProto, sites: Sequence[BiasSite]) -> tuple[onnx.ModelProto, list[str]]:
    """The Q/DQ model whose outputs are, per site, ``mean(INT8 layer) - mean(float layer at the same input)``
    per channel (module docstring); returns it and the output names, in the order of ``sites``."""
    proto = onnx.ModelProto()
    proto.CopyFrom(qdq)
    graph = proto.graph
    fresh = NameAllocator(graph)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    producer = {out: node for node in graph.node for out in node.output if out}
    by_label = {node_label(node): node for node in graph.node}

    def float_source(tensor: str) -> str:
        """The float tensor behind a DequantizeLinear(QuantizeLinear(x)) pair; the tensor itself otherwise."""
        dq = producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear":
            return tensor
        q = producer.get(dq.input[0])
        return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else tensor

    added: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    names = []
    for site in sites:
        layer = by_label[site.node]
        shadow = onnx.NodeProto()
        shadow.CopyFrom(layer)
        shadow.name = fresh(f"{layer.name or site.output}_trtq_float")
        for slot, name in enumerate(shadow.input):
            if name and slot < 2:
                shadow.input[slot] = float_source(name)
        del shadow.output[:]
        shadow.output.append(fresh(f"{site.output}_trtq_float"))
        added.append(shadow)
        quantized_mean = _channel_mean(added, initializers, fresh, site.output, site, opset)
        float_mean = _channel_mean(added, initializers, fresh, shadow.output[0], site, opset)
        shift = fresh(f"{site.output}_trtq_shift")
        added.append(helper.make_node("Sub", [quantized_mean, float_mean], [shift], name=fresh(f"{shift}_Sub")))
        names.append(shift)
    graph.node.extend(added)
    graph.initializer.extend(initializers)
    del graph.output[:]
    graph.output.extend(helper.make_empty_tensor_value_info(name) for name in names)
    return proto, names


@dataclass
class ShiftSums:
    """Per site, the sum of the per-batch mean shifts weighted by the batch's samples, and the weight."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    samples: int = 0

    def add(self, other: ShiftSums) -> ShiftSums:
        names = set(self.sums) | set(other.sums)
        return ShiftSums({n: self.sums.get(n, 0.0) + other.sums.get(n, 0.0) for n in names},
                         self.samples + other.samples)

    def means(self) -> dict[str, np.ndarray]:
        return {n: (s / self.samples).astype(np.float64) for n, s in self.sums.items()} if self.samples else {}


def measure_shifts(run, names: Sequence[str], sites: Sequence[BiasSite], batches: Iterable[Feed]) -> ShiftSums:
    """Run the measurement model (``run(feed) -> outputs`` in the order of ``names``) over ``batches``."""
    from trtq.segments import batch_samples

    sums = ShiftSums()
    for feed in batches:
        count = batch_samples(feed)
        outputs = run(feed)
        for site, value in zip(sites, outputs, strict=True):
            weighted = np.asarray(value, dtype=np.float64) * count
            sums.sums[site.node] = sums.sums.get(site.node, 0.0) + weighted
        sums.samples += count
    return sums


@dataclass
class BiasCorrection:
    """The measured shifts of every site: per fold (each fold's from the other folds' samples) and overall."""

    sites: list[BiasSite]
    fold_shifts: list[dict[str, np.ndarray]]
    total_shift: dict[str, np.ndarray]
    skipped: dict[str, str] = field(default_factory=dict)
    samples: int = 0

    def shifts(self, fold: int | None) -> dict[str, np.ndarray]:
        return self.total_shift if fold is None else self.fold_shifts[fold]

    def corrected(self, model: Model, fold: int | None = None, keep: Iterable[str] = ()) -> Model:
        """``model`` with the shifts of ``fold`` (None: all samples) folded into the biases of its sites, except
        the layers kept in float (``keep``: node labels), which keep their original bias."""
        kept = set(keep)
        shifts = self.shifts(fold)
        chosen = [s for s in self.sites if not {s.node, s.layer_id} & kept and s.node in shifts]
        proto, _ = fold_shifts(model.proto, chosen, shifts)
        return Model(proto, model.path)

    def float_values(self, model: Model, corrected: Model) -> dict[str, list[tuple[str, np.ndarray]]]:
        """Per layer (:attr:`BiasSite.layer_id`), the corrected bias tensor of ``corrected`` and its original value:
        what the layer reads when it runs in float (for :func:`trtq.accuracy.switch.build_switchable`)."""
        holders = {node_label(n): n for n in corrected.graph.node}
        values: dict[str, list[tuple[str, np.ndarray]]] = {}
        for site in self.sites:
            holder = holders.get(site.holder)
            if holder is None or len(holder.input) <= site.slot or not holder.input[site.slot]:
                continue
            tensor = holder.input[site.slot]
            if tensor == site.bias:
                continue  # not corrected here
            original = (stored_constant(model.graph, site.bias) if site.bias is not None
                        else np.zeros(site.channels, dtype=_float_type(corrected, site)))
            values.setdefault(site.layer_id, []).append((tensor, original))
        return values

    def document(self) -> dict:
        magnitudes = {s.node: float(np.max(np.abs(self.total_shift[s.node]))) for s in self.sites
                      if s.node in self.total_shift}
        largest = sorted(magnitudes.items(), key=lambda item: -item[1])[:5]
        return {"layers": len(self.sites), "samples": self.samples, "skipped": self.skipped,
                "largest_shifts": [{"layer": name, "max_abs_shift": value} for name, value in largest]}


def _float_type(model: Model, site: BiasSite) -> np.dtype:
    weight_types = model.tensor_types
    holder = next(n for n in model.graph.node if node_label(n) == site.node)
    from trtq.model import numpy_dtype

    return numpy_dtype(weight_types.get(holder.input[1], onnx.TensorProto.FLOAT))


def fold_shifts(proto: onnx.ModelProto, sites: Sequence[BiasSite],
                shifts: Mapping[str, np.ndarray]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of ``proto`` whose sites read ``bias - shift / scale`` (a new initializer each: a bias shared with
    another node stays as it is for that node). Returns it and site node -> the new bias tensor's name."""
    result = onnx.ModelProto()
    result.CopyFrom(proto)
    graph = result.graph
    fresh = NameAllocator(graph)
    holders = {node_label(n): n for n in graph.node}
    written: dict[str, str] = {}
    model = Model(result)
    for site in sites:
        holder = holders[site.holder]
        shift = np.asarray(shifts[site.node], dtype=np.float64)
        if site.bias is not None:
            original = stored_constant(graph, site.bias)
            value = (original.astype(np.float64) - shift.reshape(original.shape) / site.scale).astype(original.dtype)
        else:
            value = (-shift / site.scale).astype(_float_type(model, site))
        name = fresh(f"{site.bias or site.output + '_bias'}_trtq_corrected")
        graph.initializer.append(numpy_helper.from_array(value, name))
        if result.ir_version < 4:  # IR 3 lists every initializer as a graph input too
            graph.input.append(helper.make_tensor_value_info(name, graph.initializer[-1].data_type, value.shape))
        while len(holder.input) <= site.slot:
            holder.input.append("")
        holder.input[site.slot] = name
        written[site.node] = name
    _drop_unused_initializers(graph, {s.bias for s in sites if s.bias is not None})
    return result, written


def fit_bias_correction(model: Model, fold_ranges: Sequence[Mapping[str, float]], fit_sets: Sequence[Sequence[Feed]],
                        ranges_source: str = "the ranges", exclude: Sequence[str] = ()) -> BiasCorrection | None:
    """Measure the shifts of ``model``'s quantized layers: fold ``j``'s Q/DQ model (``fold_ranges[j]``) on fold
    ``j``'s calibration batches (``fit_sets[j]``); each fold's correction is the mean over the other folds'
    samples (one fold: its own). None when no quantized layer has a bias site."""
    from trtq.accuracy.scale_feed import scale_fed
    from trtq.export import export_qdq
    from trtq.export.compare import fake_quant_session, session_runner

    first = export_qdq(model, fold_ranges[0], exclude=exclude, ranges_source=ranges_source, check=False)
    search = find_sites(model, first.plan.quantized_nodes)
    if not search.sites:
        return None
    scaled = scale_fed(first, fold_ranges)
    if scaled is not None:  # one session, each fold's scales fed
        proto, names = measurement_model(scaled.proto, search.sites)
        session = fake_quant_session(proto, arena=False)
        runs = [session_runner(session, names, scaled.feed(amax)) for amax in fold_ranges]
    else:
        runs = []
        for amax in fold_ranges:
            export = export_qdq(model, amax, exclude=exclude, ranges_source=ranges_source, check=False)
            proto, names = measurement_model(export.model, search.sites)
            runs.append(session_runner(fake_quant_session(proto, arena=False), names))
    per_fold = [measure_shifts(run, names, search.sites, batches)
                for run, batches in zip(runs, fit_sets, strict=True)]
    total = per_fold[0]
    for part in per_fold[1:]:
        total = total.add(part)
    if len(per_fold) == 1:
        fold_means = [total.means()]
    else:
        fold_means = []
        for fold in range(len(per_fold)):
            others = [p for j, p in enumerate(per_fold) if j != fold]
            merged = others[0]
            for part in others[1:]:
                merged = merged.add(part)
            fold_means.append(merged.means())
    return BiasCorrection(search.sites, fold_means, total.means(), search.skipped, total.samples)


def _drop_unused_initializers(graph: onnx.GraphProto, candidates: set[str]) -> None:
    used = ({name for node in graph.node for name in node.input} | {o.name for o in graph.output}
            | {i.name for i in graph.input})  # an initializer listed as an input (IR < 4) stays
    keep = [t for t in graph.initializer if t.name not in candidates or t.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)
