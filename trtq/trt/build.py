"""``build_engine``: ONNX model + options (+ data) -> a TensorRT engine and its ``ENGINE.json`` manifest.

Order of work, chosen so that the user learns about a problem before the long part:
outputs and options checked (INT8 by ``trtq quantize``, the default, needs data) -> shapes resolved ->
TensorRT imported and probed -> path planned (and printed) -> stored ranges read (``--ranges``, a reusable
``--cache``) or the CUDA binding for TensorRT's calibrator found -> builder created (fails here without a
GPU) -> trtq quantizes or calibrates if it must (``--cache`` written at once; a missed quantize target
stops here, exit 3) -> the model TensorRT parses prepared (11.x: quantize's Q/DQ model, or the Q/DQ/FP16
export from trtq's ranges; 10.x: quantize's kept layers become precision constraints) ->
network parsed and configured -> build with progress -> engine and manifest written atomically, the
manifest last.
"""

from __future__ import annotations

import datetime
import itertools
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

from trtq import __version__
from trtq.cache import HEADER_ALGORITHM, cache_from_amax, parse_cache, write_cache
from trtq.errors import TrtqError
from trtq.fileio import atomic_path, check_output_path, check_outputs, json_text, read_input_bytes, sha256_file
from trtq.model import Model, resolve_shape
from trtq.ranges import DEFAULT_PERCENTILE
from trtq.shapes import Shape
from trtq.trt import TensorRTInfo, import_tensorrt, probe
from trtq.trt.plan import (
    IMPLICIT,
    QUANTIZE,
    STRONGLY_TYPED,
    TRTQ_ONLY_CALIBRATORS,
    BuildPlan,
    plan_build,
    quantize_label,
)

Echo = Callable[[str], None]
MANIFEST_FORMAT = "trtq-engine-1"
DEFAULT_REGRESSION_CUTOFF = 0.5  # Polygraphy's default for the legacy calibrator


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


@dataclass
class BuildOptions:
    """Everything ``trtq build`` takes besides the model and the data."""

    engine_path: Path
    fp16: bool = False
    int8: bool = False
    calibrator: str = "entropy2"  # "auto": trtq quantize (the CLI's default for --int8/--best)
    calibration_source: str | None = None  # None: trtq with ranges_path, else TensorRT's calibrator where it exists
    cache_path: Path | None = None
    ranges_path: Path | None = None
    percentile: float = DEFAULT_PERCENTILE
    regression_cutoff: float = DEFAULT_REGRESSION_CUTOFF
    keep_precision: dict[str, str] = field(default_factory=dict)
    precision_constraints: str = "prefer"
    workspace_bytes: int | None = None
    timing_cache: Path | None = None
    min_shapes: dict[str, Shape] = field(default_factory=dict)
    opt_shapes: dict[str, Shape] = field(default_factory=dict)
    max_shapes: dict[str, Shape] = field(default_factory=dict)
    cuda_backend: str | None = None
    verbose: bool = False
    min_sqnr: float | None = None  # trtq quantize's target (calibrator "auto"); None: quantize's default target
    max_drop: float | None = None
    quantized: dict | None = None  # a recorded quantize result (quantize_record): build from ranges_path, no rerun

    @property
    def manifest_path(self) -> Path:
        """``model.engine`` -> ``model.engine.json``."""
        return Path(f"{self.engine_path}.json")


@dataclass
class BuildResult:
    engine_path: Path
    manifest_path: Path
    manifest: dict
    plan: BuildPlan


# -- option parsing that the CLI and the API share ------------------------------------------------------


def parse_keep_precision(values: Iterable[str], *, fp16: bool = True) -> dict[str, str]:
    """``NAME=fp16|fp32`` or bare ``NAME`` entries, repeatable; ``@FILE`` holds one per line (``#``
    comments allowed), so the keep file of ``trtq sensitivity`` works here as with ``export --exclude``.
    A bare name keeps the layer out of INT8 in the best float precision the build has: fp16 when it
    allows FP16 (``fp16``: --fp16/--best), else fp32 (an INT8-only build has no FP16 to keep it in)."""
    from trtq.export.ranges import read_name_list

    rules: dict[str, str] = {}
    for entry in read_name_list(values, what="keep-precision list"):
        name, sep, precision = entry.rpartition("=")
        if not sep:
            name, precision = entry, "fp16" if fp16 else "fp32"
        precision = precision.strip().lower()
        if not name.strip() or precision not in ("fp16", "fp32"):
            raise TrtqError(f"--keep-precision '{entry}': expected LAYER_OR_TENSOR=fp16 or =fp32 "
                            "(or a bare LAYER_OR_TENSOR)")
        rules[name.strip()] = precision
    return rules


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 10**6, "mib": 1 << 20,
          "g": 1 << 30, "gb": 10**9, "gib": 1 << 30}


def parse_size(text: str) -> int:
    """``1024MiB``, ``2G``, ``512m``, ``1073741824`` -> bytes (K/M/G alone are binary, as in trtexec)."""
    value = str(text).strip().lower()
    number = value.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = value[len(number):].strip()
    try:
        amount = float(number)
    except ValueError as exc:
        raise TrtqError(f"bad size '{text}': expected a number with an optional unit, e.g. 1024MiB or 2G") from exc
    if unit not in _UNITS or amount <= 0:
        raise TrtqError(f"bad size '{text}': expected a positive number with B, KiB, MiB, GiB (or K, M, G)")
    return int(amount * _UNITS[unit])


# -- shapes --------------------------------------------------------------------------------------------


@dataclass
class ResolvedShapes:
    """Optimization profile (only when some input is dynamic) and the shapes calibration runs at."""

    profile: dict[str, dict[str, Shape]]  # name -> {"min", "opt", "max"}; empty for static models
    calibration: dict[str, Shape]  # every input at its opt shape


def resolve_shapes(model: Model, min_shapes: Mapping[str, Shape], opt_shapes: Mapping[str, Shape],
                   max_shapes: Mapping[str, Shape], data_shapes: Mapping[str, Shape] | None = None) -> ResolvedShapes:
    """Check ``--min/--opt/--max-shapes`` against the model and fill the gaps.

    A dynamic input without ``--opt-shapes`` takes the shape of the calibration data when there is
    data; min and max default to opt (a profile of one shape).
    """
    known = {s.name for s in model.inputs}
    for option, shapes in (("--min-shapes", min_shapes), ("--opt-shapes", opt_shapes), ("--max-shapes", max_shapes)):
        for name in shapes:
            if name not in known:
                raise TrtqError(f"{option} names '{name}', which is not an input of the model "
                                f"(its inputs: {', '.join(sorted(known))})")
    for name in set(min_shapes) | set(max_shapes):
        if name not in opt_shapes:
            raise TrtqError(f"--min-shapes/--max-shapes give input '{name}' but --opt-shapes does not")
    profile: dict[str, dict[str, Shape]] = {}
    calibration: dict[str, Shape] = {}
    for spec in model.inputs:
        opt = opt_shapes.get(spec.name)
        if opt is None and not spec.is_static:
            opt = (data_shapes or {}).get(spec.name)
        if opt is None and not spec.is_static:
            example = "x".join(str(d) if d else "1" for d in spec.dims)
            raise TrtqError(
                f"input {spec.describe()} has dynamic dimensions: give --opt-shapes {spec.name}:{example} "
                "(and --min-shapes/--max-shapes for a range), or calibration data"
            )
        opt = _fit(spec, opt, "--opt-shapes") if opt is not None else tuple(spec.dims)
        low = _fit(spec, min_shapes.get(spec.name, opt), "--min-shapes")
        high = _fit(spec, max_shapes.get(spec.name, opt), "--max-shapes")
        if not (len(low) == len(opt) == len(high)) or not all(a <= b <= c for a, b, c in zip(low, opt, high,
                                                                                              strict=True)):
            raise TrtqError(f"input '{spec.name}': need min <= opt <= max in every dimension, got "
                            f"min {list(low)}, opt {list(opt)}, max {list(high)}")
        calibration[spec.name] = opt
        if not spec.is_static:
            profile[spec.name] = {"min": low, "opt": opt, "max": high}
    return ResolvedShapes(profile, calibration)


def _fit(spec, shape: Shape, option: str) -> Shape:
    """``shape`` checked against the model's fixed dimensions, errors naming ``option``."""
    try:
        return tuple(resolve_shape(spec, tuple(shape), None))
    except TrtqError as exc:
        raise TrtqError(str(exc).replace("--shapes", option)) from exc


def _first_batch_shapes(batches) -> tuple[dict[str, Shape] | None, Iterable | None]:
    """Shapes of the data's first batch, without losing that batch."""
    if batches is None:
        return None, None
    shapes = getattr(batches, "input_shapes", None)
    if shapes:
        return {k: tuple(v) for k, v in shapes.items()}, batches
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        return None, iter(())
    return {k: tuple(np.shape(v)) for k, v in first.items()}, itertools.chain([first], iterator)


# -- ranges computed by trtq (10.x served cache, 11.x Q/DQ) ------------------------------------------------


@dataclass
class TrtqRanges:
    amax: dict[str, float]
    origin: str  # what the manifest and messages call them
    computed: bool  # True when calibrated now from the data (then --cache is written)
    quantize: dict | None = None  # the trtq quantize record (quantize_record) when quantize chose them


NEEDS_QUANTIZE_DATA = ("INT8 without --calibrator runs trtq quantize on the CPU, which needs --data; to build from "
                       "stored ranges instead give --calibrator entropy2 with a TensorRT --cache, or --ranges FILE")
NEEDS_RANGES = ("INT8 needs ranges: give --data (trtq calibrates on it), --ranges RANGES.json "
                "(from trtq calibrate --json) or an existing --cache")


# (model, options, data, TensorRT's version, echo) -> (trtq quantize's ranges, its result): handed in by the job layer
Quantizer = Callable[[Model, "BuildOptions", Iterable, TensorRTInfo, Echo], tuple[TrtqRanges, object]]


def stored_ranges(options: BuildOptions, have_data: bool, echo: Echo) -> TrtqRanges | None:
    """trtq's ranges from ``--ranges`` or a reusable ``--cache``; ``None`` when they are to be computed
    from the data (an error when there is none). It reads one file, so it runs before TensorRT does anything."""
    from trtq.calibrate import read_ranges

    if options.ranges_path is not None:
        return TrtqRanges(read_ranges(options.ranges_path), f"ranges file {options.ranges_path}", False)
    path = options.cache_path
    if path is not None and path.is_file():
        data = read_input_bytes(path, "calibration cache")
        try:
            cache = parse_cache(data, source=str(path))
        except (TrtqError, UnicodeDecodeError):
            cache = None
        wanted = HEADER_ALGORITHM[options.calibrator]
        if cache is not None and cache.algorithm == wanted:
            origin = f"calibration cache {path} ({cache.header})"
            if options.calibrator not in TRTQ_ONLY_CALIBRATORS:
                return TrtqRanges(cache.amax(), origin, False)
            # percentile and mse ranges are cached under entropy2's header: the file cannot say which
            # method (or which percentile) made them, so it is reused only when nothing else is possible
            ambiguous = (f"{options.calibrator} ranges are cached under entropy2's header ({cache.header}), "
                         "which does not say which method wrote them")
            if not have_data:
                echo(f"trtq: warning: using {path} as {options.calibrator} ranges, unverified: {ambiguous}")
                return TrtqRanges(cache.amax(), origin, False)
            echo(f"trtq: warning: not reusing {path}: {ambiguous}; calibrating again "
                 f"(--ranges {path} builds from the file as it is)")
        elif not have_data:
            header = cache.header if cache is not None else "not a calibration cache"
            raise TrtqError(f"calibration cache {path} ({header}) does not hold {wanted} ranges "
                            "and no --data was given to compute them")
        else:
            echo(f"trtq: warning: ignoring {path}: not a {wanted} cache; calibrating again")
    if not have_data:
        raise TrtqError(NEEDS_RANGES)
    return None


def calibrate_ranges(model: Model, options: BuildOptions, batches: Iterable, info: TensorRTInfo,
                     echo: Echo) -> TrtqRanges:
    """trtq's ranges computed from the data now, and written to ``--cache`` at once (kept for the next
    build even if this one fails, as TensorRT's own calibrator does)."""
    from trtq.calibrate import calibrate

    echo(f"trtq: calibrating with trtq's {options.calibrator} on the CPU ...")
    result = calibrate(model, batches, options.calibrator, percentile=options.percentile)
    if options.cache_path is not None:
        write_cache(options.cache_path,
                    cache_from_amax(result.all_amax(), options.calibrator, trt_version=info.patch_version))
    return TrtqRanges(result.all_amax(), f"trtq {options.calibrator} on {result.samples} samples", True)


def describe_quantize(record: dict) -> str:
    """One line: the ranges chosen, the layers kept and the verified score against the target."""
    final = record["verification"]
    keep = record["keep"]
    sqnr = final["sqnr_db"]
    score = "SQNR inf" if sqnr is None else f"SQNR {sqnr:.2f} dB"
    if final["drop_points"] is not None:
        score += f", drop {final['drop_points']:.2f} points"
    return (f"{record['method']} ranges{' (chosen by auto)' if record['chosen_by_auto'] else ''}; "
            f"{len(keep)} of {record['layers']} quantized layers kept in float"
            f"{' (' + ', '.join(keep) + ')' if keep else ''}; final Q/DQ model {score} "
            f"({'meets' if final['meets_target'] else 'misses'} {record['target']['text']}) "
            f"on {record['evaluation']['data']}")


def with_kept_layers(rules: Mapping[str, str], kept: Iterable[str], *, fp16: bool) -> dict[str, str]:
    """quantize's kept layers as ``--keep-precision`` rules, read as bare names are in ``@FILE``: fp16 when
    the build allows FP16, else fp32; the user's own rules win where they name the same layer."""
    merged = {name: "fp16" if fp16 else "fp32" for name in kept}
    merged.update(rules)
    return merged


def _check_quantize_options(options: BuildOptions, have_data: bool) -> None:
    """The quantize path's inputs, checked before TensorRT is imported."""
    if options.int8 and options.calibrator == QUANTIZE:
        if options.quantized is not None and options.ranges_path is None:
            raise TrtqError("a recorded trtq quantize result needs the ranges it chose (ranges_path)")
        if options.quantized is None and options.ranges_path is not None:
            raise TrtqError("--ranges gives stored ranges, but --calibrator auto (the default) computes them with "
                            "trtq quantize: give --calibrator with --ranges, or drop --ranges")
        if options.quantized is None and not have_data:
            raise TrtqError(NEEDS_QUANTIZE_DATA)
    elif options.min_sqnr is not None or options.max_drop is not None:
        raise TrtqError("--min-sqnr/--max-drop set the accuracy target of trtq quantize, which runs for --int8/--best "
                        "without --calibrator (or with --calibrator auto)")


# -- the build -----------------------------------------------------------------------------------------


def build_engine(model: Model, options: BuildOptions, batches: Iterable[Mapping[str, np.ndarray]] | None = None, *,
                 trt: ModuleType | None = None, echo: Echo = _stderr,
                 quantizer: Quantizer | None = None) -> BuildResult:
    """Build ``model`` into ``options.engine_path`` (+ ``.json`` manifest). See the module docstring.
    ``quantizer``: what computes ranges and a keep set by ``trtq quantize`` where the plan needs it (INT8 without a
    calibrator): the caller's (:func:`trtq.jobs.build.build` hands it the accuracy loop); this layer never calls it
    itself."""
    engine_path, manifest_path = Path(options.engine_path), options.manifest_path
    check_outputs({"-o": engine_path, "the manifest": manifest_path},
                  {"MODEL": model.path, "--cache": options.cache_path, "--ranges": options.ranges_path,
                   "--timing-cache": options.timing_cache})
    for out in (options.cache_path, options.timing_cache):  # read and written: a cache grows in place
        if out is not None:
            check_output_path(out)
    if options.precision_constraints not in ("prefer", "obey"):
        raise TrtqError("--precision-constraints must be prefer or obey")
    if any(v == "fp16" for v in options.keep_precision.values()) and not options.fp16:
        raise TrtqError("--keep-precision NAME=fp16 needs --fp16 or --best")
    if not model.quantization.explicit:  # a Q/DQ model is built as it is: no quantize, no data needed
        _check_quantize_options(options, batches is not None)
    source = options.calibration_source
    if options.ranges_path is not None:  # a ranges file is trtq's ranges, on any TensorRT
        if source == "tensorrt":
            raise TrtqError("--ranges gives trtq's ranges; it cannot be combined with --calibration-source tensorrt")
        source = "trtq"
    data_shapes, batches = _first_batch_shapes(batches)
    shapes = resolve_shapes(model, options.min_shapes, options.opt_shapes, options.max_shapes, data_shapes)

    trt = trt or import_tensorrt("building a TensorRT engine")
    info = probe(trt)
    if model.quantization.explicit:  # a Q/DQ (QAT) model builds as it is, with its own scales
        from trtq.trt.prequantized import plan_prequantized

        plan = plan_prequantized(info, model.quantization, model.name, options)
    else:
        plan = plan_build(info, fp16=options.fp16, int8=options.int8, calibrator=options.calibrator,
                          source=source, keep_precision=bool(options.keep_precision))
    echo(f"trtq: {plan.message}")
    for note in plan.notes:
        echo(f"trtq: note: {note}")
    backend = None
    ranges = None
    if plan.source == "trtq" and not (plan.quantize and options.quantized is None):
        ranges = stored_ranges(options, batches is not None, echo)  # None: calibrated below, once there is a builder
        if plan.quantize:  # a quantize result recorded earlier (trtq run): its ranges and kept layers
            ranges = TrtqRanges(ranges.amax, f"{quantize_label(len(options.quantized['keep']))}, recorded: "
                                f"{ranges.origin}", False, options.quantized)
    if plan.source == "tensorrt":
        from trtq.trt.cuda import get_backend

        _check_calibration_inputs(info, plan, options, batches, echo)
        backend = get_backend(options.cuda_backend)  # missing binding: one-line error before any work

    from trtq.trt import engine

    logger = engine.logger_class(trt)(show="VERBOSE" if options.verbose else "WARNING", echo=echo)
    builder = engine.create_builder(trt, logger)
    with tempfile.TemporaryDirectory(prefix="trtq-build-") as workdir:
        quantized = None  # the QuantizeResult, when quantize runs here
        if plan.source == "trtq" and ranges is None:
            if plan.quantize:
                if quantizer is None:
                    raise TrtqError("internal: an INT8 build by trtq quantize needs its quantizer "
                                    "(build through trtq.jobs.build.build)")
                ranges, quantized = quantizer(model, options, batches, info, echo)
            else:
                ranges = calibrate_ranges(model, options, batches, info, echo)
        keep_rules = dict(options.keep_precision)
        if ranges is not None and ranges.quantize is not None:
            plan = plan.quantized(len(ranges.quantize["keep"]))
            keep_rules = with_kept_layers(options.keep_precision, ranges.quantize["keep"], fp16=plan.fp16)
        qdq = None  # 11.x: quantize's own (verified) Q/DQ model, unless the user keeps more layers in float
        if quantized is not None and not options.keep_precision:
            qdq = quantized.export.model
        elif quantized is not None and plan.path != IMPLICIT:
            echo("trtq: note: --keep-precision keeps more layers in float than quantize measured: the Q/DQ model "
                 "is exported again from quantize's ranges with both sets kept")
        if quantized is not None and quantized.float_model is not None:
            # quantize adopted a bias correction: its ranges and keep set were verified on the corrected model
            echo("trtq: note: quantize corrected the INT8 layers' biases (bias correction): the corrected model is "
                 "built")
            model, variant = Model(quantized.float_model, model.path), "bias-corrected"
        else:
            variant = None
        onnx_path, derived = _model_to_parse(model, plan, options, ranges, Path(workdir), echo, keep_rules, qdq,
                                             variant)
        network = engine.create_network(trt, builder)
        parser = engine.parse_onnx(trt, network, logger, onnx_path)
        network_inputs = engine.network_inputs(network)
        config = builder.create_builder_config()
        engine.set_workspace(trt, config, options.workspace_bytes)
        engine.set_detailed_profiling(trt, config)
        timing_cache = engine.attach_timing_cache(trt, config, options.timing_cache)
        if shapes.profile or any(d < 0 for dims in network_inputs.values() for d in dims):
            profile = engine.ProfileShapes(
                min={k: v["min"] for k, v in shapes.profile.items()},
                opt={k: v["opt"] for k, v in shapes.profile.items()},
                max={k: v["max"] for k, v in shapes.profile.items()},
            )
            engine.check_profile_against_network(network_inputs, profile)
            engine.add_optimization_profile(trt, builder, config, profile)
        calibrator, kept = _configure_implicit(trt, info, plan, options, builder, network, config, backend,
                                               batches, ranges, shapes, echo, keep_rules)
        monitor = _progress(trt, info, config)
        started = time.perf_counter()
        try:
            serialized = _run_build(trt, engine, builder, network, config, logger, monitor)
            if calibrator is not None:
                calibrator.raise_failure()
        finally:
            if calibrator is not None:
                calibrator.close()
            monitor.finish()
        seconds = time.perf_counter() - started
        del parser
        engine.save_timing_cache(timing_cache, options.timing_cache)
        manifest = _manifest(model, options, info, plan, shapes, derived, ranges, calibrator, kept, batches,
                             backend, seconds, serialized, engine_path, monitor, keep_rules)
        _write_outputs(engine_path, manifest_path, serialized, manifest)
    echo(f"trtq: wrote {engine_path} ({len(serialized) / 1e6:.1f} MB, {seconds:.1f} s) and {manifest_path}")
    return BuildResult(engine_path, manifest_path, manifest, plan)


def _check_calibration_inputs(info: TensorRTInfo, plan: BuildPlan, options: BuildOptions, batches,
                              echo: Echo) -> None:
    """Say whether TensorRT will calibrate or reuse the cache; calibrating with no data and no usable
    cache would build a meaningless engine, so that is an error."""
    from trtq.trt.calibrators import cache_status, expected_header

    header = expected_header(info.patch_version, plan.calibrator)
    data, problem = (None, None) if options.cache_path is None else cache_status(options.cache_path, header)
    if data is not None:
        echo(f"trtq: TensorRT will reuse the calibration cache {options.cache_path} ({header})")
    elif batches is None:
        why = f" ({problem})" if problem else ""
        raise TrtqError(f"INT8 calibration needs data: give --data, or a --cache holding {header}{why}")


def _model_to_parse(model: Model, plan: BuildPlan, options: BuildOptions, ranges: TrtqRanges | None,
                    workdir: Path, echo: Echo, keep_rules: Mapping[str, str] | None = None,
                    qdq=None, variant: str | None = None) -> tuple[Path, dict | None]:
    """The ONNX file TensorRT parses, and what was derived from the user's model (``None``: parsed as is).
    ``keep_rules`` (default: ``--keep-precision``) may hold quantize's kept layers; ``qdq`` is a ready Q/DQ
    model (quantize's) used as the INT8 model instead of exporting one from the ranges; ``variant`` names what
    ``model`` is when quantize derived it from the user's (``bias-corrected``)."""
    if plan.path == STRONGLY_TYPED:
        from trtq.trt.explicit import strongly_typed_model

        typed = strongly_typed_model(model, int8=plan.int8, fp16=plan.fp16, amax=ranges.amax if ranges else None,
                                     keep_precision=options.keep_precision if keep_rules is None else keep_rules,
                                     ranges_source=ranges.origin if ranges else "trtq's ranges", qdq=qdq)
        for note in typed.notes:
            echo(f"trtq: note: {note}")
        for warning in typed.warnings:
            echo(f"trtq: warning: {warning}")
        if typed.variant != "original":
            stem = Path(model.path).stem if model.path is not None else "model"
            path = typed.save(workdir / f"{stem}.{typed.variant.replace('+', '-')}.onnx")
            return path, {"variant": typed.variant, "sha256": sha256_file(path), "notes": typed.notes}
    if variant is not None:  # a model quantize derived from the user's (its corrected biases)
        stem = Path(model.path).stem if model.path is not None else "model"
        path = _save_proto(model.proto, workdir / f"{stem}.{variant}.onnx")
        return path, {"variant": variant, "sha256": sha256_file(path), "notes": []}
    if model.path is not None:
        return Path(model.path), None
    return _save_proto(model.proto, workdir / "model.onnx"), None


def _save_proto(proto, path: Path) -> Path:
    from trtq.export import save_model

    save_model(proto, path)
    return path


def served_cache(ranges: TrtqRanges, info: TensorRTInfo) -> bytes:
    """10.x: trtq's ranges as the EntropyCalibration2 cache TensorRT reads instead of calibrating."""
    return cache_from_amax(ranges.amax, "entropy2", trt_version=info.patch_version).to_bytes()


def _configure_implicit(trt, info: TensorRTInfo, plan: BuildPlan, options: BuildOptions, builder, network, config,
                        backend, batches, ranges: TrtqRanges | None, shapes: ResolvedShapes, echo: Echo,
                        keep_rules: Mapping[str, str] | None = None):
    """10.x: precision flags, precision constraints (``keep_rules``, default ``--keep-precision``) and the
    calibrator. Returns (calibrator, kept layers)."""
    from trtq.trt.prequantized import EXPLICIT_QDQ, configure_explicit

    if plan.path == EXPLICIT_QDQ:  # the model's own Q/DQ: 10.x's INT8 flag, no calibrator
        configure_explicit(trt, info, plan, config)
        return None, {}
    if plan.path != IMPLICIT:
        return None, {}
    from trtq.trt import implicit, range_walk
    from trtq.trt.calibrators import make_calibrator

    implicit.set_precision_flags(trt, config, fp16=plan.fp16, int8=plan.int8)
    kept = implicit.apply_keep_precision(trt, network, config,
                                         options.keep_precision if keep_rules is None else keep_rules,
                                         options.precision_constraints)
    if not plan.int8:
        return None, kept

    def warn(text: str) -> None:
        echo(f"trtq: warning: {text}")

    if plan.source == "trtq":
        calibrator = make_calibrator(trt, "entropy2", trt_version=info.patch_version,
                                     served_cache=served_cache(ranges, info), warn=warn)
        calibrator.network_ranges = range_walk.set_network_ranges(trt, network, ranges.amax, echo=echo).as_dict()
    else:
        calibrator = make_calibrator(
            trt, plan.calibrator, trt_version=info.patch_version, batches=batches, backend=backend,
            input_shapes=shapes.calibration, cache_path=options.cache_path,
            quantile=options.percentile / 100.0, regression_cutoff=options.regression_cutoff, warn=warn,
        )
    try:
        implicit.attach_calibrator(trt, builder, config, calibrator, shapes.calibration if shapes.profile else {})
    except BaseException:
        calibrator.close()
        raise
    return calibrator, kept


def _progress(trt, info: TensorRTInfo, config):
    from trtq.trt.progress import Spinner, progress_monitor_class

    if info.has_progress_monitor:
        from trtq.trt import engine

        monitor = progress_monitor_class(trt)()
        engine.attach_progress_monitor(trt, config, monitor)
        return monitor
    return Spinner()


def _run_build(trt, engine, builder, network, config, logger, monitor) -> bytes:
    from trtq.trt.progress import Spinner, cancel_on_interrupt

    with cancel_on_interrupt(monitor):
        if isinstance(monitor, Spinner):
            with monitor:
                serialized = builder.build_serialized_network(network, config)
        else:
            serialized = builder.build_serialized_network(network, config)
    if monitor.cancelled:
        raise KeyboardInterrupt
    if serialized is None:
        detail = logger.last_error() or "see the TensorRT messages above"
        raise TrtqError(f"TensorRT failed to build the engine: {detail}")
    return bytes(memoryview(serialized))


def _device(backend, options: BuildOptions) -> dict | None:
    """GPU name and compute capability through the CUDA binding, when one is installed."""
    from trtq.trt.cuda import get_backend

    try:
        backend = backend or get_backend(options.cuda_backend)
        info = backend.device_info()
        info["cuda_backend"] = backend.name
        return info
    except TrtqError as exc:
        return {"unavailable": str(exc)}


def _manifest(model: Model, options: BuildOptions, info: TensorRTInfo, plan: BuildPlan, shapes: ResolvedShapes,
              derived: dict | None, ranges: TrtqRanges | None, calibrator, kept: dict, batches, backend,
              seconds: float, serialized: bytes, engine_path: Path, monitor,
              keep_rules: Mapping[str, str] | None = None) -> dict:
    import hashlib

    device = _device(backend, options)
    calibration = None
    if plan.int8:
        calibration = {"calibrator": plan.calibrator, "source": plan.source}
        if plan.source == "tensorrt" and calibrator is not None:
            calibration.update({
                "cache_header": calibrator.expected_header,
                "cache": str(options.cache_path) if options.cache_path else None,
                "cache_used": calibrator.cache_used, "cache_written": calibrator.cache_written,
                "batches": calibrator.batches_served, "samples": calibrator.samples_served,
            })
            if plan.calibrator == "legacy":
                calibration.update({"quantile": calibrator.quantile, "regression_cutoff": calibrator.regression_cutoff})
        elif ranges is not None:
            calibration.update({"ranges": ranges.origin, "tensors": len(ranges.amax)})
            if calibrator is not None:  # 10.x: served to TensorRT as an entropy2 cache
                calibration["served_header"] = calibrator.expected_header
                calibration["network_ranges"] = getattr(calibrator, "network_ranges", None)
            if ranges.quantize is not None:  # what quantize chose: method, kept layers, target, verified score
                calibration["quantize"] = ranges.quantize
        if options.cache_path is not None and options.cache_path.is_file():
            calibration["cache_sha256"] = sha256_file(options.cache_path)
        if plan.calibrator == "percentile":
            calibration["percentile"] = options.percentile
    data = None
    if batches is not None and (ranges is not None and ranges.computed
                                or calibrator is not None and calibrator.batches_served):
        data = {"description": getattr(batches, "description", None)}
        if hasattr(batches, "provenance"):
            data["provenance"] = batches.provenance()
    return {
        "format": MANIFEST_FORMAT,
        "engine": {"path": engine_path.name, "bytes": len(serialized),
                   "sha256": hashlib.sha256(serialized).hexdigest()},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 3),
        "versions": {"trtq": __version__, "tensorrt": info.version,
                     "cuda_runtime": (device or {}).get("cuda_runtime_version"),
                     "cuda_driver": (device or {}).get("driver_version")},
        "gpu": device,
        "path": plan.as_dict(),
        "precisions": plan.precisions,
        "calibration": calibration,
        "keep_precision": _keep_manifest(options, ranges, keep_rules, kept),
        "onnx": {"path": str(model.path) if model.path else None, "sha256": model.sha256, "built_from": derived},
        "data": data,
        "shapes": {"profile": {k: {w: list(s) for w, s in v.items()} for k, v in shapes.profile.items()},
                   "calibration": {k: list(v) for k, v in shapes.calibration.items()} if plan.int8 else None},
        "workspace_bytes": options.workspace_bytes,
        "timing_cache": str(options.timing_cache) if options.timing_cache else None,
        "build_phases": list(getattr(monitor, "history", [])),
    }


def _keep_manifest(options: BuildOptions, ranges: TrtqRanges | None, keep_rules: Mapping[str, str] | None,
                   kept: dict) -> dict | None:
    rules = options.keep_precision if keep_rules is None else dict(keep_rules)
    if not rules:
        return None
    entry = {"rules": rules, "constraints": options.precision_constraints, "layers": kept}
    if ranges is not None and ranges.quantize is not None:
        entry["from_quantize"] = list(ranges.quantize["keep"])
    return entry


def _write_outputs(engine_path: Path, manifest_path: Path, serialized: bytes, manifest: dict) -> None:
    """Both files are written in full to temporary files first; then the old manifest goes, the engine
    is renamed into place and the manifest last. Whatever stops it, a manifest on disk describes the
    engine beside it (at worst a new engine has no manifest yet), and neither is ever half-written."""
    text = json_text(manifest)
    with atomic_path(manifest_path) as manifest_tmp:
        manifest_tmp.write_text(text)
        with atomic_path(engine_path) as engine_tmp:
            engine_tmp.write_bytes(serialized)
            manifest_path.unlink(missing_ok=True)
