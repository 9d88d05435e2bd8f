"""TensorRT 10.x INT8 calibrators: real subclasses of ``trt.IInt8*Calibrator*`` fed by trtq's data.

TensorRT drives calibration by calling back into Python during ``build_serialized_network``:
``read_calibration_cache()`` (before and after calibrating), ``get_batch(names)`` until it returns
``None``, then ``write_calibration_cache(cache)``. The logic lives in :class:`CalibratorCore`, plain
Python; :func:`calibrator_class` combines it with the real TensorRT base class of the installed
version (calling the base ``__init__``, without which pybind11 refuses the object).

Contract kept here:

* ``get_batch`` copies the next batch into one device buffer per input, allocated once, and returns
  the pointers in the order of ``names``; ``None`` at the end. TensorRT swallows exceptions raised
  in a callback (it prints them and treats them as "no more data"), so a failure is stored in
  :attr:`CalibratorCore.failure` and re-raised by the builder after the build returns.
* A cache file is served only when its header is this TensorRT's version code and this calibrator's
  algorithm; anything else is reported and ignored (TensorRT recalibrates), never silently used.
* ``write_calibration_cache`` writes atomically; buffers are freed by :meth:`CalibratorCore.close`.
* ``--calibration-source trtq``: the calibrator serves a cache computed by trtq (``served_cache``)
  and no batch at all, which is how percentile and mse ranges reach a TensorRT 10.x engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import ModuleType

import numpy as np

from trtq.cache import ALGORITHM_NAMES, parse_cache, version_code
from trtq.errors import TrtqError
from trtq.fileio import atomic_write
from trtq.messages import warn as warn_user
from trtq.trt import CALIBRATOR_CLASSES, probe
from trtq.trt.cuda import CudaBackend, DeviceBuffers

Batch = Mapping[str, np.ndarray]
Warn = Callable[[str], None]


def _calibration_array(name: str, array: np.ndarray) -> np.ndarray:
    """What TensorRT reads from the buffer: float inputs as float32 (the calibrator's contract),
    index inputs (ints, bools) unchanged; always C-contiguous."""
    array = np.asarray(array)
    if array.dtype.kind == "f" and array.dtype != np.float32:
        array = array.astype(np.float32)
    elif array.dtype.kind not in "fiub":
        raise TrtqError(f"calibration input '{name}' has dtype {array.dtype}, which TensorRT cannot take")
    return np.ascontiguousarray(array)


def expected_header(trt_version: str, algorithm: str) -> str:
    """The cache header TensorRT ``trt_version`` accepts for ``algorithm``: ``TRT-101601-EntropyCalibration2``."""
    return f"TRT-{version_code(trt_version)}-{ALGORITHM_NAMES[algorithm]}"


def cache_status(path: Path, expected_header: str) -> tuple[bytes | None, str | None]:
    """``(bytes, None)`` when the cache at ``path`` may be used as is; ``(None, why)`` when it exists
    but must not be (unreadable, not a cache, other TensorRT version or algorithm); ``(None, None)``
    when there is no file yet."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot read calibration cache {path} ({exc.strerror}); calibrating"
    try:
        cache = parse_cache(data, source=str(path))
    except (TrtqError, UnicodeDecodeError) as exc:
        reason = str(exc) if isinstance(exc, TrtqError) else "binary data"
        return None, f"ignoring calibration cache {path}: {reason}; calibrating"
    if cache.header != expected_header:
        return None, (
            f"ignoring calibration cache {path}: it was written as {cache.header}, this build needs "
            f"{expected_header}; calibrating again (the file will be replaced)"
        )
    return data, None


class CalibratorCore:
    """The Python half of every trtq calibrator (see the module docstring for the contract)."""

    algorithm: str = "entropy2"

    def _setup(self, *, algorithm: str, trt_version: str, batches: Iterable[Batch] | None = None,
               backend: CudaBackend | None = None, input_shapes: Mapping[str, tuple[int, ...]] | None = None,
               cache_path: str | Path | None = None, served_cache: bytes | None = None,
               quantile: float = 0.9999, regression_cutoff: float = 0.5, warn: Warn = warn_user) -> None:
        if batches is not None and backend is None:
            raise TrtqError("calibration batches need a CUDA backend to reach the GPU")
        self.algorithm = algorithm
        self.expected_header = expected_header(trt_version, algorithm)
        self.cache_path = Path(cache_path) if cache_path else None
        self.served_cache = served_cache
        self.quantile = float(quantile)
        self.regression_cutoff = float(regression_cutoff)
        self.input_shapes = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
        self.warn = warn
        self.backend = backend
        self._buffers = DeviceBuffers(backend) if backend is not None else None
        self._batches: Iterator[Batch] | None = iter(batches) if batches is not None else None
        self._finished = batches is None
        self._warned: set[str] = set()
        self.failure: BaseException | None = None
        self.batches_served = 0
        self.samples_served = 0
        self.cache_used = False
        self.cache_written = False

    def _next_full_batch(self) -> Batch | None:
        """The next batch, skipping a last partial one: TensorRT calibrates at one fixed shape."""
        for batch in self._batches:
            short = [name for name, array in batch.items() if name in self.input_shapes
                     and np.ndim(array) and np.shape(array)[1:] == self.input_shapes[name][1:]
                     and np.shape(array)[0] < self.input_shapes[name][0]]
            if short:
                self._warn_once(f"skipped a partial batch of {np.shape(batch[short[0]])[0]} sample(s): TensorRT "
                                f"calibrates at the fixed shape {list(self.input_shapes[short[0]])}")
                continue
            return batch
        return None

    # -- TensorRT callbacks ---------------------------------------------------------------------

    def get_batch_size(self) -> int:
        """Deprecated by TensorRT 10 (implicit batch is gone); the batch is in the shapes."""
        return 1

    def get_batch(self, names: list[str]) -> list[int] | None:
        if self._finished:
            return None
        try:
            batch = self._next_full_batch()
            if batch is None:
                self._finished = True
                return None
            pointers = [self._copy_input(name, batch) for name in names]
        except BaseException as exc:  # TensorRT would swallow it: keep it for the builder
            self.failure = exc
            self._finished = True
            return None
        self.batches_served += 1
        first = np.asarray(batch[names[0]]) if names else None
        self.samples_served += int(first.shape[0]) if first is not None and first.ndim else 1
        return pointers

    def read_calibration_cache(self) -> bytes | None:
        if self.served_cache is not None:
            self.cache_used = True
            return self.served_cache
        if self.cache_path is None:
            return None
        data, problem = cache_status(self.cache_path, self.expected_header)
        if problem:
            self._warn_once(problem)
        if data is not None and self.batches_served == 0:
            self.cache_used = True
        return data

    def write_calibration_cache(self, cache) -> None:
        if self.cache_path is None:
            return
        try:
            atomic_write(self.cache_path, bytes(cache))
            self.cache_written = True
        except BaseException as exc:
            self.failure = self.failure or exc

    # -- legacy calibrator extras (used only by IInt8LegacyCalibrator) -------------------------------

    def get_quantile(self) -> float:
        return self.quantile

    def get_regression_cutoff(self) -> float:
        return self.regression_cutoff

    def read_histogram_cache(self, length) -> None:
        """TensorRT's histogram cache is an undocumented raw buffer; trtq does not keep one."""
        return None

    def write_histogram_cache(self, data, length) -> None:
        """See :meth:`read_histogram_cache`."""
        return None

    # -- trtq side ----------------------------------------------------------------------------

    def _copy_input(self, name: str, batch: Batch) -> int:
        if name not in batch:
            raise TrtqError(
                f"TensorRT asks for input '{name}' but the calibration batch has only: {', '.join(batch) or 'nothing'}"
            )
        array = _calibration_array(name, batch[name])
        expected = self.input_shapes.get(name)
        if expected is None:
            self.input_shapes[name] = expected = tuple(array.shape)  # the first batch fixes the shape
        if tuple(array.shape) != expected:
            raise TrtqError(
                f"calibration batch for input '{name}' has shape {list(array.shape)}, but TensorRT calibrates at "
                f"the opt shape {list(expected)} (set --opt-shapes or the data's batch size to match)"
            )
        ptr = self._buffers.get(name, array.nbytes)
        self.backend.memcpy_htod(ptr, array)
        return ptr

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            self.warn(message)

    def raise_failure(self) -> None:
        """Re-raise what went wrong inside a TensorRT callback, once the build has returned."""
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure

    def close(self) -> None:
        """Free the device buffers (idempotent)."""
        if self._buffers is not None:
            self._buffers.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _base_classes(trt: ModuleType) -> dict[str, type]:
    """The real TensorRT base class per trtq calibrator name (TensorRT 10.x only): the classes that
    :data:`trtq.trt.CALIBRATOR_CLASSES` names, spelled out as ``trt.X`` so that the API-conformance
    scanner (tests/trt_api_checks.py) checks each one against the real bindings."""
    return {
        "entropy2": trt.IInt8EntropyCalibrator2,
        "entropy": trt.IInt8EntropyCalibrator,
        "minmax": trt.IInt8MinMaxCalibrator,
        "legacy": trt.IInt8LegacyCalibrator,
    }


_classes: dict[tuple[int, str], type] = {}


def calibrator_class(trt: ModuleType, algorithm: str) -> type:
    """``Trtq<Base>``: :class:`CalibratorCore` on top of the installed TensorRT's calibrator class."""
    key = (id(trt), algorithm)
    if key in _classes:
        return _classes[key]
    if algorithm not in CALIBRATOR_CLASSES:
        raise TrtqError(f"TensorRT has no '{algorithm}' calibrator (choose from {', '.join(CALIBRATOR_CLASSES)})")
    try:
        base = _base_classes(trt)[algorithm]
    except AttributeError as exc:
        raise TrtqError(
            f"TensorRT {getattr(trt, '__version__', '?')} has no INT8 calibrator classes "
            "(removed in TensorRT 11; trtq builds INT8 there from Q/DQ)"
        ) from exc

    def __init__(self, **options) -> None:
        base.__init__(self)  # mandatory: pybind11 needs the C++ half constructed
        CalibratorCore._setup(self, algorithm=algorithm, **options)

    cls = type(f"Trtq{base.__name__}", (CalibratorCore, base), {"__init__": __init__, "__module__": __name__})
    _classes[key] = cls
    return cls


def make_calibrator(trt: ModuleType, algorithm: str, **options) -> CalibratorCore:
    """A calibrator instance for ``algorithm``; ``options`` are those of :meth:`CalibratorCore._setup`."""
    options.setdefault("trt_version", probe(trt).patch_version)
    return calibrator_class(trt, algorithm)(**options)
