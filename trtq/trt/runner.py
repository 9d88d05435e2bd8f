"""Running a TensorRT engine on the GPU and timing every query, the way trtexec times it.

Per query, on one CUDA stream: record an event, copy the inputs in (optional), record, enqueue the
engine (``execute_async_v3`` or a captured CUDA graph; the host time of this call is the enqueue
time), record, copy the outputs back (optional), record. Two queries are in flight at a time, as in
trtexec, so the host never waits for the GPU between queries. Warm-up runs for ``warmup_ms`` of host
time; timing then runs until both ``iterations`` queries and ``duration_s`` seconds are done. A
separate run with an ``IProfiler`` attached gives per-layer times.

What comes back is plain data (:class:`EngineRun`): per-query records in trtexec's ``--exportTimes``
layout, the profiler's reports in the order TensorRT made them, and the inspector's layer JSON. The
statistics, the per-layer profile and the layer model are made from them in :mod:`trtq.report`.

TensorRT and the CUDA backend (:mod:`trtq.trt.cuda`) are imported inside the functions. The
backend allocates pageable host memory only, so with data transfers on, H2D/D2H can be slower
than trtexec's (which uses pinned memory); compute times are unaffected.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from trtq.errors import TrtqError
from trtq.shapes import Shape

# Every TensorRT name this module and trtq.trt.inspect use; tests check each exists in the real
# bindings of both TensorRT 10.16 and 11.4.
TRT_API_USED: dict[str, tuple[str, ...]] = {
    "module": ("Runtime", "Logger", "IProfiler", "LayerInformationFormat", "TensorIOMode", "DataType"),
    "Runtime": ("deserialize_cuda_engine",),
    "Logger": ("ERROR", "WARNING"),
    "ICudaEngine": (
        "create_engine_inspector",
        "create_execution_context",
        "num_io_tensors",
        "get_tensor_name",
        "get_tensor_mode",
        "get_tensor_shape",
        "get_tensor_dtype",
        "get_tensor_profile_shape",
        "is_shape_inference_io",
    ),
    "IExecutionContext": (
        "set_input_shape",
        "get_tensor_shape",
        "set_tensor_address",
        "execute_async_v3",
        "profiler",
        "enqueue_emits_profile",
        "report_to_profiler",
    ),
    "EngineInspector": ("execution_context", "get_engine_information"),
    "IProfiler": ("report_layer_time",),
    "LayerInformationFormat": ("JSON",),
    "TensorIOMode": ("INPUT",),
    "DataType": ("name",),
}

# Host dtypes for TensorRT data types (by enum *name*: the integer values differ between versions).
# BF16 and FP8 have no numpy type: their bits are moved as uint16/uint8, filled with zeros.
_NUMPY_DTYPES = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "BF16": np.uint16,
    "FP8": np.uint8,
}


class LayerTimeSink(Protocol):
    """Whatever receives ``IProfiler.report_layer_time`` calls (a pure-Python object, testable anywhere)."""

    def report_layer_time(self, layer_name: str, ms: float) -> None: ...


@dataclass
class EngineRun:
    """What one timed run of an engine observed, as plain data."""

    trace: list[dict[str, float]]  # one record per timed query, trtexec --exportTimes keys
    warmup_queries: int
    shapes: dict[str, Shape]  # the input shapes the engine ran at
    cuda_graph: bool  # whether the timed queries launched a captured CUDA graph
    layer_times: list[tuple[str, float]] | None  # IProfiler reports (layer, ms) in order; None: not profiled
    layer_information: Any  # the inspector's decoded layer JSON; None when unavailable (see notes)
    device: dict[str, Any]
    trt_version: str
    notes: list[str] = field(default_factory=list)


def resolve_input_shape(
    name: str,
    engine_shape: tuple[int, ...],
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None,
    requested: Shape | None,
) -> Shape:
    """The shape to run an input at.

    ``requested`` (from ``--shapes``) must fit the engine's static dimensions and profile range.
    Without it, dynamic dimensions become 1 as in trtexec, raised to the profile minimum if needed.
    """
    if requested is not None:
        if len(requested) != len(engine_shape):
            raise TrtqError(
                f"--shapes gives '{name}' {len(requested)} dimensions; the engine expects {len(engine_shape)}"
            )
        for i, (want, have) in enumerate(zip(requested, engine_shape, strict=True)):
            if have >= 0 and want != have:
                raise TrtqError(f"--shapes: dimension {i} of '{name}' is fixed to {have} in the engine, not {want}")
        if profile is not None:
            low, _, high = profile
            if any(w < lo or w > hi for w, lo, hi in zip(requested, low, high, strict=True)):
                raise TrtqError(
                    f"--shapes: '{name}' {'x'.join(map(str, requested))} is outside the engine's profile range "
                    f"{'x'.join(map(str, low))} .. {'x'.join(map(str, high))}"
                )
        return tuple(requested)
    shape = [d if d >= 0 else 1 for d in engine_shape]
    if profile is not None:
        low, _, _ = profile
        shape = [max(d, lo) if engine_shape[i] < 0 else d for i, (d, lo) in enumerate(zip(shape, low, strict=True))]
    return tuple(shape)


def _host_array(dtype_name: str, shape: Shape, rng: np.random.Generator) -> np.ndarray:
    np_dtype = _NUMPY_DTYPES.get(dtype_name)
    if np_dtype is None:
        raise TrtqError(f"trtq bench cannot feed tensors of type {dtype_name}")
    if np.issubdtype(np_dtype, np.floating):
        return rng.uniform(-1.0, 1.0, size=shape).astype(np_dtype)
    # Integer inputs are often indices (gather, embeddings): zeros are always in range.
    return np.zeros(shape, dtype=np_dtype)


def _make_profiler(trt: ModuleType, sink: LayerTimeSink) -> Any:
    """A ``trt.IProfiler`` that forwards every report to ``sink``."""

    class _Profiler(trt.IProfiler):
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            sink.report_layer_time(layer_name, ms)

    return _Profiler()


class _Reports:
    """Keeps the profiler's reports as they came, for :attr:`EngineRun.layer_times`."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def report_layer_time(self, layer_name: str, ms: float) -> None:
        self.calls.append((layer_name, float(ms)))


def time_engine(
    engine_path: str | os.PathLike,
    *,
    warmup_ms: float,
    iterations: int,
    duration_s: float,
    cuda_graph: bool,
    data_transfers: bool,
    spin_wait: bool,
    shapes: Mapping[str, Shape],
    backend_name: str | None = None,
    profile_iterations: int = 0,
    echo: Callable[[str], None] | None = None,
) -> EngineRun:
    """Run ``engine_path`` on the GPU and time it; see the module docstring for the exact procedure."""
    from trtq.trt import import_tensorrt
    from trtq.trt.cuda import get_backend
    from trtq.trt.inspect import deserialize_engine, engine_information

    say = echo or (lambda _text: None)
    if iterations < 1 or duration_s < 0 or warmup_ms < 0:
        raise TrtqError("iterations must be >= 1, duration and warm-up >= 0")
    trt = import_tensorrt("measuring an engine on the GPU (trtq bench --trtexec-log FILE works without it)")
    backend = get_backend(backend_name)
    runtime, engine = deserialize_engine(trt, engine_path)
    notes: list[str] = []
    with contextlib.ExitStack() as cleanup:
        context = engine.create_execution_context()
        if context is None:
            raise TrtqError("TensorRT could not create an execution context (out of GPU memory?)")
        stream = backend.stream_create()
        cleanup.callback(backend.stream_destroy, stream)
        rng = np.random.default_rng(0)
        run_shapes: dict[str, Shape] = {}
        inputs: list[tuple[int, np.ndarray]] = []
        outputs: list[tuple[int, np.ndarray]] = []
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        unknown = sorted(set(shapes) - set(names))
        if unknown:
            raise TrtqError(f"--shapes names unknown input(s) {', '.join(unknown)}; the engine has {', '.join(names)}")
        for name in names:
            if engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
                continue
            if engine.is_shape_inference_io(name):
                raise TrtqError(f"input '{name}' is a shape tensor; trtq bench does not feed shape tensors yet")
            engine_shape = tuple(engine.get_tensor_shape(name))
            shape_range = None
            if any(d < 0 for d in engine_shape):
                low, opt, high = (tuple(s) for s in engine.get_tensor_profile_shape(name, 0))
                shape_range = (low, opt, high)
            shape = resolve_input_shape(name, engine_shape, shape_range, shapes.get(name))
            if not context.set_input_shape(name, shape):
                raise TrtqError(f"TensorRT rejected shape {'x'.join(map(str, shape))} for input '{name}'")
            run_shapes[name] = shape
        for name in names:
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            shape = run_shapes[name] if is_input else tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise TrtqError(f"output '{name}' has a data-dependent shape; trtq bench cannot time it yet")
            host = _host_array(engine.get_tensor_dtype(name).name, shape, rng)
            ptr = backend.malloc(max(host.nbytes, 1))
            cleanup.callback(backend.free, ptr)
            if not context.set_tensor_address(name, ptr):
                raise TrtqError(f"TensorRT rejected the device buffer of '{name}'")
            (inputs if is_input else outputs).append((ptr, host))
        for ptr, host in inputs:
            backend.memcpy_htod(ptr, host, stream)
        # One plain run first: TensorRT finishes lazy initialisation before a graph may be captured.
        if not context.execute_async_v3(stream):
            raise TrtqError("TensorRT failed to run the engine (execute_async_v3 returned False)")
        backend.stream_synchronize(stream)

        launch: Callable[[], Any] = lambda: context.execute_async_v3(stream)  # noqa: E731
        if cuda_graph:
            try:
                backend.graph_capture_begin(stream)
                try:
                    context.execute_async_v3(stream)
                finally:
                    graph = backend.graph_capture_end(stream)
                cleanup.callback(backend.graph_destroy, graph)
                launch = lambda: backend.graph_launch(graph, stream)  # noqa: E731
            except TrtqError as exc:
                cuda_graph = False
                notes.append(f"CUDA graph capture failed, timed without a graph ({exc})")
                say(f"trtq: warning: CUDA graph capture failed; timing without a graph ({exc})")
                backend.stream_synchronize(stream)

        def wait(event: Any) -> None:
            if spin_wait:  # poll instead of sleeping in the driver, as trtexec --useSpinWait
                while not backend.event_query(event):
                    pass
            else:
                backend.event_synchronize(event)

        keys = ("h2d_s", "h2d_e", "c_s", "c_e", "d2h_s", "d2h_e")
        slots = []
        for _ in range(2):
            events = {k: backend.event_create() for k in keys}
            for ev in events.values():
                cleanup.callback(backend.event_destroy, ev)
            slots.append({"events": events, "busy": False, "enq": (0.0, 0.0)})
        base_event = backend.event_create()
        cleanup.callback(backend.event_destroy, base_event)

        def enqueue(slot: dict[str, Any]) -> None:
            ev = slot["events"]
            backend.event_record(ev["h2d_s"], stream)
            if data_transfers:
                for ptr, host in inputs:
                    backend.memcpy_htod(ptr, host, stream)
            backend.event_record(ev["h2d_e"], stream)
            backend.event_record(ev["c_s"], stream)
            t0 = time.perf_counter()
            ok = launch()
            t1 = time.perf_counter()
            if ok is False:
                raise TrtqError("TensorRT failed to enqueue the engine")
            backend.event_record(ev["c_e"], stream)
            backend.event_record(ev["d2h_s"], stream)
            if data_transfers:
                for ptr, host in outputs:
                    backend.memcpy_dtoh(host, ptr, stream)
            backend.event_record(ev["d2h_e"], stream)
            slot["enq"] = (t0, t1)
            slot["busy"] = True

        trace: list[dict[str, float]] = []
        host_base = [0.0]

        def collect(slot: dict[str, Any]) -> None:
            ev = slot["events"]
            rel = {k: backend.event_elapsed_ms(base_event, ev[k]) for k in keys}
            h2d = backend.event_elapsed_ms(ev["h2d_s"], ev["h2d_e"])
            compute = backend.event_elapsed_ms(ev["c_s"], ev["c_e"])
            d2h = backend.event_elapsed_ms(ev["d2h_s"], ev["d2h_e"])
            t0, t1 = slot["enq"]
            trace.append(
                {
                    "startEnqMs": (t0 - host_base[0]) * 1e3,
                    "endEnqMs": (t1 - host_base[0]) * 1e3,
                    "startH2dMs": rel["h2d_s"],
                    "endH2dMs": rel["h2d_e"],
                    "startComputeMs": rel["c_s"],
                    "endComputeMs": rel["c_e"],
                    "startD2hMs": rel["d2h_s"],
                    "endD2hMs": rel["d2h_e"],
                    "h2dMs": h2d,
                    "computeMs": compute,
                    "d2hMs": d2h,
                    "latencyMs": h2d + compute + d2h,
                }
            )

        def finish(slot: dict[str, Any], record: bool) -> None:
            """Wait for the slot's query in flight, if any, and record its times."""
            if slot["busy"]:
                wait(slot["events"]["d2h_e"])
                if record:
                    collect(slot)
                slot["busy"] = False

        def run_phase(min_queries: int, min_seconds: float, record: bool) -> int:
            start = time.perf_counter()
            count = 0
            while True:
                slot = slots[count % 2]
                finish(slot, record)
                enqueue(slot)
                count += 1
                if count >= min_queries and time.perf_counter() - start >= min_seconds:
                    break
            for k in (count, count + 1):  # drain the two in-flight queries, oldest first
                finish(slots[k % 2], record)
            return count

        say(f"trtq: warming up for {warmup_ms:g} ms")
        warmups = run_phase(1, warmup_ms / 1e3, record=False)
        backend.stream_synchronize(stream)
        say(f"trtq: timing at least {iterations} queries over at least {duration_s:g} s")
        host_base[0] = time.perf_counter()
        backend.event_record(base_event, stream)
        run_phase(iterations, duration_s, record=True)

        layer_times = None
        if profile_iterations > 0:
            say(f"trtq: profiling layers over {profile_iterations} queries")
            reports = _Reports()
            profiler = _make_profiler(trt, reports)  # held here: the context may not keep it alive
            context.profiler = profiler
            context.enqueue_emits_profile = False
            for _ in range(profile_iterations):
                if not context.execute_async_v3(stream):
                    raise TrtqError("TensorRT failed to run the engine during the profiling run")
                backend.stream_synchronize(stream)
                context.report_to_profiler()
            layer_times = reports.calls

        layer_information = None
        try:
            layer_information = engine_information(trt, engine, context, source=str(engine_path))
        except TrtqError as exc:
            notes.append(f"layer information unavailable: {exc}")
        device = backend.device_info()
        backend.stream_synchronize(stream)
    del runtime  # kept alive until the engine's resources above are released
    return EngineRun(
        trace=trace,
        warmup_queries=warmups,
        shapes=run_shapes,
        cuda_graph=cuda_graph,
        layer_times=layer_times,
        layer_information=layer_information,
        device=device,
        trt_version=str(trt.__version__),
        notes=notes,
    )
