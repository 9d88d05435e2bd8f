"""FP16 export: the model computes in float16, its inputs and outputs stay float32.

TensorRT 11 has no FP16 builder flag: the precision comes from the ONNX types (strong typing).
trtq writes that model itself because the two converters at hand get it wrong (checked with
onnxruntime 1.31 and onnxconverter-common 1.16 on a MatMul feeding Softmax and Exp kept in
float32): onnxruntime.transformers.float16 emits two Cast nodes with the same output name and an
unsorted graph that onnxruntime refuses to load; onnxconverter-common clamps weights to 1e4
instead of 65504, leaves float16 graph outputs despite ``keep_io_types`` and stamps an IR
version onnxruntime 1.31 rejects.

Rules:

- Every node computes in float16 unless its op type is in :data:`FP32_OP_TYPES` (ops whose
  float16 result overflows or loses too much: exponentials, powers, reductions, normalisations),
  the user keeps it (``keep_fp32``), its schema does not allow float16 for that input at the
  model's opset, it is a custom-domain op or control flow, or it produces a tensor a subgraph
  reads. Casts are inserted where float16 and float32 regions meet: one Cast per tensor and
  direction, shared by all consumers, placed so the graph stays topologically sorted.
- Float32 graph inputs and outputs keep their type: inputs are cast once after entry; an output
  computed in float16 is cast back under its original name.
- Float32 weights read by float16 nodes become float16 initializers (values beyond +-65504 are
  clamped, with a warning naming the weight); weights also read by float32 nodes keep a float32
  copy, so no precision is lost there.
- ``Cast`` nodes are left as they are: casting a float32 index or size through float16 first
  would corrupt integers above 2048.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtq.export.graph import (
    NameAllocator,
    brief_list,
    check_exported,
    node_label,
    outer_scope_names,
    prune_unused,
    resolve_nodes,
    subgraphs,
)
from trtq.model import Model

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)  # 65504

# Kept in float32 by default: overflow-prone (exp/pow/sums of many terms) or precision-critical
# (normalisation statistics, box coordinates and scores of detection post-processing).
FP32_OP_TYPES: tuple[str, ...] = (
    "Softmax", "LogSoftmax", "LayerNormalization", "GroupNormalization", "InstanceNormalization",
    "Exp", "Log", "Pow", "ReduceSum", "ReduceSumSquare", "ReduceMean", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceProd", "CumSum", "NonMaxSuppression", "RoiAlign",
    "TopK", "Range",
)
# Ops that only look at a tensor's shape: they read whichever version of the tensor exists.
_SHAPE_ONLY_OPS = ("Shape", "Size")


@dataclass
class Fp16Export:
    """The float16 model and what the conversion kept in float32."""

    model: onnx.ModelProto
    fp16_nodes: list[str] = field(default_factory=list)
    fp32_nodes: dict[str, str] = field(default_factory=dict)  # node -> why it stays float32
    casts_added: int = 0
    clamped: dict[str, int] = field(default_factory=dict)  # weight -> values clamped to +-65504
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _allowed_types(schema: onnx.defs.OpSchema, type_str: str) -> set[str]:
    for constraint in schema.type_constraints:
        if constraint.type_param_str == type_str:
            return set(constraint.allowed_type_strs)
    return {type_str}


def _formal(params, slot: int):
    if slot < len(params):
        return params[slot]
    last = params[-1] if params else None
    if last is not None and last.option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return last
    return None


@dataclass
class _NodePlan:
    fp16_inputs: list[int]
    fp16_outputs: list[int]


class _Converter:
    def __init__(self, model: Model, keep: set[int], fp32_ops: set[str]):
        self.model = model
        self.proto = copy.deepcopy(model.proto)
        self.graph = self.proto.graph
        self.types = model.tensor_types
        self.keep = keep
        self.fp32_ops = fp32_ops
        self.pinned = outer_scope_names(self.graph)
        self.fresh = NameAllocator(self.graph)
        self.result = Fp16Export(model=self.proto)
        self.versions: dict[str, dict[int, str]] = {}
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.constants: dict[str, onnx.TensorProto] = {}
        self.new_initializers: list[onnx.TensorProto] = []
        self.weight_copies: dict[str, str] = {}  # float32 weight -> its float16 copy
        self.nodes: list[onnx.NodeProto] = []
        self.graph_outputs = {o.name for o in self.graph.output if o.type.tensor_type.elem_type == FLOAT}

    def _plan(self, index: int, node: onnx.NodeProto) -> _NodePlan | str:
        """How ``node`` converts, or why it stays float32."""
        if index in self.keep:
            return "kept by the user"
        if node.op_type in self.fp32_ops:
            return f"{node.op_type} is kept in float32 by default"
        if node.domain not in ("", "ai.onnx"):
            return f"custom op of domain '{node.domain}'"
        if node.op_type == "Cast" or node.op_type in _SHAPE_ONLY_OPS:
            return "type conversion"
        if any(True for _ in subgraphs(node)):
            return "control flow"
        if any(o in self.pinned for o in node.output):
            return "its output is read inside a subgraph"
        float_inputs = [s for s, name in enumerate(node.input) if name and self.types.get(name) == FLOAT]
        if not float_inputs:
            return "no float32 input"
        if any(name and name not in self.types for name in node.input):
            return "an input of unknown type"
        try:
            schema = onnx.defs.get_schema(node.op_type, self.model.opset, node.domain)
        except onnx.defs.SchemaError:
            return "no ONNX schema"
        fp16_inputs: list[int] = []
        converted_vars: set[str] = set()
        for slot in float_inputs:
            formal = _formal(schema.inputs, slot)
            if formal is not None and "tensor(float16)" in _allowed_types(schema, formal.type_str):
                fp16_inputs.append(slot)
                converted_vars.add(formal.type_str)
        if not fp16_inputs:
            return f"{node.op_type}-{schema.since_version} has no float16 form"
        fp16_outputs = []
        for slot, name in enumerate(node.output):
            formal = _formal(schema.outputs, slot)
            if name and formal is not None and formal.type_str in converted_vars:
                if self.types.get(name) != FLOAT:
                    return "an output of unknown type"
                fp16_outputs.append(slot)
        return _NodePlan(fp16_inputs, fp16_outputs)

    def _fp16_weight(self, name: str, source: onnx.TensorProto) -> str:
        values = numpy_helper.to_array(source).astype(np.float32)
        overflow = int(np.count_nonzero(np.isfinite(values) & (np.abs(values) > FP16_MAX)))
        if overflow:
            self.result.clamped[name] = overflow
            values = np.where(np.isfinite(values), np.clip(values, -FP16_MAX, FP16_MAX), values)
        converted = self.fresh(f"{name}_fp16")
        self.new_initializers.append(numpy_helper.from_array(values.astype(np.float16), converted))
        self.weight_copies[name] = converted
        return converted

    def _version(self, name: str, want: int) -> str:
        """The name of ``name`` as type ``want``, casting (once) if needed."""
        have = self.versions.setdefault(name, {self.types.get(name, FLOAT): name})
        if want in have:
            return have[want]
        source = self.initializers.get(name) or self.constants.get(name)
        if want == FLOAT16 and source is not None and source.data_type == FLOAT:
            have[want] = self._fp16_weight(name, source)
            return have[want]
        suffix = "fp16" if want == FLOAT16 else "fp32"
        origin = have.get(FLOAT if want == FLOAT16 else FLOAT16)
        if origin is None:  # not a float tensor: nothing to convert
            return name
        cast_out = self.fresh(f"{name}_{suffix}")
        self.nodes.append(helper.make_node("Cast", [origin], [cast_out], name=self.fresh(f"{name}_Cast_to_{suffix}"),
                                           to=want))
        self.result.casts_added += 1
        have[want] = cast_out
        return cast_out

    def _remember_constant(self, node: onnx.NodeProto) -> None:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            return
        for attr in node.attribute:
            if attr.name == "value" and attr.t.data_type == FLOAT:
                self.constants[node.output[0]] = attr.t
            elif attr.name in ("value_float", "value_floats"):
                value = attr.f if attr.name == "value_float" else list(attr.floats)
                self.constants[node.output[0]] = numpy_helper.from_array(np.asarray(value, dtype=np.float32))

    def run(self) -> Fp16Export:
        for index, original in enumerate(self.graph.node):
            node = copy.deepcopy(original)
            plan = self._plan(index, node)
            label = node_label(node)
            if isinstance(plan, str):
                if plan != "no float32 input":
                    self.result.fp32_nodes[label] = plan
                for slot, name in enumerate(node.input):
                    if not name:
                        continue
                    if node.op_type in _SHAPE_ONLY_OPS:
                        node.input[slot] = next(iter(self.versions.get(name, {0: name}).values()))
                    elif self.types.get(name) == FLOAT:
                        node.input[slot] = self._version(name, FLOAT)
                self._remember_constant(node)
                self.nodes.append(node)
                for name in node.output:
                    if name:
                        self.versions[name] = {self.types.get(name, 0): name}
                continue
            self.result.fp16_nodes.append(label)
            for slot, name in enumerate(node.input):
                if name and self.types.get(name) == FLOAT:
                    node.input[slot] = self._version(name, FLOAT16 if slot in plan.fp16_inputs else FLOAT)
            back_to_fp32: list[tuple[str, str]] = []
            for slot, name in enumerate(node.output):
                if not name:
                    continue
                if slot not in plan.fp16_outputs:
                    self.versions[name] = {self.types.get(name, 0): name}
                elif name in self.graph_outputs:
                    internal = self.fresh(f"{name}_fp16")
                    node.output[slot] = internal
                    self.versions[name] = {FLOAT16: internal, FLOAT: name}
                    back_to_fp32.append((internal, name))
                else:
                    self.versions[name] = {FLOAT16: name}
            self.nodes.append(node)
            for internal, name in back_to_fp32:
                self.nodes.append(helper.make_node("Cast", [internal], [name], name=self.fresh(f"{name}_Cast_to_fp32"),
                                                   to=FLOAT))
                self.result.casts_added += 1
        self._finish()
        return self.result

    def _reuse_weight_names(self) -> None:
        """A float16 weight whose float32 original is gone takes the original's name back, so
        weight names (refit, inspection) stay those of the source model."""
        graph = self.graph
        present = {t.name for t in graph.initializer} | {i.name for i in graph.input}
        present.update(o for n in graph.node for o in n.output)
        renames = {copy_: orig for orig, copy_ in self.weight_copies.items() if orig not in present}
        _rename(graph, renames)

    def _finish(self) -> None:
        graph = self.graph
        del graph.node[:]
        graph.node.extend(self.nodes)
        graph.initializer.extend(self.new_initializers)
        del graph.value_info[:]  # float32 annotations of tensors that are float16 now
        if self.proto.ir_version < 4:
            # IR 3 lists every initializer as a graph input: list the new ones, drop the unread ones.
            read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output} | self.pinned
            weights = {t.name for t in graph.initializer}
            kept_inputs = [vi for vi in graph.input if vi.name not in weights or vi.name in read]
            del graph.input[:]
            graph.input.extend(kept_inputs)
            graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                               for t in self.new_initializers)
        prune_unused(graph, set(self.constants))
        self._reuse_weight_names()
        try:
            inferred = onnx.shape_inference.infer_shapes(self.proto)
            graph.value_info.extend(inferred.graph.value_info)
        except Exception:  # shapes are a convenience for viewers; the model is valid without them
            pass
        for name, count in self.result.clamped.items():
            self.result.warnings.append(
                f"weight '{name}': {count} value(s) beyond the float16 range clamped to +-{FP16_MAX:g}"
            )
        by_reason: dict[str, list[str]] = {}
        for label, reason in self.result.fp32_nodes.items():
            by_reason.setdefault(reason, []).append(label)
        for reason, labels in by_reason.items():
            self.result.notes.append(f"kept in float32 ({reason}): {brief_list(labels)}")


def _rename(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name in renames:
                node.input[slot] = renames[name]
    for item in [*graph.initializer, *graph.input]:
        if item.name in renames:
            item.name = renames[item.name]


def export_fp16(
    model: Model,
    *,
    keep_fp32: Iterable[str] = (),
    fp32_op_types: Iterable[str] = FP32_OP_TYPES,
) -> Fp16Export:
    """Convert ``model`` to float16 compute with float32 I/O (see the module docstring).

    ``keep_fp32`` names nodes (or their output tensors) that stay float32, like ``--exclude``
    does for Q/DQ; unknown names are an error.
    """
    keep = resolve_nodes(model.graph, keep_fp32)
    converter = _Converter(model, keep, set(fp32_op_types))
    result = converter.run()
    check_exported(result.model, "FP16")
    return result
