"""The data options shared by ``trtq calibrate``, ``evaluate``, ``sensitivity``, ``export`` and ``build``.

``@data_options`` adds them to a click command; ``batches_from_options(model, **kwargs)`` hands the
parsed values to :func:`trtq.data.options.open_batches_from_options`, the adapter ``trtq.toml`` uses
too. The option types wrap the library's parsers (:mod:`trtq.data.parsing`), so an option means the
same thing in every command and in the config file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from trtq.data import PRESETS, BatchSource
from trtq.data.base import Warn
from trtq.data.options import data_given, open_batches_from_options
from trtq.data.parsing import parse_fraction, parse_image_size, parse_number_list
from trtq.data.preprocess import CHANNEL_ORDERS, INTERPOLATIONS, LAYOUTS
from trtq.errors import TrtqError
from trtq.model import Model

__all__ = ["FloatListType", "ScaleType", "SizeType", "batches_from_options", "data_given", "data_options"]

F = TypeVar("F", bound=Callable[..., Any])


class _ParsedType(click.ParamType):
    """A click type around one of :mod:`trtq.data.parsing`'s parsers: its error becomes click's
    "Invalid value for '--option'" usage error; values of ``already_parsed`` types (defaults) pass."""

    already_parsed: tuple[type, ...] = ()

    def parse(self, text: str) -> Any:
        raise NotImplementedError

    def convert(self, value, param, ctx):
        if isinstance(value, self.already_parsed):
            return value
        try:
            return self.parse(value)
        except TrtqError as exc:
            self.fail(str(exc), param, ctx)


class SizeType(_ParsedType):
    """``HxW`` -> ``(H, W)``; a single ``N`` -> ``N`` (resize) or ``(N, N)`` (crop)."""

    name = "size"
    already_parsed = (int, tuple)

    def __init__(self, single_is_square: bool):
        self.single_is_square = single_is_square

    def parse(self, text: str) -> int | tuple[int, int]:
        return parse_image_size(text, single_is_square=self.single_is_square)


class FloatListType(_ParsedType):
    """``0.485,0.456,0.406`` -> ``(0.485, 0.456, 0.406)``."""

    name = "floats"
    already_parsed = (tuple,)

    def parse(self, text: str) -> tuple[float, ...]:
        return parse_number_list(text)


class ScaleType(_ParsedType):
    """A number or a fraction: ``0.00392156862745098`` or ``1/255``."""

    name = "number"
    already_parsed = (float,)

    def parse(self, text: str) -> float:
        return parse_fraction(text)


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


def batches_from_options(model: Model, *, warn: Warn | None = None, **kwargs: Any) -> BatchSource:
    """``open_batches`` from the values ``@data_options`` parsed; other keyword arguments are ignored,
    so a command can pass its whole ``**kwargs``. No data is a usage error (it names the options)."""
    if not data_given(kwargs):
        raise click.UsageError("give --data PATH or --data-loader-script FILE.py[:FUNC]")
    return open_batches_from_options(model, kwargs, warn=warn)
