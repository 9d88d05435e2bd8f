"""``trtq run`` end to end on the bundled MNIST default, on a CPU machine: artifacts and manifest, GPU steps
reported as skipped, gates, and incremental re-runs (reuse, --force, a changed option, a tampered file).

The first run is the repository's own ``trtq.toml`` (300 digits). The other tests copy its output folder
and run configs that differ from it in one thing, so each run only does what that change requires.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from PIL import Image

from trtq.cli import cli
from trtq.fileio import sha256_file

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "calib_data" / "mnist-8.onnx"
DIGITS = REPO / "calib_data" / "mnist"
LABELS = DIGITS / "labels.csv"
CPU_STEPS = ("mnist/statistics", "mnist/int8-entropy2/calibrate", "mnist/int8-entropy2/export",
             "mnist/fp16/export", "mnist/int8-entropy2/evaluate", "mnist/fp16/evaluate")
GPU_STEPS = tuple(f"mnist/{v}/{k}" for v in ("int8-entropy2", "fp16") for k in ("build", "bench", "report"))


def run_trtq(*args: str):
    result = CliRunner().invoke(cli, ["run", *args], catch_exceptions=False)
    return result


def demo_config(folder: Path, *, calibrators=None, gates: str | None = None, model_extra: str = "") -> Path:
    """The repository's trtq.toml with absolute paths (so it can live in ``folder``) and optional changes."""
    text = (REPO / "trtq.toml").read_text()
    text = text.replace('"calib_data/', f'"{REPO}/calib_data/')
    if calibrators is not None:
        text = re.sub(r"^calibrators = \[[^\]]*\]", f"calibrators = {json.dumps(list(calibrators))}", text, count=1,
                      flags=re.MULTILINE)
    if gates is not None:
        start = text.index("[gates]")
        end = text.index("[[models]]")
        text = text[:start] + "[gates]\n" + gates + "\n\n" + text[end:]
    if model_extra:
        text = text.replace('path = "' + str(MODEL) + '"\n', 'path = "' + str(MODEL) + '"\n' + model_extra + "\n")
    path = folder / "trtq.toml"
    path.write_text(text)
    return path


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def actions(out: Path) -> dict[str, str]:
    return {step: record["action"] for step, record in manifest(out)["actions"].items()}


def assert_consistent(out: Path) -> dict:
    """Every listed file exists with its listed sha256 and size, every file in the folder is listed,
    and nothing temporary is left."""
    doc = manifest(out)
    for rel, record in doc["files"].items():
        path = out / rel
        assert path.is_file(), rel
        assert path.stat().st_size == record["bytes"], rel
        assert sha256_file(path) == record["sha256"], rel
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == set(doc["files"]) | {"manifest.json"}
    assert not any(p.name.endswith(".tmp") or p.name.startswith(".") for p in out.rglob("*"))
    for step_id, entry in doc["steps"].items():
        if entry["status"] == "done":
            assert all(doc["files"][rel]["step"] == step_id for rel in entry["files"])
    return doc


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, object]:
    """``trtq run trtq.toml`` (the bundled default) into a fresh folder."""
    out = tmp_path_factory.mktemp("demo") / "artifacts"
    result = run_trtq(str(REPO / "trtq.toml"), "--output", str(out))
    return out, result


@pytest.fixture
def copy_of_demo(demo, tmp_path) -> Path:
    out = tmp_path / "artifacts"
    shutil.copytree(demo[0], out)
    return out


def reference_predictions(model_path: Path, images: np.ndarray) -> np.ndarray:
    """argmax of a model run directly in onnxruntime, one digit at a time (the model's batch is 1)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.add_session_config_entry("session.disable_quant_qdq", "1")  # Q/DQ computed as written, no int8 kernels
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.array([int(np.argmax(session.run(None, {name: image[None, None]})[0])) for image in images])


def test_demo_runs_the_cpu_steps_and_says_why_the_gpu_steps_are_skipped(demo):
    out, result = demo
    assert result.exit_code == 0, result.output
    doc = assert_consistent(out)
    assert doc["status"] == "complete" and doc["exit_code"] == 0
    for step in CPU_STEPS:
        assert doc["steps"][step]["status"] == "done" and doc["actions"][step]["action"] == "ran"
    for step in GPU_STEPS:
        assert doc["actions"][step]["action"] == "skipped"
        assert "tensorrt" in doc["actions"][step]["reason"]
        assert not doc["steps"][step]["files"]
    assert doc["gpu_steps"]["available"] is False
    assert "skipped build, bench, report of mnist/int8-auto, mnist/int8-entropy2, mnist/fp16" in result.stdout
    assert "tensorrt" in result.stdout
    # no long step is silent in a CI log: the statistics pass and quantize's say how far they are
    assert result.output.count("calibration pass: 300/300 samples (100 %)") == 2
    assert "measuring 5 range methods against FP32" in result.output
    versions = doc["versions"]
    assert versions["tensorrt"] is None and versions["gpu"] is None and versions["driver"] is None
    assert versions["onnxruntime"] == ort.__version__ and versions["onnx"] == onnx.__version__
    inputs = doc["models"]["mnist"]
    assert inputs["sha256"] == sha256_file(MODEL)
    assert inputs["data"]["files"] == 301 and inputs["data"]["path"] == "calib_data/mnist"
    assert inputs["eval_data"]["labels"]["sha256"] == sha256_file(LABELS)
    variants = inputs["variants"]
    assert set(variants) == {"int8-auto", "int8-entropy2", "fp16"}
    assert variants["int8-entropy2"]["files"] == sorted([
        "mnist/int8-entropy2/evaluate.json", "mnist/int8-entropy2/mnist-8.cache",
        "mnist/int8-entropy2/mnist-8.int8-entropy2.onnx", "mnist/int8-entropy2/mnist-8.ranges.json"])
    for name, variant in variants.items():  # the auto variant also has its quantize target, met
        assert [g["status"] for g in variant["gates"]] == ["pass"] * (3 if name == "int8-auto" else 2)
    assert doc["gates"] == {"passed": True, "failed": []}
    assert (out / "summary.md").read_text().startswith("## trtq run: `")


def test_demo_artifacts_match_what_trtq_computes_on_its_own(demo, tmp_path):
    """The cache is trtq calibrate's, byte for byte; the exported models are the ones evaluated, and the
    accuracies in the manifest are what those models score, run directly in onnxruntime."""
    out, _ = demo
    doc = manifest(out)
    from trtq.calibrate import calibrate
    from trtq.data import open_batches
    from trtq.model import load_model
    from trtq.versions import installed_trt_version

    model = load_model(MODEL)
    expected = tmp_path / "expected.cache"
    calibrate(model, open_batches(model, str(DIGITS)), "entropy2").write_cache(expected, installed_trt_version())
    assert (out / "mnist/int8-entropy2/mnist-8.cache").read_bytes() == expected.read_bytes()

    files = sorted(DIGITS.glob("*.png"))
    images = np.stack([np.asarray(Image.open(f), dtype=np.float32) for f in files])
    labels = np.array([int(f.stem.split("_")[1]) for f in files])
    fp32 = reference_predictions(MODEL, images)
    int8_model = out / "mnist/int8-entropy2/mnist-8.int8-entropy2.onnx"
    fp16_model = out / "mnist/fp16/mnist-8.fp16.onnx"
    proto = onnx.load(str(int8_model))
    onnx.checker.check_model(proto)
    assert sum(n.op_type == "QuantizeLinear" for n in proto.graph.node) >= 3
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in onnx.load(str(fp16_model)).graph.initializer)
    for variant, path in (("int8-entropy2", int8_model), ("fp16", fp16_model)):
        predictions = reference_predictions(path, images)
        accuracy = doc["models"]["mnist"]["variants"][variant]["accuracy"]
        assert accuracy["samples"] == 300
        assert accuracy["top1_fp32"] == pytest.approx(np.mean(fp32 == labels))
        assert accuracy["top1"] == pytest.approx(np.mean(predictions == labels))
        assert accuracy["top1_agreement"] == pytest.approx(np.mean(predictions == fp32))
        assert accuracy["top1_drop_points"] == pytest.approx(100 * (np.mean(fp32 == labels) - np.mean(
            predictions == labels)))
        evaluation = json.loads((out / f"mnist/{variant}/evaluate.json").read_text())
        assert evaluation["accuracy"]["fp32"]["top1"] == accuracy["top1_fp32"]
    assert np.mean(fp32 == labels) > 0.95


def test_second_run_reuses_every_step_and_force_runs_them_again(copy_of_demo, tmp_path):
    out = copy_of_demo
    before = {rel: rec["sha256"] for rel, rec in manifest(out)["files"].items()}
    config = demo_config(tmp_path)  # same content as trtq.toml, another folder: the fingerprints ignore paths
    result = run_trtq(str(config), "--output", str(out))
    assert result.exit_code == 0, result.output
    done = actions(out)
    assert all(done[step] == "reused" for step in CPU_STEPS), done
    assert all(done[step] == "skipped" for step in GPU_STEPS)
    doc = assert_consistent(out)
    assert {rel: doc["files"][rel]["sha256"] for rel in before if rel != "summary.md"} == \
        {rel: sha for rel, sha in before.items() if rel != "summary.md"}

    result = run_trtq(str(config), "--output", str(out), "--force")
    assert result.exit_code == 0, result.output
    assert all(actions(out)[step] == "ran" for step in CPU_STEPS)
    doc = assert_consistent(out)
    for rel in ("mnist/statistics.npz", "mnist/int8-entropy2/mnist-8.cache", "mnist/fp16/mnist-8.fp16.onnx",
                "mnist/int8-entropy2/mnist-8.int8-entropy2.onnx"):
        assert doc["files"][rel]["sha256"] == before[rel], rel  # the same inputs give the same bytes


def test_a_changed_option_reruns_only_what_depends_on_it(copy_of_demo, tmp_path):
    out = copy_of_demo
    old_cache = out / "mnist/int8-entropy2/mnist-8.cache"
    assert old_cache.is_file()
    config = demo_config(tmp_path, calibrators=("minmax",))
    result = run_trtq(str(config), "--output", str(out))
    assert result.exit_code == 0, result.output
    done = actions(out)
    assert done["mnist/statistics"] == "reused"  # the statistics serve every calibrator
    assert done["mnist/fp16/export"] == done["mnist/fp16/evaluate"] == "reused"
    assert [done[f"mnist/int8-minmax/{k}"] for k in ("calibrate", "export", "evaluate")] == ["ran"] * 3
    doc = assert_consistent(out)
    assert not any(step.startswith("mnist/int8-entropy2") for step in doc["steps"])
    assert not (out / "mnist/int8-entropy2").exists() or not any((out / "mnist/int8-entropy2").iterdir())
    assert "int8-minmax" in doc["models"]["mnist"]["variants"]

    # keep_precision changes the exports (and what they are evaluated on), not the ranges
    config = demo_config(tmp_path, calibrators=("minmax",), model_extra='keep_precision = ["Convolution110=fp32"]')
    result = run_trtq(str(config), "--output", str(out))
    assert result.exit_code == 0, result.output
    done = actions(out)
    assert done["mnist/statistics"] == done["mnist/int8-minmax/calibrate"] == "reused"
    assert done["mnist/int8-minmax/export"] == done["mnist/int8-minmax/evaluate"] == "ran"
    assert done["mnist/fp16/export"] == done["mnist/fp16/evaluate"] == "ran"
    proto = onnx.load(str(out / "mnist/int8-minmax/mnist-8.int8-minmax.onnx"))
    conv = next(n for n in proto.graph.node if n.name == "Convolution110")
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    assert all(producers.get(name) != "DequantizeLinear" for name in conv.input)
    assert_consistent(out)


def test_a_tampered_artifact_is_made_again(copy_of_demo, tmp_path):
    out = copy_of_demo
    exported = out / "mnist/fp16/mnist-8.fp16.onnx"
    original = exported.read_bytes()
    exported.write_bytes(original + b"\0")
    result = run_trtq(str(demo_config(tmp_path)), "--output", str(out))
    assert result.exit_code == 0, result.output
    done = actions(out)
    assert done["mnist/fp16/export"] == "ran"
    assert done["mnist/fp16/evaluate"] == "reused"  # the re-export has the bytes the evaluation saw
    assert exported.read_bytes() == original
    assert_consistent(out)


def test_a_failing_gate_exits_3_and_says_which(copy_of_demo, tmp_path):
    out = copy_of_demo
    config = demo_config(tmp_path, calibrators=("entropy2",), gates="min_sqnr_db = 40.0\nmax_top1_drop = 1.0")
    result = run_trtq(str(config), "--output", str(out))
    assert result.exit_code == 3, result.output
    doc = assert_consistent(out)
    assert all(actions(out)[step] == "reused" for step in CPU_STEPS)  # gates need no step to run again
    assert doc["gates"] == {"passed": False, "failed": ["mnist/int8-entropy2: min_sqnr_db"]}
    assert doc["exit_code"] == 3
    int8 = {g["gate"]: g for g in doc["models"]["mnist"]["variants"]["int8-entropy2"]["gates"]}
    assert int8["min_sqnr_db"]["status"] == "fail" and int8["min_sqnr_db"]["value"] < 40
    assert int8["max_top1_drop"]["status"] == "pass"
    fp16 = doc["models"]["mnist"]["variants"]["fp16"]["gates"]
    assert [g["status"] for g in fp16] == ["pass", "pass"]
    assert "gates: 1 of 4 FAILED" in result.stdout
    assert "mnist/int8-entropy2: min_sqnr_db:" in result.stdout
    assert "❌ FAIL 1/2" in (out / "summary.md").read_text()


def test_latency_gate_is_not_evaluated_without_a_gpu(copy_of_demo, tmp_path):
    out = copy_of_demo
    config = demo_config(tmp_path, gates="max_latency_ms = 5.0")
    result = run_trtq(str(config), "--output", str(out))
    assert result.exit_code == 0, result.output
    gate = manifest(out)["models"]["mnist"]["variants"]["fp16"]["gates"][0]
    assert gate["status"] == "not evaluated" and "bench" in gate["reason"]


def test_steps_option_selects_steps_and_what_they_need(tmp_path):
    out = tmp_path / "out"
    config = demo_config(tmp_path)
    result = run_trtq(str(config), "--output", str(out), "--steps", "export")
    assert result.exit_code == 0, result.output
    done = actions(out)
    assert done["mnist/statistics"] == done["mnist/int8-entropy2/calibrate"] == done["mnist/fp16/export"] == "ran"
    assert done["mnist/fp16/evaluate"] == "skipped"
    assert "not selected" in manifest(out)["actions"]["mnist/fp16/evaluate"]["reason"]
    assert not (out / "mnist/fp16/evaluate.json").exists()
    assert_consistent(out)
    result = run_trtq(str(config), "--output", str(out), "--steps", "nonsense")
    assert result.exit_code == 2 and "unknown step 'nonsense'" in result.output


def test_a_failing_step_exits_4_and_its_dependents_are_skipped(tmp_path):
    """A data loader that breaks after its first batch (the one the config check reads): the INT8 variant's
    quantize step (no calibrator configured: the default) fails with the script's error; export/evaluate of
    the INT8 variant cannot run; the FP16 export does not need the data and completes."""
    (tmp_path / "broken.py").write_text(
        "import numpy as np\n\n"
        "def load_data():\n"
        "    yield {'Input3': np.zeros((1, 1, 28, 28), np.float32)}\n"
        "    raise OSError('the data share went away')\n")
    config = tmp_path / "trtq.toml"
    config.write_text(f'output = "out"\n[[models]]\nname = "mnist"\npath = "{MODEL}"\n'
                      'data = { loader_script = "broken.py" }\n')
    result = run_trtq(str(config))
    assert result.exit_code == 4, result.output
    out = tmp_path / "out"
    doc = assert_consistent(out)
    assert doc["exit_code"] == 4
    assert "mnist/statistics" not in doc["steps"]  # quantize makes its own calibration pass
    failed = doc["steps"]["mnist/int8-auto/quantize"]
    assert failed["status"] == "failed" and "the data share went away" in failed["reason"] and not failed["files"]
    assert doc["actions"]["mnist/int8-auto/export"] == {
        "action": "skipped", "reason": "needs quantize (mnist/int8-auto/quantize), which failed"}
    assert doc["actions"]["mnist/fp16/export"]["action"] == "ran"
    assert doc["actions"]["mnist/fp16/evaluate"]["action"] == "failed"
    assert "FAILED mnist/int8-auto/quantize: " in result.stdout


def test_a_manifest_never_makes_trtq_delete_outside_its_folder(copy_of_demo, tmp_path):
    """A step entry naming a file outside the output folder (an edited or foreign manifest) is dropped when the
    manifest is read: the step leaving the config must not delete ``../precious.txt``."""
    out = copy_of_demo
    precious = out.parent / "precious.txt"
    precious.write_text("not trtq's\n")
    doc = manifest(out)
    doc["steps"]["gone/fp16/export"] = {"status": "done", "files": ["../precious.txt"]}
    doc["files"]["../precious.txt"] = {"sha256": sha256_file(precious), "bytes": precious.stat().st_size,
                                       "step": "gone/fp16/export"}
    (out / "manifest.json").write_text(json.dumps(doc))
    result = run_trtq(str(demo_config(tmp_path)), "--output", str(out))
    assert result.exit_code == 0, result.output
    assert precious.read_text() == "not trtq's\n"
    doc = assert_consistent(out)
    assert "gone/fp16/export" not in doc["steps"] and "../precious.txt" not in doc["files"]
    assert all(actions(out)[step] == "reused" for step in CPU_STEPS)


def test_a_file_where_an_artifact_folder_goes_fails_the_step_in_one_line(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mnist").write_text("in the way\n")  # where the model's folder goes
    result = run_trtq(str(demo_config(tmp_path)), "--output", str(out), "--steps", "cpu")
    assert result.exit_code == 4, result.output
    doc = manifest(out)
    for step in ("mnist/statistics", "mnist/fp16/export"):
        assert doc["actions"][step]["action"] == "failed"
        assert doc["actions"][step]["reason"].startswith(f"cannot create the folder {out / 'mnist'}")
    assert doc["actions"]["mnist/fp16/evaluate"]["action"] == "skipped"
    assert not doc["files"].keys() - {"summary.md"}
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "mnist", "summary.md"]  # no staging left


def test_a_run_never_writes_over_what_it_reads(tmp_path):
    # the calibration data lies where the run's statistics go (the output folder is where the user keeps data)
    out = tmp_path / "out"
    (out / "mnist").mkdir(parents=True)
    data = out / "mnist" / "statistics.npz"
    with np.load(REPO / "tests" / "data" / "mnist-test-first1000.npz") as digits:
        np.savez(data, Input3=digits["images"][:32, None].astype(np.float32))
    (tmp_path / "trtq.toml").write_text(f'precisions = ["int8", "fp16"]\ncalibrators = ["minmax"]\n[[models]]\n'
                                        f'name = "mnist"\npath = "{MODEL}"\n[models.data]\npath = "{data}"\n')
    before = sha256_file(data)
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "trtq.toml"), "--output", str(out), "--steps", "cpu"])
    assert result.exit_code == 2, result.output
    assert "models[0].data.path, which this command reads" in result.stderr and len(result.stderr.splitlines()) == 1
    assert sha256_file(data) == before and sorted(p.name for p in out.rglob("*")) == ["mnist", "statistics.npz"]
    # nor appends its summary to one of them
    summary = CliRunner().invoke(cli, ["run", str(demo_config(tmp_path)), "--output", str(tmp_path / "o2"),
                                       "--check", "--step-summary", str(tmp_path / "trtq.toml")])
    assert summary.exit_code == 2 and "(--step-summary) is the config" in summary.stderr


# -- int8 without an explicit calibrator: trtq quantize, with the gates as its target -----------------------


def quantize_config(folder: Path, gates: str) -> Path:
    """The demo config with no ``calibrators`` key (the default: trtq quantize) and the given gates."""
    path = demo_config(folder, gates=gates)
    path.write_text("\n".join(line for line in path.read_text().splitlines() if not line.startswith("calibrators")))
    return path


@pytest.fixture(scope="module")
def quantized_demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quantized")
    config = quantize_config(folder, "max_top1_drop = 1.0\nmin_sqnr_db = 44.0")
    out = folder / "artifacts"
    return config, out, run_trtq(str(config), "--output", str(out))


def test_a_variant_without_calibrator_runs_quantize_and_exports_what_it_chose(quantized_demo, tmp_path):
    from trtq.cache import read_cache
    from trtq.model import load_model
    from trtq.trt.explicit import strongly_typed_model

    config, out, result = quantized_demo
    assert result.exit_code == 0, result.output
    doc = assert_consistent(out)
    steps = ("mnist/int8-auto/quantize", "mnist/int8-auto/export", "mnist/int8-auto/evaluate")
    assert [doc["actions"][s]["action"] for s in steps] == ["ran"] * 3
    assert "mnist/statistics" not in doc["steps"]  # quantize makes its own calibration pass
    # MNIST at 44 dB adopts bias correction: the ranges are for the corrected float model, written beside them
    assert doc["models"]["mnist"]["variants"]["int8-auto"]["files"] == sorted(
        f"mnist/int8-auto/{name}" for name in ("evaluate.json", "mnist-8.cache", "mnist-8.float.onnx",
                                              "mnist-8.int8-auto.onnx", "mnist-8.keep.txt", "mnist-8.quantize.html",
                                              "mnist-8.quantize.json"))
    report = json.loads((out / "mnist/int8-auto/mnist-8.quantize.json").read_text())
    assert report["ok"] and report["target"] == {"min_sqnr_db": 44.0, "max_drop_points": 1.0,
                                                 "drop_measure": "top-1 accuracy", "default": False}
    keep = report["keep"]
    assert keep  # 44 dB is more than all-INT8 MNIST reaches: layers are kept in float
    listed = [line for line in (out / "mnist/int8-auto/mnist-8.keep.txt").read_text().splitlines()
              if not line.startswith("#")]
    assert listed == keep
    cache = read_cache(out / "mnist/int8-auto/mnist-8.cache")
    assert cache.header.endswith("-EntropyCalibration2")
    assert cache.amax() == pytest.approx({n: t["amax"] for n, t in report["tensors"].items() if t["amax"] > 0},
                                         rel=1e-6)
    assert report["corrections"] and any(step["adopted"] for step in report["corrections"])
    # the exported model is the Q/DQ model of the cached ranges with the kept layers in float, from the corrected
    # float model (what the build step hands `trtq build`: the same model, ranges and kept layers)
    model = load_model(out / "mnist/int8-auto/mnist-8.float.onnx")
    expected = strongly_typed_model(model, int8=True, fp16=False, amax=cache.amax(),
                                    keep_precision=dict.fromkeys(keep, "fp32"))
    exported = onnx.load(str(out / "mnist/int8-auto/mnist-8.int8-auto.onnx"))
    assert exported.SerializeToString() == expected.proto.SerializeToString()
    producers = {o: n.op_type for n in exported.graph.node for o in n.output}
    for node in (n for n in exported.graph.node if n.name in keep):
        assert all(producers.get(name) != "DequantizeLinear" for name in node.input), node.name
    gates = {g["gate"]: g for g in doc["models"]["mnist"]["variants"]["int8-auto"]["gates"]}
    assert gates["quantize_target"]["status"] == "pass" and gates["quantize_target"]["kept"] == len(keep)
    assert gates["min_sqnr_db"]["status"] == "pass" and gates["min_sqnr_db"]["value"] >= 44.0  # evaluate agrees
    assert doc["steps"]["mnist/int8-auto/quantize"]["result"]["record"]["keep"] == keep

    # reuse: same config elsewhere -> every step reused; another gate (another target) -> quantize again
    copy = tmp_path / "artifacts"
    shutil.copytree(out, copy)
    assert run_trtq(str(config), "--output", str(copy)).exit_code == 0
    assert all(a == "reused" for s, a in actions(copy).items() if not s.endswith(("build", "bench", "report")))
    result = run_trtq(str(quantize_config(tmp_path, "max_top1_drop = 1.0")), "--output", str(copy))
    assert result.exit_code == 0, result.output
    done = actions(copy)
    assert done["mnist/int8-auto/quantize"] == "ran" and done["mnist/fp16/export"] == "reused"
    assert_consistent(copy)


def test_a_gate_quantize_cannot_meet_exits_3_and_makes_no_int8_model(tmp_path):
    out = tmp_path / "artifacts"
    result = run_trtq(str(quantize_config(tmp_path, "min_sqnr_db = 90.0")), "--output", str(out))
    assert result.exit_code == 3, result.output
    doc = assert_consistent(out)
    assert doc["exit_code"] == 3 and doc["actions"]["mnist/int8-auto/quantize"]["action"] == "ran"
    for kind in ("export", "evaluate"):
        record = doc["actions"][f"mnist/int8-auto/{kind}"]
        assert record["action"] == "skipped" and record["reason"].startswith("trtq quantize missed its target: ")
    assert sorted(p.name for p in (out / "mnist/int8-auto").iterdir()) == ["mnist-8.quantize.html",
                                                                           "mnist-8.quantize.json"]
    assert "mnist/int8-auto: quantize_target" in doc["gates"]["failed"]
    gate = doc["models"]["mnist"]["variants"]["int8-auto"]["gates"][0]
    assert gate["gate"] == "quantize_target" and gate["status"] == "fail" and "not an INT8 model" in gate["reason"]
    assert "mnist/int8-auto: quantize_target (SQNR >= 90 dB): missed: " in result.stdout


def test_an_explicit_calibrator_keeps_the_former_steps(demo):
    out, _ = demo
    steps = manifest(out)["steps"]
    assert "mnist/statistics" in steps and "mnist/int8-entropy2/calibrate" in steps
    assert not any(step.startswith("mnist/int8-entropy2/") and "quantize" in step for step in steps)
    assert "mnist/int8-auto/quantize" in steps  # the bundled default also runs trtq quantize, side by side
    assert [g["gate"] for g in manifest(out)["models"]["mnist"]["variants"]["int8-entropy2"]["gates"]] == [
        "max_top1_drop", "min_top1_agreement"]


def test_a_corrected_float_model_is_what_the_variant_exports(tmp_path, monkeypatch):
    """When quantize adopts a correction (bias correction, SmoothQuant) its ranges are for the corrected float model:
    the run writes that model and exports the Q/DQ model from it, as `trtq quantize` writes OUT.float.onnx. (The
    correction is made here by hand, a shift the test can see, whatever the loop adopts.)"""
    from onnx import numpy_helper

    import trtq.jobs.quantize as job

    real = job.quantize
    shifted = np.full((1, 10), 0.25, dtype=np.float32)

    def corrected(model, *args, **kwargs):
        result = real(model, *args, **kwargs)
        proto = onnx.ModelProto()
        proto.CopyFrom(model.proto)
        index = next(i for i, t in enumerate(proto.graph.initializer) if t.name == "Parameter194")
        proto.graph.initializer[index].CopyFrom(numpy_helper.from_array(shifted, "Parameter194"))
        result.float_model = proto
        return result

    monkeypatch.setattr(job, "quantize", corrected)
    config = quantize_config(tmp_path, "max_top1_drop = 1.0")
    out = tmp_path / "artifacts"
    result = run_trtq(str(config), "--output", str(out), "--steps", "cpu")
    assert result.exit_code == 0, result.output
    written = onnx.load(str(out / "mnist/int8-auto/mnist-8.float.onnx"))
    exported = onnx.load(str(out / "mnist/int8-auto/mnist-8.int8-auto.onnx"))
    for model in (written, exported):
        bias = next(t for t in model.graph.initializer if t.name == "Parameter194")
        assert np.array_equal(numpy_helper.to_array(bias), shifted)
    doc = manifest(out)
    assert doc["steps"]["mnist/int8-auto/quantize"]["result"]["float_model"] == "mnist/int8-auto/mnist-8.float.onnx"
    fp16 = onnx.load(str(out / "mnist/fp16/mnist-8.fp16.onnx"))  # other variants start from the config's model
    assert not np.array_equal(numpy_helper.to_array(next(t for t in fp16.graph.initializer
                                                         if t.name == "Parameter194")).astype(np.float32), shifted)
