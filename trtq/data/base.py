"""What every data source shares: the :class:`BatchSource` interface, sample selection,
batch-size resolution and dtype coercion.

Conventions (the same for every source, so ``calibrate``, ``build`` and ``evaluate`` agree):

* A sample is one slice along axis 0 of the model input; a batch stacks ``batch_size`` samples.
* ``--max-samples N`` takes the first N samples; with ``--seed S`` it takes a random subset of N
  drawn from the whole source (numpy ``default_rng(S)``), kept in source order: calibration
  statistics do not depend on order, and in-order reads keep memory-mapped files sequential.
* The last partial batch is fed when the model's batch dimension is dynamic and dropped (with a
  warning) when the model fixes it, because a fixed-batch model cannot take a smaller batch.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from trtq.errors import TrtqError, first_line
from trtq.messages import warn
from trtq.model import InputSpec

Warn = Callable[[str], None]


default_warn = warn  # the data sources' warnings, unless a caller passes its own


class BatchSource(abc.ABC):
    """A re-iterable stream of batches ``{input name: array}`` (C-contiguous, model dtypes).

    Nothing is loaded up front: each iteration reads the data again, one batch at a time.
    """

    description: str
    total_samples: int | None
    batch_size: int
    skipped: int = 0
    input_shapes: dict[str, tuple[int, ...]]

    @abc.abstractmethod
    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        """Yield batches; every call starts again from the first sample."""

    @abc.abstractmethod
    def provenance(self) -> dict:
        """JSON-serialisable record of what was fed (kind, path, hashes, options)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.description}>"

    def with_selection(self, selected: np.ndarray) -> BatchSource:
        """A copy that feeds only ``selected`` (positions in the whole source, sorted): a shard of the run.

        Sources that select samples by index (arrays, image folders) can; a data-loader script cannot."""
        raise TrtqError(f"{self.description} cannot be split by sample index")


def shard_selection(selected: np.ndarray, batch_size: int, parts: int) -> list[np.ndarray]:
    """``selected`` cut into at most ``parts`` runs of whole batches, in order: each shard feeds exactly the
    batches the whole run feeds (the last partial batch stays last), so the same batches reach the model."""
    batches = -(-len(selected) // batch_size)
    parts = max(1, min(parts, batches))
    bounds = [round(k * batches / parts) * batch_size for k in range(parts + 1)]
    return [selected[bounds[k]:bounds[k + 1]] for k in range(parts) if bounds[k] < len(selected)]


def format_dims(dims: Sequence[int | None]) -> str:
    """``(None, 3, 224, 224)`` -> ``[?,3,224,224]`` for messages."""
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"


def select_indices(total: int, max_samples: int | None, seed: int | None) -> np.ndarray:
    """Indices (sorted) of the samples to feed, out of ``total``."""
    if max_samples is None or max_samples >= total:
        return np.arange(total, dtype=np.int64)
    if seed is None:
        return np.arange(max_samples, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=max_samples, replace=False)).astype(np.int64)


def resolve_batch_size(
    fed: Sequence[InputSpec], shapes: dict[str, tuple[int, ...]], batch_size: int | None
) -> tuple[int, bool]:
    """The batch size and whether the model fixes it (then partial batches cannot be fed).

    Precedence: ``--batch-size``, then the model's fixed batch, then the batch in ``--shapes``, then 1.
    All of them must agree where more than one is given.
    """
    fixed = {s.name: s.dims[0] for s in fed if s.dims and s.dims[0] is not None}
    from_shapes = {name: shapes[name][0] for name in (s.name for s in fed) if shapes.get(name)}
    if len(set(fixed.values())) > 1:
        listed = ", ".join(f"'{n}' fixes {b}" for n, b in fixed.items())
        raise TrtqError(f"the model's inputs disagree on the batch size ({listed}); trtq feeds one batch size")
    if batch_size is not None:
        for name, value in fixed.items():
            if value != batch_size:
                raise TrtqError(
                    f"--batch-size {batch_size} conflicts with input '{name}', "
                    f"whose batch dimension the model fixes to {value}"
                )
        for name, value in from_shapes.items():
            if value != batch_size:
                raise TrtqError(
                    f"--batch-size {batch_size} conflicts with --shapes, which gives input '{name}' "
                    f"a batch of {value}"
                )
        return batch_size, bool(fixed)
    if fixed:
        return next(iter(fixed.values())), True
    if len(set(from_shapes.values())) > 1:
        raise TrtqError("--shapes gives the inputs different batch sizes; trtq feeds one batch size")
    if from_shapes:
        return next(iter(from_shapes.values())), False
    return 1, False


class SentWithPlainWarnings:
    """Copied or pickled (a shard sent to a Ray worker), the object warns through :data:`default_warn`: the
    caller's warning callback may hold anything (a whole pipeline run) and stays with the caller, who already
    warned while opening the data."""

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if "_warn" in state:
            state["_warn"] = default_warn
        return state


class DtypeCoercer(SentWithPlainWarnings):
    """Casts data to the model's dtype where that loses nothing the model can tell apart.

    * same dtype, or a safe cast (int32 -> int64, uint8 -> float32): cast silently;
    * float -> narrower float (float64 -> float32) and int -> float: cast, one warning;
    * int -> narrower int (int64 token ids -> int32): cast after checking every batch fits;
    * anything else (float data for an integer input, complex, strings): an error.
    """

    def __init__(self, name: str, source: np.dtype, target: np.dtype, where: str, warn: Warn):
        self.name, self.source, self.target, self.where = name, np.dtype(source), np.dtype(target), where
        self._warn = warn
        self._warned = False
        self.mode = self._classify()

    def _classify(self) -> str:
        src, dst = self.source, self.target
        if src == dst:
            return "same"
        if src.hasobject or src.kind not in "biuf" or dst.kind not in "biuf":
            raise self._incompatible()
        if np.can_cast(src, dst, casting="safe"):
            return "safe"
        if src.kind in "iu" and dst.kind in "iu":
            return "checked"
        if dst.kind == "f" and src.kind in "biuf":
            return "lossy"
        raise self._incompatible()

    def _incompatible(self) -> TrtqError:
        return TrtqError(
            f"input '{self.name}' of the model is {self.target} but {self.where} holds {self.source}; "
            f"convert the data to {self.target}"
        )

    def __call__(self, array: np.ndarray) -> np.ndarray:
        if self.mode == "same":
            return np.ascontiguousarray(array)
        if self.mode == "lossy" and not self._warned:
            self._warned = True
            self._warn(f"casting {self.source} data from {self.where} to {self.target} for input '{self.name}'")
        if self.mode == "checked" and array.size:
            info = np.iinfo(self.target)
            low, high = int(array.min()), int(array.max())
            if low < info.min or high > info.max:
                raise TrtqError(
                    f"input '{self.name}' of the model is {self.target} but {self.where} holds {self.source} "
                    f"values from {low} to {high}, outside the {self.target} range"
                )
        return np.ascontiguousarray(array, dtype=self.target)


def check_sample_dims(
    spec: InputSpec, expected: tuple[int | None, ...], actual: tuple[int, ...], where: str, *, check_batch: bool
) -> None:
    """Compare data dims with the model's (after ``--shapes``); the message names both shapes."""
    if not expected:  # the model declares no shape for this input: the data decides
        return
    if len(actual) != len(expected):
        raise TrtqError(
            f"input '{spec.name}': {where} has shape {format_dims(actual)} ({len(actual)} dimensions) "
            f"but the model expects {format_dims(expected)} ({len(expected)} dimensions)"
        )
    for axis, (want, got) in enumerate(zip(expected, actual, strict=True)):
        if axis == 0 and not check_batch:
            continue
        if want is not None and want != got:
            raise TrtqError(
                f"input '{spec.name}': {where} has shape {format_dims(actual)} "
                f"but the model expects {format_dims(expected)} (dimension {axis} differs)"
            )


def one_line(exc: BaseException) -> str:
    """``ValueError: first line of the message`` for error messages that must stay one line."""
    name = type(exc).__name__
    return f"{name}: {first_line(exc)}" if str(exc).strip() else name
