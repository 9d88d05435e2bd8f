"""Atomic output files: write to a temporary file beside the target, then rename.

A crash, an error or Ctrl-C never leaves a half-written cache, model or report behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from trtq.errors import TrtqError


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail early (before any work) when an output file cannot be created."""
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise TrtqError(f"cannot write {out}: directory {parent} does not exist")
    if out.is_dir():
        raise TrtqError(f"cannot write {out}: it is a directory")
    if not os.access(parent, os.W_OK):
        raise TrtqError(f"cannot write {out}: directory {parent} is not writable")
    return out


def _same_file(a: Path, b: Path) -> bool:
    """Whether two existing paths name one file (hard links and symlinks included)."""
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(outputs: Mapping[str, str | os.PathLike | None],
                  inputs: Mapping[str, str | os.PathLike | None] | None = None) -> dict[str, Path]:
    """Fail before any work when an output cannot be written, would replace a file the command reads, or two
    outputs are one file: nothing a user gave a command is ever lost to its own output.

    ``outputs`` and ``inputs`` map what the user calls each file (``"-o"``, ``"--cache"``, ``"MODEL"``) to its
    path; ``None`` entries are skipped. A folder input (``--data images/``) only conflicts with itself."""
    given = {label: check_output_path(path) for label, path in outputs.items() if path is not None}
    refuse_inputs(given, inputs)
    seen: dict[Path, str] = {}
    for label, out in given.items():
        key = out.resolve()
        if key in seen:
            raise TrtqError(f"the outputs {seen[key]} and {label} are one file ({out}); give each its own name")
        seen[key] = label
    return given


def refuse_inputs(outputs: Mapping[str, str | os.PathLike | None],
                  inputs: Mapping[str, str | os.PathLike | None] | None) -> None:
    """Fail when an output names a file the command reads (by any path, hard link or symbolic link)."""
    read = {label: Path(path) for label, path in (inputs or {}).items() if path is not None}
    for label, path in outputs.items():
        if path is None:
            continue
        out = Path(path)
        for source_label, source in read.items():
            if _same_file(out, source):
                raise TrtqError(f"the output {out} ({label}) is {source_label}, which this command reads: writing "
                                f"it would destroy it; choose another output name")


ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def refuse_engine_suffix(path: str | os.PathLike, option: str, precision: str) -> None:
    """An ONNX output named like a TensorRT engine (``-o model.engine``) is a mistake a user finds only when the
    build fails: say which command makes an engine instead. ``precision``: ``int8`` or ``fp16``."""
    out = Path(path)
    if out.suffix.lower() in ENGINE_SUFFIXES:
        onnx_out = out.with_suffix(f".{precision}.onnx")
        raise TrtqError(f"{option} {out} names a TensorRT engine, but this command writes an ONNX model; write "
                        f"{onnx_out} and build the engine with: trtq build {onnx_out} --{precision} -o {out}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success it is renamed onto ``path``, on error removed."""
    out = check_output_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, out)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # a full disk is the user's to fix, not a bug
            free = shutil.disk_usage(out.parent or ".").free
            raise TrtqError(f"cannot write {out}: no space left on its device ({free / 2**20:.0f} MiB free); "
                            "nothing was written") from exc
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def no_room(paths: list[Path], need: int) -> str | None:
    """Why ``paths`` (on one device) cannot take ``need`` bytes, or None when they can: checked before a byte is
    written, so that a model of hundreds of MiB fails at once and leaves nothing half done."""
    free = shutil.disk_usage(paths[0].parent if str(paths[0].parent) else ".").free
    if need <= free:
        return None
    names = " and ".join(str(p) for p in paths)
    many = len(paths) > 1
    return (f"cannot write {names}: {'they need' if many else 'it needs'} {need / 2**20:.1f} MiB and "
            f"{'their' if many else 'its'} device has {free / 2**20:.1f} MiB free")


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically, after checking that its device has the room
    (:func:`no_room`)."""
    payload = data.encode() if isinstance(data, str) else data
    problem = no_room([check_output_path(path)], len(payload))
    if problem is not None:
        raise TrtqError(f"{problem}; nothing was written")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (models can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_input_bytes(path: str | os.PathLike, what: str) -> bytes:
    """Read a file the user named; missing or unreadable is a one-line error naming ``what``."""
    source = Path(path)
    try:
        return source.read_bytes()
    except FileNotFoundError as exc:
        raise TrtqError(f"{what} not found: {source}") from exc
    except IsADirectoryError as exc:
        raise TrtqError(f"{what} {source} is a directory, not a file") from exc
    except OSError as exc:
        raise TrtqError(f"cannot read {what} {source}: {exc.strerror or exc}") from exc


def read_input_text(path: str | os.PathLike, what: str, errors: str = "strict") -> str:
    """:func:`read_input_bytes` decoded as UTF-8 (``errors="replace"`` for logs with stray bytes)."""
    data = read_input_bytes(path, what)
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise TrtqError(f"{what} {path} is not UTF-8 text") from exc


def json_safe(value: Any) -> Any:
    """Replace non-finite floats with None (JSON has no inf/NaN), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_text(document: Any, indent: int = 2) -> str:
    """Valid JSON for any document trtq writes: NaN/inf (e.g. from an odd trtexec log) become null."""
    return json.dumps(json_safe(document), indent=indent, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, document: Any, indent: int = 2) -> Path:
    """:func:`json_text`, written atomically."""
    return atomic_write(path, json_text(document, indent))
