"""``trtq bench``: latency of an engine measured like trtexec, side by side with trtexec."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from trtq.commands.options.common import quiet_option
from trtq.messages import note


def _parse_percentiles(text: str) -> tuple[float, ...]:
    from trtq.errors import TrtqError

    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise TrtqError(f"--percentiles '{text}': expected numbers separated by commas, e.g. 90,95,99") from exc
    if not values or any(not 0 <= v <= 100 for v in values):
        raise TrtqError(f"--percentiles '{text}': each percentile must be in [0, 100]")
    return values


def _with_trtexec_defaults(settings, major: int, cuda_graph: bool | None, transfers: bool | None) -> None:
    """CUDA graph and data transfers as given, else as trtexec of TensorRT ``major`` does by default."""
    from trtq.report.trtexec_cmd import trtexec_defaults

    default_graph, default_transfers = trtexec_defaults(major)
    settings.cuda_graph = default_graph if cuda_graph is None else cuda_graph
    settings.data_transfers = default_transfers if transfers is None else transfers


def _measure(engine_path: str, settings, cuda_graph: bool | None, transfers: bool | None, *, backend: str | None,
             profile_iterations: int, quiet: bool, fallback: bool):
    """trtq's own GPU measurement; ``None`` (with a note) when TensorRT, a CUDA binding or a GPU that can load the
    engine is missing here and ``fallback`` (a trtexec log or run) provides the other column."""
    from trtq.errors import MissingDependencyError, TrtqError
    from trtq.report.gpu_bench import run_gpu_bench
    from trtq.trt import tensorrt_info
    from trtq.trt.cuda import CudaError
    from trtq.trt.inspect import EngineLoadError

    info = None
    try:
        info = tensorrt_info("trtq bench's own GPU measurement")
        _with_trtexec_defaults(settings, info.major, cuda_graph, transfers)
        ours = run_gpu_bench(
            engine_path,
            settings,
            backend_name=backend,
            profile_iterations=profile_iterations,
            echo=None if quiet else (lambda text: click.echo(text, err=True)),
        )
    except TrtqError as exc:
        # Every failure to import TensorRT is the machine's; after it, only these types are.
        if info is not None and not isinstance(exc, (MissingDependencyError, CudaError, EngineLoadError)):
            raise
        if not fallback:
            raise TrtqError(f"{exc}; `trtq bench --trtexec-log FILE` reads a trtexec log without it") from exc
        if not quiet:
            note(f"trtq's own measurement skipped: {exc}")
        return None
    ours.stats.settings.update(
        {"device": ours.device.get("name"), "tensorrt_version": ours.trt_version, "warmup_queries": ours.warmup_queries}
    )
    return ours


def _trtexec_stats(log, source: str):
    """The trtexec column: its summary, tagged with where it came from."""
    stats = log.summary
    stats.settings = {
        key: value
        for key, value in {
            "source": source,
            "tensorrt_version": log.version,
            "status": log.status,
            "command": log.command,
            "cuda_graph": log.option("Inference Options", "CUDA Graph"),
            "data_transfers": log.option("Inference Options", "Data transfers"),
            "spin_wait": log.option("Inference Options", "Spin-wait"),
            "device": log.option("Device Information", "Selected Device"),
        }.items()
        if value is not None
    }
    return stats


@click.command("bench")
@click.argument("engine_path", metavar="[ENGINE]", required=False, type=click.Path(dir_okay=False))
@click.option("--shapes", help="Input shapes in trtexec syntax, e.g. input:1x3x224x224 (dynamic engines).")
@click.option(
    "--warmup",
    "warmup_ms",
    type=click.FloatRange(min=0),
    default=200.0,
    show_default=True,
    help="Warm-up time in ms before timing starts.",
)
@click.option(
    "--iterations", type=click.IntRange(min=1), default=10, show_default=True, help="Time at least this many queries."
)
@click.option(
    "--duration",
    "duration_s",
    type=click.FloatRange(min=0),
    default=3.0,
    show_default=True,
    help="Time for at least this many seconds.",
)
@click.option(
    "--cuda-graph/--no-cuda-graph",
    default=None,
    help="Launch the engine as a CUDA graph. Default: what trtexec of the installed TensorRT does "
    "(off in 10.x, on in 11.x).",
)
@click.option(
    "--transfers/--no-transfers",
    default=None,
    help="Include host-to-device and device-to-host copies in each query. Default: as trtexec "
    "(on in 10.x, off in 11.x).",
)
@click.option(
    "--spin-wait/--no-spin-wait",
    default=None,
    help="Busy-wait for the GPU instead of blocking (trtexec --useSpinWait). Default: off.",
)
@click.option("--percentiles", default="90,95,99", show_default=True, help="Latency percentiles to report.")
@click.option(
    "--layers/--no-layers",
    default=True,
    show_default=True,
    help="Profile per-layer times in a separate IProfiler run after the timing run.",
)
@click.option(
    "--profile-iterations",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Queries in the per-layer profiling run.",
)
@click.option(
    "--export-profile",
    type=click.Path(dir_okay=False),
    help="Write per-layer times of the --layers run in trtexec --exportProfile format (input of trtq report "
    "--profile).",
)
@click.option(
    "--export-times", type=click.Path(dir_okay=False), help="Write per-query times in trtexec --exportTimes format."
)
@click.option(
    "--trtexec",
    "trtexec_path",
    is_flag=False,
    flag_value="trtexec",
    default=None,
    metavar="[PATH]",
    help="Also run trtexec (from PATH, or found on $PATH) on ENGINE with the same settings.",
)
@click.option(
    "--trtexec-log",
    "trtexec_log_path",
    type=click.Path(dir_okay=False),
    help="Compare with (or just show) the performance summary of an existing trtexec log; no GPU needed.",
)
@click.option(
    "--trtexec-timeout",
    type=click.FloatRange(min=1),
    default=900.0,
    show_default=True,
    help="Seconds to wait for trtexec.",
)
@click.option("--backend", type=click.Choice(["cuda-python", "pycuda"]), help="CUDA binding (default: first found).")
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False), help='Write {"trtq": STATS, "trtexec": STATS} as JSON.'
)
@click.option("--markdown", is_flag=True, help="Print Markdown (for CI job summaries).")
@quiet_option("Print nothing but errors (use with --json).")
def bench(
    engine_path,
    shapes,
    warmup_ms,
    iterations,
    duration_s,
    cuda_graph,
    transfers,
    spin_wait,
    percentiles,
    layers,
    profile_iterations,
    export_profile,
    export_times,
    trtexec_path,
    trtexec_log_path,
    trtexec_timeout,
    backend,
    json_path,
    markdown,
    quiet,
):
    """Time ENGINE on the GPU with trtexec's method and statistics; compare with trtexec.

    Statistics follow trtexec exactly (min, max, mean, median, percentiles by trtexec's rule,
    throughput = queries / total host walltime), so the two columns are directly comparable.
    With only --trtexec-log FILE, no TensorRT and no GPU are needed.

    \b
    Examples:
      trtq bench model.engine --trtexec                 # both, side by side, with the ratio
      trtq bench model.engine --no-transfers --cuda-graph --json bench.json
      trtq bench --trtexec-log trtexec.log              # parse a log on any machine
    """
    from trtq.errors import TrtqError
    from trtq.fileio import atomic_write, check_outputs, write_json
    from trtq.report.render_text import render_bench_text
    from trtq.report.trtexec_cmd import BenchSettings
    from trtq.report.trtexec_log import load_trtexec_log, parse_trtexec_log
    from trtq.shapes import format_shape_spec, parse_shape_spec

    check_outputs({"--json": json_path, "--export-profile": export_profile, "--export-times": export_times},
                  {"ENGINE": engine_path, "--trtexec-log": trtexec_log_path})
    if trtexec_path and engine_path is None:
        raise TrtqError("--trtexec needs the ENGINE to run")
    if engine_path is None and trtexec_log_path is None:
        raise TrtqError("give an ENGINE to time, or --trtexec-log FILE to read a trtexec log")
    if trtexec_path and trtexec_log_path:
        raise TrtqError("use either --trtexec (run it now) or --trtexec-log (read an old run), not both")
    for path in (engine_path, trtexec_log_path):
        if path and not Path(path).is_file():
            raise TrtqError(f"file not found: {path}")
    if (export_profile or export_times) and engine_path is None:
        raise TrtqError("--export-profile/--export-times need an ENGINE to measure")
    if export_profile and not layers:
        raise TrtqError("--export-profile needs the per-layer profiling run: drop --no-layers")
    log_from_file = load_trtexec_log(trtexec_log_path) if trtexec_log_path else None
    if log_from_file is not None and log_from_file.summary is None and log_from_file.profile is None:
        raise TrtqError(f"{trtexec_log_path} has no performance summary and no --dumpProfile table")
    if log_from_file is not None and engine_path is not None:
        # Unless told otherwise, measure the way the logged run did, so the two columns compare like with like.
        from trtq.report.trtexec_cmd import settings_from_log

        logged = settings_from_log(log_from_file.sections.get("Inference Options", {}), log_from_file.command)
        given = {"cuda_graph": cuda_graph, "data_transfers": transfers, "spin_wait": spin_wait, "shapes": shapes}
        adopted = {k: v for k, v in logged.items() if given[k] is None}
        cuda_graph = adopted.get("cuda_graph", cuda_graph)
        transfers = adopted.get("data_transfers", transfers)
        spin_wait = adopted.get("spin_wait", spin_wait)
        if "shapes" in adopted:
            shapes = format_shape_spec(adopted["shapes"])
        if not quiet and adopted:
            note(
                "measuring as the logged run did: "
                + ", ".join(f"{k}={format_shape_spec(v) if k == 'shapes' else v}" for k, v in adopted.items())
            )
    settings = BenchSettings(
        warmup_ms=warmup_ms,
        iterations=iterations,
        duration_s=duration_s,
        spin_wait=bool(spin_wait),
        shapes=parse_shape_spec(shapes) if shapes else {},
        percentiles=_parse_percentiles(percentiles),
    )
    exe = exe_major = None
    if trtexec_path:
        from trtq.report.trtexec_cmd import find_trtexec, trtexec_version

        exe = find_trtexec(trtexec_path)  # before the measurement: a wrong path fails fast
        version = trtexec_version(exe)
        exe_major = int(version.split(".")[0]) if version else None

    columns = {}
    written = []
    ours = None
    if engine_path is not None:
        ours = _measure(
            engine_path,
            settings,
            cuda_graph,
            transfers,
            backend=backend,
            profile_iterations=profile_iterations if layers else 0,
            quiet=quiet,
            fallback=log_from_file is not None or exe is not None,
        )
        if ours is not None:
            columns["trtq"] = ours.stats
            if export_profile:  # ours.profile is there: --no-layers was refused above
                atomic_write(export_profile, ours.profile.to_export_json())
                written.append((export_profile, "per-layer profile"))
            if export_times:
                from trtq.report.timing import export_times_json

                atomic_write(export_times, export_times_json(ours.trace))
                written.append((export_times, "per-query times"))

    trtexec_profile = trtexec_layers = None
    if exe is not None:
        from trtq.report.timing import load_export_times, summarize
        from trtq.report.trtexec_cmd import run_trtexec, trtexec_command

        major = exe_major if exe_major is not None else int(ours.trt_version.split(".")[0]) if ours else None
        if major is None:
            raise TrtqError(f"cannot tell which TensorRT {exe} belongs to (its --help printed no version)")
        if ours is None:
            _with_trtexec_defaults(settings, major, cuda_graph, transfers)
        with tempfile.TemporaryDirectory(prefix="trtq-bench-") as tmp:
            paths = {k: Path(tmp) / f"{k}.json" for k in ("profile", "layers", "times")}
            cmd = trtexec_command(
                exe,
                engine_path,
                major,
                settings,
                export_profile=paths["profile"],
                export_layer_info=paths["layers"],
                export_times=paths["times"],
            )
            if not quiet:
                click.echo("trtq: running " + " ".join(cmd), err=True)
            log = parse_trtexec_log(run_trtexec(cmd, trtexec_timeout), source=exe)
            if log.summary is None:
                raise TrtqError("trtexec printed no performance summary")
            columns["trtexec"] = _trtexec_stats(log, "trtexec run")
            columns["trtexec"].settings["command"] = " ".join(cmd)
            if paths["times"].is_file():
                # trtexec's own per-query times through trtq's statistics: shows the definitions agree.
                again = summarize(load_export_times(paths["times"]), settings.percentiles)
                columns["trtexec"].settings["recomputed_by_trtq"] = (
                    f"throughput {again.throughput_qps:.6g} qps, GPU compute median "
                    f"{again.metrics['gpu_compute']['median']:.6g} ms (from its --exportTimes)"
                )
            if paths["profile"].is_file():
                from trtq.report.profile import load_profile

                trtexec_profile = load_profile(paths["profile"])
            if paths["layers"].is_file():
                from trtq.report.layers import load_layer_info

                try:
                    trtexec_layers = load_layer_info(paths["layers"])
                except TrtqError:
                    trtexec_layers = None  # an older trtexec may write none or a partial file
    elif log_from_file is not None:
        if log_from_file.summary is not None:
            columns["trtexec"] = _trtexec_stats(log_from_file, str(trtexec_log_path))
        trtexec_profile = log_from_file.profile
        if ours is not None and not quiet:
            from trtq.report.trtexec_cmd import settings_mismatch

            for difference in settings_mismatch(log_from_file.sections.get("Inference Options", {}), settings):
                click.echo(
                    f"trtq: warning: the log was measured differently ({difference}); pass the matching "
                    "--cuda-graph/--transfers/--spin-wait to compare like with like",
                    err=True,
                )

    if json_path:
        write_json(json_path, {k: v.to_dict() for k, v in columns.items()}, indent=1)
        written.insert(0, (json_path, "JSON"))
    if quiet:
        return
    if columns:
        click.echo(render_bench_text(columns, markdown=markdown), nl=False)
        if len(columns) == 2:
            click.echo(("- " if markdown else "") + "ratio = trtq / trtexec")
    else:
        note("no performance summary to show (the log has only a per-layer profile)")
    _show_layers(ours, trtexec_profile, trtexec_layers, markdown)
    for out, what in written:
        click.echo(f"trtq: wrote {what} to {out}", err=True)


def _show_layers(ours, trtexec_profile, trtexec_layers, markdown: bool) -> None:
    """The slowest layers: trtq's IProfiler run joined to the engine's layers (precision, lints), else trtexec's
    profile joined to its detailed layer information; a profile alone where there are no layers."""
    from trtq.report.analysis import build_report
    from trtq.report.render_text import render_profile_text, render_report_markdown, render_report_text

    click.echo("")
    if ours is not None and ours.profile is not None:
        profile, layers, label, title = ours.profile, ours.layers, "trtq IProfiler run", "Slowest layers"
    elif trtexec_profile is not None:
        profile, label, title = trtexec_profile, "trtexec --exportProfile/--exportLayerInfo", "Slowest layers (trtexec)"
        layers = trtexec_layers if trtexec_layers is not None and trtexec_layers.detailed else None
    else:
        return
    if layers is None:
        click.echo(render_profile_text(profile, markdown=markdown, title=title), nl=False)
        return
    report = build_report(layers, profile, label=label)
    if markdown:
        click.echo(render_report_markdown(report, top=10), nl=False)
    else:
        click.echo(render_report_text(report, sort="time", top=10), nl=False)
