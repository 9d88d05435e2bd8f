"""Calibration and evaluation data: streaming batch sources for an ONNX model's inputs.

:func:`open_batches` picks the source from what ``data`` points at -- a folder of images, an
``.npy``/``.npz`` file, a folder of ``.npy``/``.npz`` files -- or runs a data-loader script, and
validates everything cheap (paths, names, shapes, dtypes, the preprocessing against the model,
one image decoded, the script's first batch) before returning. Iterating the returned
:class:`BatchSource` then reads the data again, one batch at a time.
"""

from __future__ import annotations

from pathlib import Path

from trtq.data.arrays import ARRAY_EXTENSIONS, ArraySource, open_array_source
from trtq.data.base import BatchSource, Warn, default_warn, resolve_batch_size, select_indices
from trtq.data.images import ImageFolderSource, list_files, probe_first_image
from trtq.data.preprocess import (
    DEFAULT_PRESET,
    IMAGE_EXTENSIONS,
    INTERPOLATIONS,
    PRESETS,
    ImagePlan,
    Preprocess,
    plan_image_input,
)
from trtq.data.script import ScriptSource, load_function, parse_script_spec
from trtq.errors import TrtqError
from trtq.model import Model, check_shapes_known, resolve_shape

__all__ = [
    "ARRAY_EXTENSIONS",
    "DEFAULT_PRESET",
    "IMAGE_EXTENSIONS",
    "INTERPOLATIONS",
    "PRESETS",
    "ArraySource",
    "BatchSource",
    "ImageFolderSource",
    "ImagePlan",
    "Preprocess",
    "ScriptSource",
    "open_batches",
]


def open_batches(
    model: Model,
    data: str | None = None,
    *,
    loader_script: str | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    batch_size: int | None = None,
    max_samples: int | None = None,
    seed: int | None = None,
    preprocess: Preprocess | None = None,
    input_name: str | None = None,
    warn: Warn | None = None,
) -> BatchSource:
    """Open and validate a data source for ``model``; raises :class:`TrtqError` on any problem.

    ``data``: a folder of images, an ``.npy``/``.npz`` file, or a folder of ``.npy``/``.npz`` files.
    ``loader_script``: ``file.py[:function]`` (instead of ``data``).
    ``shapes``: ``--shapes`` (parsed); fixes dynamic dimensions, must agree with the model.
    ``preprocess``: image preprocessing (image folders only).
    ``input_name``: the input an image folder or ``.npy`` file feeds (the model's only data input).
    """
    warn = default_warn if warn is None else warn
    shapes = dict(shapes or {})
    preprocess = preprocess or Preprocess()
    if data and loader_script:
        raise TrtqError("give either --data or --data-loader-script, not both")
    if not data and not loader_script:
        raise TrtqError("no data given: pass --data PATH or --data-loader-script FILE.py[:FUNCTION]")
    check_shapes_known(model, shapes)
    if max_samples is not None and max_samples < 1:
        raise TrtqError(f"--max-samples must be at least 1 (got {max_samples})")
    if batch_size is not None and batch_size < 1:
        raise TrtqError(f"--batch-size must be at least 1 (got {batch_size})")
    if input_name is not None:
        model.input(input_name)  # an unknown name is an error that lists the inputs
    specs = model.inputs
    options = {"max_samples": max_samples, "seed": seed}
    expected = {s.name: resolve_shape(s, shapes.get(s.name), None) for s in specs}

    if loader_script:
        _reject_preprocess(preprocess, "a data loader script")
        if input_name is not None:
            raise TrtqError("--input applies to an image folder or an .npy file, not a data loader script")
        if seed is not None:
            warn("--seed is ignored with --data-loader-script: its batches are fed in the order it yields them")
        path, function = parse_script_spec(loader_script)
        func = load_function(path, function)
        return ScriptSource(path, function, func, specs, expected, batch_size, max_samples, options, warn)

    if seed is not None and max_samples is None:
        warn("--seed has no effect without --max-samples: every sample is fed")
    path = Path(data)
    if not path.exists():
        raise TrtqError(f"data path not found: {path}")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in ARRAY_EXTENSIONS:
            return _open_arrays(path, None, specs, expected, shapes, batch_size, max_samples, seed,
                                preprocess, input_name, options, warn)
        if suffix in IMAGE_EXTENSIONS:
            raise TrtqError(f"--data {path} is a single image; give the folder that holds the images")
        raise TrtqError(
            f"cannot use {path} as data: expected a folder of images, an .npy or an .npz file"
        )
    if not path.is_dir():
        raise TrtqError(f"cannot use {path} as data: not a file or a folder")
    found = list_files(path, IMAGE_EXTENSIONS + ARRAY_EXTENSIONS)
    arrays = [f for f in found if f.lower().endswith(ARRAY_EXTENSIONS)]
    images = [f for f in found if not f.lower().endswith(ARRAY_EXTENSIONS)]
    if images and arrays:
        raise TrtqError(
            f"{path} holds both images ({images[0]}, ...) and arrays ({arrays[0]}, ...); "
            "point --data at one kind"
        )
    if arrays:
        return _open_arrays(path, arrays, specs, expected, shapes, batch_size, max_samples, seed,
                            preprocess, input_name, options, warn)
    if not images:
        raise TrtqError(
            f"{path} holds no images ({', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)}) "
            "and no .npy/.npz files"
        )

    names = [s.name for s in specs]
    if len(specs) > 1:
        if input_name is None:
            raise TrtqError(
                f"the model has {len(specs)} data inputs ({', '.join(names)}) but an image folder feeds "
                "only one; use an .npz file with one array per input, or --data-loader-script"
            )
        others = ", ".join(n for n in names if n != input_name)
        raise TrtqError(
            f"an image folder feeds only input '{input_name}', but the model's other inputs ({others}) "
            "need data too; use an .npz file with one array per input, or --data-loader-script"
        )
    spec = specs[0]
    batch, static = resolve_batch_size([spec], shapes, batch_size)
    plan = plan_image_input(spec, shapes.get(spec.name), preprocess, warn)
    selected = select_indices(len(images), max_samples, seed)
    chosen = [images[i] for i in selected]
    if static and len(chosen) < batch:
        raise TrtqError(
            f"{path} gives {len(chosen)} image(s), fewer than the model's fixed batch of {batch}"
        )
    probe_first_image(path, chosen, plan)
    return ImageFolderSource(path, images, selected, plan, batch, static, options, warn)


def _reject_preprocess(preprocess: Preprocess, what: str) -> None:
    given = preprocess.given()
    if given:
        raise TrtqError(f"{', '.join(given)} apply to image folders only, not to {what}")


def _open_arrays(
    path: Path,
    files: list[str] | None,
    specs,
    expected,
    shapes,
    batch_size,
    max_samples,
    seed,
    preprocess: Preprocess,
    input_name: str | None,
    options: dict,
    warn: Warn,
) -> ArraySource:
    what = "an .npz file" if path.suffix.lower() == ".npz" else "arrays" if files is None else "a folder of arrays"
    _reject_preprocess(preprocess, what)
    if input_name is not None and (len(specs) != 1 or path.suffix.lower() == ".npz" or files is not None):
        raise TrtqError(
            "--input applies to an image folder or an .npy file feeding the model's only data input; "
            ".npz arrays are matched to inputs by name"
        )
    batch, static = resolve_batch_size(specs, shapes, batch_size)
    return open_array_source(path, files, specs, expected, batch, static, max_samples, seed, options, warn)
