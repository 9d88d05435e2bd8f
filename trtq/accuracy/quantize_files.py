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
from trtq.export import save_model
from trtq.fileio import atomic_write, write_json


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
    no_room = _no_room(files, [(files.model, result.export.model), (files.float, result.float_model)]) \
        if result.ok else None
    if result.ok and no_room is None:
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
    if no_room is not None:
        from trtq.errors import TrtqError

        raise TrtqError(f"{no_room}; the report was written: {files.html}")
    return [*written, files.json, files.html]


def _no_room(files: QuantizeFiles, models: list[tuple[Path | None, object]]) -> str | None:
    """Why the models cannot be written (None: they fit their device together), checked before the first is: a
    full disk leaves no model without its cache (each file is checked again as it is written)."""
    import shutil

    sizes = [(path, proto.ByteSize()) for path, proto in models if path is not None and proto is not None]
    need = sum(size for _path, size in sizes)
    free = shutil.disk_usage(files.cache.parent if str(files.cache.parent) else ".").free
    if not sizes or need <= free:
        return None
    names = " and ".join(str(path) for path, _size in sizes)
    return (f"cannot write {names}: {'they need' if len(sizes) > 1 else 'it needs'} {need / 2**20:.1f} MiB and "
            f"the device has {free / 2**20:.1f} MiB free; no model, cache or keep list was written")
