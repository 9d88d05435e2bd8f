"""One parser for TensorRT's layer-information JSON, in every form users have.

Accepted (all produce :class:`EngineLayers`):

- the engine inspector, ``IEngineInspector.get_engine_information(LayerInformationFormat.JSON)``
  (detailed only if the engine was built with ``ProfilingVerbosity.DETAILED``);
- trtexec ``--exportLayerInfo`` of 8.x-10.x: ``{"Layers": [...], "Bindings": [...]}`` with
  ``"Format/Datatype"`` per tensor, and the newer 10.x layout with ``Location``, ``StreamId`` and
  ``Metadata`` (``[ONNX Layer: a]`` entries separated by ASCII RS/US control characters);
- the 11.x layout: ``"I/O Tensors"`` instead of ``"Bindings"`` and separate format / data-type
  keys per tensor;
- the names-only form (``ProfilingVerbosity.LAYER_NAMES_ONLY``): ``"Layers"`` is a list of strings;
- a single layer object (``get_layer_information``) or a bare list of layers.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from trtq.errors import TrtqError
from trtq.fileio import read_input_text
from trtq.report.precision import kernel_class, layer_precision, normalize_dtype

_ONNX_LAYER = re.compile(r"\[ONNX Layer: (.*?)\]")
_METADATA_SEPARATORS = re.compile(r"[\x1e\x1f]")

# Keys a tensor may carry its data type / format under, across TensorRT versions.
_COMBINED_KEYS = ("Format/Datatype", "Format/DataType")
_DTYPE_KEYS = ("DataType", "Datatype", "Data Type", "Type")
_FORMAT_KEYS = ("Format", "TensorFormat")


@dataclass
class TensorInfo:
    """A layer input or output as the layer JSON describes it."""

    name: str
    dims: tuple[int, ...] | None = None
    dtype: str = "UNKNOWN"  # precision name, see trtq.report.precision.PRECISIONS
    raw_type: str = ""  # the data-type / format text exactly as in the file
    location: str | None = None


@dataclass
class Layer:
    """One engine layer (a fused kernel, a reformat, a Myelin sub-graph...)."""

    name: str
    type: str | None = None
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)
    tactic: str | None = None
    origin: str | None = None  # "QDQ", "REFORMAT" or None
    onnx_nodes: list[str] = field(default_factory=list)
    parameter_type: str | None = None

    @property
    def kernel_class(self) -> str:
        return kernel_class(self.tactic)

    @property
    def precision(self) -> str:
        if not self.inputs and not self.outputs:
            return "UNKNOWN"
        return layer_precision([t.dtype for t in self.inputs], [t.dtype for t in self.outputs], self.kernel_class)

    @property
    def is_qdq(self) -> bool:
        """A stand-alone quantize/dequantize layer (not fused into a compute kernel)."""
        return (self.origin or "").upper() == "QDQ" or (self.type or "") in ("Quantize", "Dequantize")

    @property
    def is_reformat(self) -> bool:
        """A layout/type conversion TensorRT inserted (Q/DQ layers are counted separately)."""
        if self.is_qdq:
            return False
        return (
            (self.origin or "").upper() == "REFORMAT"
            or (self.type or "") == "Reformat"
            or self.name.startswith("Reformatting CopyNode")
        )

    @property
    def is_noop(self) -> bool:
        return (self.type or "") == "NoOp"


@dataclass
class EngineLayers:
    """The layers of one engine plus its I/O tensor names."""

    layers: list[Layer]
    io_tensors: list[str] = field(default_factory=list)
    layout: str = "unknown"  # "10.x", "10.x-metadata", "11.x", "names-only", "single-layer"
    source: str = ""

    @property
    def detailed(self) -> bool:
        """False for names-only information (no types, no tactics, no precision)."""
        return self.layout != "names-only"


def _dims(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return tuple(value)
    return None


def _text(obj: dict[str, Any], *keys: str) -> str | None:
    """The value of the first of ``keys`` that holds a string (any other type counts as absent)."""
    return next((obj[k] for k in keys if isinstance(obj.get(k), str)), None)


def _tensor(obj: Any) -> TensorInfo:
    if isinstance(obj, str):
        return TensorInfo(name=obj)
    if not isinstance(obj, dict):
        raise TrtqError(f"unexpected tensor entry in layer information: {obj!r:.80}")
    raw_type = _text(obj, *_COMBINED_KEYS)
    if raw_type is None:
        dtype_text = _text(obj, *_DTYPE_KEYS) or ""
        format_text = _text(obj, *_FORMAT_KEYS) or ""
        raw_type = " ".join(part for part in (format_text, dtype_text) if part)
        # The split 11.x form names the type on its own; a format word must not override it.
        dtype = normalize_dtype(dtype_text or format_text)
    else:
        dtype = normalize_dtype(raw_type)
    return TensorInfo(
        name=str(obj.get("Name", "")),
        dims=_dims(obj.get("Dimensions")),
        dtype=dtype,
        raw_type=raw_type,
        location=_text(obj, "Location"),
    )


def onnx_nodes_from_metadata(metadata: str | None) -> list[str]:
    """``"[ONNX Layer: a]\\x1e[ONNX Layer: b]"`` -> ``["a", "b"]`` (duplicates dropped, order kept)."""
    if not metadata:
        return []
    nodes: list[str] = []
    for part in _METADATA_SEPARATORS.split(metadata):
        for match in _ONNX_LAYER.finditer(part):
            if match.group(1) not in nodes:
                nodes.append(match.group(1))
    return nodes


def _layer(obj: Any) -> Layer:
    if isinstance(obj, str):
        return Layer(name=obj)
    if not isinstance(obj, dict) or "Name" not in obj:
        raise TrtqError(f"unexpected layer entry in layer information (no 'Name'): {str(obj)[:80]}")
    name = str(obj["Name"])
    tensors = {}
    for key in ("Inputs", "Outputs"):
        entries = obj.get(key) or []
        if not isinstance(entries, list):
            raise TrtqError(f"layer '{name}' in layer information: '{key}' is not a list")
        tensors[key] = [_tensor(t) for t in entries]
    return Layer(
        name=name,
        type=_text(obj, "LayerType"),
        inputs=tensors["Inputs"],
        outputs=tensors["Outputs"],
        tactic=_text(obj, "TacticName") or None,
        origin=_text(obj, "Origin"),
        onnx_nodes=onnx_nodes_from_metadata(_text(obj, "Metadata")),
        parameter_type=_text(obj, "ParameterType"),
    )


def _io_tensor_names(doc: dict[str, Any]) -> list[str]:
    if isinstance(doc.get("Bindings"), list):
        return [str(b) for b in doc["Bindings"]]
    if isinstance(doc.get("I/O Tensors"), list):
        return [str(t.get("Name", "")) if isinstance(t, dict) else str(t) for t in doc["I/O Tensors"]]
    return []


def parse_layer_info(doc: Any, source: str = "layer information") -> EngineLayers:
    """Parse an already-decoded layer JSON document (any supported form)."""
    if isinstance(doc, dict) and "Layers" in doc:
        raw_layers = doc["Layers"]
        if not isinstance(raw_layers, list):
            raise TrtqError(f"{source}: 'Layers' is not a list")
        io_names = _io_tensor_names(doc)
    elif isinstance(doc, dict) and "Name" in doc:
        raw_layers, io_names = [doc], []
    elif isinstance(doc, list):
        raw_layers, io_names = doc, []
    else:
        raise TrtqError(
            f'{source} is not TensorRT layer information: expected {{"Layers": [...]}} '
            "(trtexec --exportLayerInfo or the engine inspector's JSON)"
        )
    layers = [_layer(obj) for obj in raw_layers]
    if raw_layers and all(isinstance(obj, str) for obj in raw_layers):
        layout = "names-only"
    elif isinstance(doc, dict) and "I/O Tensors" in doc:
        layout = "11.x"
    elif isinstance(doc, dict) and "Name" in doc:
        layout = "single-layer"
    elif any(isinstance(obj, dict) and ("Metadata" in obj or "StreamId" in obj) for obj in raw_layers):
        layout = "10.x-metadata"
    else:
        layout = "10.x"
    return EngineLayers(layers=layers, io_tensors=io_names, layout=layout, source=source)


def parse_layer_info_text(text: str, source: str = "layer information") -> EngineLayers:
    """Parse layer JSON text; a trtexec log or other text gets a clear error."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = ""
        if "&&&& " in text or "[I] " in text:
            hint = " (this looks like a trtexec log; export the layers with --exportLayerInfo=FILE instead)"
        raise TrtqError(f"{source} is not valid JSON: {exc.msg} at line {exc.lineno}{hint}") from exc
    return parse_layer_info(doc, source)


def load_layer_info(path: str | os.PathLike) -> EngineLayers:
    """Read a layer JSON file (trtexec ``--exportLayerInfo`` or a saved inspector dump)."""
    text = read_input_text(path, "layer information file")
    return parse_layer_info_text(text, source=str(path))
