"""ONNX model loading and inspection: data inputs, their shapes, and the tensors that get a range.

Everything here is pure onnx; nothing runs the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from trtq.errors import TrtqError, first_line
from trtq.fileio import sha256_file
from trtq.shapes import Shape

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}

# ONNX tensors are limited to 2 GiB when serialised in one piece; bigger models use external data.
PROTO_LIMIT = 2**31 - 1


def numpy_dtype(elem_type: int) -> np.dtype:
    """numpy dtype for an ONNX element type (bfloat16 has none in numpy: reported as float32)."""
    if elem_type == TensorProto.BFLOAT16:
        return np.dtype(np.float32)
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError) as exc:
        raise TrtqError(f"unsupported ONNX element type {elem_type}") from exc


@dataclass(frozen=True)
class InputSpec:
    """A data input of the model (not a weight).

    ``dims`` holds an int for each fixed dimension and None for a dynamic one;
    ``dim_names`` holds the symbolic name (e.g. ``"batch"``) where the model gives one.
    """

    name: str
    elem_type: int
    dims: tuple[int | None, ...]
    dim_names: tuple[str | None, ...] = field(default=())

    @property
    def dtype(self) -> np.dtype:
        return numpy_dtype(self.elem_type)

    @property
    def is_float(self) -> bool:
        return self.elem_type in FLOAT_TYPES

    @property
    def is_static(self) -> bool:
        return all(d is not None for d in self.dims)

    def describe(self) -> str:
        names = self.dim_names or (None,) * len(self.dims)
        shown = [str(d) if d is not None else (n or "?") for d, n in zip(self.dims, names, strict=True)]
        return f"{self.name} {TensorProto.DataType.Name(self.elem_type).lower()}[{','.join(shown)}]"


def _value_info_dims(vi: onnx.ValueInfoProto) -> tuple[tuple[int | None, ...], tuple[str | None, ...]]:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return (), ()
    dims, names = [], []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
            names.append(None)
        else:
            dims.append(None)
            names.append(d.dim_param or None)
    return tuple(dims), tuple(names)


class Model:
    """A loaded, checked ONNX model. Build it with :func:`load_model`."""

    def __init__(self, proto: onnx.ModelProto, path: Path | None = None):
        self.proto = proto
        self.path = path

    @property
    def graph(self) -> onnx.GraphProto:
        return self.proto.graph

    @cached_property
    def initializer_names(self) -> frozenset[str]:
        names = {t.name for t in self.graph.initializer}
        names.update(t.values.name for t in self.graph.sparse_initializer)
        return frozenset(names)

    @cached_property
    def inputs(self) -> list[InputSpec]:
        """Data inputs in graph order. Initializers that old exporters also list as inputs are weights."""
        specs = []
        for vi in self.graph.input:
            if vi.name in self.initializer_names:
                continue
            if not vi.type.HasField("tensor_type"):
                raise TrtqError(f"input '{vi.name}' is not a tensor; trtq supports tensor inputs only")
            dims, names = _value_info_dims(vi)
            specs.append(InputSpec(vi.name, vi.type.tensor_type.elem_type, dims, names))
        return specs

    def input(self, name: str) -> InputSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        known = ", ".join(s.name for s in self.inputs)
        raise TrtqError(f"the model has no input named '{name}' (its inputs: {known})")

    @cached_property
    def output_names(self) -> list[str]:
        return [o.name for o in self.graph.output]

    @cached_property
    def opset(self) -> int:
        for imp in self.proto.opset_import:
            if imp.domain in ("", "ai.onnx"):
                return int(imp.version)
        return 1

    @cached_property
    def tensor_types(self) -> dict[str, int]:
        """Element type of every tensor that onnx shape inference can type."""
        types: dict[str, int] = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(self.proto, strict_mode=False)
        except Exception:  # inference is best effort; types then come from onnxruntime
            inferred = self.proto
        g = inferred.graph
        for vi in [*g.input, *g.output, *g.value_info]:
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                types[vi.name] = vi.type.tensor_type.elem_type
        for init in g.initializer:
            types[init.name] = init.data_type
        return types

    @cached_property
    def constant_tensors(self) -> frozenset[str]:
        """Tensors computable from weights alone: initializers, Constant outputs and what follows
        only from them (e.g. a transposed weight). TensorRT folds these; they get no range."""
        constant = set(self.initializer_names)
        for node in self.graph.node:  # graph nodes are topologically sorted (the checker enforces it)
            inputs = [i for i in node.input if i]
            if node.op_type == "Constant":
                constant.update(o for o in node.output if o)
            elif inputs and all(i in constant for i in inputs) and not _has_subgraph(node):
                constant.update(o for o in node.output if o)
        return frozenset(constant)

    def calibration_tensors(self) -> list[str]:
        """Names of the tensors that get a range: float data inputs, then float node outputs
        in graph order, named exactly as in the ONNX graph (TensorRT keys its cache by them).

        Tensors whose type shape inference cannot tell are included; the activation capture
        drops any that turn out not to be float.
        """
        types = self.tensor_types
        names: list[str] = [s.name for s in self.inputs if s.is_float]
        seen = set(names)
        for node in self.graph.node:
            for out in node.output:
                if not out or out in seen or out in self.constant_tensors:
                    continue
                elem = types.get(out)
                if elem is not None and elem not in FLOAT_TYPES:
                    continue
                names.append(out)
                seen.add(out)
        return names

    def value_aliases(self, tensors: list[str]) -> dict[str, str]:
        """Tensors of ``tensors`` whose values are a rearrangement of another one's (Reshape, Transpose, ...).

        Maps each such tensor to the tensor it rearranges (followed back to the first one that is not
        an alias). They hold the same multiset of values, so their statistics and ranges are the same
        and only the source needs capturing.
        """
        wanted = set(tensors)
        aliases: dict[str, str] = {}
        for node in self.graph.node:
            if node.op_type not in _VALUE_PRESERVING or not node.input or not node.output:
                continue
            source, out = node.input[0], node.output[0]
            if out in wanted and source in wanted:
                aliases[out] = aliases.get(source, source)
        return aliases

    def value_unions(self, tensors: list[str]) -> dict[str, list[list[str]]]:
        """Tensors of ``tensors`` whose values are exactly the union of other ones' (their multiset sum).

        A Concat's output holds its inputs' values; a Split's input holds its outputs' values (the parts
        cover the whole axis). Statistics depend only on the multiset of values and merge exactly, so such a
        tensor's statistics are the merge of its parts' and it need not be captured (YOLOv8n: 18 % of the
        values a calibration would otherwise fold). Maps each to the ways of making it (a Concat's output
        that is also split has two), each a list of parts in ``tensors`` with a known float type.
        """
        wanted = set(tensors)
        types = self.tensor_types
        floats = {name for name in wanted if types.get(name) in FLOAT_TYPES}
        unions: dict[str, list[list[str]]] = {}
        for node in self.graph.node:
            if node.op_type == "Concat" and len(node.output) == 1:
                whole, parts = node.output[0], list(node.input)
            elif node.op_type == "Split" and node.input and len(node.output) > 1:
                whole, parts = node.input[0], list(node.output)
            else:
                continue
            if whole in floats and parts and all(part in floats and part != whole for part in parts):
                unions.setdefault(whole, []).append(parts)
        return unions

    @cached_property
    def quantization(self):
        """The model's own quantization: Q/DQ pairs, integer ops, layers left in float (:mod:`trtq.qdq_model`)."""
        from trtq.qdq_model import detect_quantization

        return detect_quantization(self.proto, lambda: self.tensor_types, self._tensor_shapes)

    def _tensor_shapes(self) -> dict[str, tuple[int | None, ...]]:
        try:
            inferred = onnx.shape_inference.infer_shapes(self.proto, strict_mode=False)
        except Exception:  # best effort, as tensor_types
            inferred = self.proto
        g = inferred.graph
        return {vi.name: _value_info_dims(vi)[0] for vi in [*g.input, *g.output, *g.value_info]}

    @cached_property
    def sha256(self) -> str:
        if self.path is not None:
            return sha256_file(self.path)
        import hashlib

        return hashlib.sha256(self.proto.SerializeToString()).hexdigest()

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else (self.graph.name or "model")


# Ops whose first output holds exactly the values of their first input, rearranged.
_VALUE_PRESERVING = frozenset(
    {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose", "DepthToSpace", "SpaceToDepth"}
)


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def load_model(path: str | os.PathLike, *, check: bool = True) -> Model:
    """Load an ONNX model (external data included) and run the ONNX checker on it."""
    model_path = Path(path)
    if not model_path.exists():
        raise TrtqError(f"model file not found: {model_path}")
    if model_path.is_dir():
        raise TrtqError(f"model path is a directory, not an ONNX file: {model_path}")
    try:
        proto = onnx.load(str(model_path), load_external_data=False)
    except PermissionError as exc:
        raise TrtqError(f"cannot read model {model_path}: permission denied") from exc
    except Exception as exc:
        raise TrtqError(f"{model_path} is not an ONNX model ({type(exc).__name__})") from exc
    _load_external_data(proto, model_path)
    if not proto.graph.node and not proto.graph.input:
        raise TrtqError(f"{model_path} is not an ONNX model (no graph found)")
    if check:
        try:
            if proto.ByteSize() > PROTO_LIMIT:
                onnx.checker.check_model(str(model_path))
            else:
                onnx.checker.check_model(proto)
        except onnx.checker.ValidationError as exc:
            raise TrtqError(f"{model_path} fails the ONNX checker: {first_line(exc, 'invalid model')}") from exc
    model = Model(proto, model_path)
    if not model.inputs:
        raise TrtqError(f"{model_path} has no data inputs")
    if check and model.quantization.explicit:  # a Q/DQ model TensorRT cannot build fails here, before any work
        from trtq.qdq_model import require_buildable

        require_buildable(model.quantization, model_path.name)
    return model


def _load_external_data(proto: onnx.ModelProto, model_path: Path) -> None:
    """Read weights stored beside the model (models over 2 GiB); a missing file is named."""
    from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_model, uses_external_data

    locations = sorted({ExternalDataInfo(t).location for t in _all_tensors(proto.graph) if uses_external_data(t)})
    if not locations:
        return
    missing = [loc for loc in locations if not (model_path.parent / loc).is_file()]
    if missing:
        raise TrtqError(f"{model_path} keeps its weights in external data that is missing: "
                        f"{', '.join(missing)} (expected beside the model)")
    try:
        load_external_data_for_model(proto, str(model_path.parent))
    except Exception as exc:
        raise TrtqError(f"cannot read the external data of {model_path}: {first_line(exc)}") from exc


def _all_tensors(graph: onnx.GraphProto):
    """Initializers and attribute tensors (Constant values) of a graph and its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _all_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _all_tensors(subgraph)


def resolve_shape(spec: InputSpec, override: Shape | None, batch_size: int | None) -> tuple[int | None, ...]:
    """The input's shape after ``--shapes`` and ``--batch-size``: dims still None must come from the data.

    ``override`` (from ``--shapes``) must agree with every fixed dimension of the model.
    """
    if override is not None:
        if spec.dims and len(override) != len(spec.dims):
            raise TrtqError(
                f"--shapes gives {len(override)} dimensions for input '{spec.name}', "
                f"but the model's input has {len(spec.dims)} ({spec.describe()})"
            )
        for axis, (fixed, given) in enumerate(zip(spec.dims, override, strict=False)):
            if fixed is not None and fixed != given:
                raise TrtqError(
                    f"--shapes sets dimension {axis} of input '{spec.name}' to {given}, "
                    f"but the model fixes it to {fixed} ({spec.describe()})"
                )
        return tuple(override)
    dims = list(spec.dims)
    if dims and dims[0] is None and batch_size is not None:
        dims[0] = batch_size
    return tuple(dims)


def check_shapes_known(model: Model, shapes: dict[str, Shape]) -> None:
    """Reject ``--shapes`` entries that name no input of the model."""
    known = {s.name for s in model.inputs}
    for name in shapes:
        if name not in known:
            raise TrtqError(
                f"--shapes names '{name}', which is not an input of the model "
                f"(its inputs: {', '.join(sorted(known))})"
            )
