"""``trtq export``: explicit-precision ONNX models for TensorRT 11 (Q/DQ INT8 or FP16), on any machine."""

from __future__ import annotations

import click

from trtq.commands.options.common import quiet_option
from trtq.commands.options.data import data_given, data_options
from trtq.messages import note


@click.command("export")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--qdq", "mode", flag_value="qdq",
              help="Write an INT8 Q/DQ model: activation scales from --cache or --ranges, per-channel weight "
                   "scales from the weights.")
@click.option("--fp16", "mode", flag_value="fp16",
              help="Write an FP16 model with float32 inputs/outputs; overflow-prone ops stay float32.")
@click.option("--cache", "--calibration-cache", "cache_path", type=click.Path(dir_okay=False),
              help="TensorRT calibration cache with the activation ranges (--qdq).")
@click.option("--ranges", "ranges_path", type=click.Path(dir_okay=False),
              help="Ranges JSON from trtq calibrate --json (--qdq).")
@click.option("--exclude", multiple=True, metavar="NODE|@FILE",
              help="Keep this node (ONNX node name or its output tensor name) in higher precision: no Q/DQ "
                   "with --qdq, float32 with --fp16. Repeatable; @FILE reads one name per line (# comments).")
@click.option("--only-unquantized", is_flag=True,
              help="MODEL has Q/DQ of its own (QAT): add Q/DQ only to the layers it left in float (ranges from "
                   "its FP32 model's cache); its existing pairs are never touched (--qdq).")
@click.option("--remove-qdq", multiple=True, metavar="PAIR|@FILE",
              help="Remove this existing Q/DQ pair of MODEL (its QuantizeLinear node or the tensor it quantizes; "
                   "'*' for all), keeping the layer in float: DQ(Q(x)) becomes x, stored weights are dequantized. "
                   "Repeatable; @FILE reads one per line (trtq sensitivity's drop list).")
@click.option("--reference", "reference_path", type=click.Path(dir_okay=False), metavar="FP32.onnx",
              help="With --remove-qdq: the FP32 model MODEL came from; a removed weight stored as integers "
                   "(DequantizeLinear only) gets its FP32 value back instead of its dequantized one.")
@click.option("-o", "--output", "output_path", required=True, type=click.Path(dir_okay=False),
              help="Where to write the exported .onnx model.")
@data_options
@quiet_option()
def export(model_path, mode, cache_path, ranges_path, exclude, only_unquantized, remove_qdq, reference_path,
           output_path, quiet, **data_kwargs):
    """Write MODEL as an explicit-precision ONNX model for TensorRT 11 (strongly typed).

    No GPU and no TensorRT are needed. With --data (or --data-loader-script), the exported
    model and MODEL are run in onnxruntime on that data and a table per output reports cosine
    similarity, SQNR and top-1 agreement.

    \b
    Examples:
      trtq export mnist-8.onnx --qdq --cache mnist-8.cache -o mnist-8.qdq.onnx --data calib_data/mnist
      trtq export model.onnx --qdq --ranges ranges.json --exclude @keep_fp.txt -o model.qdq.onnx
      trtq export model.onnx --fp16 -o model.fp16.onnx
      trtq export qat.onnx --remove-qdq @qat.drop.txt -o qat.trimmed.onnx
      trtq export qat.onnx --qdq --only-unquantized --cache fp32-model.cache -o qat.full.onnx
    """
    from trtq.data.options import data_input_files
    from trtq.export import (
        compare_outputs,
        describe_ranges,
        export_fp16,
        export_qdq,
        format_agreement_table,
        load_amax,
        name_list_files,
        read_name_list,
        save_model,
    )
    from trtq.fileio import check_outputs, refuse_engine_suffix
    from trtq.messages import warn
    from trtq.model import load_model

    if remove_qdq and (mode or only_unquantized):
        raise click.UsageError("--remove-qdq writes MODEL without those pairs; export that model with --qdq/--fp16 "
                               "in a second step")
    if reference_path and not remove_qdq:
        raise click.UsageError("--reference belongs to --remove-qdq")
    if only_unquantized and mode != "qdq":
        raise click.UsageError("--only-unquantized belongs to --qdq")
    if mode is None and not remove_qdq:
        raise click.UsageError("choose the export: --qdq (INT8 Q/DQ) or --fp16 "
                               "(or --remove-qdq PAIR|@FILE of a Q/DQ model)")
    if mode == "qdq" and (cache_path is None) == (ranges_path is None):
        raise click.UsageError("--qdq needs exactly one of --cache CACHE or --ranges RANGES.json")
    if mode == "fp16" and (cache_path or ranges_path):
        raise click.UsageError("--fp16 takes no ranges; --cache/--ranges belong to --qdq")
    refuse_engine_suffix(output_path, "-o", "fp16" if mode == "fp16" else "int8")
    output = check_outputs({"-o": output_path},
                           {"MODEL": model_path, "--cache": cache_path, "--ranges": ranges_path,
                            "--reference": reference_path, **data_input_files(data_kwargs),
                            **name_list_files(exclude), **name_list_files(remove_qdq, "--remove-qdq")})["-o"]
    names = read_name_list(exclude)

    model = load_model(model_path)
    if remove_qdq:
        from trtq.export.existing import export_removed

        reference = load_model(reference_path) if reference_path else None
        result = export_removed(model, read_name_list(remove_qdq, what="--remove-qdq list"), output, reference)
        if result.unrestored:
            warn(result.unrestored_message(reference_path))
        if not quiet:
            click.echo(f"wrote {output}: {result.removed} Q/DQ pairs removed (those layers run in float), "
                       f"{result.kept} kept" + (f"; {result.restored} FP32 weights from {reference.name}"
                                                if reference else ""))
        return
    if mode == "qdq":
        from trtq.export.existing import check_only_unquantized

        check_only_unquantized(model, only_unquantized)
    amax = load_amax(cache=cache_path, ranges=ranges_path) if mode == "qdq" else None
    compare = data_given(data_kwargs)
    batches = None
    if compare:
        from trtq.commands.options.data import batches_from_options

        batches = batches_from_options(model, warn=warn, **data_kwargs)

    if mode == "qdq":
        from dataclasses import replace

        from trtq.export.int8_weights import store_int8_weights

        result = export_qdq(model, amax, exclude=names, ranges_source=describe_ranges(cache_path, ranges_path),
                            only_unquantized=only_unquantized)
        stored = store_int8_weights(result.model)
        result = replace(result, model=stored.model)
        pairs = len(result.plan.points)
        weights = result.weight_tensors
        per_channel = sum(1 for _, axis in weights if axis is not None)
        summary = (f"{pairs - len(weights)} activation Q/DQ pairs, {len(weights)} weights ({per_channel} per-channel, "
                   f"{stored.weights} stored as int8 behind DequantizeLinear) on {len(result.plan.quantized_nodes)} "
                   f"nodes, opset {result.opset_after}")
    else:
        result = export_fp16(model, keep_fp32=names)
        summary = (f"{len(result.fp16_nodes)} nodes in float16, {len(result.fp32_nodes)} kept in float32, "
                   f"{result.casts_added} casts; inputs and outputs stay float32")
    for line in result.warnings:
        warn(line)
    if not quiet:
        for line in result.notes:
            note(line)
    save_model(result.model, output)
    if not quiet:
        click.echo(f"wrote {output}: {summary}")
    if mode == "qdq" and not quiet:  # lint-clean by construction; existing pairs (--only-unquantized) may lint
        from trtq.model import Model
        from trtq.report.qdq_lints import lint_qdq_model

        for lint in lint_qdq_model(result.model, Model(result.model, output).quantization):
            note(f"Q/DQ lint [{lint.kind}] {lint.message} (all: trtq report {output})")

    if batches is not None:
        rows = compare_outputs(model.proto, result.model, batches)
        if not quiet:
            click.echo(f"{'INT8 Q/DQ' if mode == 'qdq' else 'FP16'} vs float32 on {batches.description}:")
            click.echo(format_agreement_table(rows))
