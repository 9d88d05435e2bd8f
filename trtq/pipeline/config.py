"""``trtq.toml`` (or ``[tool.trtq]`` in ``pyproject.toml``): read it and check all of it before any work.

Checking happens in two passes so that every mistake is reported at once, each as
``FILE: KEY: reason`` (``trtq.toml: models[0].data.path: calib_data/x does not exist``):

1. structure: unknown keys (with the closest known key), wrong types, unknown precisions and
   calibrators, malformed shapes and sizes;
2. meaning, per model whose declaration could be read: the model loads and passes the ONNX checker,
   files exist, the data opens against the model (the same cheap checks ``trtq calibrate`` does),
   ``keep_precision`` names nodes of the model, a gate has what it needs (labels for top-1 drop).

Relative paths are relative to the config file's folder, so ``trtq run path/to/trtq.toml`` works
from anywhere.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtq.errors import TrtqError
from trtq.fileio import read_input_bytes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

PRECISIONS = ("fp16", "int8", "best")
DEFAULT_OUTPUT = "trtq-artifacts"
DEFAULT_PRECISIONS = ("int8", "fp16")
DEFAULT_CALIBRATORS = ("entropy2",)
CONFIG_NAMES = ("trtq.toml", "pyproject.toml")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_FLAG = re.compile(r"--([a-z][a-z-]*)")
_FLAG_KEYS = {"data": "path", "data-loader-script": "loader_script"}

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
TOP_KEYS = ("output", "precisions", "calibrators", "percentile", "gates", "build", "bench", "models")
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
    # The models the deep check loaded (by model name), so that the run does not load them again.
    loaded: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def root(self) -> Path:
        return self.source.parent


# -- finding and reading the file ------------------------------------------------------------------------


def find_config(path: str | None, cwd: Path | None = None) -> Path:
    """The config file: ``path``, else ``trtq.toml``, else ``pyproject.toml`` with ``[tool.trtq]``."""
    if path:
        candidate = Path(path)
        if candidate.is_dir():
            return find_config(None, candidate)
        if not candidate.is_file():
            raise TrtqError(f"config file not found: {candidate}")
        return candidate
    folder = cwd or Path(".")
    toml_path = folder / "trtq.toml"
    if toml_path.is_file():
        return toml_path
    pyproject = folder / "pyproject.toml"
    if pyproject.is_file() and "trtq" in _read_toml(pyproject, str(pyproject))[0].get("tool", {}):
        return pyproject
    where = "the current directory" if cwd is None else str(folder)
    raise TrtqError(f"no trtq.toml and no pyproject.toml with a [tool.trtq] table in {where}; "
                    "give the config file: trtq run CONFIG.toml")


def _read_toml(path: Path, display: str) -> tuple[dict, bytes]:
    """The parsed document and the bytes it was parsed from (the manifest records their sha256)."""
    data = read_input_bytes(path, "config file")
    try:
        return tomllib.loads(data.decode("utf-8")), data
    except UnicodeDecodeError as exc:
        raise TrtqError(f"{display}: not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TrtqError(f"{display}: not valid TOML: {exc}") from exc


def load_config(path: str | None = None, *, output: str | None = None, cwd: Path | None = None,
                warn: Callable[[str], None] | None = None, deep: bool = True) -> PipelineConfig:
    """Read and check the config (``deep``: also load the models and open the data).

    Raises :class:`ConfigError` listing every problem found.
    """
    source = find_config(path, cwd)
    display = str(path) if path and not Path(path).is_dir() else str(source)
    document, data = _read_toml(source, display)
    prefix = ""
    if source.name == "pyproject.toml":
        tool = document.get("tool", {})
        if not isinstance(tool, dict) or "trtq" not in tool:
            raise TrtqError(f"{display} has no [tool.trtq] table")
        document, prefix = tool["trtq"], "tool.trtq."
        if not isinstance(document, dict):
            raise ConfigError([f"{display}: tool.trtq: expected a table"])
    checker = _Checker(display, prefix, source.parent.resolve())
    config = checker.top(document, output)
    if deep:  # every model whose declaration could be read, even when other keys had problems
        for model in config.models:
            checker.deep_check(model, warn)
    if checker.problems:
        raise ConfigError(checker.problems)
    return PipelineConfig(source, display, prefix, hashlib.sha256(data).hexdigest(), config.output, config.models,
                          checker.loaded)


# -- structure -------------------------------------------------------------------------------------------


class _Skip(Exception):
    """A value was wrong; the problem is recorded, the caller uses its default."""


@dataclass
class _Parsed:
    output: Path
    models: tuple[ModelConfig, ...]


class _Checker:
    def __init__(self, display: str, prefix: str, root: Path):
        self.display, self.prefix, self.root = display, prefix, root
        self.problems: list[str] = []
        self.loaded: dict[str, Any] = {}  # model name -> Model, for the run

    # messages
    def problem(self, key: str, reason: str) -> None:
        self.problems.append(f"{self.display}: {self.prefix}{key}: {reason}")

    def unknown_keys(self, table: dict, known: tuple[str, ...], where: str) -> None:
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"
                self.problem(f"{where}.{key}" if where else key, f"unknown key{hint}")

    # typed getters: record a problem and raise _Skip on a wrong value
    def get(self, table: dict, key: str, where: str, kind: str, default: Any = None) -> Any:
        if key not in table:
            return default
        value = table[key]
        name = f"{where}.{key}" if where else key
        if not _is_kind(value, kind):
            self.problem(name, f"expected {_KIND_TEXT[kind]}, got {_describe(value)}")
            raise _Skip
        if kind in ("number", "number_or_false"):
            value = float(value)
            if not math.isfinite(value):
                self.problem(name, f"expected a finite number, got {value}")
                raise _Skip
        return value

    def safe(self, fn: Callable[[], Any], default: Any = None) -> Any:
        try:
            return fn()
        except _Skip:
            return default

    def path(self, text: str) -> Path:
        candidate = Path(text).expanduser()
        return candidate if candidate.is_absolute() else self.root / candidate

    # the document
    def top(self, doc: dict, output_override: str | None) -> _Parsed:
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
            self.problem("models", f"expected an array of tables ([[models]]), got {_describe(models_value)}")
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
        return _Parsed(output, tuple(models))

    def precisions(self, table: dict, where: str) -> list[str] | None:
        return self.choice_list(table, "precisions", where, PRECISIONS, "precision")

    def calibrators(self, table: dict, where: str) -> list[str] | None:
        from trtq.ranges import METHODS

        return self.choice_list(table, "calibrators", where, METHODS, "calibrator")

    def choice_list(self, table: dict, key: str, where: str, allowed: tuple[str, ...], noun: str) -> list[str] | None:
        """A non-empty list of ``allowed`` names (duplicates dropped), or None when ``key`` is not set."""
        values = self.get(table, key, where, "str_list")
        if values is None:
            return None
        name = f"{where}.{key}" if where else key
        bad = [v for v in values if v not in allowed]
        if bad:
            self.problem(name, f"unknown {noun} '{bad[0]}' (choose from {', '.join(allowed)})")
            raise _Skip
        if not values:
            self.problem(name, f"empty: give at least one of {', '.join(allowed)}")
            raise _Skip
        return list(dict.fromkeys(values))

    def percentile(self, table: dict, where: str) -> float | None:
        value = self.get(table, "percentile", where, "number")
        if value is not None and not 0.0 < value <= 100.0:
            self.problem(f"{where}.percentile" if where else "percentile", f"must be in (0, 100], got {value}")
            raise _Skip
        return value

    def table(self, value: Any, where: str, known: tuple[str, ...], expected: str = "a table") -> dict:
        """``value`` when it is a table (its unknown keys reported), else a problem and :class:`_Skip`."""
        if not isinstance(value, dict):
            self.problem(where, f"expected {expected}, got {_describe(value)}")
            raise _Skip
        self.unknown_keys(value, known, where)
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
            raise _Skip
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

    def data_table(self, value: Any, where: str, keys: tuple[str, ...]) -> dict:
        return {"path": value} if isinstance(value, str) else self.table(value, where, keys, "a path or a table")

    def data(self, table: dict, where: str) -> DataConfig:
        key = f"{where}.data"
        if "data" not in table:
            self.problem(key, "missing: calibration data (a folder of images, an .npy/.npz file or a loader script)")
            raise _Skip
        value = self.data_table(table["data"], key, DATA_KEYS)
        shorthand = isinstance(table["data"], str)
        return self.data_config(value, key, shorthand)

    def eval(self, table: dict, where: str, data: DataConfig) -> DataConfig:
        key = f"{where}.eval"
        if "eval" not in table:
            return DataConfig(key, data.path, data.loader_script, dict(data.options))
        value = dict(self.data_table(table["eval"], key, EVAL_KEYS))
        shorthand = isinstance(table["eval"], str)
        if "path" not in value and "loader_script" not in value:
            if data.path is not None:
                value["path"] = str(data.path)
            else:
                value["loader_script"] = data.loader_script
        parsed = self.data_config(value, key, shorthand, inherited=data.options)
        labels = self.safe(lambda: self.get(value, "labels", key, "str"))
        if labels and not self.path(labels).is_file():
            self.problem(f"{key}.labels", f"labels file {labels} does not exist")
        logits = self.safe(lambda: self.get(value, "logits", key, "str"))
        return DataConfig(key, parsed.path, parsed.loader_script, parsed.options,
                          self.path(labels) if labels else None, logits)

    def data_config(self, value: dict, key: str, shorthand: bool, inherited: dict | None = None) -> DataConfig:
        from trtq.data.preprocess import CHANNEL_ORDERS, INTERPOLATIONS, LAYOUTS, PRESETS

        path_text = self.safe(lambda: self.get(value, "path", key, "str"))
        script = self.safe(lambda: self.get(value, "loader_script", key, "str"))
        if path_text and script:
            self.problem(key, "give either path or loader_script, not both")
            raise _Skip
        if not path_text and not script:
            self.problem(key, "give path (images, .npy, .npz) or loader_script (FILE.py[:FUNCTION])")
            raise _Skip
        path = None
        if path_text:
            path = self.path(path_text)
            if not path.exists():
                self.problem(key if shorthand else f"{key}.path", f"path {path_text} does not exist")
        if script:
            from trtq.data.script import parse_script_spec

            file, function = parse_script_spec(script)
            resolved = self.path(str(file))
            if not resolved.is_file():
                self.problem(f"{key}.loader_script", f"script {file} does not exist")
            script = f"{resolved}:{function}"
        options: dict[str, Any] = {k: v for k, v in (inherited or {}).items() if k in EVAL_INHERITS}
        for name, kind in (("batch_size", "int"), ("max_samples", "int")):
            number = self.safe(lambda n=name, t=kind: self.get(value, n, key, t))
            if number is not None:
                if number < 1:
                    self.problem(f"{key}.{name}", f"must be at least 1, got {number}")
                else:
                    options[name] = number
        seed = self.safe(lambda: self.get(value, "seed", key, "int"))
        if seed is not None:
            options["seed"] = seed
        choices = {"preset": tuple(PRESETS), "interpolation": tuple(INTERPOLATIONS),
                   "channel_order": CHANNEL_ORDERS, "layout": LAYOUTS}
        for name, allowed in choices.items():
            text = self.safe(lambda n=name: self.get(value, n, key, "str"))
            if text is None:
                continue
            match = next((a for a in allowed if a.lower() == text.lower()), None)
            if match is None:
                self.problem(f"{key}.{name}", f"unknown value '{text}' (choose from {', '.join(allowed)})")
            else:
                options[name] = match
        input_name = self.safe(lambda: self.get(value, "input", key, "str"))
        if input_name is not None:
            options["input_name"] = input_name
        options.update(self.preprocess_values(value, key))
        return DataConfig(key, path, script, options)

    def preprocess_values(self, value: dict, key: str) -> dict[str, Any]:
        """resize/crop (N, "HxW" or [H, W]), scale (number or "1/255"), mean/std (list or "a,b,c")."""
        from trtq.data.parsing import parse_fraction, parse_image_size, parse_number_list

        out: dict[str, Any] = {}
        for name, square in (("resize", False), ("crop", True)):
            if name not in value:
                continue
            raw = value[name]
            if isinstance(raw, list) and len(raw) == 2 and all(_is_kind(v, "int") and v > 0 for v in raw):
                out[name] = (raw[0], raw[1])
            elif (_is_kind(raw, "int") and raw > 0) or isinstance(raw, str):
                try:
                    out[name] = parse_image_size(str(raw), single_is_square=square)
                except TrtqError:  # this message names the key and the forms TOML allows
                    self.problem(f"{key}.{name}", f"expected N, \"HxW\" or [H, W] with positive integers, got {raw!r}")
            else:
                self.problem(f"{key}.{name}", f"expected N, \"HxW\" or [H, W] with positive integers, got {raw!r}")
        if "scale" in value:
            raw = value["scale"]
            if _is_finite(raw):
                out["scale"] = float(raw)
            elif isinstance(raw, str):
                try:
                    out["scale"] = parse_fraction(raw)
                except TrtqError:
                    self.problem(f"{key}.scale", f"expected a number or a fraction like \"1/255\", got {raw!r}")
            else:
                self.problem(f"{key}.scale", f"expected a finite number or a fraction like \"1/255\", "
                             f"got {_describe(raw)}")
        for name in ("mean", "std"):
            if name not in value:
                continue
            raw = value[name]
            if _is_finite(raw):
                out[name] = (float(raw),)
            elif isinstance(raw, list) and raw and all(_is_finite(v) for v in raw):
                out[name] = tuple(float(v) for v in raw)
            elif isinstance(raw, str):
                try:
                    out[name] = parse_number_list(raw)
                except TrtqError:
                    self.problem(f"{key}.{name}", f"expected a list of numbers, got {raw!r}")
            else:
                self.problem(f"{key}.{name}", f"expected a list of finite numbers, got {_describe(raw)}")
        if "std" in out and any(v == 0 for v in out["std"]):
            self.problem(f"{key}.std", "a standard deviation of 0 divides by zero")
        return out

    # -- meaning ---------------------------------------------------------------------------------------

    def deep_check(self, model_config: ModelConfig, warn: Callable[[str], None] | None) -> None:
        """Load the model and open its data the way the steps will; record what fails."""
        from trtq.model import load_model

        key = model_config.key
        if not model_config.path.is_file():
            return  # reported already
        try:
            model = self.loaded[model_config.name] = load_model(model_config.path)
        except TrtqError as exc:
            self.problem(f"{key}.path", str(exc))
            return
        shapes_ok = True
        for name, shapes in (("shapes", model_config.shapes), *((f"profile.{k}", v) for k, v in
                                                                 model_config.profile.items())):
            unknown = [n for n in shapes if n not in {s.name for s in model.inputs}]
            if unknown:
                shapes_ok = False
                self.problem(f"{key}.{name}", f"'{unknown[0]}' is not an input of the model "
                             f"(its inputs: {', '.join(s.name for s in model.inputs)})")
        if model_config.keep_precision:
            self.check_keep_precision(model, model_config)
        sources = {}
        for data in (model_config.data, model_config.eval) if shapes_ok else ():
            if data is model_config.eval and model_config.eval_is_calibration_data and \
                    data.options == model_config.data.options:
                sources["eval"] = sources.get("data")
                break
            if (data.path is not None and not data.path.exists()) or (
                    data.loader_script and not Path(data.loader_script.rpartition(":")[0]).is_file()):
                continue  # already reported
            try:
                sources["data" if data is model_config.data else "eval"] = open_data(
                    model, data, model_config.shapes, warn=warn)
            except TrtqError as exc:  # its messages name trtq calibrate's flags: name the config keys
                self.problem(data.key, _FLAG.sub(lambda m: _FLAG_KEYS.get(m.group(1), m.group(1).replace("-", "_")),
                                                 str(exc)))
        labels = model_config.eval.labels
        if labels is not None and labels.is_file():
            from trtq.accuracy.labels import check_labels, read_labels

            try:
                read = read_labels(labels)
                if sources.get("eval") is not None:
                    check_labels(read, sources["eval"])  # e.g. an image without a row in the CSV
            except TrtqError as exc:
                self.problem(f"{model_config.eval.key}.labels", str(exc))
        logits = model_config.eval.logits
        if logits is not None and logits not in model.output_names:
            self.problem(f"{model_config.eval.key}.logits", f"'{logits}' is not an output of the model "
                         f"(its outputs: {', '.join(model.output_names)})")

    def check_keep_precision(self, model, model_config: ModelConfig) -> None:
        from trtq.export.graph import resolve_nodes
        from trtq.trt.explicit import expand_names

        try:
            resolve_nodes(model.graph, expand_names(model, list(model_config.keep_precision)), "keep_precision")
        except TrtqError as exc:
            message = str(exc).removeprefix("keep_precision: ").removeprefix("--keep-precision: ")
            self.problem(f"{model_config.key}.keep_precision", message)


def open_data(model, data: DataConfig, shapes: dict[str, tuple[int, ...]], warn: Callable[[str], None] | None = None):
    """``open_batches`` for a :class:`DataConfig`, through the adapter the commands use."""
    from trtq.data.options import open_batches_from_options

    return open_batches_from_options(model, data.open_options(shapes), warn=warn)


_KIND_TEXT = {
    "str": "a string", "int": "an integer", "number": "a number", "bool": "true or false",
    "str_list": "a list of strings", "str_or_int": "a string or an integer",
    "number_or_false": "a number (or false to switch the gate off)",
}


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind in ("number", "number_or_false"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str_list":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "str_or_int":
        return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
    raise ValueError(kind)


def _is_finite(value: Any) -> bool:
    """A TOML number other than inf/nan (which TOML allows and no option means)."""
    return _is_kind(value, "number") and math.isfinite(value)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, list):
        shown = repr(value)
        return f"the list {shown}" if len(shown) <= 60 else "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__
