"""What a checked ``trtq.toml`` says: the keys it takes, and the frozen records the pipeline runs from.

Only data here (like Polygraphy's ``comparator/struct.py``): reading the file is
:mod:`trtq.pipeline.discovery`, checking it :mod:`trtq.pipeline.structure_check` and
:mod:`trtq.pipeline.deep_check`, and :func:`trtq.pipeline.config.load_config` ties them together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtq.errors import TrtqError

PRECISIONS = ("fp16", "int8", "best")
DEFAULT_OUTPUT = "trtq-artifacts"
DEFAULT_PRECISIONS = ("int8", "fp16")
QUANTIZE = "auto"  # trtq quantize: auto ranges, layers kept in float where the target needs it, verified
DEFAULT_CALIBRATORS = (QUANTIZE,)
CONFIG_NAMES = ("trtq.toml", "pyproject.toml")

GATE_KEYS = {
    # key: (what it compares, unit shown in messages)
    "max_top1_drop": ("FP32 top-1 minus the variant's top-1, in percentage points (needs eval labels)", "points"),
    "min_top1_agreement": ("share of samples whose top-1 class matches FP32, in %", "%"),
    "min_sqnr_db": ("the worst output's SQNR against FP32, in dB", "dB"),
    "min_cosine": ("the worst output's cosine similarity with FP32", ""),
    "max_latency_ms": ("median GPU latency measured by the bench step, in ms (needs TensorRT and a GPU)", "ms"),
}
DATA_KEYS = ("path", "loader_script", "batch_size", "max_samples", "seed", "preset", "resize", "crop",
             "interpolation", "scale", "mean", "std", "channel_order", "layout", "input")
EVAL_KEYS = (*DATA_KEYS, "labels", "logits")
# Keys an [eval] table takes from [data] when it does not set them (max_samples/seed pick the calibration subset).
EVAL_INHERITS = ("batch_size", "preset", "resize", "crop", "interpolation", "scale", "mean", "std", "channel_order",
                 "layout", "input")
BUILD_KEYS = ("workspace", "precision_constraints", "timing_cache")
BENCH_KEYS = ("warmup_ms", "iterations", "duration_s", "cuda_graph", "transfers", "profile_iterations", "shapes")
TOP_KEYS = ("output", "precisions", "calibrators", "percentile", "gates", "build", "bench", "ray", "models")
MODEL_KEYS = ("name", "path", "precisions", "calibrators", "percentile", "shapes", "profile", "keep_precision",
              "data", "eval", "gates", "build", "bench")


class ConfigError(TrtqError):
    """One or more problems in the config file; each line is ``FILE: KEY: reason``."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class DataConfig:
    """Where a model's data comes from and how it is preprocessed (``open_batches`` arguments)."""

    key: str  # "models[0].data": how messages name it
    path: Path | None = None
    loader_script: str | None = None  # "FILE.py[:FUNC]" with FILE resolved against the config folder
    options: dict[str, Any] = field(default_factory=dict)  # batch_size, max_samples, seed, preprocessing, input
    labels: Path | None = None
    logits: str | None = None

    def open_options(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
        """The data options mapping :func:`trtq.data.options.open_batches_from_options` reads (the
        command line's names: ``options`` already uses them for everything but the source)."""
        return {**self.options, "data": self.path, "data_loader_script": self.loader_script, "shapes": shapes}


@dataclass(frozen=True)
class Variant:
    """One engine to make from a model: a precision and, for INT8, the calibrator."""

    precision: str
    calibrator: str | None = None
    percentile: float | None = None  # only for the percentile calibrator

    @property
    def name(self) -> str:
        return self.precision if self.calibrator is None else f"{self.precision}-{self.calibrator}"

    @property
    def int8(self) -> bool:
        return self.precision in ("int8", "best")

    @property
    def quantize(self) -> bool:
        """INT8 by ``trtq quantize`` (the default calibrator ``auto``), with the gates as its target."""
        return self.int8 and self.calibrator == QUANTIZE

    @property
    def fp16(self) -> bool:
        return self.precision in ("fp16", "best")


@dataclass(frozen=True)
class ModelConfig:
    index: int
    name: str
    path: Path
    variants: tuple[Variant, ...]
    data: DataConfig
    eval: DataConfig
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    profile: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)  # "min"/"opt"/"max" -> shapes
    keep_precision: dict[str, str] = field(default_factory=dict)  # node or tensor name -> fp16 | fp32
    gates: dict[str, float] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)
    bench: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"models[{self.index}]"

    @property
    def eval_is_calibration_data(self) -> bool:
        return self.eval.path == self.data.path and self.eval.loader_script == self.data.loader_script


@dataclass(frozen=True)
class PipelineConfig:
    source: Path  # the config file
    display: str  # how messages name it (as the user gave it)
    prefix: str  # "" for trtq.toml, "tool.trtq." for pyproject.toml
    sha256: str
    output: Path
    models: tuple[ModelConfig, ...]
    # ``ray = "ADDRESS"``: the statistics and quantize steps on Ray (as ``--ray ADDRESS``; the same files, so it is
    # no fingerprint input)
    ray: str | None = None
    # The models the deep check loaded (by model name), so that the run does not load them again.
    loaded: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def root(self) -> Path:
        return self.source.parent

