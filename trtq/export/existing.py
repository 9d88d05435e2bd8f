"""The model's own Q/DQ pairs (QAT and Q/DQ exports): use them, or take some of them out.

* :func:`existing_qdq`: which float tensors the model quantizes itself, and the DequantizeLinear outputs
  its layers read (``export --qdq --only-unquantized`` quantizes only around them, never touching them).
* :func:`remove_qdq`: the graph with chosen pairs removed, scale-preserving: ``DQ(Q(x))`` becomes ``x``
  and a weight stored as integers becomes its dequantized float value ``(q - zero_point) * scale``.
  With every pair removed this is the model's float twin (``evaluate`` without ``--reference``;
  ``sensitivity`` removes one pair at a time; ``export --remove-qdq``).
* :func:`reference_weights`: for weights stored as integers (a DequantizeLinear alone: ModelOpt's ``dq_only``,
  onnxruntime's weights), the FP32 model's own float weight, so that removing such a pair against
  ``--reference`` restores what the quantization rounded, not the rounded value itself.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from trtq.model import Model
from trtq.qdq_model import QdqPair


def existing_qdq(model: Model) -> tuple[dict[str, str], set[str]]:
    """``({float tensor: the DequantizeLinear output that stands for it}, {every DequantizeLinear output})``."""
    pairs = model.quantization.pairs
    reused = {p.tensor: p.outputs[0] for p in pairs if p.q_node is not None}
    return reused, {o for p in pairs for o in p.outputs}


def _dequantized(pair: QdqPair, stored: np.ndarray) -> np.ndarray:
    scale = np.asarray(pair.scale, dtype=np.float32)
    zero = np.zeros_like(scale) if pair.zero_point is None else np.asarray(pair.zero_point, dtype=np.float32)
    values = stored.astype(np.float32)
    if pair.block_size is not None:  # block-wise: each scale covers block_size elements along the axis
        length = values.shape[pair.axis]
        scale = np.repeat(scale, pair.block_size, axis=pair.axis).take(range(length), axis=pair.axis)
        zero = np.repeat(zero, pair.block_size, axis=pair.axis).take(range(length), axis=pair.axis)
        return ((values - zero) * scale).astype(np.float32)
    if pair.axis is not None and scale.size > 1:
        shape = [1] * values.ndim
        shape[pair.axis] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((values - zero) * scale).astype(np.float32)


def reference_weights(model: Model, reference: onnx.ModelProto) -> dict[str, np.ndarray]:
    """``{DequantizeLinear output: the FP32 weight}`` for the stored-integer weights of ``model`` whose
    consumer (same node name and op type, same input slot) reads a constant of the same shape in ``reference``."""
    stored = {p.outputs[0]: p for p in model.quantization.pairs if p.q_node is None and p.kind == "weight"}
    if not stored:
        return {}
    theirs = {(n.name, n.op_type): n for n in reference.graph.node if n.name}
    constants = {t.name: t for t in reference.graph.initializer}
    integers = {t.name: t for t in model.proto.graph.initializer}
    found: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        twin = theirs.get((node.name, node.op_type)) if node.name else None
        for slot, name in enumerate(node.input):
            if twin is None or name not in stored or name in found or slot >= len(twin.input):
                continue
            weight = constants.get(twin.input[slot])
            if weight is not None and list(weight.dims) == list(integers[stored[name].tensor].dims):
                found[name] = numpy_helper.to_array(weight).astype(np.float32)
    return found


def _float_type(model: Model, pair: QdqPair) -> np.dtype:
    """The DequantizeLinear output's float type: its scale's (ModelOpt's FP16 models dequantize to float16)."""
    return np.float16 if pair.scale is not None and pair.scale.dtype == np.float16 else np.float32


def remove_qdq(model: Model, pairs: Iterable[QdqPair],
               float_weights: Mapping[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """A copy of the model without ``pairs`` (see the module docstring); other pairs stay as they are.
    ``float_weights`` (:func:`reference_weights`) replaces a stored integer weight by the FP32 model's."""
    proto = copy.deepcopy(model.proto)
    graph = proto.graph
    pairs = list(pairs)
    by_label = {(n.name or f"{n.op_type}->{n.output[0] if n.output else '?'}"): n for n in graph.node}
    initializers = {t.name: t for t in graph.initializer}
    drop: set[int] = set()
    replace: dict[str, str] = {}  # a DequantizeLinear output -> the tensor that stands for it now
    new_initializers: list[onnx.TensorProto] = []
    for pair in pairs:
        for label in pair.nodes:
            drop.add(id(by_label[label]))
        if pair.q_node is None:  # a stored integer weight: its float value under the DQ output's name
            original = (float_weights or {}).get(pair.outputs[0])
            if original is None:
                original = _dequantized(pair, numpy_helper.to_array(initializers[pair.tensor]))
            new_initializers.append(numpy_helper.from_array(original.astype(_float_type(model, pair)),
                                                            pair.outputs[0]))
        else:
            replace.update({out: pair.tensor for out in pair.outputs})

    def resolve(name: str) -> str:
        while name in replace:
            name = replace[name]
        return name

    kept = [n for n in graph.node if id(n) not in drop]
    graph_outputs = {o.name for o in graph.output}
    graph_inputs = {i.name for i in graph.input} | set(initializers)
    identities: list[onnx.NodeProto] = []
    rename: dict[str, str] = {}  # a graph output that was a DQ output: the float tensor takes its name back
    for out in graph_outputs:
        source = resolve(out)
        if source == out:
            continue
        if source in graph_inputs or source in graph_outputs or source in rename:
            identities.append(onnx.helper.make_node("Identity", [source], [out], name=f"{out}_identity"))
        else:
            rename[source] = out
    for node in kept:
        for i, name in enumerate(node.input):
            if name:
                target = resolve(name)
                node.input[i] = rename.get(target, target)
        for i, name in enumerate(node.output):
            if name in rename:
                node.output[i] = rename[name]
    del graph.node[:]
    graph.node.extend(kept + identities)
    graph.initializer.extend(new_initializers)
    read = {i for n in graph.node for i in n.input} | graph_outputs
    listed = {i.name for i in graph.input}
    for index in range(len(graph.initializer) - 1, -1, -1):
        if graph.initializer[index].name not in read and graph.initializer[index].name not in listed:
            del graph.initializer[index]
    present = {o for n in graph.node for o in n.output} | read
    infos = [vi for vi in graph.value_info if vi.name in present and vi.name not in rename]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return proto


def float_twin(model: Model) -> onnx.ModelProto:
    """The model with every Q/DQ pair removed: what its quantization is measured against without a reference."""
    return remove_qdq(model, model.quantization.pairs)


def check_only_unquantized(model: Model, only_unquantized: bool) -> None:
    """``export --qdq`` refuses an already-quantized model unless ``--only-unquantized`` says what to do."""
    from trtq.errors import TrtqError
    from trtq.qdq_model import refuse_quantized

    if only_unquantized and not model.quantization.explicit:
        raise TrtqError(f"--only-unquantized: {model.name} has no Q/DQ of its own; export it without that option")
    if not only_unquantized:
        refuse_quantized(model, "more Q/DQ would quantize its tensors twice",
                         "--only-unquantized adds Q/DQ only to the layers it left in float, or --remove-qdq "
                         "takes pairs out")


@dataclass
class Removed:
    """What ``export --remove-qdq`` did: pairs removed and kept; removed integer-stored weights restored
    from the reference's FP32 weights, and those left at their dequantized values."""

    removed: int
    kept: int
    restored: int
    unrestored: list[str]

    def unrestored_message(self, reference_path) -> str:
        shown = ", ".join(self.unrestored[:3]) + (", ..." if len(self.unrestored) > 3 else "")
        if reference_path:
            return (f"{len(self.unrestored)} removed weights stored as integers have no same-named consumer in "
                    f"{reference_path} and keep their dequantized values: {shown}")
        return (f"{len(self.unrestored)} removed weights were stored as integers (DequantizeLinear only) and keep "
                f"their dequantized (rounded) values: {shown}; --reference FP32.onnx restores their FP32 values")


def export_removed(model: Model, names: list[str], output, reference: Model | None = None) -> Removed:
    """``export --remove-qdq``: the model without the named pairs, written to ``output``."""
    from trtq.errors import TrtqError
    from trtq.export.graph import check_exported, save_model

    if not model.quantization.explicit:
        raise TrtqError(f"--remove-qdq: {model.name} has no Q/DQ pairs")
    if reference is not None and reference.quantization.explicit:
        raise TrtqError(f"--reference {reference.name} is quantized too; give the FP32 model the Q/DQ model came from")
    pairs = model.quantization.find(names)
    weights = reference_weights(model, reference.proto) if reference is not None else {}
    proto = remove_qdq(model, pairs, weights)
    check_exported(proto, "Q/DQ-removed")
    save_model(proto, output)
    stored = [p for p in pairs if p.q_node is None and p.kind == "weight"]
    restored = [p for p in stored if p.outputs[0] in weights]
    return Removed(len(pairs), len(model.quantization.pairs) - len(pairs), len(restored),
                   [p.name for p in stored if p.outputs[0] not in weights])
