"""What ``trtq quantize`` decided and measured: every verified configuration, the error-reducing steps, the keep
set, the Q/DQ export; the JSON report's content and the cache / keep-list texts derive from it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import onnx

from trtq.accuracy.auto import AutoChoice
from trtq.accuracy.corrections import StepOutcome
from trtq.accuracy.evaluate import Comparison
from trtq.accuracy.judge import Measure
from trtq.accuracy.macs import int8_mac_share
from trtq.accuracy.sensitivity import SensitivityResult
from trtq.accuracy.targets import Target
from trtq.accuracy.uncertainty import Estimate, Resolution, resolve
from trtq.cache import DEFAULT_TRT_VERSION, CalibrationCache, cache_from_amax
from trtq.export import QdqExport
from trtq.stats import StatsCollector


@dataclass
class Verification:
    """One measured configuration of the loop."""

    step: str
    kept: list[str]
    sqnr_db: float
    drop: Estimate | None
    meets_target: bool
    seconds: float

    @property
    def drop_points(self) -> float | None:
        return None if self.drop is None else self.drop.points

    def document(self) -> dict:
        return {"step": self.step, "kept": self.kept, "sqnr_db": self.sqnr_db if math.isfinite(self.sqnr_db) else None,
                "drop_points": self.drop_points, "drop": self.drop.document() if self.drop is not None else None,
                "meets_target": self.meets_target, "seconds": self.seconds}


@dataclass
class QuantizeResult:
    """Everything ``trtq quantize`` decided and measured; ``export`` is None when it failed."""

    target: Target
    calibrator: str
    method: str  # the method whose ranges were used (auto: the one it chose)
    amax: dict[str, float]
    stats: StatsCollector
    eval_description: str
    eval_samples: int
    keep: list[str]
    steps: list[Verification]
    export: QdqExport | None
    auto: AutoChoice | None = None
    sensitivity: SensitivityResult | None = None
    final: Comparison | None = None
    failure: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    quantized_nodes: list[str] = field(default_factory=list)  # of the all-INT8 model
    macs: dict[str, int] = field(default_factory=dict)  # per layer, one evaluation batch
    measure: Measure | None = None  # what the drop is measured on
    passes: int = 0  # evaluation passes over the judged data
    undecided: bool = False  # taken though beyond the target at the point estimate: only inside the noise
    corrections: list[StepOutcome] = field(default_factory=list)  # the error-reducing steps tried, in order
    float_model: onnx.ModelProto | None = None  # the corrected FP32 model (TensorRT 10 builds it with the cache)
    excluded: list[str] = field(default_factory=list)  # kept in float as the user asked (--exclude), never searched
    float_precision: str = "fp32"  # of the written model's float part (its kept layers included): fp32 or fp16

    @property
    def best_step(self) -> Verification:
        """The measured configuration with the least drop (fewest kept on a tie; the highest SQNR without drops)."""
        if self.target.max_drop is None or all(s.drop is None for s in self.steps):
            return max(self.steps, key=lambda s: (s.sqnr_db, -len(s.kept)))
        measured = [s for s in self.steps if s.drop is not None]
        whole = max(s.drop.samples for s in measured)
        # a pass stopped early measured fewer samples: its point estimate is no basis for a recommendation
        return min((s for s in measured if s.drop.samples == whole), key=lambda s: (s.drop.points, len(s.kept)))

    def resolution(self) -> Resolution | None:
        """Whether the data decide the target for the last configuration (None without a drop target)."""
        last = self.steps[-1] if self.steps else None
        if last is None or last.drop is None or self.target.max_drop is None:
            return None
        return resolve(last.drop, self.target.max_drop)

    def frontier(self) -> list[tuple[float, float, Verification]]:
        """(INT8 MAC share, drop points, configuration) of every measured configuration with a drop, by share."""
        points = [(share, step.drop.points, step) for step, share in zip(self.steps, self.mac_shares, strict=True)
                  if step.drop is not None and share is not None]
        return sorted(points, key=lambda p: -p[0])

    @property
    def layers(self) -> int:
        """Quantized layers of the all-INT8 model."""
        return len(self.quantized_nodes)

    def mac_share(self, kept: Sequence[str]) -> float | None:
        """Share of the quantized layers' MACs still in INT8 with ``kept`` in float (None: unknown)."""
        return int8_mac_share(self.macs, [*self.excluded, *self.quantized_nodes], [*self.excluded, *kept])

    @property
    def mac_shares(self) -> list[float | None]:
        return [self.mac_share(step.kept) for step in self.steps]

    @property
    def usable_amax(self) -> dict[str, float]:
        """The ranges that define an int8 scale, with the weight-derived tensors' max|w| (recorded with the
        statistics) after the data ranges: a tensor without one (all zero, no finite value) is left out of
        the cache, so TensorRT keeps it in higher precision; a zero scale is never written."""
        weights = (self.stats.meta.get("weights") or {}).get("amax", {})
        merged = {**{k: float(v) for k, v in weights.items() if k not in self.amax}, **self.amax}
        return {name: value for name, value in merged.items() if value > 0 and math.isfinite(value)}

    def cache(self, trt_version: str = DEFAULT_TRT_VERSION) -> CalibrationCache:
        """The TensorRT 10 cache of these ranges (``EntropyCalibration2`` header: trtq serves its own ranges
        through an entropy calibrator that gets no batches)."""
        return cache_from_amax(self.usable_amax, "auto", trt_version)

    def record(self) -> dict:
        """What ENGINE.json (and ``trtq run``) keep of the result: JSON (read back by
        :func:`trtq.trt.build.describe_quantize`)."""
        return {"ok": self.ok, "failure": self.failure, "method": self.method,
                "chosen_by_auto": self.auto is not None, "keep": list(self.keep), "layers": self.layers,
                "target": {**self.target.document(), "text": self.target.describe()},
                "verification": self.final_step.document(),
                "evaluation": {"data": self.eval_description, "samples": self.eval_samples},
                "calibration_samples": self.stats.samples}

    def keep_text(self, model_name: str) -> str:
        """The keep list: one ONNX node name per line, `#` comments (`--exclude @FILE`, `--keep-precision @FILE`)."""
        last = self.steps[-1] if self.steps else None
        lines = [f"# layers of {model_name} kept in float by trtq quantize (target {self.target.describe()})",
                 "# use: trtq export MODEL --qdq ... --exclude @FILE, or trtq build --keep-precision @FILE"]
        if last is not None:
            lines.append(f"# verified on {self.eval_samples} samples: {describe_step(last)}")
        if self.excluded:
            lines += ["# kept in float as asked (--exclude):", *self.excluded, "# kept in float by the search:"]
        return "\n".join([*lines, *self.keep]) + "\n"

    @property
    def task_scores(self) -> dict | None:
        """FP32's and the written INT8 model's score on the judged samples (top-1 accuracy with labels, else the
        ``--metric``), from the final check, each with its 95 % interval; None for the task proxies (FP32 agrees
        with itself: only a drop)."""
        judgement = self.final.judgement if self.final is not None else None
        if judgement is None or "fp32" not in judgement.score_estimates or "int8" not in judgement.score_estimates:
            return None
        fp32, int8 = judgement.score_estimates["fp32"], judgement.score_estimates["int8"]
        return {"measure": judgement.measure.describe(), "samples": fp32.samples,
                "fp32": fp32.points / 100, "fp32_ci95": [fp32.low / 100, fp32.high / 100],
                "int8": int8.points / 100, "int8_ci95": [int8.low / 100, int8.high / 100]}

    def describe_scores(self) -> str | None:
        """``top-1 accuracy on 256 judged samples: FP32 98.83 % (97.4-99.6), INT8 98.44 % (96.9-99.4)``, the 95 %
        intervals in brackets (None: no task score)."""
        scores = self.task_scores
        if scores is None:
            return None
        labelled = self.measure is not None and self.measure.labelled

        def shown(key: str) -> str:
            low, high = scores[f"{key}_ci95"]
            if labelled:
                return f"{100 * scores[key]:.2f} % ({100 * low:.1f}-{100 * high:.1f})"
            return f"{scores[key]:.4g} ({low:.4g}-{high:.4g})"

        return (f"{scores['measure']} on {scores['samples']} judged samples: FP32 {shown('fp32')}, "
                f"INT8 {shown('int8')} (95 % intervals)")

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def final_step(self) -> Verification:
        return self.steps[-1]

    def document(self) -> dict:
        document = {
            "format": "trtq-quantize-1",
            "ok": self.ok,
            "failure": self.failure,
            "target": self.target.document(),
            "calibrator": self.calibrator,
            "method": self.method,
            "calibration_samples": self.stats.samples,
            "evaluation": {"data": self.eval_description, "samples": self.eval_samples, "passes": self.passes},
            "undecided": self.undecided,
            "measure": self.measure.document() if self.measure is not None else None,
            "task_scores": self.task_scores,
            "corrections": [c.document() for c in self.corrections],
            "layers": self.layers,
            "keep": self.keep,
            "excluded": self.excluded,
            "float_precision": self.float_precision,
            "steps": [{**s.document(), "int8_mac_share": share} for s, share in zip(self.steps, self.mac_shares,
                                                                                     strict=True)],
            "seconds": self.seconds,
            "tensors": {name: {"amax": value, "scale": value / 127.0, "source": "data"}
                        for name, value in self.amax.items()},
        }
        for name, value in self.usable_amax.items():  # weight-derived tensors: in the cache, not in the Q/DQ model
            if name not in self.amax:
                document["tensors"][name] = {"amax": value, "scale": value / 127.0, "source": "weights"}
        if self.auto is not None:
            document["auto"] = self.auto.document()
            document["tensors"] = {name: {**entry, "flags": list(self.auto.diagnoses[name].flags)}
                                   if name in self.auto.diagnoses else entry
                                   for name, entry in document["tensors"].items()}
        if self.sensitivity is not None:
            document["sensitivity"] = self.sensitivity.document()
        if self.export is not None:
            document["quantized_nodes"] = list(self.export.plan.quantized_nodes)
        resolution = self.resolution()
        if resolution is not None:
            document["resolution"] = {"resolved": resolution.resolved, "meets": resolution.meets,
                                      "samples_needed": resolution.samples_needed,
                                      "describe": resolution.describe(self.target.max_drop, self.steps[-1].drop)}
        if self.steps:
            best = self.best_step
            document["best"] = {"step": best.step, "kept": best.kept, "drop_points": best.drop_points,
                                "int8_mac_share": self.mac_share(best.kept)}
        return document


def describe_step(step: Verification) -> str:
    sqnr = f"SQNR {step.sqnr_db:.2f} dB" if math.isfinite(step.sqnr_db) else "SQNR inf"
    if step.drop is None:
        return sqnr
    return f"drop {step.drop.points:.2f} points (95 % interval {step.drop.low:+.2f} to {step.drop.high:+.2f}), {sqnr}"


def format_steps(result: QuantizeResult) -> list[str]:
    """One line per verified configuration."""
    width = max(len(s.step) for s in result.steps)
    verdicts = {True: "meets the target", False: "misses the target"}
    return [f"  {s.step:<{width}}  {describe_step(s)}  ({verdicts[bool(s.meets_target)]})" for s in result.steps]
