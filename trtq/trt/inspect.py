"""A serialized engine (``.engine``/``.plan``) opened through TensorRT, and its engine inspector.

Deserialising an engine initialises CUDA, so this needs TensorRT and a GPU; what it returns is plain
data (the inspector's layer JSON as a decoded document) so that :mod:`trtq.report` can parse and
render it on any machine. API used, present in TensorRT 10.16 and 11.4 (the names are listed in
:data:`trtq.trt.runner.TRT_API_USED`): ``trt.Runtime(logger).deserialize_cuda_engine``,
``ICudaEngine.create_engine_inspector``,
``EngineInspector.get_engine_information(trt.LayerInformationFormat.JSON)``.
"""

from __future__ import annotations

import json
import os
from types import ModuleType
from typing import Any

from trtq.errors import TrtqError, first_line
from trtq.fileio import read_input_bytes


class EngineLoadError(TrtqError):
    """TensorRT cannot create a runtime here, or cannot deserialize the engine (no GPU, another TensorRT
    version or GPU, not an engine): what ``trtq bench`` falls back to a trtexec log or run for."""


def deserialize_engine(trt: ModuleType, path: str | os.PathLike, logger: Any | None = None) -> tuple[Any, Any]:
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


def engine_information(trt: ModuleType, engine: Any, context: Any | None = None, source: str = "engine") -> Any:
    """The inspector's layer JSON of a live engine, decoded; names-only unless the engine was built with
    ``ProfilingVerbosity.DETAILED``. With ``context`` the inspector reports the shapes it was set to."""
    inspector = engine.create_engine_inspector()
    if inspector is None:
        raise TrtqError(f"{source}: TensorRT returned no engine inspector")
    if context is not None:
        inspector.execution_context = context
    text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TrtqError(f"{source}: the engine inspector returned invalid JSON ({exc.msg})") from exc


def engine_file_information(path: str | os.PathLike) -> Any:
    """Deserialize ``path`` and return its decoded layer JSON (see :func:`engine_information`)."""
    from trtq.trt import import_tensorrt

    trt = import_tensorrt(
        "reading layer information from an engine file (export it with trtexec "
        "--exportLayerInfo to report on any machine)"
    )
    _runtime, engine = deserialize_engine(trt, path)
    return engine_information(trt, engine, source=str(path))
