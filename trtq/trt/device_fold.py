"""Statistics folded on the GPU: captured tensors stay in device memory and are reduced there with CuPy.

``trtq calibrate --device cuda`` runs the capture in onnxruntime-gpu. Without this module every captured
tensor is copied to the host (onnxruntime's ``session.run`` returns numpy arrays) and folded by the CPU,
which then bounds the calibration. With it (``pip install 'trtq[device-stats]'``: CuPy), the capture binds
its outputs to the device (IO binding) and hands the collector :class:`DeviceTensor` objects: each is
reduced on the GPU by :func:`trtq.array_stats.batch_stats` (min, max, counts and the 16,384-bin histogram
come back, 128 KiB), and merged into the host statistics, the same bits as a host fold.

Not verified on a GPU by this project yet: no GPU with CuPy was available where it was written. The CPU side
(the reduction with numpy, the merge, the fallbacks) is tested; ``tests/test_array_stats.py`` holds the
``gpu``-marked test that compares device and host statistics byte for byte where CuPy sees a GPU.
"""

from __future__ import annotations

import importlib
import threading

import numpy as np

from trtq.errors import MissingDependencyError, TrtqError, first_line

_lock = threading.Lock()
_cupy = None


def load_cupy():
    """CuPy, imported once; a one-line error when it is missing or sees no GPU."""
    global _cupy
    with _lock:
        if _cupy is None:
            try:
                cupy = importlib.import_module("cupy")
            except ImportError as exc:
                raise MissingDependencyError("cupy", "device-stats",
                                             "folding statistics on the GPU (--device cuda)") from exc
            try:
                if cupy.cuda.runtime.getDeviceCount() < 1:
                    raise TrtqError("folding statistics on the GPU: CuPy sees no GPU")
            except TrtqError:
                raise
            except Exception as exc:  # noqa: BLE001 - CUDA's own errors: one line
                raise TrtqError(f"folding statistics on the GPU: {first_line(exc)}") from exc
            _cupy = cupy
    return _cupy


def require_cupy() -> None:
    """Raise the one-line error of :func:`load_cupy` when CuPy cannot fold here (before any work)."""
    load_cupy()


def cupy_available() -> bool:
    """Whether CuPy imports and sees a GPU (``--device cuda`` folds on the GPU only then)."""
    try:
        load_cupy()
    except TrtqError:
        return False
    return True


_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
FOLDABLE_TYPES = frozenset(_DTYPES)  # onnxruntime's output types a DeviceTensor takes (CuPy has no bfloat16)


class DeviceTensor:
    """One captured tensor in device memory (an onnxruntime ``OrtValue`` on CUDA), reduced where it lives.

    Keeps the ``OrtValue`` alive until it is folded: the CuPy array only borrows its memory."""

    def __init__(self, ortvalue, element_type: str):
        if element_type not in _DTYPES:
            raise TrtqError(f"cannot fold a {element_type} tensor on the device")
        self.ortvalue = ortvalue
        self.dtype = np.dtype(_DTYPES[element_type])
        self.shape = tuple(ortvalue.shape())

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def as_cupy(self):
        """The tensor as a CuPy array over onnxruntime's memory (no copy)."""
        cupy = load_cupy()
        size = self.nbytes
        memory = cupy.cuda.UnownedMemory(self.ortvalue.data_ptr(), size, self.ortvalue)
        return cupy.ndarray(self.shape, self.dtype, cupy.cuda.MemoryPointer(memory, 0))

    def fold_into(self, stats, weight: int = 1) -> None:
        """Merge this tensor's statistics into ``stats`` (a :class:`trtq.stats.TensorStats`)."""
        from trtq.array_stats import batch_stats

        cupy = load_cupy()
        try:
            batch = batch_stats(cupy, stats.name, self.as_cupy(), stats.keep_histogram, weight)
        except Exception as exc:  # noqa: BLE001 - CUDA's errors (out of memory, a lost device): one line
            raise TrtqError(f"folding tensor '{stats.name}' on the GPU failed: {first_line(exc)}") from exc
        stats.merge(batch)
        self.ortvalue = None  # onnxruntime may reuse the memory now

    def numpy(self) -> np.ndarray:
        """A host copy (for a tensor a later graph segment reads, or a check)."""
        return np.asarray(self.ortvalue.numpy())
