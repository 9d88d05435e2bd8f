"""Finding the config file (``trtq.toml``, else ``pyproject.toml`` with ``[tool.trtq]``) and reading its TOML."""

from __future__ import annotations

import sys
from pathlib import Path

from trtq.errors import TrtqError
from trtq.fileio import read_input_bytes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


def find_config(path: str | None, cwd: Path | None = None) -> Path:
    """The config file: ``path``, else ``trtq.toml``, else ``pyproject.toml`` with ``[tool.trtq]``."""
    if path:
        candidate = Path(path)
        if candidate.is_dir():
            return find_config(None, candidate)
        if not candidate.is_file():
            raise TrtqError(f"config file not found: {candidate}")
        return candidate
    folder = cwd or Path(".")
    toml_path = folder / "trtq.toml"
    if toml_path.is_file():
        return toml_path
    pyproject = folder / "pyproject.toml"
    if pyproject.is_file() and "trtq" in read_toml(pyproject, str(pyproject))[0].get("tool", {}):
        return pyproject
    where = "the current directory" if cwd is None else str(folder)
    raise TrtqError(f"no trtq.toml and no pyproject.toml with a [tool.trtq] table in {where}; "
                    "give the config file: trtq run CONFIG.toml")



def read_toml(path: Path, display: str) -> tuple[dict, bytes]:
    """The parsed document and the bytes it was parsed from (the manifest records their sha256)."""
    data = read_input_bytes(path, "config file")
    try:
        return tomllib.loads(data.decode("utf-8")), data
    except UnicodeDecodeError as exc:
        raise TrtqError(f"{display}: not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TrtqError(f"{display}: not valid TOML: {exc}") from exc

