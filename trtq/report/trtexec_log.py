"""Parser for trtexec logs of TensorRT 8.x, 10.x and 11.x.

It reads what trtexec prints (``sampleReporting.cpp``, ``sampleOptions.cpp``), not a fixed
layout: every line may carry the ``[MM/DD/YYYY-HH:MM:SS] [I] `` prefix (or not, as in pasted
excerpts); a summary metric is ``Name: k = v ms, k = v ms, ...`` with any set of
``percentile(P%)`` entries; numbers are C++ default floats (``15374.3``, ``1.29477e+08``, ``0``).

Extracted: the performance summary, the warnings after it, the TensorRT version and PASSED/
FAILED status from the ``&&&&`` lines, the option and device sections, the warm-up/trace
prolog, ``--dumpProfile`` tables (10.x layout ``Time Avg Median % Layer`` and the older
``Layer Time Avg [Median] %``), and INT8 "Missing scale and zero-point" warnings.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from trtq.fileio import read_input_text
from trtq.report.profile_types import LayerTiming, Profile
from trtq.report.timing import BenchStats, percentile_key

_FLOAT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?inf|nan"
_PREFIXES = (
    re.compile(r"^\[\d\d/\d\d/\d{4}-\d\d:\d\d:\d\d\]\s?"),
    re.compile(r"^\[(?P<sev>I|W|E|V|F|INFO|WARNING|WARN|ERROR|VERBOSE)\]\s?"),
)
_SECTION = re.compile(r"^=== (.+?) ===\s*$")
_STAT_ENTRY = re.compile(rf"(min|max|mean|median|percentile\(\s*({_FLOAT})\s*%\))\s*=\s*({_FLOAT})\s*ms")
_METRIC_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9 \-/]*?):\s*(min\s*=.*)$")
_VERSION_CODE = re.compile(r"\[TensorRT v(\d+)\]")
_STATUS = re.compile(r"^&&&& (PASSED|FAILED|WAIVED|RUNNING) TensorRT\.trtexec\s*(.*?)(?:#\s*(.*))?$")
_PROFILE_HEADER = re.compile(r"^=== Profile \((\d+) iterations?\s*\) ===")
_MISSING_SCALE = re.compile(r"Missing scale and zero-point for tensor (.+?), expect fall back")

# Summary metric names -> JSON keys (unknown names get a snake_case key).
_METRIC_KEYS = {
    "Latency": "latency",
    "Enqueue Time": "enqueue",
    "H2D Latency": "h2d",
    "GPU Compute Time": "gpu_compute",
    "D2H Latency": "d2h",
    "End-to-End Host Latency": "e2e",
}


def version_from_code(code: str) -> str:
    """``NV_TENSORRT_VERSION`` as printed in ``[TensorRT v101601]`` -> ``"10.16.1"``.

    From 10.0 the code is major*10000 + minor*100 + patch; before it, major*1000 + minor*100 + patch
    (``8601`` -> ``8.6.1``).
    """
    value = int(code)
    if value >= 100000:
        return f"{value // 10000}.{(value // 100) % 100}.{value % 100}"
    return f"{value // 1000}.{(value // 100) % 10}.{value % 100}"


def _strip_prefixes(line: str) -> tuple[str, str | None]:
    """Remove the date and severity prefixes (in any order, repeated); return (message, severity)."""
    severity = None
    changed = True
    while changed:
        changed = False
        for pattern in _PREFIXES:
            match = pattern.match(line)
            if match:
                if "sev" in pattern.groupindex and severity is None:
                    severity = match.group("sev")[0]
                line = line[match.end() :]
                changed = True
    return line.rstrip("\r\n"), severity


@dataclass
class TrtexecLog:
    """Everything trtq uses from a trtexec log."""

    source: str = ""
    version: str | None = None  # "10.16.1"
    status: str | None = None  # PASSED / FAILED (None when the log is cut short)
    command: str | None = None
    summary: BenchStats | None = None
    sections: dict[str, dict[str, str]] = field(default_factory=dict)
    warmup_queries: int | None = None
    warmup_ms: float | None = None
    profile: Profile | None = None
    profile_total_ms: float | None = None  # the table's "Total" row (sum over iterations)
    missing_scale_tensors: list[str] = field(default_factory=list)

    @property
    def major_version(self) -> int | None:
        return int(self.version.split(".")[0]) if self.version else None

    def option(self, section: str, key: str) -> str | None:
        return self.sections.get(section, {}).get(key)


def parse_metric_line(text: str) -> dict[str, float]:
    """``min = 1 ms, max = 2 ms, ..., percentile(99%) = 3 ms`` -> ``{"min": 1.0, ..., "p99": 3.0}``."""
    values: dict[str, float] = {}
    for match in _STAT_ENTRY.finditer(text):
        if match.group(2) is not None:
            values[percentile_key(float(match.group(2)))] = float(match.group(3))
        else:
            values[match.group(1)] = float(match.group(3))
    return values


def _metric_key(name: str) -> str:
    return _METRIC_KEYS.get(name, re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_"))


def _parse_profile_table(header: str, rows: list[str]) -> tuple[list[LayerTiming], float | None]:
    """Rows of a ``--dumpProfile`` table; the column order is read from the header."""
    name_first = header.strip().startswith("Layer")
    n_numbers = 4 if "Median" in header else 3
    number = rf"({_FLOAT})"
    numbers = r"\s+".join([number] * n_numbers)
    pattern = (
        re.compile(rf"^\s*(?P<name>.+?)\s+{numbers}\s*$")
        if name_first
        else re.compile(rf"^\s*{numbers}\s+(?P<name>.+?)\s*$")
    )
    timings: list[LayerTiming] = []
    total: float | None = None
    for row in rows:
        match = pattern.match(row)
        if not match:
            continue
        name = match.group("name")
        vals = (
            [float(match.group(i)) for i in range(1, n_numbers + 1)]
            if not name_first
            else [float(v) for v in match.groups()[1:]]
        )
        time_ms, avg_ms = vals[0], vals[1]
        median_ms = vals[2] if n_numbers == 4 else None
        pct = vals[-1]
        if name == "Total":
            total = time_ms
            continue
        timings.append(LayerTiming(name=name, total_ms=time_ms, average_ms=avg_ms, median_ms=median_ms, percentage=pct))
    return timings, total


def parse_trtexec_log(text: str, source: str = "trtexec log") -> TrtexecLog:
    """Parse a whole trtexec log (any version); missing parts are left ``None``/empty."""
    log = TrtexecLog(source=source)
    lines = [_strip_prefixes(raw) for raw in text.splitlines()]
    summary_metrics: dict[str, dict[str, float]] = {}
    throughput = walltime = gpu_total = None
    queries: int | None = None
    section: str | None = None
    in_summary = False
    warning_lines: list[str] = []
    i = 0
    while i < len(lines):
        message, severity = lines[i]
        stripped = message.strip()
        status = _STATUS.match(stripped)
        if status:
            code = _VERSION_CODE.search(stripped)
            if code:
                log.version = version_from_code(code.group(1))
            if status.group(1) != "RUNNING":
                log.status = status.group(1)
            if status.group(3):
                log.command = status.group(3).strip()
            i += 1
            continue
        if stripped.startswith("TensorRT version:") and log.version is None:
            log.version = stripped.split(":", 1)[1].strip() or None
        profile_header = _PROFILE_HEADER.match(stripped)
        if profile_header:
            iterations = int(profile_header.group(1))
            header = lines[i + 1][0] if i + 1 < len(lines) else ""
            rows: list[str] = []
            j = i + 2
            while j < len(lines) and lines[j][0].strip():
                rows.append(lines[j][0])
                j += 1
            timings, total = _parse_profile_table(header, rows)
            log.profile = Profile(iterations=iterations, rows=timings, source=f"{source} (--dumpProfile)")
            log.profile_total_ms = total
            i = j
            continue
        header = _SECTION.match(stripped)
        if header:
            section = header.group(1)
            in_summary = section == "Performance summary"
            if not in_summary and section not in ("Trace details", "Explanations of the performance metrics"):
                log.sections.setdefault(section, {})
            else:
                section = None if not in_summary else section
            i += 1
            continue
        missing = _MISSING_SCALE.search(stripped)
        if missing and missing.group(1) not in log.missing_scale_tensors:
            log.missing_scale_tensors.append(missing.group(1))
        if stripped.startswith("Warmup completed"):
            m = re.match(rf"Warmup completed (\d+) queries over ({_FLOAT}) ms", stripped)
            if m:
                log.warmup_queries, log.warmup_ms = int(m.group(1)), float(m.group(2))
        elif stripped.startswith("Timing trace has"):
            m = re.match(r"Timing trace has (\d+) queries", stripped)
            if m:
                queries = int(m.group(1))
        if in_summary:
            if severity == "W":
                if stripped.startswith("*"):
                    warning_lines.append(stripped.lstrip("* ").strip())
                elif warning_lines and stripped:
                    warning_lines[-1] += " " + stripped
                i += 1
                continue
            metric = _METRIC_LINE.match(stripped)
            if metric:
                summary_metrics[_metric_key(metric.group(1).strip())] = parse_metric_line(metric.group(2))
            elif stripped.startswith("Throughput:"):
                m = re.match(rf"Throughput:\s*({_FLOAT})", stripped)
                throughput = float(m.group(1)) if m else None
            elif stripped.startswith("Total Host Walltime:"):
                m = re.match(rf"Total Host Walltime:\s*({_FLOAT})", stripped)
                walltime = float(m.group(1)) if m else None
            elif stripped.startswith("Total GPU Compute Time:"):
                m = re.match(rf"Total GPU Compute Time:\s*({_FLOAT})", stripped)
                gpu_total = float(m.group(1)) if m else None
            elif stripped.startswith("Explanations of the performance metrics") or stripped.startswith("&&&&"):
                in_summary = False
        elif section is not None and severity in (None, "I"):
            if not stripped:
                section = None
            elif ":" in stripped:
                key, _, value = stripped.partition(":")
                log.sections[section][key.strip()] = value.strip()
        i += 1
    if summary_metrics or throughput is not None:
        coeff = None
        for w in warning_lines:
            m = re.search(rf"coefficient of variance = ({_FLOAT})%", w)
            if m:
                coeff = float(m.group(1))
        log.summary = BenchStats(
            throughput_qps=throughput,
            metrics=summary_metrics,
            queries=queries,
            walltime_s=walltime,
            total_gpu_compute_s=gpu_total,
            gpu_coeff_var_pct=coeff,
            warnings=warning_lines,
        )
    return log


def load_trtexec_log(path: str | os.PathLike) -> TrtexecLog:
    """Read and parse a trtexec log file."""
    text = read_input_text(path, "trtexec log", errors="replace")
    return parse_trtexec_log(text, source=str(path))
