"""One ONNX model in which every quantized layer can be switched between INT8 and float at run time.

Starting from the Q/DQ export, each input of a quantized layer that reads a DequantizeLinear output
is replaced by ``Where(switch, dequantized, original)``, where ``switch`` is a boolean scalar graph
input, one per layer (all its quantized inputs, activations and weights, switch together, as
TensorRT runs a layer in INT8 or not as a whole). One onnxruntime session then serves every
configuration -- all float (the FP32 reference), all INT8 (the export itself), one layer alone,
all but one -- so a sensitivity analysis costs forward passes, not model builds.

Values are unchanged by the switches: ``Where`` copies one of its inputs, so "all on" computes the
exported Q/DQ model and "all off" the float model (after the export's opset upgrade, if any).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtq.export import QdqExport
from trtq.export.graph import NameAllocator

_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class Layer:
    """A quantized ONNX node: what ``--exclude`` / ``--keep-precision`` name, and what it reads in INT8."""

    node: str  # the node's name, or its first output's name when it has none (both are accepted by --exclude)
    op_type: str
    tensors: tuple[str, ...]  # activation tensors it reads through Q/DQ
    weights: tuple[str, ...]  # constant inputs it reads through Q/DQ
    switch: str  # the boolean graph input that turns its INT8 inputs on


@dataclass
class SwitchableModel:
    proto: onnx.ModelProto
    layers: list[Layer]

    def switches(self, int8: Iterable[str]) -> dict[str, np.ndarray]:
        """The switch feed with the layers named in ``int8`` (node names) quantized, the rest float."""
        chosen = set(int8)
        unknown = chosen - {layer.node for layer in self.layers}
        if unknown:
            raise ValueError(f"not quantized layers: {sorted(unknown)}")
        return {layer.switch: np.array(layer.node in chosen) for layer in self.layers}

    @property
    def nodes(self) -> list[str]:
        return [layer.node for layer in self.layers]


def build_switchable(original: onnx.ModelProto, export: QdqExport,
                     float_values: Mapping[str, Sequence[tuple[str, np.ndarray]]] | None = None) -> SwitchableModel:
    """Make the switchable model from ``export`` (a Q/DQ export of ``original``). ``float_values``: per layer,
    tensors it reads whose value differs in float (a bias corrected for the INT8 error, :mod:`.bias`) with
    that value; the layer's switch selects between the two as it does for its quantized inputs."""
    proto = onnx.ModelProto()
    proto.CopyFrom(export.model)
    graph = proto.graph
    existing = {n.name for n in original.graph.node if n.name}
    added = [n for n in graph.node if n.op_type in _QDQ_OPS and n.name not in existing]
    quantize_input = {n.output[0]: n.input[0] for n in added if n.op_type == "QuantizeLinear"}
    float_source = {n.output[0]: quantize_input[n.input[0]] for n in added
                    if n.op_type == "DequantizeLinear" and n.input[0] in quantize_input}
    initializers = {t.name for t in graph.initializer}
    fresh = NameAllocator(graph)

    layers: list[Layer] = []
    wheres: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    for index, node in enumerate(graph.node):
        if node.op_type in _QDQ_OPS and node.name not in existing:
            continue
        slots = [s for s, name in enumerate(node.input) if name in float_source]
        if not slots:
            continue
        node_id = node.name or next(o for o in node.output if o)
        switch = fresh(f"trtq_int8_{node_id}")
        graph.input.append(helper.make_tensor_value_info(switch, TensorProto.BOOL, []))
        tensors, weights = [], []
        for slot in slots:
            dequantized = node.input[slot]
            source = float_source[dequantized]
            (weights if source in initializers else tensors).append(source)
            selected = fresh(f"{dequantized}_switched")
            wheres[index].append(helper.make_node("Where", [switch, dequantized, source], [selected],
                                                  name=fresh(f"{dequantized}_Where")))
            node.input[slot] = selected
        layers.append(Layer(node_id, node.op_type, tuple(dict.fromkeys(tensors)), tuple(dict.fromkeys(weights)),
                            switch))

    _switch_values(graph, layers, float_values or {}, wheres, fresh)
    nodes = []
    for index, node in enumerate(graph.node):
        nodes.extend(wheres.get(index, []))
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)  # not run through onnx's checker: only onnxruntime reads it, which validates it
    return SwitchableModel(proto, layers)


def _switch_values(graph: onnx.GraphProto, layers: list[Layer],
                   float_values: Mapping[str, Sequence[tuple[str, np.ndarray]]],
                   wheres: dict[int, list[onnx.NodeProto]], fresh: NameAllocator) -> None:
    """Each listed tensor read as ``Where(switch, tensor, float value)`` by its readers."""
    switches = {layer.node: layer.switch for layer in layers}
    for layer_id, values in float_values.items():
        switch = switches.get(layer_id)
        if switch is None:
            continue
        for tensor, value in values:
            readers = [i for i, node in enumerate(graph.node) if tensor in node.input]
            if not readers:
                continue
            float_name = fresh(f"{tensor}_float")
            graph.initializer.append(numpy_helper.from_array(np.asarray(value), float_name))
            selected = fresh(f"{tensor}_switched")
            wheres[readers[0]].append(helper.make_node("Where", [switch, tensor, float_name], [selected],
                                                       name=fresh(f"{tensor}_Where")))
            for index in readers:
                node = graph.node[index]
                for slot, name in enumerate(node.input):
                    if name == tensor:
                        node.input[slot] = selected
