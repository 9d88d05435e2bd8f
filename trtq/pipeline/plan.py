"""The plan of a run: every step of every model and variant, in the order they run, and ``--steps``.

Per model: ``statistics`` (one pass over the calibration data, shared by every INT8 variant with an
explicit calibrator), then per variant ``calibrate`` (int8/best; ``quantize`` for the default calibrator
``auto``, which makes its own calibration pass) and ``export``, then ``evaluate`` (all variants in one pass), then
``build``, ``bench`` and ``report`` (the GPU steps).
"""

from __future__ import annotations

from trtq.errors import TrtqError
from trtq.pipeline.schema import PipelineConfig
from trtq.pipeline.steps import (
    BenchStep,
    BuildStep,
    CalibrateStep,
    EvaluateStep,
    ExportStep,
    QuantizeStep,
    ReportStep,
    StatisticsStep,
    Step,
)

STEP_KINDS = ("calibrate", "export", "evaluate", "build", "bench", "report")
GPU_KINDS = ("build", "bench", "report")
STEP_GROUPS = {"cpu": ("calibrate", "export", "evaluate"), "gpu": GPU_KINDS, "all": STEP_KINDS}


def parse_steps(text: str | None) -> tuple[str, ...]:
    """``"cpu"``, ``"gpu"``, ``"all"`` or a comma list of step kinds."""
    if not text:
        return STEP_KINDS
    kinds: list[str] = []
    for part in (p.strip().lower() for p in text.split(",")):
        if part in STEP_GROUPS:
            kinds.extend(STEP_GROUPS[part])
        elif part in STEP_KINDS:
            kinds.append(part)
        elif part:
            raise TrtqError(f"--steps: unknown step '{part}' (choose from {', '.join(STEP_KINDS)}, or cpu, gpu, all)")
    if not kinds:
        raise TrtqError("--steps: no step given")
    return tuple(dict.fromkeys(kinds))


def plan(config: PipelineConfig) -> list[Step]:
    """Every step of every model and variant, in the order they run."""
    steps: list[Step] = []
    for model in config.models:
        stats_id = f"{model.name}/statistics"
        if any(v.int8 and not v.quantize for v in model.variants):
            steps.append(StatisticsStep(stats_id, model, None))
        per_variant: dict[str, list[Step]] = {}
        for v in model.variants:
            base = f"{model.name}/{v.name}"
            ranges_kind = "quantize" if v.quantize else "calibrate"
            calibrate = (f"{base}/{ranges_kind}",) if v.int8 else ()
            per_variant[v.name] = [
                *([QuantizeStep(f"{base}/quantize", model, v)] if v.quantize else []),
                *([CalibrateStep(f"{base}/calibrate", model, v, (stats_id,))] if v.int8 and not v.quantize else []),
                ExportStep(f"{base}/export", model, v, calibrate),
                EvaluateStep(f"{base}/evaluate", model, v, (f"{base}/export",)),
                BuildStep(f"{base}/build", model, v, calibrate),
                BenchStep(f"{base}/bench", model, v, (f"{base}/build",)),
                ReportStep(f"{base}/report", model, v, (f"{base}/build",)),
            ]
        # CPU steps of every variant, then the evaluations (one pass), then the GPU steps.
        for kinds in (("quantize", "calibrate", "export"), ("evaluate",), GPU_KINDS):
            for v in model.variants:
                steps.extend(s for s in per_variant[v.name] if s.kind in kinds)
    return steps
