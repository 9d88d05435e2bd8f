#!/usr/bin/env python3
"""Regenerate ``calib_data/mnist/`` from the MNIST test set in IDX format (and, optionally,
``calib_data/images/`` from scikit-image's bundled sample images).

    python scripts/make_calib_data.py /path/to/mnist-test [--out calib_data/mnist] [--count 300]
    python scripts/make_calib_data.py --images calib_data/images   # needs: pip install scikit-image

The folder must hold ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (gzipped with a
``.gz`` suffix, or not). The first ``--count`` digits of the test set become 28x28 grayscale PNG
files named ``NNNNN_L.png`` (index in the test set, label), so that sorted order is test-set
order, plus ``labels.csv`` (``file,label``). Pixel values are stored unchanged.

``--images`` writes a few CC0/public-domain ``skimage.data`` photographs (licenses in
calib_data/PROVENANCE.md), at most 384 pixels on the longer side: JPEG for the colour ones, a
grayscale PNG, and an RGBA PNG (an alpha vignette added to ``coffee``) to exercise conversions.
scikit-image is used only here; trtq does not depend on it.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np
from PIL import Image

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension


def _open_idx(folder: Path, stem: str) -> bytes:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            opener = gzip.open if candidate.suffix == ".gz" else open
            with opener(candidate, "rb") as f:
                return f.read()
    raise SystemExit(f"make_calib_data: {folder} has no {stem}[.gz]")


def read_idx(data: bytes, magic: int) -> np.ndarray:
    """Parse an IDX file (big-endian header: magic, then one uint32 per dimension, then uint8 data)."""
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(f"IDX magic is {found}, expected {magic}")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    start = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(data) - start < count:
        raise ValueError(f"IDX data is truncated: {len(data) - start} bytes for shape {dims}")
    return np.frombuffer(data, dtype=np.uint8, count=count, offset=start).reshape(dims)


def load_mnist(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N,28,28], labels uint8 [N]) of the MNIST test set in ``folder``."""
    images = read_idx(_open_idx(folder, "t10k-images-idx3-ubyte"), IMAGES_MAGIC)
    labels = read_idx(_open_idx(folder, "t10k-labels-idx1-ubyte"), LABELS_MAGIC)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    return images, labels


def write_digits(images: np.ndarray, labels: np.ndarray, out: Path, count: int) -> list[str]:
    """Write the first ``count`` digits as PNG files plus labels.csv; return the file names."""
    out.mkdir(parents=True, exist_ok=True)
    names = [f"{i:05d}_{int(labels[i])}.png" for i in range(min(count, len(images)))]
    for stale in out.glob("[0-9][0-9][0-9][0-9][0-9]_[0-9].png"):
        if stale.name not in names:
            stale.unlink()
    for i, name in enumerate(names):
        Image.fromarray(images[i]).save(out / name, optimize=True)
    rows = ["file,label"] + [f"{name},{int(labels[i])}" for i, name in enumerate(names)]
    (out / "labels.csv").write_text("\n".join(rows) + "\n")
    return names


# skimage.data function -> (file name, license line); only CC0 / public-domain images.
SKIMAGE_IMAGES = {
    "astronaut": ("astronaut.jpg", "public domain (NASA)"),
    "camera": ("camera_gray.png", "CC0 (Lav Varshney)"),
    "chelsea": ("chelsea.jpg", "CC0 (Stefan van der Walt)"),
    "coffee": ("coffee_rgba.png", "CC0 (Rachel Michetti); alpha vignette added by trtq"),
    "rocket": ("rocket.jpg", "public domain (SpaceX)"),
    "hubble_deep_field": ("hubble_deep_field.jpg", "public domain (NASA)"),
}
MAX_SIDE = 384


def write_skimage_images(out: Path) -> list[str]:
    """Save the SKIMAGE_IMAGES at modest size; returns the file names."""
    try:
        import skimage.data
    except ImportError:
        raise SystemExit("make_calib_data: --images needs scikit-image (pip install scikit-image)") from None
    out.mkdir(parents=True, exist_ok=True)
    for func, (name, _) in SKIMAGE_IMAGES.items():
        image = Image.fromarray(getattr(skimage.data, func)())
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        if name.endswith("_rgba.png"):
            h, w = image.height, image.width
            y, x = np.mgrid[0:h, 0:w]
            radius = np.hypot((y - h / 2) / (h / 2), (x - w / 2) / (w / 2))
            alpha = (np.clip(1.3 - radius, 0, 1) * 255).astype(np.uint8)
            image = Image.fromarray(np.dstack([np.asarray(image.convert("RGB")), alpha]))
        if name.endswith(".jpg"):
            image.convert("RGB").save(out / name, quality=85, optimize=True)
        else:
            image.save(out / name, optimize=True)
    return [name for name, _ in SKIMAGE_IMAGES.values()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "idx_folder", type=Path, nargs="?", help="folder with t10k-images-idx3-ubyte[.gz] and labels"
    )
    parser.add_argument("--out", type=Path, default=Path("calib_data/mnist"), help="output folder")
    parser.add_argument("--count", type=int, default=300, help="number of digits (from the start)")
    parser.add_argument("--images", type=Path, default=None, help="also write skimage sample images here")
    args = parser.parse_args(argv)
    if args.idx_folder is None and args.images is None:
        parser.error("give the IDX folder, --images DIR, or both")
    if args.idx_folder is not None:
        images, labels = load_mnist(args.idx_folder)
        names = write_digits(images, labels, args.out, args.count)
        print(f"wrote {len(names)} digits and labels.csv to {args.out}")
    if args.images is not None:
        names = write_skimage_images(args.images)
        print(f"wrote {len(names)} images to {args.images}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
