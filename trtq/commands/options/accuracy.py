"""Click options shared by ``trtq evaluate`` and ``trtq sensitivity`` (and the glue they share), so that
an option means the same thing in both. The library side is :mod:`trtq.accuracy`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import click

from trtq.commands.options.common import quiet_option

F = TypeVar("F", bound=Callable[..., Any])


def _apply(func: F, options: list) -> F:
    for option in reversed(options):
        func = option(func)
    return func


def ranges_options(func: F) -> F:
    """``--cache`` / ``--ranges`` (exactly one) and ``--exclude``."""
    return _apply(func, [
        click.option("--cache", "--calibration-cache", "cache_path", type=click.Path(dir_okay=False),
                     help="TensorRT calibration cache with the activation ranges to evaluate."),
        click.option("--ranges", "ranges_path", type=click.Path(dir_okay=False),
                     help="Ranges JSON from trtq calibrate --json (instead of --cache)."),
        click.option("--exclude", multiple=True, metavar="NODE|@FILE",
                     help="Keep this node (ONNX node name or its output tensor) out of INT8, as trtq export "
                          "--exclude does. Repeatable; @FILE reads one name per line (# comments)."),
    ])


def label_options(func: F) -> F:
    return _apply(func, [
        click.option("--labels", "labels_path", type=click.Path(dir_okay=False),
                     help="Ground truth for top-1/top-5 accuracy: a .npy of integer labels in data order (before "
                          "--max-samples/--seed pick samples), or a CSV of file,label rows for an image folder."),
        click.option("--labels-from-folders", is_flag=True,
                     help="Image folder laid out as DATA/<class>/<image>: the class sub-folder is the label "
                          "(its number, or its index among the sorted folder names)."),
        click.option("--logits", metavar="OUTPUT",
                     help="The output holding class scores, for accuracy and top-1 agreement [default: the first].")
    ])


def report_options(func: F) -> F:
    return _apply(func, [
        click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the results as JSON."),
        click.option("--html", "html_path", type=click.Path(dir_okay=False),
                     help="Write a self-contained HTML report (inline SVG charts)."),
        click.option("--plot-dir", type=click.Path(file_okay=False),
                     help="Write the charts as SVG and PNG files into this folder (created if missing)."),
        click.option("--plot-tensor", multiple=True, metavar="TENSOR",
                     help="Draw the |x| histogram of this quantized activation (repeatable) [default: the ones "
                          "with the largest expected quantization error, up to 24 / the top layers' inputs]."),
        quiet_option(),
    ])


def check_outputs(json_path: str | None, html_path: str | None, plot_dir: str | None, keep_out: str | None = None, *,
                  reads: Mapping[str, str | None] | None = None) -> None:
    """Every output must be writable, and none of them a file the command reads, before the long work starts."""
    from trtq.accuracy.report import check_plot_dir
    from trtq.fileio import check_outputs as check_files

    check_files({"--json": json_path, "--html": html_path, "--keep-out": keep_out}, reads)
    if plot_dir:
        check_plot_dir(plot_dir)


def files_read(model_path: str | None, data_kwargs: Mapping[str, Any], exclude: Sequence[str] = (),
               **options: str | None) -> dict[str, str | None]:
    """What an accuracy command reads, by option name (``cache_path="x"`` -> ``--cache``; ``--exclude @FILE``),
    for :func:`check_outputs`."""
    from trtq.data.options import data_input_files
    from trtq.export import name_list_files

    named = {"--" + key.removesuffix("_path").replace("_", "-"): value for key, value in options.items()}
    return {"MODEL": model_path, **data_input_files(data_kwargs), **named, **name_list_files(exclude)}


def load_inputs(model_path: str, cache_path: str | None, ranges_path: str | None, exclude: tuple[str, ...],
                labels_path: str | None, labels_from_folders: bool):
    """Model, ranges, exclusions and labels, all checked before any data is read."""
    from trtq.accuracy.labels import read_labels
    from trtq.export import load_amax, read_name_list
    from trtq.model import load_model

    if (cache_path is None) == (ranges_path is None):
        raise click.UsageError("give exactly one of --cache CACHE or --ranges RANGES.json")
    names = read_name_list(exclude)
    labels = read_labels(labels_path, labels_from_folders)
    model = load_model(model_path)
    amax = load_amax(cache=cache_path, ranges=ranges_path)
    return model, amax, names, labels
