"""Layer information of an engine file or of layer JSON: which of the two a file is, and reading it.

An engine file needs TensorRT and a GPU (deserializing an engine initialises CUDA); that part is
:mod:`trtq.trt.inspect`, imported only when an engine is read, so the rest of ``trtq report`` works
on JSON files anywhere. This module parses what the inspector returns, like any layer JSON.
"""

from __future__ import annotations

import os
from pathlib import Path

from trtq.errors import TrtqError
from trtq.report.layers import EngineLayers, load_layer_info, parse_layer_info

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def looks_like_engine(path: str | os.PathLike) -> bool:
    """True for a serialized engine, False for layer JSON (by suffix, then binary content)."""
    p = Path(path)
    if p.suffix.lower() in ENGINE_SUFFIXES:
        return True
    if p.suffix.lower() == ".json":
        return False
    try:
        with open(p, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    # A serialized engine is binary; JSON, logs and other text go to the layer-JSON reader (clear errors).
    return b"\0" in head


def layer_info_from_engine(path: str | os.PathLike) -> EngineLayers:
    """Deserialize ``path`` and read its layers through the engine inspector (:mod:`trtq.trt.inspect`)."""
    from trtq.trt.inspect import engine_file_information

    return parse_layer_info(engine_file_information(path), source=str(path))


def load_layers(path: str | os.PathLike) -> EngineLayers:
    """Layer information from an engine file (through TensorRT) or from layer JSON (anywhere).

    Which of the two a file is, is decided here alone (:func:`looks_like_engine`); an ONNX model,
    which has no layer precisions before TensorRT builds it, is an error saying what to use instead.
    """
    if Path(path).suffix.lower() == ".onnx":
        raise TrtqError(
            f"{path} is an ONNX model: its layers get their precision only when TensorRT builds it; report on "
            "the engine (trtq build, then trtq report ENGINE) or on trtexec --exportLayerInfo JSON, or see the "
            "simulated INT8 error per layer with trtq sensitivity"
        )
    return layer_info_from_engine(path) if looks_like_engine(path) else load_layer_info(path)
