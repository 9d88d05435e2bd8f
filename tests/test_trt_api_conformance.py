"""trtq's TensorRT layer against the REAL tensorrt bindings of 10.16.1.11 and 11.4.0.106.

Each test runs once per version. The bindings come from PyPI and import with stand-in native
libraries (``tests/trt_api_env.py``); the exercising happens in one subprocess per version
(``tests/trt_api_checks.py``) and these tests assert on what it observed.

Verified: calibrator subclasses of the real ``IInt8*Calibrator*`` classes (base ``__init__`` called,
``get_algorithm``, C++ trampoline dispatch to trtq's overrides, batches served as pointers in name
order with the right bytes and then ``None``, buffers allocated once and freed, the cache contract);
progress monitor and logger subclasses; every ``trt.*`` name and builder/config/network member trtq
uses resolves, with the right kind, on the version that runs that path; ``trt.Builder`` failing (as
without a GPU) surfaces as one clean line with no files left behind, through the API and the CLI.
Not verified here (no TensorRT library, no GPU): that TensorRT calibrates, builds or runs an engine.
"""

from __future__ import annotations

import shlex

import numpy as np
import pytest

from tests.trt_api_checks import COMMON_MODULES, IMPLICIT_MODULES
from tests.trt_api_env import REPO, TrtApiEnv

ALGORITHMS = {"entropy2": "ENTROPY_CALIBRATION_2", "entropy": "ENTROPY_CALIBRATION",
              "minmax": "MINMAX_CALIBRATION", "legacy": "LEGACY_CALIBRATION"}
HEADERS = {"entropy2": "EntropyCalibration2", "entropy": "EntropyCalibration", "minmax": "MinMaxCalibration",
           "legacy": "LegacyCalibration"}
NO_BUILDER = "could not create a builder (pybind11::init(): factory function returned nullptr): no usable NVIDIA GPU"


def _is_10(report: dict) -> bool:
    return report["version"].startswith("10.")


def test_the_real_bindings_are_imported(trt_api_report, trt_api_env: TrtApiEnv):
    assert trt_api_report["version"] == trt_api_env.version
    assert trt_api_report["module_file"].startswith(str(trt_api_env.root))
    assert trt_api_env.package in ("tensorrt-cu12-bindings", "tensorrt-cu13-bindings")


def test_probe_finds_what_each_version_offers(trt_api_report):
    probe = trt_api_report["probe"]
    assert probe["has_progress_monitor"]
    if _is_10(trt_api_report):
        assert probe["implicit_quantization"] and probe["calibrators"] == list(ALGORITHMS)
        assert {"INT8", "FP16", "PREFER_PRECISION_CONSTRAINTS"} <= set(probe["builder_flags"])
    else:
        assert not probe["implicit_quantization"] and probe["calibrators"] == []
        assert not {"INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"} & set(probe["builder_flags"])
        assert not probe["has_int8_calibrator"] and not probe["has_layer_precision"]


def test_plans_on_the_real_module(trt_api_report):
    plans = trt_api_report["plans"]
    if _is_10(trt_api_report):
        assert plans["int8"]["path"] == "implicit-quantization" and plans["int8"]["source"] == "tensorrt"
        assert plans["int8"]["message"].startswith("TensorRT 10.16: INT8 by implicit quantization; TensorRT's "
                                                   "IInt8EntropyCalibrator2")
        assert plans["int8_percentile"]["source"] == "trtq"
        assert plans["int8_legacy"]["source"] == "tensorrt"
    else:
        assert plans["int8"] == {
            "path": "strongly-typed", "source": "trtq", "variant": "qdq", "precisions": ["fp32", "int8"],
            "message": "TensorRT 11.4: no built-in calibrators; using trtq's entropy2 ranges as explicit Q/DQ",
        }
        assert plans["fp16"]["variant"] == "fp16" and plans["best"]["variant"] == "qdq+fp16"
        assert "no built-in calibrators" in plans["int8_source_tensorrt"]["error"]
        assert "legacy calibrator exists only in TensorRT 10" in plans["int8_legacy"]["error"]


def test_every_name_the_common_path_uses_exists_with_the_right_kind(trt_api_report):
    uses = [u for u in trt_api_report["uses"] if u["module"] in COMMON_MODULES]
    assert len(uses) > 25
    assert [u for u in uses if u["problem"]] == []


def test_implicit_path_names_exist_on_10_and_its_removed_apis_are_absent_on_11(trt_api_report):
    uses = [u for u in trt_api_report["uses"] if u["module"] in IMPLICIT_MODULES]
    problems = {(u["owner"], u["name"], u["member"]): u["problem"] for u in uses if u["problem"]}
    if _is_10(trt_api_report):
        assert problems == {}
    else:
        assert problems[("", "IInt8EntropyCalibrator2", "")] == "no trt.IInt8EntropyCalibrator2"
        assert problems[("", "BuilderFlag", "INT8")] == "trt.BuilderFlag has no 'INT8'"
        assert problems[("IBuilderConfig", "int8_calibrator", "")] == "trt.IBuilderConfig has no 'int8_calibrator'"
        assert ("ILayer", "set_output_type", "") in problems


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_calibrator_subclasses_the_real_base_and_serves_batches(trt_api_report, algorithm):
    if not _is_10(trt_api_report):
        assert "no INT8 calibrator classes (removed in TensorRT 11" in trt_api_report["calibrator_class_error"]
        return
    result = trt_api_report["calibrators"][algorithm]
    assert result["isinstance_base"] and result["isinstance_IInt8Calibrator"]
    assert result["mro"][:3] == [f"Trtq{result['mro'][2]}", "CalibratorCore", result["mro"][2]]
    assert result["algorithm"] == ALGORITHMS[algorithm]
    assert result["expected_header"] == f"TRT-101601-{HEADERS[algorithm]}"
    assert result["trampoline_get_batch_size"] == 7  # C++ virtual -> Python override on trtq's class
    served = result["served"]
    assert [s is None for s in served] == [False, False, False, True, True]  # 3 full batches, partial skipped
    pointers = {tuple(s["pointers"]) for s in served[:3]}
    assert len(pointers) == 1 and len(set(next(iter(pointers)))) == 2  # one buffer per input, reused
    assert all(s["bytes_match"] == [True, True] for s in served[:3])  # names order: ids, then images
    assert result["after_end"] is None and result["failure"] is None
    assert result["batches_served"] == 3 and result["samples_served"] == 6
    assert result["allocations"] == 2 and result["live_buffers_before_close"] == 2
    assert result["live_buffers_after_close"] == 0 and result["live_buffers_at_end"] == 0
    assert result["warnings_batches"] == ["skipped a partial batch of 1 sample(s): TensorRT calibrates at the "
                                          "fixed shape [2, 3, 4, 4]"]
    assert result["bad_shape_get_batch"] is None
    assert "has shape [2, 3, 5, 5], but TensorRT calibrates at the opt shape [2, 3, 4, 4]" in result["bad_shape_error"]
    assert result["missing_input_get_batch"] is None
    assert result["missing_input_error"] == "TensorRT asks for input 'ids' but the calibration batch has only: images"
    if algorithm == "legacy":
        assert result["quantile"] == pytest.approx(0.9) and result["regression_cutoff"] == pytest.approx(0.25)


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_calibration_cache_contract(trt_api_report, algorithm):
    if not _is_10(trt_api_report):
        pytest.skip("TensorRT 11 has no calibrators and no calibration cache")
    cache = trt_api_report["calibrators"][algorithm]["cache"]
    assert cache["missing"] is None
    assert cache["written_equal"] and cache["files_after_write"] == ["model.cache"]  # atomic: no temp left
    assert cache["matching"] is True
    assert cache["stale_version"] is None and cache["wrong_algorithm"] is None and cache["garbage"] is None
    stale, wrong, garbage = cache["warnings"]
    assert f"written as TRT-100001-{HEADERS[algorithm]}, this build needs TRT-101601-{HEADERS[algorithm]}" in stale
    assert f"this build needs TRT-101601-{HEADERS[algorithm]}" in wrong and "written as TRT-101601-" in wrong
    assert "binary data; calibrating" in garbage
    assert cache["failure"] is None


def test_trtq_ranges_are_served_as_a_cache_without_batches(trt_api_report):
    if not _is_10(trt_api_report):
        pytest.skip("TensorRT 11 takes trtq's ranges as Q/DQ, not as a cache")
    served = trt_api_report["served_cache"]
    assert served == {"read": True, "header": "TRT-101601-EntropyCalibration2",
                      "expected_header": "TRT-101601-EntropyCalibration2", "get_batch": None, "cache_used": True}


def test_quantize_ranges_are_served_as_the_cache_through_the_real_calibrator(trt_api_report):
    """10.x default INT8 path: the cache TensorRT reads through trtq's real IInt8EntropyCalibrator2 subclass
    holds quantize's ranges (every usable tensor, float32 scales), is the --cache written, and no batch is
    served."""
    if not _is_10(trt_api_report):
        pytest.skip("TensorRT 11 builds quantize's Q/DQ model instead")
    served = trt_api_report["served_quantize"]
    assert served["header"] == served["expected_header"] == "TRT-101601-EntropyCalibration2"
    assert served["tensors"] == served["quantize_tensors"] and len(served["tensors"]) > 5
    assert served["max_rel_error"] < 1e-6
    assert served["cache_file_equal"] and served["get_batch"] is None and served["cache_used"]
    keep = len(served["keep"])
    layers = f"{keep} layer{'' if keep == 1 else 's'}"
    # cross-fitting: the written ranges come from every sample (no batch is held out of them any more)
    assert served["origin"] == f"trtq quantize (auto ranges + {layers} kept) on 100 samples"
    assert served["echo"][0].startswith("trtq: trtq quantize (auto ranges + keep-in-float search) on the CPU")
    assert any(line.startswith("trtq: quantize: target: ") for line in served["echo"])
    assert "quantized layers kept in float" in served["echo"][-1]


def test_network_walk_runs_on_the_real_enums_and_weights(trt_api_report):
    """Issue 15: every name the served-cache walk uses exists in the real 10.16 bindings (the scanner covers
    ``trt.*``, ``network.*``, ``layer.*``, ``tensor.*``; the rest is checked here), and the walk gives the
    ranges expected on a parsed LayerNorm/PReLU-style block built from real ``trt.DataType``/``trt.LayerType``
    members and real ``trt.Weights``."""
    from tests.fake_network import EXPECTED_COUNTS, EXPECTED_SET

    uses = [u for u in trt_api_report["uses"] if u["module"] == "range_walk.py"]
    names = {(u["owner"], u["name"], u["member"], u["usage"]) for u in uses}
    assert {("ITensor", "dynamic_range", "", "set"), ("ITensor", "dynamic_range", "", "get"),
            ("INetworkDefinition", "get_layer", "", "call"), ("ILayer", "get_output", "", "call"),
            ("", "IConstantLayer", "", "get"), ("", "LayerType", "CONSTANT", "get"),
            ("", "DataType", "BF16", "get")} <= names
    problems = [u for u in uses if u["problem"]]
    if not _is_10(trt_api_report):
        assert {u["name"] for u in problems} == {"dynamic_range"}  # explicit quantization only on 11
        return
    assert problems == []
    walk = trt_api_report["range_walk"]
    assert walk["constant_weights_is_property"] and walk["constant_is_a_layer"] and walk["weights_numpy_is_method"]
    assert walk["dynamic_range_settable"] and walk["dynamic_range_doc_says_none_when_unset"]
    assert walk["counts"] == EXPECTED_COUNTS
    assert walk["set"] == pytest.approx(EXPECTED_SET)
    assert {name: [tuple(a) for a in v] for name, v in walk["assignments"].items()} == {
        name: [(-amax, amax)] for name, amax in EXPECTED_SET.items()}  # set once each, never a cached tensor
    assert walk["echo"] == ["trtq: network ranges: 2 tensors from the cache, 2 from weights, 4 from the walk, "
                            "5 without a range (conv_out, zeros_output, bf16_output, z, z_reshaped)"]


def test_progress_monitor_subclasses_the_real_interface(trt_api_report):
    progress = trt_api_report["progress"]
    assert progress["isinstance"] and progress["mro"][:3] == ["TrtqProgressMonitor", "BuildProgress",
                                                             "IProgressMonitor"]
    assert progress["step"] is True and progress["trampoline_step_complete"] is True
    assert progress["step_after_cancel"] is False  # Ctrl-C: TensorRT is asked to stop
    assert progress["status"].endswith("Building engine 0/2 › Tactic selection 1/4")
    assert progress["history"] == ["Building engine"] and progress["open_phases"] == 0


def test_logger_subclasses_the_real_ilogger(trt_api_report):
    logger = trt_api_report["logger"]
    assert logger["isinstance"] and logger["trampoline_log"] == "dispatched"
    assert logger["shown"] == ["tensorrt: [error] parse failed", "tensorrt: [warning] slow",
                               "tensorrt: [internal_error] via the C++ trampoline"]
    assert logger["errors"] == ["parse failed", "via the C++ trampoline"] and logger["warnings"] == ["slow"]


def test_builder_failure_is_one_clean_line_and_leaves_no_file(trt_api_report):
    builder = trt_api_report["builder"]
    short = ".".join(trt_api_report["version"].split(".")[:2])
    assert builder["create_builder"].startswith(f"TensorRT {short} {NO_BUILDER}")
    assert "TypeError" in builder["create_builder_cause"]
    cases = ["fp16", "int8_trtq_ranges", "int8_default", "int8_tensorrt_source"]
    for case in cases:
        result = builder[case]
        assert result["files_left"] == [], case
        assert "\n" not in result["error"] and result["error_type"] == "TrtqError", case
    for case in cases if _is_10(trt_api_report) else cases[:3]:
        assert builder[case]["error"].startswith(f"TensorRT {short} {NO_BUILDER}"), case
        assert "`trtq calibrate` and `trtq export` work" in builder[case]["error"]
        assert builder[case]["echo"][0].startswith(f"trtq: TensorRT {short}: "), case  # the path, said first
    if not _is_10(trt_api_report):
        assert "no built-in calibrators" in builder["int8_tensorrt_source"]["error"]
    ranges_only = builder["int8_ranges_only"]  # a ranges file alone means trtq's ranges, also on 10.x
    assert ranges_only["files_left"] == [] and ranges_only["error"].startswith(f"TensorRT {short} {NO_BUILDER}")
    assert ranges_only["echo"] == builder["int8_trtq_ranges"]["echo"]
    quantizing = builder["int8_quantize"]  # the default INT8 path: the builder fails before quantize runs
    assert quantizing["error"].startswith(f"TensorRT {short} {NO_BUILDER}") and quantizing["files_left"] == []
    assert "trtq quantize (auto ranges + keep-in-float search)" in quantizing["echo"][0]
    assert len(quantizing["echo"]) == 1
    no_quantize_data = builder["int8_quantize_no_data"]  # checked before TensorRT is even asked anything
    assert no_quantize_data["echo"] == [] and no_quantize_data["files_left"] == []
    assert no_quantize_data["error"].startswith("INT8 without --calibrator runs trtq quantize on the CPU, which "
                                                "needs --data")
    no_data = builder["int8_no_data"]  # a user error is reported before the GPU is needed
    assert no_data["files_left"] == [] and NO_BUILDER not in no_data["error"]
    assert no_data["error"].startswith("INT8 calibration needs data: give --data, or a --cache holding "
                                       "TRT-101601-EntropyCalibration2" if _is_10(trt_api_report)
                                       else "INT8 needs ranges: give --data")


def test_an_already_quantized_model_builds_as_it_is_on_the_real_bindings(trt_api_report):
    """Issue 13: a Q/DQ model takes the explicit path: 10.x sets the real INT8 flag and no calibrator, 11.x
    sets nothing (strongly typed); the build reaches the builder with no calibration and leaves no file."""
    report = trt_api_report["prequantized"]
    short = ".".join(trt_api_report["version"].split(".")[:2])
    assert report["explicit"]
    plan = report["plan_int8"]
    assert plan["kind"] == "explicit (model's own Q/DQ)" and plan["onnx_variant"] == "original"
    assert plan["calibrator"] is None and plan["calibration_source"] is None and plan["precisions"] == ["fp32", "int8"]
    assert plan["reason"].startswith(f"TensorRT {short}: explicit (model's own Q/DQ): 8 Q/DQ pairs")
    if _is_10(trt_api_report):
        assert plan["flags"] == ["BuilderFlag.INT8"] and plan["real_flags"]
        assert "INT8 builder flag set for the Q/DQ layers, no calibrator" in plan["reason"]
        assert report["plan_fp16"]["flags"] == ["BuilderFlag.FP16", "BuilderFlag.INT8"]
    else:
        assert plan["flags"] == [] and "strongly typed, no calibrator, parsed as it is" in plan["reason"]
        assert "builds mnist.qdq.onnx strongly typed, as it is" in report["plan_fp16"]["error"]
    build = report["build"]
    assert build["echo"][0] == f"trtq: {plan['reason']}" and build["files_left"] == []
    assert build["error"].startswith(f"TensorRT {short} {NO_BUILDER}")
    with_cache = report["build_with_cache"]
    assert "so --cache would be ignored; leave it out" in with_cache["error"] and with_cache["files_left"] == []
    assert NO_BUILDER not in with_cache["error"]  # refused before TensorRT is asked for a builder


# -- straight on the environment (no checker) ----------------------------------------------------------

_CALLBACKS_10 = ("get_batch", "get_batch_size", "read_calibration_cache", "write_calibration_cache",
                 "get_quantile", "get_regression_cutoff", "read_histogram_cache", "write_histogram_cache")
_CALLBACKS = ("phase_start", "step_complete", "phase_finish", "log")


def test_overridden_callbacks_are_the_names_the_native_trampolines_look_up(trt_api_env: TrtApiEnv):
    """TensorRT calls Python overrides by name from C++; those names are strings in the real module,
    and trtq's classes define every one of them."""
    from trtq.trt.calibrators import CalibratorCore
    from trtq.trt.engine import LogCollector
    from trtq.trt.progress import BuildProgress

    binary = (trt_api_env.site / "tensorrt_bindings" / "tensorrt.so").read_bytes()
    in_binary = {name: b"\0" + name.encode() + b"\0" in binary for name in _CALLBACKS + _CALLBACKS_10}
    assert all(in_binary[name] for name in _CALLBACKS)
    if trt_api_env.version.startswith("10."):
        assert all(in_binary[name] for name in _CALLBACKS_10)
    else:  # the calibrator trampolines went with the classes
        assert not any(in_binary[name] for name in ("get_quantile", "read_histogram_cache", "write_calibration_cache"))
    for owner, names in ((CalibratorCore, _CALLBACKS_10), (BuildProgress, _CALLBACKS[:3]), (LogCollector, ("log",))):
        for name in names:
            assert callable(getattr(owner, name, None)), (owner.__name__, name)


def test_tensorrt_without_its_libraries_is_a_clean_error(trt_api_env: TrtApiEnv):
    code = ("from trtq.trt import import_tensorrt\nfrom trtq.errors import TrtqError, MissingDependencyError\n"
            "try:\n    import_tensorrt()\nexcept MissingDependencyError as e:\n    print('MISSING', e)\n"
            "except TrtqError as e:\n    print('ERROR', e)\n")
    result = trt_api_env.run(["-c", code], with_libraries=False)
    assert result.returncode == 0, result.stderr
    out = result.stdout.strip()
    major = trt_api_env.version.split(".")[0]
    assert out.startswith("ERROR the tensorrt package is installed but cannot be loaded (")
    assert f"libnvonnxparser.so.{major}" in out or f"libnvinfer.so.{major}" in out
    assert "trtq calibrate" in out and "\n" not in out


@pytest.mark.parametrize("calibrator", [None, "entropy2"], ids=["default-quantize", "entropy2"])
def test_cli_build_reports_the_path_then_the_missing_gpu_and_exits_2(trt_api_env: TrtApiEnv, tmp_path, calibrator):
    """Without --calibrator the path is trtq quantize (the default since issue 10); the builder is created
    before quantize runs, so a machine without a GPU says so before minutes of CPU work, and no cache is
    written. An explicit --calibrator entropy2 keeps the former default path."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    digits = tmp_path / "digits.npy"
    with np.load(REPO / "tests" / "data" / "mnist-test-first1000.npz") as data:
        np.save(digits, data["images"][:16, None].astype(np.float32))
    chosen = ["--calibrator", calibrator] if calibrator else []
    result = trt_api_env.run(["-m", "trtq", "build", str(REPO / "calib_data" / "mnist-8.onnx"), "--int8",
                              "--data", str(digits), "--cache", str(out_dir / "mnist.cache"),
                              "-o", str(out_dir / "mnist.engine"), *chosen], cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    short = ".".join(trt_api_env.version.split(".")[:2])
    is_10 = trt_api_env.version.startswith("10.")
    if calibrator:
        expected_path = ("INT8 by implicit quantization" if is_10
                         else "no built-in calibrators; using trtq's entropy2 ranges as explicit Q/DQ")
    else:
        expected_path = ("INT8 by implicit quantization; trtq quantize (auto ranges + keep-in-float search) on the "
                         "CPU, its ranges served to TensorRT as an EntropyCalibration2 cache and its kept layers as "
                         "precision constraints" if is_10 else
                         "no built-in calibrators; building the Q/DQ model of trtq quantize (auto ranges + "
                         "keep-in-float search), verified on the CPU")
    assert lines[0].startswith(f"trtq: TensorRT {short}: ") and expected_path in lines[0]
    assert lines[-1].startswith(f"trtq: error: TensorRT {short} {NO_BUILDER}")
    assert not any("quantize:" in line for line in lines)  # the builder failed before quantize could start
    assert result.stdout == ""
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("float_precision", ["fp32", "fp16"])
def test_the_tensorrt_handoff_quantize_prints_runs_as_printed(trt_api_env: TrtApiEnv, tmp_path, float_precision):
    """Issue 24: ``trtq quantize`` ends with the build commands for both TensorRT generations. Each, run exactly
    as printed against the real bindings, is accepted (options, files, path) and gets as far as the builder,
    which is what a machine without a GPU cannot create. With ``--float-precision fp16`` TensorRT 10 builds ``--best``
    (the kept layers in FP16); TensorRT 11 builds the model as it is typed."""
    digits = tmp_path / "digits.npy"
    with np.load(REPO / "tests" / "data" / "mnist-test-first1000.npz") as data:
        np.save(digits, data["images"][:64, None].astype(np.float32))
    quantized = trt_api_env.run(["-m", "trtq", "quantize", str(REPO / "calib_data" / "mnist-8.onnx"), "--data",
                                 str(digits), "--exclude", "Times212", "--calibrator", "minmax", "-o", "q.onnx",
                                 "--float-precision", float_precision], cwd=tmp_path)
    assert quantized.returncode == 0, quantized.stdout + quantized.stderr
    handoff = next(line for line in quantized.stdout.splitlines() if line.startswith("build: "))
    eleven, ten = (part.split(": ", 1)[1] for part in handoff.removeprefix("build: ").split("; "))
    assert ten.endswith("--keep-precision @q.keep.txt")  # the excluded layer stays float on TensorRT 10 too
    assert (" --best " if float_precision == "fp16" else " --int8 ") in ten and eleven.endswith(" --int8")
    command = ten if trt_api_env.version.startswith("10.") else eleven
    assert command.startswith("trtq build ")
    result = trt_api_env.run(["-m", "trtq", *shlex.split(command)[1:]], cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    short = ".".join(trt_api_env.version.split(".")[:2])
    assert lines[0].startswith(f"trtq: TensorRT {short}: ")
    assert lines[-1].startswith(f"trtq: error: TensorRT {short} {NO_BUILDER}"), result.stderr
