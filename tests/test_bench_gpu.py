"""`trtq bench` and `trtq report` on a real engine: needs TensorRT (10.x or 11.x), a CUDA binding and a GPU.

A tiny engine (Conv-Relu-GlobalAveragePool-Flatten-Gemm, dynamic batch) is built from an
``onnx.helper`` model with TensorRT's own API and detailed profiling verbosity. The assertions are
about structure and definitions, never about how fast the GPU is: per-query events are ordered,
latency = H2D + compute + D2H, throughput = queries / walltime, per-layer rows join the inspector's
layers, and trtq's statistics reproduce trtexec's printed summary from trtexec's own per-query times.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from trtq.cli import cli

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def trt(tensorrt_gpu):
    """The tensorrt module on a machine with a usable GPU (tests/trt_api_env.py skips with the reason)."""
    return tensorrt_gpu[0]


def _tiny_onnx() -> bytes:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(8,)).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def engine_path(trt, tmp_path_factory) -> Path:
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(_tiny_onnx()), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 3, 16, 16), (4, 3, 16, 16), (8, 3, 16, 16))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    assert serialized is not None
    path = tmp_path_factory.mktemp("engine") / "tiny.engine"
    path.write_bytes(bytes(memoryview(serialized)))
    return path


def _settings(**kw):
    from trtq.report.trtexec_cmd import BenchSettings

    base = dict(warmup_ms=50.0, iterations=40, duration_s=0.2, cuda_graph=False, data_transfers=True,
                shapes={"x": (4, 3, 16, 16)})
    base.update(kw)
    return BenchSettings(**base)


def test_bench_measures_like_trtexec(engine_path: Path) -> None:
    from trtq.report.gpu_bench import run_gpu_bench
    from trtq.report.profile import join_profile
    from trtq.report.timing import throughput_qps

    result = run_gpu_bench(engine_path, _settings(), profile_iterations=10)
    stats, trace = result.stats, result.trace
    assert result.shapes == {"x": (4, 3, 16, 16)}
    assert stats.queries == len(trace) >= 40 and result.warmup_queries >= 1
    for rec in trace:
        assert rec["startH2dMs"] <= rec["endH2dMs"] <= rec["startComputeMs"] <= rec["endComputeMs"]
        assert rec["endComputeMs"] <= rec["startD2hMs"] <= rec["endD2hMs"]
        assert rec["computeMs"] > 0 and rec["h2dMs"] > 0 and rec["d2hMs"] > 0
        assert rec["latencyMs"] == pytest.approx(rec["h2dMs"] + rec["computeMs"] + rec["d2hMs"])
    for before, after in zip(trace, trace[1:], strict=False):
        assert after["startH2dMs"] >= before["endD2hMs"] - 1e-3  # one stream: queries run one after another
    walltime_ms = trace[-1]["endD2hMs"] - trace[0]["startH2dMs"]
    assert stats.walltime_s * 1000 == pytest.approx(walltime_ms, rel=1e-6)
    assert stats.throughput_qps == throughput_qps(stats.queries, walltime_ms)
    assert walltime_ms >= 0.99 * sum(r["latencyMs"] for r in trace)  # serial execution on one stream
    assert stats.metrics["latency"]["min"] >= stats.metrics["gpu_compute"]["min"]
    # per-layer times from the IProfiler run, joined to the inspector's layers
    assert result.layers is not None and result.layers.detailed
    assert result.profile.iterations == 10
    join = join_profile(result.layers, result.profile)
    assert join.matched_count + len(join.unmatched) == len(result.profile.rows) >= 1
    assert join.matched_count >= 1
    assert {layer.precision for layer in result.layers.layers} & {"FP32", "TF32", "FP16"}


def test_bench_cuda_graph_without_transfers(engine_path: Path) -> None:
    from trtq.report.gpu_bench import run_gpu_bench

    result = run_gpu_bench(engine_path, _settings(cuda_graph=True, data_transfers=False), profile_iterations=0)
    assert result.profile is None
    assert result.stats.settings["data_transfers"] is False
    assert result.stats.settings["cuda_graph"] is True, result.notes  # this engine is graph-capturable
    assert all(rec["computeMs"] > 0 for rec in result.trace)


def test_bench_cli_json_and_exports(engine_path: Path, tmp_path: Path) -> None:
    out, prof, times = tmp_path / "b.json", tmp_path / "p.json", tmp_path / "t.json"
    result = CliRunner().invoke(cli, ["bench", str(engine_path), "--shapes", "x:2x3x16x16", "--iterations", "20",
                                      "--duration", "0.1", "--warmup", "20", "--json", str(out),
                                      "--export-profile", str(prof), "--export-times", str(times)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert set(doc["trtq"]) >= {"throughput_qps", "latency", "gpu_compute", "h2d", "d2h", "enqueue"}
    from trtq.report.profile import load_profile
    from trtq.report.timing import load_export_times, summarize

    recomputed = summarize(load_export_times(times))
    assert recomputed.queries == doc["trtq"]["queries"]
    assert recomputed.metrics["gpu_compute"]["median"] == pytest.approx(doc["trtq"]["gpu_compute"]["median"],
                                                                        rel=1e-5)
    assert load_profile(prof).rows
    report = CliRunner().invoke(cli, ["report", str(engine_path), "--profile", str(prof), "--json",
                                      str(tmp_path / "r.json")])
    assert report.exit_code == 0, report.output
    layers = json.loads((tmp_path / "r.json").read_text())["layers"]
    assert any(layer["precision"] in ("FP32", "TF32", "FP16") and layer["time_ms"] is not None for layer in layers)


@pytest.mark.skipif(shutil.which("trtexec") is None, reason="trtexec is not on PATH")
def test_trtq_statistics_reproduce_trtexec_summary(engine_path: Path, tmp_path: Path, trt) -> None:
    """trtexec's own per-query times (--exportTimes) through trtq's statistics give trtexec's printed numbers."""
    from trtq.report.timing import load_export_times, summarize
    from trtq.report.trtexec_cmd import run_trtexec, trtexec_command, trtexec_version
    from trtq.report.trtexec_log import parse_trtexec_log

    exe = shutil.which("trtexec")
    major = int((trtexec_version(exe) or trt.__version__).split(".")[0])
    times = tmp_path / "times.json"
    cmd = trtexec_command(exe, engine_path, major, _settings(iterations=200, duration_s=0.5), export_times=times)
    log = parse_trtexec_log(run_trtexec(cmd, timeout_s=300))
    printed = log.summary
    ours = summarize(load_export_times(times))
    assert ours.queries == printed.queries
    for metric in ("gpu_compute", "latency", "h2d", "d2h"):
        for stat in ("min", "max", "p90", "p95", "p99"):
            assert format(ours.metrics[metric][stat], ".6g") == format(printed.metrics[metric][stat], "g"), (
                metric, stat)
        assert ours.metrics[metric]["mean"] == pytest.approx(printed.metrics[metric]["mean"], rel=1e-4)
        assert ours.metrics[metric]["median"] == pytest.approx(printed.metrics[metric]["median"], rel=1e-4)
    assert ours.throughput_qps == pytest.approx(printed.throughput_qps, rel=1e-4)
    # and the side-by-side command runs end to end
    result = CliRunner().invoke(cli, ["bench", str(engine_path), "--shapes", "x:4x3x16x16", "--iterations", "50",
                                      "--duration", "0.2", "--trtexec", exe, "--json", str(tmp_path / "both.json")])
    assert result.exit_code == 0, result.output
    both = json.loads((tmp_path / "both.json").read_text())
    assert set(both) == {"trtq", "trtexec"} and "ratio" in result.output
