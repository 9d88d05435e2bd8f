"""TensorRT 11.x (strongly typed): the precision is in the ONNX model, so trtq writes that model.

INT8 is the explicit Q/DQ model that ``trtq export --qdq`` writes (:func:`trtq.export.export_qdq`),
FP16 the float16 model of ``trtq export --fp16`` (:func:`trtq.export.export_fp16`), both with
float32 inputs and outputs. ``--best`` chains them: Q/DQ first (the ranges are keyed by the
original tensor names), upgraded to opset 19 where QuantizeLinear accepts float16, then FP16, so
that the dequantized tensors feed FP16 layers without Casts between Q/DQ and the layer.
Nothing here calls TensorRT: this module is pure onnx and runs (and is tested) without a GPU.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from trtq.errors import TrtqError
from trtq.model import Model

FP16_QDQ_OPSET = 19  # QuantizeLinear takes float16 input from opset 19


@dataclass
class StronglyTypedModel:
    """The ONNX model TensorRT 11 parses, with what the conversion did."""

    proto: onnx.ModelProto
    variant: str  # "original" | "qdq" | "fp16" | "qdq+fp16"
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def save(self, path: Path) -> Path:
        from trtq.export import save_model

        save_model(self.proto, path)
        return path


def _is_pattern(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def name_matches(pattern: str, name: str, outputs: list[str]) -> bool:
    """The ``--keep-precision`` rule, for ONNX nodes here and TensorRT layers on 10.x: a node/layer
    matches by its own name or by the name of a tensor it produces; ``*``, ``?`` and ``[...]`` are wildcards."""
    if not _is_pattern(pattern):
        return pattern == name or pattern in outputs
    return fnmatch.fnmatchcase(name, pattern) or any(fnmatch.fnmatchcase(o, pattern) for o in outputs)


def expand_names(model: Model, patterns: list[str]) -> list[str]:
    """Node names for ``patterns`` (node or output-tensor names, ``*``/``?`` wildcards allowed)."""
    names: list[str] = []
    for pattern in patterns:
        if not _is_pattern(pattern):
            names.append(pattern)
            continue
        hits = [node.name or next((o for o in node.output if o), "") for node in model.graph.node
                if name_matches(pattern, node.name, [o for o in node.output if o])]
        if not hits:
            raise TrtqError(f"--keep-precision: no node or tensor matches '{pattern}'")
        names.extend(hits)
    return names


def strongly_typed_model(model: Model, *, int8: bool, fp16: bool, amax: Mapping[str, float] | None = None,
                         keep_precision: Mapping[str, str] | None = None,
                         ranges_source: str = "trtq's ranges",
                         qdq: onnx.ModelProto | None = None) -> StronglyTypedModel:
    """The model to build on TensorRT 11 for the requested precisions.

    ``keep_precision`` maps node/tensor names to ``fp32`` or ``fp16``: fp32 nodes stay out of both
    the Q/DQ and the FP16 conversion, fp16 nodes stay out of Q/DQ only. ``qdq`` is a ready Q/DQ model
    of ``model`` (``trtq quantize``'s, made with the same nodes kept out): used as the INT8 model as is.
    """
    from trtq.export import export_fp16, export_qdq
    from trtq.export.int8_weights import store_int8_weights

    keep = dict(keep_precision or {})
    if any(v == "fp16" for v in keep.values()) and not fp16:
        raise TrtqError("--keep-precision NAME=fp16 needs --fp16 or --best")
    keep_fp32 = expand_names(model, [k for k, v in keep.items() if v == "fp32"])
    keep_float = expand_names(model, list(keep))
    if not int8 and not fp16:
        return StronglyTypedModel(model.proto, "original")
    notes: list[str] = []
    warnings: list[str] = []
    working = model
    if int8:
        if qdq is None:
            if not amax:
                raise TrtqError("INT8 on the strongly typed path needs ranges (from --data, --ranges or --cache)")
            exported = export_qdq(model, amax, exclude=keep_float, ranges_source=ranges_source)
            notes += exported.notes
            warnings += exported.warnings
            qdq = exported.model
        qdq = store_int8_weights(qdq).model  # int8 behind DequantizeLinear: a quarter of the size, the same values
        if not fp16:
            return StronglyTypedModel(qdq, "qdq", notes, warnings)
        working = Model(qdq, model.path)
        if working.opset < FP16_QDQ_OPSET:
            from trtq.export.graph import upgrade_opset

            working = Model(upgrade_opset(qdq, working.opset, FP16_QDQ_OPSET), model.path)
            notes.append(f"upgraded the Q/DQ model to opset {FP16_QDQ_OPSET} so that Q/DQ can run in float16")
    half = export_fp16(working, keep_fp32=keep_fp32)
    notes += half.notes
    warnings += half.warnings
    return StronglyTypedModel(half.model, "qdq+fp16" if int8 else "fp16", notes, warnings)
