"""The base of the config checks: problems recorded as ``FILE: KEY: reason`` (every one, not just the
first), typed getters for TOML values, and paths resolved against the config's folder."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Skip(Exception):
    """A value was wrong; the problem is recorded, the caller uses its default."""



class TomlChecker:
    """Collects problems; the getters record one and raise :class:`Skip` so the caller falls back to a default."""

    def __init__(self, display: str, prefix: str, root: Path):
        self.display, self.prefix, self.root = display, prefix, root
        self.problems: list[str] = []
        self.loaded: dict[str, Any] = {}  # model name -> Model, loaded by the deep check for the run

    # messages
    def problem(self, key: str, reason: str) -> None:
        self.problems.append(f"{self.display}: {self.prefix}{key}: {reason}")

    def unknown_keys(self, table: dict, known: tuple[str, ...], where: str) -> None:
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"
                self.problem(f"{where}.{key}" if where else key, f"unknown key{hint}")

    # typed getters: record a problem and raise Skip on a wrong value
    def get(self, table: dict, key: str, where: str, kind: str, default: Any = None) -> Any:
        if key not in table:
            return default
        value = table[key]
        name = f"{where}.{key}" if where else key
        if not is_kind(value, kind):
            self.problem(name, f"expected {KIND_TEXT[kind]}, got {describe(value)}")
            raise Skip
        if kind in ("number", "number_or_false"):
            value = float(value)
            if not math.isfinite(value):
                self.problem(name, f"expected a finite number, got {value}")
                raise Skip
        return value

    def safe(self, fn: Callable[[], Any], default: Any = None) -> Any:
        try:
            return fn()
        except Skip:
            return default

    def path(self, text: str) -> Path:
        candidate = Path(text).expanduser()
        return candidate if candidate.is_absolute() else self.root / candidate


    def table(self, value: Any, where: str, known: tuple[str, ...], expected: str = "a table") -> dict:
        """``value`` when it is a table (its unknown keys reported), else a problem and :class:`Skip`."""
        if not isinstance(value, dict):
            self.problem(where, f"expected {expected}, got {describe(value)}")
            raise Skip
        self.unknown_keys(value, known, where)
        return value


KIND_TEXT = {
    "str": "a string", "int": "an integer", "number": "a number", "bool": "true or false",
    "str_list": "a list of strings", "str_or_int": "a string or an integer",
    "number_or_false": "a number (or false to switch the gate off)",
}


def is_kind(value: Any, kind: str) -> bool:
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


def is_finite(value: Any) -> bool:
    """A TOML number other than inf/nan (which TOML allows and no option means)."""
    return is_kind(value, "number") and math.isfinite(value)


def describe(value: Any) -> str:
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
