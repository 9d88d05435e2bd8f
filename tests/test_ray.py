"""``--ray``: calibration statistics sharded over a real local Ray instance give the byte-identical cache of
the single-machine run; a worker that cannot read the data is one clean error line; Ray is only imported
when asked for (see also tests/test_cli_calibrate.py and tests/test_architecture.py)."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import REPO
from tests.test_cli_calibrate import assert_user_error, run
from trtq import calibrate as api
from trtq.data import open_batches
from trtq.errors import TrtqError
from trtq.model import Model, load_model

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'trtq[ray]')")

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]
MNIST_DIGITS = REPO / "calib_data" / "mnist"


def conv_model(tmp_path) -> Model:
    """Conv -> Relu -> Conv with a dynamic batch: batches of any size, several calibrated tensors."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(2, 4, 3, 3)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
         helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
         helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2")],
        "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 4, 4])], [w1, w2])
    path = tmp_path / "convs.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return load_model(path)


def cache_bytes(result) -> bytes:
    return result.cache().to_bytes()


@pytest.mark.parametrize("shards", [1, 2, 3, 5])
def test_sharded_arrays_give_the_same_cache_and_statistics(tmp_path, shards):
    from trtq.distributed.calibrate import calibrate_ray

    model = conv_model(tmp_path)
    np.save(tmp_path / "x.npy", np.random.default_rng(1).normal(size=(37, 3, 8, 8)).astype(np.float32) * 3)
    source = open_batches(model, str(tmp_path / "x.npy"), batch_size=4, max_samples=30, seed=5)
    local = api.calibrate(model, source, "percentile", keep_histograms=True)
    sharded = calibrate_ray(model, source, "percentile", "local", shards=shards, keep_histograms=True)
    assert cache_bytes(sharded) == cache_bytes(local)
    assert (sharded.stats.samples, sharded.stats.batches) == (local.stats.samples, local.stats.batches) == (30, 8)
    for name, stats in local.stats.tensors.items():
        other = sharded.stats[name]
        assert (other.count, other.min, other.max, other.exponent) == (stats.count, stats.min, stats.max,
                                                                        stats.exponent)
        assert np.array_equal(other.hist, stats.hist)
    local.stats.save(tmp_path / "a.npz")
    sharded.stats.save(tmp_path / "b.npz")
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files)


def test_cli_calibrate_ray_matches_local_on_images(tmp_path):
    model = str(REPO / "calib_data" / "mnist-8.onnx")
    common = ["--data", str(MNIST_DIGITS), "--max-samples", "60", "--seed", "2", "--calibrator", "entropy2", "-q"]
    assert run("calibrate", model, *common, "--cache", str(tmp_path / "local.cache")).exit_code == 0
    result = run("calibrate", model, *common, "--ray", "local", "--cache", str(tmp_path / "ray.cache"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ray.cache").read_bytes() == (tmp_path / "local.cache").read_bytes()


def test_cli_auto_with_eval_data_shards_and_matches_local(tmp_path):
    model = str(REPO / "calib_data" / "mnist-8.onnx")
    common = ["--data", str(MNIST_DIGITS), "--max-samples", "40", "--eval-data", str(MNIST_DIGITS), "-q"]
    assert run("calibrate", model, *common, "--cache", str(tmp_path / "local.cache")).exit_code == 0
    result = run("calibrate", model, *common, "--ray", "local", "--cache", str(tmp_path / "ray.cache"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ray.cache").read_bytes() == (tmp_path / "local.cache").read_bytes()


def test_cli_calibrate_ray_tensors_qdq_matches_local(tmp_path):
    model = str(REPO / "calib_data" / "mnist-8.onnx")
    common = ["--data", str(MNIST_DIGITS), "--max-samples", "40", "--calibrator", "percentile", "-q"]
    for flags, name in (([], "all"), (["--tensors", "qdq"], "local"), (["--tensors", "qdq", "--ray", "local"], "ray")):
        result = run("calibrate", model, *common, *flags, "--cache", str(tmp_path / f"{name}.cache"))
        assert result.exit_code == 0, result.output
    assert (tmp_path / "ray.cache").read_bytes() == (tmp_path / "local.cache").read_bytes()
    lines = {n: len((tmp_path / f"{n}.cache").read_text().splitlines()) for n in ("all", "ray")}
    assert lines["ray"] < lines["all"], lines  # the subset reached the shards


def test_cli_ray_device_cuda_on_a_cluster_without_gpus_is_one_line(tmp_path, local_ray):
    if local_ray.cluster_resources().get("GPU", 0):
        pytest.skip("this Ray instance offers GPUs: the error under test is for a cluster without any")
    common = [str(REPO / "calib_data" / "mnist-8.onnx"), "--data", str(MNIST_DIGITS), "--max-samples", "4",
              "--device", "cuda", "--ray", "local", "--cache", str(tmp_path / "x.cache")]
    assert_user_error(run("calibrate", *common, "--calibrator", "minmax"), "offers no GPU")
    # auto without --eval-data calibrates here (its hold-out split): this machine's onnxruntime is asked
    assert_user_error(run("calibrate", *common), "--device cuda needs onnxruntime-gpu")
    assert not (tmp_path / "x.cache").exists()


def test_worker_that_cannot_read_the_data_is_one_line(tmp_path):
    from trtq.distributed.calibrate import calibrate_ray

    folder = tmp_path / "digits"
    shutil.copytree(MNIST_DIGITS, folder)
    model = load_model(REPO / "calib_data" / "mnist-8.onnx")
    source = open_batches(model, str(folder), max_samples=8)
    shutil.rmtree(folder)  # opened here, gone where the tasks run
    with pytest.raises(TrtqError) as caught:
        calibrate_ray(model, source, "minmax", "local", shards=2)
    message = str(caught.value)
    assert "cannot read the data" in message and str(folder) in message and "\n" not in message


def test_cli_worker_failure_exits_2_with_one_line(tmp_path, monkeypatch):
    from trtq.distributed import calibrate as distributed

    original = distributed.split_source

    def elsewhere(source, shards):  # the workers see a path the driver's host has and they do not
        parts = original(source, shards)
        for part in parts:
            part.root = tmp_path / "not-mounted"
        return parts

    monkeypatch.setattr(distributed, "split_source", elsewhere)
    result = run("calibrate", str(REPO / "calib_data" / "mnist-8.onnx"), "--data", str(MNIST_DIGITS),
                 "--max-samples", "4", "--calibrator", "minmax", "--ray", "local", "--cache",
                 str(tmp_path / "x.cache"), "-q")
    assert_user_error(result, "cannot read the data")
    assert not (tmp_path / "x.cache").exists()


def test_ray_with_a_loader_script_is_a_usage_error(tmp_path):
    script = tmp_path / "dl.py"
    script.write_text("import numpy as np\n\ndef load_data():\n"
                      "    yield {'Input3': np.zeros((1, 1, 28, 28), np.float32)}\n")
    result = run("calibrate", str(REPO / "calib_data" / "mnist-8.onnx"), "--data-loader-script", str(script),
                 "--ray", "local", "--cache", str(tmp_path / "x.cache"))
    assert_user_error(result, "--ray shards the data by sample index")


def test_init_kwargs_for_each_address(monkeypatch, tmp_path):
    from trtq.distributed.backend import init_kwargs

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    local = init_kwargs("local", 2)
    assert local["address"] == "local" and local["num_cpus"] == 2 and local["_temp_dir"] == str(tmp_path)
    assert local["include_dashboard"] is False
    assert init_kwargs("auto")["address"] == "auto" and "_temp_dir" not in init_kwargs("10.0.0.1:6379")
    assert init_kwargs("ray://head:10001") == {"address": "ray://head:10001", "log_to_driver": True}
    with pytest.raises(TrtqError, match="needs an address"):
        init_kwargs(" ")


@pytest.fixture(scope="module")
def mnist_ranges():
    model = load_model(REPO / "calib_data" / "mnist-8.onnx")
    source = open_batches(model, str(MNIST_DIGITS), max_samples=100)
    return model, api.calibrate(model, source, "entropy2").amax


@pytest.mark.parametrize("mode", ["alone", "all-but-one"])
def test_sensitivity_on_ray_ranks_and_keeps_as_locally(mnist_ranges, mode):
    from trtq.accuracy import SensitivityAnalysis
    from trtq.distributed.sensitivity import use_ray

    model, amax = mnist_ranges
    amax = {**amax, "ReLU114_Output_0": amax["ReLU114_Output_0"] * 0.05}  # one clearly harmful layer
    source = open_batches(model, str(MNIST_DIGITS), max_samples=48, seed=4)
    local = SensitivityAnalysis(model, amax, source)
    expected = local.rank(mode)
    local.keep_set(expected, target_sqnr=30.0)
    remote = SensitivityAnalysis(model, amax, source)
    calls = []
    close = use_ray(remote, model, "local", actors=2, progress=lambda done, total: calls.append((done, total)))
    try:
        got = remote.rank(mode)
    finally:
        close()
    remote.keep_set(got, target_sqnr=30.0)
    assert calls and calls[-1][0] == calls[-1][1] == len(calls)
    assert [e.layer.node for e in got.ranking] == [e.layer.node for e in expected.ranking]
    assert got.document() == expected.document()
    assert got.keep == expected.keep and got.keep
    assert np.array_equal(remote.stats["ReLU114_Output_0"].hist, local.stats["ReLU114_Output_0"].hist)


def test_cli_sensitivity_ray_writes_the_same_report(mnist_ranges, tmp_path):
    import json

    from trtq.cache import cache_from_amax, write_cache

    model, amax = mnist_ranges
    write_cache(tmp_path / "m.cache", cache_from_amax(amax, "entropy2"))
    args = ["sensitivity", str(model.path), "--cache", str(tmp_path / "m.cache"), "--data", str(MNIST_DIGITS),
            "--max-samples", "24", "--target-sqnr", "40"]
    assert run(*args, "--json", str(tmp_path / "local.json")).exit_code == 0
    result = run(*args, "--json", str(tmp_path / "ray.json"), "--ray", "local")
    assert result.exit_code == 0, result.output
    assert "ranking on Ray: " in result.output and " tasks" in result.output
    assert json.loads((tmp_path / "ray.json").read_text()) == json.loads((tmp_path / "local.json").read_text())


def test_a_raising_task_is_one_clean_line(mnist_ranges, tmp_path, monkeypatch):
    from trtq.cache import cache_from_amax, write_cache
    from trtq.distributed import sensitivity as distributed

    model, amax = mnist_ranges
    write_cache(tmp_path / "m.cache", cache_from_amax(amax, "entropy2"))

    def broken(self, configurations, max_samples, downstream):
        raise RuntimeError("worker exploded\nsecond line")

    monkeypatch.setattr(distributed.LayerEvaluator, "evaluate", broken)  # travels with the pickled class
    result = run("sensitivity", str(model.path), "--cache", str(tmp_path / "m.cache"), "--data", str(MNIST_DIGITS),
                 "--max-samples", "4", "--ray", "local", "--json", str(tmp_path / "r.json"))
    assert result.exit_code == 2, result.output
    assert "a Ray task failed: RuntimeError: worker exploded" in result.output
    assert "second line" not in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r.json").exists()


def test_an_explicit_memory_budget_reaches_the_workers(tmp_path):
    """--memory-budget on the driver bounds the shards' captures too: a budget below the model's minimum is the
    same one-line error from a worker, and a sufficient one gives the local cache."""
    from trtq.distributed.calibrate import calibrate_ray
    from trtq.segments import memory_budget_scope

    model = conv_model(tmp_path)
    np.save(tmp_path / "x.npy", np.random.default_rng(1).normal(size=(12, 3, 8, 8)).astype(np.float32))
    source = open_batches(model, str(tmp_path / "x.npy"), batch_size=4)
    local = api.calibrate(model, source, "minmax")
    with memory_budget_scope(64 << 10):
        sharded = calibrate_ray(model, source, "minmax", "local", shards=2)
    assert cache_bytes(sharded) == cache_bytes(local)
    with memory_budget_scope(16), pytest.raises(TrtqError, match="memory-budget"):
        calibrate_ray(model, source, "minmax", "local", shards=2)
