"""Simulated INT8 accuracy on real models and real digits: ``trtq evaluate``, labels lined up with the
samples really fed, ``trtq calibrate --compare-methods``, and the figures/HTML report."""

from __future__ import annotations

import io
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from PIL import Image

from trtq.accuracy import Labels, compare_methods, evaluate_int8, read_labels
from trtq.accuracy.figures import histogram_chart
from trtq.accuracy.methods import method_thresholds
from trtq.cache import cache_from_amax, write_cache
from trtq.calibrate import calibrate
from trtq.cli import cli
from trtq.errors import TrtqError
from trtq.export import compare_outputs, export_qdq
from trtq.model import load_model
from trtq.ranges import entropy2_amax

DATA = Path(__file__).resolve().parent / "data"
REPO = DATA.parent.parent
MNIST_PNG = REPO / "calib_data" / "mnist"


def trtq(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def feeds_of(images: np.ndarray) -> list[dict[str, np.ndarray]]:
    return [{"Input3": image[None]} for image in images]  # mnist-8 has a fixed batch of 1


def plain_session(model_proto) -> ort.InferenceSession:
    """An onnxruntime session that computes the graph as written (no rewrites), independent of trtq's."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model_proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def plain_top1(model_proto, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Argmax class per feed, from a plain onnxruntime session (independent of trtq's evaluation)."""
    session = plain_session(model_proto)
    return np.array([session.run(None, feed)[0].reshape(-1).argmax() for feed in feeds])


@pytest.fixture(scope="module")
def mnist(mnist_model_path):
    return load_model(mnist_model_path)


@pytest.fixture(scope="module")
def mnist_calibrated(mnist, mnist_digits):
    """entropy2 statistics/ranges from the first 500 real test digits."""
    images, _ = mnist_digits
    return calibrate(mnist, feeds_of(images[:500]), "entropy2")


@pytest.fixture(scope="module")
def mnist_cache(mnist_calibrated, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cache") / "mnist-entropy2.cache"
    write_cache(path, cache_from_amax(mnist_calibrated.amax, "entropy2"))
    return path


@pytest.fixture(scope="module")
def digits():
    model = load_model(DATA / "digits_mlp.onnx")
    with np.load(DATA / "digits_split.npz") as split:
        x_train, x_test = split["x_train"].astype(np.float32), split["x_test"].astype(np.float32)
        y_test = split["y_test"].astype(np.int64)
    result = calibrate(model, [{"pixels": x_train[i:i + 100]} for i in range(0, len(x_train), 100)], "entropy2")
    return model, result, x_test, y_test


# --- acceptance: real MNIST, calibrate on 500 digits, evaluate on 500 others ------------------------------


def test_mnist_int8_accuracy_per_method_on_held_out_digits(mnist, mnist_calibrated, mnist_digits):
    images, labels = mnist_digits
    held_out = feeds_of(images[500:])
    methods = compare_methods(mnist, mnist_calibrated.stats, held_out,
                              labels=Labels("first1000", by_index=labels[500:]))
    assert methods.samples == 500
    assert [s.label for s in methods.scores] == ["entropy2", "minmax", "percentile 99.9", "percentile 99.99",
                                                 "percentile 99.999", "mse"]
    fp32_top1 = methods.comparison.reference_accuracy["top1"]
    assert fp32_top1 == pytest.approx(np.mean(plain_top1(mnist.proto, held_out) == labels[500:]))
    assert fp32_top1 > 0.97
    entropy2 = methods.scores[0]
    # the acceptance criterion: entropy2's simulated INT8 loses at most 0.3 points of top-1
    assert methods.comparison.drop_points("entropy2") <= 0.3
    # the INT8 accuracy is that of the exported Q/DQ model, checked with a plain session
    exported = export_qdq(mnist, entropy2.amax).model
    assert entropy2.top1 == pytest.approx(np.mean(plain_top1(exported, held_out) == labels[500:]))
    for score in methods.scores:
        assert score.outcome.cosine > 0.99 and score.outcome.sqnr_db > 15
    # the recommendation: among accuracies within one standard error of the best, the highest SQNR
    top = max(s.top1 for s in methods.scores)
    tie = np.sqrt(top * (1 - top) / 500)
    assert methods.tie_points == pytest.approx(100 * tie)
    contenders = [s for s in methods.scores if s.top1 >= top - tie - 1e-12]
    assert methods.best is max(contenders, key=lambda s: s.outcome.sqnr_db)
    assert "<- best" in methods.format_table()


def test_evaluate_int8_matches_compare_outputs_and_adds_mean_abs(digits):
    model, result, x_test, y_test = digits
    feeds = [{"pixels": x_test[i:i + 50]} for i in range(0, len(x_test), 50)]
    evaluation = evaluate_int8(model, result.amax, feeds, labels=Labels("y_test", by_index=y_test))
    (row,) = evaluation.outcome.rows
    (reference_row,) = compare_outputs(model.proto, evaluation.export.model, feeds)
    assert row.sqnr_db == pytest.approx(reference_row.sqnr_db) and row.cosine == pytest.approx(reference_row.cosine)
    fp32, int8 = plain_session(model.proto), plain_session(evaluation.export.model)
    ref = fp32.run(None, {"pixels": x_test})[0]
    out = int8.run(None, {"pixels": x_test})[0]
    assert row.mean_abs_error == pytest.approx(np.abs(ref - out).mean(), rel=1e-4)
    assert row.max_abs_error == pytest.approx(np.abs(ref - out).max(), rel=1e-4)
    accuracy = evaluation.document()["accuracy"]
    assert accuracy["fp32"]["top1"] == pytest.approx(np.mean(ref.argmax(1) == y_test))
    assert accuracy["int8"]["top1"] == pytest.approx(np.mean(out.argmax(1) == y_test))
    top5 = np.argsort(-out, axis=1)[:, :5]
    assert accuracy["int8"]["top5"] == pytest.approx(np.mean((top5 == y_test[:, None]).any(axis=1)))


# --- labels line up with the samples really fed -------------------------------------------------------------


def test_cli_npy_labels_follow_max_samples_and_seed(digits, tmp_path):
    model, result, x_test, y_test = digits
    np.save(tmp_path / "x.npy", x_test)
    np.save(tmp_path / "y.npy", y_test)
    write_cache(tmp_path / "d.cache", cache_from_amax(result.amax, "entropy2"))
    out = tmp_path / "eval.json"
    run = trtq("evaluate", DATA / "digits_mlp.onnx", "--cache", tmp_path / "d.cache", "--data", tmp_path / "x.npy",
               "--max-samples", 120, "--seed", 3, "--batch-size", 32, "--labels", tmp_path / "y.npy", "--json", out)
    assert run.exit_code == 0, run.output
    document = json.loads(out.read_text())
    chosen = np.sort(np.random.default_rng(3).choice(len(x_test), size=120, replace=False))
    session = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    predicted = session.run(None, {"pixels": x_test[chosen]})[0].argmax(1)
    assert document["samples"] == 120
    assert document["accuracy"]["fp32"]["top1"] == pytest.approx(np.mean(predicted == y_test[chosen]))
    assert set(document["outputs"]["logits"]) >= {"cosine", "sqnr_db", "max_abs", "mean_abs", "top1_agreement"}
    assert "FP32" in run.stdout and "drop" in run.stdout


@pytest.fixture
def png_folder(tmp_path) -> Path:
    """40 real MNIST PNG files in class sub-folders, one undecodable file among them, and a CSV."""
    root = tmp_path / "digits"
    rows = ["file,label"]
    for line in (MNIST_PNG / "labels.csv").read_text().splitlines()[1:41]:
        name, label = line.split(",")
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(MNIST_PNG / name, root / label / name)
        rows.append(f"{label}/{name},{label}")
    (root / "3" / "00005_broken.png").write_bytes(b"not a png at all")
    rows.append("3/00005_broken.png,3")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("how", ["csv", "folders"])
def test_image_labels_skip_undecodable_files(mnist_model_path, mnist_cache, png_folder, tmp_path, how):
    labels = ["--labels", tmp_path / "labels.csv"] if how == "csv" else ["--labels-from-folders"]
    out = tmp_path / "eval.json"
    run = trtq("evaluate", mnist_model_path, "--cache", mnist_cache, "--data", png_folder, *labels, "--json", out)
    assert run.exit_code == 0, run.output
    assert "00005_broken.png" in run.stderr  # the data source warns that it skipped it
    files = sorted(p for p in png_folder.rglob("*.png") if "broken" not in p.name)
    images = np.stack([np.asarray(Image.open(p), dtype=np.float32) for p in
                       sorted(files, key=lambda p: p.relative_to(png_folder).as_posix())])
    truth = np.array([int(p.parent.name) for p in sorted(files, key=lambda p: p.relative_to(png_folder).as_posix())])
    predicted = plain_top1(load_model(mnist_model_path).proto, [{"Input3": x[None, None]} for x in images])
    document = json.loads(out.read_text())
    assert document["samples"] == 40
    assert document["accuracy"]["fp32"]["top1"] == pytest.approx(np.mean(predicted == truth))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: np.save(d / "y.npy", np.zeros(7, dtype=np.int64)), "hold 7 labels but"),
        (lambda d: np.save(d / "y.npy", np.full(500, 12, dtype=np.int64)), "label 12 is out of range"),
        (lambda d: np.save(d / "y.npy", np.zeros(500, dtype=np.float32) + 0.5), "expected integer class labels"),
    ],
)
def test_label_errors_are_one_line_and_leave_no_file(digits, tmp_path, make, message):
    model, result, x_test, _ = digits
    np.save(tmp_path / "x.npy", x_test)
    write_cache(tmp_path / "d.cache", cache_from_amax(result.amax, "entropy2"))
    make(tmp_path)
    out = tmp_path / "eval.json"
    run = trtq("evaluate", DATA / "digits_mlp.onnx", "--cache", tmp_path / "d.cache", "--data", tmp_path / "x.npy",
               "--labels", tmp_path / "y.npy", "--json", out, "--html", tmp_path / "r.html")
    assert run.exit_code == 2
    errors = [line for line in run.stderr.splitlines() if line.startswith("trtq: error: ")]
    assert len(errors) == 1 and message in errors[0] and run.stderr.strip().endswith(errors[0])
    assert not out.exists() and not (tmp_path / "r.html").exists()


def test_csv_labels_only_for_image_folders(tmp_path):
    (tmp_path / "l.csv").write_text("file,label\na.png,1\nb.png,x\n")
    with pytest.raises(Exception, match="row 2 is not 'file,label'"):
        read_labels(tmp_path / "l.csv")


@pytest.mark.parametrize("label", ["--5", "1.5", "\u00b2"])  # "--5" and a superscript 2 once passed as integers
def test_csv_label_that_is_not_an_integer_is_a_one_line_error(tmp_path, label):
    (tmp_path / "l.csv").write_text(f"file,label\na.png,1\nb.png,{label}\n", encoding="utf-8")
    with pytest.raises(TrtqError, match="row 2 is not 'file,label' with an integer label"):
        read_labels(tmp_path / "l.csv")


def test_csv_without_header_keeps_its_first_row_whatever_follows_the_label(tmp_path):
    (tmp_path / "l.csv").write_text("a.png,1,checked by hand\nb.png,7\n")
    assert read_labels(tmp_path / "l.csv").by_file == {"a.png": 1, "b.png": 7}


def test_missing_or_corrupt_labels_files_are_one_line_errors(tmp_path):
    with pytest.raises(TrtqError, match="labels file not found: "):
        read_labels(tmp_path / "missing.npy")
    (tmp_path / "cut.npy").write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': '<i8'")  # a header cut short
    with pytest.raises(TrtqError, match=r"cannot read labels .*cut.npy as a .npy file"):
        read_labels(tmp_path / "cut.npy")


# --- calibrate --compare-methods ------------------------------------------------------------------------------


def test_calibrate_compare_methods_on_held_out_png(mnist_model_path, tmp_path):
    run = trtq("calibrate", mnist_model_path, "--data", MNIST_PNG, "--max-samples", 100, "--cache",
               tmp_path / "m.cache", "--compare-methods", "--eval-data", MNIST_PNG, "--eval-labels",
               MNIST_PNG / "labels.csv", "-q")
    assert run.exit_code == 0, run.output
    lines = run.stdout.splitlines()
    table = lines[lines.index(next(line for line in lines if line.startswith("method"))) + 1:]
    methods = [line.split("  ")[0].strip() for line in table if line and not line.startswith(("FP32", "recommended"))]
    assert methods == ["entropy2", "minmax", "percentile 99.9", "percentile 99.99", "percentile 99.999", "mse"]
    assert "(300 samples; best = highest top-1 accuracy; differences within one standard error" in run.stdout
    assert lines[-1].startswith("recommended: ") and (tmp_path / "m.cache").exists()


def test_compare_methods_options_need_the_flag(mnist_model_path, tmp_path):
    run = trtq("calibrate", mnist_model_path, "--data", MNIST_PNG, "--eval-data", MNIST_PNG,
               "--calibrator", "entropy2", "--cache", tmp_path / "m.cache")
    assert run.exit_code == 2
    assert "--eval-data and --labels belong to --calibrator auto and --compare-methods" in run.stderr
    assert not (tmp_path / "m.cache").exists()


# --- figures and the HTML report -----------------------------------------------------------------------------


def test_histogram_png_marks_each_threshold_where_it_belongs(mnist_calibrated):
    stats = mnist_calibrated.stats["ReLU32_Output_0"]
    amax = entropy2_amax(stats)
    canvas = histogram_chart(stats, [("entropy2", amax, "#ff00ff")], width=600, height=300)
    lines = [item for item in canvas.items if item[0] == "line" and item[5] == "#ff00ff"]
    x = lines[0][1]  # the threshold line, then the legend swatch
    image = np.asarray(Image.open(io.BytesIO(canvas.to_png(scale=1))).convert("RGB")).astype(int)
    magenta = (image[:, :, 0] > 200) & (image[:, :, 1] < 60) & (image[:, :, 2] > 200)
    column_hits = magenta[60:200].sum(axis=0)  # inside the plot area, above the legend
    assert abs(int(column_hits.argmax()) - x) <= 1.5 and column_hits.max() > 100
    legend = [item[3] for item in canvas.items if item[0] == "text" and item[3].startswith("entropy2 = ")]
    assert legend == [f"entropy2 = {amax:.4g} (clips {100 * stats.fraction_above(amax):.3g} %)"]


def test_evaluate_html_and_plot_dir(mnist_model_path, mnist_cache, mnist_calibrated, tmp_path):
    html, plots = tmp_path / "r.html", tmp_path / "plots"
    run = trtq("evaluate", mnist_model_path, "--cache", mnist_cache, "--data", MNIST_PNG, "--max-samples", 50,
               "--html", html, "--plot-dir", plots, "--plot-tensor", "ReLU32_Output_0", "--plot-tensor", "Input3")
    assert run.exit_code == 0, run.output
    page = html.read_text()
    assert page.count("<svg") == 2 and "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert sorted(p.name for p in plots.iterdir()) == ["hist-Input3.png", "hist-Input3.svg",
                                                       "hist-ReLU32_Output_0.png", "hist-ReLU32_Output_0.svg"]
    svg = ET.parse(plots / "hist-ReLU32_Output_0.svg").getroot()
    texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    thresholds = method_thresholds(mnist_calibrated.stats["ReLU32_Output_0"])
    assert all(any(t.startswith(f"{label} = ") for t in texts) for label, _, _ in thresholds)
    assert any(t.startswith(f"in use = {mnist_calibrated.amax['ReLU32_Output_0']:.4g}") for t in texts)
    with Image.open(plots / "hist-ReLU32_Output_0.png") as png:
        assert png.size == (2 * int(svg.get("width")), 2 * int(svg.get("height")))


def test_unknown_plot_tensor_is_an_error_without_outputs(mnist_model_path, mnist_cache, tmp_path):
    run = trtq("evaluate", mnist_model_path, "--cache", mnist_cache, "--data", MNIST_PNG, "--max-samples", 5,
               "--html", tmp_path / "r.html", "--plot-tensor", "Plus30_Output_0")
    assert run.exit_code == 2 and "--plot-tensor 'Plus30_Output_0' is not a quantized activation" in run.stderr
    assert not (tmp_path / "r.html").exists()
