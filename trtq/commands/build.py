"""``trtq build``: an ONNX model -> a TensorRT engine, on TensorRT 10.x or 11.x, saying what it did."""

from __future__ import annotations

import json
from pathlib import Path

import click

from trtq.commands.options.data import batches_from_options, data_given, data_options
from trtq.ranges import DEFAULT_PERCENTILE
from trtq.trt.cuda import BACKENDS
from trtq.trt.plan import ALL_CALIBRATORS, SOURCES


def _echo(message: str) -> None:
    click.echo(message, err=True)


@click.command("build")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "engine_path", type=click.Path(dir_okay=False),
              help="Engine file to write [default: MODEL's name with .engine, in the current directory]. "
                   "A manifest ENGINE.json is written beside it.")
@data_options
@click.option("--fp16", is_flag=True, help="Allow FP16 (10.x: builder flag; 11.x: an FP16 copy of the model).")
@click.option("--int8", is_flag=True, help="INT8 (10.x: TensorRT calibrates; 11.x: Q/DQ from trtq's ranges).")
@click.option("--best", is_flag=True, help="Both --int8 and --fp16.")
@click.option("--calibrator", type=click.Choice(ALL_CALIBRATORS), default="entropy2", show_default=True,
              help="INT8 range method. entropy2/entropy/minmax/legacy are TensorRT 10.x calibrators; "
                   "percentile and mse (and all of them on TensorRT 11) are computed by trtq.")
@click.option("--calibration-source", type=click.Choice(SOURCES), default=None,
              help="Who computes INT8 ranges: TensorRT's calibrator fed with --data (10.x default), or trtq on "
                   "the CPU (11.x, percentile, mse), served to 10.x as a cache and to 11.x as Q/DQ.")
@click.option("--cache", "cache_path", type=click.Path(dir_okay=False),
              help="Calibration cache: reused when it holds this calibrator's ranges (when TensorRT calibrates: "
                   "written by this TensorRT version; percentile/mse, whose header is entropy2's: only without "
                   "--data), otherwise computed from --data and written here.")
@click.option("--ranges", "ranges_path", type=click.Path(dir_okay=False, exists=True),
              help="trtq ranges to use (a trtq calibrate --json file or a cache); implies trtq's ranges.")
@click.option("--percentile", type=float, default=DEFAULT_PERCENTILE, show_default=True,
              help="Percentile for --calibrator percentile; the legacy calibrator's quantile is this / 100.")
@click.option("--regression-cutoff", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="The legacy calibrator's regression cutoff (fraction of the maximum).")
@click.option("--keep-precision", multiple=True, metavar="NAME=fp16|fp32",
              help="Keep a layer (ONNX node name) or the layer producing a tensor in FP16 or FP32. Repeatable; "
                   "@FILE reads one entry per line (e.g. trtq sensitivity's --keep-out file). Wildcards * and ? "
                   "work. A bare NAME means fp16 with --fp16/--best, else fp32.")
@click.option("--precision-constraints", type=click.Choice(["prefer", "obey"]), default="prefer",
              show_default=True, help="TensorRT 10.x: how strictly --keep-precision is enforced.")
@click.option("--workspace", help="Workspace memory pool limit, e.g. 1024MiB or 4G [default: TensorRT's].")
@click.option("--timing-cache", type=click.Path(dir_okay=False),
              help="Timing cache file: read if present, updated after the build (faster rebuilds).")
@click.option("--min-shapes", metavar="SPEC", help="Optimization profile minimum shapes (trtexec syntax).")
@click.option("--opt-shapes", metavar="SPEC",
              help="Optimization profile opt shapes (trtexec syntax, e.g. input:8x3x224x224); "
                   "INT8 calibration runs at these shapes.")
@click.option("--max-shapes", metavar="SPEC", help="Optimization profile maximum shapes (trtexec syntax).")
@click.option("--cuda-backend", type=click.Choice(BACKENDS), default=None,
              help="CUDA binding for device buffers [default: the first installed of cuda-python, pycuda].")
@click.option("--json", "as_json", is_flag=True, help="Print the build manifest as JSON on stdout.")
@click.option("-v", "--verbose", is_flag=True, help="Show TensorRT's verbose log.")
def build(model_path, engine_path, fp16, int8, best, calibrator, calibration_source, cache_path, ranges_path,
          percentile, regression_cutoff, keep_precision, precision_constraints, workspace, timing_cache,
          min_shapes, opt_shapes, max_shapes, cuda_backend, as_json, verbose, **data_kwargs):
    """Build a TensorRT engine from MODEL, on TensorRT 10.x or 11.x.

    TensorRT 10.x calibrates INT8 itself through the calibrator you choose, fed with --data and
    preprocessed exactly as `trtq calibrate` does. TensorRT 11.x has no calibrators and no precision
    flags: trtq computes the ranges and builds the Q/DQ (and/or FP16) model instead. The first line
    of output says which path ran and why; ENGINE.json records versions, GPU, precisions, data,
    cache, shapes and build time.

    \b
    Examples:
      trtq build calib_data/mnist-8.onnx --int8 --data calib_data/mnist --cache mnist.cache
      trtq build model.onnx --best --data images/ --preset imagenet --opt-shapes input:8x3x224x224
      trtq build model.onnx --int8 --calibrator percentile --percentile 99.9 --data calib.npz
      trtq build model.onnx --fp16 --keep-precision /head/Softmax=fp32 -o model-fp16.engine
    """
    from trtq.model import load_model
    from trtq.shapes import parse_shape_spec
    from trtq.trt.build import BuildOptions, build_engine, parse_keep_precision, parse_size

    fp16, int8 = fp16 or best, int8 or best
    options = BuildOptions(
        engine_path=Path(engine_path or Path(model_path).with_suffix(".engine").name),
        fp16=fp16,
        int8=int8,
        calibrator=calibrator,
        calibration_source=calibration_source,
        cache_path=Path(cache_path) if cache_path else None,
        ranges_path=Path(ranges_path) if ranges_path else None,
        percentile=percentile,
        regression_cutoff=regression_cutoff,
        keep_precision=parse_keep_precision(keep_precision, fp16=fp16),
        precision_constraints=precision_constraints,
        workspace_bytes=parse_size(workspace) if workspace else None,
        timing_cache=Path(timing_cache) if timing_cache else None,
        min_shapes=parse_shape_spec(min_shapes),
        opt_shapes=parse_shape_spec(opt_shapes),
        max_shapes=parse_shape_spec(max_shapes),
        cuda_backend=cuda_backend,
        verbose=verbose,
    )
    model = load_model(model_path)
    batches = None
    if data_given(data_kwargs):
        batches = batches_from_options(model, warn=lambda text: _echo(f"trtq: warning: {text}"), **data_kwargs)
    result = build_engine(model, options, batches, echo=_echo)
    if as_json:
        click.echo(json.dumps(result.manifest, indent=2))
