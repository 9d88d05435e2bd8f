"""``trtq build``: an ONNX model -> a TensorRT engine, on TensorRT 10.x or 11.x, saying what it did."""

from __future__ import annotations

import json
from pathlib import Path

import click

from trtq.commands.options.common import MethodChoice
from trtq.commands.options.data import batches_from_options, data_given, data_options
from trtq.ranges import DEFAULT_PERCENTILE
from trtq.trt.cuda import BACKENDS
from trtq.trt.plan import BUILD_CALIBRATORS, QUANTIZE, SOURCES


def _echo(message: str) -> None:
    click.echo(message, err=True)


@click.command("build")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "engine_path", type=click.Path(dir_okay=False),
              help="Engine file to write [default: MODEL's name with .engine, in the current directory]. "
                   "A manifest ENGINE.json is written beside it.")
@data_options
@click.option("--fp16", is_flag=True, help="Allow FP16 (10.x: builder flag; 11.x: an FP16 copy of the model).")
@click.option("--int8", is_flag=True,
              help="INT8: trtq quantize on the CPU (needs --data), then 10.x: its ranges as a cache + its kept layers "
                   "as precision constraints; 11.x: its Q/DQ model. With --calibrator: as that calibrator says.")
@click.option("--best", is_flag=True, help="Both --int8 and --fp16.")
@click.option("--calibrator", type=MethodChoice(BUILD_CALIBRATORS), default=None,
              help="INT8 range method. auto: trtq quantize (auto ranges, layers kept in float where the target needs "
                   "it, verified). entropy2/entropy/minmax/legacy are TensorRT 10.x calibrators; percentile and mse "
                   "(and all of them on TensorRT 11) are computed by trtq, unverified. [default: auto via trtq "
                   "quantize; entropy2 with --ranges or --calibration-source tensorrt]")
@click.option("--max-drop", type=click.FloatRange(min=0), metavar="PCT",
              help="trtq quantize's target: at most PCT points of top-1 agreement lost against FP32 (a "
                   "[batch, classes] output) [default: 1 where that measure exists].")
@click.option("--min-sqnr", type=float, metavar="DB",
              help="trtq quantize's target: worst-output SQNR of at least DB [default: 30 without a drop measure].")
@click.option("--calibration-source", type=click.Choice(SOURCES), default=None,
              help="Who computes INT8 ranges: TensorRT's calibrator fed with --data (10.x default), or trtq on "
                   "the CPU (11.x, percentile, mse), served to 10.x as a cache and to 11.x as Q/DQ.")
@click.option("--cache", "--calibration-cache", "--calib", "cache_path", type=click.Path(dir_okay=False),
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
def build(model_path, engine_path, fp16, int8, best, calibrator, max_drop, min_sqnr, calibration_source, cache_path,
          ranges_path, percentile, regression_cutoff, keep_precision, precision_constraints, workspace, timing_cache,
          min_shapes, opt_shapes, max_shapes, cuda_backend, as_json, verbose, **data_kwargs):
    """Build a TensorRT engine from MODEL, on TensorRT 10.x or 11.x.

    INT8 without --calibrator runs `trtq quantize` on --data first (on the CPU): auto range choice,
    layers kept in float where the accuracy target needs it, the final Q/DQ model verified; a missed
    target exits 3 and builds nothing. TensorRT 10.x then gets its ranges as a calibration cache and
    its kept layers as precision constraints; TensorRT 11.x (no calibrators, no precision flags)
    builds its Q/DQ model strongly typed. With --calibrator, TensorRT 10.x calibrates through that
    calibrator fed with --data (preprocessed as `trtq calibrate` does), and on 11.x trtq computes
    that method's ranges as Q/DQ. The first line of output says which path ran and why;
    ENGINE.json records versions, GPU, precisions, data, cache, what quantize chose, shapes and
    build time.

    \b
    Examples:
      trtq build calib_data/mnist-8.onnx --int8 --data calib_data/mnist --cache mnist.cache
      trtq build calib_data/mnist-8.onnx --int8 --calibrator entropy2 --data calib_data/mnist
      trtq build model.onnx --best --data images/ --preset imagenet --opt-shapes input:8x3x224x224
      trtq build model.onnx --int8 --calibrator percentile --percentile 99.9 --data calib.npz
      trtq build model.onnx --fp16 --keep-precision /head/Softmax=fp32 -o model-fp16.engine
    """
    from trtq.jobs.build import build
    from trtq.model import load_model
    from trtq.shapes import parse_shape_spec
    from trtq.trt.build import BuildOptions, parse_keep_precision, parse_size

    fp16, int8 = fp16 or best, int8 or best
    if calibrator is None:  # stored ranges and TensorRT's own calibrator keep their former default
        calibrator = "entropy2" if ranges_path or calibration_source == "tensorrt" else QUANTIZE
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
        min_sqnr=min_sqnr,
        max_drop=max_drop,
    )
    model = load_model(model_path)
    batches = None
    if data_given(data_kwargs):
        batches = batches_from_options(model, warn=lambda text: _echo(f"trtq: warning: {text}"), **data_kwargs)
    result = build(model, options, batches, echo=_echo)
    if as_json:
        click.echo(json.dumps(result.manifest, indent=2))
