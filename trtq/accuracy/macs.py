"""Multiply-accumulates per layer, from ONNX shape inference: what share of the model's arithmetic a
keep-in-float set takes out of INT8 (the speed a keep set costs, before any engine is built).

Counted for the ops that carry nearly all the arithmetic and that TensorRT runs in INT8: Conv and
ConvTranspose (output elements x input channels per group x kernel size), Gemm and MatMul
(output elements x the reduced dimension). Shapes come from the evaluation batch's input shapes; where
shape inference cannot tell them (a ViT's Reshapes computed from Shape/Gather/Concat chains left every MatMul
unsized, and its INT8 share read 0 %), one onnxruntime run of the batch gives them; a layer whose shapes neither
can tell counts 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import shape_inference

MAC_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def _shapes(proto: onnx.ModelProto, feed: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    for value in model.graph.input:
        if value.name in feed and value.type.HasField("tensor_type"):
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, np.shape(feed[value.name]), strict=False):
                dim.Clear()
                dim.dim_value = int(size)
    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # shape inference is best effort here: unknown shapes count 0 MACs
        return {}
    shapes = {}
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    for value in values:
        if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        if all(d is not None for d in dims):
            shapes[value.name] = tuple(int(d) for d in dims)
    for init in inferred.graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    return shapes


def _run_shapes(proto: onnx.ModelProto, feed: Mapping[str, np.ndarray], names: list[str]) -> dict[str, tuple]:
    """The shapes of ``names`` in one onnxruntime run of ``feed`` (best effort: {} when it cannot run)."""
    from trtq.capture import with_extra_outputs
    from trtq.export.compare import fake_quant_session

    inputs = {value.name for value in proto.graph.input}
    stored = {t.name for t in proto.graph.initializer}
    wanted = [n for n in dict.fromkeys(names) if n not in inputs and n not in stored]
    try:
        session = fake_quant_session(with_extra_outputs(proto, wanted), arena=False)
        values = session.run(wanted, {k: v for k, v in feed.items() if k in inputs})
    except Exception:  # an unsized layer counts 0, as documented
        return {}
    shapes = {name: tuple(int(d) for d in np.shape(v)) for name, v in zip(wanted, values, strict=True)}
    shapes.update({k: tuple(int(d) for d in np.shape(v)) for k, v in feed.items() if k in inputs})
    shapes.update({t.name: tuple(int(d) for d in t.dims) for t in proto.graph.initializer})
    return shapes


def layer_macs(proto: onnx.ModelProto, feed: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Node name (or first output when unnamed) -> MACs of one batch, for the MAC-carrying ops."""
    shapes = _shapes(proto, feed)
    unsized = [name for node in proto.graph.node if node.op_type in MAC_OPS
               for name in [node.output[0], *node.input[:2]] if name and name not in shapes]
    if unsized:
        shapes.update(_run_shapes(proto, feed, unsized))
    macs: dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type not in MAC_OPS:
            continue
        key = node.name or next((o for o in node.output if o), "")
        out = shapes.get(node.output[0]) if node.output else None
        weight = shapes.get(node.input[1]) if len(node.input) > 1 else None
        a = shapes.get(node.input[0])
        count = 0
        if out is not None and weight is not None:
            if node.op_type == "Conv":
                count = math.prod(out) * math.prod(weight[1:])
            elif node.op_type == "ConvTranspose" and a is not None:
                count = math.prod(a) * math.prod(weight[1:])
            elif node.op_type == "Gemm" and a is not None:
                trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
                count = math.prod(out) * (a[0] if trans_a else a[-1])
            elif node.op_type == "MatMul" and a is not None:
                count = math.prod(out) * a[-1]
        macs[key] = int(count)
    return macs


def int8_mac_share(macs: Mapping[str, int], quantized: list[str], kept: list[str]) -> float | None:
    """Share of the quantized layers' MACs still in INT8 with ``kept`` in float (None when unknown)."""
    total = sum(macs.get(n, 0) for n in quantized)
    if total <= 0:
        return None
    kept_set = set(kept)
    return sum(macs.get(n, 0) for n in quantized if n not in kept_set) / total
