"""The CPU steps: statistics, calibrate (or quantize), export and evaluate (no TensorRT, no GPU)."""

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


def run_statistics(model, config: ModelConfig, staging: Path, layout: Layout, warn: Echo,
                   ray: str | None = None, echo: Echo | None = None) -> tuple[dict, dict]:
    """One pass over the calibration data: per-tensor |x| statistics that every calibrator derives from
    (``ray``: in shards, as Ray tasks; the same statistics). ``echo`` gets a line at each quarter of the data."""
    from trtq.calibrate import collect_statistics
    from trtq.messages import quarter_progress

    # The source warns about each file it skips; collect_statistics records its provenance in the statistics.
    source = open_data(model, config.data, config.shapes, warn=warn)
    if ray is None:
        progress = quarter_progress("calibration pass", source.total_samples, echo) if echo is not None else None
        stats = collect_statistics(model, source, progress=progress)
    else:
        from trtq.distributed.calibrate import collect_statistics_ray

        stats = collect_statistics_ray(model, source, ray)
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


def quantize_target(model, config: ModelConfig) -> dict[str, Any]:
    """The model's gates as ``trtq quantize``'s target: ``min_sqnr_db`` -> min SQNR; ``max_top1_drop`` -> max
    drop of top-1 accuracy (the eval labels); else ``min_top1_agreement`` -> max drop of top-1 agreement
    (100 - it, on a ``[batch, classes]`` output). The other gates (cosine, latency) and an agreement gate
    next to a drop gate have no quantize measure: the evaluate and bench steps check them. No such
    gate: quantize's default target."""
    from trtq.accuracy.targets import looks_like_class_scores

    gates = config.gates
    target: dict[str, Any] = {"min_sqnr": gates.get("min_sqnr_db"), "max_drop": None,
                              "labels": config.eval.labels is not None, "gates": []}
    if target["min_sqnr"] is not None:
        target["gates"].append("min_sqnr_db")
    if "max_top1_drop" in gates:
        target["max_drop"] = gates["max_top1_drop"]
        target["gates"].append("max_top1_drop")
    elif "min_top1_agreement" in gates:
        logits = config.eval.logits or model.output_names[0]
        output = next(o for o in model.graph.output if o.name == logits)
        shape = [d.dim_value if d.HasField("dim_value") else 0 for d in output.type.tensor_type.shape.dim]
        if looks_like_class_scores(shape):
            target.update(max_drop=100.0 - gates["min_top1_agreement"], labels=False)
            target["gates"].append("min_top1_agreement")
    return target


def run_quantize(model, config: ModelConfig, variant: Variant, trt_version: str, staging: Path, layout: Layout,
                 warn: Echo, ray: str | None = None, echo: Echo | None = None) -> tuple[dict, dict]:
    """``trtq quantize`` with the gates as its target (:func:`quantize_target`): the report always; the
    cache of its ranges and its keep list only when the target is met, else the result blocks the
    variant's later steps (a failed gate of the run). ``ray``: as ``trtq quantize --ray`` (the ranking on
    Ray actors; the calibration pass in shards when the evaluation data is not the calibration data)."""
    from trtq.accuracy.labels import read_labels
    from trtq.accuracy.quantize_files import QuantizeFiles
    from trtq.cache import read_cache
    from trtq.fileio import sha256_file
    from trtq.jobs.quantize import QuantizeRequest, quantize_job
    from trtq.messages import quarter_progress
    from trtq.trt.build import describe_quantize

    target = quantize_target(model, config)
    calibration = open_data(model, config.data, config.shapes, warn=warn)
    labels = read_labels(config.eval.labels) if target["labels"] and config.eval.labels else None
    evaluation = None if config.eval_is_calibration_data else open_data(model, config.eval, config.shapes, warn=warn)
    request = QuantizeRequest(model, calibration, evaluation, labels, ray=ray, loop={
        "min_sqnr": target["min_sqnr"], "max_drop": target["max_drop"], "logits": config.eval.logits})
    rels = {"json": layout.quantize_report(variant), "html": layout.quantize_report(variant, "html"),
            "cache": layout.cache(variant), "keep": layout.keep(variant), "float": layout.float_model(variant)}
    paths = {key: staged(staging, rel) for key, rel in rels.items()}  # the Q/DQ model: the export step's
    outcome = quantize_job(request, QuantizeFiles(**paths), trt_version=trt_version,
                           document={"target_from_gates": target}, indent=1, note=echo,
                           progress=quarter_progress("calibration pass", calibration.total_samples, echo) if echo
                           else None)
    result, written = outcome.result, outcome.written
    record = result.record()
    files = {rels[key]: path for key, path in paths.items() if path in written}
    summary: dict[str, Any] = {"ok": result.ok, "record": record, "target_from_gates": target["gates"]}
    if not result.ok:
        summary["blocks"] = f"trtq quantize missed its target: {result.failure}"
        return files, summary
    if paths["float"] in written:  # corrected (bias correction, SmoothQuant): the ranges are for this model
        summary.update({"float_model": rels["float"], "float_model_sha256": sha256_file(paths["float"])})
    cache = read_cache(paths["cache"])
    amax = cache.amax()  # as the cache holds them: what export and build read back
    summary.update({"ranges_sha256": ranges_digest(amax), "tensors": len(amax), "samples": result.stats.samples,
                    "cache_header": cache.header, "verified": describe_quantize(record)})
    return files, summary


def run_export(model, config: ModelConfig, variant: Variant, cache_path: Path | None, staging: Path,
               layout: Layout, warn: Echo, kept: list[str] | None = None) -> tuple[dict, dict]:
    """The ONNX model TensorRT 11 builds for the variant: Q/DQ (int8), FP16 (fp16) or both (best);
    ``kept`` are the layers quantize kept in float (with the config's ``keep_precision``)."""
    from trtq.trt.build import with_kept_layers
    from trtq.trt.explicit import strongly_typed_model

    rules, notes = keep_rules(config, variant)
    rules = with_kept_layers(rules, kept or [], fp16=variant.fp16)
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
        return run_statistics(ctx.model(self.model), self.model, staging, self.layout, ctx.step_warn(self),
                              ctx.ray(), ctx.step_echo(self))


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


class QuantizeStep(Step):
    """``trtq quantize`` for a variant without an explicit calibrator: selected with ``--steps calibrate``."""

    kind = "quantize"

    @property
    def selector(self) -> str:
        return "calibrate"

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        m = self.model
        target = quantize_target(ctx.model(m), m)
        return {"model": ctx.fingerprints.sha(m.path), "calibrator": self.variant.calibrator,
                "data": ctx.fingerprints.data_inputs(m.data),
                "eval": None if m.eval_is_calibration_data else ctx.fingerprints.data_inputs(m.eval),
                "labels": ctx.fingerprints.data_inputs(m.eval).get("labels") if target["labels"] else None,
                "logits": m.eval.logits, "shapes": m.shapes, "target": target,
                "cache_trt_version": cache_trt_version(ctx.machine)}

    def produce(self, ctx: RunContext, staging: Path) -> Produced:
        return run_quantize(ctx.model(self.model), self.model, self.variant, cache_trt_version(ctx.machine),
                            staging, self.layout, ctx.step_warn(self), ctx.ray(), ctx.step_echo(self))


class ExportStep(Step):
    kind = "export"

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        rules, _ = keep_rules(self.model, self.variant)
        return {"model": self.source_sha(ctx), "precision": self.variant.precision,
                "ranges": self.ranges_sha(ctx), "keep_precision": rules, "kept_by_quantize": self.kept_by_quantize(ctx)}

    def env(self, ctx: RunContext) -> dict[str, Any]:
        return {k: ctx.machine.versions[k] for k in ("trtq", "onnx")}

    def produce(self, ctx: RunContext, staging: Path) -> Produced:
        return run_export(self.source_model(ctx), self.model, self.variant, self.cache_path(ctx), staging,
                          self.layout, ctx.step_warn(self), self.kept_by_quantize(ctx))


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
