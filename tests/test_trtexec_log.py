"""trtexec log parser on real TensorRT 10.16 logs and hand-made 8.6 / 11.4 logs (see tests/data/PROVENANCE.md)."""

from __future__ import annotations

import pytest

from tests.report_data import HANDMADE, TRTEXEC
from trtq.report.timing import throughput_qps
from trtq.report.trtexec_log import load_trtexec_log, parse_metric_line, parse_trtexec_log, version_from_code


def test_result_01_performance_summary() -> None:
    log = load_trtexec_log(TRTEXEC / "result-01.log")
    assert (log.version, log.status) == ("10.16.1", "PASSED")
    assert log.command == "trtexec --onnx=/opt/trt-samples-for-hackathon-cn/cookbook/00-Data/model/model-trained.onnx"
    s = log.summary
    assert s.throughput_qps == 15374.3
    assert s.metrics["gpu_compute"] == {
        "min": 0.0331421, "max": 0.140381, "mean": 0.0359588, "median": 0.0361328,
        "p90": 0.0368652, "p95": 0.0371094, "p99": 0.041748,
    }
    assert s.metrics["latency"]["p99"] == 0.0512695 and s.metrics["latency"]["max"] == 0.14917
    assert s.metrics["enqueue"]["median"] == 0.0267334
    assert s.metrics["h2d"]["min"] == 0.00341797 and s.metrics["d2h"]["p95"] == 0.00427246
    assert (s.walltime_s, s.total_gpu_compute_s, s.queries) == (3.00013, 1.6586, 46125)
    assert (log.warmup_queries, log.warmup_ms) == (3057, 200.0)
    assert s.gpu_coeff_var_pct == 6.58751
    assert s.warnings == ["GPU compute time is unstable, with coefficient of variance = 6.58751%. If not already "
                          "in use, locking GPU clock frequency or adding --useSpinWait may improve the stability."]


def test_result_01_sections() -> None:
    log = load_trtexec_log(TRTEXEC / "result-01.log")
    assert log.option("Build Options", "Precision") == "FP32"
    assert log.option("Build Options", "avgTiming") == "8"
    assert log.option("Inference Options", "CUDA Graph") == "Disabled"
    assert log.option("Inference Options", "Data transfers") == "Enabled"
    assert log.option("Inference Options", "Duration") == "3s (+ 200ms warm up)"
    assert log.option("Reporting Options", "Percentiles") == "90,95,99"
    assert log.option("Device Information", "Selected Device") == "NVIDIA H100 PCIe"
    assert log.option("Device Information", "Compute Capability") == "9.0"
    assert log.option("Model Options", "Format") == "ONNX"
    assert "Performance summary" not in log.sections


def test_throughput_and_gpu_total_follow_trtexec_definitions() -> None:
    """Throughput = queries / Total Host Walltime; Total GPU Compute = mean * queries (both float32)."""
    for name, queries, walltime_ms in (("result-01.log", 46125, 3000.13), ("result-03.log", 74692, 3000.05)):
        s = load_trtexec_log(TRTEXEC / name).summary
        assert s.queries == queries
        assert format(throughput_qps(queries, walltime_ms), ".6g") == format(s.throughput_qps, "g")
        gpu_total = s.metrics["gpu_compute"]["mean"] * queries / 1000
        assert gpu_total == pytest.approx(s.total_gpu_compute_s, rel=1e-5)


def test_result_03_no_transfers_cuda_graph_verbose() -> None:
    log = load_trtexec_log(TRTEXEC / "result-03.log")
    s = log.summary
    assert s.throughput_qps == 24896.9
    assert s.metrics["h2d"] == dict.fromkeys(("min", "max", "mean", "median", "p90", "p95", "p99"), 0.0)
    assert s.metrics["latency"] == s.metrics["gpu_compute"]  # latency = H2D + compute + D2H with no transfers
    assert s.warnings == [] and s.gpu_coeff_var_pct is None
    assert log.option("Inference Options", "CUDA Graph") == "Enabled"
    assert log.option("Inference Options", "Spin-wait") == "Enabled"
    assert "--useCudaGraph" in log.command


def test_result_05_dump_profile_without_summary() -> None:
    log = load_trtexec_log(TRTEXEC / "result-05.log")
    assert log.summary is None and log.status == "PASSED"
    profile = log.profile
    assert profile.iterations == 18362 and len(profile.rows) == 15
    first = profile.rows[0]
    assert (first.name, first.total_ms, first.average_ms, first.median_ms, first.percentage) == (
        "__mye59_0_myl0_0", 31.40, 0.0017, 0.0018, 2.1)
    names = [r.name for r in profile.rows]
    assert "Reformatting CopyNode for Input Tensor 0 to {ForeignNode[node_conv2d_1...node_relu_1]}" in names
    assert names[-1] == "__myl_Cast_myl5_7" and "Total" not in names
    assert log.profile_total_ms == 1529.13
    assert sum(r.total_ms for r in profile.rows) == pytest.approx(1529.13, abs=0.01 * len(names))


def test_handmade_8_6_log() -> None:
    log = load_trtexec_log(HANDMADE / "trtexec-8.6-handmade.log")
    assert (log.version, log.status) == ("8.6.1", "PASSED")
    s = log.summary
    assert s.throughput_qps == 2.55215e06  # printed as "2.55215e+06 qps"
    assert set(s.metrics) == {"latency", "e2e", "enqueue", "h2d", "gpu_compute", "d2h"}
    assert s.metrics["gpu_compute"] == {"min": 3.18652, "max": 3.5, "mean": 3.20817, "median": 3.20508, "p99": 3.26562}
    assert s.metrics["e2e"]["median"] == 12.8843
    assert (s.queries, s.walltime_s, s.total_gpu_compute_s) == (935, 3.0012, 2.99964)
    assert len(s.warnings) == 1 and "host-to-device" in s.warnings[0]
    assert log.option("Build Options", "Precision") == "FP32+INT8"
    assert log.missing_scale_tensors == ["(Unnamed Layer* 3) [Shuffle]_output", "fc1_out"]
    # 8.x --dumpProfile: name first, no median column
    rows = log.profile.rows
    assert [(r.name, r.total_ms, r.average_ms, r.median_ms, r.percentage) for r in rows[:2]] == [
        ("conv1 + relu1", 1403.25, 1.5008, None, 49.9), ("(Unnamed Layer* 2) [Pooling]", 388.41, 0.4154, None, 13.8)]
    assert log.profile.iterations == 935 and log.profile_total_ms == 2812.13
    assert format(throughput_qps(935, 3001.2, batch=8192), ".6g") == "2.55215e+06"


def test_handmade_11_4_log_with_other_percentiles() -> None:
    log = load_trtexec_log(HANDMADE / "trtexec-11.4-handmade.log")
    assert (log.version, log.major_version) == ("11.4.0", 11)
    s = log.summary
    assert set(s.metrics["latency"]) == {"min", "max", "mean", "median", "p50", "p99.9"}
    assert s.metrics["latency"]["p99.9"] == 0.0463867
    assert s.metrics["d2h"]["p50"] == 0.0
    assert s.warnings and s.warnings[0].startswith("Throughput may be bound by Enqueue Time")
    assert log.option("Inference Options", "CUDA Graph") == "Enabled"
    assert log.option("Inference Options", "Data transfers") == "Disabled"
    assert [r.name for r in log.profile.rows] == ["QuantizeLinear_in", "conv1 + relu1", "DequantizeLinear_out",
                                                  "__myl_Softmax_myl0_0"]
    assert log.profile.rows[1].median_ms == 0.0380


@pytest.mark.parametrize(
    ("code", "version"), [("101601", "10.16.1"), ("100001", "10.0.1"), ("110400", "11.4.0"), ("8601", "8.6.1"),
                          ("8203", "8.2.3")],
)
def test_version_codes(code: str, version: str) -> None:
    assert version_from_code(code) == version


def test_metric_line_number_forms() -> None:
    line = ("min = 1.29477e+08 ms, max = 0 ms, mean = 2.5E-3 ms, median = .5 ms, percentile(99.9%) = 7 ms, "
            "percentile(50%) = 3 ms")
    assert parse_metric_line(line) == {"min": 1.29477e08, "max": 0.0, "mean": 0.0025, "median": 0.5, "p99.9": 7.0,
                                       "p50": 3.0}


def test_prefixes_are_optional() -> None:
    text = "\n".join([
        "=== Performance summary ===",
        "[I] Throughput: 1.5e+03 qps",
        "[INFO] [I] GPU Compute Time: min = 1 ms, max = 2 ms, mean = 1.5 ms, median = 1.5 ms, percentile(99%) = 2 ms",
        "Total Host Walltime: 3 s",
        "&&&& FAILED TensorRT.trtexec [TensorRT v100100] # trtexec --loadEngine=x.plan",
    ])
    log = parse_trtexec_log(text)
    assert log.summary.throughput_qps == 1500.0
    assert log.summary.metrics["gpu_compute"]["p99"] == 2.0
    assert log.summary.walltime_s == 3.0
    assert (log.status, log.version, log.command) == ("FAILED", "10.1.0", "trtexec --loadEngine=x.plan")


def test_truncated_log_without_summary() -> None:
    text = (TRTEXEC / "result-01.log").read_text().split("=== Performance summary ===")[0]
    log = parse_trtexec_log(text)
    assert log.summary is None and log.status is None and log.version == "10.16.1"
