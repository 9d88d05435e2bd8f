"""Data sources on real data: the bundled MNIST digits and skimage photographs in calib_data/,
plus images and arrays made here with Pillow and numpy for the conversions the bundle lacks."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import warnings
import zipfile
from pathlib import Path

import click
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper
from PIL import Image

from trtq.commands.options.data import batches_from_options, data_options
from trtq.data import ArraySource, ImageFolderSource, Preprocess, ScriptSource, open_batches
from trtq.data.arrays import _MappedReader, _ZipStreamReader
from trtq.errors import TrtqError
from trtq.model import load_model

ROOT = Path(__file__).resolve().parents[1]
CALIB = ROOT / "calib_data"
MNIST_IDX = ROOT / "tests" / "data" / "mnist-t10k-first300"
CHELSEA = CALIB / "images" / "chelsea.jpg"  # 384x255 RGB photo of an orange cat
COFFEE_RGBA = CALIB / "images" / "coffee_rgba.png"
CAMERA_GRAY = CALIB / "images" / "camera_gray.png"

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


# ---------------------------------------------------------------- helpers


def make_model(tmp_path: Path, inputs: list[tuple[str, int, list]], name: str = "model.onnx"):
    """An Identity-per-input ONNX model with the given inputs (dims: int, or str for a dynamic dim)."""
    graph_inputs = [helper.make_tensor_value_info(n, t, dims) for n, t, dims in inputs]
    graph_outputs = [helper.make_tensor_value_info(f"{n}_out", t, dims) for n, t, dims in inputs]
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"]) for n, _, _ in inputs]
    graph = helper.make_graph(nodes, "g", graph_inputs, graph_outputs)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    path = tmp_path / name
    onnx.save(proto, str(path))
    return load_model(path)


def rgb_model(tmp_path: Path, dims=("N", 3, 224, 224), dtype=TensorProto.FLOAT, file="model.onnx"):
    """A model with one image input named x."""
    return make_model(tmp_path, [("x", dtype, list(dims))], name=file)


def one_image_folder(tmp_path: Path, *sources: Path, folder: str = "imgs") -> Path:
    out = tmp_path / folder
    out.mkdir()
    for src in sources:
        shutil.copy(src, out / src.name)
    return out


def first_batch(source) -> dict[str, np.ndarray]:
    return next(iter(source))


class Warnings(list):
    def __call__(self, message: str) -> None:
        self.append(message)


def load_script_module():
    spec = importlib.util.spec_from_file_location("make_calib_data", ROOT / "scripts" / "make_calib_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mnist_model():
    return load_model(CALIB / "mnist-8.onnx")


@pytest.fixture(scope="module")
def mnist_idx():
    return load_script_module().load_mnist(MNIST_IDX)


# ---------------------------------------------------------------- bundled MNIST digits


def test_bundled_mnist_pngs_decode_to_the_idx_pixel_values(mnist_model, mnist_idx):
    images, labels = mnist_idx
    source = open_batches(mnist_model, str(CALIB / "mnist"))
    assert isinstance(source, ImageFolderSource)
    assert source.total_samples == 300 and source.batch_size == 1
    assert source.input_shapes == {"Input3": (1, 1, 28, 28)}
    assert source.description == f"300 images from {CALIB / 'mnist'} (preset raw255, 28x28, GRAY, NCHW)"
    fed = np.concatenate([b["Input3"] for b in source])
    assert fed.dtype == np.float32 and fed.flags.c_contiguous
    np.testing.assert_array_equal(fed, images[:, None].astype(np.float32))
    assert source.skipped == 0
    rows = (CALIB / "mnist" / "labels.csv").read_text().split()
    assert rows[0] == "file,label"
    files = [r.split(",") for r in rows[1:]]
    assert [int(label) for _, label in files] == labels.tolist()
    assert [name for name, _ in files] == sorted(p.name for p in (CALIB / "mnist").glob("*.png"))
    assert files[0] == ["00000_7.png", "7"]


def test_bundled_model_classifies_the_bundled_digits(mnist_model, mnist_idx):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(CALIB / "mnist-8.onnx"), providers=["CPUExecutionProvider"])
    source = open_batches(mnist_model, str(CALIB / "mnist"))
    predicted = np.array([int(session.run(None, batch)[0].argmax()) for batch in source])
    accuracy = float(np.mean(predicted == mnist_idx[1]))
    assert accuracy >= 0.97  # the model's test-set top-1 is 98.91%; raw 0-255 input is right for it


def test_make_calib_data_regenerates_the_bundled_digits(tmp_path, mnist_idx):
    module = load_script_module()
    assert module.main([str(MNIST_IDX), "--out", str(tmp_path / "mnist"), "--count", "25"]) == 0
    made = sorted(p.name for p in (tmp_path / "mnist").glob("*.png"))
    assert made == sorted(p.name for p in (CALIB / "mnist").glob("*.png"))[:25]
    for name in made:
        np.testing.assert_array_equal(
            np.asarray(Image.open(tmp_path / "mnist" / name)), np.asarray(Image.open(CALIB / "mnist" / name))
        )
    with pytest.raises(ValueError, match="magic"):
        module.read_idx(b"\x00\x00\x08\x01" + b"\x00" * 8, module.IMAGES_MAGIC)


# ---------------------------------------------------------------- presets, orderings, layouts


@pytest.mark.parametrize(
    ("preset", "low", "high"),
    [("raw255", 0.0, 255.0), ("unit", 0.0, 1.0), ("tf", -1.0, 1.0),
     ("imagenet", (0 - 0.485) / 0.229, (1 - 0.406) / 0.225)],
)
def test_presets_give_their_value_ranges(tmp_path, preset, low, high):
    model = rgb_model(tmp_path)
    folder = one_image_folder(tmp_path, *sorted((CALIB / "images").iterdir()))
    source = open_batches(model, str(folder), preprocess=Preprocess(preset=preset), batch_size=6)
    (batch,) = list(source)
    x = batch["x"]
    assert x.shape == (6, 3, 224, 224) and x.dtype == np.float32
    assert x.min() >= low - 1e-5 and x.max() <= high + 1e-5
    span = high - low
    assert x.max() - x.min() > 0.8 * span  # real photos use most of the range


def test_imagenet_is_unit_minus_mean_over_std(tmp_path):
    model = rgb_model(tmp_path)
    folder = one_image_folder(tmp_path, CHELSEA)
    unit = first_batch(open_batches(model, str(folder), preprocess=Preprocess(preset="unit", resize=(224, 224))))
    net = first_batch(open_batches(model, str(folder), preprocess=Preprocess(preset="imagenet", resize=(224, 224))))
    expected = (unit["x"] - IMAGENET_MEAN[None, :, None, None]) / IMAGENET_STD[None, :, None, None]
    np.testing.assert_allclose(net["x"], expected, rtol=1e-5, atol=1e-5)


def test_explicit_flags_override_the_preset(tmp_path):
    model = rgb_model(tmp_path)
    folder = one_image_folder(tmp_path, CHELSEA)
    raw = first_batch(open_batches(model, str(folder), preprocess=Preprocess(resize=(224, 224))))["x"]
    pre = Preprocess(preset="imagenet", resize=(224, 224), scale=1.0, mean=(10.0, 20.0, 30.0), std=(2.0,))
    got = first_batch(open_batches(model, str(folder), preprocess=pre))["x"]
    np.testing.assert_allclose(got, (raw - np.array([10, 20, 30], np.float32)[None, :, None, None]) / 2, atol=1e-4)


def _pillow_reference(path: Path, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8, resized with Pillow's bilinear filter (W, H order in Pillow)."""
    return np.asarray(Image.open(path).convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR))


def test_nchw_nhwc_and_bgr_put_a_known_pixel_where_they_claim(tmp_path):
    folder = one_image_folder(tmp_path, CHELSEA)
    ref = _pillow_reference(CHELSEA, (255, 384)).astype(np.float32)  # same size: no resampling
    y, x = 128, 192  # on the cat's orange fur: red > green > blue
    r, g, b = ref[y, x]
    assert r > g > b

    nchw = first_batch(open_batches(rgb_model(tmp_path, ("N", 3, 255, 384), file="a.onnx"), str(folder)))["x"]
    assert nchw.shape == (1, 3, 255, 384)
    np.testing.assert_array_equal(nchw[0, :, y, x], [r, g, b])
    np.testing.assert_array_equal(nchw[0].transpose(1, 2, 0), ref)

    nhwc = first_batch(open_batches(rgb_model(tmp_path, ("N", 255, 384, 3), file="b.onnx"), str(folder)))["x"]
    assert nhwc.shape == (1, 255, 384, 3)
    np.testing.assert_array_equal(nhwc[0, y, x], [r, g, b])
    np.testing.assert_array_equal(nhwc[0], ref)

    bgr = open_batches(rgb_model(tmp_path, ("N", 3, 255, 384), file="c.onnx"), str(folder),
                       preprocess=Preprocess(channel_order="bgr"))
    assert "BGR" in bgr.description
    np.testing.assert_array_equal(first_batch(bgr)["x"][0, :, y, x], [b, g, r])


def test_caffe_preset_reorders_its_mean_with_the_channels(tmp_path):
    folder = one_image_folder(tmp_path, CHELSEA)
    model = rgb_model(tmp_path, ("N", 3, 255, 384))
    got = first_batch(open_batches(model, str(folder), preprocess=Preprocess(preset="caffe")))["x"][0]
    ref = _pillow_reference(CHELSEA, (255, 384)).astype(np.float32)
    np.testing.assert_allclose(got[0], ref[..., 2] - 103.939, atol=1e-4)  # B channel first, B mean
    np.testing.assert_allclose(got[2], ref[..., 0] - 123.68, atol=1e-4)


def test_grayscale_and_color_cross_conversions(tmp_path):
    gray_folder = one_image_folder(tmp_path, CAMERA_GRAY, folder="gray")
    color_folder = one_image_folder(tmp_path, CHELSEA, folder="color")
    gray = np.asarray(Image.open(CAMERA_GRAY)).astype(np.float32)
    as_rgb = first_batch(open_batches(rgb_model(tmp_path, ("N", 3, 384, 384)), str(gray_folder)))["x"][0]
    for channel in as_rgb:
        np.testing.assert_array_equal(channel, gray)
    model_1ch = make_model(tmp_path, [("x", TensorProto.FLOAT, ["N", 1, 255, 384])], name="g.onnx")
    as_gray = first_batch(open_batches(model_1ch, str(color_folder)))["x"][0, 0]
    np.testing.assert_array_equal(as_gray, np.asarray(Image.open(CHELSEA).convert("L")).astype(np.float32))


def test_uint8_nhwc_input_gets_raw_pixels_and_refuses_normalisation(tmp_path):
    model = rgb_model(tmp_path, (1, 255, 384, 3), dtype=TensorProto.UINT8)
    folder = one_image_folder(tmp_path, CHELSEA)
    x = first_batch(open_batches(model, str(folder)))["x"]
    assert x.dtype == np.uint8
    np.testing.assert_array_equal(x[0], _pillow_reference(CHELSEA, (255, 384)))
    with pytest.raises(TrtqError, match="uint8.*raw255"):
        open_batches(model, str(folder), preprocess=Preprocess(preset="imagenet"))


def test_float16_input_gets_float16(tmp_path):
    model = rgb_model(tmp_path, ("N", 3, 64, 64), dtype=TensorProto.FLOAT16)
    x = first_batch(open_batches(model, str(one_image_folder(tmp_path, CHELSEA)),
                                 preprocess=Preprocess(preset="unit")))["x"]
    assert x.dtype == np.float16 and 0 <= x.min() and x.max() <= 1


# ---------------------------------------------------------------- decoding: EXIF, modes


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((16, 32, 3), np.uint8)  # stored 32 wide, 16 high: left red, right blue
    pixels[:, :16] = [255, 0, 0]
    pixels[:, 16:] = [0, 0, 255]
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": displayed 16 wide, 32 high
    folder = tmp_path / "exif"
    folder.mkdir()
    image.save(folder / "rotated.jpg", quality=95, exif=exif.tobytes())
    assert Image.open(folder / "rotated.jpg").size == (32, 16)

    model = rgb_model(tmp_path, (1, 3, 32, 16))  # the displayed size: no resampling happens
    x = first_batch(open_batches(model, str(folder)))["x"][0]
    top, bottom = x[:, 4, 8], x[:, 27, 8]
    assert top[0] > 200 and top[2] < 50  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 50


def test_16bit_png_is_scaled_to_0_255_without_rounding(tmp_path):
    values = np.linspace(0, 65535, 24 * 40).astype(np.uint16).reshape(24, 40)
    folder = tmp_path / "deep"
    folder.mkdir()
    Image.fromarray(values).save(folder / "deep.png")
    assert Image.open(folder / "deep.png").mode.startswith("I;16")
    expected = values.astype(np.float32) / np.float32(257)
    gray = make_model(tmp_path, [("x", TensorProto.FLOAT, [1, 1, 24, 40])], name="g.onnx")
    got = first_batch(open_batches(gray, str(folder)))["x"][0, 0]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got.max() == pytest.approx(255.0) and got[0, 1] % 1 != 0  # fractions kept
    rgb = first_batch(open_batches(rgb_model(tmp_path, (1, 3, 24, 40), file="c.onnx"), str(folder)))["x"][0]
    for channel in rgb:
        np.testing.assert_allclose(channel, expected, rtol=1e-6)


def test_float_tiff_is_taken_as_0_1(tmp_path):
    values = np.linspace(-0.5, 1.5, 10 * 12, dtype=np.float32).reshape(10, 12)
    folder = tmp_path / "float"
    folder.mkdir()
    Image.fromarray(values).save(folder / "f.tif")
    model = make_model(tmp_path, [("x", TensorProto.FLOAT, [1, 1, 10, 12])])
    got = first_batch(open_batches(model, str(folder)))["x"][0, 0]
    np.testing.assert_allclose(got, np.clip(values, 0, 1) * 255, rtol=1e-6)


def test_rgba_alpha_is_dropped_not_composited(tmp_path):
    stored = np.asarray(Image.open(COFFEE_RGBA))
    assert stored.shape == (256, 384, 4) and stored[0, 0, 3] == 0 and stored[0, 0, :3].any()
    model = rgb_model(tmp_path, (1, 3, 256, 384))
    x = first_batch(open_batches(model, str(one_image_folder(tmp_path, COFFEE_RGBA))))["x"][0]
    np.testing.assert_array_equal(x.transpose(1, 2, 0), stored[..., :3].astype(np.float32))
    la = tmp_path / "la"
    la.mkdir()
    gray = np.asarray(Image.open(CAMERA_GRAY))
    Image.fromarray(np.dstack([gray, np.full_like(gray, 7)]), mode=None).convert("LA").save(la / "la.png")
    assert Image.open(la / "la.png").mode == "LA"
    model_1ch = make_model(tmp_path, [("x", TensorProto.FLOAT, [1, 1, 384, 384])], name="g.onnx")
    np.testing.assert_array_equal(first_batch(open_batches(model_1ch, str(la)))["x"][0, 0], gray)


def test_palette_with_and_without_transparency(tmp_path):
    palette = Image.open(CHELSEA).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    folder = tmp_path / "pal"
    folder.mkdir()
    palette.save(folder / "a_plain.png")
    palette.save(folder / "b_transparent.png", transparency=int(np.asarray(palette)[0, 0]))
    assert "transparency" in Image.open(folder / "b_transparent.png").info
    model = rgb_model(tmp_path, ("N", 3, 255, 384))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow warns when palette transparency is not handled via RGBA
        (batch,) = list(open_batches(model, str(folder), batch_size=2))
    expected = np.asarray(palette.convert("RGB")).astype(np.float32).transpose(2, 0, 1)
    np.testing.assert_array_equal(batch["x"][0], expected)
    np.testing.assert_array_equal(batch["x"][1], expected)


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    folder = tmp_path / "cmyk"
    folder.mkdir()
    Image.open(CHELSEA).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    assert Image.open(folder / "cmyk.jpg").mode == "CMYK"
    x = first_batch(open_batches(rgb_model(tmp_path, (1, 3, 255, 384)), str(folder)))["x"][0]
    original = np.asarray(Image.open(CHELSEA)).astype(np.float32).transpose(2, 0, 1)
    assert np.abs(x - original).mean() < 2.0  # colours survive the round trip (not inverted)


def test_extensions_are_case_insensitive_recursive_and_sorted(tmp_path):
    folder = tmp_path / "tree"
    (folder / "b").mkdir(parents=True)
    (folder / "a").mkdir()
    (folder / ".hidden").mkdir()
    digits = sorted((CALIB / "mnist").glob("*.png"))[:4]
    shutil.copy(digits[0], folder / "b" / "z.PNG")
    shutil.copy(digits[1], folder / "a" / "y.png")
    Image.open(digits[2]).save(folder / "c.BMP")
    Image.open(digits[3]).save(folder / "a" / "x.TIFF")
    shutil.copy(digits[0], folder / ".hidden" / "ignored.png")
    (folder / "notes.txt").write_text("not an image")
    model = make_model(tmp_path, [("x", TensorProto.FLOAT, ["N", 1, 28, 28])])
    source = open_batches(model, str(folder), batch_size=8)
    assert source.files == ["a/x.TIFF", "a/y.png", "b/z.PNG", "c.BMP"]
    (batch,) = list(source)
    order = [digits[3], digits[1], digits[0], digits[2]]
    for got, path in zip(batch["x"][:, 0], order, strict=True):
        np.testing.assert_array_equal(got, np.asarray(Image.open(path)).astype(np.float32))


# ---------------------------------------------------------------- geometry


def test_shorter_side_resize_then_center_crop(tmp_path):
    model = rgb_model(tmp_path, ("N", 3, 112, 112))
    folder = one_image_folder(tmp_path, CHELSEA)
    x = first_batch(open_batches(model, str(folder), preprocess=Preprocess(resize=128, crop=(112, 112))))["x"][0]
    # 384x255 (WxH): the shorter side 255 -> 128, the longer int(128*384/255) = 192; crop 112 at
    # left round((192-112)/2) = 40, top round((128-112)/2) = 8.
    resized = Image.open(CHELSEA).convert("RGB").resize((192, 128), Image.Resampling.BILINEAR)
    expected = np.asarray(resized.crop((40, 8, 152, 120))).astype(np.float32)
    np.testing.assert_array_equal(x.transpose(1, 2, 0), expected)


def test_imagenet_default_geometry_is_resize_256_center_crop_224(tmp_path):
    model = rgb_model(tmp_path)
    folder = one_image_folder(tmp_path, CHELSEA)
    source = open_batches(model, str(folder), preprocess=Preprocess(preset="imagenet"))
    assert source.plan.resize == ("cover", 256, 256) and source.plan.crop == (224, 224)
    x = first_batch(source)["x"][0]
    # 384x255 -> shorter side 256: 385x256 (torchvision's int()); crop 224 at left round(80.5)=80, top 16.
    resized = Image.open(CHELSEA).convert("RGB").resize((385, 256), Image.Resampling.BILINEAR)
    unit = np.asarray(resized.crop((80, 16, 304, 240))).astype(np.float32) / 255
    np.testing.assert_allclose(x.transpose(1, 2, 0), (unit - IMAGENET_MEAN) / IMAGENET_STD, atol=1e-5)


def test_crop_without_resize_pads_small_images_with_black(tmp_path):
    model = make_model(tmp_path, [("x", TensorProto.FLOAT, ["N", 1, 40, 40])])
    x = first_batch(open_batches(model, str(CALIB / "mnist"), preprocess=Preprocess(crop=(40, 40))))["x"][0, 0]
    digit = np.asarray(Image.open(sorted((CALIB / "mnist").glob("*.png"))[0])).astype(np.float32)
    np.testing.assert_array_equal(x[6:34, 6:34], digit)
    assert not x[:6].any() and not x[34:].any()


def test_dynamic_height_width_resolved_by_shapes_or_resize(tmp_path):
    model = rgb_model(tmp_path, ("N", 3, "H", "W"))
    folder = one_image_folder(tmp_path, CHELSEA)
    source = open_batches(model, str(folder), shapes={"x": (1, 3, 64, 48)})
    assert source.input_shapes == {"x": (1, 3, 64, 48)}
    assert first_batch(source)["x"].shape == (1, 3, 64, 48)
    source = open_batches(model, str(folder), preprocess=Preprocess(resize=(30, 20)))
    assert first_batch(source)["x"].shape == (1, 3, 30, 20)
    with pytest.raises(TrtqError, match=r"input 'x' \[\?,3,\?,\?\] does not fix its height and width"):
        open_batches(model, str(folder))
    with pytest.raises(TrtqError, match="shorter side.*add --crop"):
        open_batches(model, str(folder), preprocess=Preprocess(resize=64))


def test_layout_and_channel_problems(tmp_path):
    folder = one_image_folder(tmp_path, CHELSEA)
    two = make_model(tmp_path, [("x", TensorProto.FLOAT, [1, 2, 32, 32])], name="two.onnx")
    with pytest.raises(TrtqError, match="cannot tell the layout of input 'x'"):
        open_batches(two, str(folder))
    with pytest.raises(TrtqError, match="takes 2 channels.*1 \\(grayscale\\) or 3"):
        open_batches(two, str(folder), preprocess=Preprocess(layout="NCHW"))
    ambiguous = make_model(tmp_path, [("x", TensorProto.FLOAT, [1, 3, 8, 3])], name="amb.onnx")
    with pytest.raises(TrtqError, match="--layout"):
        open_batches(ambiguous, str(folder))
    assert open_batches(ambiguous, str(folder), preprocess=Preprocess(layout="NHWC")).input_shapes["x"] == (1, 3, 8, 3)
    gray = make_model(tmp_path, [("x", TensorProto.FLOAT, [1, 1, 28, 28])], name="gray.onnx")
    with pytest.raises(TrtqError, match="per-colour mean.*1 channel"):
        open_batches(gray, str(folder), preprocess=Preprocess(preset="imagenet"))
    with pytest.raises(TrtqError, match="--channel-order RGB does not fit"):
        open_batches(gray, str(folder), preprocess=Preprocess(channel_order="RGB"))
    flat = make_model(tmp_path, [("x", TensorProto.FLOAT, [1, 784])], name="flat.onnx")
    with pytest.raises(TrtqError, match="4-dimensional inputs"):
        open_batches(flat, str(folder))


def test_raw_default_on_rgb_model_warns(tmp_path):
    warned = Warnings()
    open_batches(rgb_model(tmp_path), str(one_image_folder(tmp_path, CHELSEA)), warn=warned)
    assert any("no --preset given" in w for w in warned)
    quiet = Warnings()
    open_batches(load_model(CALIB / "mnist-8.onnx"), str(CALIB / "mnist"), warn=quiet)
    assert quiet == []


# ---------------------------------------------------------------- undecodable images


def test_undecodable_image_is_skipped_warned_and_counted(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    digits = sorted((CALIB / "mnist").glob("*.png"))[:3]
    for digit in digits:
        shutil.copy(digit, folder / digit.name)
    (folder / "00001_5.png").write_bytes(b"this is not a png")  # sorts between real digits
    model = make_model(tmp_path, [("x", TensorProto.FLOAT, ["N", 1, 28, 28])])
    warned = Warnings()
    source = open_batches(model, str(folder), batch_size=2, warn=warned)
    assert source.total_samples == 4
    batches = list(source)
    assert [b["x"].shape[0] for b in batches] == [2, 1]
    assert source.skipped == 1
    assert any("00001_5.png" in w and "cannot decode" in w for w in warned)
    assert not any("BytesIO" in w for w in warned)  # Pillow's message names its in-memory file, not the image
    got = np.concatenate([b["x"] for b in batches])[:, 0]
    for g, digit in zip(got, digits, strict=True):
        np.testing.assert_array_equal(g, np.asarray(Image.open(digit)).astype(np.float32))
    list(source)  # a second pass counts again without repeating the warning
    assert source.skipped == 1 and sum("00001_5.png" in w for w in warned) == 1
    assert source.skipped_files == {"00001_5.png"}


def test_folder_of_only_bad_images_fails_before_iteration(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (folder / "b.png").write_bytes(b"")
    model = make_model(tmp_path, [("x", TensorProto.FLOAT, ["N", 1, 28, 28])])
    with pytest.raises(TrtqError, match=r"none of the 2 image files in .*bad can be used \(e\.g\. a\.jpg"):
        open_batches(model, str(folder))


def test_truncated_image_is_skipped(tmp_path):
    folder = tmp_path / "trunc"
    folder.mkdir()
    data = CHELSEA.read_bytes()
    (folder / "a.jpg").write_bytes(data)
    (folder / "b.jpg").write_bytes(data[: len(data) // 3])
    source = open_batches(rgb_model(tmp_path, ("N", 3, 64, 64)), str(folder), batch_size=2, warn=Warnings())
    (batch,) = list(source)
    assert batch["x"].shape == (1, 3, 64, 64) and source.skipped == 1


# ---------------------------------------------------------------- arrays


def test_large_npy_is_streamed_through_a_memory_map(tmp_path):
    path = tmp_path / "big.npy"
    count = 12800  # 12800 x 1x64x64 float32 = 200 MiB, mostly a sparse file
    big = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(count, 1, 64, 64))
    big[:, 0, 0, 0] = np.arange(count, dtype=np.float32)
    big[5, 0, 10, 20] = -3.5
    big.flush()
    del big
    assert path.stat().st_size > 200 * 2**20
    model = make_model(tmp_path, [("x", TensorProto.FLOAT, ["N", 1, 64, 64])])
    source = open_batches(model, str(path), batch_size=64)
    assert isinstance(source, ArraySource)
    reader = source.shards[0].readers["x"]
    assert isinstance(reader, _MappedReader) and isinstance(reader.array, np.memmap)
    assert source.total_samples == count and source.batch_count == 200
    stream = iter(source)
    first, second = next(stream), next(stream)
    stream.close()
    for batch, start in ((first, 0), (second, 64)):
        x = batch["x"]
        assert type(x) is np.ndarray and x.flags.c_contiguous and x.shape == (64, 1, 64, 64)
        assert not np.shares_memory(x, reader.array)
        np.testing.assert_array_equal(x[:, 0, 0, 0], np.arange(start, start + 64))
    assert first["x"][5, 0, 10, 20] == -3.5

    subset = open_batches(model, str(path), batch_size=64, max_samples=100, seed=7)
    again = open_batches(model, str(path), batch_size=64, max_samples=100, seed=7)
    other = open_batches(model, str(path), batch_size=64, max_samples=100, seed=8)
    picked = np.concatenate([b["x"][:, 0, 0, 0] for b in subset])
    assert [b["x"].shape[0] for b in subset] == [64, 36]
    np.testing.assert_array_equal(picked, np.concatenate([b["x"][:, 0, 0, 0] for b in again]))
    assert not np.array_equal(picked, np.concatenate([b["x"][:, 0, 0, 0] for b in other]))
    assert np.all(np.diff(picked) > 0) and picked.max() > 1000  # in source order, drawn from all of it
    np.testing.assert_array_equal(picked, subset.selected)
    first_n = open_batches(model, str(path), batch_size=64, max_samples=100)
    np.testing.assert_array_equal(np.concatenate([b["x"][:, 0, 0, 0] for b in first_n]), np.arange(100))


def two_input_arrays(count: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "image": rng.standard_normal((count, 3, 8, 8)).astype(np.float32),
        "ids": rng.integers(0, 30000, size=(count, 16)).astype(np.int32),
    }


def two_input_model(tmp_path: Path):
    return make_model(
        tmp_path,
        [("image", TensorProto.FLOAT, ["N", 3, 8, 8]), ("ids", TensorProto.INT32, ["N", "T"])],
        name="two.onnx",
    )


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_feeds_several_inputs_mapped_or_streamed(tmp_path, compressed):
    arrays = two_input_arrays(10)
    path = tmp_path / "feed.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays, labels=np.arange(10))
    warned = Warnings()
    model = two_input_model(tmp_path)
    source = open_batches(model, str(path), batch_size=4, warn=warned)
    assert any("labels" in w and "not model inputs" in w for w in warned)
    reader = source.shards[0].readers["image"]
    if compressed:
        assert isinstance(reader, _ZipStreamReader)
    else:
        assert isinstance(reader, _MappedReader) and isinstance(reader.array, np.memmap)
    assert source.input_shapes == {"image": (4, 3, 8, 8), "ids": (4, 16)}
    for _ in range(2):  # re-iterable
        batches = list(source)
        assert [b["image"].shape[0] for b in batches] == [4, 4, 2]
        for name in arrays:
            got = np.concatenate([b[name] for b in batches])
            assert got.dtype == arrays[name].dtype
            np.testing.assert_array_equal(got, arrays[name])
    subset = open_batches(model, str(path), batch_size=4, max_samples=5, seed=1)
    rows = subset.selected
    np.testing.assert_array_equal(np.concatenate([b["ids"] for b in subset]), arrays["ids"][rows])
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in subset]), arrays["image"][rows])


def test_npz_member_offsets_are_right_for_memory_mapping(tmp_path):
    path = tmp_path / "stored.npz"
    arrays = two_input_arrays(6)
    np.savez(path, **arrays)
    with zipfile.ZipFile(path) as archive:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in archive.infolist())
    source = open_batches(two_input_model(tmp_path), str(path), batch_size=6)
    mapped = source.shards[0].readers["ids"].array
    np.testing.assert_array_equal(np.asarray(mapped), arrays["ids"])


def test_integer_input_is_fed_as_given_or_cast_safely(tmp_path):
    model = two_input_model(tmp_path)
    arrays = two_input_arrays(4)
    np.savez(tmp_path / "i64.npz", image=arrays["image"].astype(np.float64), ids=arrays["ids"].astype(np.int64))
    warned = Warnings()
    (batch,) = list(open_batches(model, str(tmp_path / "i64.npz"), batch_size=4, warn=warned))
    assert batch["ids"].dtype == np.int32 and batch["image"].dtype == np.float32
    np.testing.assert_array_equal(batch["ids"], arrays["ids"])
    assert any("float64" in w and "'image'" in w for w in warned)

    too_big = arrays["ids"].astype(np.int64)
    too_big[2, 3] = 2**40
    np.savez(tmp_path / "big.npz", image=arrays["image"], ids=too_big)
    source = open_batches(model, str(tmp_path / "big.npz"), batch_size=4)
    with pytest.raises(TrtqError, match="input 'ids'.*int32.*1099511627776.*outside the int32 range"):
        list(source)

    np.savez(tmp_path / "float_ids.npz", image=arrays["image"], ids=arrays["ids"].astype(np.float32))
    with pytest.raises(TrtqError, match="input 'ids' of the model is int32 but .*float32"):
        open_batches(model, str(tmp_path / "float_ids.npz"))


def test_partial_last_batch_fed_when_dynamic_dropped_when_static(tmp_path):
    data = np.arange(10 * 4, dtype=np.float32).reshape(10, 4)
    np.save(tmp_path / "d.npy", data)
    dynamic = make_model(tmp_path, [("x", TensorProto.FLOAT, ["N", 4])], name="dyn.onnx")
    batches = list(open_batches(dynamic, str(tmp_path / "d.npy"), batch_size=4))
    assert [b["x"].shape[0] for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), data)

    static = make_model(tmp_path, [("x", TensorProto.FLOAT, [4, 4])], name="static.onnx")
    warned = Warnings()
    source = open_batches(static, str(tmp_path / "d.npy"), warn=warned)
    assert source.batch_size == 4  # the model's fixed batch is the default
    assert [b["x"].shape[0] for b in source] == [4, 4]
    assert any("dropping the last 2 sample(s)" in w for w in warned)
    with pytest.raises(TrtqError, match="--batch-size 3 conflicts with input 'x'.*fixes to 4"):
        open_batches(static, str(tmp_path / "d.npy"), batch_size=3)

    images = one_image_folder(tmp_path, *sorted((CALIB / "mnist").glob("*.png"))[:5], folder="five")
    img_dyn = make_model(tmp_path, [("x", TensorProto.FLOAT, ["N", 1, 28, 28])], name="img_dyn.onnx")
    assert [b["x"].shape[0] for b in open_batches(img_dyn, str(images), batch_size=2)] == [2, 2, 1]
    img_static = make_model(tmp_path, [("x", TensorProto.FLOAT, [2, 1, 28, 28])], name="img_static.onnx")
    warned = Warnings()
    assert [b["x"].shape[0] for b in open_batches(img_static, str(images), warn=warned)] == [2, 2]
    assert any("dropping the last 1 image(s)" in w for w in warned)


def test_folder_of_arrays_is_concatenated_in_sorted_order(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    parts = [np.full((n, 2), i, dtype=np.float32) for i, n in enumerate((3, 2, 4))]
    for i, part in enumerate(parts):
        np.save(folder / f"part{i:02d}.npy", part)
    model = make_model(tmp_path, [("x", TensorProto.FLOAT, ["N", 2])])
    source = open_batches(model, str(folder), batch_size=4)
    assert source.total_samples == 9
    got = np.concatenate([b["x"] for b in source])
    np.testing.assert_array_equal(got, np.concatenate(parts))
    np.save(folder / "part03.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(TrtqError, match=r"input 'x'.*part03\.npy has shape \[2,3\] but the model expects \[\?,2\]"):
        open_batches(model, str(folder))



def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc/self/fd (Linux)")
def test_folder_of_many_arrays_keeps_only_a_few_files_open(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    parts = []
    for i in range(150):  # each file mapped or streamed at once would hold 150+ descriptors
        part = np.full((2, 3), i, dtype=np.float32)
        part[1] += 0.5
        parts.append(part)
        if i % 3 == 0:
            np.save(folder / f"s{i:03d}.npy", part)
        else:
            (np.savez if i % 3 == 1 else np.savez_compressed)(folder / f"s{i:03d}.npz", x=part)
    model = make_model(tmp_path, [("x", TensorProto.FLOAT, ["N", 3])])
    for max_samples, seed in ((None, None), (101, 4)):
        before = _open_fds()
        source = open_batches(model, str(folder), batch_size=7, max_samples=max_samples, seed=seed)
        fed, most = [], 0
        for batch in source:
            fed.append(batch["x"])
            most = max(most, _open_fds() - before)
        assert most <= 4
        assert _open_fds() == before  # everything is closed after the iteration
        np.testing.assert_array_equal(np.concatenate(fed), np.concatenate(parts)[source.selected])


def test_corrupt_array_files_are_one_line_errors(tmp_path):
    model = make_model(tmp_path, [("x", TensorProto.FLOAT, ["N", 4])])
    (tmp_path / "text.npy").write_bytes(b"not an array at all")
    with pytest.raises(TrtqError, match=r"cannot read .*text\.npy as a \.npy file \(ValueError: the magic string"):
        open_batches(model, str(tmp_path / "text.npy"))
    np.save(tmp_path / "full.npy", np.ones((10, 4), np.float32))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "full.npy").read_bytes()[:-20])
    with pytest.raises(TrtqError, match=r"cut\.npy is truncated: it holds 140 bytes of its \[10,4\] float32 data"):
        open_batches(model, str(tmp_path / "cut.npy"))
    np.savez(tmp_path / "a.npz", x=np.ones((3, 4), np.float32))
    (tmp_path / "a_named.npy").write_bytes((tmp_path / "a.npz").read_bytes())
    with pytest.raises(TrtqError, match=r"a_named\.npy is an \.npz archive"):
        open_batches(model, str(tmp_path / "a_named.npy"))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (5, 4)})
    with zipfile.ZipFile(tmp_path / "short.npz", "w") as archive:  # the header promises 5 rows, 3 are there
        archive.writestr("x.npy", header.getvalue() + np.ones((3, 4), np.float32).tobytes())
    with pytest.raises(TrtqError, match=r"short\.npz: array 'x' is truncated: it holds 48 bytes"):
        open_batches(model, str(tmp_path / "short.npz"))
    np.savez_compressed(tmp_path / "z.npz", x=np.random.default_rng(0).standard_normal((2000, 4)).astype(np.float32))
    damaged = bytearray((tmp_path / "z.npz").read_bytes())
    damaged[3000:3100] = bytes(100)  # the header survives, the compressed data does not
    (tmp_path / "z.npz").write_bytes(bytes(damaged))
    source = open_batches(model, str(tmp_path / "z.npz"), batch_size=500)
    with pytest.raises(TrtqError, match=r"cannot read the data for input 'x' from .*z\.npz \("):
        list(source)

def test_array_errors_name_the_problem(tmp_path):
    model = two_input_model(tmp_path)
    arrays = two_input_arrays(4)
    np.savez(tmp_path / "missing.npz", image=arrays["image"])
    with pytest.raises(TrtqError, match="missing.npz has no array for input 'ids'"):
        open_batches(model, str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "shape.npz", image=arrays["image"][:, :, :4], ids=arrays["ids"])
    with pytest.raises(TrtqError, match=r"input 'image'.*\[4,3,4,8\] but the model expects \[\?,3,8,8\]"):
        open_batches(model, str(tmp_path / "shape.npz"))
    np.savez(tmp_path / "rank.npz", image=arrays["image"][0], ids=arrays["ids"])
    with pytest.raises(TrtqError, match=r"input 'image'.*\[3,8,8\] \(3 dimensions\).*\[\?,3,8,8\] \(4 dimensions\)"):
        open_batches(model, str(tmp_path / "rank.npz"))
    np.savez(tmp_path / "count.npz", image=arrays["image"], ids=arrays["ids"][:3])
    with pytest.raises(TrtqError, match="different numbers of samples"):
        open_batches(model, str(tmp_path / "count.npz"))
    np.save(tmp_path / "one.npy", arrays["image"])
    with pytest.raises(TrtqError, match="one array but the model has 2 data inputs"):
        open_batches(model, str(tmp_path / "one.npy"))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    single = make_model(tmp_path, [("x", TensorProto.FLOAT, ["N"])], name="single.onnx")
    with pytest.raises(TrtqError, match="Python objects"):
        open_batches(single, str(tmp_path / "objects.npy"))
    (tmp_path / "broken.npz").write_bytes(b"PK not really")
    with pytest.raises(TrtqError, match="cannot read .*broken.npz as an .npz"):
        open_batches(model, str(tmp_path / "broken.npz"))
    np.savez(tmp_path / "ok.npz", **arrays)
    with pytest.raises(TrtqError, match="--preset, --resize apply to image folders only"):
        open_batches(model, str(tmp_path / "ok.npz"), preprocess=Preprocess(preset="unit", resize=4))
    with pytest.raises(TrtqError, match="--max-samples must be at least 1"):
        open_batches(model, str(tmp_path / "ok.npz"), max_samples=0)


# ---------------------------------------------------------------- path, shape and input errors


def test_path_and_shape_errors(tmp_path, mnist_model):
    with pytest.raises(TrtqError, match="data path not found: .*nowhere"):
        open_batches(mnist_model, str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrtqError, match="empty holds no images .*and no .npy/.npz files"):
        open_batches(mnist_model, str(tmp_path / "empty"))
    (tmp_path / "text.csv").write_text("a,b\n")
    with pytest.raises(TrtqError, match="expected a folder of images, an .npy or an .npz file"):
        open_batches(mnist_model, str(tmp_path / "text.csv"))
    with pytest.raises(TrtqError, match="--shapes names 'image', which is not an input"):
        open_batches(mnist_model, str(CALIB / "mnist"), shapes={"image": (1, 1, 28, 28)})
    with pytest.raises(TrtqError, match="--shapes sets dimension 2 of input 'Input3' to 32"):
        open_batches(mnist_model, str(CALIB / "mnist"), shapes={"Input3": (1, 1, 32, 32)})
    with pytest.raises(TrtqError, match="no data given"):
        open_batches(mnist_model)
    with pytest.raises(TrtqError, match="not both"):
        open_batches(mnist_model, str(CALIB / "mnist"), loader_script="x.py")
    with pytest.raises(TrtqError, match="no input named 'pixels'"):
        open_batches(mnist_model, str(CALIB / "mnist"), input_name="pixels")
    assert open_batches(mnist_model, str(CALIB / "mnist"), input_name="Input3").total_samples == 300


def test_image_folder_refuses_a_multi_input_model(tmp_path):
    model = two_input_model(tmp_path)
    folder = str(CALIB / "mnist")
    with pytest.raises(TrtqError, match=r"2 data inputs \(image, ids\) but an image folder feeds only one"):
        open_batches(model, folder)
    with pytest.raises(TrtqError, match=r"other inputs \(ids\) need data too"):
        open_batches(model, folder, input_name="image")


def test_max_samples_and_seed_on_images_are_deterministic(tmp_path, mnist_model, mnist_idx):
    images = mnist_idx[0].astype(np.float32)
    picked = open_batches(mnist_model, str(CALIB / "mnist"), max_samples=20, seed=3)
    again = open_batches(mnist_model, str(CALIB / "mnist"), max_samples=20, seed=3)
    assert picked.files == again.files and picked.total_samples == 20
    assert picked.description.startswith("20 of 300 images")
    indices = [int(name.split("_")[0]) for name in picked.files]
    assert indices == sorted(indices) and indices != list(range(20))
    np.testing.assert_array_equal(np.concatenate([b["Input3"] for b in picked])[:, 0], images[indices])
    first = open_batches(mnist_model, str(CALIB / "mnist"), max_samples=20)
    assert [int(n.split("_")[0]) for n in first.files] == list(range(20))


def test_provenance_is_json_and_names_the_data(tmp_path, mnist_model):
    source = open_batches(mnist_model, str(CALIB / "mnist"), max_samples=10)
    before = source.provenance()
    assert "content_sha256" not in before
    list(source)
    record = json.loads(json.dumps(source.provenance()))
    assert record["kind"] == "image_folder" and record["files"] == 10 and record["max_samples"] == 10
    assert record["preprocess"]["preset"] == "raw255" and len(record["content_sha256"]) == 64
    np.save(tmp_path / "a.npy", np.zeros((3, 1, 28, 28), np.float32))
    arrays = open_batches(mnist_model, str(tmp_path / "a.npy"))
    record = json.loads(json.dumps(arrays.provenance()))
    assert record["kind"] == "npy" and record["samples"] == 3
    import hashlib

    assert record["sha256"] == hashlib.sha256((tmp_path / "a.npy").read_bytes()).hexdigest()


# ---------------------------------------------------------------- data-loader scripts


GOOD_SCRIPT = """
import numpy as np

CALLS = []

def load_data():
    CALLS.append(1)
    for i in range(3):
        yield {"image": np.full((2, 3, 8, 8), i, dtype=np.float64),
               "ids": np.full((2, 16), i, dtype=np.int32)}

def other():
    return [{"image": np.zeros((5, 3, 8, 8), np.float32), "ids": np.zeros((5, 16), np.int32)}]
"""


def write_script(tmp_path: Path, text: str, name: str = "loader.py") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_data_loader_script_batches_are_checked_and_reiterable(tmp_path):
    path = write_script(tmp_path, GOOD_SCRIPT)
    model = two_input_model(tmp_path)
    warned = Warnings()
    source = open_batches(model, loader_script=str(path), warn=warned)
    assert isinstance(source, ScriptSource)
    assert source.total_samples is None and source.batch_size == 2
    assert source.input_shapes == {"image": (2, 3, 8, 8), "ids": (2, 16)}
    for _ in range(2):
        batches = list(source)
        assert [int(b["image"][0, 0, 0, 0]) for b in batches] == [0, 1, 2]
        assert all(b["image"].dtype == np.float32 and b["ids"].dtype == np.int32 for b in batches)
    assert any("casting float64" in w for w in warned)
    limited = open_batches(model, loader_script=str(path), max_samples=3, warn=Warnings())
    assert [b["image"].shape[0] for b in limited] == [2, 1]
    other = open_batches(model, loader_script=f"{path}:other")
    assert other.batch_size == 5 and len(list(other)) == 1
    record = json.loads(json.dumps(source.provenance()))
    assert record["kind"] == "script" and record["function"] == "load_data" and len(record["sha256"]) == 64


@pytest.mark.parametrize(
    ("body", "pattern"),
    [
        ("raise RuntimeError('no GPU here')\ndef load_data(): pass",
         r"loader\.py failed on import: RuntimeError: no GPU here"),
        ("def other(): pass", r"loader\.py defines no function 'load_data'"),
        ("def load_data(): return 42", "returned int, expected an iterable"),
        ("def load_data():\n    raise KeyError('x')", r"raised KeyError: 'x'"),
        ("def load_data():\n    yield [1, 2]", "yielded a list as batch 0"),
        ("import numpy as np\ndef load_data():\n    yield {'image': np.zeros((1, 3, 8, 8), np.float32)}",
         "has no array for input 'ids'"),
        ("import numpy as np\ndef load_data():\n    yield {'image': np.zeros((1, 3, 8, 8), np.float32), "
         "'ids': np.zeros((1, 4), np.int32), 'label': 1}", "has 'label', which is not an input"),
        ("import numpy as np\ndef load_data():\n    yield {'image': np.zeros((3, 8, 8), np.float32), "
         "'ids': np.zeros((1, 4), np.int32)}", r"input 'image'.*\[3,8,8\].*expects \[\?,3,8,8\]"),
        ("import numpy as np\ndef load_data():\n    yield {'image': np.zeros((1, 3, 8, 8), np.float32), "
         "'ids': np.zeros((1, 4), np.float32)}", "input 'ids' of the model is int32 but .* float32"),
        ("def load_data():\n    return iter([])", "yields no batches"),
    ],
)
def test_data_loader_script_errors(tmp_path, body, pattern):
    path = write_script(tmp_path, body)
    with pytest.raises(TrtqError, match=pattern):
        open_batches(two_input_model(tmp_path), loader_script=str(path))


def test_data_loader_script_failing_midway_names_the_script_and_batch(tmp_path):
    path = write_script(tmp_path, GOOD_SCRIPT.replace("for i in range(3):", "for i in range(3):\n"
                        "        if i == 2:\n            raise ValueError('disk went away\\nmore detail')"))
    source = open_batches(two_input_model(tmp_path), loader_script=str(path), warn=Warnings())
    message = r"loader\.py:load_data raised ValueError: disk went away \(while producing batch 2\)$"
    with pytest.raises(TrtqError, match=message):
        list(source)


def test_data_loader_script_rejects_image_options_and_missing_file(tmp_path):
    model = two_input_model(tmp_path)
    with pytest.raises(TrtqError, match="data loader script not found"):
        open_batches(model, loader_script=str(tmp_path / "absent.py"))
    path = write_script(tmp_path, GOOD_SCRIPT)
    with pytest.raises(TrtqError, match="--preset apply to image folders only"):
        open_batches(model, loader_script=str(path), preprocess=Preprocess(preset="unit"))
    with pytest.raises(TrtqError, match="--batch-size 4 does not match the script's batches"):
        open_batches(model, loader_script=str(path), batch_size=4, warn=Warnings())


# ---------------------------------------------------------------- click options


@click.command()
@data_options
def _show(**kwargs):
    source = batches_from_options(load_model(CALIB / "mnist-8.onnx"), warn=lambda m: click.echo(f"W {m}"), **kwargs)
    shapes = [b["Input3"].shape for b in source]
    click.echo(f"{source.description}|{len(shapes)}|{shapes[0]}")


@click.command()
@data_options
def _plan(**kwargs):
    model = make_model(Path(os.environ["TRTQ_TEST_TMP"]), [("x", TensorProto.FLOAT, ["N", 3, 224, 224])])
    source = batches_from_options(model, **kwargs)
    click.echo(json.dumps(source.plan.to_json()))


def test_data_options_drive_open_batches():
    runner = CliRunner()
    result = runner.invoke(_show, ["--data", str(CALIB / "mnist"), "--max-samples", "5"])
    assert result.exit_code == 0, result.output
    described = f"5 of 300 images from {CALIB / 'mnist'} (preset raw255, 28x28, GRAY, NCHW)"
    assert result.output.strip() == f"{described}|5|(1, 1, 28, 28)"
    result = runner.invoke(_show, [])
    assert result.exit_code == 2 and "give --data PATH or --data-loader-script" in result.output
    result = runner.invoke(_show, ["--data", "x", "--resize", "12x"])
    assert result.exit_code == 2 and "Invalid value for '--resize'" in result.output
    result = runner.invoke(_show, ["--help"])
    for flag in ("--data", "--data-loader-script", "--shapes", "--batch-size", "--max-samples", "--seed",
                 "--preset", "--resize", "--crop", "--interpolation", "--scale", "--mean", "--std",
                 "--channel-order", "--layout", "--input"):
        assert flag in result.output


def test_data_options_parse_preprocessing(tmp_path, monkeypatch):
    monkeypatch.setenv("TRTQ_TEST_TMP", str(tmp_path))
    folder = one_image_folder(tmp_path, CHELSEA)
    args = ["--data", str(folder), "--preset", "ImageNet", "--resize", "256", "--crop", "224",
            "--interpolation", "bicubic", "--scale", "1/255", "--mean", "0.5", "--std", "0.25,0.5,1/2",
            "--channel-order", "bgr", "--layout", "nchw"]
    result = CliRunner().invoke(_plan, args)
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["preset"] == "imagenet" and plan["resize"] == ["shorter", 256, 256] and plan["crop"] == [224, 224]
    assert plan["interpolation"] == "bicubic" and plan["scale"] == pytest.approx(1 / 255)
    assert plan["mean"] == [0.5, 0.5, 0.5] and plan["std"] == [0.25, 0.5, 0.5]
    assert plan["channel_order"] == "BGR" and plan["layout"] == "NCHW"


def test_image_bytes_with_wrong_extension_still_decode(tmp_path):
    folder = tmp_path / "renamed"
    folder.mkdir()
    buffer = io.BytesIO()
    Image.open(CHELSEA).save(buffer, "PNG")
    (folder / "actually_png.jpg").write_bytes(buffer.getvalue())  # Pillow sniffs the content
    x = first_batch(open_batches(rgb_model(tmp_path, (1, 3, 255, 384)), str(folder)))["x"][0]
    np.testing.assert_array_equal(x.transpose(1, 2, 0), np.asarray(Image.open(CHELSEA)).astype(np.float32))


@pytest.mark.parametrize("compressed", [False, True])
def test_fortran_ordered_npz_members_give_the_same_rows(tmp_path, compressed):
    arrays = two_input_arrays(7)
    fortran = {name: np.asfortranarray(a) for name, a in arrays.items()}
    path = tmp_path / "fortran.npz"
    (np.savez_compressed if compressed else np.savez)(path, **fortran)
    source = open_batches(two_input_model(tmp_path), str(path), batch_size=3, max_samples=5, seed=2)
    for name in arrays:
        got = np.concatenate([b[name] for b in source])
        assert got.flags.c_contiguous
        np.testing.assert_array_equal(got, arrays[name][source.selected])


def test_ignored_options_warn_and_mixed_folders_fail(tmp_path, mnist_model):
    warned = Warnings()
    open_batches(mnist_model, str(CALIB / "mnist"), seed=5, warn=warned)
    assert any("--seed has no effect without --max-samples" in w for w in warned)
    path = write_script(tmp_path, "import numpy as np\ndef load_data():\n"
                        "    yield {'Input3': np.zeros((1, 1, 28, 28), np.float32)}\n")
    warned = Warnings()
    source = open_batches(mnist_model, loader_script=str(path), seed=5, warn=warned)
    assert any("--seed is ignored with --data-loader-script" in w for w in warned)
    assert len(list(source)) == 1
    with pytest.raises(TrtqError, match="--input applies to an image folder or an .npy file, not a data loader"):
        open_batches(mnist_model, loader_script=str(path), input_name="Input3")
    mixed = one_image_folder(tmp_path, sorted((CALIB / "mnist").glob("*.png"))[0], folder="mixed")
    np.save(mixed / "extra.npy", np.zeros((1, 1, 28, 28), np.float32))
    with pytest.raises(TrtqError, match="holds both images .* and arrays"):
        open_batches(mnist_model, str(mixed))
    with pytest.raises(TrtqError, match="single image; give the folder"):
        open_batches(mnist_model, str(sorted((CALIB / "mnist").glob("*.png"))[0]))
