"""API-conformance checker: run in a subprocess whose ``tensorrt`` is the REAL bindings of one version
(see ``tests/trt_api_env.py``). It exercises trtq's TensorRT layer against the real base classes and
enums and writes what it *observed* to a JSON report; the assertions live in
``tests/test_trt_api_conformance.py``.

What this can and cannot show:

* It does: instantiate trtq's calibrator / progress-monitor / logger subclasses on the real pybind11
  base classes; call their callbacks with real enums and buffers; check that TensorRT's C++ trampoline
  dispatches a virtual call to the Python override on trtq's class layout (``get_batch_size``);
  resolve every ``trt.*`` name and builder/config/network member trtq uses on the real module; run
  ``build_engine`` up to ``trt.Builder`` (which fails here as on a machine without a GPU).
* It does not: build, calibrate or run an engine (the stand-in libraries have no TensorRT in them);
  device memory is host memory here (:class:`HostMemoryBackend`), so "device pointers" are numpy
  addresses whose bytes can be read back.

The static scanner :func:`collect_api_uses` is also imported by the pytest side (no tensorrt needed).
"""

from __future__ import annotations

import argparse
import ast
import ctypes
import io
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
TRT_PACKAGE = REPO / "trtq" / "trt"

# Which modules serve which TensorRT path. COMMON runs on 10.x and 11.x; IMPLICIT only on 10.x;
# EXPLICIT (the 11.x model preparation) must not touch TensorRT at all.
COMMON_MODULES = ("build.py", "engine.py", "progress.py")
IMPLICIT_MODULES = ("implicit.py", "calibrators.py", "range_walk.py")
EXPLICIT_MODULES = ("explicit.py", "prequantized.py")

# Naming convention in trtq/trt: a variable with one of these names holds this TensorRT class, so
# ``config.set_flag(...)`` is checked as ``IBuilderConfig.set_flag``.
VARIABLE_CLASSES = {
    "builder": "Builder",
    "config": "IBuilderConfig",
    "network": "INetworkDefinition",
    "parser": "OnnxParser",
    "profile": "IOptimizationProfile",
    "layer": "ILayer",
    "tensor": "ITensor",
    "error": "ParserError",
    "timing_cache": "ITimingCache",
}


@dataclass(frozen=True)
class ApiUse:
    module: str
    line: int
    owner: str  # "" for a module-level name (trt.X), else the class name
    name: str  # attribute used on the module or class
    usage: str  # "call", "get" or "set"
    member: str = ""  # trt.X.Y: the Y (an enum member or class attribute)


def _chain(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return parts[::-1]
    return None


def collect_api_uses(module_names: tuple[str, ...]) -> list[ApiUse]:
    """Every ``trt.X[.Y]`` and ``<convention variable>.member`` in the given trtq/trt modules."""
    uses: list[ApiUse] = []
    for module in module_names:
        tree = ast.parse((TRT_PACKAGE / module).read_text(), filename=module)
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or isinstance(parents.get(node), ast.Attribute):
                continue  # only the outermost attribute of a chain
            chain = _chain(node)
            if not chain or len(chain) < 2:
                continue
            parent = parents.get(node)
            if isinstance(parent, ast.Call) and parent.func is node:
                usage = "call"
            elif isinstance(node.ctx, ast.Store):
                usage = "set"
            else:
                usage = "get"
            root = chain[0]
            if root == "trt":
                if chain[1].startswith("__"):
                    continue  # trt.__version__
                owner, name = "", chain[1]
                member = chain[2] if len(chain) > 2 else ""
                uses.append(ApiUse(module, node.lineno, owner, name, usage if len(chain) == 2 else "get", member))
            elif root in VARIABLE_CLASSES and len(chain) == 2:
                uses.append(ApiUse(module, node.lineno, VARIABLE_CLASSES[root], chain[1], usage))
    return uses


# -- runtime checks (need the real tensorrt) --------------------------------------------------------


def resolve_uses(trt, uses: list[ApiUse]) -> list[dict]:
    """For each use: does it exist on the real module, and is it the right kind (method/property)?"""
    results = []
    for use in uses:
        problem = None
        if use.owner:
            cls = getattr(trt, use.owner, None)
            attr = getattr(cls, use.name, None) if cls is not None else None
            if cls is None:
                problem = f"no class trt.{use.owner}"
            elif attr is None:
                problem = f"trt.{use.owner} has no '{use.name}'"
            elif use.usage == "call" and (isinstance(attr, property) or not callable(attr)):
                problem = f"trt.{use.owner}.{use.name} is not a method"
            elif use.usage in ("get", "set") and not isinstance(attr, property):
                problem = f"trt.{use.owner}.{use.name} is a {type(attr).__name__}, not a property"
            elif use.usage == "set" and attr.fset is None:
                problem = f"trt.{use.owner}.{use.name} is read-only"
        else:
            obj = getattr(trt, use.name, None)
            if obj is None:
                problem = f"no trt.{use.name}"
            elif use.member and getattr(obj, use.member, None) is None:
                problem = f"trt.{use.name} has no '{use.member}'"
            elif use.usage == "call" and not callable(obj):
                problem = f"trt.{use.name} is not callable"
        results.append({**asdict(use), "problem": problem})
    return results


class HostMemoryBackend:
    """A stand-in CUDA backend whose "device" memory is host memory (numpy buffers): pointers are
    real addresses, so the bytes a calibrator copied can be read back with ctypes. It also checks
    that no copy overruns its buffer and counts live allocations."""

    name = "host-memory (test stand-in)"

    def __init__(self) -> None:
        self.buffers: dict[int, np.ndarray] = {}
        self.allocations = 0

    def malloc(self, nbytes: int) -> int:
        buffer = np.zeros(int(nbytes), np.uint8)
        self.buffers[buffer.ctypes.data] = buffer
        self.allocations += 1
        return buffer.ctypes.data

    def free(self, ptr: int) -> None:
        del self.buffers[ptr]

    def memcpy_htod(self, dst_ptr: int, host_array, stream=None) -> None:
        data = np.ascontiguousarray(host_array)
        buffer = self.buffers[dst_ptr]
        if data.nbytes > buffer.nbytes:
            raise AssertionError(f"copy of {data.nbytes} bytes into a {buffer.nbytes}-byte buffer")
        ctypes.memmove(dst_ptr, data.ctypes.data, data.nbytes)


def _batches(seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Three full batches (float64 images, int64 ids) and a last partial one."""
    rng = np.random.default_rng(seed)
    full = [{"images": rng.normal(size=(2, 3, 4, 4)), "ids": rng.integers(0, 1000, size=(2, 5))} for _ in range(3)]
    partial = {"images": rng.normal(size=(1, 3, 4, 4)), "ids": rng.integers(0, 1000, size=(1, 5))}
    return full + [partial]


def check_calibrator(trt, algorithm: str, workdir: Path) -> dict:
    from trtq.errors import TrtqError
    from trtq.trt.calibrators import calibrator_class, make_calibrator

    out: dict = {}
    backend = HostMemoryBackend()
    batches = _batches()
    shapes = {"images": (2, 3, 4, 4), "ids": (2, 5)}
    cache_dir = workdir / f"cache-{algorithm}"
    cache_dir.mkdir()
    cache_path = cache_dir / "model.cache"
    messages: list[str] = []
    calibrator = make_calibrator(trt, algorithm, batches=batches, backend=backend, input_shapes=shapes,
                                 cache_path=cache_path, quantile=0.9, regression_cutoff=0.25, warn=messages.append)
    base = {"entropy2": trt.IInt8EntropyCalibrator2, "entropy": trt.IInt8EntropyCalibrator,
            "minmax": trt.IInt8MinMaxCalibrator, "legacy": trt.IInt8LegacyCalibrator}[algorithm]
    out["mro"] = [cls.__name__ for cls in type(calibrator).__mro__]
    out["isinstance_base"] = isinstance(calibrator, base)
    out["isinstance_IInt8Calibrator"] = isinstance(calibrator, trt.IInt8Calibrator)
    out["algorithm"] = calibrator.get_algorithm().name
    out["expected_header"] = calibrator.expected_header
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # C++ -> Python: the trampoline of the real base class calls the override on trtq's class layout
        probe_cls = type("Probe", (calibrator_class(trt, algorithm),), {"get_batch_size": lambda self: 7})
        out["trampoline_get_batch_size"] = base.get_batch_size(probe_cls(trt_version="10.16.1"))
    if algorithm == "legacy":
        out["quantile"] = calibrator.get_quantile()
        out["regression_cutoff"] = calibrator.get_regression_cutoff()

    # get_batch: pointers in the order of `names`, bytes as fed (float32 for floats), then None
    served = []
    names = ["ids", "images"]
    for index in range(len(batches) + 1):
        pointers = calibrator.get_batch(names)
        if pointers is None:
            served.append(None)
            continue
        expected = batches[index]
        matches = []
        for name, ptr in zip(names, pointers, strict=True):
            want = np.ascontiguousarray(expected[name].astype(np.float32) if expected[name].dtype.kind == "f"
                                        else expected[name])
            matches.append(ctypes.string_at(ptr, want.nbytes) == want.tobytes())
        served.append({"pointers": pointers, "bytes_match": matches})
    out["served"] = served
    out["after_end"] = calibrator.get_batch(names)
    out["live_buffers_before_close"] = len(backend.buffers)
    out["batches_served"] = calibrator.batches_served
    out["samples_served"] = calibrator.samples_served
    out["failure"] = repr(calibrator.failure) if calibrator.failure else None
    calibrator.close()
    out["live_buffers_after_close"] = len(backend.buffers)
    out["allocations"] = backend.allocations
    out["warnings_batches"] = list(messages)

    # cache contract
    messages.clear()
    cache = {"missing": calibrator.read_calibration_cache()}
    body = f"{calibrator.expected_header}\nimages: 3c010a14\nids: 3f800000\n".encode()
    calibrator.write_calibration_cache(memoryview(body))
    cache["written_equal"] = cache_path.read_bytes() == body
    cache["files_after_write"] = sorted(p.name for p in cache_dir.iterdir())
    cache["matching"] = calibrator.read_calibration_cache() == body
    version = calibrator.expected_header.split("-")[1]
    stale_version = body.replace(f"TRT-{version}-".encode(), b"TRT-100001-", 1)
    cache_path.write_bytes(stale_version)
    cache["stale_version"] = calibrator.read_calibration_cache()
    other = "MinMaxCalibration" if algorithm != "minmax" else "EntropyCalibration2"
    wrong_algorithm = f"TRT-{version}-{other}\nimages: 3c010a14\n".encode()
    cache_path.write_bytes(wrong_algorithm)
    cache["wrong_algorithm"] = calibrator.read_calibration_cache()
    cache_path.write_bytes(b"\x89PNG\r\n\x1a\n not a cache")
    cache["garbage"] = calibrator.read_calibration_cache()
    cache["warnings"] = list(messages)
    cache["failure"] = repr(calibrator.failure) if calibrator.failure else None
    out["cache"] = cache

    # a failure inside get_batch is kept for the builder (TensorRT would swallow it)
    bad = make_calibrator(trt, algorithm, batches=[{"images": np.zeros((2, 3, 5, 5)), "ids": np.zeros((2, 5))}],
                          backend=backend, input_shapes=shapes, warn=messages.append)
    out["bad_shape_get_batch"] = bad.get_batch(names)
    try:
        bad.raise_failure()
        out["bad_shape_error"] = None
    except TrtqError as exc:
        out["bad_shape_error"] = str(exc)
    bad.close()
    missing = make_calibrator(trt, algorithm, batches=[{"images": np.zeros((2, 3, 4, 4))}], backend=backend,
                              input_shapes=shapes, warn=messages.append)
    out["missing_input_get_batch"] = missing.get_batch(names)
    out["missing_input_error"] = str(missing.failure) if missing.failure else None
    missing.close()
    out["live_buffers_at_end"] = len(backend.buffers)
    return out


def check_served_cache(trt) -> dict:
    from trtq.cache import cache_from_amax
    from trtq.trt.calibrators import make_calibrator

    version = ".".join(trt.__version__.split(".")[:3])
    served = cache_from_amax({"images": 2.5, "conv_out": 7.0}, "percentile", trt_version=version).to_bytes()
    calibrator = make_calibrator(trt, "entropy2", served_cache=served)
    return {"read": calibrator.read_calibration_cache() == served, "header": served.decode().splitlines()[0],
            "expected_header": calibrator.expected_header, "get_batch": calibrator.get_batch(["images"]),
            "cache_used": calibrator.cache_used}


def check_served_quantize(trt, model_path: Path, workdir: Path) -> dict:
    """The default INT8 path on 10.x: ``trtq quantize`` runs (real MNIST digits) and its ranges are served
    through trtq's calibrator on the real IInt8EntropyCalibrator2 (what TensorRT reads instead of calibrating)."""
    from trtq.cache import parse_cache
    from trtq.jobs.build import quantize_ranges
    from trtq.model import load_model
    from trtq.trt import probe
    from trtq.trt.build import BuildOptions, served_cache
    from trtq.trt.calibrators import make_calibrator

    with np.load(REPO / "tests" / "data" / "mnist-test-first1000.npz") as data:
        images = data["images"][:100, None].astype(np.float32)
    info = probe(trt)
    options = BuildOptions(engine_path=workdir / "q.engine", int8=True, calibrator="auto",
                           cache_path=workdir / "q.cache")
    lines: list[str] = []
    ranges, result = quantize_ranges(load_model(model_path), options, [{"Input3": i[None]} for i in images], info,
                                     lines.append)
    calibrator = make_calibrator(trt, "entropy2", trt_version=info.patch_version,
                                 served_cache=served_cache(ranges, info))
    read = calibrator.read_calibration_cache()
    cache = parse_cache(bytes(read))
    served = cache.amax()
    return {"header": cache.header, "expected_header": calibrator.expected_header,
            "tensors": sorted(served), "quantize_tensors": sorted(result.usable_amax),
            "max_rel_error": max(abs(served[n] - ranges.amax[n]) / ranges.amax[n] for n in served),
            "cache_file_equal": (workdir / "q.cache").read_bytes() == bytes(read),
            "get_batch": calibrator.get_batch(["Input3"]), "cache_used": calibrator.cache_used,
            "keep": list(result.keep), "origin": ranges.origin, "echo": lines}


def check_range_walk(trt) -> dict:
    """The network walk of the served-cache path on the REAL enums and ``trt.Weights`` (a network needs
    TensorRT's library, so layers and tensors are stand-ins), and the members it uses that the static
    scanner cannot attribute to a class (``IConstantLayer.weights``, ``Weights.numpy``)."""
    from tests.fake_network import CACHE, parsed_block
    from trtq.trt.range_walk import set_network_ranges

    network = parsed_block(trt)
    lines: list[str] = []
    report = set_network_ranges(trt, network, CACHE, echo=lines.append)
    tensors = network.tensors()
    dynamic_range = getattr(trt.ITensor, "dynamic_range", None)
    return {
        "counts": report.as_dict(), "set": report.set_by_walk, "echo": lines,
        "assignments": {name: t.assignments for name, t in tensors.items() if t.assignments},
        "constant_weights_is_property": isinstance(getattr(trt.IConstantLayer, "weights", None), property),
        "constant_is_a_layer": issubclass(trt.IConstantLayer, trt.ILayer),
        "weights_numpy_is_method": callable(getattr(trt.Weights, "numpy", None))
        and not isinstance(getattr(trt.Weights, "numpy", None), property),
        "dynamic_range_settable": isinstance(dynamic_range, property) and dynamic_range.fset is not None,
        "dynamic_range_doc_says_none_when_unset": "None` if the range was not set" in (trt.ITensor.__doc__ or ""),
    }


def check_progress(trt) -> dict:
    from trtq.trt.progress import progress_monitor_class

    stream = io.StringIO()
    monitor = progress_monitor_class(trt)(stream=stream, interactive=False)
    out = {"isinstance": isinstance(monitor, trt.IProgressMonitor),
           "mro": [c.__name__ for c in type(monitor).__mro__]}
    monitor.phase_start("Building engine", None, 2)
    monitor.phase_start("Tactic selection", "Building engine", 4)
    out["step"] = monitor.step_complete("Tactic selection", 0)
    out["status"] = monitor.status()
    # the real base class's step_complete is the C++ virtual: it must reach trtq's override
    out["trampoline_step_complete"] = trt.IProgressMonitor.step_complete(monitor, "Tactic selection", 1)
    monitor.cancelled = True
    out["step_after_cancel"] = monitor.step_complete("Tactic selection", 2)
    monitor.phase_finish("Tactic selection")
    monitor.phase_finish("Building engine")
    out["history"] = monitor.history
    out["log"] = stream.getvalue()
    out["open_phases"] = len(monitor.phases)
    return out


def check_logger(trt) -> dict:
    from trtq.trt.engine import logger_class

    shown: list[str] = []
    logger = logger_class(trt)(show="WARNING", echo=shown.append)
    severity = trt.ILogger.Severity
    logger.log(severity.ERROR, "parse failed")
    logger.log(severity.WARNING, "slow")
    logger.log(severity.INFO, "chatter")
    logger.log(severity.VERBOSE, "noise")
    trampoline = "not bound to the C++ virtual"
    try:
        trt.ILogger.log(logger, severity.INTERNAL_ERROR, "via the C++ trampoline")
        trampoline = "dispatched" if "via the C++ trampoline" in logger.errors else "not dispatched"
    except TypeError as exc:
        trampoline = f"TypeError: {exc}"
    return {"isinstance": isinstance(logger, trt.ILogger), "shown": shown, "errors": logger.errors,
            "warnings": logger.warnings, "trampoline_log": trampoline}


def check_builder(trt, model_path: Path, workdir: Path) -> dict:
    """``trt.Builder`` fails here (no library, as without a GPU): trtq must turn that into one clean
    line and leave no file behind, on every path that gets that far."""
    from trtq.errors import TrtqError
    from trtq.jobs.build import build
    from trtq.model import load_model
    from trtq.trt import probe
    from trtq.trt.build import BuildOptions
    from trtq.trt.engine import create_builder, logger_class

    out: dict = {}
    logger = logger_class(trt)(echo=lambda text: None)
    try:
        create_builder(trt, logger)
        out["create_builder"] = None
    except TrtqError as exc:
        out["create_builder"] = str(exc)
        out["create_builder_cause"] = repr(exc.__cause__)

    model = load_model(model_path)
    rng = np.random.default_rng(1)
    digits = [{"Input3": rng.uniform(0, 255, size=(1, 1, 28, 28)).astype(np.float32)} for _ in range(4)]
    ranges = workdir / "ranges.json"
    ranges.write_text(json.dumps({"tensors": {"Input3": {"amax": 255.0}}}))
    implicit = probe(trt).implicit_quantization
    cases = {
        "fp16": BuildOptions(engine_path=workdir / "out-fp16" / "m.engine", fp16=True),
        "int8_trtq_ranges": BuildOptions(engine_path=workdir / "out-int8r" / "m.engine", int8=True,
                                         calibration_source="trtq", ranges_path=ranges),
        "int8_ranges_only": BuildOptions(engine_path=workdir / "out-int8ro" / "m.engine", int8=True,
                                         ranges_path=ranges),
        "int8_default": BuildOptions(engine_path=workdir / "out-int8" / "m.engine", int8=True,
                                     cache_path=workdir / "out-int8" / "m.cache"),
        "int8_tensorrt_source": BuildOptions(engine_path=workdir / "out-src" / "m.engine", int8=True,
                                             calibration_source="tensorrt"),
        "int8_no_data": BuildOptions(engine_path=workdir / "out-nodata" / "m.engine", int8=True),
        "int8_quantize": BuildOptions(engine_path=workdir / "out-q" / "m.engine", int8=True, calibrator="auto",
                                      cache_path=workdir / "out-q" / "m.cache"),
        "int8_quantize_no_data": BuildOptions(engine_path=workdir / "out-qnodata" / "m.engine", int8=True,
                                              calibrator="auto"),
    }
    for name, options in cases.items():
        options.engine_path.parent.mkdir()
        lines: list[str] = []
        result: dict = {}
        try:
            with_data = name.startswith("int8") and not name.endswith("no_data")
            build(model, options, digits if with_data else None, trt=trt, echo=lines.append)
            result["error"] = None
        except TrtqError as exc:
            result["error"] = str(exc)
            result["error_type"] = type(exc).__name__
        result["echo"] = lines
        result["files_left"] = sorted(p.name for p in options.engine_path.parent.iterdir())
        out[name] = result
    out["implicit"] = implicit
    return out


def check_prequantized(trt, model_path: Path, workdir: Path) -> dict:
    """An already-quantized (Q/DQ) model on the real module: its plan, the flags set on a config, and a build
    that gets as far as the builder (which fails here, as without a GPU) with no file left behind."""
    from trtq.calibrate import calibrate
    from trtq.errors import TrtqError
    from trtq.export import export_qdq, save_model
    from trtq.model import load_model
    from trtq.trt import probe
    from trtq.trt.build import BuildOptions, build_engine
    from trtq.trt.prequantized import configure_explicit, plan_prequantized

    rng = np.random.default_rng(2)
    fp32 = load_model(model_path)
    digits = [{"Input3": rng.uniform(0, 255, size=(1, 1, 28, 28)).astype(np.float32)} for _ in range(4)]
    qdq_path = workdir / "mnist.qdq.onnx"
    save_model(export_qdq(fp32, calibrate(fp32, digits, "minmax").amax).model, qdq_path)
    model = load_model(qdq_path)
    info = probe(trt)
    out: dict = {"explicit": model.quantization.explicit}

    class RecordingConfig:  # what configure_explicit hands to config.set_flag: the real enum members
        def __init__(self):
            self.flags = []

        def set_flag(self, flag):
            self.flags.append(flag)

    for name, fp16 in (("int8", False), ("fp16", True)):
        options = BuildOptions(engine_path=workdir / f"pq-{name}" / "m.engine", fp16=fp16)
        try:
            plan = plan_prequantized(info, model.quantization, model.name, options)
            config = RecordingConfig()
            configure_explicit(trt, info, plan, config)
            out[f"plan_{name}"] = {**plan.as_dict(), "flags": [str(f) for f in config.flags],
                                   "real_flags": all(isinstance(f, trt.BuilderFlag) for f in config.flags)}
        except TrtqError as exc:
            out[f"plan_{name}"] = {"error": str(exc)}
    cases = {
        "build": BuildOptions(engine_path=workdir / "pq-build" / "m.engine", int8=True),
        "build_with_cache": BuildOptions(engine_path=workdir / "pq-cache" / "m.engine", int8=True,
                                         cache_path=workdir / "pq-cache" / "m.cache"),
    }
    for name, options in cases.items():
        options.engine_path.parent.mkdir()
        lines: list[str] = []
        result: dict = {}
        try:
            build_engine(model, options, None, trt=trt, echo=lines.append)
            result["error"] = None
        except TrtqError as exc:
            result["error"] = str(exc)
        result["echo"] = lines
        result["files_left"] = sorted(p.name for p in options.engine_path.parent.iterdir())
        out[name] = result
    return out


def check_plans(trt) -> dict:
    from trtq.errors import TrtqError
    from trtq.trt import probe
    from trtq.trt.plan import plan_build

    info = probe(trt)
    out = {}
    requests = {
        "fp32": {}, "fp16": {"fp16": True}, "int8": {"int8": True}, "best": {"int8": True, "fp16": True},
        "int8_percentile": {"int8": True, "calibrator": "percentile"},
        "int8_minmax": {"int8": True, "calibrator": "minmax"},
        "int8_legacy": {"int8": True, "calibrator": "legacy"},
        "int8_source_trtq": {"int8": True, "source": "trtq"},
        "int8_source_tensorrt": {"int8": True, "source": "tensorrt"},
        "int8_mse_tensorrt": {"int8": True, "calibrator": "mse", "source": "tensorrt"},
    }
    for name, request in requests.items():
        try:
            plan = plan_build(info, **request)
            out[name] = {"path": plan.path, "source": plan.source, "variant": plan.onnx_variant,
                         "message": plan.message, "precisions": plan.precisions}
        except TrtqError as exc:
            out[name] = {"error": str(exc)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--report", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--model", default=str(REPO / "calib_data" / "mnist-8.onnx"))
    args = parser.parse_args()
    workdir = Path(args.workdir)

    from trtq.trt import import_tensorrt, probe

    trt = import_tensorrt()
    info = probe(trt)
    report: dict = {"version": trt.__version__, "module_file": os.path.realpath(trt.__file__),
                    "probe": info.as_dict(), "plans": check_plans(trt)}
    uses = collect_api_uses(COMMON_MODULES + IMPLICIT_MODULES + EXPLICIT_MODULES)
    report["uses"] = resolve_uses(trt, uses)
    if info.implicit_quantization:
        report["calibrators"] = {a: check_calibrator(trt, a, workdir) for a in ("entropy2", "entropy", "minmax",
                                                                                 "legacy")}
        report["served_cache"] = check_served_cache(trt)
        report["served_quantize"] = check_served_quantize(trt, Path(args.model), workdir)
        report["range_walk"] = check_range_walk(trt)
    else:
        from trtq.errors import TrtqError
        from trtq.trt.calibrators import calibrator_class

        try:
            calibrator_class(trt, "entropy2")
            report["calibrator_class_error"] = None
        except TrtqError as exc:
            report["calibrator_class_error"] = str(exc)
    report["progress"] = check_progress(trt)
    report["logger"] = check_logger(trt)
    report["builder"] = check_builder(trt, Path(args.model), workdir)
    report["prequantized"] = check_prequantized(trt, Path(args.model), workdir)
    Path(args.report).write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
