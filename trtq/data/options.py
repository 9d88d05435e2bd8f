"""The data options as one mapping -> :func:`trtq.data.open_batches`: the one adapter that every
command (through ``trtq.commands.options.data``) and the ``trtq.toml`` pipeline use, so an option
cannot mean one thing on the command line and another in the config file.

The keys are the command line's option names in Python form (``data``, ``data_loader_script``,
``shapes``, ``batch_size``, ``max_samples``, ``seed``, ``input_name`` and every field of
:class:`~trtq.data.preprocess.Preprocess`); a missing key or ``None`` means "not given".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from trtq.data import BatchSource, Preprocess, open_batches
from trtq.data.base import Warn
from trtq.data.script import parse_script_spec
from trtq.errors import TrtqError
from trtq.model import Model
from trtq.shapes import parse_shape_spec

PREPROCESS_KEYS = tuple(f.name for f in fields(Preprocess))
DATA_OPTION_KEYS = ("data", "data_loader_script", "shapes", "batch_size", "max_samples", "seed", *PREPROCESS_KEYS,
                    "input_name")


def data_given(options: Mapping[str, Any]) -> bool:
    """Whether the options name any data (``data`` or ``data_loader_script``)."""
    return bool(options.get("data") or options.get("data_loader_script"))


def data_input_files(options: Mapping[str, Any], prefix: str = "--data") -> dict[str, str | None]:
    """The files the data options read, by option name, for :func:`trtq.fileio.check_outputs` (a data folder is a
    path too: an output can only collide with it by being it)."""
    script = options.get("data_loader_script")
    return {prefix: options.get("data"),
            f"{prefix}-loader-script": str(parse_script_spec(script)[0]) if script else None}


def open_batches_from_options(model: Model, options: Mapping[str, Any], *, warn: Warn | None = None) -> BatchSource:
    """``open_batches`` from a mapping of data options; keys outside :data:`DATA_OPTION_KEYS` are ignored,
    so a command can pass all its parsed arguments. ``shapes`` is a trtexec spec (``input:1x3x224x224``)
    or an already parsed ``{name: dims}``.

    Raises :class:`TrtqError` when no data is named, and whatever ``open_batches`` raises.
    """
    if not data_given(options):
        raise TrtqError("give data (a path) or a data loader script (FILE.py[:FUNC])")
    shapes = options.get("shapes")
    data = options.get("data")
    return open_batches(
        model,
        str(data) if data is not None else None,
        loader_script=options.get("data_loader_script"),
        shapes=dict(shapes) if isinstance(shapes, Mapping) else parse_shape_spec(shapes),
        batch_size=options.get("batch_size"),
        max_samples=options.get("max_samples"),
        seed=options.get("seed"),
        preprocess=Preprocess(**{key: options.get(key) for key in PREPROCESS_KEYS}),
        input_name=options.get("input_name"),
        warn=warn,
    )
