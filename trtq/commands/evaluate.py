"""``trtq evaluate``: simulated INT8 (the Q/DQ export in onnxruntime) vs FP32 on held-out data."""

from __future__ import annotations

import functools

import click

from trtq.commands.options.accuracy import label_options, ranges_options, report_options
from trtq.commands.options.common import memory_budget_option
from trtq.commands.options.data import data_options
from trtq.commands.progress import run_with_progress


@click.command("evaluate")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@ranges_options
@data_options
@label_options
@click.option("--reference", "reference_path", type=click.Path(dir_okay=False),
              help="MODEL already has Q/DQ (QAT): its FP32 model, to measure against [default: MODEL with every "
                   "Q/DQ pair removed].")
@click.option("--ray", "ray_address", metavar="ADDRESS",
              help="Evaluate the data's batches as Ray tasks, cut into shards of whole batches (the same figures as "
                   "one machine): local (a Ray instance in this process, one worker per core), auto, HOST:PORT or "
                   "ray://HOST:PORT. The data must be on storage every node mounts at the same path. Needs "
                   "pip install 'trtq[ray]'.")
@memory_budget_option()
@report_options
def evaluate(model_path, cache_path, ranges_path, exclude, labels_path, labels_from_folders, logits, reference_path,
             ray_address, json_path, html_path, plot_dir, plot_tensor, quiet, memory_budget, **data_kwargs):
    """Measure how far simulated INT8 lands from FP32 on held-out data, before building anything.

    MODEL is quantized exactly as TensorRT quantizes it (symmetric int8, per-tensor activation
    ranges from --cache/--ranges, per-channel weights): the Q/DQ model of `trtq export --qdq`,
    run in onnxruntime next to the FP32 model. Per output: cosine similarity, SQNR, max and mean
    absolute error, top-1 agreement; with labels also top-1/top-5 accuracy of both and the drop.
    Use data the ranges were not calibrated on.

    \b
    Examples:
      trtq evaluate calib_data/mnist-8.onnx --cache mnist-8.cache --data calib_data/mnist \\
          --labels calib_data/mnist/labels.csv
      trtq evaluate model.onnx --ranges ranges.json --data val/ --preset imagenet --labels-from-folders \\
          --json eval.json --html eval.html
      trtq evaluate model.onnx --cache m.cache --data val.npz --exclude @keep.txt
      trtq evaluate qat.qdq.onnx --reference model.fp32.onnx --data val.npz --labels val-labels.npy
    """
    from trtq.accuracy.evaluate import evaluate_int8, format_accuracy
    from trtq.commands.options.accuracy import check_outputs, files_read, load_inputs
    from trtq.commands.options.data import batches_from_options
    from trtq.export import describe_ranges, format_agreement_table
    from trtq.fileio import atomic_write, write_json
    from trtq.messages import note, warn
    from trtq.model import load_model
    from trtq.segments import memory_budget_scope

    click.get_current_context().with_resource(memory_budget_scope(memory_budget))
    quantized = load_model(model_path)
    if quantized.quantization.explicit:  # a Q/DQ (QAT) model: measured on its own scales
        if ray_address is not None:
            raise click.UsageError("--ray does not evaluate Q/DQ (QAT) models yet; drop --ray")
        from trtq.commands.qdq_accuracy import evaluate_quantized

        return evaluate_quantized(quantized, reference_path=reference_path, cache_path=cache_path,
                                  ranges_path=ranges_path, exclude=exclude, labels_path=labels_path,
                                  labels_from_folders=labels_from_folders, logits=logits, json_path=json_path,
                                  html_path=html_path, plot_dir=plot_dir, plot_tensor=plot_tensor, quiet=quiet,
                                  data_kwargs=data_kwargs)
    if reference_path:
        raise click.UsageError("--reference is for a MODEL that is already quantized (Q/DQ); a float MODEL is "
                               "its own reference")
    figures_wanted = bool(html_path or plot_dir)
    if plot_tensor and not figures_wanted:
        raise click.UsageError("--plot-tensor draws into --html or --plot-dir; give one of them")
    check_outputs(json_path, html_path, plot_dir,
                  reads=files_read(model_path, data_kwargs, exclude, cache_path=cache_path, ranges_path=ranges_path,
                                   labels_path=labels_path))
    model, amax, names, labels = load_inputs(model_path, cache_path, ranges_path, exclude, labels_path,
                                             labels_from_folders)
    batches = batches_from_options(model, warn=warn, **data_kwargs)
    source = describe_ranges(cache_path, ranges_path)
    if not quiet:
        click.echo(f"evaluating {model.name} (INT8 from {source}) on {batches.description}", err=True)
    if ray_address is not None:
        from trtq.commands.progress import task_progress
        from trtq.distributed.evaluate import evaluate_int8_ray

        result = evaluate_int8_ray(model, amax, batches, ray_address, exclude=names, labels=labels, logits=logits,
                                   collect_stats=figures_wanted, ranges_source=source,
                                   progress=task_progress("evaluating on Ray", quiet))
    else:
        result = run_with_progress(functools.partial(evaluate_int8, model, amax, batches, exclude=names, labels=labels,
                                                     logits=logits, collect_stats=figures_wanted,
                                                     ranges_source=source),
                                   batches.total_samples, quiet, label="evaluating")
    for line in result.export.warnings:
        warn(line)
    if not quiet:
        for line in result.export.notes:
            note(line)

    figures = []
    if figures_wanted:
        from trtq.accuracy.report import histogram_figures

        figures = histogram_figures(result.stats, result.amax, list(plot_tensor) or None)
    # everything is computed: write the outputs, then print
    if json_path:
        document = {**result.document(), "model": model.name, "ranges": source,
                    "data": batches.provenance()}
        write_json(json_path, document)
    if html_path:
        from trtq.accuracy.report import evaluation_html

        atomic_write(html_path, evaluation_html(result, model=model.name, data=batches.description,
                                                ranges=source, figures=figures))
    if plot_dir:
        from trtq.accuracy.report import write_figures

        write_figures(figures, plot_dir)
    if quiet:
        return
    click.echo(f"FP32 vs simulated INT8 ({len(result.export.plan.quantized_nodes)} INT8 layers) "
               f"on {result.samples} samples:")
    click.echo(format_agreement_table(result.outcome.rows, mean_abs=True))
    for line in format_accuracy(result.comparison):
        click.echo(line)
    for what, path in (("results", json_path), ("report", html_path), ("charts", plot_dir)):
        if path:
            click.echo(f"{what} written to {path}")
