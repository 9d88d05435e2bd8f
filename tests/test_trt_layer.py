"""The TensorRT layer without TensorRT: what runs on any machine.

Verified here: lazy imports; the one-line errors for a missing tensorrt / CUDA binding / GPU (through
cuda-python's real runtime on a machine without a driver); the static API check of every ``trt.*``
name trtq uses against the recorded API surfaces of the real 10.16.1.11 and 11.4.0.106 bindings;
option parsing; shape resolution; progress rendering; and the TensorRT 11 model preparation (Q/DQ,
FP16, both), run in onnxruntime on real MNIST digits. The same code against the importable real
bindings is in test_trt_api_conformance.py; building an engine is in test_trt_gpu.py.
"""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from tests.trt_api_checks import COMMON_MODULES, EXPLICIT_MODULES, IMPLICIT_MODULES, collect_api_uses
from trtq.errors import MissingDependencyError, TrtqError
from trtq.model import Model, load_model

REPO = Path(__file__).resolve().parent.parent
SURFACES = Path(__file__).resolve().parent / "data" / "trt-api"


def _surface(version: str) -> dict:
    return json.loads((SURFACES / f"tensorrt-{version}.json").read_text())["module"]


TRT10, TRT11 = _surface("10.16.1.11"), _surface("11.4.0.106")


def _exists(surface: dict, use) -> bool:
    if use.owner:
        entry = surface.get(use.owner)
        return entry is not None and use.name in entry["attrs"]
    entry = surface.get(use.name)
    if entry is None:
        return False
    return not use.member or use.member in entry.get("attrs", []) or use.member in entry.get("members", {})


# -- lazy imports and missing pieces ------------------------------------------------------------------


def test_importing_trtq_and_its_trt_layer_loads_no_gpu_package():
    code = (
        "import sys, trtq.cli, trtq.commands.build, trtq.trt, trtq.trt.build, trtq.trt.cuda, trtq.trt.calibrators, "
        "trtq.trt.engine, trtq.trt.implicit, trtq.trt.explicit, trtq.trt.progress, trtq.trt.plan\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'tensorrt_bindings', 'pycuda', "
        "'cuda')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_import_tensorrt_without_tensorrt_names_the_extra_and_what_works_without_it():
    from trtq.trt import import_tensorrt

    with pytest.raises(MissingDependencyError) as info:
        import_tensorrt("building a TensorRT engine")
    message = str(info.value)
    assert "'tensorrt'" in message and "pip install 'trtq[trt]'" in message
    assert "trtq calibrate" in message and "trtq export" in message
    assert "\n" not in message


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_cli_build_without_tensorrt_exits_2_with_one_line_and_writes_nothing(tmp_path, mnist_model_path):
    engine = tmp_path / "out" / "mnist.engine"
    engine.parent.mkdir()
    result = CliRunner().invoke(_cli(), ["build", str(mnist_model_path), "--int8", "--data",
                                         str(REPO / "calib_data" / "mnist"), "-o", str(engine)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("trtq: error: ") and "tensorrt" in lines[-1] and "trtq calibrate" in lines[-1]
    assert list(engine.parent.iterdir()) == []


def _cli():
    from trtq.cli import cli

    return cli


def test_get_backend_rejects_unknown_names():
    from trtq.trt.cuda import get_backend

    with pytest.raises(TrtqError, match="unknown CUDA backend 'cupy'.*cuda-python, pycuda"):
        get_backend("cupy")


@pytest.mark.skipif(importlib.util.find_spec("pycuda") is not None, reason="pycuda is installed here")
def test_missing_pycuda_names_its_extra():
    from trtq.trt.cuda import get_backend

    with pytest.raises(MissingDependencyError, match=r"'pycuda'.*pip install 'trtq\[pycuda\]'"):
        get_backend("pycuda")


def test_no_cuda_binding_at_all_is_one_line_naming_the_extra(monkeypatch):
    """Neither cuda-python nor pycuda importable (simulated at the import system: find_spec says
    they are not installed)."""
    import trtq.trt.cuda as cuda

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] in ("cuda", "pycuda") else real_find_spec(name, *a))
    monkeypatch.setattr(cuda, "_cache", {})
    with pytest.raises(MissingDependencyError) as info:
        cuda.get_backend()
    message = str(info.value)
    assert "cuda-python or pycuda" in message and "pip install 'trtq[trt]'" in message and "\n" not in message


def _cuda_python_without_gpu():
    """cuda-python's real runtime module, on a machine where it reports that no GPU can be used."""
    if importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None:
        pytest.skip("cuda-python is not installed (pip install cuda-python to run this test)")
    from cuda.bindings import runtime

    err, count = runtime.cudaGetDeviceCount()
    if int(err) == 0 and count > 0:
        pytest.skip("a CUDA device is usable here; this test is about machines without one")
    return runtime


_BACKEND_CALLS = {
    "malloc": lambda b, rt: b.malloc(4096),
    "free": lambda b, rt: b.free(1 << 20),
    "memcpy_htod": lambda b, rt: b.memcpy_htod(1 << 20, np.zeros(16, np.float32)),
    "memcpy_htod_async": lambda b, rt: b.memcpy_htod(1 << 20, np.zeros(16, np.float32), stream=0),
    "memcpy_dtoh": lambda b, rt: b.memcpy_dtoh(np.zeros(16, np.float32), 1 << 20),
    "memcpy_dtoh_async": lambda b, rt: b.memcpy_dtoh(np.zeros(16, np.float32), 1 << 20, stream=0),
    "stream_create": lambda b, rt: b.stream_create(),
    "stream_synchronize": lambda b, rt: b.stream_synchronize(0),
    "stream_destroy": lambda b, rt: b.stream_destroy(0),
    "event_create": lambda b, rt: b.event_create(),
    "event_record": lambda b, rt: b.event_record(rt.cudaEvent_t(), 0),
    "event_synchronize": lambda b, rt: b.event_synchronize(rt.cudaEvent_t()),
    "event_elapsed_ms": lambda b, rt: b.event_elapsed_ms(rt.cudaEvent_t(), rt.cudaEvent_t()),
    "event_destroy": lambda b, rt: b.event_destroy(rt.cudaEvent_t()),
    "event_query": lambda b, rt: b.event_query(rt.cudaEvent_t()),
    "graph_capture_begin": lambda b, rt: b.graph_capture_begin(0),
    "graph_capture_end": lambda b, rt: b.graph_capture_end(0),
    "graph_launch": lambda b, rt: b.graph_launch(rt.cudaGraphExec_t(), 0),
    "graph_destroy": lambda b, rt: b.graph_destroy(rt.cudaGraphExec_t()),
    "device_info": lambda b, rt: b.device_info(),
}


@pytest.mark.parametrize("call", list(_BACKEND_CALLS))
def test_cuda_python_backend_calls_reach_the_real_runtime_and_fail_in_one_clean_line(call):
    """Every interface method goes through cuda-python's real ``cuda.bindings.runtime``: the binding
    accepts trtq's arguments (a wrong signature or type raises TypeError there) and returns the
    driver's error code, which must become one clean line. Needs cuda-python, no GPU."""
    runtime = _cuda_python_without_gpu()
    from trtq.trt.cuda import CudaBackend, CudaError, get_backend

    optional = {"memcpy_htod_async", "memcpy_dtoh_async", "event_query"}
    assert set(_BACKEND_CALLS) - optional == CudaBackend.__abstractmethods__
    backend = get_backend("cuda-python")
    with pytest.raises(CudaError) as info:
        _BACKEND_CALLS[call](backend, runtime)
    message = str(info.value)
    assert message.startswith("no usable NVIDIA GPU: ") and "\n" not in message
    assert "trtq calibrate" in message


def test_device_buffers_allocate_once_per_name_and_free_all():
    from tests.trt_api_checks import HostMemoryBackend
    from trtq.trt.cuda import DeviceBuffers

    backend = HostMemoryBackend()
    with DeviceBuffers(backend) as buffers:
        first = buffers.get("images", 96)
        assert buffers.get("images", 96) == first and buffers.get("images", 10) == first
        buffers.get("ids", 40)
        assert backend.allocations == 2 and len(backend.buffers) == 2
        with pytest.raises(TrtqError, match="needs 200 bytes but its device buffer holds 96"):
            buffers.get("images", 200)
    assert backend.buffers == {}


# -- static API conformance against the recorded surfaces of the real bindings --------------------------


def test_scanner_sees_the_calls_each_path_makes():
    """Guard against a scanner that finds nothing: known uses must be among those collected."""
    common = {(u.owner, u.name, u.member) for u in collect_api_uses(COMMON_MODULES)}
    implicit = {(u.owner, u.name, u.member) for u in collect_api_uses(IMPLICIT_MODULES)}
    assert {("Builder", "build_serialized_network", ""), ("IBuilderConfig", "progress_monitor", ""),
            ("", "OnnxParser", ""), ("", "MemoryPoolType", "WORKSPACE"), ("", "IProgressMonitor", ""),
            ("ParserError", "desc", ""), ("", "Builder", "")} <= common
    assert {("IBuilderConfig", "int8_calibrator", ""), ("", "BuilderFlag", "INT8"), ("", "BuilderFlag", "FP16"),
            ("", "IInt8EntropyCalibrator2", ""), ("", "IInt8LegacyCalibrator", ""),
            ("IBuilderConfig", "set_calibration_profile", ""), ("ILayer", "set_output_type", "")} <= implicit


@pytest.mark.parametrize("surface", [TRT10, TRT11], ids=["trt10.16.1.11", "trt11.4.0.106"])
def test_common_path_uses_only_names_both_versions_have(surface):
    missing = [u for u in collect_api_uses(COMMON_MODULES) if not _exists(surface, u)]
    assert missing == []


def _names(entry: dict) -> set[str]:
    return set(entry.get("attrs", [])) | set(entry.get("members", {}))


def test_common_path_never_touches_an_api_removed_in_11():
    """Removed = every class, enum, member or attribute of 10.16.1.11 that 11.4.0.106 lacks."""
    removed = {(name, "") for name in TRT10 if name not in TRT11}
    removed |= {(name, attr) for name, entry in TRT10.items() if name in TRT11
                for attr in _names(entry) - _names(TRT11[name])}
    assert ("IInt8EntropyCalibrator2", "") in removed and ("BuilderFlag", "INT8") in removed
    for use in collect_api_uses(COMMON_MODULES):
        touched = {(use.owner, use.name)} if use.owner else {(use.name, ""), (use.name, use.member)}
        assert not touched & removed, use


def test_implicit_path_uses_only_names_10x_has_and_some_that_11x_lacks():
    uses = collect_api_uses(IMPLICIT_MODULES)
    assert [u for u in uses if not _exists(TRT10, u)] == []
    gone_in_11 = {(u.owner, u.name, u.member) for u in uses if not _exists(TRT11, u)}
    assert ("", "IInt8EntropyCalibrator2", "") in gone_in_11 and ("", "BuilderFlag", "INT8") in gone_in_11


def test_explicit_path_does_not_call_tensorrt():
    assert collect_api_uses(EXPLICIT_MODULES) == []


# -- path planning on the recorded surfaces (the same decisions run on the real modules elsewhere) -----


class _Surface:
    """Attribute lookups answered from a recorded API surface (names only; nothing is callable)."""

    def __init__(self, entries: dict, version: str | None = None):
        for name, entry in entries.items():
            setattr(self, name, _Members(entry))
        if version:
            self.__version__ = version


class _Members:
    def __init__(self, entry: dict):
        self.__members__ = dict(entry.get("members", {}))
        for attr in entry.get("attrs", []):
            if not attr.startswith("__"):
                setattr(self, attr, True)


@pytest.mark.parametrize("version,surface,implicit", [("10.16.1.11", TRT10, True), ("11.4.0.106", TRT11, False)])
def test_probe_reads_the_capabilities_of_each_surface(version, surface, implicit):
    from trtq.trt import probe

    info = probe(_Surface(surface, version))
    assert info.implicit_quantization is implicit
    assert info.has_progress_monitor
    assert (info.calibrators == ("entropy2", "entropy", "minmax", "legacy")) is implicit
    assert ("INT8" in info.builder_flags) is implicit and ("FP16" in info.builder_flags) is implicit
    assert info.has_layer_precision is implicit and info.has_calibration_profile is implicit


def test_plans_say_which_path_ran_and_why():
    from trtq.trt import probe
    from trtq.trt.plan import IMPLICIT, STRONGLY_TYPED, plan_build

    trt10, trt11 = probe(_Surface(TRT10, "10.16.1.11")), probe(_Surface(TRT11, "11.4.0.106"))
    plan = plan_build(trt11, int8=True)
    assert plan.path == STRONGLY_TYPED and plan.source == "trtq" and plan.onnx_variant == "qdq"
    assert plan.message == "TensorRT 11.4: no built-in calibrators; using trtq's entropy2 ranges as explicit Q/DQ"
    plan = plan_build(trt10, int8=True, calibrator="minmax")
    assert plan.path == IMPLICIT and plan.source == "tensorrt" and "IInt8MinMaxCalibrator" in plan.message
    plan = plan_build(trt10, int8=True, calibrator="percentile")
    assert plan.source == "trtq" and "EntropyCalibration2 cache" in plan.message
    assert plan_build(trt11, fp16=True).onnx_variant == "fp16"
    assert plan_build(trt11, fp16=True, int8=True).onnx_variant == "qdq+fp16"
    assert plan_build(trt10, fp16=True, int8=True).precisions == ["fp32", "fp16", "int8"]
    with pytest.raises(TrtqError, match="no built-in calibrators.*--calibration-source trtq"):
        plan_build(trt11, int8=True, source="tensorrt")
    with pytest.raises(TrtqError, match="legacy calibrator exists only in TensorRT 10"):
        plan_build(trt11, int8=True, calibrator="legacy")
    with pytest.raises(TrtqError, match="legacy ranges come only from TensorRT's IInt8LegacyCalibrator"):
        plan_build(trt10, int8=True, calibrator="legacy", source="trtq")
    with pytest.raises(TrtqError, match="TensorRT has no mse calibrator"):
        plan_build(trt10, int8=True, calibrator="mse", source="tensorrt")
    assert plan_build(trt11, fp16=True, keep_precision=True).notes


# -- options and shapes -----------------------------------------------------------------------------


def test_keep_precision_entries_and_files(tmp_path):
    from trtq.trt.build import parse_keep_precision

    listing = tmp_path / "keep.txt"
    listing.write_text("# layers that overflow in fp16\n/head/Softmax=fp32\nconv 1 [a]=FP16   # spaces kept\n\n")
    rules = parse_keep_precision(["Plus214_Output_0=fp32", f"@{listing}", "a=b=fp16"])
    assert rules == {"Plus214_Output_0": "fp32", "/head/Softmax": "fp32", "conv 1 [a]": "fp16", "a=b": "fp16"}
    for bad in ["Conv1=int8", "=fp16"]:
        with pytest.raises(TrtqError, match="expected LAYER_OR_TENSOR=fp16 or =fp32"):
            parse_keep_precision([bad])
    # the keep file `trtq sensitivity` writes: bare node names, meaning fp16
    sensitivity_file = tmp_path / "keep_fp16.txt"
    sensitivity_file.write_text("# kept by trtq sensitivity\nPooling66\nTimes212\n")
    assert parse_keep_precision([f"@{sensitivity_file}"]) == {"Pooling66": "fp16", "Times212": "fp16"}
    # in a build without FP16 (--int8 alone) a bare name keeps the layer out of INT8 in FP32; explicit
    # =fp16 entries stay as written (and build_engine rejects them there)
    assert parse_keep_precision([f"@{sensitivity_file}", "Conv1=fp16"], fp16=False) == {
        "Pooling66": "fp32", "Times212": "fp32", "Conv1": "fp16"}


def test_workspace_sizes():
    from trtq.trt.build import parse_size

    assert parse_size("1024MiB") == 1 << 30 and parse_size("2G") == 2 << 30 and parse_size("512m") == 512 << 20
    assert parse_size("1073741824") == 1 << 30 and parse_size("1.5GiB") == 3 << 29 and parse_size("1GB") == 10**9
    for bad in ["", "lots", "-1G", "12XB"]:
        with pytest.raises(TrtqError, match="bad size"):
            parse_size(bad)


def _dynamic_model() -> Model:
    """A two-input model with a dynamic batch (and a dynamic length on 'ids')."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["images"], ["out"]), helper.make_node("Identity", ["ids"], ["ids_out"])],
        "dyn",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 8, 8]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "length"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3, 8, 8]),
         helper.make_tensor_value_info("ids_out", TensorProto.INT64, ["batch", "length"])],
    )
    return Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_static_model_needs_no_profile_and_calibrates_at_its_shape(mnist_model_path):
    from trtq.trt.build import resolve_shapes

    shapes = resolve_shapes(load_model(mnist_model_path), {}, {}, {})
    assert shapes.profile == {} and shapes.calibration == {"Input3": (1, 1, 28, 28)}
    with pytest.raises(TrtqError, match="--opt-shapes sets dimension 0 of input 'Input3' to 8.*fixes it to 1"):
        resolve_shapes(load_model(mnist_model_path), {}, {"Input3": (8, 1, 28, 28)}, {})


def test_dynamic_inputs_get_a_profile_from_options_or_data():
    from trtq.trt.build import resolve_shapes

    model = _dynamic_model()
    shapes = resolve_shapes(model, {"images": (1, 3, 8, 8), "ids": (1, 4)}, {"images": (8, 3, 8, 8), "ids": (8, 16)},
                            {"images": (32, 3, 8, 8), "ids": (32, 64)})
    assert shapes.profile["images"] == {"min": (1, 3, 8, 8), "opt": (8, 3, 8, 8), "max": (32, 3, 8, 8)}
    assert shapes.calibration == {"images": (8, 3, 8, 8), "ids": (8, 16)}
    from_data = resolve_shapes(model, {}, {}, {}, data_shapes={"images": (4, 3, 8, 8), "ids": (4, 10)})
    assert from_data.profile["ids"] == {"min": (4, 10), "opt": (4, 10), "max": (4, 10)}
    with pytest.raises(TrtqError, match="dynamic dimensions: give --opt-shapes images:1x3x8x8"):
        resolve_shapes(model, {}, {}, {})
    with pytest.raises(TrtqError, match="min <= opt <= max"):
        resolve_shapes(model, {}, {"images": (8, 3, 8, 8), "ids": (8, 16)}, {"images": (4, 3, 8, 8)})
    with pytest.raises(TrtqError, match="--max-shapes names 'image'"):
        resolve_shapes(model, {}, {"images": (8, 3, 8, 8), "ids": (8, 16)}, {"image": (4, 3, 8, 8)})


# -- trtq's ranges, the model TensorRT parses, the output files ----------------------------------------


def _int8_options(tmp_path: Path, **kwargs):
    from trtq.trt.build import BuildOptions

    return BuildOptions(engine_path=tmp_path / "m.engine", int8=True, **kwargs)


def test_stored_ranges_come_from_a_ranges_file_or_a_cache_that_says_it_holds_them(tmp_path, mnist_model_path,
                                                                                  mnist_digits):
    from trtq.trt import probe
    from trtq.trt.build import NEEDS_RANGES, calibrate_ranges, stored_ranges

    images, _ = mnist_digits
    batches = [{"Input3": images[i:i + 1]} for i in range(20)]
    cache = tmp_path / "m.cache"
    lines: list[str] = []
    computed = calibrate_ranges(load_model(mnist_model_path), _int8_options(tmp_path, cache_path=cache), batches,
                                probe(_Surface(TRT11, "11.4.0.106")), lines.append)
    assert computed.computed and cache.read_text().startswith("TRT-110400-EntropyCalibration2\n")  # written at once
    reused = stored_ranges(_int8_options(tmp_path, cache_path=cache), True, lines.append)
    assert not reused.computed and reused.origin.startswith(f"calibration cache {cache}")
    assert reused.amax == pytest.approx(computed.amax, rel=1e-6)
    assert lines == ["trtq: calibrating with trtq's entropy2 on the CPU ..."]

    # another method's cache: calibrate again with data, an error without
    lines.clear()
    assert stored_ranges(_int8_options(tmp_path, cache_path=cache, calibrator="minmax"), True, lines.append) is None
    assert lines == [f"trtq: warning: ignoring {cache}: not a MinMaxCalibration cache; calibrating again"]
    with pytest.raises(TrtqError, match="does not hold MinMaxCalibration ranges and no --data"):
        stored_ranges(_int8_options(tmp_path, cache_path=cache, calibrator="minmax"), False, lines.append)

    # percentile and mse share entropy2's header: such a cache cannot prove what it holds
    for method in ("percentile", "mse"):
        lines.clear()
        assert stored_ranges(_int8_options(tmp_path, cache_path=cache, calibrator=method), True, lines.append) is None
        assert lines[0].startswith(f"trtq: warning: not reusing {cache}: {method} ranges are cached under entropy2's")
        unverified = stored_ranges(_int8_options(tmp_path, cache_path=cache, calibrator=method), False, lines.append)
        assert unverified.amax == reused.amax and "unverified" in lines[1]

    ranges = tmp_path / "ranges.json"
    ranges.write_text(json.dumps({"tensors": {"Input3": {"amax": 255.0}}}))
    from_file = stored_ranges(_int8_options(tmp_path, ranges_path=ranges, cache_path=cache), False, lines.append)
    assert from_file.amax == {"Input3": 255.0} and from_file.origin == f"ranges file {ranges}"
    with pytest.raises(TrtqError) as info:
        stored_ranges(_int8_options(tmp_path, cache_path=tmp_path / "none.cache"), False, lines.append)
    assert str(info.value) == NEEDS_RANGES


def test_a_ranges_file_means_trtq_ranges_and_is_read_before_tensorrt_builds(tmp_path, mnist_model_path):
    """On the recorded 10.16 surface (names only: anything past planning would fail): ``ranges_path``
    alone selects trtq's ranges, and a bad file is reported before the builder is needed."""
    from trtq.trt.build import build_engine

    bad = tmp_path / "ranges.json"
    bad.write_text("{}")
    lines: list[str] = []
    with pytest.raises(TrtqError, match="is not a trtq ranges JSON file"):
        build_engine(load_model(mnist_model_path), _int8_options(tmp_path, ranges_path=bad),
                     trt=_Surface(TRT10, "10.16.1.11"), echo=lines.append)
    assert "serving trtq's entropy2 ranges to TensorRT" in lines[0]
    with pytest.raises(TrtqError, match="cannot be combined with --calibration-source tensorrt"):
        build_engine(load_model(mnist_model_path),
                     _int8_options(tmp_path, ranges_path=bad, calibration_source="tensorrt"),
                     trt=_Surface(TRT10, "10.16.1.11"), echo=lines.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ranges.json"]


def test_a_model_without_a_file_is_parsed_from_the_work_folder(tmp_path, mnist_model_path):
    from trtq.trt import probe
    from trtq.trt.build import BuildOptions, _model_to_parse
    from trtq.trt.plan import plan_build

    model = Model(load_model(mnist_model_path).proto)  # built in memory: no path
    options = BuildOptions(engine_path=tmp_path / "m.engine", fp16=True)
    for surface, version, name, variant in ((TRT11, "11.4.0.106", "model.fp16.onnx", "fp16"),
                                            (TRT10, "10.16.1.11", "model.onnx", None)):
        plan = plan_build(probe(_Surface(surface, version)), fp16=True)
        path, derived = _model_to_parse(model, plan, options, None, tmp_path, lambda text: None)
        assert path == tmp_path / name and (derived or {}).get("variant") == variant
        onnx.checker.check_model(onnx.load(path))


def test_engine_and_manifest_land_manifest_last(tmp_path, monkeypatch):
    """A manifest on disk always describes the engine beside it: when the engine cannot be replaced,
    the old manifest is gone rather than left describing another engine; no temporary file stays."""
    import os

    from trtq.trt.build import _write_outputs

    engine, manifest = tmp_path / "m.engine", tmp_path / "m.engine.json"
    _write_outputs(engine, manifest, b"old", {"engine": "old"})
    _write_outputs(engine, manifest, b"new", {"engine": "new"})
    assert engine.read_bytes() == b"new" and json.loads(manifest.read_text()) == {"engine": "new"}
    real_replace = os.replace

    def disk_full_for_the_engine(src, dst):
        if Path(dst) == engine:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", disk_full_for_the_engine)
    with pytest.raises(TrtqError, match="no space left on its device"):  # the user's to fix: one line, exit 2
        _write_outputs(engine, manifest, b"newer", {"engine": "newer"})
    assert engine.read_bytes() == b"new" and not manifest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine"]


# -- progress --------------------------------------------------------------------------------------


def test_progress_draws_one_status_line_on_a_terminal_and_phase_lines_in_a_log():
    from trtq.trt.progress import PlainProgress

    clock = iter([0.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]).__next__
    terminal = io.StringIO()
    progress = PlainProgress(stream=terminal, interactive=True, clock=clock)
    progress.phase_start("Building engine", None, 2)
    progress.phase_start("Tactic selection", "Building engine", 40)
    assert progress.step_complete("Tactic selection", 2) is True
    assert "Building engine 0/2 › Tactic selection 3/40" in terminal.getvalue()
    assert "\n" not in terminal.getvalue()
    progress.cancelled = True
    assert progress.step_complete("Tactic selection", 3) is False
    log = io.StringIO()
    plain = PlainProgress(stream=log, interactive=False)
    plain.phase_start("Building engine", None, 2)
    plain.phase_start("Tactic selection", "Building engine", 40)
    plain.step_complete("Tactic selection", 0)
    assert log.getvalue().count("\n") == 1 and "Building engine" in log.getvalue()
    assert plain.history == ["Building engine"]


# -- TensorRT 11: the model TensorRT parses (runs in onnxruntime here) ----------------------------------


@pytest.fixture(scope="module")
def mnist_ranges(mnist_model_path, mnist_digits):
    from trtq.calibrate import calibrate

    images, _ = mnist_digits
    model = load_model(mnist_model_path)
    return calibrate(model, [{"Input3": images[i:i + 1]} for i in range(100)], "entropy2").amax


def _top1(proto: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.array([session.run(None, {"Input3": images[i:i + 1]})[0].argmax() for i in range(len(images))])


@pytest.mark.parametrize("int8,fp16,variant", [(True, False, "qdq"), (False, True, "fp16"), (True, True, "qdq+fp16")])
def test_strongly_typed_models_keep_mnist_accuracy(mnist_model_path, mnist_digits, mnist_ranges, int8, fp16, variant):
    from trtq.trt.explicit import strongly_typed_model

    images, labels = mnist_digits
    model = load_model(mnist_model_path)
    typed = strongly_typed_model(model, int8=int8, fp16=fp16, amax=mnist_ranges)
    assert typed.variant == variant
    onnx.checker.check_model(typed.proto, full_check=True)
    ops = [node.op_type for node in typed.proto.graph.node]
    assert ("QuantizeLinear" in ops) is int8
    held_out = images[100:400]
    reference = _top1(model.proto, held_out)
    predicted = _top1(typed.proto, held_out)
    assert (predicted == reference).mean() >= 0.98
    assert (predicted == labels[100:400]).mean() >= 0.97


def test_best_on_11_feeds_float16_dequantized_tensors_straight_into_the_layers(mnist_model_path, mnist_ranges):
    """No Cast between DequantizeLinear and Conv/MatMul: TensorRT can fuse them into INT8 kernels."""
    from trtq.trt.explicit import strongly_typed_model

    typed = strongly_typed_model(load_model(mnist_model_path), int8=True, fp16=True, amax=mnist_ranges)
    inferred = onnx.shape_inference.infer_shapes(typed.proto)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*inferred.graph.value_info, *inferred.graph.input]}
    producers = {out: node for node in inferred.graph.node for out in node.output}
    layers = [node for node in inferred.graph.node if node.op_type in ("Conv", "MatMul")]
    assert len(layers) == 3
    for node in layers:
        for name in node.input[:2]:
            assert producers[name].op_type == "DequantizeLinear"
            assert types[name] == onnx.TensorProto.FLOAT16


def test_keep_precision_on_11_keeps_nodes_out_of_qdq_and_fp16(mnist_model_path, mnist_ranges):
    from trtq.trt.explicit import strongly_typed_model

    model = load_model(mnist_model_path)
    last = [n for n in model.graph.node if n.op_type == "MatMul"][0]
    typed = strongly_typed_model(model, int8=True, fp16=True, amax=mnist_ranges,
                                 keep_precision={last.output[0]: "fp32"})
    matmul = [n for n in typed.proto.graph.node if n.op_type == "MatMul"][0]
    producers = {out: node.op_type for node in typed.proto.graph.node for out in node.output}
    assert all(producers.get(name) != "DequantizeLinear" for name in matmul.input)
    with pytest.raises(TrtqError, match="no node or tensor matches 'nothing\\*'"):
        strongly_typed_model(model, int8=True, fp16=False, amax=mnist_ranges, keep_precision={"nothing*": "fp32"})
    with pytest.raises(TrtqError, match="NAME=fp16 needs --fp16"):
        strongly_typed_model(model, int8=True, fp16=False, amax=mnist_ranges, keep_precision={last.name: "fp16"})


@pytest.mark.parametrize("args,message", [
    (["--keep-precision", "Conv1=int8"], "expected LAYER_OR_TENSOR=fp16 or =fp32"),
    (["--workspace", "lots"], "bad size 'lots'"),
    (["--opt-shapes", "Input3:1x1x28"], "--opt-shapes gives 3 dimensions for input 'Input3'"),
    (["--fp16", "--keep-precision", "Conv1=fp16", "--max-shapes", "Input3:1x1x28x28"], "--max-shapes give input"),
    (["--keep-precision", "Conv1=fp16"], "NAME=fp16 needs --fp16 or --best"),
    (["--calibration-source", "tensorrt", "--ranges", "RANGES"], "cannot be combined with --calibration-source"),
])
def test_cli_build_rejects_bad_options_before_looking_for_tensorrt(tmp_path, mnist_model_path, args, message):
    ranges = tmp_path / "ranges.json"
    ranges.write_text('{"tensors": {}}')
    args = [str(ranges) if a == "RANGES" else a for a in args]
    result = CliRunner().invoke(_cli(), ["build", str(mnist_model_path), "-o", str(tmp_path / "m.engine"), *args])
    assert result.exit_code == 2, result.output
    if message:
        assert message in result.output
    assert "tensorrt" not in result.output.lower() or "calibration-source tensorrt" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ranges.json"]


def test_spinner_draws_only_on_a_terminal_and_clears_its_line():
    from trtq.trt.progress import Spinner

    log = io.StringIO()
    with Spinner(stream=log, interactive=False):
        pass
    assert log.getvalue() == ""
    terminal = io.StringIO()
    with Spinner(stream=terminal, interactive=True, interval=0.001) as spinner:
        spinner._stop.wait(0.05)
    text = terminal.getvalue()
    assert text.endswith("\r" + " " * 40 + "\r") and not spinner._thread.is_alive()
    assert all(frame.startswith(tuple(Spinner.frames)) and "building engine [" in frame
               for frame in text.split("\r")[1:-2] if frame)


def test_a_missing_keep_precision_file_is_named_as_such(tmp_path):
    from trtq.trt.build import parse_keep_precision

    with pytest.raises(TrtqError, match="^keep-precision list not found: "):
        parse_keep_precision([f"@{tmp_path / 'keep.txt'}"])


# -- INT8 by trtq quantize (the default without --calibrator): the CPU side, up to TensorRT's calls --------


def _digit_feeds(images: np.ndarray) -> list[dict[str, np.ndarray]]:
    return [{"Input3": image[None]} for image in images]


@pytest.fixture(scope="module")
def quantized_mnist(mnist_model_path, mnist_digits, tmp_path_factory):
    """quantize as build runs it, on 200 real digits, with a target (44 dB) all-INT8 misses: layers are kept."""
    from trtq.jobs.build import quantize_ranges
    from trtq.trt import probe
    from trtq.trt.build import BuildOptions

    images, _ = mnist_digits
    folder = tmp_path_factory.mktemp("quantize-build")
    options = BuildOptions(engine_path=folder / "m.engine", int8=True, calibrator="auto", min_sqnr=44.0,
                           cache_path=folder / "m.cache")
    lines: list[str] = []
    ranges, result = quantize_ranges(load_model(mnist_model_path), options, _digit_feeds(images[:200]),
                                     probe(_Surface(TRT10, "10.16.1.11")), lines.append)
    return options, ranges, result, lines


def test_quantize_path_is_planned_and_named_on_both_generations():
    from trtq.trt import probe
    from trtq.trt.plan import IMPLICIT, STRONGLY_TYPED, plan_build

    trt10, trt11 = probe(_Surface(TRT10, "10.16.1.11")), probe(_Surface(TRT11, "11.4.0.106"))
    plan = plan_build(trt10, int8=True, fp16=True, calibrator="auto")
    assert plan.path == IMPLICIT and plan.source == "trtq" and plan.quantize
    assert plan.message.startswith("TensorRT 10.16: INT8 by implicit quantization; trtq quantize (auto ranges + "
                                   "keep-in-float search) on the CPU, its ranges served to TensorRT as an "
                                   "EntropyCalibration2 cache and its kept layers as precision constraints")
    assert "trtq quantize (auto ranges + 2 layers kept) on the CPU" in plan.quantized(2).message
    assert "(auto ranges + 1 layer kept)" in plan.quantized(1).message
    plan = plan_build(trt11, int8=True, calibrator="auto")
    assert plan.path == STRONGLY_TYPED and plan.onnx_variant == "qdq" and plan.quantize
    assert plan.quantized(0).message == ("TensorRT 11.4: no built-in calibrators; building the Q/DQ model of trtq "
                                         "quantize (auto ranges + 0 layers kept), verified on the CPU, with its kept "
                                         "layers left in float (the default INT8 path)")
    assert not plan_build(trt11, fp16=True, calibrator="auto").quantize
    with pytest.raises(TrtqError, match="for TensorRT's own calibrator give --calibrator entropy2"):
        plan_build(trt10, int8=True, calibrator="auto", source="tensorrt")


def test_quantize_for_10x_writes_its_ranges_as_the_served_cache(quantized_mnist):
    """The cache served to TensorRT (and written to --cache at once) holds quantize's ranges, header
    EntropyCalibration2 of the build's TensorRT; the record names what was chosen and verified."""
    from trtq.cache import parse_cache
    from trtq.trt import probe
    from trtq.trt.build import served_cache

    options, ranges, result, lines = quantized_mnist
    assert result.ok and result.keep and ranges.computed
    served = parse_cache(served_cache(ranges, probe(_Surface(TRT10, "10.16.1.11"))))
    assert served.header == "TRT-101601-EntropyCalibration2"
    usable = result.usable_amax  # data ranges > 0 and the weight-derived tensors' max|w|
    assert set(served.amax()) == set(usable) and served.amax() == pytest.approx(usable, rel=1e-6)
    assert options.cache_path.read_bytes() == served.to_bytes()
    record = ranges.quantize
    assert record["keep"] == result.keep and record["method"] == result.method and record["chosen_by_auto"]
    assert record["target"]["min_sqnr_db"] == 44.0 and record["verification"]["meets_target"]
    assert record["verification"]["sqnr_db"] == pytest.approx(result.final_step.sqnr_db)
    assert ranges.origin == f"trtq quantize (auto ranges + {len(result.keep)} layers kept) on {result.stats.samples} " \
                           "samples"
    assert lines[0].startswith("trtq: trtq quantize (auto ranges + keep-in-float search) on the CPU")
    assert lines[-1].startswith(f"trtq: quantize: {result.method} ranges (chosen by auto); {len(result.keep)} of "
                                f"{result.layers} quantized layers kept in float ({', '.join(result.keep)})")


class _Layer:
    def __init__(self, name: str, outputs: list[str], dtype):
        self.name, self.num_outputs, self.precision = name, len(outputs), None
        self._outputs = [type("Tensor", (), {"name": o, "dtype": dtype})() for o in outputs]
        self.output_types: dict[int, object] = {}

    def get_output(self, index):
        return self._outputs[index]

    def set_output_type(self, index, data_type):
        self.output_types[index] = data_type


@pytest.mark.parametrize("fp16", [False, True], ids=["int8", "best"])
def test_quantize_for_10x_turns_the_kept_layers_into_precision_constraints(quantized_mnist, mnist_model_path, fp16):
    """The kept layers become --keep-precision rules exactly as bare names of @FILE do (fp16 with FP16,
    else fp32), and implicit.apply_keep_precision pins those layers of a network named after the ONNX
    nodes (TensorRT names layers so): the enums are stand-ins, the matching and pinning code is trtq's."""
    from types import SimpleNamespace

    from trtq.trt import implicit
    from trtq.trt.build import parse_keep_precision, with_kept_layers

    _, ranges, result, _ = quantized_mnist
    rules = with_kept_layers({}, ranges.quantize["keep"], fp16=fp16)
    listing = "\n".join(result.keep)
    assert rules == parse_keep_precision(listing.splitlines(), fp16=fp16)
    assert with_kept_layers({result.keep[0]: "fp32"}, result.keep, fp16=True)[result.keep[0]] == "fp32"  # user wins

    trt = SimpleNamespace(DataType=SimpleNamespace(FLOAT="FLOAT", HALF="HALF"),
                          BuilderFlag=SimpleNamespace(PREFER_PRECISION_CONSTRAINTS="PREFER",
                                                      OBEY_PRECISION_CONSTRAINTS="OBEY"))
    nodes = load_model(mnist_model_path).graph.node
    layers = [_Layer(node.name, list(node.output), "FLOAT") for node in nodes]
    network = SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])
    flags = []
    config = SimpleNamespace(set_flag=flags.append)
    matched = implicit.apply_keep_precision(trt, network, config, rules, "prefer")
    assert matched == {name: [name] for name in result.keep} and flags == ["PREFER"]
    pinned = {layer.name: layer.precision for layer in layers if layer.precision is not None}
    assert pinned == {name: "HALF" if fp16 else "FLOAT" for name in result.keep}


def test_quantize_for_11x_hands_the_builder_quantizes_own_qdq_model(quantized_mnist, mnist_model_path, tmp_path):
    """11.x: the ONNX file TensorRT parses is quantize's verified Q/DQ model, byte for byte; exported again
    from the recorded ranges with the kept layers (what `trtq run` builds from) it is the same model; with
    --best the kept layers run in FP16 and only the quantized layers are fed by DequantizeLinear."""
    from trtq.trt import probe
    from trtq.trt.build import BuildOptions, _model_to_parse, with_kept_layers
    from trtq.trt.plan import plan_build

    _, ranges, result, _ = quantized_mnist
    model = load_model(mnist_model_path)
    info = probe(_Surface(TRT11, "11.4.0.106"))
    plan = plan_build(info, int8=True, calibrator="auto").quantized(len(result.keep))
    options = BuildOptions(engine_path=tmp_path / "m.engine", int8=True, calibrator="auto")
    rules = with_kept_layers({}, result.keep, fp16=False)
    path, derived = _model_to_parse(model, plan, options, ranges, tmp_path, lambda text: None, rules,
                                    result.export.model)
    assert derived["variant"] == "qdq"
    assert onnx.load(str(path)).SerializeToString() == result.export.model.SerializeToString()
    (tmp_path / "again").mkdir()
    again, _ = _model_to_parse(model, plan, options, ranges, tmp_path / "again", lambda text: None, rules)
    assert onnx.load(str(again)).SerializeToString() == result.export.model.SerializeToString()

    best = plan_build(info, int8=True, fp16=True, calibrator="auto").quantized(len(result.keep))
    options = BuildOptions(engine_path=tmp_path / "m.engine", int8=True, fp16=True, calibrator="auto")
    (tmp_path / "best").mkdir()
    path, derived = _model_to_parse(model, best, options, ranges, tmp_path / "best", lambda text: None,
                                    with_kept_layers({}, result.keep, fp16=True), result.export.model)
    assert derived["variant"] == "qdq+fp16"
    proto = onnx.load(str(path))
    producers = {out: node.op_type for node in proto.graph.node for out in node.output}
    fed_by_dq = {node.name for node in proto.graph.node
                 if any(producers.get(name) == "DequantizeLinear" for name in node.input)
                 and node.op_type not in ("QuantizeLinear", "DequantizeLinear")}
    assert fed_by_dq == set(result.export.plan.quantized_nodes) and not fed_by_dq & set(result.keep)
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)


def test_a_missed_quantize_target_is_exit_3_and_writes_nothing(tmp_path, mnist_model_path, mnist_digits):
    from trtq.errors import TargetMissed
    from trtq.jobs.build import quantize_ranges
    from trtq.trt import probe
    from trtq.trt.build import BuildOptions

    images, _ = mnist_digits
    options = BuildOptions(engine_path=tmp_path / "m.engine", int8=True, calibrator="auto", min_sqnr=90.0,
                           cache_path=tmp_path / "m.cache")
    with pytest.raises(TargetMissed) as info:
        quantize_ranges(load_model(mnist_model_path), options, _digit_feeds(images[:100]),
                        probe(_Surface(TRT10, "10.16.1.11")), lambda text: None)
    assert info.value.exit_code == 3 and "\n" not in str(info.value)
    assert str(info.value).startswith("trtq quantize: the target (SQNR >= 90 dB) is not met with up to 90% of the 5 "
                                      "quantized layers kept in float")
    assert "no engine built" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def _fake_builder_tensorrt(monkeypatch, surface, version):
    """TensorRT as far as build_engine gets before its first builder call: the recorded API surface for the
    probe and the plan, a logger and a builder that exist (so that the CPU work after them runs)."""
    import trtq.trt.build as build_module
    from trtq.trt import engine

    monkeypatch.setattr(build_module, "import_tensorrt", lambda purpose=None: _Surface(surface, version))
    monkeypatch.setattr(engine, "logger_class", lambda trt: lambda **kwargs: object())
    monkeypatch.setattr(engine, "create_builder", lambda trt, logger: object())


@pytest.mark.parametrize("surface,version", [(TRT10, "10.16.1.11"), (TRT11, "11.4.0.106")], ids=["trt10", "trt11"])
def test_cli_build_with_a_missed_quantize_target_exits_3_in_one_line_and_writes_nothing(
        tmp_path, mnist_model_path, mnist_digits, monkeypatch, surface, version):
    images, _ = mnist_digits
    data = tmp_path / "digits.npy"
    np.save(data, images[:60])
    out = tmp_path / "out"
    out.mkdir()
    _fake_builder_tensorrt(monkeypatch, surface, version)
    result = CliRunner().invoke(_cli(), ["build", str(mnist_model_path), "--int8", "--data", str(data),
                                         "--min-sqnr", "90", "--cache", str(out / "m.cache"),
                                         "-o", str(out / "m.engine")])
    assert result.exit_code == 3, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert "trtq quantize (auto ranges + keep-in-float search)" in lines[0]
    errors = [line for line in lines if line.startswith("trtq: error:")]
    assert errors == [lines[-1]] and "not met with up to 90% of the 5 quantized layers kept in float" in errors[0]
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("args,message", [
    ([], "INT8 without --calibrator runs trtq quantize on the CPU, which needs --data"),
    (["--best", "--cache", "CACHE"], "INT8 without --calibrator runs trtq quantize on the CPU, which needs --data"),
    (["--calibrator", "minmax", "--max-drop", "1", "--data", "DATA"], "--min-sqnr/--max-drop set the accuracy target"),
    (["--calibrator", "auto", "--ranges", "RANGES"], "give --calibrator with --ranges, or drop --ranges"),
])
def test_cli_build_quantize_usage_errors_come_before_tensorrt(tmp_path, mnist_model_path, args, message):
    """On this machine (no tensorrt package) these must be the error, not the missing TensorRT."""
    ranges = tmp_path / "ranges.json"
    ranges.write_text('{"tensors": {}}')
    data = tmp_path / "d.npy"
    np.save(data, np.zeros((2, 1, 28, 28), np.float32))
    swap = {"RANGES": str(ranges), "DATA": str(data), "CACHE": str(tmp_path / "m.cache")}
    result = CliRunner().invoke(_cli(), ["build", str(mnist_model_path), "--int8", "-o", str(tmp_path / "m.engine"),
                                         *[swap.get(a, a) for a in args]])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("trtq: error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npy", "ranges.json"]


def test_engine_manifest_records_what_quantize_chose(quantized_mnist, mnist_model_path, tmp_path):
    from trtq.trt import probe
    from trtq.trt.build import _manifest, resolve_shapes, with_kept_layers
    from trtq.trt.plan import plan_build

    options, ranges, result, _ = quantized_mnist
    model = load_model(mnist_model_path)
    info = probe(_Surface(TRT10, "10.16.1.11"))
    plan = plan_build(info, int8=True, calibrator="auto").quantized(len(result.keep))
    rules = with_kept_layers({}, result.keep, fp16=False)
    manifest = _manifest(model, options, info, plan, resolve_shapes(model, {}, {}, {}), None, ranges, None,
                         {name: [name] for name in rules}, None, None, 1.0, b"engine", tmp_path / "m.engine", None,
                         rules)
    kept = len(result.keep)
    assert f"trtq quantize (auto ranges + {kept} layers kept)" in manifest["path"]["reason"]
    assert manifest["calibration"]["ranges"].startswith(f"trtq quantize (auto ranges + {kept} layers kept)")
    assert manifest["calibration"]["calibrator"] == "auto" and manifest["calibration"]["source"] == "trtq"
    chosen = manifest["calibration"]["quantize"]
    assert chosen["method"] == result.method and chosen["keep"] == result.keep
    assert chosen["target"]["text"] == "SQNR >= 44 dB" and chosen["verification"]["meets_target"]
    assert manifest["keep_precision"]["rules"] == rules and manifest["keep_precision"]["from_quantize"] == result.keep
    json.dumps(manifest)  # all of it is JSON
