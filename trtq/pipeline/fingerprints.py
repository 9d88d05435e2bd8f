"""The content half of a step's fingerprint: file hashes (each file hashed once per run), the data's
record (contents and options, as the manifest lists it) and the part of it that decides results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trtq.fileio import sha256_file
from trtq.pipeline.manifest import fingerprint
from trtq.pipeline.schema import DataConfig, ModelConfig


def engine_options(model: ModelConfig) -> dict[str, Any]:
    """The ``[build]`` options that decide the engine: not ``timing_cache``, a path to a cache of timings."""
    return {k: v for k, v in model.build.items() if k != "timing_cache"}


class Fingerprints:
    """Hashes and data records of one run; paths are shown relative to ``root`` (the config's folder)."""

    def __init__(self, root: Path):
        self.root = root
        self._hashes: dict[Path, str] = {}
        self._data: dict[str, dict] = {}

    def sha(self, path: Path) -> str:
        if path not in self._hashes:
            self._hashes[path] = sha256_file(path)
        return self._hashes[path]

    def rel(self, path: Path) -> str:
        """How the manifest shows a path: relative to the config's folder when inside it."""
        resolved, root = Path(path).resolve(), self.root.resolve()
        return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else str(path)

    def data_fingerprint(self, data: DataConfig) -> dict[str, Any]:
        """Content hash of the data (every file under a data folder but hidden ones, or the script) and its
        options, taken before the data is opened: it decides whether the steps that read the data run."""
        if data.key in self._data:
            return self._data[data.key]
        if data.path is not None:
            if data.path.is_file():
                listing = [(data.path.name, self.sha(data.path))]
            else:
                listing = [(p.relative_to(data.path).as_posix(), self.sha(p)) for p in sorted(data.path.rglob("*"))
                           if p.is_file() and not any(part.startswith(".") for part in p.relative_to(data.path).parts)]
            source = {"path": self.rel(data.path), "files": len(listing),
                      "sha256": fingerprint([f"{name} {digest}" for name, digest in listing])}
        else:
            script = Path(data.loader_script.rpartition(":")[0])
            source = {"loader_script": f"{self.rel(script)}:{data.loader_script.rpartition(':')[2]}",
                      "sha256": self.sha(script)}
        record = {**source, "options": dict(sorted(data.options.items()))}
        if data.labels is not None:
            record["labels"] = {"path": self.rel(data.labels), "sha256": self.sha(data.labels)}
            record["logits"] = data.logits
        self._data[data.key] = record
        return record

    def data_inputs(self, data: DataConfig) -> dict[str, Any]:
        """The data's part of a fingerprint: contents and options, not where the files are (a CI runner
        checks the repository out elsewhere; moved data with the same contents gives the same results)."""
        record = dict(self.data_fingerprint(data))
        record.pop("path", None)
        if "loader_script" in record:
            record["loader_script"] = record["loader_script"].rpartition(":")[2]  # the function's name
        if "labels" in record:
            record["labels"] = record["labels"]["sha256"]
        return record
