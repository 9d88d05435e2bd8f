"""Lints of a Q/DQ ONNX model, from the ONNX alone: placements TensorRT cannot fuse or that cost accuracy.

`trtq report` reads engines after a build; this module looks at a QAT or Q/DQ model *before* any
build, so a placement problem is found without a GPU. Six rules, each returning
:class:`~trtq.report.model.Lint` items (one line: what, why, how to fix), in graph order:

``qdq-float-consumer``
    An activation Q/DQ pair whose dequantized tensor reaches (through data-movement ops TensorRT
    propagates Q/DQ across: Reshape, Transpose, Slice, Concat, ...) only ops TensorRT's INT8 fusions
    do not use (Sigmoid, Softmax, LayerNormalization, Exp, ...) or only a network output. The pair
    adds rounding error and buys no INT8 kernel (TensorRT fuses a DQ into weighted ops, pooling and
    element-wise layers; ModelOpt's TensorRT placement never quantizes those other inputs).
``qdq-splits-fusion``
    Q/DQ on the output of an INT8 Conv/ConvTranspose/Gemm/MatMul that an Add or BatchNormalization
    reads. TensorRT fuses a bias or residual Add and BatchNormalization into the weighted op only
    with nothing in between; its guide: "by default, do not quantize the outputs of weighted-operations",
    and an extra Q/DQ pair "forces the separation of the convolution from the element-wise addition".
``quantized-bias``
    An 8-bit (or 4-bit) Q/DQ on a bias: Conv/ConvTranspose/Gemm input 2, or the constant input of
    an Add right after a weighted op (onnxruntime quantizes a bias Add's constant when Add is among
    its op types). Biases are added in the weighted layer's high-precision epilogue; an int8 bias
    with one scale only rounds small biases away. ModelOpt's TensorRT options set QuantizeBias=False;
    trtq's own export never quantizes biases. (An int32 bias DequantizeLinear is fine.)
``per-tensor-weight``
    A per-tensor int8 weight scale on a Conv/ConvTranspose/Gemm/MatMul weight with several output
    channels. TensorRT's guide: per-tensor activations and per-channel weights give the best accuracy.
    (FP8 weights are per tensor by design: not linted.)
``residual-skip-float``
    A residual Add whose main input comes from an INT8 Conv/ConvTranspose (through BatchNormalization,
    Relu, a bias Add) and whose other (skip) input has no Q/DQ, while the Add's output is quantized.
    TensorRT fuses the Add into the convolution, but "the precision of the first input to the
    element-wise addition layer determines the precision of the output of the fusion": with a float
    skip input the fused layer writes float and the Q after the Add runs as its own layer.
``concat-scales``
    A Concat of dequantized inputs with different scales. TensorRT rewrites Q/DQ across a Concat
    only when the scales it compares are equal (its "Q/DQ limitations"), so it requantizes or runs
    the Concat in float; ModelOpt's concat elimination gives a Concat's inputs one scale.

Grounding: TensorRT developer guide, "Explicit Quantization" (Q/DQ propagation, layer-placement
recommendations, Q/DQ limitations); ModelOpt's ONNX op classes (``modelopt/onnx/op_types.py``:
copy ops, quantizable ops) and INT8 options; trtq's placement (:mod:`trtq.export.qdq`), which is
lint-clean by construction. Pure onnx + numpy: nothing here imports TensorRT.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from trtq.qdq_model import QdqPair, Quantization
from trtq.report.model import Lint

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops TensorRT moves Q/DQ across (data movement: values unchanged, only rearranged or selected), after
# ModelOpt's copy ops; a DQ reaching an INT8 layer through them is fused as if it fed it directly.
PASS_THROUGH_OPS = frozenset({
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Slice", "Split", "Concat",
    "Gather", "GatherElements", "GatherND", "Expand", "Tile", "Pad", "DepthToSpace", "SpaceToDepth", "Dropout",
})
# Ops TensorRT's INT8 fusions do not use: transcendental activations, normalizations, divisions and
# reductions. Only these (and network outputs) make a Q/DQ pair useless; an op on neither list is left alone.
# HardSwish is not among them: ModelOpt's TensorRT placement quantizes its input on purpose (its QDQ registry
# lists HardSwish, "mobilenet_v3, efficientvit"), TensorRT running it as an INT8 pointwise layer.
FLOAT_ONLY_OPS = frozenset({
    "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Exp", "Log", "Erf", "Gelu", "Softplus", "Softsign",
    "Mish", "LayerNormalization", "InstanceNormalization", "GroupNormalization", "LpNormalization",
    "Div", "Pow", "Sqrt", "Reciprocal", "ReduceMean", "ReduceSum", "ReduceL2", "ReduceLogSumExp", "CumSum",
})
# Between a convolution and the residual Add TensorRT fuses into it.
RESIDUAL_CHAIN_OPS = ("BatchNormalization", "Relu")
LOW_BIT_DTYPES = ("int8", "uint8", "fp8", "fp8 (e5m2)", "int4", "uint4")
SCALE_RTOL = 1e-5


@dataclass
class QdqLintResult:
    """What `trtq report MODEL.onnx` shows: the model's quantization, its lints, notes."""

    label: str
    quantization: Quantization
    lints: list[Lint] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "model": {"label": self.label, "quantization": self.quantization.document()},
            "lints": [lint.to_dict() for lint in self.lints],
            "notes": list(self.notes),
        }


def _label(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}->{next((o for o in node.output if o), '?')}"


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _fmt_scale(pair: QdqPair) -> str:
    if pair.scale is None:
        return "?"
    return f"{float(np.asarray(pair.scale, dtype=np.float64).reshape(-1)[0]):.4g}"


class _Graph:
    """Producers, readers and constants of a graph, and the model's Q/DQ pairs by tensor."""

    def __init__(self, proto: onnx.ModelProto, quantization: Quantization):
        graph = proto.graph
        self.nodes = list(graph.node)
        self.outputs = {o.name for o in graph.output}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in self.nodes:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for slot, name in enumerate(node.input):
                if name:
                    self.readers.setdefault(name, []).append((node, slot))
        self.static = {t.name for t in graph.initializer}
        for node in self.nodes:  # constants, and what is computed from constants alone (Q/DQ of a weight too)
            inputs = [i for i in node.input if i]
            if node.op_type == "Constant" or (inputs and all(i in self.static for i in inputs)):
                self.static.update(o for o in node.output if o)
        self.pairs = quantization.pairs
        self.pair_of_output = {o: p for p in self.pairs for o in p.outputs}
        self.pair_of_q_output: dict[str, QdqPair] = {}
        for p in self.pairs:
            for o in p.outputs:
                dq = self.producer.get(o)
                if dq is not None and dq.input:
                    self.pair_of_q_output[dq.input[0]] = p
        self.shapes = self._shapes(proto)

    @staticmethod
    def _shapes(proto: onnx.ModelProto) -> dict[str, tuple]:
        shapes = {t.name: tuple(t.dims) for t in proto.graph.initializer}
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False).graph
        except Exception:  # best effort: a rule that needs a shape skips the tensor
            return shapes
        for vi in [*inferred.input, *inferred.output, *inferred.value_info]:
            t = vi.type.tensor_type
            if t.HasField("shape"):
                shapes.setdefault(vi.name, tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim))
        return shapes

    def ends(self, tensor: str) -> Iterator[tuple[onnx.NodeProto | None, int, str]]:
        """Where ``tensor``'s values are used, walking through pass-through ops: (node, slot, tensor read);
        ``(None, -1, name)`` for a network output."""
        todo, seen = [tensor], set()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in self.outputs:
                yield None, -1, name
            for node, slot in self.readers.get(name, []):
                if node.op_type in PASS_THROUGH_OPS and (slot == 0 or node.op_type == "Concat"):
                    todo.extend(o for o in node.output if o)
                else:
                    yield node, slot, name

    def is_quantized_layer(self, node: onnx.NodeProto) -> bool:
        data = [i for i in node.input[:2] if i]
        return bool(data) and all(self._dequantized(i) for i in data)

    def _dequantized(self, tensor: str) -> bool:
        """Read through pass-through ops from a DequantizeLinear output."""
        seen = set()
        while tensor not in self.pair_of_output:
            node = self.producer.get(tensor)
            if node is None or node.op_type not in PASS_THROUGH_OPS or not node.input or tensor in seen:
                return False
            seen.add(tensor)
            tensor = node.input[0]
        return True

    def back_to_weighted(self, tensor: str, through_qdq: bool) -> onnx.NodeProto | None:
        """The weighted op that computed ``tensor`` (through a Q/DQ pair when ``through_qdq``), else None."""
        node = self.producer.get(tensor)
        if through_qdq and node is not None and node.op_type == "DequantizeLinear":
            q = self.producer.get(node.input[0])
            node = self.producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
        return node if node is not None and node.op_type in WEIGHTED_OPS else None


def lint_qdq_model(proto: onnx.ModelProto, quantization: Quantization) -> list[Lint]:
    """Every rule's lints for a Q/DQ model, in graph order of the node each names."""
    g = _Graph(proto, quantization)
    lints: list[Lint] = []
    lints += _float_consumer_lints(g)
    lints += _splits_fusion_lints(g)
    lints += _bias_lints(g)
    lints += _per_tensor_weight_lints(g)
    lints += _residual_lints(g)
    lints += _concat_lints(g)
    order = {_label(n): i for i, n in enumerate(g.nodes)}
    return sorted(lints, key=lambda lint: order.get(lint.layer or "", len(order)))


def _remove_hint(pair: QdqPair) -> str:
    return f"trtq export MODEL --remove-qdq {pair.name} -o OUT.onnx"


def _float_consumer_lints(g: _Graph) -> list[Lint]:
    lints = []
    for pair in g.pairs:
        if pair.kind != "activation":
            continue
        ends = [e for o in pair.outputs for e in g.ends(o)]
        if not ends or not all(node is None or node.op_type in FLOAT_ONLY_OPS for node, _, _ in ends):
            continue
        users = list(dict.fromkeys(
            f"the network output '{name}'" if node is None else f"{node.op_type} '{_label(node)}'"
            for node, _, name in ends))
        shown = ", ".join(users[:3]) + (f" and {len(users) - 3} more" if len(users) > 3 else "")
        if all(node is None for node, _, _ in ends):
            why = "nothing after it runs in INT8, so it only rounds the model's result"
        else:
            why = ("ops TensorRT's INT8 fusions do not use (they take Q/DQ into weighted ops, pooling and "
                   "element-wise layers), so it adds rounding error for no INT8 kernel")
        lints.append(Lint(
            kind="qdq-float-consumer", layer=pair.name,
            message=(f"Q/DQ pair '{pair.name}' on '{pair.tensor}' feeds only {shown}: {why}; "
                     f"remove it ({_remove_hint(pair)})"),
        ))
    return lints


def _splits_fusion_lints(g: _Graph) -> list[Lint]:
    lints = []
    for pair in g.pairs:
        if pair.kind != "activation":
            continue
        weighted = g.back_to_weighted(pair.tensor, through_qdq=False)
        if weighted is None or not g.is_quantized_layer(weighted):
            continue
        readers = [n for o in pair.outputs for n, _ in g.readers.get(o, [])
                   if n.op_type in ("Add", "BatchNormalization")]
        if not readers:
            continue
        reader = readers[0]
        what = "BatchNormalization" if reader.op_type == "BatchNormalization" else (
            "bias Add" if any(i in g.static or g.pair_of_output.get(i) and g.pair_of_output[i].kind != "activation"
                              for i in reader.input if i) else "residual Add")
        after = _quantize_after(g, reader.output[0]) if reader.output else None
        fix = (f"'{_label(reader)}' is quantized after already, so remove it ({_remove_hint(pair)})"
               if after is not None else f"move it after '{_label(reader)}'")
        lints.append(Lint(
            kind="qdq-splits-fusion", layer=pair.name,
            message=(f"Q/DQ pair '{pair.name}' on the output of {weighted.op_type} '{_label(weighted)}' sits between "
                     f"it and the {what} '{_label(reader)}': TensorRT fuses that {reader.op_type} into the "
                     f"{weighted.op_type} only with no Q/DQ in between (its guide: do not quantize the outputs of "
                     f"weighted ops), so both run as separate layers; {fix}"),
        ))
    return lints


def _bias_lints(g: _Graph) -> list[Lint]:
    lints = []
    for pair in g.pairs:
        if pair.kind != "weight" or pair.dtype not in LOW_BIT_DTYPES:
            continue
        for node, slot, _ in (e for o in pair.outputs for e in g.ends(o)):
            if node is None:
                continue
            layer = None
            if node.op_type in ("Conv", "ConvTranspose", "Gemm") and slot == 2:
                layer = node
            elif node.op_type == "Add" and len(node.input) == 2:
                other = node.input[1 - slot]
                layer = g.back_to_weighted(other, through_qdq=True)
            if layer is None:
                continue
            lints.append(Lint(
                kind="quantized-bias", layer=pair.name,
                message=(f"bias '{pair.tensor}' of {layer.op_type} '{_label(layer)}' is quantized to {pair.dtype} by "
                         f"'{pair.name}' (scale {_fmt_scale(pair)}): TensorRT adds biases in the layer's "
                         "high-precision epilogue, so an 8-bit bias only rounds small values away; keep it float "
                         "(leave Add out of onnxruntime's op_types_to_quantize; ModelOpt and trtq export do)"),
            ))
            break
    return lints


def _output_channels(node: onnx.NodeProto, shape: tuple) -> tuple[int, int | None] | None:
    """(axis, channels) of the weight's output channels, None where per-channel does not apply."""
    rank = len(shape)
    if rank < 2:
        return None
    if node.op_type == "Conv":
        axis = 0
    elif node.op_type == "ConvTranspose":
        axis = 1
    elif node.op_type == "Gemm":
        axis = 0 if _attr(node, "transB", 0) else 1
    else:  # MatMul B
        axis = rank - 1
    return axis, shape[axis]


def _per_tensor_weight_lints(g: _Graph) -> list[Lint]:
    lints = []
    for pair in g.pairs:
        if pair.kind != "weight" or not pair.per_tensor or pair.dtype != "int8":  # fp8 weights are per tensor
            continue
        for node, slot, read in (e for o in pair.outputs for e in g.ends(o)):
            if node is None or node.op_type not in WEIGHTED_OPS or slot != 1:
                continue
            found = _output_channels(node, g.shapes.get(read, ()))
            if found is None or found[1] is None or found[1] <= 1:
                continue
            axis, channels = found
            hint = ("onnxruntime: per_channel=True, and extra_options QDQOpTypePerChannelSupportToAxis "
                    f"{{'{node.op_type}': {axis}}}" if node.op_type in ("MatMul", "Gemm")
                    else "onnxruntime: per_channel=True")
            lints.append(Lint(
                kind="per-tensor-weight", layer=pair.name,
                message=(f"weight '{pair.tensor}' of {node.op_type} '{_label(node)}' has one scale for its "
                         f"{channels} output channels ('{pair.name}'): TensorRT recommends per-channel weight scales "
                         f"for accuracy; quantize it per channel on axis {axis} (trtq export --qdq does; {hint})"),
            ))
            break
    return lints


def _main_branch_conv(g: _Graph, tensor: str) -> onnx.NodeProto | None:
    """The INT8 Conv/ConvTranspose ``tensor`` comes from, through single-reader BatchNormalization/Relu/bias ops."""
    seen = set()
    while tensor not in seen:
        seen.add(tensor)
        node = g.producer.get(tensor)
        if node is None:
            return None
        if node.op_type in ("Conv", "ConvTranspose"):
            return node if g.is_quantized_layer(node) else None
        bias_like = node.op_type in ("Add", "Mul") and len(node.input) == 2 and any(i in g.static for i in node.input)
        if not (node.op_type in RESIDUAL_CHAIN_OPS or bias_like) or not node.input:
            return None
        if len(g.readers.get(tensor, [])) != 1:
            return None
        tensor = next((i for i in node.input if i not in g.static), node.input[0])
    return None


def _quantize_after(g: _Graph, tensor: str) -> onnx.NodeProto | None:
    """A QuantizeLinear reading ``tensor`` directly or through a Relu."""
    for node, _ in g.readers.get(tensor, []):
        if node.op_type == "QuantizeLinear":
            return node
        if node.op_type == "Relu":
            found = next((n for n, _ in g.readers.get(node.output[0], []) if n.op_type == "QuantizeLinear"), None)
            if found is not None:
                return found
    return None


def _residual_lints(g: _Graph) -> list[Lint]:
    lints = []
    for node in g.nodes:
        if node.op_type != "Add" or len(node.input) != 2 or any(i in g.static for i in node.input):
            continue
        q = _quantize_after(g, node.output[0])
        if q is None:
            continue
        for slot in (0, 1):
            conv = _main_branch_conv(g, node.input[slot])
            skip = node.input[1 - slot]
            if conv is None or g._dequantized(skip) or _main_branch_conv(g, skip) is not None:
                continue
            lints.append(Lint(
                kind="residual-skip-float", layer=_label(node),
                message=(f"residual Add '{_label(node)}': its skip input '{skip}' has no Q/DQ while '{_label(conv)}' "
                         f"is an INT8 {conv.op_type}: TensorRT fuses the Add into '{_label(conv)}', but a float skip "
                         f"input makes the fused layer write float and '{_label(q)}' after the Add runs as its own "
                         f"layer; add a Q/DQ pair on '{skip}'"),
            ))
            break
    return lints


def _concat_lints(g: _Graph) -> list[Lint]:
    lints = []
    for node in g.nodes:
        if node.op_type != "Concat" or len(node.input) < 2:
            continue
        pairs = [g.pair_of_output.get(i) for i in node.input if i]
        if any(p is None or p.scale is None or not p.per_tensor for p in pairs):
            continue
        scales = [float(np.asarray(p.scale, dtype=np.float64).reshape(-1)[0]) for p in pairs]
        if np.allclose(scales, scales[0], rtol=SCALE_RTOL, atol=0.0):
            continue
        shown = ", ".join(f"{s:.4g} from '{p.tensor}'" for s, p in list(zip(scales, pairs, strict=True))[:4])
        lints.append(Lint(
            kind="concat-scales", layer=_label(node),
            message=(f"Concat '{_label(node)}' joins dequantized inputs with different scales ({shown}): TensorRT "
                     "rewrites Q/DQ across a Concat only when the scales are equal, otherwise it requantizes or runs "
                     f"the Concat in float; give its inputs one scale (the largest, {max(scales):.4g})"),
        ))
    return lints


def lint_model_file(path) -> QdqLintResult:
    """Load an ONNX model (the bad-input checks of Q/DQ models included) and lint its Q/DQ placement."""
    from trtq.model import load_model

    model = load_model(path)
    quantization = model.quantization
    result = QdqLintResult(label=str(path), quantization=quantization)
    if quantization.pairs:
        result.lints = lint_qdq_model(model.proto, quantization)
    elif quantization.integer_ops:
        result.notes.append(f"{model.name} uses integer ops ({', '.join(quantization.integer_ops[:3])}), not Q/DQ "
                            "pairs: TensorRT builds Q/DQ models, so there is no placement to lint")
    else:
        result.notes.append(f"{model.name} has no Q/DQ: nothing to lint (a float model: trtq sensitivity shows the "
                            "INT8 error per layer; trtq report ENGINE shows the precisions after a build)")
    return result


ONNX_SUFFIX = ".onnx"
_NOT_ONNX_SUFFIXES = (".json", ".engine", ".plan", ".trt", ".log", ".txt")


def looks_like_onnx(path) -> bool:
    """True for an ONNX model: by its ``.onnx`` suffix, or (no known suffix) a binary file that parses as one."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ONNX_SUFFIX:
        return True
    if suffix in _NOT_ONNX_SUFFIXES:
        return False
    try:
        with open(p, "rb") as f:
            head = f.read(4096)
        if b"\0" not in head and not head.startswith(b"\x08"):  # text: layer JSON or a log
            return False
        proto = onnx.load(str(p), load_external_data=False)
    except Exception:
        return False
    return bool(proto.ir_version and proto.opset_import and proto.graph.node)


def render_qdq_lints(result: QdqLintResult, *, markdown: bool = False) -> str:
    """The terminal (or Markdown) view: the model's quantization in one line, then one line per lint."""
    q = result.quantization
    summary = q.describe() if q.pairs else "no Q/DQ pairs"
    if markdown:
        lines = [f"## Q/DQ lints: {result.label}", "", summary, "", f"### Lints ({len(result.lints)})"]
        lines += [f"- **{lint.kind}**: {lint.message}" for lint in result.lints] or ["- none"]
        lines += [""] + [f"> {n}" for n in result.notes] if result.notes else []
    else:
        lines = [f"{result.label}: {summary}", "", f"Lints ({len(result.lints)})"]
        lines += [f"  [{lint.kind}] {lint.message}" for lint in result.lints] or ["  none"]
        lines += ["", "Notes"] + [f"  - {n}" for n in result.notes] if result.notes else []
    return "\n".join(lines) + "\n"
