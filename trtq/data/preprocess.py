"""Image preprocessing: what the user declares (:class:`Preprocess`), what the model implies, and
the resolved :class:`ImagePlan` that turns one image file into one model sample.

The value pipeline, in this order (every step is explicit so that calibration sees exactly what
the model will see in production):

1. decode with Pillow and apply the EXIF orientation (``ImageOps.exif_transpose``);
2. convert to the model's channel count: 3 channels -> RGB, 1 channel -> grayscale (Pillow's
   ITU-R 601-2 luma). Alpha (RGBA, LA, PA, palette transparency) is **dropped**, not composited:
   the stored colour values are kept, as ``Image.convert("RGB")`` -- what most training pipelines
   did -- does. 16-bit images (modes I;16*, I) are scaled to 0-255 by ``x / 257`` (65535 -> 255);
   float images (mode F) are taken to be on the 0-1 scale and multiplied by 255 (values clipped).
   Both keep their fractional values (no rounding to 8 bits);
3. geometry: resize (exact ``HxW``; or shorter side to ``N`` keeping the aspect ratio, as
   torchvision's ``Resize(N)``), then an optional center crop (as torchvision's ``CenterCrop``;
   regions outside the image are black);
4. values: ``(x * scale - mean) / std`` on the 0-255 pixel values ``x``. ``mean`` and ``std``
   are therefore in the units *after* ``scale`` (imagenet: scale 1/255, mean 0.485...);
5. channel order (RGB or BGR) and layout (NCHW or NHWC), then the model's dtype.

Explicit ``--mean``/``--std`` values are listed in the order of the channels the model receives
(``--channel-order``). A preset's values are per colour (R, G, B) and follow the channel order:
``--preset caffe`` feeds BGR with the B mean first.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, fields

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from trtq.data.base import Warn, format_dims
from trtq.errors import TrtqError, first_line
from trtq.model import InputSpec, resolve_shape

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
CHANNEL_ORDERS = ("RGB", "BGR", "GRAY")
LAYOUTS = ("NCHW", "NHWC")

_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass(frozen=True)
class Preset:
    """A named set of preprocessing defaults; explicit flags override each field."""

    name: str
    summary: str
    scale: float
    mean: tuple[float, ...] = (0.0,)  # per colour R, G, B (or one value for all channels)
    std: tuple[float, ...] = (1.0,)
    channel_order: str | None = None  # None: RGB for 3 channels, GRAY for 1
    layout: str | None = None  # used only when the model's shape does not tell the layout
    crop_fraction: float | None = None  # default geometry when no --resize/--crop is given
    interpolation: str = "bilinear"


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("raw255", "pixel values 0-255 as floats, no normalisation", scale=1.0),
        Preset("unit", "x/255: values 0-1", scale=1 / 255),
        Preset(
            "imagenet",
            "x/255, mean 0.485,0.456,0.406, std 0.229,0.224,0.225, RGB, NCHW; shorter side to "
            "target/0.875 then center crop (torchvision's 256->224)",
            scale=1 / 255,
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            channel_order="RGB",
            layout="NCHW",
            crop_fraction=0.875,
        ),
        Preset("tf", "x/127.5 - 1: values -1..1 (Keras 'tf' mode)", scale=1 / 127.5, mean=(1.0,)),
        Preset(
            "caffe",
            "BGR, 0-255 minus mean B,G,R 103.939,116.779,123.68 (Keras 'caffe' mode)",
            scale=1.0,
            mean=(123.68, 116.779, 103.939),
            channel_order="BGR",
        ),
    )
}
DEFAULT_PRESET = "raw255"


@dataclass(frozen=True)
class Preprocess:
    """Preprocessing as the user declared it; ``None`` means "not given" (preset or model decides).

    ``resize`` is an int (shorter side, aspect ratio kept) or ``(H, W)`` (exact size);
    ``crop`` is ``(H, W)`` (center crop after the resize).
    """

    preset: str | None = None
    resize: int | tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    interpolation: str | None = None
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channel_order: str | None = None
    layout: str | None = None

    def given(self) -> list[str]:
        """The options that were set, as flag names (for "applies only to image folders" errors)."""
        return ["--" + f.name.replace("_", "-") for f in fields(self) if getattr(self, f.name) is not None]


@dataclass(frozen=True)
class ImagePlan:
    """Everything needed to turn an image file into one sample of ``input_name``."""

    input_name: str
    preset: str
    channels: int
    channel_order: str
    layout: str
    height: int
    width: int
    resize: tuple[str, int, int] | None  # ("exact", H, W) | ("shorter", N, N) | ("cover", H, W)
    crop: tuple[int, int] | None
    interpolation: str
    scale: float
    mean: tuple[float, ...]  # one per channel, in the order the model receives them
    std: tuple[float, ...]
    dtype: np.dtype = field(default=np.dtype(np.float32))

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        if self.layout == "NCHW":
            return (self.channels, self.height, self.width)
        return (self.height, self.width, self.channels)

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and all(m == 0.0 for m in self.mean) and all(s == 1.0 for s in self.std)

    def describe(self) -> str:
        return f"preset {self.preset}, {self.height}x{self.width}, {self.channel_order}, {self.layout}"

    def to_json(self) -> dict:
        return {
            "input": self.input_name,
            "preset": self.preset,
            "size": [self.height, self.width],
            "resize": list(self.resize) if self.resize else None,
            "crop": list(self.crop) if self.crop else None,
            "interpolation": self.interpolation,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "channel_order": self.channel_order,
            "layout": self.layout,
            "dtype": str(self.dtype),
            "alpha": "dropped",
            "exif_orientation": "applied",
        }


def _infer_layout(spec: InputSpec, dims: tuple[int | None, ...], declared: str | None, preset: Preset) -> str:
    if declared is not None:
        return declared.upper()
    nchw = dims[1] in (1, 3)
    nhwc = dims[3] in (1, 3)
    if nchw and not nhwc:
        return "NCHW"
    if nhwc and not nchw:
        return "NHWC"
    if preset.layout is not None and not (nchw and nhwc):
        return preset.layout
    raise TrtqError(
        f"cannot tell the layout of input '{spec.name}' {format_dims(dims)} from its shape: "
        "pass --layout NCHW or --layout NHWC"
    )


def _per_channel(values: tuple[float, ...], channels: int, what: str, input_name: str) -> tuple[float, ...]:
    if len(values) == 1:
        return tuple(float(values[0]) for _ in range(channels))
    if len(values) != channels:
        raise TrtqError(
            f"{what} has {len(values)} values but input '{input_name}' takes {channels} channel(s); "
            f"give 1 or {channels}"
        )
    return tuple(float(v) for v in values)


def plan_image_input(
    spec: InputSpec,
    shape_override: tuple[int, ...] | None,
    preprocess: Preprocess,
    warn: Warn,
) -> ImagePlan:
    """Resolve the declared preprocessing against the model input; every conflict is a TrtqError."""
    pre = preprocess
    preset_name = (pre.preset or DEFAULT_PRESET).lower()
    if preset_name not in PRESETS:
        raise TrtqError(f"unknown preset '{pre.preset}' (known: {', '.join(PRESETS)})")
    preset = PRESETS[preset_name]

    dims = resolve_shape(spec, shape_override, None)
    if not dims:
        raise TrtqError(
            f"input '{spec.name}' has no shape in the model; pass --shapes {spec.name}:1x3xHxW "
            "(or 1xHxWx3) so that images can be fed to it"
        )
    if len(dims) != 4:
        raise TrtqError(
            f"an image folder feeds 4-dimensional inputs (NCHW or NHWC), but input '{spec.name}' is "
            f"{format_dims(dims)}; use an .npy/.npz file or --data-loader-script"
        )
    layout = _infer_layout(spec, dims, pre.layout, preset)
    c_axis, h_axis, w_axis = (1, 2, 3) if layout == "NCHW" else (3, 1, 2)

    order = pre.channel_order.upper() if pre.channel_order else None
    if order is not None and order not in CHANNEL_ORDERS:
        raise TrtqError(f"unknown channel order '{pre.channel_order}' (known: {', '.join(CHANNEL_ORDERS)})")
    channels = dims[c_axis]
    if channels is None:
        channels = 1 if (order or preset.channel_order) == "GRAY" else 3
    if channels not in (1, 3):
        raise TrtqError(
            f"input '{spec.name}' {format_dims(dims)} takes {channels} channels in {layout} layout; "
            "an image folder can feed 1 (grayscale) or 3 (RGB/BGR) channels"
        )
    if order is None:
        order = "GRAY" if channels == 1 else (preset.channel_order or "RGB")
    if (order == "GRAY") != (channels == 1):
        raise TrtqError(
            f"--channel-order {order} does not fit input '{spec.name}', which takes {channels} channel(s)"
        )

    interpolation = (pre.interpolation or preset.interpolation).lower()
    if interpolation not in INTERPOLATIONS:
        raise TrtqError(f"unknown interpolation '{pre.interpolation}' (known: {', '.join(INTERPOLATIONS)})")

    target_h, target_w = dims[h_axis], dims[w_axis]
    resize, crop, out_size = _plan_geometry(spec, dims, target_h, target_w, pre, preset)

    scale = float(pre.scale) if pre.scale is not None else preset.scale
    if pre.mean is not None:
        mean = _per_channel(pre.mean, channels, "--mean", spec.name)
    else:
        mean = _preset_values(preset, preset.mean, channels, order, "mean", spec.name)
    if pre.std is not None:
        std = _per_channel(pre.std, channels, "--std", spec.name)
    else:
        std = _preset_values(preset, preset.std, channels, order, "std", spec.name)
    if any(s == 0 for s in std):
        raise TrtqError("--std values must not be zero")

    dtype = spec.dtype
    plan = ImagePlan(
        input_name=spec.name,
        preset=preset_name,
        channels=channels,
        channel_order=order,
        layout=layout,
        height=out_size[0],
        width=out_size[1],
        resize=resize,
        crop=crop,
        interpolation=interpolation,
        scale=scale,
        mean=mean,
        std=std,
        dtype=dtype,
    )
    if dtype.kind in "iub" and not plan.is_identity:
        raise TrtqError(
            f"input '{spec.name}' is {dtype}, so pixel values are fed unnormalised; "
            f"use --preset raw255 (and no --scale/--mean/--std)"
        )
    if dtype.kind not in "iubf":
        raise TrtqError(f"input '{spec.name}' is {dtype}; an image folder feeds float or integer inputs")
    nothing_declared = pre.preset is None and pre.scale is None and pre.mean is None and pre.std is None
    if nothing_declared and channels == 3 and dtype.kind == "f":
        warn(
            f"no --preset given: feeding raw 0-255 pixel values to input '{spec.name}'; "
            "most RGB models expect --preset imagenet, unit or tf"
        )
    return plan


def _preset_values(
    preset: Preset, values: tuple[float, ...], channels: int, order: str, what: str, input_name: str
) -> tuple[float, ...]:
    if len(values) == 1:
        return tuple(float(values[0]) for _ in range(channels))
    if channels == 1:
        raise TrtqError(
            f"preset {preset.name} has a per-colour {what} but input '{input_name}' takes 1 channel; "
            "pass --mean and --std"
        )
    listed = tuple(float(v) for v in values)
    return listed[::-1] if order == "BGR" else listed


def _plan_geometry(
    spec: InputSpec,
    dims: tuple[int | None, ...],
    target_h: int | None,
    target_w: int | None,
    pre: Preprocess,
    preset: Preset,
) -> tuple[tuple[str, int, int] | None, tuple[int, int] | None, tuple[int, int]]:
    """Pick resize + crop and the output size; it must match what the model (or --shapes) fixes."""
    resize: tuple[str, int, int] | None = None
    if isinstance(pre.resize, int):
        resize = ("shorter", pre.resize, pre.resize)
    elif pre.resize is not None:
        resize = ("exact", int(pre.resize[0]), int(pre.resize[1]))
    crop = tuple(int(v) for v in pre.crop) if pre.crop is not None else None

    if resize is None and crop is None:
        if target_h is None or target_w is None:
            raise TrtqError(
                f"input '{spec.name}' {format_dims(dims)} does not fix its height and width, and nothing "
                f"else does: pass --resize HxW (or --resize N --crop HxW), or --shapes {spec.name}:..."
            )
        if preset.crop_fraction is not None:
            cover = ("cover", round(target_h / preset.crop_fraction), round(target_w / preset.crop_fraction))
            return cover, (target_h, target_w), (target_h, target_w)
        return ("exact", target_h, target_w), None, (target_h, target_w)

    if crop is not None:
        out_size = crop
    elif resize is not None and resize[0] == "exact":
        out_size = (resize[1], resize[2])
    else:
        raise TrtqError(
            f"--resize {pre.resize} sets only the shorter side, so image sizes would vary; "
            "add --crop HxW or give --resize HxW"
        )
    for axis_name, want, got in (("height", target_h, out_size[0]), ("width", target_w, out_size[1])):
        if want is not None and want != got:
            raise TrtqError(
                f"the preprocessing produces {out_size[0]}x{out_size[1]} images but input '{spec.name}' "
                f"{format_dims(dims)} fixes the {axis_name} to {want}"
            )
    return resize, crop, out_size  # type: ignore[return-value]


class UndecodableImage(Exception):
    """The file is not an image Pillow can read (or its pixel mode cannot be converted)."""


def _to_working_mode(image: Image.Image, channels: int) -> Image.Image:
    """Return an image in mode L or RGB (8-bit) or F (0-255 float gray, from 16-bit/float data)."""
    mode = image.mode
    if mode in _HIGH_BIT_MODES:
        values = np.clip(np.asarray(image).astype(np.float32), 0, 65535) / np.float32(257.0)
        return Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))
    if mode == "F":
        values = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * np.float32(255.0)
        return Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))
    if mode == "P":
        # Palette transparency must go through RGBA (Pillow warns otherwise); alpha is then dropped.
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "1":
        image = image.convert("L")
    elif mode in ("LA", "La"):
        image = image.getchannel("L")
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    if channels == 1 and image.mode == "RGB":
        image = image.convert("L")
    elif channels == 3 and image.mode == "L":
        image = image.convert("RGB")
    return image


def _geometry(image: Image.Image, plan: ImagePlan) -> Image.Image:
    width, height = image.size
    if plan.resize is not None:
        kind, a, b = plan.resize
        if kind == "exact":
            size = (b, a)
        elif kind == "shorter":  # torchvision Resize(N): the longer side is truncated, not rounded
            size = (a, int(a * height / width)) if width <= height else (int(a * width / height), a)
        elif a * width >= b * height:  # cover a x b, height limiting (square a x b: same as shorter)
            size = (max(b, int(a * width / height)), a)
        else:  # cover a x b, width limiting
            size = (b, max(a, int(b * height / width)))
        if size != (width, height):
            image = image.resize(size, INTERPOLATIONS[plan.interpolation])
    if plan.crop is not None:
        crop_h, crop_w = plan.crop
        width, height = image.size
        left = int(round((width - crop_w) / 2.0))
        top = int(round((height - crop_h) / 2.0))
        if (left, top, crop_w, crop_h) != (0, 0, width, height):
            image = image.crop((left, top, left + crop_w, top + crop_h))  # outside the image: black
    return image


def decode_image(data: bytes, plan: ImagePlan) -> np.ndarray:
    """One image file's bytes -> one sample (``plan.sample_shape``, ``plan.dtype``).

    Raises :class:`UndecodableImage` when Pillow cannot read or convert the file.
    """
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            try:
                image = ImageOps.exif_transpose(opened)
            except Exception:  # a malformed EXIF block: the pixels are fine, the orientation unknown
                image = opened.copy()
            image = _to_working_mode(image, plan.channels)
    except UnidentifiedImageError as exc:  # its message names the BytesIO object, not the file
        raise UndecodableImage("Pillow does not recognise it as an image") from exc
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError, ...)
        raise UndecodableImage(first_line(exc)) from exc

    image = _geometry(image, plan)
    compute = np.float64 if plan.dtype == np.float64 else np.float32
    pixels = np.asarray(image, dtype=compute)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
        if plan.channels == 3:  # 16-bit / float grayscale fed to an RGB input
            pixels = np.repeat(pixels, 3, axis=2)
    if plan.channel_order == "BGR":
        pixels = pixels[..., ::-1]
    if not plan.is_identity:
        mean = np.asarray(plan.mean, dtype=compute)
        std = np.asarray(plan.std, dtype=compute)
        pixels = (pixels * compute(plan.scale) - mean) / std
    if plan.layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    if plan.dtype.kind in "iub":
        info = np.iinfo(plan.dtype) if plan.dtype.kind != "b" else None
        pixels = np.rint(pixels)
        if info is not None:
            pixels = np.clip(pixels, info.min, info.max)
    return np.ascontiguousarray(pixels, dtype=plan.dtype)
