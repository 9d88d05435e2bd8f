"""``--data-loader-script file.py[:func]``: a Python function that yields feed dicts.

The convention is Polygraphy's: the function (default ``load_data``) takes no arguments and
returns an iterable (usually it is a generator) of dicts ``{input name: array}``. Each dict is one
**full batch as given**: its arrays include the batch dimension. trtq checks every batch against
the model (names, rank, fixed dimensions, dtype) and casts where that is safe
(see :class:`trtq.data.base.DtypeCoercer`).

To iterate again, trtq calls the function again; the first iteration reuses the batch that
``open_batches`` pulled to validate the script.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from trtq.data.base import BatchSource, DtypeCoercer, Warn, check_sample_dims, one_line
from trtq.errors import TrtqError
from trtq.fileio import sha256_file
from trtq.model import InputSpec

DEFAULT_FUNCTION = "load_data"


def parse_script_spec(spec: str) -> tuple[Path, str]:
    """``"dl.py:make"`` -> ``(Path("dl.py"), "make")``; a drive letter's colon is not a separator."""
    head, sep, tail = spec.rpartition(":")
    if sep and head and tail.isidentifier():
        return Path(head), tail
    return Path(spec), DEFAULT_FUNCTION


def load_function(path: Path, function: str, what: str = "data loader script") -> Callable[..., object]:
    """Import the script as a module (its folder on ``sys.path`` meanwhile) and return the function.

    ``what`` names the script in errors (a data loader, a ``--metric`` script)."""
    if not path.is_file():
        raise TrtqError(f"{what} not found: {path}")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"trtq_data_loader_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise TrtqError(f"cannot load {path} as a Python script ({what})")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling inside the script look it up
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(module_name, None)
        raise TrtqError(f"{what} {path} failed on import: {one_line(exc)}") from exc
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    func = getattr(module, function, None)
    if func is None:
        raise TrtqError(f"{what} {path} defines no function '{function}'")
    if not callable(func):
        raise TrtqError(f"'{function}' in {what} {path} is not a function")
    return func


class ScriptSource(BatchSource):
    """Batches from a user's data-loader function, checked against the model as they come."""

    def __init__(
        self,
        path: Path,
        function: str,
        func: Callable[[], Iterable],
        specs: Sequence[InputSpec],
        expected_dims: dict[str, tuple[int | None, ...]],
        batch_size: int | None,
        max_samples: int | None,
        options: dict,
        warn: Warn,
    ):
        self.path, self.function, self._func = path, function, func
        self.specs = list(specs)
        self.expected_dims = expected_dims
        self.max_samples = max_samples
        self.total_samples = None
        self._options = options
        self._warn = warn
        self._coercers: dict[tuple[str, np.dtype], DtypeCoercer] = {}
        self._drop_warned = False
        self.label = f"{path}:{function}"
        # Pull the first batch now: a broken script fails before any long work starts.
        iterator = self._start()
        first = self._next(iterator, 0)
        if first is None:
            raise TrtqError(f"data loader script {self.label} yields no batches")
        first = self._check(first, 0)
        self.batch_size = self._samples(first)
        if batch_size is not None and batch_size != self.batch_size:
            raise TrtqError(
                f"--batch-size {batch_size} does not match the script's batches, whose input '{self.specs[0].name}' "
                f"has {self.batch_size} sample(s); the script decides its batch size"
            )
        self.input_shapes = {name: tuple(array.shape) for name, array in first.items()}
        self._pending: tuple[dict[str, np.ndarray], Iterator] | None = (first, iterator)
        self.description = f"batches from data loader script {self.label}"

    def _start(self) -> Iterator:
        try:
            produced = self._func()
        except Exception as exc:
            raise TrtqError(f"data loader script {self.label} raised {one_line(exc)}") from exc
        try:
            return iter(produced)
        except TypeError as exc:
            raise TrtqError(
                f"data loader script {self.label} returned {type(produced).__name__}, "
                "expected an iterable of dicts {input name: array}"
            ) from exc

    def _next(self, iterator: Iterator, index: int):
        try:
            return next(iterator)
        except StopIteration:
            return None
        except Exception as exc:
            raise TrtqError(
                f"data loader script {self.label} raised {one_line(exc)} (while producing batch {index})"
            ) from exc

    def _check(self, feed, index: int) -> dict[str, np.ndarray]:
        if not isinstance(feed, Mapping):
            raise TrtqError(
                f"data loader script {self.label} yielded a {type(feed).__name__} as batch {index}; "
                "expected a dict {input name: array}"
            )
        names = [s.name for s in self.specs]
        for name in names:
            if name not in feed:
                have = ", ".join(f"'{k}'" for k in feed) or "nothing"
                raise TrtqError(
                    f"batch {index} from data loader script {self.label} has no array for input '{name}' "
                    f"(it has {have})"
                )
        extra = [str(k) for k in feed if k not in names]
        if extra:
            raise TrtqError(
                f"batch {index} from data loader script {self.label} has '{extra[0]}', which is not an "
                f"input of the model (its inputs: {', '.join(names)})"
            )
        batch = {}
        for spec in self.specs:
            try:
                array = np.asarray(feed[spec.name])
            except Exception as exc:
                raise TrtqError(
                    f"batch {index} from data loader script {self.label}: input '{spec.name}' is not an "
                    f"array ({one_line(exc)})"
                ) from exc
            where = f"batch {index} from {self.label}"
            check_sample_dims(
                spec, self.expected_dims[spec.name], tuple(array.shape), where,
                check_batch=bool(spec.dims) and spec.dims[0] is not None,
            )
            key = (spec.name, array.dtype)
            if key not in self._coercers:
                self._coercers[key] = DtypeCoercer(spec.name, array.dtype, spec.dtype, where, self._warn)
            batch[spec.name] = self._coercers[key](array)
        return batch

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if self._pending is not None:
            first, iterator = self._pending
            self._pending = None
            batches = itertools.chain([first], self._checked(iterator, 1))
        else:
            batches = self._checked(self._start(), 0)
        fed = 0
        dynamic = not (self.specs[0].dims and self.specs[0].dims[0] is not None)
        for batch in batches:
            count = self._samples(batch)
            if self.max_samples is not None and fed + count > self.max_samples:
                room = self.max_samples - fed
                if room > 0 and dynamic:
                    yield {name: np.ascontiguousarray(a[:room]) for name, a in batch.items()}
                elif room > 0 and not self._drop_warned:
                    self._drop_warned = True
                    self._warn(f"--max-samples {self.max_samples} ends inside a batch of the fixed size "
                               f"{count}; dropping that batch")
                return
            fed += count
            yield batch
            if self.max_samples is not None and fed >= self.max_samples:
                return

    def _samples(self, batch: dict[str, np.ndarray]) -> int:
        """Samples in a batch: the first input's leading dimension."""
        lead = batch[self.specs[0].name]
        return int(lead.shape[0]) if lead.ndim else 1

    def _checked(self, iterator: Iterator, start: int) -> Iterator[dict[str, np.ndarray]]:
        for index in itertools.count(start):
            feed = self._next(iterator, index)
            if feed is None:
                return
            yield self._check(feed, index)

    def provenance(self) -> dict:
        return {
            "kind": "script",
            "path": str(self.path),
            "function": self.function,
            "sha256": sha256_file(self.path),
            "batch_size": self.batch_size,
            "shapes": {name: list(shape) for name, shape in self.input_shapes.items()},
            **self._options,
        }

