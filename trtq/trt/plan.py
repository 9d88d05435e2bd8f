"""The one place that decides how an engine gets its precisions, and says why.

TensorRT 10.x quantizes *implicitly*: builder flags FP16/INT8 plus a calibrator object that TensorRT
calls back during the build. TensorRT 11.x removed all of that and builds every network strongly
typed: INT8 must be spelled out as Q/DQ nodes in the ONNX model and FP16 as FP16 tensors. trtq picks
the path from what the installed TensorRT offers (:class:`trtq.trt.TensorRTInfo`), not from the
version number, and every plan carries the sentence that tells the user what ran and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from trtq.errors import TrtqError
from trtq.range_methods import AUTO, TRTQ_ONLY
from trtq.trt import CALIBRATOR_CLASSES, TensorRTInfo

IMPLICIT = "implicit-quantization"  # TensorRT 10.x: flags + calibrator / served cache
STRONGLY_TYPED = "strongly-typed"  # TensorRT 11.x: precision lives in the ONNX model

TRT_CALIBRATORS = tuple(CALIBRATOR_CLASSES)  # entropy2, entropy, minmax, legacy
TRTQ_ONLY_CALIBRATORS = TRTQ_ONLY  # no TensorRT class: always computed by trtq (percentile, mse)
ALL_CALIBRATORS = TRT_CALIBRATORS + TRTQ_ONLY_CALIBRATORS
QUANTIZE = AUTO  # `trtq quantize`: auto ranges + keep-in-float search, verified on the CPU
BUILD_CALIBRATORS = (QUANTIZE, *ALL_CALIBRATORS)
SOURCES = ("tensorrt", "trtq")
QUANTIZE_PENDING = "auto ranges + keep-in-float search"  # in a plan's message until quantize has run


def quantize_label(kept: int | None) -> str:
    """How messages and ENGINE.json name the quantize path: ``trtq quantize (auto ranges + 2 layers kept)``."""
    if kept is None:
        return f"trtq quantize ({QUANTIZE_PENDING})"
    return f"trtq quantize (auto ranges + {kept} layer{'' if kept == 1 else 's'} kept)"


@dataclass(frozen=True)
class BuildPlan:
    """What the build will do. ``source`` says who computes INT8 ranges: TensorRT's calibrator
    fed with batches (``tensorrt``) or trtq's CPU calibration core (``trtq``)."""

    path: str
    trt_version: str
    fp16: bool
    int8: bool
    calibrator: str | None
    source: str | None
    message: str
    notes: tuple[str, ...] = field(default=())

    @property
    def quantize(self) -> bool:
        """INT8 from `trtq quantize` (ranges and the layers kept in float decided and verified on the CPU)."""
        return self.int8 and self.calibrator == QUANTIZE

    def quantized(self, kept: int) -> BuildPlan:
        """This plan once quantize has kept ``kept`` layers in float: the message says how many."""
        return replace(self, message=self.message.replace(quantize_label(None), quantize_label(kept)))

    @property
    def precisions(self) -> list[str]:
        return ["fp32"] + (["fp16"] if self.fp16 else []) + (["int8"] if self.int8 else [])

    @property
    def onnx_variant(self) -> str:
        """Which ONNX model TensorRT parses: the user's, or one trtq derives for strong typing."""
        if self.path == IMPLICIT:
            return "original"
        if self.int8 and self.fp16:
            return "qdq+fp16"
        if self.int8:
            return "qdq"
        if self.fp16:
            return "fp16"
        return "original"

    def as_dict(self) -> dict:
        return {
            "kind": self.path, "reason": self.message, "notes": list(self.notes),
            "precisions": self.precisions, "calibrator": self.calibrator, "calibration_source": self.source,
            "onnx_variant": self.onnx_variant,
        }


def plan_build(info: TensorRTInfo, *, fp16: bool = False, int8: bool = False, calibrator: str = "entropy2",
               source: str | None = None, keep_precision: bool = False) -> BuildPlan:
    """Decide the path for the requested precisions on this TensorRT; raise what cannot work."""
    if calibrator not in BUILD_CALIBRATORS:
        raise TrtqError(f"unknown calibrator '{calibrator}' (choose from {', '.join(BUILD_CALIBRATORS)})")
    if source is not None and source not in SOURCES:
        raise TrtqError(f"unknown calibration source '{source}' (choose from {', '.join(SOURCES)})")
    version = info.short_version
    if info.implicit_quantization:
        return _plan_implicit(info, version, fp16, int8, calibrator, source)
    return _plan_strongly_typed(info, version, fp16, int8, calibrator, source, keep_precision)


def _plan_implicit(info: TensorRTInfo, version: str, fp16: bool, int8: bool, calibrator: str,
                   source: str | None) -> BuildPlan:
    if fp16 and not info.fp16_flag:
        raise TrtqError(f"TensorRT {version} has no FP16 builder flag")
    if not int8:
        what = "FP16 enabled with the FP16 builder flag" if fp16 else "FP32 (no --int8/--fp16/--best given)"
        return BuildPlan(IMPLICIT, info.version, fp16, False, None, None, f"TensorRT {version}: {what}")
    if calibrator == QUANTIZE:
        if source == "tensorrt":
            raise TrtqError("trtq quantize (--calibrator auto, the default) computes the ranges on the CPU; "
                            "for TensorRT's own calibrator give --calibrator entropy2 (or entropy, minmax, legacy)")
        message = (
            f"TensorRT {version}: INT8 by implicit quantization; {quantize_label(None)} on the CPU, its ranges "
            "served to TensorRT as an EntropyCalibration2 cache and its kept layers as precision constraints "
            "(the default INT8 path; no batches go through TensorRT)"
        )
        if fp16:
            message += "; FP16 enabled for the kept layers and those INT8 does not cover"
        return BuildPlan(IMPLICIT, info.version, fp16, True, calibrator, "trtq", message)
    if calibrator in TRTQ_ONLY_CALIBRATORS:
        if source == "tensorrt":
            raise TrtqError(
                f"TensorRT has no {calibrator} calibrator; {calibrator} ranges come from trtq "
                "(use --calibration-source trtq, the default for this calibrator)"
            )
        source = "trtq"
    source = source or "tensorrt"
    if source == "trtq" and calibrator == "legacy":
        raise TrtqError("legacy ranges come only from TensorRT's IInt8LegacyCalibrator; "
                        "use --calibration-source tensorrt (the default) or another calibrator")
    if source == "tensorrt":
        if calibrator not in info.calibrators:
            raise TrtqError(f"TensorRT {version} has no {CALIBRATOR_CLASSES[calibrator]}")
        message = (
            f"TensorRT {version}: INT8 by implicit quantization; TensorRT's {CALIBRATOR_CLASSES[calibrator]} "
            "calibrates on the data batches"
        )
    else:
        message = (
            f"TensorRT {version}: INT8 by implicit quantization; serving trtq's {calibrator} ranges to TensorRT "
            "as an EntropyCalibration2 cache (no batches go through TensorRT)"
        )
    if fp16:
        message += "; FP16 enabled for layers INT8 does not cover"
    return BuildPlan(IMPLICIT, info.version, fp16, True, calibrator, source, message)


def _plan_strongly_typed(info: TensorRTInfo, version: str, fp16: bool, int8: bool, calibrator: str,
                         source: str | None, keep_precision: bool) -> BuildPlan:
    notes = []
    if keep_precision:
        notes.append(
            f"TensorRT {version} has no per-layer precision constraints; --keep-precision NAME=fp32 keeps "
            "those nodes out of the Q/DQ and FP16 conversion instead"
        )
    if not int8:
        if fp16:
            message = (
                f"TensorRT {version}: no FP16 builder flag (always strongly typed); building an FP16 copy "
                "of the model"
            )
        else:
            message = f"TensorRT {version}: FP32 (strongly typed; no --int8/--fp16/--best given)"
        return BuildPlan(STRONGLY_TYPED, info.version, fp16, False, None, None, message, tuple(notes))
    if source == "tensorrt":
        raise TrtqError(
            f"TensorRT {version} has no built-in calibrators (removed in TensorRT 11); "
            "use --calibration-source trtq (the default there): trtq computes the ranges and writes Q/DQ"
        )
    if calibrator == "legacy":
        raise TrtqError(
            f"the legacy calibrator exists only in TensorRT 10 and earlier, and TensorRT {version} has none; "
            "choose entropy2, entropy, minmax, percentile or mse"
        )
    if calibrator == QUANTIZE:
        message = (f"TensorRT {version}: no built-in calibrators; building the Q/DQ model of {quantize_label(None)}, "
                   "verified on the CPU, with its kept layers left in float (the default INT8 path)")
    else:
        message = f"TensorRT {version}: no built-in calibrators; using trtq's {calibrator} ranges as explicit Q/DQ"
    if fp16:
        message += " on an FP16 copy of the model"
    return BuildPlan(STRONGLY_TYPED, info.version, fp16, True, calibrator, "trtq", message, tuple(notes))
