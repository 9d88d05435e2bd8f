"""The GPU steps: build, bench and report (they need TensorRT and a GPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trtq.fileio import atomic_write, json_text, write_json
from trtq.pipeline.fingerprints import engine_options
from trtq.pipeline.layout import Layout
from trtq.pipeline.schema import ModelConfig, Variant
from trtq.pipeline.steps.base import Echo, Produced, RunContext, Step, cache_amax, keep_rules, open_data, staged


def run_build(model, config: ModelConfig, variant: Variant, cache_path: Path | None, staging: Path,
              layout: Layout, echo: Echo, warn: Echo, quantized: dict | None = None) -> tuple[dict, dict]:
    """The engine, built from the original model with trtq's cache as the ranges (TensorRT 10: served to
    its calibrator; TensorRT 11: turned into Q/DQ), so the engine quantizes exactly as evaluated;
    ``quantized`` (the quantize step's record) adds the layers it kept in float, as the export did."""
    from trtq.jobs.build import build as build_job
    from trtq.trt.build import BuildOptions

    rules, _notes = keep_rules(config, variant)
    engine_rel = layout.engine(variant)
    build = config.build
    extra: dict[str, Any] = {}  # only what the config sets: the rest keeps BuildOptions' defaults
    if variant.int8:  # trtq's ranges: the cache this variant was calibrated and evaluated with
        extra.update(calibrator=variant.calibrator, calibration_source="trtq", ranges_path=cache_path)
        if quantized is not None:
            extra["quantized"] = quantized
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
    result = build_job(model, options, batches, echo=echo)
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


class BuildStep(Step):
    kind = "build"
    gpu = True

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        m, v = self.model, self.variant
        rules, _ = keep_rules(m, v)
        dynamic = any(not spec.is_static for spec in ctx.model(m).inputs) and "opt" not in m.profile
        return {"model": self.source_sha(ctx), "precision": v.precision, "calibrator": v.calibrator,
                "ranges": self.ranges_sha(ctx), "keep_precision": rules,
                "kept_by_quantize": self.kept_by_quantize(ctx), "profile": m.profile,
                "build": engine_options(m), "data_shapes": ctx.fingerprints.data_inputs(m.data) if dynamic else None}

    def produce(self, ctx: RunContext, staging: Path) -> Produced:
        return run_build(self.source_model(ctx), self.model, self.variant, self.cache_path(ctx), staging,
                         self.layout, ctx.step_echo(self), ctx.step_warn(self), self.quantize_record(ctx))


def engine_sha(ctx: RunContext, step: Step) -> str:
    """The sha256 of the engine the variant's build step wrote."""
    return step.variant_result(ctx, "build")["engine_sha256"]


class BenchStep(Step):
    kind = "bench"
    gpu = True

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        return {"engine": engine_sha(ctx, self), "bench": self.model.bench}

    def produce(self, ctx: RunContext, staging: Path) -> Produced:
        return run_bench(ctx.out / self.layout.engine(self.variant), self.model, self.variant,
                         ctx.machine.versions["tensorrt"], staging, self.layout, ctx.step_echo(self))


class ReportStep(Step):
    kind = "report"
    gpu = True

    def profile_rel(self, ctx: RunContext) -> str | None:
        """The per-layer profile the variant's bench step wrote, if it wrote one."""
        bench = ctx.manifest.entry(f"{self.variant_id}/bench")
        rel = self.layout.profile(self.variant)
        return rel if bench and rel in bench["files"] else None

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        profile = self.profile_rel(ctx)
        return {"engine": engine_sha(ctx, self), "profile": self.recorded_sha(ctx, profile) if profile else None,
                "ranges": self.ranges_sha(ctx)}

    def produce(self, ctx: RunContext, staging: Path) -> Produced:
        profile = self.profile_rel(ctx)
        return run_report(ctx.out / self.layout.engine(self.variant), ctx.out / profile if profile else None,
                          self.variant, self.cache_path(ctx), self.variant_id, staging, self.layout)
