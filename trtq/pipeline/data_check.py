"""The structural check of ``[data]`` and ``[eval]`` tables: the source, the sampling options and the
preprocessing values, read with the same parsers as the command line's options."""

from __future__ import annotations

from typing import Any

from trtq.errors import TrtqError
from trtq.pipeline.schema import DATA_KEYS, EVAL_INHERITS, EVAL_KEYS, DataConfig
from trtq.pipeline.toml_checker import Skip, TomlChecker, describe, is_finite, is_kind


class DataTableChecks(TomlChecker):
    """``data_config`` and its helpers: a :class:`DataConfig` from a table, with every problem recorded."""

    def data_table(self, value: Any, where: str, keys: tuple[str, ...]) -> dict:
        return {"path": value} if isinstance(value, str) else self.table(value, where, keys, "a path or a table")

    def data(self, table: dict, where: str) -> DataConfig:
        key = f"{where}.data"
        if "data" not in table:
            self.problem(key, "missing: calibration data (a folder of images, an .npy/.npz file or a loader script)")
            raise Skip
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
            raise Skip
        if not path_text and not script:
            self.problem(key, "give path (images, .npy, .npz) or loader_script (FILE.py[:FUNCTION])")
            raise Skip
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
            if isinstance(raw, list) and len(raw) == 2 and all(is_kind(v, "int") and v > 0 for v in raw):
                out[name] = (raw[0], raw[1])
            elif (is_kind(raw, "int") and raw > 0) or isinstance(raw, str):
                try:
                    out[name] = parse_image_size(str(raw), single_is_square=square)
                except TrtqError:  # this message names the key and the forms TOML allows
                    self.problem(f"{key}.{name}", f"expected N, \"HxW\" or [H, W] with positive integers, got {raw!r}")
            else:
                self.problem(f"{key}.{name}", f"expected N, \"HxW\" or [H, W] with positive integers, got {raw!r}")
        if "scale" in value:
            raw = value["scale"]
            if is_finite(raw):
                out["scale"] = float(raw)
            elif isinstance(raw, str):
                try:
                    out["scale"] = parse_fraction(raw)
                except TrtqError:
                    self.problem(f"{key}.scale", f"expected a number or a fraction like \"1/255\", got {raw!r}")
            else:
                self.problem(f"{key}.scale", f"expected a finite number or a fraction like \"1/255\", "
                             f"got {describe(raw)}")
        for name in ("mean", "std"):
            if name not in value:
                continue
            raw = value[name]
            if is_finite(raw):
                out[name] = (float(raw),)
            elif isinstance(raw, list) and raw and all(is_finite(v) for v in raw):
                out[name] = tuple(float(v) for v in raw)
            elif isinstance(raw, str):
                try:
                    out[name] = parse_number_list(raw)
                except TrtqError:
                    self.problem(f"{key}.{name}", f"expected a list of numbers, got {raw!r}")
            else:
                self.problem(f"{key}.{name}", f"expected a list of finite numbers, got {describe(raw)}")
        if "std" in out and any(v == 0 for v in out["std"]):
            self.problem(f"{key}.std", "a standard deviation of 0 divides by zero")
        return out
