"""An already-quantized (Q/DQ, QAT) model builds as it is: explicit quantization with the model's own scales.

TensorRT sees the QuantizeLinear/DequantizeLinear nodes and runs those layers in INT8 with their scales;
a calibrator would be ignored, so none is made and no ranges are read or computed:

* TensorRT 11.x: strongly typed (always), no calibrator, no precision flag; the model is parsed unchanged.
* TensorRT 10.x: the INT8 builder flag (TensorRT needs it to pick INT8 kernels for the Q/DQ layers) and
  no calibrator; ``--fp16`` adds the FP16 flag for the layers the model left in float.

The plan's path, also ENGINE.json's ``path.kind``, is ``explicit (model's own Q/DQ)``. This module
calls no TensorRT API itself: the flags go through :func:`trtq.trt.implicit.set_precision_flags`, whose
names the conformance tests check on the 10.16 bindings.
"""

from __future__ import annotations

from dataclasses import dataclass

from trtq.errors import TrtqError
from trtq.trt import TensorRTInfo
from trtq.trt.plan import BuildPlan

EXPLICIT_QDQ = "explicit (model's own Q/DQ)"


@dataclass(frozen=True)
class ExplicitQdqPlan(BuildPlan):
    """A :class:`BuildPlan` whose model is parsed as it is (no derived Q/DQ or FP16 copy)."""

    @property
    def onnx_variant(self) -> str:
        return "original"


def plan_prequantized(info: TensorRTInfo, quantization, model_name: str, options) -> ExplicitQdqPlan:
    """The plan for a model with Q/DQ of its own; calibration options are an error (they would be ignored).

    ``quantization`` is the model's :class:`trtq.qdq_model.Quantization`, ``options`` the
    :class:`trtq.trt.build.BuildOptions`."""
    given = [flag for flag, value in (("--cache", options.cache_path), ("--ranges", options.ranges_path),
                                      ("--calibration-source", options.calibration_source)) if value]
    if given:
        raise TrtqError(f"{model_name} is already quantized ({len(quantization.pairs)} Q/DQ pairs): TensorRT builds "
                        f"it with the model's own scales, so {', '.join(given)} would be ignored; leave "
                        f"{'them' if len(given) > 1 else 'it'} out")
    if options.keep_precision:
        raise TrtqError(f"--keep-precision: {model_name} is already quantized and TensorRT follows its Q/DQ; to keep a "
                        "layer in float, remove its pair (trtq sensitivity writes the list; trtq export "
                        "--remove-qdq @FILE)")
    version = info.short_version
    what = f"{EXPLICIT_QDQ}: {quantization.describe()}"
    if info.implicit_quantization:
        message = (f"TensorRT {version}: {what}; INT8 builder flag set for the Q/DQ layers, no calibrator "
                   "(TensorRT uses the model's scales)")
        if options.fp16:
            message += "; FP16 flag set for the layers the model left in float"
        return ExplicitQdqPlan(EXPLICIT_QDQ, info.version, options.fp16, True, None, None, message)
    if options.fp16:
        raise TrtqError(f"TensorRT {version} builds {model_name} strongly typed, as it is: the layers it left in "
                        "float run in its own float type; --fp16/--best would need an FP16 copy of a Q/DQ model, "
                        "which trtq does not make (leave --fp16 out)")
    message = f"TensorRT {version}: {what}; strongly typed, no calibrator, parsed as it is"
    return ExplicitQdqPlan(EXPLICIT_QDQ, info.version, False, True, None, None, message)


def configure_explicit(trt, info: TensorRTInfo, plan: BuildPlan, config) -> None:
    """10.x: the INT8 flag (and FP16 when asked), no calibrator; 11.x: nothing to set."""
    if info.implicit_quantization:
        from trtq.trt import implicit

        implicit.set_precision_flags(trt, config, fp16=plan.fp16, int8=True)
