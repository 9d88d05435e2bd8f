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

The pieces: :mod:`~trtq.pipeline.schema` (the keys and the records), :mod:`~trtq.pipeline.discovery`
(finding and reading the file), :mod:`~trtq.pipeline.structure_check` (pass 1) and
:mod:`~trtq.pipeline.deep_check` (pass 2). The records are re-exported here, where callers found them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from trtq.errors import TrtqError
from trtq.pipeline.deep_check import deep_check
from trtq.pipeline.discovery import find_config, read_toml
from trtq.pipeline.schema import ConfigError, DataConfig, ModelConfig, PipelineConfig, Variant
from trtq.pipeline.structure_check import StructureChecker

__all__ = ["ConfigError", "DataConfig", "ModelConfig", "PipelineConfig", "Variant", "find_config", "load_config"]


def load_config(path: str | None = None, *, output: str | None = None, cwd: Path | None = None,
                warn: Callable[[str], None] | None = None, deep: bool = True) -> PipelineConfig:
    """Read and check the config (``deep``: also load the models and open the data).

    Raises :class:`ConfigError` listing every problem found.
    """
    source = find_config(path, cwd)
    display = str(path) if path and not Path(path).is_dir() else str(source)
    document, data = read_toml(source, display)
    prefix = ""
    if source.name == "pyproject.toml":
        tool = document.get("tool", {})
        if not isinstance(tool, dict) or "trtq" not in tool:
            raise TrtqError(f"{display} has no [tool.trtq] table")
        document, prefix = tool["trtq"], "tool.trtq."
        if not isinstance(document, dict):
            raise ConfigError([f"{display}: tool.trtq: expected a table"])
    checker = StructureChecker(display, prefix, source.parent.resolve())
    config = checker.top(document, output)
    if deep:  # every model whose declaration could be read, even when other keys had problems
        for model in config.models:
            deep_check(checker, model, warn)
    if checker.problems:
        raise ConfigError(checker.problems)
    return PipelineConfig(source, display, prefix, hashlib.sha256(data).hexdigest(), config.output, config.models,
                          config.ray, checker.loaded)

