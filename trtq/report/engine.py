"""Layer information of a serialized engine (``.engine``/``.plan``) through TensorRT's engine inspector.

Needs TensorRT and a GPU (deserializing an engine initialises CUDA); imported lazily so the rest of
``trtq report`` works on JSON files anywhere. API used, present in TensorRT 10.16 and 11.4:
``trt.Runtime(logger).deserialize_cuda_engine``, ``ICudaEngine.create_engine_inspector``,
``EngineInspector.get_engine_information(trt.LayerInformationFormat.JSON)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trtq.errors import TrtqError, first_line
from trtq.fileio import read_input_bytes
from trtq.report.layers import EngineLayers, load_layer_info, parse_layer_info

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


class EngineLoadError(TrtqError):
    """TensorRT cannot create a runtime here, or cannot deserialize the engine (no GPU, another TensorRT
    version or GPU, not an engine): what ``trtq bench`` falls back to a trtexec log or run for."""


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


def deserialize_engine(trt: Any, path: str | os.PathLike, logger: Any | None = None) -> tuple[Any, Any]:
    """``(runtime, ICudaEngine)`` from a file, with one-line errors for the usual failures.

    The runtime is returned so the caller keeps it alive as long as the engine.
    """
    data = read_input_bytes(path, "engine file")
    try:
        runtime = trt.Runtime(logger or trt.Logger(trt.Logger.ERROR))
    except Exception as exc:  # pybind's "factory function returned nullptr": no usable CUDA/TensorRT library
        raise EngineLoadError(
            f"TensorRT cannot create a runtime here (no GPU or CUDA driver?): {first_line(exc)}"
        ) from exc
    try:
        engine = runtime.deserialize_cuda_engine(data)
    except Exception as exc:  # the bindings raise plain RuntimeError/TypeError on CUDA or format problems
        raise EngineLoadError(f"TensorRT could not load {path}: {first_line(exc)}") from exc
    if engine is None:
        raise EngineLoadError(
            f"TensorRT could not load {path}: not an engine, or built by another TensorRT version or for another GPU"
        )
    return runtime, engine


def inspect_engine(trt: Any, engine: Any, context: Any | None = None, source: str = "engine") -> EngineLayers:
    """Layer JSON of a live engine; names-only unless it was built with ``ProfilingVerbosity.DETAILED``."""
    inspector = engine.create_engine_inspector()
    if inspector is None:
        raise TrtqError(f"{source}: TensorRT returned no engine inspector")
    if context is not None:
        inspector.execution_context = context
    text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TrtqError(f"{source}: the engine inspector returned invalid JSON ({exc.msg})") from exc
    return parse_layer_info(doc, source=source)


def layer_info_from_engine(path: str | os.PathLike) -> EngineLayers:
    """Deserialize ``path`` and read its layers through the engine inspector."""
    from trtq.trt import import_tensorrt

    trt = import_tensorrt(
        "reading layer information from an engine file (export it with trtexec "
        "--exportLayerInfo to report on any machine)"
    )
    _runtime, engine = deserialize_engine(trt, path)
    return inspect_engine(trt, engine, source=str(path))


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
