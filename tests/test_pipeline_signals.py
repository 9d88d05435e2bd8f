"""Stopping ``trtq run`` with SIGTERM (a CI job cancelled) or SIGINT (Ctrl-C) in the middle of a step: a real
subprocess, signalled while its evaluation reads slow data. Afterwards the folder holds no temporary or
half-written file, the manifest lists exactly the steps that had completed (each file with its hash), and
the next run reuses them and does only what is left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trtq.fileio import sha256_file

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "calib_data" / "mnist-8.onnx"
DIGITS = REPO / "calib_data" / "mnist"
NPZ = Path(__file__).resolve().parent / "data" / "mnist-test-first1000.npz"

SLOW_LOADER = f'''
"""Evaluation digits, each after a pause (TEST_DELAY seconds); touches TEST_MARKER once a few were fed."""
import os
import time
from pathlib import Path

import numpy as np


def load_data():
    delay = float(os.environ.get("TEST_DELAY", "0"))
    marker = os.environ.get("TEST_MARKER")
    with np.load({str(NPZ)!r}) as data:
        images = data["images"][:120].astype(np.float32)
    for index, image in enumerate(images):
        if index == 5 and marker:  # past the first batch, which the config check reads
            Path(marker).touch()
        time.sleep(delay)
        yield {{"Input3": image[None, None]}}
'''

COMPLETED = {"mnist/statistics", "mnist/int8-entropy2/calibrate", "mnist/int8-entropy2/export", "mnist/fp16/export"}


def write_config(folder: Path) -> Path:
    (folder / "slow_digits.py").write_text(SLOW_LOADER)
    config = folder / "trtq.toml"
    config.write_text(f"""
output = "artifacts"
precisions = ["int8", "fp16"]
calibrators = ["entropy2"]  # explicit: the default (trtq quantize) would read the slow evaluation data itself

[[models]]
name = "mnist"
path = "{MODEL}"
data = {{ path = "{DIGITS}", max_samples = 100 }}
eval = {{ loader_script = "slow_digits.py:load_data" }}
""")
    return config


def run(config: Path, env: dict[str, str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trtq", "run", str(config)], cwd=config.parent,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_step_leaves_only_completed_steps(tmp_path, signum, code):
    config = write_config(tmp_path)
    marker = tmp_path / "evaluating"
    process = run(config, {"TEST_DELAY": "0.25", "TEST_MARKER": str(marker)})
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the evaluation never started"
        time.sleep(0.05)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert f"interrupted ({signal.Signals(signum).name})" in stderr
    assert stdout == ""

    out = tmp_path / "artifacts"
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["status"] == "interrupted"
    assert {step for step, entry in doc["steps"].items() if entry["status"] == "done"} == COMPLETED
    assert not any(step.endswith("/evaluate") for step in doc["steps"])
    for rel, record in doc["files"].items():
        assert sha256_file(out / rel) == record["sha256"] and (out / rel).stat().st_size == record["bytes"]
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == set(doc["files"]) | {"manifest.json"}
    assert not any(p.name.startswith(".") for p in out.rglob("*"))  # no temp files, no staging folder
    assert not list(out.rglob("evaluate.json")) and not (out / "summary.md").exists()

    finished = run(config, {"TEST_DELAY": "0"})
    stdout, stderr = finished.communicate(timeout=300)
    assert finished.returncode == 0, stderr
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["status"] == "complete"
    assert {step: doc["actions"][step]["action"] for step in COMPLETED} == dict.fromkeys(COMPLETED, "reused")
    assert doc["actions"]["mnist/int8-entropy2/evaluate"]["action"] == "ran"
    assert doc["models"]["mnist"]["variants"]["fp16"]["accuracy"]["samples"] == 120
