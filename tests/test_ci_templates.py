"""The CI templates: ``.github/workflows/engines.yml`` is valid YAML with a CPU job and a self-hosted GPU job
wired to ``scripts/ci_engines.sh``, and the script itself runs in CPU mode here, appending the Markdown
summary to ``$GITHUB_STEP_SUMMARY``."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is in the test extra: pip install -e '.[test]'")

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / ".github" / "workflows" / "engines.yml"
SCRIPT = REPO / "scripts" / "ci_engines.sh"
MODEL = REPO / "calib_data" / "mnist-8.onnx"
DIGITS = REPO / "calib_data" / "mnist"


def step_runs(job: dict) -> list[str]:
    return [step.get("run", "") for step in job["steps"]]


def step_index(job: dict, predicate) -> int:
    return next(i for i, step in enumerate(job["steps"]) if predicate(step))


def test_workflow_has_a_cpu_job_and_a_gpu_job_on_a_self_hosted_runner():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "pull_request" in triggers and "push" in triggers
    output = workflow["env"]["TRTQ_OUTPUT"]
    jobs = workflow["jobs"]
    assert set(jobs) == {"cpu", "gpu"}

    cpu = jobs["cpu"]
    assert cpu["runs-on"].startswith("ubuntu")
    runs = step_runs(cpu)
    install = next(i for i, r in enumerate(runs) if "pip install -e '.[test]'" in r)
    test = next(i for i, r in enumerate(runs) if "pytest" in r)
    engines = next(i for i, r in enumerate(runs) if r.startswith("scripts/ci_engines.sh cpu"))
    upload = step_index(cpu, lambda s: str(s.get("uses", "")).startswith("actions/upload-artifact@"))
    assert install < test < engines < upload
    assert cpu["steps"][upload]["with"]["path"] == "${{ env.TRTQ_OUTPUT }}"
    assert "cancelled()" in cpu["steps"][upload]["if"]  # a failed gate still uploads the evidence

    gpu = jobs["gpu"]
    assert gpu["needs"] == "cpu"
    assert "self-hosted" in gpu["runs-on"] and "gpu" in gpu["runs-on"]
    runs = step_runs(gpu)
    assert any("pip install -e '.[trt]'" in r for r in runs)
    download = step_index(gpu, lambda s: str(s.get("uses", "")).startswith("actions/download-artifact@"))
    build = next(i for i, r in enumerate(runs) if r.startswith("scripts/ci_engines.sh gpu"))
    upload = step_index(gpu, lambda s: str(s.get("uses", "")).startswith("actions/upload-artifact@"))
    assert download < build < upload
    assert gpu["steps"][download]["with"]["name"] == cpu["steps"][step_index(
        cpu, lambda s: str(s.get("uses", "")).startswith("actions/upload-artifact@"))]["with"]["name"]
    assert gpu["steps"][download]["with"]["path"] == "${{ env.TRTQ_OUTPUT }}" and output


def test_script_is_executable_bash():
    assert os.access(SCRIPT, os.X_OK)
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    result = subprocess.run([str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 2 and "scripts/ci_engines.sh cpu [CONFIG]" in result.stderr


def script_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    return {**env, "PYTHON": sys.executable, "TRTQ_OUTPUT": str(tmp_path / "artifacts"), **extra}


def small_config(tmp_path: Path) -> Path:
    config = tmp_path / "trtq.toml"
    config.write_text(f"""
precisions = ["int8", "fp16"]
[gates]
max_top1_drop = 2.0
[[models]]
name = "mnist"
path = "{MODEL}"
data = {{ path = "{DIGITS}", max_samples = 100 }}
eval = {{ labels = "{DIGITS / 'labels.csv'}", max_samples = 200 }}
""")
    return config


def test_cpu_mode_runs_the_cpu_steps_and_appends_the_summary(tmp_path):
    summary = tmp_path / "step_summary.md"
    summary.write_text("## an earlier step\n")
    config = small_config(tmp_path)
    result = subprocess.run([str(SCRIPT), "cpu", str(config)], cwd=tmp_path, capture_output=True, text=True,
                            env=script_env(tmp_path, GITHUB_STEP_SUMMARY=str(summary)), timeout=600)
    assert result.returncode == 0, result.stderr
    text = summary.read_text()
    assert text.startswith("## an earlier step\n## trtq run: `")
    # no calibrator configured: the int8 variant is trtq quantize's ("auto"), its target gate passed too
    assert "| mnist | int8-auto | 200 |" in text and "| mnist | fp16 | 200 |" in text
    assert "**Gates:** all 3 evaluated passed" in text
    assert "skipped build, bench, report of mnist/int8-auto, mnist/fp16: not selected" in text
    doc = json.loads((tmp_path / "artifacts" / "manifest.json").read_text())
    assert doc["steps_selected"] == ["calibrate", "export", "evaluate"]
    assert doc["status"] == "complete"
    assert (tmp_path / "artifacts" / "mnist" / "int8-auto" / "mnist-8.cache").is_file()


def test_gpu_mode_fails_before_any_work_without_a_gpu(tmp_path):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here: the GPU mode would build engines")
    config = small_config(tmp_path)
    result = subprocess.run([str(SCRIPT), "gpu", str(config)], cwd=tmp_path, capture_output=True, text=True,
                            env=script_env(tmp_path), timeout=600)
    assert result.returncode == 2
    assert "trtq: error: --require-gpu: the GPU steps cannot run here:" in result.stderr
    assert not (tmp_path / "artifacts").exists()
