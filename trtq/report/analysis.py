"""Building the report of one engine: its layers joined to a profile, summarised and linted.

The result is the plain data of :mod:`trtq.report.model`; the lint rules are :mod:`trtq.report.lints`
and engine-vs-engine comparison is :mod:`trtq.report.compare`.
"""

from __future__ import annotations

from trtq.report.layers import EngineLayers
from trtq.report.lints import REFORMAT_THRESHOLD_PCT, format_ms, format_pct, lint_report
from trtq.report.model import EngineReport, ReportRow
from trtq.report.profile import Profile, join_profile


def build_report(
    engine: EngineLayers,
    profile: Profile | None = None,
    *,
    label: str = "",
    expect_int8: bool | None = None,
    ranges: set[str] | None = None,
    ranges_source: str = "the range file",
    missing_scale: list[str] | None = None,
    build_precision: str | None = None,
    reformat_threshold_pct: float = REFORMAT_THRESHOLD_PCT,
) -> EngineReport:
    """Join layers and profile, summarise, and lint.

    ``expect_int8=None`` decides from the evidence: INT8 layers or Q/DQ layers in the engine,
    ``INT8`` in the build log's precision, or tensors the build log says lacked a scale.
    """
    join = join_profile(engine, profile)
    total = join.total_ms if join.has_profile else None
    rows = []
    for jl in join.rows:
        ms = jl.timing.average_ms if jl.timing is not None else None
        pct = 100.0 * ms / total if ms is not None and total else (0.0 if ms is not None else None)
        rows.append(ReportRow(layer=jl.layer, time_ms=ms, time_pct=pct))
    report = EngineReport(
        label=label or engine.source,
        engine=engine,
        rows=rows,
        unmatched=join.unmatched,
        has_profile=join.has_profile,
        total_ms=total,
        profile_iterations=profile.iterations if profile is not None else None,
    )
    if expect_int8 is None:
        expect_int8 = (
            any(r.precision == "INT8" or r.layer.is_qdq for r in rows)
            or bool(build_precision and "INT8" in build_precision.upper())
            or bool(missing_scale)
        )
    report.int8_expected = expect_int8
    if not engine.detailed:
        report.notes.append(
            "names-only layer information: precision, tactics and lints need an engine built with "
            "--profilingVerbosity=detailed (ProfilingVerbosity.DETAILED)"
        )
    if profile is None:
        report.notes.append(
            "no per-layer profile given: times are unknown (pass --profile, e.g. trtexec --exportProfile)"
        )
    elif join.matched_count == 0 and rows:
        report.notes.append(f"no profile row matched a layer name: is {profile.source} from this engine?")
    if join.unmatched:
        um = report.unmatched_summary()
        report.notes.append(
            f"{um['rows']} profile rows match no layer (Myelin sub-kernels or another build): kept as "
            f"'profile only' rows, {format_ms(um['time_ms'])} ({format_pct(um['time_pct'])} of the total)"
        )
    report.lints += lint_report(
        report,
        int8_expected=expect_int8,
        reformat_threshold_pct=reformat_threshold_pct,
        ranges=ranges,
        ranges_source=ranges_source,
        missing_scale=missing_scale,
    )
    report.ranges_checked = ranges is not None or missing_scale is not None
    if not report.ranges_checked and expect_int8:
        report.notes.append("tensors without ranges: not checked (pass --ranges CACHE|JSON or --build-log LOG)")
    return report
