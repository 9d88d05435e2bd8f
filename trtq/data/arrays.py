"""Arrays: ``.npy`` (one input), ``.npz`` (one array per input, keyed by input name), or a folder of
them (sorted by relative path, samples concatenated in that order).

Samples are stacked on axis 0 of every array, and axis 0 becomes the model's batch axis, so an
array for a ``[batch,3,224,224]`` input has shape ``[N,3,224,224]``. Opening reads only the
headers; an iteration reads rows batch by batch:

* ``.npy`` files and uncompressed ``.npz`` members (``np.savez``) are memory-mapped at the offset
  of their data;
* compressed members (``np.savez_compressed``) are decompressed as a stream, one batch of rows at
  a time (a random ``--seed`` subset still decompresses the skipped rows, but never holds them);
  only a column-major (Fortran-order) compressed member, whose rows cannot be streamed, is
  decompressed whole while its rows are fed.

A file is opened (mapped) when an iteration first reads from it and closed as soon as the
iteration has passed its last sample, so a folder of thousands of files never holds more than a
couple open. Object arrays are refused (trtq never unpickles). ``.npz`` arrays that are not model
inputs (labels, say) are ignored, with a warning naming them.
"""

from __future__ import annotations

import copy
import hashlib
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from trtq.data.base import (
    BatchSource,
    DtypeCoercer,
    Warn,
    check_sample_dims,
    format_dims,
    one_line,
    select_indices,
)
from trtq.errors import TrtqError
from trtq.fileio import sha256_file
from trtq.model import InputSpec

ARRAY_EXTENSIONS = (".npy", ".npz")
_SKIP_CHUNK = 8 << 20


class _Reader:
    """Rows of one array; ``read`` takes sorted row indices. Nothing is held open between ``close``
    and the next ``read``."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def read(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Called when an iteration is done with the array (also when it stops early)."""


class _MappedReader(_Reader):
    """An array that ``load`` gives whole -- a memory map (reading rows touches only their pages) or,
    for a column-major compressed member, the decompressed array -- got on the first read and
    dropped on ``close``."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, load: Callable[[], np.ndarray]):
        self.shape, self.dtype = tuple(shape), dtype
        self._load = load
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = self._load()
        return self._array

    def close(self) -> None:
        self._array = None

    def read(self, rows: np.ndarray) -> np.ndarray:
        first, last = int(rows[0]), int(rows[-1])
        if last - first + 1 == len(rows):
            return np.array(self.array[first : last + 1], order="C")  # a copy of one slice
        return np.array(self.array[rows], order="C")


def _memory_map(path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype, fortran: bool) -> _MappedReader:
    """A reader of the array stored uncompressed at byte ``offset`` of ``path``."""

    def load() -> np.ndarray:
        if _data_bytes(shape, dtype) == 0:  # nothing to map
            return np.empty(shape, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")

    return _MappedReader(shape, dtype, load)


class _ZipStreamReader(_Reader):
    """A compressed ``.npz`` member, decompressed front to back as rows are asked for."""

    def __init__(self, path: Path, member: str, shape: tuple[int, ...], dtype: np.dtype, header_len: int):
        self.path, self.member, self.shape, self.dtype = path, member, shape, dtype
        self.header_len = header_len
        self.row_bytes = _data_bytes(shape[1:], dtype)
        self._zip: zipfile.ZipFile | None = None
        self._stream = None
        self._row = 0

    def _open(self) -> None:
        self.close()
        self._zip = zipfile.ZipFile(self.path)
        self._stream = self._zip.open(self.member)
        self._discard(self.header_len)
        self._row = 0

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        if self._zip is not None:
            self._zip.close()
        self._zip = self._stream = None

    def _discard(self, nbytes: int) -> None:
        while nbytes > 0:
            chunk = self._stream.read(min(nbytes, _SKIP_CHUNK))
            if not chunk:
                raise TrtqError(f"{self.path}: array '{self.member}' is truncated")
            nbytes -= len(chunk)

    def _read_rows(self, count: int) -> np.ndarray:
        out = np.empty((count, *self.shape[1:]), dtype=self.dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        done = 0
        while done < len(view):
            got = self._stream.readinto(view[done:])
            if not got:
                raise TrtqError(f"{self.path}: array '{self.member}' is truncated")
            done += got
        self._row += count
        return out

    def read(self, rows: np.ndarray) -> np.ndarray:
        if self._stream is None or int(rows[0]) < self._row:
            self._open()
        # Split the sorted rows into contiguous runs: skip to each run, read it.
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        parts = []
        for run in np.split(rows, breaks):
            self._discard((int(run[0]) - self._row) * self.row_bytes)
            self._row = int(run[0])
            parts.append(self._read_rows(len(run)))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _read_npy_header(stream) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    return np.lib.format.read_array_header_2_0(stream)


def _data_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def _stored_member_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Byte offset of an uncompressed zip member's data (after its local header)."""
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise TrtqError(f"{path} is not a valid .npz file (bad zip header for '{info.filename}')")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def open_npy(path: Path) -> _Reader:
    """A reader of the ``.npy`` file (its header read, its data mapped when first read)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) == b"PK\x03\x04":
                raise TrtqError(f"{path} is an .npz archive; name it .npz")
            fh.seek(0)
            shape, fortran, dtype = _read_npy_header(fh)
            offset = fh.tell()
            size = fh.seek(0, 2)
    except (OSError, ValueError) as exc:  # ValueError: not a .npy header
        raise TrtqError(f"cannot read {path} as a .npy file ({one_line(exc)})") from exc
    if dtype.hasobject:
        raise TrtqError(f"{path} holds Python objects, which trtq does not load (allow_pickle=False)")
    if size - offset < _data_bytes(shape, dtype):
        raise TrtqError(f"{path} is truncated: it holds {size - offset} bytes of its {format_dims(shape)} {dtype} data")
    return _memory_map(path, offset, tuple(shape), dtype, fortran)


def open_npz(path: Path) -> dict[str, _Reader]:
    """``{array name: reader}`` for every ``.npy`` member of the archive, none read yet."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise TrtqError(f"cannot read {path} as an .npz file ({one_line(exc)})") from exc
    readers: dict[str, _Reader] = {}
    with archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[: -len(".npy")]
            try:
                with archive.open(info) as stream:
                    shape, fortran, dtype = _read_npy_header(stream)
                    header_len = stream.tell()
                    if dtype.hasobject:
                        raise TrtqError(
                            f"{path}: array '{key}' holds Python objects, which trtq does not load "
                            "(allow_pickle=False)"
                        )
                    if info.file_size - header_len < _data_bytes(shape, dtype):
                        raise TrtqError(
                            f"{path}: array '{key}' is truncated: it holds {info.file_size - header_len} bytes "
                            f"of its {format_dims(shape)} {dtype} data"
                        )
                    if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
                        offset = _stored_member_offset(path, info) + header_len
                        readers[key] = _memory_map(path, offset, tuple(shape), dtype, fortran)
                    elif fortran:  # column-major rows cannot be streamed: the member is read whole
                        readers[key] = _MappedReader(tuple(shape), dtype, partial(_read_member, path, info.filename))
                    else:
                        readers[key] = _ZipStreamReader(path, info.filename, tuple(shape), dtype, header_len)
            except TrtqError:
                raise
            except Exception as exc:
                raise TrtqError(f"cannot read array '{key}' of {path} ({one_line(exc)})") from exc
    return readers


def _read_member(path: Path, member: str) -> np.ndarray:
    with zipfile.ZipFile(path) as archive, archive.open(member) as stream:
        return np.lib.format.read_array(stream, allow_pickle=False)


@dataclass
class _Shard:
    """One file: ``count`` samples for each fed input."""

    label: str
    path: Path
    count: int
    readers: dict[str, _Reader]
    coercers: dict[str, DtypeCoercer]

    def read(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows (sorted, local to this file) of input ``name``, in the model's dtype."""
        try:
            array = self.readers[name].read(rows)
        except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as exc:  # changed or corrupt data
            raise TrtqError(f"cannot read the data for input '{name}' from {self.path} ({one_line(exc)})") from exc
        return self.coercers[name](array)

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()


class ArraySource(BatchSource):
    """Batches sliced from memory-mapped or streamed arrays."""

    def __init__(
        self,
        kind: str,
        path: Path,
        shards: list[_Shard],
        specs: Sequence[InputSpec],
        selected: np.ndarray,
        batch_size: int,
        drop_last: bool,
        options: dict,
    ):
        self.kind, self.path, self.shards, self.specs = kind, path, shards, list(specs)
        self.selected = selected
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.total_samples = len(selected)
        self.samples_found = sum(s.count for s in shards)
        first = shards[0]
        self.input_shapes = {s.name: (batch_size, *first.readers[s.name].shape[1:]) for s in self.specs}
        self._offsets = np.cumsum([0] + [s.count for s in shards])
        self._options = options
        self._sha256: str | None = None
        of = f" of {self.samples_found}" if self.total_samples != self.samples_found else ""
        per_sample = ", ".join(
            f"{s.name} {first.readers[s.name].dtype}{format_dims(first.readers[s.name].shape[1:])}"
            for s in self.specs
        )
        self.description = f"{self.total_samples}{of} samples from {path} ({per_sample} per sample)"

    def with_selection(self, selected: np.ndarray) -> ArraySource:
        shard = copy.copy(self)
        shard.selected = np.asarray(selected, dtype=np.int64)
        shard.total_samples = len(shard.selected)
        shard.shards = [copy.copy(s) for s in self.shards]
        return shard

    @property
    def batch_count(self) -> int:
        full, rest = divmod(len(self.selected), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        done = 0  # the shards before this one are closed: the iteration has passed them
        try:
            for start in range(0, len(self.selected), self.batch_size):
                rows = self.selected[start : start + self.batch_size]
                if len(rows) < self.batch_size and self.drop_last:
                    break
                batch = self._batch(rows)
                end = start + self.batch_size
                next_row = self.selected[end] if end < len(self.selected) else self.samples_found
                while done < len(self.shards) and self._offsets[done + 1] <= next_row:
                    self.shards[done].close()
                    done += 1
                yield batch
        finally:
            for shard in self.shards:
                shard.close()

    def _batch(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        shard_of = np.searchsorted(self._offsets, rows, side="right") - 1
        pieces: list[tuple[_Shard, np.ndarray]] = []
        for shard_index in np.unique(shard_of):
            shard = self.shards[int(shard_index)]
            pieces.append((shard, rows[shard_of == shard_index] - self._offsets[shard_index]))
        batch = {}
        for spec in self.specs:
            parts = [shard.read(spec.name, local) for shard, local in pieces]
            batch[spec.name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return batch

    def provenance(self) -> dict:
        if self._sha256 is None:
            if self.path.is_file():
                self._sha256 = sha256_file(self.path)
            else:
                listing = "".join(f"{sha256_file(s.path)}  {s.label}\n" for s in self.shards)
                self._sha256 = hashlib.sha256(listing.encode()).hexdigest()
        return {
            "kind": self.kind,
            "path": str(self.path),
            "sha256": self._sha256,
            "files": [s.label for s in self.shards] if self.kind == "array_folder" else None,
            "samples_found": self.samples_found,
            "samples": self.total_samples,
            "batch_size": self.batch_size,
            **self._options,
        }


def open_array_source(
    path: Path,
    files: list[str] | None,
    specs: Sequence[InputSpec],
    expected_dims: dict[str, tuple[int | None, ...]],
    batch_size: int,
    drop_last: bool,
    max_samples: int | None,
    seed: int | None,
    options: dict,
    warn: Warn,
) -> ArraySource:
    """Open and validate every file (headers only): names, shapes, dtypes, sample counts."""
    names = [s.name for s in specs]
    entries = [(path.name, path)] if files is None else [(rel, path / rel) for rel in files]
    shards: list[_Shard] = []
    ignored: set[str] = set()
    for label, file in entries:
        if file.suffix.lower() == ".npy":
            if len(specs) != 1:
                raise TrtqError(
                    f"{file} holds one array but the model has {len(specs)} data inputs ({', '.join(names)}); "
                    "use an .npz file with one array per input"
                )
            readers = {names[0]: open_npy(file)}
        else:
            found = open_npz(file)
            missing = [n for n in names if n not in found]
            if missing:
                have = ", ".join(f"'{k}'" for k in found) or "none"
                raise TrtqError(
                    f"{file} has no array for input '{missing[0]}' (its arrays: {have}; "
                    f"the model's inputs: {', '.join(names)})"
                )
            ignored.update(k for k in found if k not in names)
            readers = {n: found[n] for n in names}
        shards.append(_validate_shard(label, file, readers, specs, expected_dims, warn))
    if ignored:
        warn(f"ignoring arrays that are not model inputs: {', '.join(sorted(ignored))}")

    first = shards[0]
    for shard in shards[1:]:
        for name in names:
            a, b = first.readers[name].shape[1:], shard.readers[name].shape[1:]
            if a != b:
                raise TrtqError(
                    f"input '{name}': samples in {shard.label} have shape {format_dims(b)} but those in "
                    f"{first.label} have {format_dims(a)}; all files must agree"
                )
    total = sum(s.count for s in shards)
    selected = select_indices(total, max_samples, seed)
    kind = "array_folder" if files is not None else path.suffix.lower().lstrip(".")
    if drop_last and len(selected) < batch_size:
        raise TrtqError(
            f"{path} gives {len(selected)} sample(s), fewer than the model's fixed batch of {batch_size}"
        )
    rest = len(selected) % batch_size
    if drop_last and rest:
        warn(f"dropping the last {rest} sample(s): the model fixes the batch size to {batch_size}")
    return ArraySource(kind, path, shards, specs, selected, batch_size, drop_last, options)


def _validate_shard(
    label: str,
    file: Path,
    readers: dict[str, _Reader],
    specs: Sequence[InputSpec],
    expected_dims: dict[str, tuple[int | None, ...]],
    warn: Warn,
) -> _Shard:
    counts = {}
    coercers = {}
    for spec in specs:
        reader = readers[spec.name]
        where = file.name if file.suffix.lower() == ".npy" else f"{file.name}['{spec.name}']"
        if len(reader.shape) == 0 or reader.shape[0] == 0:
            raise TrtqError(f"input '{spec.name}': {where} holds no samples (shape {format_dims(reader.shape)})")
        check_sample_dims(spec, expected_dims[spec.name], reader.shape, where, check_batch=False)
        coercers[spec.name] = DtypeCoercer(spec.name, reader.dtype, spec.dtype, where, warn)
        counts[spec.name] = reader.shape[0]
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"'{n}' {c}" for n, c in counts.items())
        raise TrtqError(f"the arrays in {file} hold different numbers of samples ({listed})")
    return _Shard(label, file, next(iter(counts.values())), readers, coercers)
