"""The structural check of a whole config: unknown keys (with the closest known key), wrong types,
unknown precisions and calibrators, malformed shapes and sizes; the records of :mod:`trtq.pipeline.schema`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtq.errors import TrtqError
from trtq.pipeline.data_check import DataTableChecks
from trtq.pipeline.schema import (
    BENCH_KEYS,
    BUILD_KEYS,
    DEFAULT_CALIBRATORS,
    DEFAULT_OUTPUT,
    DEFAULT_PRECISIONS,
    GATE_KEYS,
    MODEL_KEYS,
    PRECISIONS,
    TOP_KEYS,
    ModelConfig,
    Variant,
)
from trtq.pipeline.toml_checker import Skip, describe

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class ParsedConfig:
    """What the structural check could read: the output folder and the models declared well enough to use."""

    output: Path
    models: tuple[ModelConfig, ...]
    ray: str | None = None


class StructureChecker(DataTableChecks):
    """The document's tables, top-down; :meth:`top` is the entry point."""

    def top(self, doc: dict, output_override: str | None) -> ParsedConfig:
        self.unknown_keys(doc, TOP_KEYS, "")
        output_text = self.safe(lambda: self.get(doc, "output", "", "str", DEFAULT_OUTPUT), DEFAULT_OUTPUT)
        output = Path(output_override) if output_override else self.path(output_text)
        if output.exists() and not output.is_dir():
            self.problem("output", f"{output} exists and is not a folder")
        defaults = {
            "precisions": self.safe(lambda: self.precisions(doc, "")) or list(DEFAULT_PRECISIONS),
            "calibrators": self.safe(lambda: self.calibrators(doc, "")) or list(DEFAULT_CALIBRATORS),
            "percentile": self.safe(lambda: self.percentile(doc, ""), None),
            "gates": self.safe(lambda: self.gates(doc.get("gates", {}), "gates"), {}),
            "build": self.safe(lambda: self.build(doc.get("build", {}), "build"), {}),
            "bench": self.safe(lambda: self.bench(doc.get("bench", {}), "bench"), {}),
        }
        models_value = doc.get("models")
        models: list[ModelConfig] = []
        if models_value is None:
            self.problem("models", "missing: declare at least one [[models]] table with path and data")
        elif not isinstance(models_value, list) or not all(isinstance(m, dict) for m in models_value):
            self.problem("models", f"expected an array of tables ([[models]]), got {describe(models_value)}")
        elif not models_value:
            self.problem("models", "empty: declare at least one [[models]] table")
        else:
            for index, table in enumerate(models_value):
                model = self.safe(lambda t=table, i=index: self.model(t, i, defaults))
                if model is not None:
                    models.append(model)
        seen: dict[str, int] = {}
        for model in models:
            if model.name in seen:
                self.problem(f"{model.key}.name", f"'{model.name}' is also the name of models[{seen[model.name]}]; "
                             "give each model a distinct name (it names its artifact folder)")
            seen.setdefault(model.name, model.index)
        ray = self.safe(lambda: self.ray(doc, models))
        return ParsedConfig(output, tuple(models), ray)

    def ray(self, doc: dict, models: list[ModelConfig]) -> str | None:
        """``ray = "ADDRESS"`` (what ``--ray`` takes); the calibration data it shards must be a path."""
        address = self.get(doc, "ray", "", "str")
        if address is None:
            return None
        if not address.strip():
            self.problem("ray", "empty: give local, auto, HOST:PORT or ray://HOST:PORT (or leave ray out)")
            raise Skip
        for model in models:
            if model.data.loader_script is not None:
                self.problem(f"{model.key}.data.loader_script", "ray shards the calibration data by sample index, "
                             "which a loader script does not have: give data.path on shared storage, or leave ray out")
        return address.strip()

    def precisions(self, table: dict, where: str) -> list[str] | None:
        return self.choice_list(table, "precisions", where, PRECISIONS, "precision")

    def calibrators(self, table: dict, where: str) -> list[str] | None:
        from trtq.pipeline.schema import QUANTIZE
        from trtq.ranges import METHODS

        return self.choice_list(table, "calibrators", where, (QUANTIZE, *METHODS), "calibrator")

    def choice_list(self, table: dict, key: str, where: str, allowed: tuple[str, ...], noun: str) -> list[str] | None:
        """A non-empty list of ``allowed`` names (duplicates dropped), or None when ``key`` is not set."""
        values = self.get(table, key, where, "str_list")
        if values is None:
            return None
        name = f"{where}.{key}" if where else key
        bad = [v for v in values if v not in allowed]
        if bad:
            self.problem(name, f"unknown {noun} '{bad[0]}' (choose from {', '.join(allowed)})")
            raise Skip
        if not values:
            self.problem(name, f"empty: give at least one of {', '.join(allowed)}")
            raise Skip
        return list(dict.fromkeys(values))

    def percentile(self, table: dict, where: str) -> float | None:
        value = self.get(table, "percentile", where, "number")
        if value is not None and not 0.0 < value <= 100.0:
            self.problem(f"{where}.percentile" if where else "percentile", f"must be in (0, 100], got {value}")
            raise Skip
        return value

    def gates(self, table: Any, where: str) -> dict[str, float | bool]:
        """Thresholds; ``false`` switches a gate off (a model's ``gates.X = false`` drops the top-level X)."""
        self.table(table, where, tuple(GATE_KEYS))
        gates: dict[str, float | bool] = {}
        for key in GATE_KEYS:
            if table.get(key) is False:
                gates[key] = False
                continue
            value = self.safe(lambda k=key: self.get(table, k, where, "number_or_false"))
            if value is None:
                continue
            if key == "min_top1_agreement" and not 0 <= value <= 100:
                self.problem(f"{where}.{key}", f"is a percentage, 0 to 100; got {value}")
            elif key == "min_cosine" and not -1 <= value <= 1:
                self.problem(f"{where}.{key}", f"a cosine is between -1 and 1; got {value}")
            elif key == "max_latency_ms" and value <= 0:
                self.problem(f"{where}.{key}", f"must be positive, got {value}")
            else:
                gates[key] = value
        return gates

    def build(self, table: Any, where: str) -> dict[str, Any]:
        self.table(table, where, BUILD_KEYS)
        out: dict[str, Any] = {}
        workspace = self.safe(lambda: self.get(table, "workspace", where, "str_or_int"))
        if workspace is not None:
            from trtq.trt.build import parse_size

            try:
                out["workspace"] = parse_size(str(workspace))
            except TrtqError as exc:
                self.problem(f"{where}.workspace", str(exc))
        constraints = self.safe(lambda: self.get(table, "precision_constraints", where, "str"))
        if constraints is not None:
            if constraints not in ("prefer", "obey"):
                self.problem(f"{where}.precision_constraints", f"expected 'prefer' or 'obey', got '{constraints}'")
            else:
                out["precision_constraints"] = constraints
        timing = self.safe(lambda: self.get(table, "timing_cache", where, "str"))
        if timing is not None:
            out["timing_cache"] = str(self.path(timing))
        return out

    def bench(self, table: Any, where: str) -> dict[str, Any]:
        self.table(table, where, BENCH_KEYS)
        out: dict[str, Any] = {}
        for key, kind, minimum in (("warmup_ms", "number", 0), ("duration_s", "number", 0),
                                   ("iterations", "int", 1), ("profile_iterations", "int", 0)):
            value = self.safe(lambda k=key, t=kind: self.get(table, k, where, t))
            if value is None:
                continue
            if value < minimum:
                self.problem(f"{where}.{key}", f"must be at least {minimum}, got {value}")
            else:
                out[key] = value
        for key in ("cuda_graph", "transfers"):
            value = self.safe(lambda k=key: self.get(table, k, where, "bool"))
            if value is not None:
                out[key] = value
        shapes = self.safe(lambda: self.get(table, "shapes", where, "str"))
        if shapes is not None:
            parsed = self.shape_spec(shapes, f"{where}.shapes")
            if parsed is not None:
                out["shapes"] = parsed
        return out

    def shape_spec(self, text: str, key: str) -> dict[str, tuple[int, ...]] | None:
        from trtq.shapes import parse_shape_spec

        try:
            return parse_shape_spec(text)
        except TrtqError as exc:
            self.problem(key, str(exc))
            return None

    def model(self, table: dict, index: int, defaults: dict) -> ModelConfig:
        where = f"models[{index}]"
        self.unknown_keys(table, MODEL_KEYS, where)
        path_text = self.safe(lambda: self.get(table, "path", where, "str"))
        if path_text is None and "path" not in table:
            self.problem(f"{where}.path", "missing: the ONNX model file")
        path = self.path(path_text) if path_text else None
        if path is not None and not path.is_file():
            self.problem(f"{where}.path", f"model file {path_text} does not exist")
        name = self.safe(lambda: self.get(table, "name", where, "str"))
        if name is None and path is not None:
            name = path.stem
        if name is not None and not _NAME.match(name):
            self.problem(f"{where}.name", f"'{name}' cannot name a folder: use letters, digits, '.', '_' and '-'")
        precisions = self.safe(lambda: self.precisions(table, where)) or defaults["precisions"]
        calibrators = self.safe(lambda: self.calibrators(table, where)) or defaults["calibrators"]
        percentile = self.safe(lambda: self.percentile(table, where))
        percentile = percentile if percentile is not None else defaults["percentile"]
        from trtq.ranges import DEFAULT_PERCENTILE

        variants = []
        for precision in precisions:
            if precision == "fp16":
                variants.append(Variant("fp16"))
                continue
            for calibrator in calibrators:
                value = (percentile if percentile is not None else DEFAULT_PERCENTILE) if calibrator == "percentile" \
                    else None
                variants.append(Variant(precision, calibrator, value))
        shapes_text = self.safe(lambda: self.get(table, "shapes", where, "str"))
        shapes = self.shape_spec(shapes_text, f"{where}.shapes") if shapes_text else {}
        profile = self.safe(lambda: self.profile(table.get("profile", {}), f"{where}.profile"), {})
        keep = self.safe(lambda: self.keep_precision(table, where), {})
        data = self.safe(lambda: self.data(table, where))
        eval_data = self.safe(lambda: self.eval(table, where, data)) if data is not None else None
        gates = {**defaults["gates"], **self.safe(lambda: self.gates(table.get("gates", {}), f"{where}.gates"), {})}
        gates = {key: value for key, value in gates.items() if value is not False}
        build = {**defaults["build"], **self.safe(lambda: self.build(table.get("build", {}), f"{where}.build"), {})}
        bench = {**defaults["bench"], **self.safe(lambda: self.bench(table.get("bench", {}), f"{where}.bench"), {})}
        if "max_top1_drop" in gates and eval_data is not None and eval_data.labels is None:
            origin = f"{where}.gates" if "max_top1_drop" in table.get("gates", {}) else "gates"
            self.problem(f"{origin}.max_top1_drop", f"needs labels for {where}: set {where}.eval.labels "
                         f"(a file,label .csv or a .npy of integer labels), or {where}.gates.max_top1_drop = false")
        if path is None or name is None or data is None or eval_data is None:
            raise Skip
        return ModelConfig(index, name, path, tuple(variants), data, eval_data, shapes or {}, profile or {}, keep,
                           gates, build, bench)

    def profile(self, table: Any, where: str) -> dict[str, dict[str, tuple[int, ...]]]:
        self.table(table, where, ("min", "opt", "max"), "a table with min, opt, max")
        out = {}
        for key in ("min", "opt", "max"):
            text = self.safe(lambda k=key: self.get(table, k, where, "str"))
            if text is not None:
                parsed = self.shape_spec(text, f"{where}.{key}")
                if parsed is not None:
                    out[key] = parsed
        if out and "opt" not in out:
            self.problem(where, "min/max need opt too")
        return out

    def keep_precision(self, table: dict, where: str) -> dict[str, str]:
        values = self.get(table, "keep_precision", where, "str_list", [])
        rules = {}
        for entry in values:
            name, sep, precision = entry.rpartition("=")
            precision = precision.strip().lower()
            if not sep or not name.strip() or precision not in ("fp16", "fp32"):
                self.problem(f"{where}.keep_precision", f"'{entry}': expected NODE_OR_TENSOR=fp16 or =fp32")
                continue
            rules[name.strip()] = precision
        return rules
