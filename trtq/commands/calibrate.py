"""``trtq calibrate``: per-tensor INT8 ranges on any machine, written as a TensorRT cache and/or JSON."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from trtq.commands.options.common import MethodChoice, memory_budget_option, quiet_option
from trtq.commands.options.data import batches_from_options, data_given, data_options
from trtq.commands.progress import run_with_progress
from trtq.errors import TrtqError
from trtq.messages import warn
from trtq.ranges import DEFAULT_PERCENTILE, METHODS


@click.command("calibrate")
@click.argument("model_path", metavar="MODEL", required=False, type=click.Path(dir_okay=False))
@data_options
@memory_budget_option()
@click.option("--tensors", "tensor_set", type=click.Choice(["all", "qdq"]), default="all", show_default=True,
              help="all: every float tensor (what a TensorRT 10 cache needs); qdq: only those a Q/DQ export "
                   "quantizes (all a TensorRT 11 Q/DQ model uses) -- onnxruntime then optimises the graph "
                   "between them, typically 1.5-2.5x faster.")
@click.option("--calibrator", type=MethodChoice(("auto", *METHODS)), default="auto", show_default=True,
              help="Range method: auto (every method below, guarded against degenerate tensors, measured as "
                   "simulated INT8 vs FP32 on held-out data; the closest kept), entropy2 (TensorRT's KL search), "
                   "entropy (same search, legacy header), minmax (absmax), percentile (--percentile of |x|), "
                   "mse (least squared error). ModelOpt's and onnxruntime's names work too (max = minmax).")
@click.option("--percentile", type=float, default=DEFAULT_PERCENTILE, show_default=True,
              help="Percentile of |x| used by --calibrator percentile, in (0, 100].")
@click.option("--cache", "--calibration-cache", "cache_path", type=click.Path(dir_okay=False),
              help="Write TensorRT's native calibration cache here "
                   "[default: MODEL-CALIBRATOR.cache in the current directory when --json is not given].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Write per-tensor ranges (amax, scale, min, max, absmax) and provenance as JSON.")
@click.option("--trt-version", help="TensorRT version for the cache header "
              "[default: the installed tensorrt's, else 10.16.1].")
@click.option("--save-stats", type=click.Path(dir_okay=False),
              help="Also save the collected statistics (.npz) to re-derive ranges later with --from-stats.")
@click.option("--from-stats", type=click.Path(dir_okay=False),
              help="Derive ranges from statistics saved with --save-stats instead of running the model.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="onnxruntime execution provider (cuda needs onnxruntime-gpu). With cuda and CuPy (pip install "
                   "'trtq[device-stats]') the statistics are folded on the GPU too, the same bits as on the host; "
                   "with --ray each shard is a task on one GPU of the cluster, folding there when its worker has "
                   "CuPy.")
@quiet_option("No progress bar and no summary; errors and warnings only.")
@click.option("--ray", "ray_address", metavar="ADDRESS",
              help="Collect the statistics as Ray tasks, the data cut into shards of whole batches (same cache as "
                   "one machine): local (a Ray instance in this process, one worker per core), auto, HOST:PORT or "
                   "ray://HOST:PORT. The data must be on storage every node mounts at the same path. Needs "
                   "pip install 'trtq[ray]'.")
# -- method comparison (trtq.accuracy) --
@click.option("--compare-methods", is_flag=True,
              help="Also evaluate entropy2, minmax, percentile 99.9/99.99/99.999 and mse ranges (from the same "
                   "statistics) as simulated INT8 vs FP32, and recommend one. Evaluates on --eval-data, else on "
                   "the calibration data.")
@click.option("--eval-data", type=click.Path(),
              help="Held-out data for --calibrator auto and --compare-methods (the other data options apply) "
                   "[default: auto holds out 1 calibration batch in 5 for its choice].")
@click.option("--labels", "--eval-labels", "eval_labels", type=click.Path(dir_okay=False),
              help="Labels of the --eval-data (.npy in data order, or a file,label CSV): adds accuracy.")
def calibrate(model_path, calibrator, percentile, cache_path, json_path, trt_version, save_stats, from_stats,
              device, quiet, ray_address, compare_methods, eval_data, eval_labels, memory_budget, tensor_set,
              **data_kwargs):
    """Compute INT8 ranges for MODEL's tensors and write a TensorRT calibration cache.

    Runs the model in onnxruntime over the calibration data once, collecting per-tensor
    statistics, then derives each tensor's range with the chosen method, exactly as TensorRT's
    calibrators do. No GPU and no TensorRT are needed.

    \b
    Examples:
      trtq calibrate calib_data/mnist-8.onnx --data calib_data/mnist
      trtq calibrate model.onnx --data images/ --preset imagenet --calibrator minmax --cache m.cache
      trtq calibrate model.onnx --data calib.npz --json ranges.json --save-stats stats.npz
      trtq calibrate --from-stats stats.npz --calibrator percentile --percentile 99.9 --cache p.cache
    """
    from trtq import calibrate as api
    from trtq.cache import DEFAULT_TRT_VERSION
    from trtq.data.options import data_input_files
    from trtq.fileio import check_outputs
    from trtq.model import load_model
    from trtq.ranges import check_percentile
    from trtq.segments import memory_budget_scope
    from trtq.stats import StatsCollector
    from trtq.versions import installed_trt_version

    click.get_current_context().with_resource(memory_budget_scope(memory_budget))
    check_percentile(percentile)
    if (eval_data or eval_labels) and not (compare_methods or calibrator == "auto"):
        raise click.UsageError("--eval-data and --labels belong to --calibrator auto and --compare-methods")
    if eval_labels and not eval_data:
        raise click.UsageError("--labels labels the --eval-data; give --eval-data PATH too")
    if calibrator == "auto" and from_stats and not (model_path and eval_data):
        raise click.UsageError("--calibrator auto with --from-stats needs MODEL and --eval-data PATH to choose on")
    if compare_methods and from_stats and not (model_path and eval_data):
        raise click.UsageError("--compare-methods with --from-stats needs MODEL and --eval-data PATH")
    if from_stats and data_given(data_kwargs):
        raise click.UsageError("--from-stats derives ranges from saved statistics; it takes no --data")
    if tensor_set != "all" and from_stats:
        raise click.UsageError("--tensors qdq selects what the model run captures: not with --from-stats")
    if ray_address is not None and from_stats:
        raise click.UsageError("--ray collects statistics; --from-stats has them already")
    if ray_address is not None and data_kwargs.get("data_loader_script"):
        raise click.UsageError("--ray shards the data by sample index: give --data PATH (on shared storage), "
                               "not --data-loader-script")
    if not from_stats and not model_path:
        raise click.UsageError("MODEL is required (or --from-stats STATS)")
    if cache_path is None and json_path is None:
        stem = Path(model_path).stem if model_path else Path(from_stats).stem
        cache_path = f"{stem}-{calibrator}.cache"
    check_outputs({"--cache": cache_path, "--json": json_path, "--save-stats": save_stats},
                  {"MODEL": model_path, "--from-stats": from_stats, **data_input_files(data_kwargs),
                   "--eval-data": eval_data, "--labels": eval_labels})
    version = trt_version or installed_trt_version() or DEFAULT_TRT_VERSION

    model = None
    if from_stats:
        stats = StatsCollector.load(from_stats)
        if model_path:
            model = load_model(model_path)
            _refuse_quantized(model)
            if stats.meta.get("model_sha256") not in (None, model.sha256):
                raise TrtqError(f"{from_stats} was collected on a different model than {model_path} "
                                "(sha256 differs); recollect the statistics")
        if calibrator == "auto":
            from trtq.accuracy.auto import auto_from_stats

            held = _eval_set(model, data_kwargs, eval_data, eval_labels)
            result, choice = auto_from_stats(model, stats, held.batches, held.labels)
            _print_auto(choice, held.description, quiet)
        else:
            result = api.ranges_from_stats(stats, calibrator, percentile)
    else:
        model = load_model(model_path)
        _refuse_quantized(model)
        batches = batches_from_options(model, **data_kwargs)
        fold_device = None
        device_providers = {"auto": None, "cpu": ["CPUExecutionProvider"],
                            "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}[device]
        # the statistics pass runs as Ray tasks, except auto's hold-out split, which streams through here
        sharded = ray_address is not None and (calibrator != "auto" or bool(eval_data))
        if device == "cuda" and sharded:
            fold_device = "cuda"  # the workers' onnxruntime-gpu and CuPy count, not this machine's
        elif device == "cuda":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise TrtqError("--device cuda needs onnxruntime-gpu (pip install onnxruntime-gpu)")
            from trtq.trt.device_fold import cupy_available

            fold_device = "cuda" if cupy_available() else None
            if fold_device is None and not quiet:
                click.echo("note: statistics folded on the host: CuPy is not installed or sees no GPU "
                           "(pip install 'trtq[device-stats]' to fold them on the GPU)", err=True)
        only = None
        if tensor_set == "qdq":
            from trtq.export.qdq import qdq_activation_tensors

            only = qdq_activation_tensors(model)
        if not quiet:
            click.echo(f"calibrating {model.name} on {batches.description}"
                       + (f" ({len(only)} Q/DQ tensors only)" if only is not None else ""), err=True)
        if calibrator == "auto":
            from trtq.accuracy.auto import calibrate_auto

            held = _eval_set(model, data_kwargs, eval_data, eval_labels)
            collect = None
            if ray_address is not None:
                if held is None and not quiet:
                    click.echo("--ray with --calibrator auto and no --eval-data: the hold-out split runs on this "
                               "machine (give --eval-data to shard the calibration)", err=True)
                from trtq.distributed.calibrate import ray_collector

                collect = ray_collector(ray_address)
            run = functools.partial(calibrate_auto, model, batches, eval_batches=None if held is None else held.batches,
                                    eval_labels=None if held is None else held.labels, providers=device_providers,
                                    collect=collect, tensors=only, fold_device=fold_device)
            result, choice, described = run_with_progress(run, batches.total_samples, quiet)
            _print_auto(choice, held.description if held else described, quiet)
        else:
            # saved or compared statistics need the histograms whatever the method; else the method decides
            keep = True if save_stats or compare_methods else None
            if ray_address is not None:
                from trtq.distributed.calibrate import calibrate_ray

                run = functools.partial(calibrate_ray, model, batches, calibrator, ray_address,
                                        percentile=percentile, providers=device_providers, keep_histograms=keep,
                                        tensors=only, fold_device=fold_device)
            else:
                run = functools.partial(api.calibrate, model, batches, calibrator, percentile=percentile,
                                        providers=device_providers, keep_histograms=keep, tensors=only,
                                        fold_device=fold_device)
            result = run_with_progress(run, batches.total_samples, quiet)

    if model is not None:  # weight-derived tensors: max|w|, whatever the method (a no-op when already done)
        from trtq.accuracy.quantize import check_inputs_finite

        check_inputs_finite(model, result.stats)  # before any file: all-NaN input data is an error
        result.add_weight_ranges(model)
    for line in result.problems():
        warn(line)
    comparison = None
    if compare_methods:  # before writing anything: a failure here must leave no outputs behind
        from trtq.accuracy.methods import compare_methods_for_calibration

        comparison = compare_methods_for_calibration(
            model, result.stats, None if from_stats else batches, data_kwargs,
            eval_data=eval_data, eval_labels=eval_labels, warn=warn)
    written = []
    if save_stats and not from_stats:
        result.stats.save(save_stats)
        written.append(("statistics", save_stats))
    if cache_path:
        result.write_cache(cache_path, version)
        written.append(("cache", cache_path))
    if json_path:
        result.write_json(json_path, version)
        written.append(("ranges", json_path))
    if not quiet:
        _print_summary(result, written)
    if comparison is not None:
        methods, described = comparison
        click.echo(f"range methods as simulated INT8 vs FP32 on {described} ({methods.samples} samples; "
                   f"best = {methods.rule}):")
        click.echo(methods.format_table())
        click.echo(f"recommended: {methods.best.label}")


def _eval_set(model, data_kwargs, eval_data, eval_labels):
    """The --eval-data held in memory, opened with the calibration's other data options (None without it)."""
    if not eval_data:
        return None
    from trtq.accuracy.holdout import read_eval_set
    from trtq.accuracy.labels import read_labels

    options = {**data_kwargs, "data": eval_data, "data_loader_script": None, "max_samples": None, "seed": None}
    return read_eval_set(batches_from_options(model, warn=warn, **options), read_labels(eval_labels))


def _print_auto(choice, described: str, quiet: bool) -> None:
    if not quiet:
        click.echo(f"auto: guarded range methods, simulated INT8 vs FP32 on {described}:", err=True)
        click.echo(choice.format_table(), err=True)


def _print_summary(result, written) -> None:
    stats = result.stats
    click.echo(f"{len(stats)} tensors, {result.samples} samples in {stats.batches} batches, "
               f"{result.seconds:.2f} s ({result.calibrator}"
               + (f": {result.details['chosen']})" if result.details and "chosen" in result.details else ")"))
    clipped = result.most_clipped()
    if clipped:
        click.echo("most clipped tensors (share of values beyond the range):")
        width = max(len(name) for name, *_ in clipped)
        for name, fraction, ratio in clipped:
            click.echo(f"  {name:<{width}}  {fraction * 100:7.3f} %  (range = {ratio:.3f} x absmax)")
    click.echo(range_sources_line(result))
    capture = stats.capture or {}
    if capture.get("plan"):
        kernel = capture.get("histogram_kernel")
        how = ("statistics folded on the GPU (CuPy)" if capture.get("fold_device") else
               f"histograms binned by {kernel}" if kernel else "no histograms (min/max only)")
        if capture.get("gpu_shards") == 0:  # --ray --device cuda, and no worker had CuPy
            how += " (on the hosts: no Ray worker has CuPy seeing a GPU; pip install 'trtq[device-stats]' there)"
        if capture.get("blocked_tensors"):
            how += f"; {capture['blocked_tensors']} tensors folded in onnxruntime's blocked layout"
        click.echo(f"model runs: {capture['plan']}; {how}")
    for what, path in written:
        click.echo(f"{what} written to {path}")


def range_sources_line(result) -> str:
    """``N tensors from data, M from weights, K without a range (why)``."""
    zeros = set(result.zero_ranges())
    data = sum(1 for name in result.amax if name not in zeros)
    weights = sum(1 for name in result.weights if name not in zeros)
    missing = result.without_range()
    reasons: dict[str, int] = {}
    for why in missing.values():
        reasons[why] = reasons.get(why, 0) + 1
    detail = "; ".join(f"{count} {why}" for why, count in reasons.items())
    weights_part = f"{weights} from weights" if result.weights_note is None else f"weights {result.weights_note}"
    return (f"{data} tensors from data, {weights_part}, {len(missing)} without a range"
            + (f" ({detail})" if detail else ""))


def _refuse_quantized(model) -> None:
    """A Q/DQ (QAT) model has its scales: calibrating it would make a cache TensorRT never uses."""
    from trtq.qdq_model import refuse_quantized

    refuse_quantized(model, "it would ignore a calibration cache",
                     "measure it with trtq evaluate, or calibrate its FP32 model instead")
