"""A Q/DQ model's quantized weights stored as int8 behind DequantizeLinear: a quarter of the size on disk.

Why: the export writes each weight as its float initializer followed by QuantizeLinear and DequantizeLinear. That
is the fake-quant form every candidate of the quantize loop runs, and it keeps the float weights that a layer
switched back to float reads. The model trtq *writes* needs only the int8 values: a DequantizeLinear of an int8
initializer is what ModelOpt writes and what TensorRT builds, and 4 bytes a weight become 1.

What it computes does not change, bit for bit: the int8 values are QuantizeLinear's own, round half to even of
``weight / scale`` in float32 plus the zero point, saturated to the type's range (ONNX's definition; onnxruntime's
kernel computes exactly this), so the DequantizeLinear after them sees what it saw before
(``tests/test_export_qdq.py``). Only float32 weights with an int8 or uint8 zero point, per tensor or per channel
(no ``block_size``), are stored so; any other pair is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from trtq.export.graph import NameAllocator, prune_unused

_LIMITS = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255)}


@dataclass(frozen=True)
class Int8Weights:
    model: onnx.ModelProto
    weights: int  # weights now stored as int8
    saved_bytes: int  # the float initializers no longer stored, less the int8 ones that replace them


def quantize_values(weight: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    """QuantizeLinear of a float32 weight: ``saturate(rint(weight / scale) + zero_point)`` (per channel on ``axis``
    when ``scale`` is 1-D)."""
    if scale.ndim == 1:
        shape = [1] * weight.ndim
        shape[axis] = scale.size
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    low, high = _LIMITS[zero_point.dtype]
    values = np.rint(weight.astype(np.float32) / scale.astype(np.float32)) + zero_point.astype(np.float32)
    return np.clip(values, low, high).astype(zero_point.dtype)


def store_int8_weights(model: onnx.ModelProto) -> Int8Weights:
    """A copy of ``model`` whose QuantizeLinear -> DequantizeLinear pairs on float32 initializers read an int8 (or
    uint8) initializer instead (the module docstring); the float weights nothing else reads are dropped. A model with
    no such pair (already stored so) is returned as it is, not copied."""
    constants = {t.name for t in model.graph.initializer}
    if not any(n.op_type == "QuantizeLinear" and n.input and n.input[0] in constants for n in model.graph.node):
        return Int8Weights(model, 0, 0)
    proto = onnx.ModelProto()
    proto.CopyFrom(model)
    graph = proto.graph
    initializers = {t.name: t for t in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    removed: set[int] = set()
    replaced: dict[str, int] = {}  # the float weights the int8 ones stand for, and their bytes
    stored, after = 0, 0
    fresh = NameAllocator(graph)
    for index, node in enumerate(graph.node):
        if node.op_type != "QuantizeLinear" or len(node.input) < 3 or node.input[0] not in initializers:
            continue
        if any(a.name not in ("axis", "saturate") for a in node.attribute) or node.output[0] in outputs:
            continue
        dequantizers = readers.get(node.output[0], [])
        if len(dequantizers) != 1 or dequantizers[0].op_type != "DequantizeLinear":
            continue
        weight, scale, zero = (initializers.get(name) for name in node.input[:3])
        if weight is None or scale is None or zero is None or weight.data_type != onnx.TensorProto.FLOAT:
            continue
        zero_point = numpy_helper.to_array(zero)
        if zero_point.dtype not in _LIMITS or scale.data_type != onnx.TensorProto.FLOAT:
            continue
        value = numpy_helper.to_array(weight)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % max(value.ndim, 1)
        quantized = quantize_values(value, numpy_helper.to_array(scale), zero_point, axis)
        name = fresh(f"{node.input[0]}_int8")
        graph.initializer.append(numpy_helper.from_array(quantized, name))
        dequantizers[0].input[0] = name
        removed.add(index)
        replaced[node.input[0]] = value.nbytes
        stored += 1
        after += quantized.nbytes
    if not removed:
        return Int8Weights(proto, 0, 0)
    kept = [node for index, node in enumerate(graph.node) if index not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    prune_unused(graph, ())  # the float weights nothing reads anymore (a weight a float layer also reads stays)
    left = {t.name for t in graph.initializer}
    freed = sum(size for name, size in replaced.items() if name not in left)
    return Int8Weights(proto, stored, freed - after)
