"""The CPU steps: statistics, calibrate, export and evaluate (no TensorRT, no GPU)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from trtq.fileio import write_json
from trtq.pipeline.environment import Machine
from trtq.pipeline.layout import Layout
from trtq.pipeline.manifest import fingerprint
from trtq.pipeline.schema import ModelConfig, Variant
from trtq.pipeline.steps.base import Echo, Produced, RunContext, Step, cache_amax, keep_rules, open_data, staged


def cache_trt_version(machine: Machine) -> str:
    """The TensorRT version a calibration cache header names: the installed one, else trtq's default."""
    from trtq.cache import DEFAULT_TRT_VERSION

    return machine.versions.get("tensorrt") or DEFAULT_TRT_VERSION


def ranges_digest(amax: dict[str, float]) -> str:
    """Fingerprint of the ranges themselves (not of the cache file, whose header names a TensorRT version)."""
    return fingerprint(amax)


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


class StatisticsStep(Step):
    """Per model, shared by every INT8 variant: selected with ``--steps calibrate``."""

    kind = "statistics"

    @property
    def selector(self) -> str:
        return "calibrate"

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        m = self.model
        return {"model": ctx.fingerprints.sha(m.path), "data": ctx.fingerprints.data_inputs(m.data), "shapes": m.shapes}

    def produce(self, ctx: RunContext, staging: Path) -> Produced:
        return run_statistics(ctx.model(self.model), self.model, staging, self.layout, ctx.step_warn(self))


class CalibrateStep(Step):
    kind = "calibrate"

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        v = self.variant
        return {"statistics": self.recorded_sha(ctx, self.layout.statistics()), "calibrator": v.calibrator,
                "percentile": v.percentile, "cache_trt_version": cache_trt_version(ctx.machine)}

    def env(self, ctx: RunContext) -> dict[str, Any]:
        return {k: ctx.machine.versions[k] for k in ("trtq", "numpy")}

    def produce(self, ctx: RunContext, staging: Path) -> Produced:
        return run_calibrate(ctx.out / self.layout.statistics(), self.variant, cache_trt_version(ctx.machine),
                             staging, self.layout, ctx.step_warn(self))


class ExportStep(Step):
    kind = "export"

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        rules, _ = keep_rules(self.model, self.variant)
        return {"model": ctx.fingerprints.sha(self.model.path), "precision": self.variant.precision,
                "ranges": self.ranges_sha(ctx), "keep_precision": rules}

    def env(self, ctx: RunContext) -> dict[str, Any]:
        return {k: ctx.machine.versions[k] for k in ("trtq", "onnx")}

    def produce(self, ctx: RunContext, staging: Path) -> Produced:
        return run_export(ctx.model(self.model), self.model, self.variant, self.cache_path(ctx), staging,
                          self.layout, ctx.step_warn(self))


class EvaluateStep(Step):
    """All variants of a model in one pass over the evaluation data (one FP32 run per batch)."""

    kind = "evaluate"
    together = True

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        m = self.model
        return {"model": ctx.fingerprints.sha(m.path), "onnx": self.recorded_sha(ctx, self.layout.onnx(self.variant)),
                "data": ctx.fingerprints.data_inputs(m.eval), "shapes": m.shapes}

    @classmethod
    def produce_together(cls, ctx: RunContext, steps: list[Step], stagings: dict[str, Path]) -> dict[str, Produced]:
        model_config, layout = steps[0].model, steps[0].layout
        exported = {step.variant: ctx.out / layout.onnx(step.variant) for step in steps}
        documents = run_evaluations(ctx.model(model_config), model_config, exported, ctx.step_warn(steps[0]))
        produced = {}
        for step in steps:
            rel = layout.evaluation(step.variant)
            path = write_json(staged(stagings[step.id], rel), documents[step.variant], indent=1)
            produced[step.id] = ({rel: path}, documents[step.variant]["metrics"])
        return produced

    def produce(self, ctx: RunContext, staging: Path) -> Produced:
        return self.produce_together(ctx, [self], {self.id: staging})[self.id]
