"""The pipeline's steps. Each one reads its inputs (the model, the data, earlier steps' files in the
output folder) and writes its artifacts into a private staging folder; the runner moves them into
place and records them only when the step has finished.

Each step calls trtq's Python API, never the CLI: statistics (:func:`trtq.calibrate.collect_statistics`,
one pass shared by every calibrator), calibrate (:func:`trtq.calibrate.ranges_from_stats`), export
(:func:`trtq.trt.explicit.strongly_typed_model`: the exact ONNX that TensorRT 11 builds), evaluate
(:func:`trtq.accuracy.evaluate.compare_candidates`: one FP32 run per batch for every variant), build
(:func:`trtq.trt.build.build_engine`, fed trtq's cache so that the engine uses the ranges that were
evaluated), bench (:func:`trtq.report.gpu_bench.run_gpu_bench`) and report
(:func:`trtq.report.analysis.build_report`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtq.fileio import atomic_write, json_text, write_json
from trtq.pipeline.manifest import fingerprint
from trtq.pipeline.schema import DataConfig, ModelConfig, Variant

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Layout:
    """Where each artifact of a model/variant lives, relative to the output folder (POSIX paths)."""

    model: ModelConfig

    @property
    def stem(self) -> str:
        return self.model.path.stem

    def statistics(self) -> str:
        return f"{self.model.name}/statistics.npz"

    def variant_dir(self, variant: Variant) -> str:
        return f"{self.model.name}/{variant.name}"

    def cache(self, variant: Variant) -> str:
        return f"{self.variant_dir(variant)}/{self.stem}.cache"

    def ranges(self, variant: Variant) -> str:
        return f"{self.variant_dir(variant)}/{self.stem}.ranges.json"

    def onnx(self, variant: Variant) -> str:
        return f"{self.variant_dir(variant)}/{self.stem}.{variant.name}.onnx"

    def evaluation(self, variant: Variant) -> str:
        return f"{self.variant_dir(variant)}/evaluate.json"

    def engine(self, variant: Variant) -> str:
        return f"{self.variant_dir(variant)}/{self.stem}.engine"

    def engine_manifest(self, variant: Variant) -> str:
        return f"{self.engine(variant)}.json"

    def bench(self, variant: Variant) -> str:
        return f"{self.variant_dir(variant)}/bench.json"

    def profile(self, variant: Variant) -> str:
        return f"{self.variant_dir(variant)}/profile.json"

    def report(self, variant: Variant, suffix: str) -> str:
        return f"{self.variant_dir(variant)}/report.{suffix}"


def staged(staging: Path, rel: str) -> Path:
    """The staging path of artifact ``rel`` (flat: one step's files never share a name)."""
    return staging / Path(rel).name


def keep_rules(model: ModelConfig, variant: Variant) -> tuple[dict[str, str], list[str]]:
    """``keep_precision`` for one variant. Without FP16 in the variant, ``NAME=fp16`` (keep out of INT8,
    run in FP16) cannot be honoured as written; the layer is kept in FP32 instead, with a note."""
    rules = dict(model.keep_precision)
    notes = []
    if not variant.fp16:
        demoted = [name for name, precision in rules.items() if precision == "fp16"]
        for name in demoted:
            rules[name] = "fp32"
        if demoted:
            notes.append(f"keep_precision {', '.join(demoted)}=fp16: the {variant.name} variant has no FP16, "
                         "so kept in FP32 instead")
    return rules, notes


def ranges_digest(amax: dict[str, float]) -> str:
    """Fingerprint of the ranges themselves (not of the cache file, whose header names a TensorRT version)."""
    return fingerprint(amax)


def open_data(model, data: DataConfig, shapes: dict[str, tuple[int, ...]], warn: Echo):
    """The batches of ``data``, through the adapter the commands use (``trtq.data.options``)."""
    from trtq.data.options import open_batches_from_options

    return open_batches_from_options(model, data.open_options(shapes), warn=warn)


def cache_amax(path: Path) -> dict[str, float]:
    from trtq.cache import read_cache

    return read_cache(path).amax()


# -- CPU steps ---------------------------------------------------------------------------------------------


def run_statistics(model, config: ModelConfig, staging: Path, layout: Layout, warn: Echo) -> tuple[dict, dict]:
    """One pass over the calibration data: per-tensor |x| statistics that every calibrator derives from."""
    from trtq.calibrate import collect_statistics

    # The source warns about each file it skips; collect_statistics records its provenance in the statistics.
    stats = collect_statistics(model, open_data(model, config.data, config.shapes, warn=warn))
    rel = layout.statistics()
    stats.save(staged(staging, rel))
    result = {"samples": stats.samples, "batches": stats.batches, "tensors": len(stats), "data": stats.meta["data"]}
    return {rel: staged(staging, rel)}, result


def run_calibrate(stats_path: Path, variant: Variant, trt_version: str, staging: Path, layout: Layout,
                  warn: Echo) -> tuple[dict, dict]:
    """Ranges of one calibrator from the saved statistics: a TensorRT cache and the ranges JSON."""
    from trtq.cache import write_cache
    from trtq.calibrate import ranges_from_stats
    from trtq.ranges import DEFAULT_PERCENTILE
    from trtq.stats import StatsCollector

    stats = StatsCollector.load(stats_path)
    result = ranges_from_stats(stats, variant.calibrator, variant.percentile or DEFAULT_PERCENTILE)
    problems = result.problems()
    for line in problems:
        warn(line)
    cache_rel, ranges_rel = layout.cache(variant), layout.ranges(variant)
    cache = result.cache(trt_version)
    write_cache(staged(staging, cache_rel), cache)
    result.write_json(staged(staging, ranges_rel), trt_version)
    amax = cache.amax()  # the ranges as the cache holds them (float32 scales): what export and build read back
    summary = {"ranges_sha256": ranges_digest(amax), "tensors": len(amax), "samples": result.samples,
               "cache_header": cache.header, "problems": problems}
    return {cache_rel: staged(staging, cache_rel), ranges_rel: staged(staging, ranges_rel)}, summary


def run_export(model, config: ModelConfig, variant: Variant, cache_path: Path | None, staging: Path,
               layout: Layout, warn: Echo) -> tuple[dict, dict]:
    """The ONNX model TensorRT 11 builds for the variant: Q/DQ (int8), FP16 (fp16) or both (best)."""
    from trtq.trt.explicit import strongly_typed_model

    rules, notes = keep_rules(config, variant)
    amax = cache_amax(cache_path) if variant.int8 else None
    typed = strongly_typed_model(model, int8=variant.int8, fp16=variant.fp16, amax=amax, keep_precision=rules,
                                 ranges_source=f"calibration cache {cache_path.name}" if cache_path else "ranges")
    for line in typed.warnings:
        warn(line)
    rel = layout.onnx(variant)
    typed.save(staged(staging, rel))
    return {rel: staged(staging, rel)}, {"variant": typed.variant, "notes": notes + typed.notes,
                                         "warnings": typed.warnings}


def run_evaluations(model, config: ModelConfig, exported: dict[Variant, Path], warn: Echo) -> dict[Variant, dict]:
    """Every variant in ``exported`` against FP32 on the evaluation data, in one pass over it: the
    evaluation document of each (its ``metrics`` are the step's result)."""
    from trtq.accuracy.evaluate import compare_candidates
    from trtq.accuracy.labels import read_labels
    from trtq.export.compare import fake_quant_session, session_runner

    names = list(model.output_names)
    reference = session_runner(fake_quant_session(model.proto), names)
    candidates = {variant.name: session_runner(fake_quant_session(path), names) for variant, path in exported.items()}
    batches = open_data(model, config.eval, config.shapes, warn=warn)
    labels = read_labels(config.eval.labels) if config.eval.labels else None
    comparison = compare_candidates(reference, candidates, names, batches, labels=labels, source=batches,
                                    logits=config.eval.logits)
    provenance = batches.provenance()
    documents = {}
    for variant in exported:
        outcome = comparison.outcomes[variant.name]
        document: dict[str, Any] = {"variant": variant.name, "precision": variant.precision,
                                    "samples": comparison.samples, "data": provenance,
                                    "outputs": {r.name: r.document() for r in outcome.rows}}
        metrics = {"samples": comparison.samples,
                   "sqnr_db": outcome.sqnr_db if math.isfinite(outcome.sqnr_db) else None,
                   "cosine": outcome.cosine, "top1_agreement": outcome.top1_agreement,
                   "logits": comparison.logits}
        if comparison.reference_accuracy is not None:
            document["accuracy"] = {"output": comparison.logits, "labels": str(config.eval.labels),
                                    "fp32": comparison.reference_accuracy, variant.precision: outcome.accuracy}
            metrics.update({"top1_fp32": comparison.reference_accuracy["top1"], "top1": outcome.accuracy["top1"],
                            "top5_fp32": comparison.reference_accuracy["top5"], "top5": outcome.accuracy["top5"],
                            "top1_drop_points": comparison.drop_points(variant.name)})
        document["metrics"] = metrics
        documents[variant] = document
    return documents


# -- GPU steps -------------------------------------------------------------------------------------------


def run_build(model, config: ModelConfig, variant: Variant, cache_path: Path | None, staging: Path,
              layout: Layout, echo: Echo, warn: Echo) -> tuple[dict, dict]:
    """The engine, built from the original model with trtq's cache as the ranges (TensorRT 10: served to
    its calibrator; TensorRT 11: turned into Q/DQ), so the engine quantizes exactly as evaluated."""
    from trtq.trt.build import BuildOptions, build_engine

    rules, _notes = keep_rules(config, variant)
    engine_rel = layout.engine(variant)
    build = config.build
    extra: dict[str, Any] = {}  # only what the config sets: the rest keeps BuildOptions' defaults
    if variant.int8:  # trtq's ranges: the cache this variant was calibrated and evaluated with
        extra.update(calibrator=variant.calibrator, calibration_source="trtq", ranges_path=cache_path)
        if variant.percentile is not None:
            extra["percentile"] = variant.percentile
    if "precision_constraints" in build:
        extra["precision_constraints"] = build["precision_constraints"]
    if "timing_cache" in build:
        extra["timing_cache"] = Path(build["timing_cache"])
    options = BuildOptions(
        engine_path=staged(staging, engine_rel),
        fp16=variant.fp16,
        int8=variant.int8,
        keep_precision=rules,
        workspace_bytes=build.get("workspace"),
        min_shapes=config.profile.get("min", {}),
        opt_shapes=config.profile.get("opt", {}),
        max_shapes=config.profile.get("max", {}),
        **extra,
    )
    batches = None
    if any(not spec.is_static for spec in model.inputs) and "opt" not in config.profile:
        batches = open_data(model, config.data, config.shapes, warn=warn)  # the profile takes the data's shapes
    result = build_engine(model, options, batches, echo=echo)
    manifest_rel = layout.engine_manifest(variant)
    summary = {"engine_sha256": result.manifest["engine"]["sha256"], "bytes": result.manifest["engine"]["bytes"],
               "build_seconds": result.manifest.get("build_seconds"), "path": result.plan.as_dict()}
    return {engine_rel: result.engine_path, manifest_rel: result.manifest_path}, summary


def run_bench(engine_path: Path, config: ModelConfig, variant: Variant, trt_version: str, staging: Path,
              layout: Layout, echo: Echo) -> tuple[dict, dict]:
    """Latency measured like trtexec (its defaults for this TensorRT), plus a per-layer profile."""
    from trtq.report.gpu_bench import run_gpu_bench
    from trtq.report.trtexec_cmd import BenchSettings, trtexec_defaults

    options = config.bench  # checked and typed by the config; what it leaves out keeps BenchSettings' default
    default_graph, default_transfers = trtexec_defaults(int(trt_version.split(".")[0]))
    settings = BenchSettings(
        **{key: options[key] for key in ("warmup_ms", "iterations", "duration_s") if key in options},
        cuda_graph=options.get("cuda_graph", default_graph),
        data_transfers=options.get("transfers", default_transfers),
        shapes=dict(options.get("shapes", {})),
    )
    measured = run_gpu_bench(engine_path, settings, profile_iterations=options.get("profile_iterations", 50),
                             echo=echo)
    stats = measured.stats.to_dict()
    bench_rel, profile_rel = layout.bench(variant), layout.profile(variant)
    write_json(staged(staging, bench_rel), {"trtq": stats, "settings": settings.describe(), "device": measured.device,
                                            "tensorrt": measured.trt_version, "notes": measured.notes}, indent=1)
    files = {bench_rel: staged(staging, bench_rel)}
    if measured.profile is not None:
        atomic_write(staged(staging, profile_rel), measured.profile.to_export_json())
        files[profile_rel] = staged(staging, profile_rel)
    latency = stats.get("latency", {})
    summary = {"latency_ms": latency, "gpu_compute_ms": stats.get("gpu_compute", {}),
               "throughput_qps": stats.get("throughput_qps"), "settings": settings.describe()}
    return files, summary


def write_report_files(layers, profile, label: str, variant: Variant, amax_names: set[str] | None,
                       ranges_source: str, staging: Path, layout: Layout) -> tuple[dict, dict]:
    """report.json / report.md / report.html of one engine's layers (and per-layer times, when measured)."""
    from trtq.report.analysis import build_report
    from trtq.report.html import render_html
    from trtq.report.render_text import render_report_markdown

    report = build_report(layers, profile, label=label, expect_int8=variant.int8, ranges=amax_names,
                          ranges_source=ranges_source)
    files = {}
    for suffix, text in (("json", json_text(report.to_dict(), indent=1)),
                         ("md", render_report_markdown(report)), ("html", render_html(report))):
        rel = layout.report(variant, suffix)
        atomic_write(staged(staging, rel), text)
        files[rel] = staged(staging, rel)
    summary = {"layers": len(report.rows), "total_ms": report.total_ms, "precision": report.precision_summary(),
               "lints": len(report.lints)}
    return files, summary


def run_report(engine_path: Path, profile_path: Path | None, variant: Variant, cache_path: Path | None,
               label: str, staging: Path, layout: Layout) -> tuple[dict, dict]:
    """Per-layer precision (from the engine inspector), times (from the bench step's profile) and lints."""
    from trtq.report.engine import layer_info_from_engine
    from trtq.report.profile import load_profile

    layers = layer_info_from_engine(engine_path)
    profile = load_profile(profile_path) if profile_path is not None else None
    amax_names = set(cache_amax(cache_path)) if cache_path is not None else None
    return write_report_files(layers, profile, label, variant, amax_names,
                              cache_path.name if cache_path else "the ranges", staging, layout)
