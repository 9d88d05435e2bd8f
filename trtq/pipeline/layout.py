"""Where each artifact of a model and variant lives in the output folder, and where a step stages it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trtq.data.script import parse_script_spec
from trtq.pipeline.schema import ModelConfig, Variant


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

    def quantize_report(self, variant: Variant, suffix: str = "json") -> str:
        return f"{self.variant_dir(variant)}/{self.stem}.quantize.{suffix}"

    def float_model(self, variant: Variant) -> str:
        """The float model quantize's ranges are for when a correction changed it (bias correction, SmoothQuant)."""
        return f"{self.variant_dir(variant)}/{self.stem}.float.onnx"

    def keep(self, variant: Variant) -> str:
        return f"{self.variant_dir(variant)}/{self.stem}.keep.txt"

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

    def files(self) -> list[str]:
        """Every artifact a run can write for this model, whichever steps run."""
        files = [self.statistics()]
        for variant in self.model.variants:
            files += [self.cache(variant), self.ranges(variant), self.float_model(variant),
                      self.quantize_report(variant), self.quantize_report(variant, "html"), self.keep(variant),
                      self.onnx(variant),
                      self.evaluation(variant), self.engine(variant), self.engine_manifest(variant),
                      self.bench(variant), self.profile(variant),
                      *(self.report(variant, suffix) for suffix in ("json", "md", "html"))]
        return files


def input_files(model: ModelConfig) -> dict[str, Path]:
    """What a run reads for ``model``, by its config key: the model, the data (a folder conflicts only with
    itself), the labels and loader scripts."""
    read: dict[str, Path] = {f"{model.key}.path": model.path}
    for data in (model.data, model.eval):
        if data.path is not None:
            read[f"{data.key}.path"] = data.path
        if data.labels is not None:
            read[f"{data.key}.labels"] = data.labels
        if data.loader_script:
            read[f"{data.key}.loader_script"] = parse_script_spec(data.loader_script)[0]
    return read


def staged(staging: Path, rel: str) -> Path:
    """The staging path of artifact ``rel`` (flat: one step's files never share a name)."""
    return staging / Path(rel).name
