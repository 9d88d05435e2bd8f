"""Cut text-line-shaped crops (48x192, RGB) from the bundled natural images for the calibration benchmark.

    python scripts/make_bench_data.py OUT_DIR [--count 96]

The crops are real photographs (calib_data/images, CC0/public domain), deterministic (seeded
positions), so every benchmark run sees the same pixels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

IMAGES = Path(__file__).resolve().parent.parent / "calib_data" / "images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--count", type=int, default=96)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sources = [Image.open(p).convert("RGB") for p in sorted(IMAGES.iterdir())]
    for index in range(args.count):
        image = sources[index % len(sources)]
        width = int(rng.integers(192, max(193, image.width)))
        height = width // 4
        left = int(rng.integers(0, image.width - width + 1))
        top = int(rng.integers(0, image.height - height + 1))
        crop = image.crop((left, top, left + width, top + height)).resize((192, 48), Image.Resampling.BILINEAR)
        crop.save(out / f"crop_{index:03d}.png")
    print(f"wrote {args.count} crops of 192x48 to {out}")


if __name__ == "__main__":
    main()
