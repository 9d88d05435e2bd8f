"""`trtq bench` without a GPU: trtexec command lines per version, reading trtexec logs, errors, shapes, API names."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import DATA
from tests.report_data import HANDMADE, TRTEXEC
from trtq.cli import cli
from trtq.errors import TrtqError
from trtq.report.trtexec_cmd import (
    BenchSettings,
    find_trtexec,
    settings_from_log,
    settings_mismatch,
    trtexec_command,
    trtexec_defaults,
)
from trtq.report.trtexec_log import load_trtexec_log
from trtq.trt import inspect as inspect_module
from trtq.trt import runner as runner_module
from trtq.trt.runner import TRT_API_USED, resolve_input_shape

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# --- trtexec command construction ----------------------------------------------------------------


def test_trtexec_defaults_changed_in_11() -> None:
    assert trtexec_defaults(10) == (False, True)  # no CUDA graph, transfers on
    assert trtexec_defaults(11) == (True, False)  # CUDA graph on, transfers off


def test_trtexec_command_10x_defaults() -> None:
    settings = BenchSettings(cuda_graph=False, data_transfers=True, shapes={"x": (4, 1, 28, 28)})
    assert trtexec_command("trtexec", "m.plan", 10, settings) == [
        "trtexec", "--loadEngine=m.plan", "--shapes=x:4x1x28x28", "--warmUp=200", "--iterations=10",
        "--duration=3", "--percentile=90,95,99",
    ]


def test_trtexec_command_11x_defaults() -> None:
    settings = BenchSettings(cuda_graph=True, data_transfers=False)
    assert trtexec_command("trtexec", "m.plan", 11, settings) == [
        "trtexec", "--loadEngine=m.plan", "--warmUp=200", "--iterations=10", "--duration=3", "--percentile=90,95,99",
    ]


@pytest.mark.parametrize(
    ("major", "graph", "transfers", "flags"),
    [
        (10, True, False, ["--useCudaGraph", "--noDataTransfers"]),
        (10, True, True, ["--useCudaGraph"]),
        (10, False, False, ["--noDataTransfers"]),
        (11, False, True, ["--noCudaGraph", "--includeDataTransfers"]),
        (11, True, True, ["--includeDataTransfers"]),
        (11, False, False, ["--noCudaGraph"]),
    ],
)
def test_trtexec_graph_and_transfer_flags_per_version(major, graph, transfers, flags) -> None:
    cmd = trtexec_command("trtexec", "m.plan", major, BenchSettings(cuda_graph=graph, data_transfers=transfers))
    assert [a for a in cmd if a in ("--useCudaGraph", "--noCudaGraph", "--noDataTransfers",
                                    "--includeDataTransfers")] == flags


def test_trtexec_command_exports_and_spin_wait() -> None:
    settings = BenchSettings(warmup_ms=500, iterations=100, duration_s=0.5, spin_wait=True, cuda_graph=False,
                             data_transfers=True, percentiles=(50.0, 99.9))
    ten = trtexec_command("/opt/trt/bin/trtexec", Path("e.engine"), 10, settings, export_profile="p.json",
                          export_layer_info="l.json", export_times="t.json")
    assert ten == ["/opt/trt/bin/trtexec", "--loadEngine=e.engine", "--warmUp=500", "--iterations=100",
                   "--duration=0.5", "--percentile=50,99.9", "--useSpinWait", "--separateProfileRun",
                   "--exportProfile=p.json", "--exportLayerInfo=l.json", "--exportTimes=t.json"]
    eleven = trtexec_command("trtexec", "e.engine", 11, settings, export_profile="p.json")
    assert "--separateProfileRun" not in eleven  # always on (and a warning) in 11.x
    assert "--noCudaGraph" in eleven and "--includeDataTransfers" in eleven
    eight = trtexec_command("trtexec", "e.engine", 8, settings)
    assert "--percentile=99.9" in eight  # 8.x takes one percentile


def test_trtexec_command_round_trips_through_a_logged_command() -> None:
    """The flags trtexec 10.16 itself logged for result-03 are what trtq would emit for those settings."""
    log = load_trtexec_log(TRTEXEC / "result-03.log")
    settings = BenchSettings(cuda_graph=True, data_transfers=False, spin_wait=True, shapes={"x": (4, 1, 28, 28)})
    cmd = trtexec_command("trtexec", "model-trained.trt", log.major_version, settings)
    logged = set(log.command.split()[1:]) - {"--verbose"}
    assert logged <= set(cmd)


def test_settings_mismatch_with_a_logged_run() -> None:
    options = load_trtexec_log(TRTEXEC / "result-03.log").sections["Inference Options"]
    same = BenchSettings(cuda_graph=True, data_transfers=False, spin_wait=True)
    assert settings_mismatch(options, same) == []
    assert settings_mismatch(options, BenchSettings(cuda_graph=False, data_transfers=True)) == [
        "CUDA graph: trtexec enabled, trtq disabled",
        "data transfers: trtexec disabled, trtq enabled",
        "spin-wait: trtexec enabled, trtq disabled",
    ]


def test_settings_from_a_logged_run() -> None:
    log = load_trtexec_log(TRTEXEC / "result-03.log")
    assert settings_from_log(log.sections["Inference Options"], log.command) == {
        "cuda_graph": True, "data_transfers": False, "spin_wait": True, "shapes": {"x": (4, 1, 28, 28)}}
    first = load_trtexec_log(TRTEXEC / "result-01.log")
    assert settings_from_log(first.sections["Inference Options"], first.command) == {
        "cuda_graph": False, "data_transfers": True, "spin_wait": False}


def test_find_trtexec_errors(tmp_path: Path) -> None:
    with pytest.raises(TrtqError, match="not on PATH"):
        find_trtexec("trtexec-that-does-not-exist")
    with pytest.raises(TrtqError, match="not found or not executable"):
        find_trtexec(str(tmp_path / "trtexec"))


# --- trtq bench --trtexec-log (no GPU) -----------------------------------------------------------


def test_bench_trtexec_log_reproduces_the_log(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = _run("bench", "--trtexec-log", str(TRTEXEC / "result-01.log"), "--json", str(out))
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert set(doc) == {"trtexec"}
    stats = doc["trtexec"]
    assert stats["throughput_qps"] == 15374.3
    assert stats["gpu_compute"]["median"] == 0.0361328
    assert stats["latency"] == {"min": 0.0410156, "max": 0.14917, "mean": 0.0441053, "median": 0.0440674,
                                "p90": 0.0450439, "p95": 0.0458984, "p99": 0.0512695}
    assert set(stats) >= {"throughput_qps", "latency", "gpu_compute", "h2d", "d2h", "enqueue"}
    assert stats["settings"]["tensorrt_version"] == "10.16.1"
    assert "15374.3" in result.output and "0.0361328" in result.output
    assert "coefficient of variance = 6.58751%" in result.output


def test_bench_trtexec_log_markdown() -> None:
    result = _run("bench", "--trtexec-log", str(HANDMADE / "trtexec-11.4-handmade.log"), "--markdown")
    assert result.exit_code == 0
    assert "| Throughput (qps) | 20514.4 |" in result.output
    assert "| Latency p99.9 (ms) | 0.0463867 |" in result.output
    assert "QuantizeLinear_in" in result.output  # the --dumpProfile table of the log


def test_bench_log_with_profile_only() -> None:
    result = CliRunner().invoke(cli, ["bench", "--trtexec-log", str(TRTEXEC / "result-05.log")])
    assert result.exit_code == 0
    assert "node_conv2d_1_myl3_1" in result.output and "no performance summary" in result.output


@pytest.mark.skipif(HAVE_TENSORRT, reason="tensorrt is installed here: the no-TensorRT path cannot be exercised")
def test_bench_engine_without_tensorrt(tmp_path: Path) -> None:
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0not an engine")
    result = CliRunner().invoke(cli, ["bench", str(engine)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("trtq: error:")
    assert "tensorrt" in lines[0] and "--trtexec-log" in lines[0]
    # with a log to fall back on, the log is shown
    result = CliRunner().invoke(cli, ["bench", str(engine), "--trtexec-log", str(TRTEXEC / "result-03.log")])
    assert result.exit_code == 0 and "24896.9" in result.output and "own measurement skipped" in result.output


def test_bench_argument_errors(tmp_path: Path) -> None:
    cases = [
        ([], "give an ENGINE"),
        (["--trtexec"], "needs the ENGINE"),
        (["x.engine", "--trtexec", "--trtexec-log", str(TRTEXEC / "result-01.log")], "not both"),
        (["--trtexec-log", str(tmp_path / "missing.log")], "not found"),
        (["--trtexec-log", str(TRTEXEC / "exportLayerInfo.json")], "no performance summary"),
        (["--trtexec-log", str(TRTEXEC / "result-01.log"), "--percentiles", "90,x"], "--percentiles"),
        (["--trtexec-log", str(TRTEXEC / "result-01.log"), "--json", str(tmp_path / "no" / "o.json")],
         "does not exist"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(cli, ["bench", *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)


# --- input shapes ----------------------------------------------------------------------------------


def test_resolve_input_shape() -> None:
    profile = ((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))
    assert resolve_input_shape("x", (-1, 3, 224, 224), profile, None) == (1, 3, 224, 224)  # trtexec: dynamic -> 1
    assert resolve_input_shape("x", (-1, 3, 224, 224), ((2, 3, 224, 224),) * 3, None) == (2, 3, 224, 224)
    assert resolve_input_shape("x", (-1, 3, 224, 224), profile, (16, 3, 224, 224)) == (16, 3, 224, 224)
    assert resolve_input_shape("x", (1, 10), None, None) == (1, 10)
    with pytest.raises(TrtqError, match="outside the engine's profile"):
        resolve_input_shape("x", (-1, 3, 224, 224), profile, (64, 3, 224, 224))
    with pytest.raises(TrtqError, match="fixed to 3"):
        resolve_input_shape("x", (-1, 3, 224, 224), profile, (1, 4, 224, 224))
    with pytest.raises(TrtqError, match="dimensions"):
        resolve_input_shape("x", (-1, 3, 224, 224), profile, (1, 3, 224))


# --- TensorRT API names used by the GPU code exist in 10.16 and 11.4 --------------------------------


def test_trt_api_used_exists_in_both_versions() -> None:
    """Names recorded from the real bindings (tests/data/trt-api/, see PROVENANCE.md)."""
    for version in ("10.16.1.11", "11.4.0.106"):
        api = json.loads((DATA / "trt-api" / f"tensorrt-{version}.json").read_text())["module"]
        for owner, names in TRT_API_USED.items():
            if owner == "module":
                missing = [n for n in names if n not in api]
            else:
                assert owner in api, f"TensorRT {version} has no {owner}"
                missing = [n for n in names if n not in api[owner]["attrs"]]
            assert not missing, f"TensorRT {version} {owner} lacks {missing}"


def test_gpu_code_uses_only_listed_api_names() -> None:
    """Every ``engine.x``, ``context.x``, ``inspector.x``, ``runtime.x``, ``trt.x`` in the GPU code is declared."""
    owners = {"engine": "ICudaEngine", "context": "IExecutionContext", "inspector": "EngineInspector",
              "runtime": "Runtime", "trt": "module"}
    used: dict[str, set[str]] = {}
    for module in (runner_module, inspect_module):
        source = Path(module.__file__).read_text()
        for var, owner in owners.items():
            for name in re.findall(rf"(?<![\w.]){var}\.([A-Za-z_]\w*)", source):
                used.setdefault(owner, set()).add(name)
    allowed = {owner: set(names) for owner, names in TRT_API_USED.items()}
    allowed["module"] |= {"__version__"}
    trt_nested = {"Logger", "TensorIOMode", "LayerInformationFormat", "IProfiler"}
    for owner, names in used.items():
        extra = names - allowed.get(owner, set()) - (trt_nested if owner == "module" else set())
        assert not extra, f"{owner}: {sorted(extra)} used but not in TRT_API_USED"
    assert used["IExecutionContext"] >= {"execute_async_v3", "set_tensor_address", "report_to_profiler"}


_REPLAY_TRTEXEC = r'''#!{python}
"""Stand-in for trtexec that replays a REAL recorded trtexec 10.16 run (tests trtq's plumbing, not TensorRT)."""
import json, sys
args = sys.argv[1:]
if args == ["--help"]:
    print("&&&& RUNNING TensorRT.trtexec [TensorRT v101601] [b11] # trtexec --help")
    sys.exit(0)
open({argv_file!r}, "w").write(json.dumps(args))
opts = dict(a[2:].split("=", 1) for a in args if "=" in a)
records = [{{"startEnqMs": 10.0 * k, "endEnqMs": 10.0 * k + 0.5, "startH2dMs": 10.0 * k, "endH2dMs": 10.0 * k,
            "startComputeMs": 10.0 * k, "endComputeMs": 10.0 * k + c, "startD2hMs": 10.0 * k + c,
            "endD2hMs": 10.0 * k + c, "h2dMs": 0, "computeMs": c, "d2hMs": 0, "latencyMs": c}}
           for k, c in enumerate([2.0, 1.0, 3.0, 4.0])]
open(opts["exportTimes"], "w").write(json.dumps(records))
profile = [{{"count": 4}}, {{"name": "conv", "timeMs": 8.0, "averageMs": 2.0}}]
open(opts["exportProfile"], "w").write(json.dumps(profile))
open(opts["exportLayerInfo"], "w").write(open({layers!r}).read())
sys.stdout.write(open({log!r}).read())
'''


def test_bench_runs_trtexec_with_matching_flags(tmp_path: Path) -> None:
    """`--trtexec PATH`: the command line trtq builds, and the parsing of what trtexec prints and exports."""
    import sys

    argv_file = tmp_path / "argv.json"
    fake = tmp_path / "trtexec"
    fake.write_text(_REPLAY_TRTEXEC.format(python=sys.executable, argv_file=str(argv_file),
                                           layers=str(TRTEXEC / "exportLayerInfo.json"),
                                           log=str(TRTEXEC / "result-03.log")))
    fake.chmod(0o755)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0engine")
    out = tmp_path / "b.json"
    result = CliRunner().invoke(cli, ["bench", str(engine), "--trtexec", str(fake), "--cuda-graph", "--no-transfers",
                                      "--spin-wait", "--shapes", "x:4x1x28x28", "--json", str(out)])
    assert result.exit_code == 0, result.output
    argv = json.loads(argv_file.read_text())
    assert argv[:7] == [f"--loadEngine={engine}", "--shapes=x:4x1x28x28", "--warmUp=200", "--iterations=10",
                        "--duration=3", "--percentile=90,95,99", "--useCudaGraph"]
    assert {"--noDataTransfers", "--useSpinWait", "--separateProfileRun"} <= set(argv)
    stats = json.loads(out.read_text())["trtexec"]
    assert stats["throughput_qps"] == 24896.9 and stats["gpu_compute"]["median"] == 0.0388184
    # trtq's statistics on the replayed --exportTimes (compute 2, 1, 3, 4 ms; walltime 0 .. 34 ms):
    # median (2 + 3) / 2 = 2.5, throughput 4 / 34 ms = 117.647 qps
    assert stats["settings"]["recomputed_by_trtq"] == (
        "throughput 117.647 qps, GPU compute median 2.5 ms (from its --exportTimes)")
    # trtexec's exported layer information and profile are joined into a report (the replayed profile's one
    # row, "conv", matches none of the replayed file's layers: it is kept and counted)
    assert "Engine   trtexec --exportProfile/--exportLayerInfo  (9 layers" in result.output
    assert "1 profile rows match no layer" in result.output


# --- the command around trtq's own measurement (run_gpu_bench replaced by a stand-in; no GPU) -----


def _stand_in_result(settings):
    """What run_gpu_bench returns, built from real pieces: hand-made query records (compute 2, 1, 3, 4 ms),
    the real 10.16 layer information and a two-layer IProfiler run over two iterations."""
    from trtq.report.gpu_bench import GpuBenchResult
    from trtq.report.layers import load_layer_info
    from trtq.report.profile import LayerTimeCollector
    from trtq.report.timing import query_times_from_trace, summarize

    trace = [{"startEnqMs": 10.0 * k, "endEnqMs": 10.0 * k + 0.5, "startH2dMs": 10.0 * k, "endH2dMs": 10.0 * k,
              "startComputeMs": 10.0 * k, "endComputeMs": 10.0 * k + c, "startD2hMs": 10.0 * k + c,
              "endD2hMs": 10.0 * k + c, "h2dMs": 0.0, "computeMs": c, "d2hMs": 0.0, "latencyMs": c}
             for k, c in enumerate([2.0, 1.0, 3.0, 4.0])]
    collector = LayerTimeCollector()
    for ms in (0.5, 0.25, 0.7, 0.25):
        collector.report_layer_time("node_conv2d + node_relu" if ms != 0.25 else "node_max_pool2d", ms)
    return GpuBenchResult(stats=summarize(query_times_from_trace(trace), settings.percentiles), trace=trace,
                          profile=collector.profile(source="stand-in"),
                          layers=load_layer_info(TRTEXEC / "exportLayerInfo.json"), device={"name": "stand-in GPU"},
                          trt_version="10.16.1.11", warmup_queries=3, shapes={})


@pytest.fixture
def stand_in_gpu(monkeypatch):
    """TensorRT 10.16 "imported" and run_gpu_bench replaced; ``calls`` records the settings it was given and
    ``fail`` (an exception) makes it raise instead."""
    import types

    import trtq.trt
    from trtq.report import gpu_bench as gpu_bench_module

    state = types.SimpleNamespace(calls=[], fail=None)

    def run_gpu_bench(engine_path, settings, **kwargs):
        state.calls.append((settings.cuda_graph, settings.data_transfers, kwargs["profile_iterations"]))
        if state.fail is not None:
            raise state.fail
        return _stand_in_result(settings)

    monkeypatch.setattr(trtq.trt, "import_tensorrt", lambda purpose="": types.SimpleNamespace(__version__="10.16.1.11"))
    monkeypatch.setattr(gpu_bench_module, "run_gpu_bench", run_gpu_bench)
    return state


def test_bench_writes_json_and_exports_of_its_own_measurement(tmp_path: Path, stand_in_gpu) -> None:
    from trtq.report.profile import load_profile
    from trtq.report.timing import load_export_times, summarize

    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0engine")
    out, prof, times = tmp_path / "b.json", tmp_path / "p.json", tmp_path / "t.json"
    result = _run("bench", str(engine), "--json", str(out), "--export-profile", str(prof), "--export-times", str(times))
    assert result.exit_code == 0, result.output
    assert stand_in_gpu.calls == [(False, True, 50)]  # trtexec 10.x defaults: no CUDA graph, transfers on
    trtq_stats = json.loads(out.read_text())["trtq"]
    assert trtq_stats["settings"]["device"] == "stand-in GPU" and trtq_stats["settings"]["warmup_queries"] == 3
    assert trtq_stats["gpu_compute"]["median"] == 2.5 and trtq_stats["queries"] == 4
    again = summarize(load_export_times(times))  # the exported per-query times give the same statistics
    assert again.metrics["gpu_compute"] == trtq_stats["gpu_compute"] and again.throughput_qps == trtq_stats[
        "throughput_qps"]
    profile = load_profile(prof)
    assert profile.iterations == 2 and [(r.name, r.average_ms) for r in profile.rows] == [
        ("node_conv2d + node_relu", 0.6), ("node_max_pool2d", 0.25)]
    assert "Engine   trtq IProfiler run  (9 layers" in result.output
    for what, path in (("JSON", out), ("per-layer profile", prof), ("per-query times", times)):
        assert f"trtq: wrote {what} to {path}" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "model.engine", "p.json", "t.json"]


def test_bench_falls_back_only_when_the_machine_cannot_measure(tmp_path: Path, stand_in_gpu) -> None:
    from trtq.trt.inspect import EngineLoadError

    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0engine")
    stale = tmp_path / "t.json"
    stale.write_text("[]")  # from an earlier run: must not be reported as written now
    log = str(TRTEXEC / "result-03.log")
    stand_in_gpu.fail = EngineLoadError("TensorRT could not load model.engine: built for another GPU")
    result = _run("bench", str(engine), "--trtexec-log", log, "--export-times", str(stale))
    assert result.exit_code == 0, result.output
    assert "own measurement skipped: TensorRT could not load" in result.output and "24896.9" in result.output
    assert "wrote" not in result.output and stale.read_text() == "[]"
    # the logged run's settings were adopted (result-03: CUDA graph on, transfers off)
    assert stand_in_gpu.calls == [(True, False, 50)]
    # without a log to fall back on, the same failure is the error, pointing at --trtexec-log
    result = CliRunner().invoke(cli, ["bench", str(engine)])
    assert result.exit_code == 2 and "built for another GPU" in result.output and "--trtexec-log" in result.output
    # a mistake in the arguments is never skipped, with or without a log
    stand_in_gpu.fail = TrtqError("--shapes names unknown input(s) y; the engine has x")
    result = CliRunner().invoke(cli, ["bench", str(engine), "--trtexec-log", log])
    assert result.exit_code == 2 and "unknown input(s) y" in result.output


def test_bench_refuses_export_profile_without_the_layer_run(tmp_path: Path, stand_in_gpu) -> None:
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0engine")
    result = CliRunner().invoke(cli, ["bench", str(engine), "--no-layers", "--export-profile", str(tmp_path / "p")])
    assert result.exit_code == 2 and "drop --no-layers" in result.output
    assert stand_in_gpu.calls == []  # refused before any measurement
