"""The staging transaction that keeps ``manifest.json`` true: a step writes into a private folder
inside the output folder; only when it has finished are its files renamed into place and recorded,
all while signals wait, so an interruption leaves either the whole step or none of it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from trtq.pipeline.manifest import Manifest, file_record
from trtq.pipeline.signals import SignalGuard

STAGING = ".trtq-staging"


class Staging:
    """Staging folders under ``out/.trtq-staging`` and the commit that moves a step's files out of them."""

    def __init__(self, out: Path, manifest: Manifest, guard: SignalGuard):
        self.out, self.manifest, self.guard = out, manifest, guard

    @property
    def root(self) -> Path:
        return self.out / STAGING

    def begin(self, step_id: str) -> Path:
        """Forget the step's earlier result (files included) before it runs again; a fresh staging folder."""
        with self.guard.deferred():
            self.manifest.forget(step_id)
            self.manifest.save()
        staging = self.root / step_id.replace("/", "__")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return staging

    def commit(self, step_id: str, entry: dict[str, Any], files: dict[str, Path], staging: Path) -> str | None:
        """Move the step's files into place and record ``entry``; the reason when it cannot (the staging
        folder is removed either way)."""
        records = {rel: file_record(path) for rel, path in files.items()}
        try:  # folders first: a file where the model's or variant's folder goes fails the step before any move
            for rel in files:
                (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.discard(staging)
            return f"cannot create the folder {exc.filename}: {exc.strerror}"
        with self.guard.deferred():
            for rel, path in files.items():
                os.replace(path, self.out / rel)  # staging is inside the output folder: a rename, never a copy
            self.manifest.record(step_id, entry, records)
            self.manifest.save()
        self.discard(staging)
        return None

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)


def clear_staging(out: Path) -> None:
    """Remove every staging folder under ``out`` (a killed run's, or an interrupted step's)."""
    shutil.rmtree(out / STAGING, ignore_errors=True)
