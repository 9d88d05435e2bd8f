"""One Q/DQ session for every range candidate and cross-fitting fold: the activation scales fed at run time.

Why: the quantize loop judges each range method (five in ``auto``) on each fold (four): twenty Q/DQ models that
differ only in their activation scales. On a ViT-S each one cost 2.3 s to export and load (the ONNX checker 0.75 s,
the session 1.3 s) and held its own copy of the weights. Here the Q/DQ model is exported once with each
activation's scale a graph input instead of an initializer, and a candidate is the feed of its scales.

It computes what the written model computes, bit for bit: the scales fed are the values the export writes
(:func:`trtq.export.qdq.activation_scale`), and onnxruntime cannot fold an activation's QuantizeLinear whatever its
scale. One model serves ranges only when they quantize the same tensors: where a range is usable (finite, above
zero) decides the export's plan, nothing else about its value does (:meth:`ScaledModel.fits`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from trtq.export import QdqExport
from trtq.export.qdq import activation_scale


@dataclass(frozen=True)
class ScaledModel:
    """A Q/DQ model whose activation scales are graph inputs."""

    proto: onnx.ModelProto
    scale_inputs: Mapping[str, tuple[str, np.dtype]]  # activation tensor -> (its scale's graph input, the type)
    unquantized: frozenset[str]  # tensors the export left in float for want of a usable range

    def fits(self, amax: Mapping[str, float]) -> bool:
        """Whether ``amax`` quantizes exactly the tensors this model quantizes (then only the scales differ)."""
        return (all(_usable(amax.get(t)) for t in self.scale_inputs)
                and not any(_usable(amax.get(t)) for t in self.unquantized))

    def feed(self, amax: Mapping[str, float]) -> dict[str, np.ndarray]:
        """The scale inputs for ``amax`` (which :meth:`fits`)."""
        return {name: activation_scale(amax[tensor], dtype) for tensor, (name, dtype) in self.scale_inputs.items()}


def _usable(value: float | None) -> bool:
    return value is not None and bool(np.isfinite(value)) and value > 0


def scale_fed(export: QdqExport, fold_ranges: Sequence[Mapping[str, float]]) -> ScaledModel | None:
    """:func:`scales_as_inputs` of ``export`` when it serves every fold's ranges (:meth:`ScaledModel.fits`), else
    None: then each fold needs its own exported model."""
    scaled = scales_as_inputs(export)
    return scaled if scaled is not None and all(scaled.fits(amax) for amax in fold_ranges) else None


def scales_as_inputs(export: QdqExport) -> ScaledModel | None:
    """``export``'s model with every activation Q/DQ pair's scale read from a graph input of the same name; None
    when an activation's scale is not the initializer of its own pair (then the model is used as exported)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(export.model)
    graph = proto.graph
    activations = set(export.activation_tensors)
    initializers = {t.name: index for index, t in enumerate(graph.initializer)}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    scales: dict[str, tuple[str, np.dtype]] = {}
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in activations:
            continue
        name = node.input[1]
        if name not in initializers or readers.get(name) != 2 or node.input[0] in scales:  # its Q and its DQ
            return None
        scales[node.input[0]] = (name, numpy_helper.to_array(graph.initializer[initializers[name]]).dtype)
    if set(scales) != activations:
        return None
    for index in sorted((initializers[name] for name, _dtype in scales.values()), reverse=True):
        tensor = graph.initializer[index]
        graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, []))
        del graph.initializer[index]
    unquantized = frozenset(export.plan.unusable_ranges) | frozenset(export.plan.missing_ranges)
    return ScaledModel(proto, scales, unquantized)
