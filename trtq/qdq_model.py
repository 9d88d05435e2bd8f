"""Already-quantized ONNX models (QAT and Q/DQ exports): found once, checked once, described once.

A model with QuantizeLinear/DequantizeLinear nodes, or with integer ops (QLinear*, ConvInteger,
MatMulInteger), is *explicitly quantized*: TensorRT builds it with the model's own scales and ignores
any calibration. :func:`detect_quantization` finds its Q/DQ pairs (a QuantizeLinear and the
DequantizeLinear nodes reading it; a DequantizeLinear of a stored integer weight alone), their
granularity (per tensor / per channel / per block: opset 21's ``block_size``, ModelOpt's int4 weights) and
types (int8, uint8, fp8, int4, int32 biases), and which compute layers (Conv, ConvTranspose, Gemm, MatMul)
the model left in float.
:meth:`Quantization.problems` lists what TensorRT cannot build, one line per node, before any work.

A pair is named by its QuantizeLinear node (its DequantizeLinear node when the weight is stored as
integers); :meth:`Quantization.find` also accepts the tensor a pair quantizes.

Pure onnx + numpy; this module does not import :mod:`trtq.model` (which imports it), so it takes a
``ModelProto`` and the element types of its tensors.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from trtq.errors import TrtqError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Integer-arithmetic ops (ONNX and onnxruntime's com.microsoft domain): the model is quantized already.
INTEGER_OPS = frozenset({"ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "QGemm",
                         "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "QAttention", "MatMulIntegerToFloat"})
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")

_DTYPE_NAMES = {
    TensorProto.INT8: "int8", TensorProto.UINT8: "uint8", TensorProto.INT16: "int16", TensorProto.UINT16: "uint16",
    TensorProto.INT32: "int32", TensorProto.INT4: "int4", TensorProto.UINT4: "uint4",
    TensorProto.FLOAT8E4M3FN: "fp8", TensorProto.FLOAT8E4M3FNUZ: "fp8", TensorProto.FLOAT8E5M2: "fp8 (e5m2)",
    TensorProto.FLOAT8E5M2FNUZ: "fp8 (e5m2)",
}
_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
# What TensorRT builds from Q/DQ (zero point 0): signed int8, fp8 e4m3, int4 weights; int32 biases are dequantized.
TENSORRT_DTYPES = ("int8", "fp8", "int4", "int32")


def _label(node: onnx.NodeProto) -> str:
    if node.name:
        return node.name
    return f"{node.op_type}->{next((o for o in node.output if o), '?')}"


def _attribute(node: onnx.NodeProto, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


@dataclass(frozen=True)
class QdqPair:
    """One existing Q/DQ pair of the model.

    ``tensor`` is the float tensor the QuantizeLinear reads (for a stored integer weight: the integer
    initializer), ``outputs`` the DequantizeLinear outputs its consumers read.
    """

    name: str
    tensor: str
    outputs: tuple[str, ...]
    q_node: str | None  # None: a DequantizeLinear of a stored integer weight
    dq_nodes: tuple[str, ...]
    kind: str  # "activation", "weight" or "bias" (an int32 DequantizeLinear)
    dtype: str
    axis: int | None  # per-channel (or per-block) axis (as written, default 1); None per tensor
    scale: np.ndarray | None = field(compare=False, repr=False)  # None: not a constant
    zero_point: np.ndarray | None = field(compare=False, repr=False)
    block_size: int | None = None  # block-wise quantization along ``axis`` (opset 21); None otherwise

    @property
    def per_block(self) -> bool:
        return self.block_size is not None

    @property
    def per_channel(self) -> bool:
        return self.scale is not None and self.scale.size > 1 and not self.per_block

    @property
    def per_tensor(self) -> bool:
        return not self.per_channel and not self.per_block

    @property
    def nodes(self) -> tuple[str, ...]:
        return ((self.q_node,) if self.q_node else ()) + self.dq_nodes


@dataclass
class Quantization:
    """What the model's own quantization is: its pairs, integer ops, and the compute layers left in float."""

    pairs: list[QdqPair] = field(default_factory=list)
    integer_ops: list[str] = field(default_factory=list)
    quantized_layers: list[str] = field(default_factory=list)
    float_layers: list[str] = field(default_factory=list)
    weight_only_layers: list[str] = field(default_factory=list)  # of quantized_layers: only the weight has Q/DQ
    problems_found: list[str] = field(default_factory=list)
    lone_quantize: list[str] = field(default_factory=list)  # QuantizeLinear nodes no DequantizeLinear reads

    @property
    def explicit(self) -> bool:
        return bool(self.pairs or self.integer_ops or self.lone_quantize)

    @property
    def per_channel(self) -> int:
        return sum(1 for p in self.pairs if p.per_channel)

    @property
    def per_tensor(self) -> int:
        return sum(1 for p in self.pairs if p.per_tensor)

    @property
    def per_block(self) -> int:
        return sum(1 for p in self.pairs if p.per_block)

    @property
    def dtypes(self) -> Counter:
        return Counter(p.dtype for p in self.pairs)

    def problems(self) -> list[str]:
        return list(self.problems_found)

    def describe(self) -> str:
        """One line: how the model is quantized."""
        kinds = Counter(p.kind for p in self.pairs)
        plural = {"activation": "activations", "weight": "weights", "bias": "biases"}
        parts = [f"{n} {k if n == 1 else plural[k]}" for k in plural if (n := kinds[k])]
        types = ", ".join(f"{t}" if n == len(self.pairs) else f"{n} {t}" for t, n in self.dtypes.most_common())
        blocks = f"{self.per_block} per-block, " if self.per_block else ""
        text = (f"{len(self.pairs)} Q/DQ pairs ({', '.join(parts) or 'none'}; {blocks}{self.per_channel} per-channel, "
                f"{self.per_tensor} per-tensor; {types or 'no type'})")
        if self.integer_ops:
            text += f", {len(self.integer_ops)} integer ops"
        total = len(self.quantized_layers) + len(self.float_layers)
        text += f"; {len(self.quantized_layers)} of {total} compute layers quantized"
        if self.weight_only_layers:
            text += f" ({len(self.weight_only_layers)} weight-only)"
        if self.float_layers:
            shown = ", ".join(self.float_layers[:4]) + (", ..." if len(self.float_layers) > 4 else "")
            text += f", left in float: {shown}"
        return text

    def document(self) -> dict:
        return {
            "explicit": self.explicit, "pairs": len(self.pairs), "per_channel": self.per_channel,
            "per_tensor": self.per_tensor, "per_block": self.per_block, "dtypes": dict(self.dtypes),
            "integer_ops": list(self.integer_ops),
            "quantized_layers": list(self.quantized_layers), "float_layers": list(self.float_layers),
            "weight_only_layers": list(self.weight_only_layers),
        }

    def find(self, names: Iterable[str], option: str = "--remove-qdq") -> list[QdqPair]:
        """The pairs named (pair name, tensor quantized, or a DequantizeLinear output); ``*`` is all of them."""
        names = list(names)
        if "*" in names:
            return list(self.pairs)
        by_name: dict[str, QdqPair] = {}
        for pair in self.pairs:
            for key in (pair.name, pair.tensor, *pair.outputs, *pair.nodes):
                by_name.setdefault(key, pair)
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise TrtqError(f"{option}: no Q/DQ pair named {', '.join(repr(n) for n in unknown[:3])} in the model "
                            f"(name a pair by its QuantizeLinear node or the tensor it quantizes, "
                            f"e.g. {self.pairs[0].name!r})" if self.pairs else f"{option}: the model has no Q/DQ pairs")
        return list(dict.fromkeys(by_name[n] for n in names))


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    values = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            tensor = _attribute(node, "value")
            if isinstance(tensor, onnx.TensorProto):
                values[node.output[0]] = tensor
    return values


def _array(tensor: onnx.TensorProto | None) -> np.ndarray | None:
    if tensor is None:
        return None
    try:
        return np.asarray(numpy_helper.to_array(tensor))
    except Exception:  # an exotic type numpy cannot hold (e.g. packed int4): no values, the type still counts
        return None


def _dtype(node: onnx.NodeProto, constants: Mapping[str, onnx.TensorProto], is_dq: bool) -> int:
    """The integer (or fp8) type of a pair: its zero point's, else the Q output_dtype, else uint8 (ONNX's default)."""
    if len(node.input) > 2 and node.input[2] in constants:
        return constants[node.input[2]].data_type
    if is_dq and node.input[0] in constants:
        return constants[node.input[0]].data_type
    output_dtype = _attribute(node, "output_dtype", 0)
    return output_dtype or TensorProto.UINT8


def detect_quantization(proto: onnx.ModelProto, types: Callable[[], Mapping[str, int]] | Mapping[str, int],
                        shapes: Callable[[], Mapping[str, tuple]] | None = None) -> Quantization:
    """Find the model's own quantization; ``types`` gives tensor element types (called only when there are
    Q/DQ nodes), ``shapes`` tensor shapes for the axis check."""
    graph = proto.graph
    found = Quantization()
    nodes = list(graph.node)
    found.integer_ops = [_label(n) for n in nodes
                         if n.op_type in INTEGER_OPS or (n.op_type.startswith("QLinear") and n.op_type not in QDQ_OPS)]
    if not any(n.op_type in QDQ_OPS for n in nodes) and not found.integer_ops:
        return found
    tensor_types = types() if callable(types) else types
    tensor_shapes = (shapes() if callable(shapes) else shapes) or {}
    constants = _constants(graph)
    constant_names = set(constants)
    for node in nodes:  # what follows from constants alone (a reshaped weight) is a weight too
        inputs = [i for i in node.input if i]
        if inputs and all(i in constant_names for i in inputs) and node.op_type not in QDQ_OPS:
            constant_names.update(o for o in node.output if o)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            if name:
                readers.setdefault(name, []).append(node)
    paired_dq: set[int] = set()
    for node in nodes:
        if node.op_type != "QuantizeLinear":
            continue
        dqs = [r for r in readers.get(node.output[0], []) if r.op_type == "DequantizeLinear"] if node.output else []
        if not dqs:
            found.lone_quantize.append(_label(node))
            continue
        paired_dq.update(id(d) for d in dqs)
        source = node.input[0]
        kind = "weight" if source in constant_names else "activation"
        found.pairs.append(_pair(node, dqs, source, kind, constants))
        _check(found, node, source, tensor_types, tensor_shapes, constants, quantize=True)
        for dq in dqs:
            _check(found, dq, dq.input[0], tensor_types, tensor_shapes, constants, quantize=False,
                   shape_of=source)
    for node in nodes:
        if node.op_type != "DequantizeLinear" or id(node) in paired_dq:
            continue
        stored = node.input[0]
        dtype = _dtype(node, constants, True)
        kind = "bias" if dtype == TensorProto.INT32 else "weight" if stored in constant_names else "activation"
        found.pairs.append(_pair(None, [node], stored, kind, constants))
        _check(found, node, stored, tensor_types, tensor_shapes, constants, quantize=False)
    dq_outputs = {o for p in found.pairs for o in p.outputs}
    int4_outputs = {o for p in found.pairs if p.dtype in ("int4", "uint4") for o in p.outputs}
    for node in nodes:
        if node.op_type in COMPUTE_OPS and node.domain in ("", "ai.onnx"):
            data = [i for i in node.input[:2] if i]
            if data and all(i in dq_outputs for i in data):
                found.quantized_layers.append(_label(node))
            elif node.op_type in ("MatMul", "Gemm") and len(data) == 2 and data[1] in int4_outputs:
                # TensorRT's weight-only quantization (ModelOpt's int4 MatMul/Gemm weights, float activations)
                found.quantized_layers.append(_label(node))
                found.weight_only_layers.append(_label(node))
            else:
                found.float_layers.append(_label(node))
    return found


def _pair(q: onnx.NodeProto | None, dqs: list[onnx.NodeProto], tensor: str, kind: str,
          constants: Mapping[str, onnx.TensorProto]) -> QdqPair:
    first = q if q is not None else dqs[0]
    scale = _array(constants.get(first.input[1])) if len(first.input) > 1 else None
    zero = _array(constants.get(first.input[2])) if len(first.input) > 2 and first.input[2] else None
    dtype = _dtype(first, constants, q is None)
    per_channel = scale is not None and scale.size > 1
    block = _attribute(first, "block_size", 0)
    return QdqPair(
        name=_label(first), tensor=tensor, outputs=tuple(d.output[0] for d in dqs), q_node=_label(q) if q else None,
        dq_nodes=tuple(_label(d) for d in dqs), kind=kind,
        dtype=_DTYPE_NAMES.get(dtype, onnx.TensorProto.DataType.Name(dtype).lower()),
        axis=int(_attribute(first, "axis", 1)) if per_channel else None, scale=scale, zero_point=zero,
        block_size=int(block) if block and per_channel else None,
    )


def _check(found: Quantization, node: onnx.NodeProto, data: str, types: Mapping[str, int],
           shapes: Mapping[str, tuple], constants: Mapping[str, onnx.TensorProto], *, quantize: bool,
           shape_of: str | None = None) -> None:
    """The bad-input rules, one line per problem, naming the node."""
    label = f"{node.op_type} '{_label(node)}'"
    problems = found.problems_found
    elem = types.get(data)
    if quantize and elem is not None and elem not in _FLOAT_TYPES:
        problems.append(f"{label} quantizes '{data}', a {TensorProto.DataType.Name(elem).lower()} tensor: "
                        "Q/DQ belongs on float tensors")
        return
    if not quantize and elem in _FLOAT_TYPES and data in constants:
        problems.append(f"{label} dequantizes '{data}', which is already float: Q/DQ belongs on integer tensors")
        return
    if len(node.input) < 2 or node.input[1] not in constants:
        problems.append(f"{label} has no constant scale: TensorRT needs constant Q/DQ scales")
        return
    scale = _array(constants[node.input[1]])
    if scale is not None:
        bad = ~np.isfinite(scale.astype(np.float64)) | (scale.astype(np.float64) <= 0)
        if bad.any():
            value = float(scale.reshape(-1)[np.argmax(bad.reshape(-1))])
            problems.append(f"{label} has a zero, negative or non-finite scale ({value:g}): "
                            "TensorRT needs positive scales")
            return
    zero = _array(constants.get(node.input[2])) if len(node.input) > 2 and node.input[2] else None
    if zero is not None and np.any(zero.astype(np.float64) != 0):
        value = zero.reshape(-1)[np.argmax(zero.reshape(-1) != 0)]
        problems.append(f"{label} has a non-zero zero point ({value}): TensorRT needs symmetric quantization "
                        "(zero point 0)")
        return
    dtype = _DTYPE_NAMES.get(_dtype(node, constants, not quantize), "?")
    if dtype not in TENSORRT_DTYPES:
        problems.append(f"{label} quantizes to {dtype}: TensorRT builds signed int8, fp8 or int4 Q/DQ only")
        return
    if scale is not None and scale.size > 1:
        axis = int(_attribute(node, "axis", 1))
        name = shape_of or data
        shape = tuple(constants[name].dims) if name in constants else tuple(shapes.get(name, ()) or ())
        block = int(_attribute(node, "block_size", 0) or 0)
        if shape:
            rank = len(shape)
            if not -rank <= axis < rank:
                problems.append(f"{label} has axis {axis}, outside the {rank}-D tensor '{name}'")
            elif block:
                _check_blocks(problems, label, name, shape, axis % rank, block, scale.shape)
            elif shape[axis] not in (None, scale.size):
                problems.append(f"{label} has {scale.size} per-channel scales on axis {axis}, but '{name}' has "
                                f"{shape[axis]} channels there (shape {list(shape)})")


def _check_blocks(problems: list[str], label: str, name: str, shape: tuple, axis: int, block: int,
                  scale_shape: tuple) -> None:
    """Block-wise quantization (opset 21): the scale has the tensor's rank, ceil(D/block_size) on ``axis``."""
    expected = [(-(-d // block) if i == axis and isinstance(d, int) else d) for i, d in enumerate(shape)]
    if block < 0 or len(scale_shape) != len(shape) or any(
            e is not None and e != s for e, s in zip(expected, scale_shape, strict=True)):
        problems.append(f"{label} has block_size {block} on axis {axis} and scales of shape {list(scale_shape)}, "
                        f"but '{name}' (shape {list(shape)}) needs scales of shape {expected}")


def require_buildable(quantization: Quantization, model_name: str) -> None:
    """Bad input, before any work: the first problem as one line, with how many more there are."""
    problems = quantization.problems()
    if problems:
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        raise TrtqError(f"{model_name}: {problems[0]}{more}")


def refusal(quantization: Quantization, model_name: str, reason: str, alternative: str = "") -> TrtqError:
    """The one-line refusal of a command that would quantize an explicitly quantized model again."""
    text = (f"{model_name} is already quantized ({quantization.describe()}): TensorRT builds it with the model's "
            f"own scales, so {reason}")
    if alternative:
        text += f"; {alternative}"
    return TrtqError(text)


def refuse_quantized(model, reason: str, alternative: str = "") -> None:
    """Raise the refusal when ``model`` (a :class:`trtq.model.Model`) is explicitly quantized."""
    if model.quantization.explicit:
        raise refusal(model.quantization, model.name, reason, alternative)
