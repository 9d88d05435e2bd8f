"""``--ray`` on the commands built from calibrate and sensitivity: ``trtq quantize --ray`` (ranking on actors,
calibration sharded with --eval-data) and ``trtq evaluate --ray`` (batches as tasks) give the local run's
files and numbers on the real MNIST model and digits; a local Ray instance, no stand-ins."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import DATA, REPO
from tests.test_cli_calibrate import assert_user_error, run

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'trtq[ray]')")

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]
MODEL = REPO / "calib_data" / "mnist-8.onnx"
DIGITS = REPO / "calib_data" / "mnist"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    with np.load(DATA / "mnist-test-first1000.npz") as data:
        images, labels = data["images"].astype(np.float32)[:, None], data["labels"].astype(np.int64)
    folder = tmp_path_factory.mktemp("digits")
    np.save(folder / "cal.npy", images[:120])
    np.save(folder / "val.npy", images[600:680])
    np.save(folder / "val_labels.npy", labels[600:680])
    return folder


def without_timings(document: dict) -> dict:
    """A quantize report without its wall-clock figures (they differ between any two runs)."""
    document = {**document, "seconds": None, "outputs": None}
    document["steps"] = [{**step, "seconds": None} for step in document["steps"]]
    document["corrections"] = [{**step, "seconds": None} for step in document.get("corrections", [])]
    return document


def quantize_files(folder) -> dict[str, bytes]:
    return {path.name.split(".", 1)[1]: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize("eval_data", [True, False], ids=["eval-data", "holdout"])
def test_cli_quantize_ray_keeps_and_writes_as_locally(tmp_path, digits, eval_data):
    # 44 dB: all INT8 misses it, so the keep-in-float search (and its ranking, on Ray) runs
    args = ["quantize", str(MODEL), "--data", str(digits / "cal.npy"), "--min-sqnr", "44", "--calibrator", "minmax"]
    if eval_data:
        args += ["--eval-data", str(digits / "val.npy"), "--labels", str(digits / "val_labels.npy")]
    (tmp_path / "local").mkdir()
    (tmp_path / "ray").mkdir()
    local = run(*args, "-o", str(tmp_path / "local" / "m.onnx"))
    assert local.exit_code == 0, local.output
    result = run(*args, "--ray", "local", "-o", str(tmp_path / "ray" / "m.onnx"))
    assert result.exit_code == 0, result.output
    assert "ranking on Ray: " in result.output and " tasks" in result.output
    assert ("the calibration pass (with its cross-fitting folds) runs on this machine" in result.output) != eval_data
    report = json.loads((tmp_path / "ray" / "m.report.json").read_text())
    assert report["keep"] and report["sensitivity"]["ranking"]  # the ranking ran and kept layers in float
    assert without_timings(report) == without_timings(json.loads((tmp_path / "local" / "m.report.json").read_text()))
    ray_files, local_files = quantize_files(tmp_path / "ray"), quantize_files(tmp_path / "local")
    assert set(ray_files) == {"onnx", "cache", "keep.txt", "report.json", "report.html"}
    for name in ("onnx", "cache", "keep.txt"):
        assert ray_files[name] == local_files[name], name


def test_cli_quantize_ray_with_a_metric_is_a_usage_error(tmp_path, digits):
    script = tmp_path / "metric.py"
    script.write_text("def metric(fp32, int8, labels):\n    return 1.0\n")
    result = run("quantize", str(MODEL), "--data", str(digits / "cal.npy"), "--metric", str(script),
                 "--ray", "local", "-o", str(tmp_path / "q.onnx"))
    assert_user_error(result, "--ray does not run a task metric yet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metric.py"]


# -- evaluate --ray ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_cache(tmp_path_factory):
    from trtq.calibrate import calibrate
    from trtq.data import open_batches
    from trtq.model import load_model

    model = load_model(MODEL)
    path = tmp_path_factory.mktemp("cache") / "m.cache"
    calibrate(model, open_batches(model, str(DIGITS), max_samples=80), "entropy2").write_cache(path)
    return path


def test_cli_evaluate_ray_reports_the_local_figures(tmp_path, mnist_cache):
    args = ["evaluate", str(MODEL), "--cache", str(mnist_cache), "--data", str(DIGITS), "--max-samples", "90",
            "--seed", "3", "--labels", str(DIGITS / "labels.csv")]
    local = run(*args, "--json", str(tmp_path / "local.json"))
    assert local.exit_code == 0, local.output
    result = run(*args, "--json", str(tmp_path / "ray.json"), "--ray", "local")
    assert result.exit_code == 0, result.output
    assert "evaluating on Ray: " in result.output and " tasks" in result.output
    got, expected = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("ray", "local"))
    assert got["samples"] == expected["samples"] == 90 and got["accuracy"]["fp32"]["top1"] > 0.9
    for key in ("outputs", "accuracy", "accuracy_output", "quantized_nodes"):
        assert got[key] == expected[key], key  # the same floats, not merely close ones
    # the printed table is the local one, line for line
    table = [line for line in result.output.splitlines() if line.startswith(("Plus214", "  FP32", "  INT8"))]
    assert table and table == [line for line in local.output.splitlines()
                               if line.startswith(("Plus214", "  FP32", "  INT8"))]


@pytest.mark.parametrize("shards", [1, 3, 4])
def test_evaluate_shards_give_the_same_rows_and_statistics(tmp_path, shards):
    from tests.test_ray import conv_model
    from trtq.accuracy.evaluate import evaluate_int8
    from trtq.calibrate import calibrate
    from trtq.data import open_batches
    from trtq.distributed.evaluate import evaluate_int8_ray

    model = conv_model(tmp_path)  # a dynamic batch: batches of 4, the last one partial
    np.save(tmp_path / "x.npy", np.random.default_rng(7).normal(size=(30, 3, 8, 8)).astype(np.float32) * 2)
    source = open_batches(model, str(tmp_path / "x.npy"), batch_size=4, max_samples=27, seed=1)
    amax = calibrate(model, source, "minmax").amax
    local = evaluate_int8(model, amax, source, collect_stats=True)
    remote = evaluate_int8_ray(model, amax, source, "local", collect_stats=True, shards=shards)
    assert remote.samples == local.samples == 27
    assert remote.outcome.rows == local.outcome.rows
    assert remote.document() == local.document()
    for name, stats in local.stats.tensors.items():
        other = remote.stats[name]
        assert (other.count, other.min, other.max, other.exponent) == (stats.count, stats.min, stats.max,
                                                                        stats.exponent)
        assert np.array_equal(other.hist, stats.hist)


def test_cli_evaluate_ray_refuses_a_loader_script(tmp_path, mnist_cache):
    script = tmp_path / "dl.py"
    script.write_text("import numpy as np\n\ndef load_data():\n"
                      "    yield {'Input3': np.zeros((1, 1, 28, 28), np.float32)}\n")
    result = run("evaluate", str(MODEL), "--cache", str(mnist_cache), "--data-loader-script", str(script),
                 "--ray", "local", "--json", str(tmp_path / "e.json"))
    assert_user_error(result, "--ray shards the data by sample index")
    assert not (tmp_path / "e.json").exists()


# -- ray = "ADDRESS" in trtq.toml ----------------------------------------------------------------------------


def pipeline_config(folder, digits, ray: str | None):
    lines = ['output = "artifacts"', 'precisions = ["int8"]', 'calibrators = ["auto", "entropy2"]',
             *([f'ray = "{ray}"'] if ray else []),
             "[gates]", "min_sqnr_db = 44.0",  # quantize keeps layers in float: its ranking runs
             "[[models]]", 'name = "mnist"', f'path = "{MODEL}"', f'data = {{ path = "{digits / "cal.npy"}" }}',
             f'eval = {{ path = "{digits / "val.npy"}", labels = "{digits / "val_labels.npy"}" }}']
    folder.mkdir()
    (folder / "trtq.toml").write_text("\n".join(lines) + "\n")
    return folder / "trtq.toml"


def test_pipeline_ray_runs_the_statistics_and_quantize_steps_on_ray(tmp_path, digits, monkeypatch):
    from trtq.distributed import calibrate as distributed_calibrate
    from trtq.distributed import sensitivity as distributed_sensitivity

    used = []  # which Ray paths the steps took (the real functions run; nothing is replaced)

    def spy(real):
        def record(*args, **kwargs):
            used.append(real.__name__)
            return real(*args, **kwargs)

        return record

    for module, name in ((distributed_calibrate, "collect_statistics_ray"), (distributed_sensitivity, "use_ray")):
        monkeypatch.setattr(module, name, spy(getattr(module, name)))
    # exit 3 both times: entropy2's all-INT8 model misses the 44 dB gate that makes quantize keep layers
    local = run("run", str(pipeline_config(tmp_path / "local", digits, None)))
    assert local.exit_code == 3, local.output
    assert used == []
    result = run("run", str(pipeline_config(tmp_path / "ray", digits, "local")))
    assert result.exit_code == 3, result.output
    assert "mnist/int8-entropy2: min_sqnr_db" in result.output and "mnist/int8-auto: " not in result.output
    # statistics: one sharded pass; quantize: its calibration pass sharded (separate eval data), its ranking
    assert sorted(used) == ["collect_statistics_ray", "collect_statistics_ray", "use_ray"]
    out_local, out_ray = tmp_path / "local" / "artifacts", tmp_path / "ray" / "artifacts"
    manifest = json.loads((out_ray / "manifest.json").read_text())
    assert manifest["steps"]["mnist/int8-auto/quantize"]["result"]["record"]["keep"]  # layers kept in float
    compared = [p.relative_to(out_local) for p in out_local.rglob("*")
                if p.suffix in (".cache", ".onnx", ".txt") and p.is_file()]
    assert len(compared) >= 5  # two caches, two Q/DQ models, the keep list
    for rel in compared:
        assert (out_ray / rel).read_bytes() == (out_local / rel).read_bytes(), rel
    with np.load(out_local / "mnist" / "statistics.npz") as a, np.load(out_ray / "mnist" / "statistics.npz") as b:
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
