"""A folder of images (searched recursively) fed to one image input of the model.

Files are taken in sorted order of their path relative to the folder (POSIX separators, so the
order is the same on every OS); hidden files and folders (name starting with ``.``) are ignored.
Decoding runs in a few threads (Pillow releases the GIL while decoding and resizing), a bounded
window ahead of the batch being assembled, so memory stays at a few batches.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from trtq.data.base import BatchSource, SentWithPlainWarnings, Warn
from trtq.data.preprocess import IMAGE_EXTENSIONS, ImagePlan, UndecodableImage, decode_image
from trtq.errors import TrtqError

_MAX_SKIP_WARNINGS = 5


def list_files(root: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[str]:
    """Relative POSIX paths of the non-hidden files under ``root`` whose suffix is in ``extensions``
    (case-insensitive), sorted."""
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        for name in files:
            if name.startswith(".") or not name.lower().endswith(extensions):
                continue
            found.append(Path(directory, name).relative_to(root).as_posix())
    return sorted(found)


def _read_and_decode(path: Path, plan: ImagePlan) -> tuple[np.ndarray | None, str, str | None]:
    """(sample or None, sha256 of the file, reason it was skipped)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, "", f"cannot read it ({exc.strerror or exc})"
    digest = hashlib.sha256(data).hexdigest()
    try:
        return decode_image(data, plan), digest, None
    except UndecodableImage as exc:
        return None, digest, f"cannot decode it ({exc})"


def probe_first_image(root: Path, files: list[str], plan: ImagePlan) -> None:
    """Decode images until one works, so that a folder of unreadable files fails before long work."""
    first_reason = None
    for rel in files:
        sample, _, reason = _read_and_decode(root / rel, plan)
        if sample is not None:
            return
        first_reason = first_reason or f"{rel}: {reason}"
    raise TrtqError(f"none of the {len(files)} image files in {root} can be used (e.g. {first_reason})")


class ImageFolderSource(SentWithPlainWarnings, BatchSource):
    """Batches of preprocessed images for one model input."""

    def __init__(
        self,
        root: Path,
        listing: list[str],
        selected: np.ndarray,
        plan: ImagePlan,
        batch_size: int,
        drop_last: bool,
        options: dict,
        warn: Warn,
    ):
        self.root = root
        self.listing = listing  # every image under root, sorted: what labels by position refer to
        self.selected = selected  # positions in the listing that --max-samples/--seed chose, in order
        self.files = files = [listing[i] for i in selected]
        self.files_found = files_found = len(listing)
        self.plan = plan
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.total_samples = len(files)
        self.skipped_files: set[str] = set()  # relative paths not decoded in the last iteration
        self.input_shapes = {plan.input_name: (batch_size, *plan.sample_shape)}
        self._options = options
        self._warn = warn
        self._warned_files: set[str] = set()  # over all iterations: each file is warned about once
        self._drop_warned = False
        self._summary_warned = False
        self._content_sha256: str | None = None
        of = f" of {files_found}" if len(files) != files_found else ""
        self.description = f"{len(files)}{of} images from {root} ({plan.describe()})"

    def with_selection(self, selected: np.ndarray) -> ImageFolderSource:
        shard = copy.copy(self)
        shard.selected = np.asarray(selected, dtype=np.int64)
        shard.files = [self.listing[i] for i in shard.selected]
        shard.total_samples = len(shard.files)
        shard.skipped_files, shard._warned_files = set(), set()
        return shard

    @property
    def skipped(self) -> int:
        """How many files the last iteration could not decode."""
        return len(self.skipped_files)

    def _workers(self) -> int:
        return max(1, min(4, os.cpu_count() or 1))

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.skipped_files = set()
        name, plan, batch = self.plan.input_name, self.plan, self.batch_size
        window = max(2 * batch, 4 * self._workers())
        content = hashlib.sha256()
        buffer = np.empty((batch, *plan.sample_shape), dtype=plan.dtype)
        filled = used = 0
        with ThreadPoolExecutor(max_workers=self._workers(), thread_name_prefix="trtq-decode") as pool:
            pending: collections.deque[tuple[str, Future]] = collections.deque()
            remaining = iter(self.files)
            try:
                while True:
                    while len(pending) < window:
                        rel = next(remaining, None)
                        if rel is None:
                            break
                        pending.append((rel, pool.submit(_read_and_decode, self.root / rel, plan)))
                    if not pending:
                        break
                    rel, future = pending.popleft()
                    sample, digest, reason = future.result()
                    content.update(f"{digest}  {rel}\n".encode())
                    if sample is None:
                        self._skip(rel, reason)
                        continue
                    buffer[filled] = sample
                    filled += 1
                    used += 1
                    if filled == batch:
                        yield {name: buffer}
                        buffer = np.empty_like(buffer)
                        filled = 0
            finally:
                for _, future in pending:
                    future.cancel()
        if used == 0:
            raise TrtqError(f"none of the {len(self.files)} image files in {self.root} can be decoded")
        if filled:
            if self.drop_last:
                if not self._drop_warned:
                    self._drop_warned = True
                    self._warn(
                        f"dropping the last {filled} image(s): input '{name}' has a fixed batch of {batch}"
                    )
            else:
                yield {name: np.ascontiguousarray(buffer[:filled])}
        if self.skipped > _MAX_SKIP_WARNINGS and not self._summary_warned:
            self._summary_warned = True
            self._warn(f"skipped {self.skipped} undecodable image(s) in {self.root} in total")
        self._content_sha256 = content.hexdigest()

    def _skip(self, rel: str, reason: str | None) -> None:
        self.skipped_files.add(rel)
        if rel in self._warned_files:
            return
        self._warned_files.add(rel)
        if len(self._warned_files) <= _MAX_SKIP_WARNINGS:
            self._warn(f"skipping {self.root / rel}: {reason}")

    def provenance(self) -> dict:
        listing = hashlib.sha256("".join(f"{rel}\n" for rel in self.files).encode()).hexdigest()
        record = {
            "kind": "image_folder",
            "path": str(self.root),
            "files_found": self.files_found,
            "files": len(self.files),
            "files_sha256": listing,
            "skipped": self.skipped,
            "batch_size": self.batch_size,
            "preprocess": self.plan.to_json(),
            **self._options,
        }
        if self._content_sha256 is not None:
            record["content_sha256"] = self._content_sha256
        return record

