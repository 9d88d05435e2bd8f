"""TensorRT 10.x only: precision builder flags, the INT8 calibrator slot, the calibration profile and
per-layer precision constraints (``--keep-precision``). All of these were removed in TensorRT 11;
:func:`trtq.trt.plan.plan_build` never sends an 11.x build here, and the conformance tests check
that every ``trt.*`` name used below exists in the 10.16 bindings.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType

from trtq.errors import TrtqError
from trtq.shapes import Shape
from trtq.trt.explicit import name_matches


def set_precision_flags(trt: ModuleType, config, *, fp16: bool, int8: bool) -> None:
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)


def attach_calibrator(trt: ModuleType, builder, config, calibrator, calibration_shapes: Mapping[str, Shape]) -> None:
    """Hand the calibrator to TensorRT; with dynamic inputs, calibrate at the opt shapes
    (TensorRT overwrites a calibration profile's min and max with its opt)."""
    config.int8_calibrator = calibrator
    if calibration_shapes:
        profile = builder.create_optimization_profile()
        for name, shape in calibration_shapes.items():
            profile.set_shape(name, shape, shape, shape)
        if not config.set_calibration_profile(profile):
            raise TrtqError("TensorRT rejected the calibration profile built from the opt shapes")


def _data_type(trt: ModuleType, precision: str):
    return trt.DataType.HALF if precision == "fp16" else trt.DataType.FLOAT


def apply_keep_precision(trt: ModuleType, network, config, rules: Mapping[str, str],
                         constraint: str = "prefer") -> dict:
    """Pin layers to FP16/FP32. A rule's key is a layer name (TensorRT names layers after ONNX nodes)
    or a tensor name (the layer producing it); ``*`` and ``?`` wildcards are allowed. Only float
    outputs are constrained: shape and index tensors keep their types.

    Returns ``{rule key: [layer names]}`` for the manifest; a rule that matches nothing is an error,
    because a silently ignored precision rule is how accuracy bugs ship.
    """
    if not rules:
        return {}
    floats = {trt.DataType.FLOAT, trt.DataType.HALF}
    matched: dict[str, list[str]] = {key: [] for key in rules}
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        outputs = [layer.get_output(i) for i in range(layer.num_outputs)]
        for key, precision in rules.items():
            if not name_matches(key, layer.name, [tensor.name for tensor in outputs]):
                continue
            float_outputs = [i for i, tensor in enumerate(outputs) if tensor.dtype in floats]
            if not float_outputs:
                continue
            data_type = _data_type(trt, precision)
            layer.precision = data_type
            for i in float_outputs:
                layer.set_output_type(i, data_type)
            matched[key].append(layer.name)
    unmatched = [key for key, layers in matched.items() if not layers]
    if unmatched:
        raise TrtqError(
            f"--keep-precision: no layer or float tensor named {', '.join(repr(k) for k in unmatched)} in the "
            "network TensorRT parsed (use ONNX node or tensor names; wildcards * and ? work)"
        )
    if constraint == "obey":
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    else:
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    return matched
