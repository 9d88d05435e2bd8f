"""The base of the pipeline's steps: :class:`Step` (one subclass per kind, each owning its fingerprint
inputs, its environment and how it produces its files), what a step may ask of the run
(:class:`RunContext`), and the helpers several kinds share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from trtq.pipeline.environment import Machine
from trtq.pipeline.fingerprints import Fingerprints
from trtq.pipeline.layout import Layout
from trtq.pipeline.manifest import Manifest
from trtq.pipeline.schema import DataConfig, ModelConfig, Variant

Echo = Callable[[str], None]
Produced = tuple[dict[str, Path], dict[str, Any]]  # (artifact path in the output folder -> staged file, result)


class RunContext(Protocol):
    """What a step reads from the run (:class:`trtq.pipeline.runner.Pipeline` provides it)."""

    out: Path
    machine: Machine
    manifest: Manifest
    fingerprints: Fingerprints

    def model(self, config: ModelConfig) -> Any: ...  # the loaded model (loaded once per run)

    def ray(self) -> str | None: ...  # the config's Ray address (connected for the run), None without one

    def step_warn(self, step: Step) -> Echo: ...

    def step_echo(self, step: Step) -> Echo: ...


@dataclass(frozen=True)
class Step:
    """One step of the plan. Subclasses set ``kind`` and implement :meth:`inputs` and :meth:`produce`."""

    id: str
    model: ModelConfig
    variant: Variant | None
    needs: tuple[str, ...] = ()

    kind: ClassVar[str]
    gpu: ClassVar[bool] = False  # needs TensorRT and a GPU
    together: ClassVar[bool] = False  # a model's steps of this kind are produced in one pass

    @property
    def selector(self) -> str:
        """The ``--steps`` name that selects it."""
        return self.kind

    @property
    def layout(self) -> Layout:
        return Layout(self.model)

    @property
    def variant_id(self) -> str:
        """``model/variant``: the prefix of this variant's step ids."""
        return f"{self.model.name}/{self.variant.name}"

    def recorded_sha(self, ctx: RunContext, rel: str) -> str:
        """The recorded sha256 of an artifact an earlier step wrote."""
        return ctx.manifest.files[rel]["sha256"]

    def variant_result(self, ctx: RunContext, kind: str) -> dict[str, Any]:
        """The result of this variant's step of ``kind`` (it has one: the plan made this step need it)."""
        return ctx.manifest.entry(f"{self.variant_id}/{kind}").get("result", {})

    @property
    def ranges_kind(self) -> str:
        """The kind of the step that gives the variant its ranges: ``quantize`` or ``calibrate``."""
        return "quantize" if self.variant.quantize else "calibrate"

    def ranges_sha(self, ctx: RunContext) -> str | None:
        """The digest of the ranges the variant was calibrated with (None without INT8)."""
        return self.variant_result(ctx, self.ranges_kind)["ranges_sha256"] if self.variant.int8 else None

    def quantize_record(self, ctx: RunContext) -> dict[str, Any] | None:
        """What the variant's quantize step chose and verified (None for the other calibrators)."""
        return self.variant_result(ctx, "quantize")["record"] if self.variant.quantize else None

    def source_model(self, ctx: RunContext):
        """The float model the variant's export and build start from: the config's, or the one quantize corrected
        (bias correction, SmoothQuant), whose tensors and biases its ranges are for."""
        corrected = self.variant_result(ctx, "quantize").get("float_model") if self.variant.quantize else None
        if corrected is None:
            return ctx.model(self.model)
        from trtq.model import load_model

        return load_model(ctx.out / corrected)

    def source_sha(self, ctx: RunContext) -> str:
        """The digest of :meth:`source_model` (a fingerprint input of the steps that read it)."""
        corrected = self.variant_result(ctx, "quantize").get("float_model_sha256") if self.variant.quantize else None
        return corrected or ctx.fingerprints.sha(self.model.path)

    def kept_by_quantize(self, ctx: RunContext) -> list[str]:
        record = self.quantize_record(ctx)
        return list(record["keep"]) if record else []

    def cache_path(self, ctx: RunContext) -> Path | None:
        """The variant's calibration cache in the output folder (None without INT8)."""
        return ctx.out / self.layout.cache(self.variant) if self.variant.int8 else None

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        """The input fingerprint (JSON: tuples of dimensions hash as lists)."""
        raise NotImplementedError

    def env(self, ctx: RunContext) -> dict[str, Any]:
        """The environment fingerprint: what, besides the inputs, can change the result."""
        return ctx.machine.gpu_env if self.gpu else ctx.machine.cpu_env

    def produce(self, ctx: RunContext, staging: Path) -> Produced:
        """Write the step's files into ``staging``; raise :class:`~trtq.errors.TrtqError` to fail it."""
        raise NotImplementedError

    @classmethod
    def produce_together(cls, ctx: RunContext, steps: list[Step], stagings: dict[str, Path]) -> dict[str, Produced]:
        """Produce several steps of this kind (by id); kinds with ``together`` share the work."""
        return {step.id: step.produce(ctx, stagings[step.id]) for step in steps}


# -- shared by several kinds -------------------------------------------------------------------------------


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


def open_data(model, data: DataConfig, shapes: dict[str, tuple[int, ...]], warn: Echo):
    """The batches of ``data``, through the adapter the commands use (``trtq.data.options``)."""
    from trtq.data.options import open_batches_from_options

    return open_batches_from_options(model, data.open_options(shapes), warn=warn)


def cache_amax(path: Path) -> dict[str, float]:
    from trtq.cache import read_cache

    return read_cache(path).amax()
