"""The one place a ``trtq quantize`` result becomes files: ``trtq quantize`` and ``trtq run``'s quantize step both
write through :func:`write_quantize_files`.

Why one place: the two callers each had their own copy, and the copies drifted. ``trtq run``'s copy dropped the
corrected float model that a bias correction or SmoothQuant makes, so its Q/DQ model paired the corrected ranges with
the uncorrected model. Here the report is written always, and the model, its float model (when a correction changed
it), the cache and the keep list only when the result is verified; each file atomically, after all the work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtq.accuracy.quantize_report import quantize_figures, quantize_html
from trtq.accuracy.quantize_result import QuantizeResult
from trtq.cache import write_cache
from trtq.errors import TrtqError
from trtq.export import save_model
from trtq.fileio import atomic_write, no_room, write_json


@dataclass(frozen=True)
class QuantizeFiles:
    """Where each file goes; ``model`` None: the Q/DQ model is not written (``trtq run`` exports it in its own
    step, from the cache and the keep list)."""

    json: Path
    html: Path
    cache: Path
    keep: Path
    float: Path
    model: Path | None = None


def write_quantize_files(result: QuantizeResult, files: QuantizeFiles, *, model_name: str, data: str,
                         provenance: Mapping[str, Any], trt_version: str,
                         document: Mapping[str, Any] | None = None, indent: int = 2) -> list[Path]:
    """Write the report (always) and, when ``result`` is verified, the model, the corrected float model (when there
    is one), the cache and the keep list. ``data``: how the report names the calibration data; ``document``: more
    entries for the JSON report. Returns the files written, the report's last."""
    written: list[Path] = []
    pairs = ((files.model, result.export.model), (files.float, result.float_model)) if result.ok else ()
    models = [(path, proto) for path, proto in pairs if path is not None and proto is not None]
    problem = no_room([path for path, _proto in models], sum(proto.ByteSize() for _path, proto in models)) \
        if models else None  # checked together, before the first: no model is left without its cache
    if result.ok and problem is None:
        if files.model is not None:
            save_model(result.export.model, files.model)
            written.append(files.model)
        if result.float_model is not None:  # corrected: the cache's ranges are for this model, not the input's
            save_model(result.float_model, files.float)
            written.append(files.float)
        write_cache(files.cache, result.cache(trt_version))
        atomic_write(files.keep, result.keep_text(model_name))
        written += [files.cache, files.keep]
    shares = result.mac_shares
    write_json(files.json, {**result.document(), "model": model_name, "data": dict(provenance),
                            "int8_mac_share": shares[-1], **(document or {})}, indent=indent)
    atomic_write(files.html, quantize_html(result, quantize_figures(result, shares), model=model_name, data=data,
                                           mac_shares=shares))
    if problem is not None:
        raise TrtqError(f"{problem}; no model, cache or keep list was written; the report was written: {files.html}")
    return [*written, files.json, files.html]
