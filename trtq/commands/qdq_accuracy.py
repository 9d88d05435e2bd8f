"""``trtq evaluate`` and ``trtq sensitivity`` for an already-quantized (Q/DQ, QAT) model: the click side of
:mod:`trtq.accuracy.existing_qdq`. The commands hand over here when their MODEL has Q/DQ of its own."""

from __future__ import annotations

import click

from trtq.errors import TrtqError


def _check(model, cache_path, ranges_path, exclude, html_path, plot_dir, plot_tensor) -> None:
    given = [flag for flag, value in (("--cache", cache_path), ("--ranges", ranges_path), ("--exclude", exclude))
             if value]
    if given:
        raise TrtqError(f"{model.name} is already quantized: it is measured with its own scales, so "
                        f"{', '.join(given)} would be ignored; leave {'them' if len(given) > 1 else 'it'} out "
                        "(--reference FP32.onnx compares it with its FP32 model)")
    if html_path or plot_dir or plot_tensor:
        raise click.UsageError("--html/--plot-dir/--plot-tensor are not made for already-quantized models yet; "
                               "use --json")


def _setup(model, reference_path, labels_path, labels_from_folders, data_kwargs):
    from trtq.accuracy.existing_qdq import reference_for
    from trtq.accuracy.labels import read_labels
    from trtq.commands.options.data import batches_from_options
    from trtq.messages import warn
    from trtq.model import load_model

    labels = read_labels(labels_path, labels_from_folders)
    reference = reference_for(model, load_model(reference_path) if reference_path else None)
    if reference.note:
        warn(reference.note)
    batches = batches_from_options(model, warn=warn, **data_kwargs)
    return reference, labels, batches


def evaluate_quantized(model, *, reference_path, cache_path, ranges_path, exclude, labels_path, labels_from_folders,
                       logits, json_path, html_path, plot_dir, plot_tensor, quiet, data_kwargs) -> None:
    from trtq.accuracy.evaluate import format_accuracy
    from trtq.accuracy.existing_qdq import evaluate_existing
    from trtq.commands.options.accuracy import check_outputs, files_read
    from trtq.export import format_agreement_table
    from trtq.fileio import write_json

    _check(model, cache_path, ranges_path, exclude, html_path, plot_dir, plot_tensor)
    check_outputs(json_path, None, None, reads=files_read(model.path, data_kwargs, reference_path=reference_path,
                                                          labels_path=labels_path))
    reference, labels, batches = _setup(model, reference_path, labels_path, labels_from_folders, data_kwargs)
    if not quiet:
        click.echo(f"evaluating {model.name} (already quantized: {model.quantization.describe()}) against "
                   f"{reference.description} on {batches.description}", err=True)
    comparison = evaluate_existing(model, batches, reference, labels=labels, logits=logits, source=batches)
    outcome = comparison.outcomes["int8"]
    if json_path:
        document = {"model": model.name, "quantization": model.quantization.document(),
                    "reference": reference.description, "samples": comparison.samples,
                    "outputs": {r.name: r.document() for r in outcome.rows}, "data": batches.provenance()}
        if comparison.reference_accuracy is not None:
            document["accuracy"] = {"fp32": comparison.reference_accuracy, "int8": outcome.accuracy}
            document["accuracy_output"] = comparison.logits
        write_json(json_path, document)
    if quiet:
        return
    click.echo(f"{reference.description} vs the model's own Q/DQ on {comparison.samples} samples:")
    click.echo(format_agreement_table(outcome.rows, mean_abs=True))
    for line in format_accuracy(comparison):
        click.echo(line)
    if json_path:
        click.echo(f"results written to {json_path}")


def sensitivity_quantized(model, *, reference_path, cache_path, ranges_path, exclude, labels_path,
                          labels_from_folders, logits, target_sqnr, max_drop, keep_out, json_path, html_path,
                          plot_dir, plot_tensor, quiet, data_kwargs) -> None:
    from trtq.accuracy.existing_qdq import drop_file_text, format_pair_ranking, rank_pairs
    from trtq.accuracy.holdout import take_samples
    from trtq.commands.options.accuracy import check_outputs, files_read
    from trtq.fileio import atomic_write, write_json

    _check(model, cache_path, ranges_path, exclude, html_path, plot_dir, plot_tensor)
    check_outputs(json_path, None, None, keep_out,
                  reads=files_read(model.path, data_kwargs, reference_path=reference_path, labels_path=labels_path))
    reference, labels, batches = _setup(model, reference_path, labels_path, labels_from_folders, data_kwargs)
    if not quiet:
        click.echo(f"sensitivity of {model.name}'s {len(model.quantization.pairs)} Q/DQ pairs against "
                   f"{reference.description} on {batches.description}", err=True)
    held = take_samples(batches, data_kwargs.get("max_samples"))
    result = rank_pairs(model, held, reference, labels=labels, logits=logits, target_sqnr=target_sqnr,
                        max_drop=max_drop, source=batches)
    if keep_out and result.to_drop is not None:
        atomic_write(keep_out, drop_file_text(result, model.name))
    if json_path:
        write_json(json_path, {"model": model.name, **result.document()})
    if not quiet:
        click.echo(f"Q/DQ pairs ranked by the error each causes (each removed alone) on {result.samples} samples:")
        click.echo(format_pair_ranking(result))
        if result.target is not None:
            if result.to_drop is None:
                click.echo(f"target {result.target} not met even with every pair removed")
            else:
                shown = ", ".join(p.name for p in result.to_drop) or "none"
                click.echo(f"remove {len(result.to_drop)} pair(s) for {result.target}: {shown}")
                if keep_out:
                    click.echo(f"drop list written to {keep_out} (trtq export MODEL --remove-qdq @{keep_out})")
    if result.target is not None and result.to_drop is None:
        raise TrtqError(f"the target {result.target} is not met even with every Q/DQ pair removed")
