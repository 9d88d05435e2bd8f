"""The data options shared by ``trtq calibrate``, ``evaluate``, ``sensitivity``, ``export`` and ``build``.

``@data_options`` adds them to a click command; ``batches_from_options(model, **kwargs)`` turns
the parsed values into :func:`trtq.data.open_batches`. Keeping both here means an option means
the same thing in every command.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from fractions import Fraction
from typing import Any, TypeVar

import click

from trtq.data import PRESETS, BatchSource, Preprocess, open_batches
from trtq.data.base import Warn
from trtq.data.preprocess import CHANNEL_ORDERS, INTERPOLATIONS, LAYOUTS
from trtq.model import Model
from trtq.shapes import parse_shape_spec

F = TypeVar("F", bound=Callable[..., Any])


class SizeType(click.ParamType):
    """``HxW`` -> ``(H, W)``; a single ``N`` -> ``N`` (resize) or ``(N, N)`` (crop)."""

    name = "size"

    def __init__(self, single_is_square: bool):
        self.single_is_square = single_is_square

    def convert(self, value, param, ctx):
        if isinstance(value, (int, tuple)):
            return value
        text = str(value).strip().lower()
        parts = text.split("x")
        if len(parts) not in (1, 2) or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            self.fail(f"'{value}' is not N or HxW with positive integers (e.g. 256 or 224x224)", param, ctx)
        numbers = tuple(int(p) for p in parts)
        if len(numbers) == 2:
            return numbers
        return (numbers[0], numbers[0]) if self.single_is_square else numbers[0]


class FloatListType(click.ParamType):
    """``0.485,0.456,0.406`` -> ``(0.485, 0.456, 0.406)``."""

    name = "floats"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return tuple(float(Fraction(p.strip())) for p in str(value).split(",") if p.strip())
        except (ValueError, ZeroDivisionError):
            self.fail(f"'{value}' is not a comma-separated list of numbers", param, ctx)


class ScaleType(click.ParamType):
    """A number or a fraction: ``0.00392156862745098`` or ``1/255``."""

    name = "number"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        try:
            return float(Fraction(str(value).strip()))
        except (ValueError, ZeroDivisionError):
            self.fail(f"'{value}' is not a number or a fraction like 1/255", param, ctx)


_PRESET_HELP = "; ".join(f"{p.name}: {p.summary}" for p in PRESETS.values())

_OPTIONS = [
    click.option(
        "--data",
        type=click.Path(),
        default=None,
        help="Calibration data: a folder of images (searched recursively, sorted by path), an .npy file "
        "(single-input models), an .npz file (one array per input, keyed by input name), or a folder of "
        ".npy/.npz files. Arrays stack samples on axis 0.",
    ),
    click.option(
        "--data-loader-script",
        metavar="FILE.py[:FUNC]",
        default=None,
        help="Python script whose function FUNC (default load_data) yields dicts {input name: array}, "
        "each one full batch (Polygraphy's convention). Instead of --data.",
    ),
    click.option(
        "--shapes",
        metavar="NAME:DIMS,...",
        default=None,
        help="Shapes for inputs with dynamic dimensions, trtexec syntax (e.g. input:1x3x224x224). "
        "The batch dimension follows --batch-size.",
    ),
    click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=None,
        help="Samples per batch [default: the model's fixed batch, else 1]. A last partial batch is fed "
        "when the batch dimension is dynamic, dropped when the model fixes it.",
    ),
    click.option(
        "--max-samples",
        type=click.IntRange(min=1),
        default=None,
        help="Use at most N samples: the first N, or with --seed a random subset of N (kept in order).",
    ),
    click.option("--seed", type=int, default=None, help="Seed for the random --max-samples subset."),
    click.option(
        "--preset",
        type=click.Choice(list(PRESETS), case_sensitive=False),
        default=None,
        help=f"Image preprocessing preset [default: raw255]. {_PRESET_HELP}. Explicit options override it.",
    ),
    click.option(
        "--resize",
        type=SizeType(single_is_square=False),
        metavar="N|HxW",
        default=None,
        help="Resize images: N sets the shorter side (aspect ratio kept), HxW sets the exact size "
        "[default: the model's height and width].",
    ),
    click.option(
        "--crop",
        type=SizeType(single_is_square=True),
        metavar="N|HxW",
        default=None,
        help="Center-crop after --resize (e.g. --resize 256 --crop 224).",
    ),
    click.option(
        "--interpolation",
        type=click.Choice(list(INTERPOLATIONS), case_sensitive=False),
        default=None,
        help="Resize filter [default: bilinear].",
    ),
    click.option(
        "--scale",
        type=ScaleType(),
        default=None,
        help="Multiply 0-255 pixel values by this (e.g. 1/255) before --mean/--std.",
    ),
    click.option(
        "--mean",
        type=FloatListType(),
        metavar="M[,M,M]",
        default=None,
        help="Subtract per channel, after --scale, listed in --channel-order order.",
    ),
    click.option(
        "--std",
        type=FloatListType(),
        metavar="S[,S,S]",
        default=None,
        help="Divide per channel, after --mean, listed in --channel-order order.",
    ),
    click.option(
        "--channel-order",
        type=click.Choice(list(CHANNEL_ORDERS), case_sensitive=False),
        default=None,
        help="Channels fed to the model [default: RGB for 3 channels, GRAY for 1].",
    ),
    click.option(
        "--layout",
        type=click.Choice(list(LAYOUTS), case_sensitive=False),
        default=None,
        help="Image tensor layout [default: from where the model's 1- or 3-channel dimension is].",
    ),
    click.option(
        "--input",
        "input_name",
        metavar="NAME",
        default=None,
        help="The model input that an image folder or .npy file feeds (its only data input).",
    ),
]


def data_options(func: F) -> F:
    """Add the data options to a click command (in the order listed in ``--help``)."""
    for option in reversed(_OPTIONS):
        func = option(func)
    return func


def data_given(kwargs: dict[str, Any]) -> bool:
    """Whether the parsed ``@data_options`` name any data (``--data`` or ``--data-loader-script``)."""
    return bool(kwargs.get("data") or kwargs.get("data_loader_script"))


def batches_from_options(model: Model, *, warn: Warn | None = None, **kwargs: Any) -> BatchSource:
    """``open_batches`` from the values ``@data_options`` parsed; other keyword arguments are ignored,
    so a command can pass its whole ``**kwargs``."""
    if not data_given(kwargs):
        raise click.UsageError("give --data PATH or --data-loader-script FILE.py[:FUNC]")
    return open_batches(
        model,
        kwargs.get("data"),
        loader_script=kwargs.get("data_loader_script"),
        shapes=parse_shape_spec(kwargs.get("shapes")),
        batch_size=kwargs.get("batch_size"),
        max_samples=kwargs.get("max_samples"),
        seed=kwargs.get("seed"),
        preprocess=Preprocess(**{f.name: kwargs.get(f.name) for f in fields(Preprocess)}),
        input_name=kwargs.get("input_name"),
        warn=warn,
    )
