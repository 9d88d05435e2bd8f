"""``trtq sensitivity``: rank layers by how much INT8 hurts them, say why, and find the few to keep in FP16."""

from __future__ import annotations

import click

from trtq.accuracy.sensitivity import MODES
from trtq.commands.options.accuracy import label_options, ranges_options, report_options
from trtq.commands.options.common import memory_budget_option
from trtq.commands.options.data import data_options
from trtq.commands.progress import run_with_progress

DEFAULT_SAMPLES = 500
TOP_HISTOGRAMS = 8


@click.command("sensitivity")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@ranges_options
@data_options
@label_options
@click.option("--reference", "reference_path", type=click.Path(dir_okay=False),
              help="MODEL already has Q/DQ (QAT): its FP32 model, to measure against [default: MODEL with every "
                   "Q/DQ pair removed].")
@click.option("--mode", type=click.Choice(MODES), default="alone", show_default=True,
              help="alone: each layer the only one in INT8 (layers + 1 runs per batch); all-but-one: each layer the "
                   "only one kept in float (layers + 2 runs per batch).")
@click.option("--min-sqnr", "--target-sqnr", "target_sqnr", type=float, metavar="DB",
              help="Find a small set of layers to keep in higher precision so that the worst output's SQNR "
                   "reaches DB (greedy down the ranking, each step verified).")
@click.option("--max-drop", type=click.FloatRange(min=0), metavar="PCT",
              help="Same, for a top-1 drop of at most PCT points: accuracy with --labels, otherwise the share of "
                   "samples whose top-1 class changes.")
@click.option("--keep-out", type=click.Path(dir_okay=False),
              help="Write the layers to keep (one ONNX node name per line, # comments) for "
                   "`trtq export --qdq --exclude @FILE`. Needs --min-sqnr or --max-drop.")
@click.option("--ray", "ray_address", metavar="ADDRESS",
              help="Evaluate the ranking's layers as Ray tasks (one onnxruntime session per worker; same ranking "
                   "and keep set): local (a Ray instance in this process, one worker per core), auto, HOST:PORT "
                   "or ray://HOST:PORT. The evaluation batches travel through Ray's object store. Needs "
                   "pip install 'trtq[ray]'.")
@memory_budget_option()
@report_options
def sensitivity(model_path, cache_path, ranges_path, exclude, labels_path, labels_from_folders, logits,
                reference_path, mode, target_sqnr, max_drop, keep_out, ray_address, json_path, html_path, plot_dir,
                plot_tensor, quiet, memory_budget, **data_kwargs):
    """Rank MODEL's INT8 layers by the output error each one causes, with its cause.

    Every quantized layer (an ONNX node that gets Q/DQ) is switched between INT8 and float inside
    one onnxruntime session, on a small evaluation set (the first 500 samples unless --max-samples
    says otherwise, held in memory). The error type says whether the layer's INT8 inputs lose more
    to clipping (data beyond the range) or to rounding (8-bit steps too coarse where the data is),
    from their |x| statistics on the same data. With --min-sqnr or --max-drop, layers are taken
    from the top of the ranking into a keep-in-float set until a real evaluation meets the target.

    \b
    Examples:
      trtq sensitivity calib_data/mnist-8.onnx --cache mnist-8.cache --data calib_data/mnist
      trtq sensitivity model.onnx --ranges r.json --data val.npz --min-sqnr 30 --keep-out keep.txt
      trtq export model.onnx --qdq --ranges r.json --exclude @keep.txt -o model.qdq.onnx
      trtq sensitivity qat.qdq.onnx --data val.npz --labels y.npy --max-drop 0.5 --keep-out drop.txt
    """
    from trtq.accuracy.sensitivity import SensitivityAnalysis, format_ranking, format_steps, keep_file_text
    from trtq.commands.options.accuracy import check_outputs, files_read, load_inputs
    from trtq.commands.options.data import batches_from_options
    from trtq.export import describe_ranges
    from trtq.fileio import atomic_write, write_json
    from trtq.messages import note, warn

    if keep_out and target_sqnr is None and max_drop is None:
        raise click.UsageError("--keep-out needs a target: --min-sqnr DB and/or --max-drop PCT")
    if plot_tensor and not (html_path or plot_dir):
        raise click.UsageError("--plot-tensor draws into --html or --plot-dir; give one of them")
    from trtq.model import load_model
    from trtq.segments import memory_budget_scope

    click.get_current_context().with_resource(memory_budget_scope(memory_budget))
    quantized = load_model(model_path)
    if quantized.quantization.explicit:  # a Q/DQ (QAT) model: rank its own pairs
        if ray_address is not None:
            raise click.UsageError("--ray does not rank Q/DQ (QAT) models yet; drop --ray")
        from trtq.commands.qdq_accuracy import sensitivity_quantized

        if data_kwargs.get("max_samples") is None:
            data_kwargs["max_samples"] = DEFAULT_SAMPLES
        return sensitivity_quantized(quantized, reference_path=reference_path, cache_path=cache_path,
                                     ranges_path=ranges_path, exclude=exclude, labels_path=labels_path,
                                     labels_from_folders=labels_from_folders, logits=logits, target_sqnr=target_sqnr,
                                     max_drop=max_drop, keep_out=keep_out, json_path=json_path, html_path=html_path,
                                     plot_dir=plot_dir, plot_tensor=plot_tensor, quiet=quiet, data_kwargs=data_kwargs)
    if reference_path:
        raise click.UsageError("--reference is for a MODEL that is already quantized (Q/DQ)")
    check_outputs(json_path, html_path, plot_dir, keep_out,
                  reads=files_read(model_path, data_kwargs, exclude, cache_path=cache_path, ranges_path=ranges_path,
                                   labels_path=labels_path))
    model, amax, names, labels = load_inputs(model_path, cache_path, ranges_path, exclude, labels_path,
                                             labels_from_folders)
    if data_kwargs.get("max_samples") is None:
        data_kwargs["max_samples"] = DEFAULT_SAMPLES
    batches = batches_from_options(model, warn=warn, **data_kwargs)
    source = describe_ranges(cache_path, ranges_path)
    if not quiet:
        click.echo(f"sensitivity of {model.name} (INT8 from {source}) on {batches.description}", err=True)
    analysis = SensitivityAnalysis(model, amax, batches, exclude=names, labels=labels, logits=logits,
                                   ranges_source=source)
    for line in analysis.export.warnings:
        warn(line)
    if not quiet:
        for line in analysis.export.notes:
            note(line)
        runs = len(analysis.layers) + (1 if mode == "alone" else 2)
        click.echo(f"{len(analysis.layers)} INT8 layers, {runs} runs per batch", err=True)
    wants_keep_set = target_sqnr is not None or max_drop is not None
    if wants_keep_set:
        analysis.check_target(target_sqnr, max_drop)  # before the ranking's layers x batches runs
    close = None
    if ray_address is not None:
        from trtq.commands.progress import task_progress
        from trtq.distributed.sensitivity import use_ray

        close = use_ray(analysis, model, ray_address, exclude=names, ranges_source=source,
                        progress=task_progress("ranking on Ray", quiet))
    try:
        if close is not None:
            result = analysis.rank(mode)
        else:  # every layer's run of a batch, then the next batch: the bar counts samples ranked
            def rank(progress=None):
                analysis.progress = progress
                return analysis.rank(mode)

            result = run_with_progress(rank, analysis.held_samples, quiet, label="ranking")
    finally:
        if close is not None:  # the keep-set steps run here, one after the other
            close()
    if wants_keep_set:
        analysis.keep_set(result, target_sqnr=target_sqnr, max_drop=max_drop)

    figures = []
    if html_path or plot_dir:
        from trtq.accuracy.report import histogram_figures, ranking_figure

        tensors = list(plot_tensor) or list(dict.fromkeys(
            t for entry in result.ranking[:TOP_HISTOGRAMS] for t in entry.layer.tensors))
        figures = [ranking_figure(result), *histogram_figures(analysis.stats, analysis.amax, tensors)]
    # everything is computed: write the outputs, then print
    if keep_out:
        atomic_write(keep_out, keep_file_text(result, model.name))
    if json_path:
        document = {**result.document(), "model": model.name, "ranges": source,
                    "data": batches.provenance()}
        write_json(json_path, document)
    if html_path:
        from trtq.accuracy.report import sensitivity_html

        atomic_write(html_path, sensitivity_html(result, model=model.name, data=batches.description, ranges=source,
                                                 figures=figures))
    if plot_dir:
        from trtq.accuracy.report import write_figures

        write_figures(figures, plot_dir)
    if quiet:
        return
    what = "each layer alone in INT8" if mode == "alone" else "all layers INT8 but one"
    click.echo(f"INT8 sensitivity on {result.samples} samples ({what}); score = share of the output error:")
    click.echo(format_ranking(result))
    if result.keep is not None:
        click.echo("keeping layers in higher precision, verified step by step:")
        for line in format_steps(result):
            click.echo(line)
        kept = ", ".join(result.keep) if result.keep else "nothing (all INT8 meets the target)"
        click.echo(f"keep in higher precision: {kept}")
    for label, path in (("keep list", keep_out), ("results", json_path), ("report", html_path), ("charts", plot_dir)):
        if path:
            click.echo(f"{label} written to {path}")
