"""TensorRT 10.x, trtq's ranges served as a cache: ranges for the tensors TensorRT's ONNX parser invents.

A trtq cache is keyed by ONNX tensor names. TensorRT's parser also inserts tensors of its own whose
names depend on its version (``<initializer>_output`` for the constant layer of an initializer,
``ONNXTRT_Broadcast_*_output`` for the reshape that broadcasts it, ...), so no cache can name them in
advance; without a range TensorRT keeps their layers out of INT8 ("Missing scale and zero-point").
:func:`set_network_ranges` walks the parsed network's layers in order and matches each float tensor
to its ONNX source:

* in the cache (an ONNX name): left to the calibrator, which serves it (counted as ``cache``);
* the output of a constant layer (an initializer or a constant of the parser's): max|w| of the
  layer's weights (``weights``);
* the output of a layer that only moves values of its first input (shuffle, identity, cast, slice,
  squeeze, unsqueeze: reshapes and broadcasts), when that input has a range: the same range (``walk``);
* anything else keeps no range (``none``), as does a tensor whose range would be 0.

Ranges are set with ``ITensor.dynamic_range = (-amax, amax)`` (deprecated since 10.1 with all of
implicit quantization, present in 10.16; the conformance tests check every name used here against
the real 10.16 bindings). Only tensors the cache does not name are touched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from trtq.cache import scale_is_zero


@dataclass
class NetworkRanges:
    """How many float tensors of the network got a range, and from where."""

    cache: int = 0
    weights: int = 0
    walk: int = 0
    none: int = 0
    without: list[str] = field(default_factory=list)  # names of the tensors left without a range
    set_by_walk: dict[str, float] = field(default_factory=dict)  # tensor -> amax set through the API

    def as_dict(self) -> dict:
        return {"cache": self.cache, "weights": self.weights, "walk": self.walk, "none": self.none,
                "without": self.without[:20]}

    def describe(self) -> str:
        shown = ", ".join(self.without[:5]) + (", ..." if len(self.without) > 5 else "")
        return (f"network ranges: {self.cache} tensors from the cache, {self.weights} from weights, {self.walk} "
                f"from the walk, {self.none} without a range" + (f" ({shown})" if self.without else ""))


def _float_types(trt: ModuleType) -> tuple:
    return (trt.DataType.FLOAT, trt.DataType.HALF, trt.DataType.BF16)


def _moving_types(trt: ModuleType) -> tuple:
    return (trt.LayerType.SHUFFLE, trt.LayerType.IDENTITY, trt.LayerType.CAST, trt.LayerType.SLICE,
            trt.LayerType.SQUEEZE, trt.LayerType.UNSQUEEZE)


def constant_amax(trt: ModuleType, layer) -> float | None:
    """max|w| of a constant layer's weights (None when they cannot be read as numbers)."""
    constant = layer
    if not hasattr(constant, "weights"):  # get_layer returns the base class: view it as the constant layer
        constant.__class__ = trt.IConstantLayer
    try:
        values = np.asarray(constant.weights.numpy(), dtype=np.float64)
    except Exception:  # bfloat16 and other types numpy cannot hold
        return None
    finite = values[np.isfinite(values)]
    if values.size and finite.size < values.size:
        return None
    return float(np.max(np.abs(finite))) if finite.size else 0.0


def set_network_ranges(trt: ModuleType, network, amax: Mapping[str, float],
                       echo: Callable[[str], None] | None = None) -> NetworkRanges:
    """Set the range of every float tensor of ``network`` that the cache (``amax``, by name) does not
    cover and whose ONNX source is found (see the module docstring); report the counts through ``echo``."""
    floats, moving = _float_types(trt), _moving_types(trt)
    served = {name: value for name, value in amax.items() if math.isfinite(value) and _positive_scale(value)}
    known: dict[str, float] = dict(served)
    report = NetworkRanges()

    def place(tensor, value: float | None, kind: str) -> None:
        name = tensor.name
        if name in served:
            report.cache += 1
        elif value is not None and _positive_scale(value):
            tensor.dynamic_range = (-value, value)
            known[name] = value
            report.set_by_walk[name] = value
            setattr(report, kind, getattr(report, kind) + 1)
        elif tensor.dynamic_range is not None:  # set before trtq looked: TensorRT keeps it
            low, high = tensor.dynamic_range
            known[name] = max(abs(low), abs(high))
        else:
            report.none += 1
            report.without.append(name)

    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        if tensor.dtype in floats:
            place(tensor, None, "walk")
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        value, kind = None, "walk"
        if layer.type == trt.LayerType.CONSTANT:
            value, kind = constant_amax(trt, layer), "weights"
        elif layer.type in moving and layer.num_inputs:
            source = layer.get_input(0)
            value = known.get(source.name) if source is not None else None
        for slot in range(layer.num_outputs):
            tensor = layer.get_output(slot)
            if tensor is None or tensor.dtype not in floats:
                continue  # integer and bool tensors never get a range
            place(tensor, value if slot == 0 else None, kind)
    if echo is not None:
        echo(f"trtq: {report.describe()}")
    return report


def _positive_scale(amax: float) -> bool:
    """A range TensorRT can use: its float32 scale (amax/127) is not 0."""
    return amax > 0 and not scale_is_zero(amax)
