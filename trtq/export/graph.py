"""Graph plumbing shared by the Q/DQ and FP16 exports: who produces and consumes each tensor,
fresh names that cannot collide, constant weights as numpy arrays, opset upgrades and pruning.

Everything works on a plain ``onnx.ModelProto`` and never mutates the caller's copy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from trtq.errors import TrtqError, first_line
from trtq.export.compare import fake_quant_session
from trtq.fileio import atomic_write
from trtq.model import Model


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The bodies of If/Loop/Scan (and any other graph-valued attribute) of ``node``."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def outer_scope_names(graph: onnx.GraphProto) -> set[str]:
    """Names that nodes inside subgraphs of ``graph`` read from an enclosing scope.

    Such tensors must keep their name and type: the subgraph refers to them by name.
    """
    found: set[str] = set()

    def visit(sub: onnx.GraphProto, bound: set[str]) -> None:
        local = bound | {i.name for i in sub.input} | {t.name for t in sub.initializer}
        for node in sub.node:
            found.update(name for name in node.input if name and name not in local)
            for inner in subgraphs(node):
                visit(inner, local | set(node.output))
            local |= set(node.output)

    for node in graph.node:
        for sub in subgraphs(node):
            visit(sub, set())
    return found


@dataclass
class GraphIndex:
    """Producer and consumers of every tensor of a graph (top level only)."""

    graph: onnx.GraphProto
    producer: dict[str, int] = field(default_factory=dict)  # tensor -> node index
    consumers: dict[str, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))

    def __post_init__(self) -> None:
        for index, node in enumerate(self.graph.node):
            for out in node.output:
                if out:
                    self.producer[out] = index
            for slot, name in enumerate(node.input):
                if name:
                    self.consumers[name].append((index, slot))

    @property
    def graph_outputs(self) -> set[str]:
        return {o.name for o in self.graph.output}


class NameAllocator:
    """Hands out node and tensor names that exist nowhere in the model yet.

    The preferred name is used as is when free (``conv1_out_QuantizeLinear``); otherwise a
    numeric suffix is added, so names stay readable and unique across nodes, tensors and
    initializers (TensorRT and onnxruntime both reject duplicates).
    """

    def __init__(self, graph: onnx.GraphProto):
        used: set[str] = set()
        for node in graph.node:
            used.add(node.name)
            used.update(node.input)
            used.update(node.output)
        used.update(vi.name for vi in [*graph.input, *graph.output, *graph.value_info])
        used.update(t.name for t in graph.initializer)
        used.discard("")
        self._used = used

    def __call__(self, preferred: str) -> str:
        name, counter = preferred, 1
        while name in self._used:
            name = f"{preferred}_{counter}"
            counter += 1
        self._used.add(name)
        return name


def constant_value(model: Model, tensor: str) -> np.ndarray:
    """The value of a tensor that depends on weights only (an initializer, a Constant output,
    or e.g. a Reshape of an initializer), computed without any data input."""
    graph = model.graph
    for init in graph.initializer:
        if init.name == tensor:
            return numpy_helper.to_array(init)
    # Collect the constant nodes that lead to ``tensor`` and evaluate just that subgraph.
    producer = {out: index for index, node in enumerate(graph.node) for out in node.output if out}
    indices: set[int] = set()
    stack = [tensor]
    while stack:
        name = stack.pop()
        index = producer.get(name)
        if index is None or index in indices:
            continue
        indices.add(index)
        stack.extend(i for i in graph.node[index].input if i)
    needed = [graph.node[index] for index in sorted(indices)]
    used_inputs = {i for node in needed for i in node.input if i}
    initializers = [t for t in graph.initializer if t.name in used_inputs]
    sub = onnx.helper.make_graph(
        needed, "constant_fold", [], [onnx.helper.make_empty_tensor_value_info(tensor)], initializers
    )
    sub_model = onnx.helper.make_model(sub, opset_imports=list(model.proto.opset_import))
    sub_model.ir_version = model.proto.ir_version if model.proto.ir_version >= 4 else 7

    try:  # the session every other onnxruntime run of the export uses (the subgraph holds no Q/DQ)
        return fake_quant_session(sub_model).run([tensor], {})[0]
    except Exception as exc:  # an op onnxruntime cannot fold: say which weight
        raise TrtqError(f"cannot compute the constant weight '{tensor}' from initializers: {first_line(exc)}") from exc


def upgrade_opset(proto: onnx.ModelProto, current: int, target: int) -> onnx.ModelProto:
    """Convert ``proto`` to opset ``target`` with onnx's version converter.

    Old IR versions (< 4) list every initializer as a graph input, which makes onnxruntime treat
    weights as overridable inputs (no constant folding of the weight Q/DQ) and is not what a
    TensorRT model means; the upgraded model gets IR 7 (the IR of opset 13) and weights only as
    initializers.
    """
    from onnx import version_converter

    try:
        upgraded = version_converter.convert_version(proto, target)
    except Exception as exc:
        raise TrtqError(
            f"cannot upgrade the model from opset {current} to opset {target} "
            f"(needed for per-channel DequantizeLinear): {first_line(exc)}"
        ) from exc
    if upgraded.ir_version < 7:
        upgraded.ir_version = 7
        weights = {t.name for t in upgraded.graph.initializer}
        data_inputs = [vi for vi in upgraded.graph.input if vi.name not in weights]
        del upgraded.graph.input[:]
        upgraded.graph.input.extend(data_inputs)
    return upgraded


def prune_unused(graph: onnx.GraphProto, removable_nodes: Iterable[str]) -> None:
    """Drop constant-only nodes whose outputs nobody reads anymore, then unread initializers.

    Only nodes named in ``removable_nodes`` (their output tensors, to be exact) may go: weight
    subgraphs that a Q/DQ export replaced by a folded initializer. Graph inputs, outputs and
    anything a subgraph reads stay.
    """
    removable = set(removable_nodes)
    keep_names = {o.name for o in graph.output} | outer_scope_names(graph)
    changed = True
    while changed:
        changed = False
        read = {name for node in graph.node for name in node.input if name} | keep_names
        for index in range(len(graph.node) - 1, -1, -1):
            node = graph.node[index]
            outputs = [o for o in node.output if o]
            if outputs and all(o in removable and o not in read for o in outputs):
                del graph.node[index]
                changed = True
    read = {name for node in graph.node for name in node.input if name} | keep_names
    listed_inputs = {vi.name for vi in graph.input}
    for index in range(len(graph.initializer) - 1, -1, -1):
        name = graph.initializer[index].name
        if name not in read and name not in listed_inputs:
            del graph.initializer[index]


def check_exported(proto: onnx.ModelProto, what: str) -> None:
    """Run the full ONNX checker on an exported model; a failure here is a trtq bug."""
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise RuntimeError(f"the {what} model trtq built fails the ONNX checker: {first_line(exc)}") from exc


def save_model(proto: onnx.ModelProto, path) -> None:
    """Write an exported model atomically (never a half-written .onnx)."""
    if proto.ByteSize() > 2**31 - 1:
        raise TrtqError(
            "the exported model is over 2 GiB; writing ONNX external data is not supported by trtq export yet"
        )
    atomic_write(path, proto.SerializeToString())


def node_label(node: onnx.NodeProto) -> str:
    """How messages name a node: its name, or its op and first output when it has none."""
    if node.name:
        return node.name
    first = next((o for o in node.output if o), "?")
    return f"{node.op_type}->{first}"


def brief_list(names: Iterable[str], limit: int = 6) -> str:
    """``a, b, c, ... (N more)``: how notes and warnings list nodes and tensors without flooding the terminal."""
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def node_key(node: onnx.NodeProto) -> str:
    """A name :func:`resolve_nodes` finds the node by again: its name, or its first output."""
    return node.name or next((o for o in node.output if o), "")


def nodes_of_types(graph: onnx.GraphProto, op_types: str | None) -> list[str]:
    """The names (or first outputs) of the nodes whose op type is in the comma-separated ``op_types``
    (``--exclude-op-types Add,MatMul``); an op type the model does not have is an error (a typo)."""
    if not op_types:
        return []
    wanted = [t.strip() for t in op_types.split(",") if t.strip()]
    present = {node.op_type for node in graph.node}
    missing = [t for t in wanted if t not in present]
    if missing:
        raise TrtqError(f"--exclude-op-types: the model has no {', '.join(missing)} node (it has "
                        f"{', '.join(sorted(present)[:12])}{', ...' if len(present) > 12 else ''})")
    return [node_key(node) for node in graph.node if node.op_type in wanted]


def resolve_nodes(graph: onnx.GraphProto, names: Iterable[str], option: str = "--exclude") -> set[int]:
    """Indices of the nodes that ``names`` designate: a node name, or the name of a node's output.

    Unknown names are an error that lists them all (a typo must not silently quantize a layer
    the user meant to keep in float).
    """
    by_name: dict[str, int] = {}
    by_output: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        if node.name:
            by_name.setdefault(node.name, index)
        for out in node.output:
            if out:
                by_output[out] = index
    found: set[int] = set()
    unknown: list[str] = []
    for name in names:
        if name in by_name:
            found.add(by_name[name])
        elif name in by_output:
            found.add(by_output[name])
        elif name not in unknown:
            unknown.append(name)
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:10])
        if len(unknown) > 10:
            shown += f" and {len(unknown) - 10} more"
        raise TrtqError(f"{option}: no node or node output of the model is named {shown}")
    return found
