"""``trtq report``: which layers run in INT8, what they cost, and what to fix."""

from __future__ import annotations

from pathlib import Path

import click

from trtq.commands.options.common import quiet_option
from trtq.errors import TrtqError
from trtq.messages import note


def _sibling_profile(path: str) -> Path | None:
    """trex's naming: ``NAME.graph.json`` beside ``NAME.profile.json``."""
    p = Path(path)
    if p.name.endswith(".graph.json"):
        candidate = p.with_name(p.name[: -len(".graph.json")] + ".profile.json")
        if candidate.is_file():
            return candidate
    return None


def _load_profile(explicit: str | None, layers_path: str, quiet: bool):
    from trtq.report.profile import load_profile

    if explicit:
        return load_profile(explicit)
    sibling = _sibling_profile(layers_path)
    if sibling is None:
        return None
    if not quiet:
        note(f"using the profile beside {layers_path}: {sibling}")
    return load_profile(sibling)


def _load_ranges(path: str) -> set[str]:
    """Tensor names with a range: a trtq ranges JSON or a TensorRT calibration cache."""
    from trtq.calibrate import read_ranges

    return set(read_ranges(path))


def _report_onnx(source, json_path, markdown, quiet, engine_only) -> None:
    """``trtq report MODEL.onnx``: lint the Q/DQ placement from the ONNX alone, before any build."""
    from trtq.fileio import check_outputs, write_json
    from trtq.report.qdq_lints import lint_model_file, render_qdq_lints

    given = [option for option, value in engine_only.items() if value]
    if given:
        raise TrtqError(f"{given[0]} applies to an engine or layer JSON; {source} is an ONNX model, whose Q/DQ "
                        "placement is linted without a build (build it with trtq build, then report the engine)")
    check_outputs({"--json": json_path}, {"MODEL": source})
    result = lint_model_file(source)
    if json_path:
        write_json(json_path, result.to_dict(), indent=1)
    if quiet:
        return
    click.echo(render_qdq_lints(result, markdown=markdown), nl=False)
    if json_path:
        click.echo(f"trtq: wrote JSON report to {json_path}", err=True)


@click.command("report")
@click.argument("source", metavar="ENGINE|LAYERS.json|MODEL.onnx", type=click.Path(dir_okay=False))
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False),
              help="Per-layer times: trtexec --exportProfile JSON, or a trtexec log run with --dumpProfile. "
                   "NAME.profile.json beside NAME.graph.json is used automatically.")
@click.option("--compare", "compare_path", metavar="OTHER", type=click.Path(dir_okay=False),
              help="A second engine or layer JSON of the same model (e.g. FP16 vs INT8): aligned layer by layer.")
@click.option("--compare-profile", "compare_profile_path", type=click.Path(dir_okay=False),
              help="Per-layer times of OTHER.")
@click.option("--ranges", "ranges_path", type=click.Path(dir_okay=False),
              help="Ranges JSON (trtq calibrate --json) or TensorRT calibration cache: lint tensors without a range.")
@click.option("--build-log", "build_log_path", type=click.Path(dir_okay=False),
              help="trtexec/TensorRT build log: its 'Missing scale' warnings and build precision feed the lints.")
@click.option("--expect-int8/--no-expect-int8", default=None,
              help="Whether INT8 was requested (default: decided from Q/DQ or INT8 layers and the build log).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the report as JSON.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="Write a self-contained HTML report with charts.")
@click.option("--markdown", is_flag=True, help="Print Markdown (for CI job summaries) instead of the terminal view.")
@click.option("--sort", type=click.Choice(["order", "time"]), default="order", show_default=True,
              help="Order of the layer table: engine order or slowest first.")
@click.option("--top", type=click.IntRange(min=1), help="Show only this many layers in the table.")
@click.option("--wide", is_flag=True, help="Do not shorten layer names.")
@click.option("--reformat-threshold", type=click.FloatRange(min=0, max=100), default=5.0, show_default=True,
              help="Lint reformat layers that take more than this % of the time.")
@quiet_option("Print nothing but errors (use with --json/--html).")
def report(source, profile_path, compare_path, compare_profile_path, ranges_path, build_log_path, expect_int8,
           json_path, html_path, markdown, sort, top, wide, reformat_threshold, quiet):
    """Per-layer precision, kernel class and latency of a TensorRT engine, with lints.

    ENGINE is a serialized engine (.engine/.plan/.trt or another binary file; needs TensorRT and a
    GPU) or LAYERS.json, the layer information from trtexec --exportLayerInfo (build with
    --profilingVerbosity=detailed) or the engine inspector; JSON works on any machine.

    MODEL.onnx, a Q/DQ (QAT) model, gets the lints of its Q/DQ placement from the ONNX alone, before
    any build: pairs TensorRT cannot fuse or that cost accuracy, one line each (advice: exit 0).

    \b
    Examples:
      trtq report model.graph.json --profile model.profile.json
      trtq report fp16.graph.json --compare int8.graph.json --html report.html
      trtq report model.engine --markdown >> "$GITHUB_STEP_SUMMARY"
      trtq report qat.onnx --json qat.lints.json
    """
    from trtq.fileio import atomic_write, check_outputs, write_json
    from trtq.report.analysis import build_report
    from trtq.report.compare import compare_reports
    from trtq.report.engine import load_layers
    from trtq.report.html import render_html
    from trtq.report.qdq_lints import looks_like_onnx
    from trtq.report.render_text import render_compare_text, render_report_markdown, render_report_text
    from trtq.report.trtexec_log import load_trtexec_log

    if Path(source).is_file() and looks_like_onnx(source):
        engine_only = {"--profile": profile_path, "--compare": compare_path, "--compare-profile": compare_profile_path,
                       "--ranges": ranges_path, "--build-log": build_log_path, "--html": html_path,
                       "--expect-int8/--no-expect-int8": expect_int8 is not None}
        _report_onnx(source, json_path, markdown, quiet, engine_only)
        return
    check_outputs({"--json": json_path, "--html": html_path},
                  {"SOURCE": source, "--profile": profile_path, "--compare": compare_path,
                   "--compare-profile": compare_profile_path, "--ranges": ranges_path, "--build-log": build_log_path})
    if compare_profile_path and not compare_path:
        raise TrtqError("--compare-profile needs --compare OTHER")
    for path in (source, profile_path, compare_path, compare_profile_path, ranges_path, build_log_path):
        if path and not Path(path).is_file():
            raise TrtqError(f"file not found: {path}")

    ranges = _load_ranges(ranges_path) if ranges_path else None
    missing_scale = build_precision = None
    if build_log_path:
        log = load_trtexec_log(build_log_path)
        missing_scale = log.missing_scale_tensors
        build_precision = log.option("Build Options", "Precision")
    lint_options = dict(
        expect_int8=expect_int8,
        ranges=ranges,
        ranges_source=ranges_path or "the range file",
        missing_scale=missing_scale,
        build_precision=build_precision,
        reformat_threshold_pct=reformat_threshold,
    )
    main = build_report(load_layers(source), _load_profile(profile_path, source, quiet), label=source, **lint_options)
    comparison = None
    if compare_path:
        other = build_report(
            load_layers(compare_path), _load_profile(compare_profile_path, compare_path, quiet), label=compare_path,
            **lint_options,
        )
        comparison = compare_reports(main, other)

    if json_path:
        doc = main.to_dict()
        if comparison is not None:
            doc["compare"] = {"report": other.to_dict(), **comparison.to_dict()}
        write_json(json_path, doc, indent=1)
    if html_path:
        atomic_write(html_path, render_html(main, comparison))
    if quiet:
        return
    if markdown:
        click.echo(render_report_markdown(main, top=top or 15), nl=False)
        if comparison is not None:
            click.echo("\n" + render_compare_text(comparison, markdown=True), nl=False)
    else:
        click.echo(render_report_text(main, sort=sort, top=top, wide=wide), nl=False)
        if comparison is not None:
            click.echo("\n" + render_compare_text(comparison, wide=wide), nl=False)
    for out, what in ((json_path, "JSON"), (html_path, "HTML")):
        if out:
            click.echo(f"trtq: wrote {what} report to {out}", err=True)
