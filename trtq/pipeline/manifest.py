"""``manifest.json``: every artifact with its sha256 and size, and each step's input fingerprint.

The manifest is the pipeline's only state. It is rewritten atomically after every step that
completes, so at any moment -- also after Ctrl-C, SIGTERM or a crash -- it lists exactly the steps
whose artifacts are all in place, each file with the hash it had when it was written. A step is
reused only when its fingerprint is unchanged *and* every file it recorded still hashes the same.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

from trtq.errors import TrtqError
from trtq.fileio import sha256_file, write_json

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "trtq-run-1"
# Top-level keys in reading order: what ran and where first, the long per-step and per-file lists last.
_ORDER = ("format", "status", "exit_code", "config", "started", "finished", "versions", "gpu_steps",
          "steps_selected", "force", "gates", "models", "actions", "steps", "files")


def fingerprint(value: Any) -> str:
    """sha256 of a JSON value in canonical form (sorted keys, no whitespace)."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, allow_nan=False)


def _inside(rel: Any) -> bool:
    """``rel`` names a path inside the output folder (relative, POSIX, no ``..``)."""
    if not isinstance(rel, str) or not rel:
        return False
    path = PurePosixPath(rel)
    return not path.is_absolute() and ".." not in path.parts


def file_record(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


class Manifest:
    """The output folder's manifest: step entries (``steps``) and the files they own (``files``)."""

    def __init__(self, folder: Path, document: dict[str, Any] | None = None):
        self.folder = folder
        self.doc: dict[str, Any] = document or {"format": MANIFEST_FORMAT, "steps": {}, "files": {}}
        self.doc.setdefault("steps", {})
        self.doc.setdefault("files", {})

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST_NAME

    @property
    def steps(self) -> dict[str, dict[str, Any]]:
        return self.doc["steps"]

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return self.doc["files"]

    @classmethod
    def load(cls, folder: Path, warn) -> Manifest:
        """The previous run's manifest; a missing, foreign or unreadable one means "nothing to reuse"."""
        path = folder / MANIFEST_NAME
        if not path.is_file():
            return cls(folder)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            warn(f"{path} cannot be read ({type(exc).__name__}); every step runs again")
            return cls(folder)
        if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT:
            raise TrtqError(f"{path} is not a trtq run manifest; choose an output folder trtq run owns")
        steps = document.get("steps") if isinstance(document.get("steps"), dict) else {}
        files = document.get("files") if isinstance(document.get("files"), dict) else {}
        # Keep only well-formed, completed steps whose files lie inside the folder (a step's files are
        # deleted when it runs again or leaves the config); their files come along.
        kept = {k: v for k, v in steps.items() if isinstance(v, dict) and v.get("status") == "done"
                and isinstance(v.get("files"), list) and all(_inside(f) for f in v["files"])}
        return cls(folder, {"format": MANIFEST_FORMAT, "steps": kept,
                            "files": {f: files[f] for v in kept.values() for f in v["files"]
                                      if isinstance(files.get(f), dict)}})

    def save(self) -> None:
        ordered = {key: self.doc[key] for key in _ORDER if key in self.doc}
        ordered.update((key, value) for key, value in self.doc.items() if key not in ordered)
        write_json(self.path, ordered, indent=1)

    # -- steps ---------------------------------------------------------------------------------------------

    def entry(self, step_id: str) -> dict[str, Any] | None:
        entry = self.steps.get(step_id)
        return entry if entry is not None and entry.get("status") == "done" else None

    def verified(self, step_id: str) -> bool:
        """True when the step completed and each of its files exists with its recorded hash and size."""
        entry = self.entry(step_id)
        if entry is None:
            return False
        for rel in entry["files"]:
            record = self.files.get(rel)
            target = self.folder / rel
            if record is None or not target.is_file() or target.stat().st_size != record.get("bytes"):
                return False
            if sha256_file(target) != record.get("sha256"):
                return False
        return True

    def record(self, step_id: str, entry: dict[str, Any], files: dict[str, dict[str, Any]]) -> None:
        """Add a completed step with its files (paths relative to the folder, POSIX)."""
        self.steps[step_id] = {**entry, "status": "done", "files": sorted(files)}
        for rel, record in files.items():
            self.files[rel] = {**record, "step": step_id}

    def note(self, step_id: str, status: str, reason: str) -> None:
        """A step that did not complete here (skipped or failed): no files."""
        self.steps[step_id] = {"status": status, "reason": reason, "files": []}

    def forget(self, step_id: str) -> list[str]:
        """Remove a step and delete its files; returns the paths removed."""
        entry = self.steps.pop(step_id, None)
        removed = []
        for rel in (entry or {}).get("files", []):
            self.files.pop(rel, None)
            target = self.folder / rel
            if target.is_file():
                os.unlink(target)
                removed.append(rel)
        return removed
