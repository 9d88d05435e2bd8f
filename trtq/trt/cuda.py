"""Device memory, streams, events and CUDA graphs behind one small interface, two backends.

* ``cuda-python`` — NVIDIA's maintained binding (``cuda.bindings.runtime``, older releases
  ``cuda.cudart``), binary wheels, the runtime API that TensorRT itself uses. Every call returns a
  tuple ``(err, *values)``; :meth:`CudaPythonBackend._call` turns a non-success code into a one-line
  :class:`CudaError`.
* ``pycuda`` — the driver-API binding many TensorRT samples use. It works in the device's *primary*
  context (``retain_primary_context``), the same context the CUDA runtime and therefore TensorRT use,
  so pointers and streams can be handed to TensorRT.

Handles: device pointers and streams are plain ``int`` (what TensorRT's ``get_batch`` and
``execute_async_v3`` take); events and executable graphs are opaque objects of the backend.
Nothing touches the GPU until the first call, so :func:`get_backend` works on any machine and the
"no GPU" error appears only when memory is really needed.
"""

from __future__ import annotations

import abc
import atexit
import importlib
import importlib.util
import threading
from typing import Any

import numpy as np

from trtq.errors import MissingDependencyError, TrtqError, first_line
from trtq.versions import package_version

BACKENDS = ("cuda-python", "pycuda")
_NO_GPU_CODES = {
    "cudaErrorInsufficientDriver", "cudaErrorNoDevice", "cudaErrorDevicesUnavailable",
    "cudaErrorSystemDriverMismatch", "cudaErrorCompatNotSupportedOnDevice", "cudaErrorInitializationError",
    "CUDA_ERROR_NO_DEVICE", "CUDA_ERROR_NOT_INITIALIZED", "CUDA_ERROR_INVALID_DEVICE",
}
NO_GPU_HINT = "`trtq calibrate` and `trtq export` work without a GPU"


class CudaError(TrtqError):
    """A CUDA call failed; the message names the call and CUDA's own explanation."""


def _no_gpu_or_error(what: str, code: str, description: str) -> CudaError:
    if code in _NO_GPU_CODES or "no CUDA-capable device" in description or "driver" in description.lower():
        return CudaError(f"no usable NVIDIA GPU: {description} ({code}, in {what}); {NO_GPU_HINT}")
    return CudaError(f"CUDA error in {what}: {code}: {description}")


def _version_text(code: int) -> str:
    """CUDA's integer versions (12040) as text (12.4)."""
    return f"{code // 1000}.{(code % 1000) // 10}" if code else "none"


def _writable_host(host_array: np.ndarray) -> np.ndarray:
    if not (isinstance(host_array, np.ndarray) and host_array.flags.c_contiguous and host_array.flags.writeable):
        raise ValueError("memcpy_dtoh needs a C-contiguous, writable numpy array as destination")
    return host_array


class CudaBackend(abc.ABC):
    """The operations trtq needs from CUDA; both backends implement these (and ``event_query``)."""

    name: str

    @abc.abstractmethod
    def malloc(self, nbytes: int) -> int: ...

    @abc.abstractmethod
    def free(self, ptr: int) -> None: ...

    @abc.abstractmethod
    def memcpy_htod(self, dst_ptr: int, host_array: np.ndarray, stream: int | None = None) -> None: ...

    @abc.abstractmethod
    def memcpy_dtoh(self, host_array: np.ndarray, src_ptr: int, stream: int | None = None) -> None: ...

    @abc.abstractmethod
    def stream_create(self) -> int: ...

    @abc.abstractmethod
    def stream_synchronize(self, stream: int) -> None: ...

    @abc.abstractmethod
    def stream_destroy(self, stream: int) -> None: ...

    @abc.abstractmethod
    def event_create(self) -> Any: ...

    @abc.abstractmethod
    def event_record(self, event: Any, stream: int | None) -> None: ...

    @abc.abstractmethod
    def event_synchronize(self, event: Any) -> None: ...

    @abc.abstractmethod
    def event_elapsed_ms(self, start: Any, end: Any) -> float: ...

    @abc.abstractmethod
    def event_destroy(self, event: Any) -> None: ...

    @abc.abstractmethod
    def graph_capture_begin(self, stream: int) -> None: ...

    @abc.abstractmethod
    def graph_capture_end(self, stream: int) -> Any: ...

    @abc.abstractmethod
    def graph_launch(self, graph_exec: Any, stream: int) -> None: ...

    @abc.abstractmethod
    def graph_destroy(self, graph_exec: Any) -> None: ...

    @abc.abstractmethod
    def device_info(self) -> dict: ...


class CudaPythonBackend(CudaBackend):
    """cuda-python's runtime API (``cuda.bindings.runtime``; ``cuda.cudart`` before 12.6)."""

    name = "cuda-python"

    def __init__(self) -> None:
        self.rt = _import_first(("cuda.bindings.runtime", "cuda.cudart"), "cuda-python", "trt")

    def _call(self, what: str, result: tuple) -> Any:
        err = result[0]
        if int(err) != 0:
            name_result = self.rt.cudaGetErrorName(err)
            text_result = self.rt.cudaGetErrorString(err)
            code = _text(name_result[1]) if int(name_result[0]) == 0 else str(err)
            description = _text(text_result[1]) if int(text_result[0]) == 0 else code
            if code == "cudaErrorInsufficientDriver":
                raise self._driver_error(what)
            raise _no_gpu_or_error(what, code, description)
        values = result[1:]
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    def _driver_error(self, what: str) -> CudaError:
        """Insufficient driver means either no driver at all, or one older than this cuda-python."""
        result = self.rt.cudaDriverGetVersion()
        driver = int(result[1]) if int(result[0]) == 0 and len(result) > 1 else 0
        if driver == 0:
            return CudaError(f"no usable NVIDIA GPU: no NVIDIA driver found (cudaErrorInsufficientDriver, in {what}); "
                             f"{NO_GPU_HINT}")
        version = package_version("cuda-python", "cuda-bindings") or "?"
        major = driver // 1000
        return CudaError(
            f"the NVIDIA driver supports CUDA {_version_text(driver)}, older than cuda-python {version} needs "
            f"(in {what}); install a matching release, e.g. pip install 'cuda-python<{major + 1}'"
        )

    def malloc(self, nbytes: int) -> int:
        return int(self._call("cudaMalloc", self.rt.cudaMalloc(int(nbytes))))

    def free(self, ptr: int) -> None:
        self._call("cudaFree", self.rt.cudaFree(int(ptr)))

    def memcpy_htod(self, dst_ptr: int, host_array: np.ndarray, stream: int | None = None) -> None:
        host = np.ascontiguousarray(host_array)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        if stream is None:
            self._call("cudaMemcpy", self.rt.cudaMemcpy(int(dst_ptr), host.ctypes.data, host.nbytes, kind))
        else:
            self._call("cudaMemcpyAsync",
                       self.rt.cudaMemcpyAsync(int(dst_ptr), host.ctypes.data, host.nbytes, kind, int(stream)))

    def memcpy_dtoh(self, host_array: np.ndarray, src_ptr: int, stream: int | None = None) -> None:
        host = _writable_host(host_array)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        if stream is None:
            self._call("cudaMemcpy", self.rt.cudaMemcpy(host.ctypes.data, int(src_ptr), host.nbytes, kind))
        else:
            self._call("cudaMemcpyAsync",
                       self.rt.cudaMemcpyAsync(host.ctypes.data, int(src_ptr), host.nbytes, kind, int(stream)))

    def stream_create(self) -> int:
        return int(self._call("cudaStreamCreate", self.rt.cudaStreamCreate()))

    def stream_synchronize(self, stream: int) -> None:
        self._call("cudaStreamSynchronize", self.rt.cudaStreamSynchronize(int(stream)))

    def stream_destroy(self, stream: int) -> None:
        self._call("cudaStreamDestroy", self.rt.cudaStreamDestroy(int(stream)))

    def event_create(self) -> Any:
        return self._call("cudaEventCreate", self.rt.cudaEventCreate())

    def event_record(self, event: Any, stream: int | None) -> None:
        self._call("cudaEventRecord", self.rt.cudaEventRecord(event, int(stream or 0)))

    def event_synchronize(self, event: Any) -> None:
        self._call("cudaEventSynchronize", self.rt.cudaEventSynchronize(event))

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._call("cudaEventElapsedTime", self.rt.cudaEventElapsedTime(start, end)))

    def event_query(self, event: Any) -> bool:
        """True once the work before the event has finished (for spin-waiting)."""
        result = self.rt.cudaEventQuery(event)
        if result[0] == self.rt.cudaError_t.cudaErrorNotReady:
            return False
        self._call("cudaEventQuery", result)
        return True

    def event_destroy(self, event: Any) -> None:
        self._call("cudaEventDestroy", self.rt.cudaEventDestroy(event))

    def graph_capture_begin(self, stream: int) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._call("cudaStreamBeginCapture", self.rt.cudaStreamBeginCapture(int(stream), mode))

    def graph_capture_end(self, stream: int) -> Any:
        graph = self._call("cudaStreamEndCapture", self.rt.cudaStreamEndCapture(int(stream)))
        try:
            return self._call("cudaGraphInstantiate", self.rt.cudaGraphInstantiate(graph, 0))
        finally:
            self.rt.cudaGraphDestroy(graph)  # the executable graph keeps what it needs

    def graph_launch(self, graph_exec: Any, stream: int) -> None:
        self._call("cudaGraphLaunch", self.rt.cudaGraphLaunch(graph_exec, int(stream)))

    def graph_destroy(self, graph_exec: Any) -> None:
        self._call("cudaGraphExecDestroy", self.rt.cudaGraphExecDestroy(graph_exec))

    def device_info(self) -> dict:
        device = int(self._call("cudaGetDevice", self.rt.cudaGetDevice()))
        props = self._call("cudaGetDeviceProperties", self.rt.cudaGetDeviceProperties(device))
        driver = int(self._call("cudaDriverGetVersion", self.rt.cudaDriverGetVersion()))
        runtime = int(self._call("cudaRuntimeGetVersion", self.rt.cudaRuntimeGetVersion()))
        return {
            "name": _text(props.name),
            "compute_capability": f"{props.major}.{props.minor}",
            "driver_version": _version_text(driver),
            "cuda_runtime_version": _version_text(runtime),
        }


class PycudaBackend(CudaBackend):
    """pycuda's driver API in the device's primary context (shared with the CUDA runtime / TensorRT)."""

    name = "pycuda"

    def __init__(self) -> None:
        self.driver = _import_first(("pycuda.driver",), "pycuda", "pycuda")
        self._context = None
        self._lock = threading.Lock()
        self._allocations: dict[int, Any] = {}
        self._streams: dict[int, Any] = {}

    def _ensure_context(self) -> None:
        with self._lock:
            if self._context is not None:
                return
            try:
                self.driver.init()
                context = self.driver.Device(0).retain_primary_context()
                context.push()
            except self.driver.Error as exc:
                raise self._error("cuInit/retain_primary_context", exc) from exc
            self._context = context
            atexit.register(_pop_context, self.driver, context)

    def _error(self, what: str, exc: BaseException) -> CudaError:
        text = str(exc).strip() or type(exc).__name__
        code = text.split(":")[-1].strip() if ":" in text else type(exc).__name__
        return _no_gpu_or_error(what, code, text)

    def _call(self, what: str, fn, *args) -> Any:
        self._ensure_context()
        try:
            return fn(*args)
        except self.driver.Error as exc:
            raise self._error(what, exc) from exc

    def _stream(self, stream: int | None) -> Any:
        if stream is None:
            return None
        try:
            return self._streams[int(stream)]
        except KeyError as exc:
            raise ValueError(f"stream {stream} was not created by this backend") from exc

    def malloc(self, nbytes: int) -> int:
        allocation = self._call("mem_alloc", self.driver.mem_alloc, int(nbytes))
        ptr = int(allocation)
        self._allocations[ptr] = allocation
        return ptr

    def free(self, ptr: int) -> None:
        allocation = self._allocations.pop(int(ptr), None)
        if allocation is None:
            raise ValueError(f"device pointer {ptr:#x} was not allocated by this backend")
        self._call("DeviceAllocation.free", allocation.free)

    def memcpy_htod(self, dst_ptr: int, host_array: np.ndarray, stream: int | None = None) -> None:
        host = np.ascontiguousarray(host_array)
        if stream is None:
            self._call("memcpy_htod", self.driver.memcpy_htod, int(dst_ptr), host)
        else:
            self._call("memcpy_htod_async", self.driver.memcpy_htod_async, int(dst_ptr), host, self._stream(stream))

    def memcpy_dtoh(self, host_array: np.ndarray, src_ptr: int, stream: int | None = None) -> None:
        host = _writable_host(host_array)
        if stream is None:
            self._call("memcpy_dtoh", self.driver.memcpy_dtoh, host, int(src_ptr))
        else:
            self._call("memcpy_dtoh_async", self.driver.memcpy_dtoh_async, host, int(src_ptr), self._stream(stream))

    def stream_create(self) -> int:
        stream = self._call("Stream", self.driver.Stream)
        self._streams[int(stream.handle)] = stream
        return int(stream.handle)

    def stream_synchronize(self, stream: int) -> None:
        self._call("Stream.synchronize", self._stream(stream).synchronize)

    def stream_destroy(self, stream: int) -> None:
        self._streams.pop(int(stream), None)  # pycuda destroys the stream when the object goes

    def event_create(self) -> Any:
        return self._call("Event", self.driver.Event)

    def event_record(self, event: Any, stream: int | None) -> None:
        self._call("Event.record", event.record, self._stream(stream))

    def event_synchronize(self, event: Any) -> None:
        self._call("Event.synchronize", event.synchronize)

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._call("Event.time_till", start.time_till, end))

    def event_query(self, event: Any) -> bool:
        """True once the work before the event has finished (for spin-waiting)."""
        return bool(self._call("Event.query", event.query))

    def event_destroy(self, event: Any) -> None:
        """pycuda frees events when the object is garbage collected; nothing to call."""

    def graph_capture_begin(self, stream: int) -> None:
        handle = self._stream(stream)
        if not hasattr(handle, "begin_capture"):
            raise CudaError("CUDA graph capture needs pycuda 2022.2 or newer, or --cuda-backend cuda-python")
        self._call("Stream.begin_capture", handle.begin_capture)

    def graph_capture_end(self, stream: int) -> Any:
        graph = self._call("Stream.end_capture", self._stream(stream).end_capture)
        instantiate = getattr(graph, "instance", None) or getattr(graph, "instantiate", None)
        if instantiate is None:
            raise CudaError("this pycuda cannot instantiate CUDA graphs; use --cuda-backend cuda-python")
        return self._call("Graph.instance", instantiate)

    def graph_launch(self, graph_exec: Any, stream: int) -> None:
        self._call("GraphExec.launch", graph_exec.launch, self._stream(stream))

    def graph_destroy(self, graph_exec: Any) -> None:
        """pycuda destroys executable graphs with the object; nothing to call."""

    def device_info(self) -> dict:
        self._ensure_context()
        device = self._call("Context.get_device", self.driver.Context.get_device)
        major, minor = device.compute_capability()
        runtime = ".".join(str(v) for v in self.driver.get_version()[:2])
        return {
            "name": device.name(),
            "compute_capability": f"{major}.{minor}",
            "driver_version": _version_text(int(self.driver.get_driver_version())),
            "cuda_runtime_version": runtime,
        }


def _pop_context(driver: Any, context: Any) -> None:
    try:
        context.pop()
    except Exception:  # interpreter shutdown: the driver may already be gone
        pass


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).split(b"\0", 1)[0].decode(errors="replace")
    return str(value)


def _import_first(modules: tuple[str, ...], package: str, extra: str) -> Any:
    """Import the first of ``modules`` that exists; a package that exists but cannot load is not 'missing'."""
    root = modules[0].split(".")[0]
    if importlib.util.find_spec(root) is None:
        raise MissingDependencyError(package, extra, "moving data to the GPU")
    last: BaseException | None = None
    for module in modules:
        try:
            return importlib.import_module(module)
        except ImportError as exc:
            last = exc
        except OSError as exc:  # e.g. pycuda without libcuda.so: installed, but no driver
            raise CudaError(f"{package} cannot load the CUDA driver ({exc}); {NO_GPU_HINT}") from exc
    if isinstance(last, ModuleNotFoundError) and (last.name or "").startswith(root):
        raise MissingDependencyError(package, extra, "moving data to the GPU") from last
    raise CudaError(f"{package} is installed but cannot be loaded ({first_line(last, 'import failed')}); "
                    f"{NO_GPU_HINT}") from last


_FACTORIES = {"cuda-python": CudaPythonBackend, "pycuda": PycudaBackend}
_cache: dict[str, CudaBackend] = {}


def get_backend(name: str | None = None) -> CudaBackend:
    """The named backend, or with ``None`` the first installed of cuda-python, pycuda."""
    if name is not None and name not in _FACTORIES:
        raise TrtqError(f"unknown CUDA backend '{name}' (choose from {', '.join(BACKENDS)})")
    if name is not None:
        if name not in _cache:
            _cache[name] = _FACTORIES[name]()
        return _cache[name]
    for candidate in BACKENDS:
        try:
            return get_backend(candidate)
        except MissingDependencyError:
            continue
    raise MissingDependencyError("cuda-python", "trt", "moving data to the GPU (needs cuda-python or pycuda)")


class DeviceBuffers:
    """Named device buffers allocated once and freed together, also when an error unwinds."""

    def __init__(self, backend: CudaBackend):
        self.backend = backend
        self._buffers: dict[str, tuple[int, int]] = {}

    def get(self, name: str, nbytes: int) -> int:
        """The buffer for ``name``, allocated on first use; later requests must fit in it."""
        if name in self._buffers:
            ptr, size = self._buffers[name]
            if nbytes > size:
                raise TrtqError(f"input '{name}' needs {nbytes} bytes but its device buffer holds {size}")
            return ptr
        ptr = self.backend.malloc(max(int(nbytes), 1))
        self._buffers[name] = (ptr, int(nbytes))
        return ptr

    def close(self) -> None:
        errors = []
        while self._buffers:
            _, (ptr, _) = self._buffers.popitem()
            try:
                self.backend.free(ptr)
            except TrtqError as exc:  # keep freeing the others
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> DeviceBuffers:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
