"""The deep check of each model whose declaration could be read: the model loads and passes the ONNX
checker, the data opens against it (the same cheap checks ``trtq calibrate`` does), ``keep_precision``
names nodes of the model, labels and logits fit."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from trtq.errors import TrtqError
from trtq.pipeline.schema import ModelConfig
from trtq.pipeline.toml_checker import TomlChecker

_FLAG = re.compile(r"--([a-z][a-z-]*)")
_FLAG_KEYS = {"data": "path", "data-loader-script": "loader_script"}


def deep_check(checker: TomlChecker, model_config: ModelConfig, warn: Callable[[str], None] | None) -> None:
    """Load the model and open its data the way the steps will; record what fails in ``checker`` (and the
    loaded model in ``checker.loaded``, so that the run does not load it again)."""
    from trtq.data.options import open_batches_from_options
    from trtq.model import load_model

    key = model_config.key
    if not model_config.path.is_file():
        return  # reported already
    try:
        model = checker.loaded[model_config.name] = load_model(model_config.path)
    except TrtqError as exc:
        checker.problem(f"{key}.path", str(exc))
        return
    shapes_ok = True
    for name, shapes in (("shapes", model_config.shapes), *((f"profile.{k}", v) for k, v in
                                                             model_config.profile.items())):
        unknown = [n for n in shapes if n not in {s.name for s in model.inputs}]
        if unknown:
            shapes_ok = False
            checker.problem(f"{key}.{name}", f"'{unknown[0]}' is not an input of the model "
                         f"(its inputs: {', '.join(s.name for s in model.inputs)})")
    if model_config.keep_precision:
        check_keep_precision(checker, model, model_config)
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
            sources["data" if data is model_config.data else "eval"] = open_batches_from_options(
                model, data.open_options(model_config.shapes), warn=warn)
        except TrtqError as exc:  # its messages name trtq calibrate's flags: name the config keys
            checker.problem(data.key, _FLAG.sub(lambda m: _FLAG_KEYS.get(m.group(1), m.group(1).replace("-", "_")),
                                             str(exc)))
    labels = model_config.eval.labels
    if labels is not None and labels.is_file():
        from trtq.accuracy.labels import check_labels, read_labels

        try:
            read = read_labels(labels)
            if sources.get("eval") is not None:
                check_labels(read, sources["eval"])  # e.g. an image without a row in the CSV
        except TrtqError as exc:
            checker.problem(f"{model_config.eval.key}.labels", str(exc))
    logits = model_config.eval.logits
    if logits is not None and logits not in model.output_names:
        checker.problem(f"{model_config.eval.key}.logits", f"'{logits}' is not an output of the model "
                     f"(its outputs: {', '.join(model.output_names)})")

def check_keep_precision(checker: TomlChecker, model, model_config: ModelConfig) -> None:
    """``keep_precision`` names nodes (or their output tensors) of the model."""
    from trtq.export.graph import resolve_nodes
    from trtq.trt.explicit import expand_names

    try:
        resolve_nodes(model.graph, expand_names(model, list(model_config.keep_precision)), "keep_precision")
    except TrtqError as exc:
        message = str(exc).removeprefix("keep_precision: ").removeprefix("--keep-precision: ")
        checker.problem(f"{model_config.key}.keep_precision", message)

