"""``trtq quantize``: FP32 ONNX -> a verified INT8 Q/DQ model, its TensorRT cache, keep list and report."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from trtq.accuracy.corrections import STEPS
from trtq.accuracy.crossfit import DEFAULT_FOLDS
from trtq.accuracy.holdout import DEFAULT_EVAL_SAMPLES
from trtq.accuracy.proxies import is_builtin_metric, parse_builtin_metrics
from trtq.accuracy.quantize import CALIBRATORS, FLOAT_PRECISIONS
from trtq.accuracy.sensitivity import MODES
from trtq.commands.options.accuracy import label_options
from trtq.commands.options.common import MethodChoice, memory_budget_option
from trtq.commands.options.data import data_options
from trtq.commands.progress import run_with_progress
from trtq.ranges import DEFAULT_PERCENTILE

GATE_FAILED = 3  # the exit status of a missed target, as a failed gate of `trtq run`


def output_paths(output: str) -> dict[str, Path]:
    """The files written next to ``-o OUT.onnx``."""
    out = Path(output)
    stem = out.with_suffix("") if out.suffix.lower() == ".onnx" else out
    return {"model": out, "float": Path(f"{stem}.float.onnx"), "cache": Path(f"{stem}.cache"),
            "keep": Path(f"{stem}.keep.txt"),
            "json": Path(f"{stem}.report.json"), "html": Path(f"{stem}.report.html")}


OUTPUT_LABELS = {"model": "-o", "float": "OUT.float.onnx", "cache": "OUT.cache", "keep": "OUT.keep.txt",
                 "json": "OUT.report.json", "html": "OUT.report.html"}


@click.command("quantize")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@data_options
@memory_budget_option()
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="OUT.onnx",
              help="The INT8 Q/DQ model; OUT.cache, OUT.keep.txt, OUT.report.json and OUT.report.html go beside it "
                   "[default: MODEL's name with .int8.onnx, in the current directory].")
@click.option("--eval-data", type=click.Path(),
              help="Held-out evaluation data (the other data options apply) [default: 1 batch in 5 of the "
                   "calibration data is held out and not calibrated on].")
@label_options
@click.option("--metric", "metrics", multiple=True, metavar="NAME[=OUTPUT]|FILE.py[:FUNC]",
              help="What the drop is measured on. A built-in task proxy per output: top1, ctc, iou[:T], "
                   "cosine[:C], equal (NAME=OUTPUT for one output; repeatable) [default: inferred per output "
                   "from what it holds]. Or a task metric FUNC(fp32, int8, labels) -> a number per batch or per "
                   "sample, higher is better (default FUNC: metric); the drop is its FP32 score minus its INT8 "
                   "score, x 100.")
@click.option("--max-drop", type=click.FloatRange(min=0), metavar="PCT",
              help="Target: at most PCT points lost on the measure (--metric, else accuracy with --labels, else "
                   "each output's task proxy) [default: 1].")
@click.option("--min-sqnr", type=float, metavar="DB",
              help="Target: worst-output SQNR of at least DB (a diagnostic unless asked) [default: none].")
@click.option("--folds", type=click.IntRange(min=2), default=DEFAULT_FOLDS, show_default=True,
              help="Without --eval-data: the judged calibration samples are cross-fitted in this many folds "
                   "(each judged by ranges from the others).")
@click.option("--calibrator", type=MethodChoice(CALIBRATORS), default="auto", show_default=True,
              help="auto: every guarded method measured end to end, the closest to FP32 kept; or one method "
                   "(ModelOpt's max = minmax).")
@click.option("--percentile", type=float, default=DEFAULT_PERCENTILE, show_default=True,
              help="Percentile of |x| for --calibrator percentile.")
@click.option("--mode", type=click.Choice(MODES), default="alone", show_default=True,
              help="Sensitivity ranking used when all-INT8 misses the target.")
@click.option("--max-eval-samples", type=click.IntRange(min=1), default=DEFAULT_EVAL_SAMPLES, show_default=True,
              help="Samples judged (held in memory): of --eval-data, else the first calibration samples.")
@click.option("--exclude", multiple=True, metavar="NODE|@FILE",
              help="Keep this node (ONNX node name or its output tensor) in float in every configuration, as trtq "
                   "export --exclude does (ModelOpt's nodes_to_exclude). Repeatable; @FILE reads one name per line.")
@click.option("--exclude-op-types", metavar="OP[,OP...]",
              help="Keep every node of these ONNX op types in float (ModelOpt's op_types_to_exclude), e.g. "
                   "Add,MatMul.")
@click.option("--no-bias-correction", "no_bias_correction", is_flag=True,
              help="Do not try bias correction (each INT8 layer's mean output shift folded into its bias; adopted "
                   "only when it beats the uncorrected model beyond the noise).")
@click.option("--no-smoothing", "no_smoothing", is_flag=True,
              help="Do not try SmoothQuant (outlier channels of a MatMul / Gemm activation moved into its weights; "
                   "tried only where an activation has them, adopted only when it beats the model before beyond the "
                   "noise).")
@click.option("--output-ranges", "output_ranges", is_flag=True,
              help="Also try layer-output ranges: each activation's amax chosen by the error of the layers reading it "
                   "(adopted only when it beats the method's ranges beyond the noise; about a pass of the model per "
                   "candidate on 32 samples).")
@click.option("--float-precision", type=click.Choice(FLOAT_PRECISIONS), default="fp32", show_default=True,
              help="Of the written model's float part, the kept layers included: fp16 writes them in FP16 (Q/DQ at "
                   "opset 19), as TensorRT builds --best, and the final check judges that model (onnxruntime's CPU "
                   "runs some FP16 ops in FP32: the check is optimistic there).")
@click.option("--trt-version", help="TensorRT version for the cache header [default: installed, else 10.16.1].")
@click.option("-q", "--quiet", is_flag=True, help="No progress and no summary; errors and warnings only.")
@click.option("--ray", "ray_address", metavar="ADDRESS",
              help="Run the sensitivity ranking on Ray actors (as trtq sensitivity --ray) and, with --eval-data, "
                   "the calibration pass as Ray tasks over shards of the data (as trtq calibrate --ray); same "
                   "results as one machine: local, auto, HOST:PORT or ray://HOST:PORT. Needs "
                   "pip install 'trtq[ray]'.")
def quantize(model_path, output, eval_data, labels_path, labels_from_folders, logits, metrics, max_drop, min_sqnr,
             folds, calibrator, percentile, mode, max_eval_samples, exclude, exclude_op_types, no_bias_correction,
             no_smoothing, output_ranges, float_precision,
             trt_version, quiet, ray_address, memory_budget, **data_kwargs):
    """Quantize MODEL to INT8 and verify it: one command from FP32 ONNX to a Q/DQ model that meets
    an accuracy target.

    One calibration pass collects the statistics; --calibrator auto measures every guarded range
    method against FP32 on the evaluation data and keeps the closest; if the all-INT8 model still
    misses the target, error-reducing steps are tried (SmoothQuant, bias correction), then the layers
    with the most harm per MAC are kept in float, each step verified; the final Q/DQ model is
    evaluated again. A target met only by keeping nearly every layer in float writes
    the report but no model, and exits with status 3.

    \b
    Examples:
      trtq quantize calib_data/mnist-8.onnx --data calib_data/mnist -o mnist-8.int8.onnx
      trtq quantize det.onnx --data calib/ --eval-data val/ --metric boxes.py:f1 --max-drop 2 -o det.int8.onnx
      trtq build det.onnx --int8 --calibrator entropy2 --cache det.int8.cache --keep-precision @det.int8.keep.txt
    """
    from trtq.accuracy.labels import read_labels
    from trtq.accuracy.quantize_files import QuantizeFiles
    from trtq.accuracy.targets import load_metric
    from trtq.cache import DEFAULT_TRT_VERSION
    from trtq.commands.options.data import batches_from_options
    from trtq.data.options import data_input_files
    from trtq.data.script import parse_script_spec
    from trtq.export import name_list_files, read_name_list
    from trtq.export.graph import nodes_of_types
    from trtq.fileio import check_outputs, refuse_engine_suffix
    from trtq.jobs.quantize import QuantizeRequest, quantize_job
    from trtq.messages import warn
    from trtq.model import load_model
    from trtq.ranges import check_percentile
    from trtq.segments import memory_budget_scope
    from trtq.versions import installed_trt_version

    click.get_current_context().with_resource(memory_budget_scope(memory_budget))
    check_percentile(percentile)
    metric = _metric_script(metrics, ray_address)
    if output is None:
        output = f"{Path(model_path).stem}.int8.onnx"
    paths = output_paths(output)
    refuse_engine_suffix(output, "-o", "int8")
    check_outputs({OUTPUT_LABELS[key]: path for key, path in paths.items()},
                  {"MODEL": model_path, **data_input_files(data_kwargs), "--eval-data": eval_data,
                   "--labels": labels_path, "--metric": metric and str(parse_script_spec(metric)[0]),
                   **name_list_files(exclude)})
    labels = read_labels(labels_path, labels_from_folders)
    task_metric = load_metric(metric) if metric else None
    model = load_model(model_path)
    named = parse_builtin_metrics([m for m in metrics if is_builtin_metric(m)], list(model.output_names)) or None
    from trtq.qdq_model import refuse_quantized

    refuse_quantized(model, "quantizing it again would put a second Q/DQ on its tensors",
                     "measure it with trtq evaluate and trtq sensitivity, or quantize its FP32 model instead")
    excluded = [*read_name_list(exclude), *nodes_of_types(model.graph, exclude_op_types)]  # checked by quantize() first
    calibration = batches_from_options(model, warn=warn, **data_kwargs)
    evaluation = None
    if eval_data:
        evaluation = batches_from_options(model, warn=warn, **{**data_kwargs, "data": eval_data, "seed": None,
                                                                  "data_loader_script": None,
                                                                  "max_samples": max_eval_samples})
    steps = tuple(step for step in STEPS if (step != "bias" or not no_bias_correction)
                  and (step != "smooth" or not no_smoothing) and (step != "ranges" or output_ranges))
    request = QuantizeRequest(model, calibration, evaluation, labels, max_eval_samples, loop={
        "metric": task_metric, "proxies": named, "min_sqnr": min_sqnr, "max_drop": max_drop, "calibrator": calibrator,
        "percentile": percentile, "logits": logits, "mode": mode, "folds": folds, "exclude": excluded,
        "float_precision": float_precision, "steps": steps})
    if not quiet:
        click.echo(f"quantizing {model.name} on {calibration.description}", err=True)
    # everything is computed, then written: the report always, the model only when it is verified
    run = functools.partial(quantize_job, request, QuantizeFiles(**paths),
                            trt_version=trt_version or installed_trt_version() or DEFAULT_TRT_VERSION,
                            document={"outputs": {k: str(v) for k, v in paths.items()}},
                            note=None if quiet else (lambda line: click.echo(line, err=True)))
    if ray_address is None:
        result = run_with_progress(run, calibration.total_samples, quiet, label="calibration pass").result
    else:
        result = _run_on_ray(run, request, ray_address, calibration.total_samples, quiet=quiet).result
    _render(result, paths, model_path, quiet)
    if not result.ok:
        click.echo(f"trtq: error: {result.failure} (report: {paths['html']}){_take_best(result)}", err=True)
        sys.exit(GATE_FAILED)


def _metric_script(metrics: tuple[str, ...], ray_address: str | None) -> str | None:
    """The ``--metric FILE.py:FUNC`` given (None for built-in proxies or none); usage errors for mixing them or a
    script metric on Ray."""
    scripts = [m for m in metrics if not is_builtin_metric(m)]
    if len(scripts) > 1 or scripts and len(metrics) > 1:
        raise click.UsageError("give one --metric FILE.py:FUNC, or built-in proxies (NAME[=OUTPUT]), not both")
    metric = scripts[0] if scripts else None
    if ray_address is not None and metric:
        raise click.UsageError("--ray does not run a task metric yet; drop --metric or --ray")
    return metric


def _render(result, paths: dict[str, Path], model_path: str, quiet: bool) -> None:
    """The console summary: the candidates, every verified configuration, the scores, the INT8 share, the
    uncertainty, the time, the files written and the build command of each TensorRT generation."""
    from trtq.accuracy.quantize_result import format_steps
    from trtq.messages import note

    quantized = result.quantized_nodes
    shares = result.mac_shares
    missing = sorted(set(result.amax) - set(result.usable_amax))
    if result.ok and missing:
        note(f"{len(missing)} tensors without a usable range (all zero or no finite value) were left out of the "
             f"cache, TensorRT keeps them in higher precision: {', '.join(missing[:8])}"
             + (" ..." if len(missing) > 8 else ""))
    if not quiet:
        if result.auto is not None:
            click.echo(f"range methods (guarded), simulated INT8 vs FP32 on the {result.eval_samples} judged samples:")
            click.echo(result.auto.format_table())
        click.echo("verified configurations:")
        for line in format_steps(result):
            click.echo(line)
        scores = result.describe_scores()
        if scores is not None:
            click.echo(scores)
        if shares[-1] is not None and result.ok:
            asked = f", {len(result.excluded)} more kept in float as asked" if result.excluded else ""
            click.echo(f"INT8 layers: {len(quantized) - len(result.keep)} of {len(quantized)}{asked} "
                       f"({100 * shares[-1]:.1f} % of the MACs)")
        if result.ok and result.undecided:
            click.echo("undecided: no configuration measured met the target at its point estimate; the one written "
                       "misses it only inside the noise")
        resolution = result.resolution()
        if resolution is not None and result.ok:
            click.echo(f"judged on {result.eval_samples} samples: "
                       + resolution.describe(result.target.max_drop, result.steps[-1].drop))
        click.echo("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
                   + f" ({result.passes} evaluation passes)")
        written = [paths["model"], paths["cache"], paths["keep"]] if result.ok else []
        if result.ok and result.float_model is not None:
            written.insert(1, paths["float"])
        click.echo("wrote " + ", ".join(str(p) for p in [*written, paths["json"], paths["html"]]))
        if result.ok:
            click.echo(_hand_off(result, paths, model_path))


def _hand_off(result, paths: dict[str, Path], model_path: str) -> str:
    """Which file each TensorRT generation builds: 11.x the Q/DQ model; 10.x the float model the cache's ranges are
    for (the corrected one when a correction was adopted) with the keep list."""
    import shlex

    float_model = paths["float"] if result.float_model is not None else Path(model_path)
    keep = f" --keep-precision @{shlex.quote(str(paths['keep']))}" if result.keep or result.excluded else ""
    # 11.x builds the model as it is typed (its FP16 part included); 10.x: --best keeps the listed layers in FP16
    flag = "--best" if result.float_precision == "fp16" else "--int8"
    return (f"build: TensorRT 11: trtq build {shlex.quote(str(paths['model']))} --int8; TensorRT 10: trtq build "
            f"{shlex.quote(str(float_model))} {flag} --calibrator entropy2 --cache {shlex.quote(str(paths['cache']))}"
            f"{keep}")


def _take_best(result) -> str:
    """The one command that takes the best configuration measured: the same command with the target relaxed to
    what that configuration reached (its drop rounded up to a tenth of a point; an SQNR target, when one was set
    and missed, rounded down to a tenth of a dB)."""
    import math
    import shlex

    best = result.best_step
    if best.drop is None or result.target.max_drop is None:
        return ""
    share = result.mac_share(best.kept)
    relaxed = ["--max-drop", f"{max(math.ceil(best.drop.points * 10 + 1e-9) / 10, 0.1):g}"]
    replaced = ("--max-drop",)
    min_sqnr = result.target.min_sqnr
    if min_sqnr is not None and math.isfinite(best.sqnr_db) and best.sqnr_db < min_sqnr:
        relaxed += ["--min-sqnr", f"{math.floor(best.sqnr_db * 10 - 1e-9) / 10:g}"]
        replaced += ("--min-sqnr",)
    argv, skip = ["trtq"], False
    for word in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if word in replaced:
            skip = True
            continue
        if word.startswith(tuple(f"{option}=" for option in replaced)):
            continue
        argv.append(word)
    mac = f" ({100 * share:.1f} % of the MACs in INT8)" if share is not None else ""
    return f"; to take the best measured{mac}: {shlex.join([*argv, *relaxed])}"



def _run_on_ray(run, request, address: str, total: int | None, *, quiet: bool):
    """``run`` (the quantize job) within one Ray session: the ranking's actors and, with --eval-data, the
    calibration shards (without it the hold-out split streams through this process)."""
    from trtq.commands.progress import task_progress
    from trtq.distributed.backend import ray_session

    if request.evaluation is None and not quiet:
        click.echo("--ray without --eval-data: the calibration pass (with its cross-fitting folds) runs on this "
                   "machine, the sensitivity ranking on Ray (give --eval-data to shard the calibration)", err=True)
    request.ray, request.ray_progress = address, task_progress("ranking on Ray", quiet)
    with ray_session(address):
        return run_with_progress(run, total, quiet, label="calibration pass")
