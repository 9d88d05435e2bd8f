"""`trtq bench` statistics against trtexec's definitions (sampleReporting.cpp), on recorded per-query times.

No real ``--exportTimes`` file exists in the shared fixtures, so the recorded times here are
hand-made, with a summary computed by hand (see each test). The percentile rule is also checked
against the same expression compiled as C++ (float32 arithmetic, as trtexec does) when g++ exists.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from trtq.errors import TrtqError
from trtq.report.timing import (
    QueryTimes,
    export_times_json,
    load_export_times,
    metric_stats,
    percentile_index,
    performance_warnings,
    query_times_from_trace,
    summarize,
    throughput_qps,
)


def _trace(compute: list[float], h2d: float = 0.5, d2h: float = 0.25, period: float = 2.5,
           enqueue: float = 0.1) -> list[dict[str, float]]:
    """--exportTimes records: query k starts its H2D at k*period ms."""
    records = []
    for k, c in enumerate(compute):
        t = k * period
        records.append({
            "startEnqMs": t, "endEnqMs": t + enqueue, "startH2dMs": t, "endH2dMs": t + h2d,
            "startComputeMs": t + h2d, "endComputeMs": t + h2d + c, "startD2hMs": t + h2d + c,
            "endD2hMs": t + h2d + c + d2h, "h2dMs": h2d, "computeMs": c, "d2hMs": d2h, "latencyMs": h2d + c + d2h,
        })
    return records


def test_ten_recorded_queries_summary_by_hand() -> None:
    """GPU compute 1..10 ms (shuffled), H2D 0.5, D2H 0.25, one query every 2.5 ms.

    By hand: sorted compute 1..10; min 1, max 10, mean 5.5, median (5 + 6) / 2 = 5.5.
    p90: (1 - 0.9f) * 10 = 1.0000002 in float32 -> exclude 1 -> index 10 - 1 - 1 = 8 -> 9 ms
    (in double it would be 0.99999999 -> index 9 -> 10 ms; trtexec computes in float32).
    p95: (1 - 0.95f) * 10 = 0.50000012 -> 0 -> index 9 -> 10 ms; p99 likewise 10 ms.
    Latency = compute + 0.75. Walltime = last D2H end - first H2D start = 9 * 2.5 + 0.5 + 7 + 0.25 = 30.25 ms
    (the last query computes 7 ms), throughput = 10 / 30.25 ms = 330.578 qps in float32 (330.5785 exactly);
    total GPU = 5.5 * 10 = 55 ms.
    """
    compute = [3.0, 1.0, 4.0, 10.0, 5.0, 9.0, 2.0, 6.0, 8.0, 7.0]
    times = query_times_from_trace(_trace(compute))
    assert times.walltime_ms == pytest.approx(30.25)
    stats = summarize(times)
    gpu = stats.metrics["gpu_compute"]
    assert gpu == {"min": 1.0, "max": 10.0, "mean": 5.5, "median": 5.5, "p90": 9.0, "p95": 10.0, "p99": 10.0}
    latency = stats.metrics["latency"]
    assert latency == {"min": 1.75, "max": 10.75, "mean": 6.25, "median": 6.25, "p90": 9.75, "p95": 10.75,
                       "p99": 10.75}
    assert stats.metrics["h2d"]["median"] == 0.5 and stats.metrics["d2h"]["p99"] == 0.25
    assert stats.metrics["enqueue"]["mean"] == pytest.approx(0.1, rel=1e-5)  # float32 end - start
    assert format(stats.throughput_qps, ".6g") == "330.578"  # float32: 10 / 30.25f * 1000 = 330.57849
    assert stats.total_gpu_compute_s == pytest.approx(0.055)
    assert stats.walltime_s == pytest.approx(0.03025)
    assert stats.queries == 10


def test_odd_count_median_and_percentiles() -> None:
    """Five queries 4, 2, 8, 6, 10 ms: median = the middle value 6; p90: (1 - 0.9f) * 5 = 0.50000012 -> index 4 -> 10;
    p50: (1 - 0.5) * 5 = 2.5 -> 2 -> index 2 -> 6."""
    s = metric_stats([4.0, 2.0, 8.0, 6.0, 10.0], percentiles=(50.0, 90.0))
    assert (s.median, s.percentiles[50.0], s.percentiles[90.0], s.mean) == (6.0, 6.0, 10.0, 6.0)


def test_percentile_rule_small_counts() -> None:
    assert [percentile_index(10, p) for p in (90, 95, 99)] == [8, 9, 9]
    # n = 100: (1 - 0.99f) * 100 = 0.99999905 in float32 -> exclude 0 -> p99 is the maximum
    assert [percentile_index(100, p) for p in (90, 95, 99)] == [89, 94, 99]
    assert percentile_index(1, 99) == 0 and percentile_index(3, 0) == 0 and percentile_index(3, 100) == 2
    with pytest.raises(TrtqError):
        percentile_index(10, 101)


_CPP = r"""
#include <algorithm>
#include <cstdint>
#include <cstdio>
// The percentile index as trtexec documents it: float percentile, float arithmetic, truncation.
int main() {
    const float ps[] = {50.f, 90.f, 95.f, 99.f, 99.9f, 33.3f, 1.f};
    for (int32_t all = 1; all <= 2000; ++all)
        for (float p : ps) {
            int32_t const exclude = static_cast<int32_t>((1 - p / 100) * all);
            std::printf("%d %g %d\n", all, p, std::max(all - 1 - exclude, 0));
        }
}
"""


def test_percentile_rule_matches_compiled_float_arithmetic(tmp_path: Path) -> None:
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler to compile the float32 reference")
    (tmp_path / "p.cpp").write_text(_CPP)
    subprocess.run([compiler, "-O2", "-o", str(tmp_path / "p"), str(tmp_path / "p.cpp")], check=True, timeout=120)
    out = subprocess.run([str(tmp_path / "p")], capture_output=True, text=True, check=True, timeout=60).stdout
    mismatches = []
    rows = 0
    for line in out.splitlines():
        count, p, index = line.split()
        rows += 1
        if percentile_index(int(count), float(p)) != int(index):
            mismatches.append(line)
    assert rows == 2000 * 7 and not mismatches


def test_mean_is_a_float32_running_sum_over_sorted_values() -> None:
    rng = np.random.default_rng(7)
    values = rng.lognormal(mean=-3.0, sigma=0.3, size=50_000).astype(np.float32)
    stats = metric_stats(values)
    acc = np.float32(0)
    for v in np.sort(values):
        acc = np.float32(acc + v)
    assert stats.mean == float(acc / np.float32(values.size))
    assert stats.min == float(values.min()) and stats.max == float(values.max())
    assert stats.median == float((np.sort(values)[24_999] + np.sort(values)[25_000]) / np.float32(2))


def test_coefficient_of_variance_and_warnings() -> None:
    # compute 1, 1, 1, 3: mean 1.5, variance ((0.25 * 3) + 2.25) / 4 = 0.75, cv = sqrt(0.75) / 1.5 * 100 = 57.735 %
    s = metric_stats([1.0, 1.0, 1.0, 3.0])
    assert s.coeff_var_pct == pytest.approx(57.735, abs=1e-3)
    warnings = performance_warnings(enqueue_median=0.9, h2d_median=1.0, compute_median=1.0, d2h_median=0.1,
                                    coeff_var_pct=s.coeff_var_pct)
    assert len(warnings) == 3
    assert "Enqueue Time" in warnings[0] and "host-to-device" in warnings[1]  # 0.9 > 0.8 * 1.0; 1.0 >= 1.0
    assert "57.735" in warnings[-1]
    assert performance_warnings(0.5, 0.0, 1.0, 0.0, 0.5) == []  # 0.5 < 0.8 * 1; cv 0.5 % <= 1 %


def test_export_times_round_trip(tmp_path: Path) -> None:
    records = _trace([1.25, 2.5, 0.75])
    path = tmp_path / "times.json"
    path.write_text(export_times_json(records))
    assert json.loads(path.read_text()) == records
    times = load_export_times(path)
    assert times.compute.tolist() == [1.25, 2.5, 0.75]
    assert times.latency.tolist() == [2.0, 3.25, 1.5]


def test_eight_x_traces_with_warmup_queries() -> None:
    records = _trace([9.0, 9.0, 1.0, 2.0, 3.0], period=10.0)  # the first two started during a 15 ms warm-up
    times = query_times_from_trace(records, warmup_ms=15.0)
    assert times.compute.tolist() == [1.0, 2.0, 3.0]
    assert times.walltime_ms == pytest.approx(40.0 + 0.5 + 3.0 + 0.25 - 20.0)


def test_bad_times_files() -> None:
    with pytest.raises(TrtqError, match="--exportTimes"):
        query_times_from_trace([{"startEnqMs": 0}])
    with pytest.raises(TrtqError, match="non-empty"):
        query_times_from_trace([])
    with pytest.raises(TrtqError):
        summarize(QueryTimes(enqueue=[], h2d=[], compute=[], d2h=[], walltime_ms=1.0))


def test_throughput_of_real_logs() -> None:
    # result-01.log: "Timing trace has 46125 queries over 3.00013 s" and "Throughput: 15374.3 qps"
    assert format(throughput_qps(46125, 3000.13), ".6g") == "15374.3"
    # result-03.log: 74692 queries over 3.00005 s -> 24896.9 qps
    assert format(throughput_qps(74692, 3000.05), ".6g") == "24896.9"
