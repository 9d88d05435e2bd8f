"""``trtq run`` config checking: every problem reported as ``FILE: KEY: reason`` before any work (exit 2),
``[tool.trtq]`` in pyproject.toml, and finding the config when none is named."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from trtq.cli import cli
from trtq.pipeline import load_config
from trtq.pipeline.summary import check_gates

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "calib_data" / "mnist-8.onnx"
DIGITS = REPO / "calib_data" / "mnist"


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def errors(result) -> list[str]:
    lines = result.stderr.splitlines()
    return [line.removeprefix("trtq: error: ") for line in lines if line.startswith("trtq: error:")]


def test_every_problem_is_reported_with_file_key_and_reason_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "trtq.toml").write_text(f"""
outptu = "somewhere"
precisions = ["int4"]
calibrators = "entropy2"
[gates]
max_top1_drop = "1"
min_cosine = 2
[[models]]
path = "{MODEL}"
keep_precision = ["NoSuchNode=fp32", "Convolution28"]
data = "calib_data/x"
[models.profile]
max = "Input3:1x1x28x28"
[[models]]
path = "missing.onnx"
[models.data]
path = "{DIGITS}"
preset = "imagenett"
resize = "abc"
[models.build]
workspace = "lots"
[[models]]
name = "no data"
path = "{MODEL}"
""")
    result = invoke("run")
    assert result.exit_code == 2
    assert errors(result) == [
        "trtq.toml: outptu: unknown key (did you mean 'output'?)",
        "trtq.toml: precisions: unknown precision 'int4' (choose from fp16, int8, best)",
        "trtq.toml: calibrators: expected a list of strings, got the string 'entropy2'",
        "trtq.toml: gates.max_top1_drop: expected a number (or false to switch the gate off), got the string '1'",
        "trtq.toml: gates.min_cosine: a cosine is between -1 and 1; got 2.0",
        "trtq.toml: models[0].profile: min/max need opt too",
        "trtq.toml: models[0].keep_precision: 'Convolution28': expected NODE_OR_TENSOR=fp16 or =fp32",
        "trtq.toml: models[0].data: path calib_data/x does not exist",
        "trtq.toml: models[1].path: model file missing.onnx does not exist",
        "trtq.toml: models[1].data.preset: unknown value 'imagenett' (choose from raw255, unit, imagenet, tf, caffe)",
        "trtq.toml: models[1].data.resize: expected N, \"HxW\" or [H, W] with positive integers, got 'abc'",
        "trtq.toml: models[1].build.workspace: bad size 'lots': expected a number with an optional unit, "
        "e.g. 1024MiB or 2G",
        "trtq.toml: models[2].name: 'no data' cannot name a folder: use letters, digits, '.', '_' and '-'",
        "trtq.toml: models[2].data: missing: calibration data (a folder of images, an .npy/.npz file or a loader "
        "script)",
        "trtq.toml: models[0].keep_precision: no node or node output of the model is named 'NoSuchNode'",
    ]
    assert result.stdout == ""
    assert not (tmp_path / "trtq-artifacts").exists()


def test_problems_found_by_loading_the_model_and_opening_the_data(tmp_path):
    config = tmp_path / "pipeline.toml"
    config.write_text(f"""
[[models]]
path = "{MODEL}"
shapes = "Input3:1x1x28x29"
data = "{DIGITS}"
[models.eval]
labels = "labels.csv"
logits = "probabilities"
[models.gates]
max_top1_drop = 1.0
""")
    result = invoke("run", str(config))
    assert result.exit_code == 2
    assert errors(result) == [
        f"{config}: models[0].eval.labels: labels file labels.csv does not exist",
        f"{config}: models[0].data: shapes sets dimension 3 of input 'Input3' to 29, but the model fixes it to 28 "
        "(Input3 float[1,1,28,28])",
        f"{config}: models[0].eval.logits: 'probabilities' is not an output of the model "
        "(its outputs: Plus214_Output_0)",
    ]


def test_labels_must_cover_every_evaluated_image(tmp_path):
    (tmp_path / "labels.csv").write_text("file,label\n00000_7.png,7\n00001_2.png,2\n")
    config = tmp_path / "trtq.toml"
    config.write_text(f'[[models]]\npath = "{MODEL}"\ndata = "{DIGITS}"\neval = {{ labels = "labels.csv" }}\n')
    result = invoke("run", str(config))
    assert result.exit_code == 2
    assert errors(result) == [f"{config}: models[0].eval.labels: labels {tmp_path / 'labels.csv'} have no row for "
                              "00002_1.png (298 of the 300 images have none)"]


def test_a_top1_gate_needs_labels(tmp_path):
    config = tmp_path / "trtq.toml"
    config.write_text(f'[gates]\nmax_top1_drop = 0.5\n[[models]]\npath = "{MODEL}"\ndata = "{DIGITS}"\n')
    result = invoke("run", str(config))
    assert result.exit_code == 2
    assert errors(result) == [
        f"{config}: gates.max_top1_drop: needs labels for models[0]: set models[0].eval.labels "
        "(a file,label .csv or a .npy of integer labels), or models[0].gates.max_top1_drop = false"]
    config.write_text(f'[gates]\nmax_top1_drop = 0.5\nmin_sqnr_db = 10\n[[models]]\npath = "{MODEL}"\n'
                      f'data = "{DIGITS}"\ngates = {{ max_top1_drop = false }}\n')
    assert load_config(str(config)).models[0].gates == {"min_sqnr_db": 10.0}


def test_ray_is_an_address_string_passed_to_the_run(tmp_path):
    config = tmp_path / "trtq.toml"
    body = f'[[models]]\npath = "{MODEL}"\ndata = "{DIGITS}"\n'
    config.write_text(f'ray = " local "\n{body}')
    assert load_config(str(config)).ray == "local"
    config.write_text(body)
    assert load_config(str(config)).ray is None
    from trtq.pipeline import Pipeline

    config.write_text(f'ray = "auto"\n{body}')
    assert Pipeline(load_config(str(config))).config.ray == "auto"  # what the CPU steps get from ctx.ray()


@pytest.mark.parametrize(("line", "message"), [
    ("ray = 5", "ray: expected a string, got the number 5"),
    ("ray = true", "ray: expected a string, got the boolean true"),
    ('ray = "  "', "ray: empty: give local, auto, HOST:PORT or ray://HOST:PORT (or leave ray out)"),
])
def test_a_wrong_ray_value_is_one_config_line(tmp_path, line, message):
    config = tmp_path / "trtq.toml"
    config.write_text(f'{line}\n[[models]]\npath = "{MODEL}"\ndata = "{DIGITS}"\n')
    result = invoke("run", str(config))
    assert result.exit_code == 2
    assert errors(result) == [f"{config}: {message}"]
    assert not (tmp_path / "trtq-artifacts").exists()


def test_ray_refuses_a_calibration_loader_script(tmp_path):
    (tmp_path / "dl.py").write_text("import numpy as np\n\ndef load_data():\n"
                                    "    yield {'Input3': np.zeros((1, 1, 28, 28), np.float32)}\n")
    config = tmp_path / "trtq.toml"
    config.write_text(f'ray = "local"\n[[models]]\npath = "{MODEL}"\ndata = {{ loader_script = "dl.py" }}\n')
    result = invoke("run", str(config))
    assert result.exit_code == 2
    assert errors(result) == [f"{config}: models[0].data.loader_script: ray shards the calibration data by sample "
                              "index, which a loader script does not have: give data.path on shared storage, or "
                              "leave ray out"]


def test_toml_syntax_errors_name_the_line(tmp_path):
    config = tmp_path / "trtq.toml"
    config.write_text('[[models]]\npath = "a.onnx\n')
    result = invoke("run", str(config))
    assert result.exit_code == 2
    assert errors(result)[0].startswith(f"{config}: not valid TOML: ") and "line 2" in errors(result)[0]


def test_pyproject_tool_trtq_is_found_when_no_config_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text(f"""
[project]
name = "demo"

[tool.trtq]
output = "engines"
precisions = ["best"]
calibrators = ["percentile", "mse"]
percentile = 99.9

[[tool.trtq.models]]
path = "{MODEL}"
data = "{DIGITS}"
""")
    result = invoke("run", "--check")
    assert result.exit_code == 0, result.output
    assert "pyproject.toml: config OK; artifacts go to" in result.stdout
    assert "variants: best-percentile, best-mse" in result.stdout
    config = load_config(None)
    assert config.output == (tmp_path / "engines").resolve()
    assert [v.percentile for v in config.models[0].variants] == [99.9, None]

    (tmp_path / "pyproject.toml").write_text(
        f'[tool.trtq]\nprecision = ["int8"]\n[[tool.trtq.models]]\npath = "{MODEL}"\ndata = "{DIGITS}"\n')
    result = invoke("run")
    assert result.exit_code == 2
    assert errors(result) == ["pyproject.toml: tool.trtq.precision: unknown key (did you mean 'precisions'?)"]

    (tmp_path / "trtq.toml").write_text(f'[[models]]\npath = "{MODEL}"\ndata = "{DIGITS}"\n')
    result = invoke("run", "--check")  # trtq.toml comes first
    assert result.exit_code == 0 and result.stdout.startswith("trtq.toml: config OK")


def test_no_config_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    result = invoke("run")
    assert result.exit_code == 2
    assert "no trtq.toml and no pyproject.toml with a [tool.trtq] table" in result.stderr
    result = invoke("run", "nope.toml")
    assert result.exit_code == 2 and "config file not found: nope.toml" in result.stderr


def test_the_bundled_config_checks_out():
    result = invoke("run", str(REPO / "trtq.toml"), "--check")
    assert result.exit_code == 0, result.output
    assert "variants: int8-auto, int8-entropy2, fp16" in result.stdout
    assert "gates: max_top1_drop 1, min_top1_agreement 98" in result.stdout


@pytest.mark.parametrize(
    ("gate", "value", "status"),
    [("max_top1_drop", 1.5, "pass"), ("max_top1_drop", 0.5, "fail"), ("min_sqnr_db", 20.0, "fail"),
     ("min_top1_agreement", 99.0, "pass"), ("min_cosine", 0.9999, "fail"), ("max_latency_ms", 1.0, "not evaluated")],
)
def test_gate_decisions(gate, value, status):
    """Thresholds against the figures of an evaluation: drop 1.0 point, SQNR 18.5 dB, agreement 99.5 %."""
    evaluation = {"top1_drop_points": 1.0, "sqnr_db": 18.5, "top1_agreement": 0.995, "cosine": 0.9987}
    thresholds = {"max_top1_drop": value, "min_sqnr_db": value, "min_top1_agreement": value, "min_cosine": value,
                  "max_latency_ms": value}
    (record,) = check_gates({gate: thresholds[gate]}, evaluation, None)
    assert record["status"] == status


def test_nan_and_inf_are_not_numbers_any_option_takes(tmp_path):
    """TOML has nan and inf; no scale, mean, std, gate or bench setting means them (``trtq calibrate --scale``
    rejects them too)."""
    config = tmp_path / "trtq.toml"
    config.write_text(f"""
[gates]
min_sqnr_db = nan
[bench]
warmup_ms = inf
[[models]]
path = "{MODEL}"
data = {{ path = "{DIGITS}", scale = nan, mean = [inf], std = -inf }}
""")
    result = invoke("run", str(config), "--check")
    assert result.exit_code == 2
    assert errors(result) == [
        f"{config}: gates.min_sqnr_db: expected a finite number, got nan",
        f"{config}: bench.warmup_ms: expected a finite number, got inf",
        f"{config}: models[0].data.scale: expected a finite number or a fraction like \"1/255\", got the number nan",
        f"{config}: models[0].data.mean: expected a list of finite numbers, got the list [inf]",
        f"{config}: models[0].data.std: expected a list of finite numbers, got the number -inf",
    ]
    assert result.stdout == ""
