"""Benchmark trtq's calibration against onnxruntime's calibrators and bare inference.

    python scripts/bench_calibrate.py MODEL DATA [--batch-size 8] [--max-samples 96] [--skip-ort-entropy]

DATA is anything ``trtq calibrate --data`` takes (image folder, .npy, .npz). The batches are
prepared once with trtq's data layer and saved to a temporary .npz, so every contender sees the
same batches. Each contender then runs in its own Python process; the figures are whole-process:
wall time from process start to exit (imports and model loading included) and peak RSS
(``ru_maxrss`` of that process). Contenders:

* ``bare``           onnxruntime inference of the batches, default session options
* ``trtq <method>``  trtq's one-pass statistics + that method's ranges + the cache file, as
                     ``trtq calibrate`` does it (minmax without the histograms it does not need)
* ``ort <method>``   onnxruntime.quantization ``create_calibrator`` (Entropy: num_bins=2048,
                     num_quantized_bins=128; Percentile: num_bins=2048, 99.99) + ``compute_data``
* ``... x4``         the same with the batches repeated four times (peak RSS must not grow)

Each contender runs ``--runs`` times, round-robin with the others so that drifts of the machine hit all
alike (onnxruntime's entropy once: it takes minutes); medians are shown. trtq's modules are byte-compiled
first and the children may load bytecode, as for any installed package.
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


def child(kind: str, model_path: str, batches_path: str, repeat: int) -> None:
    """Run one contender in this process (started by the parent)."""
    with np.load(batches_path) as archive:
        data = {name: archive[name] for name in archive.files}
    names = list(data)
    count = data[names[0]].shape[0]
    batch = int(os.environ["BENCH_BATCH"])

    def feeds():
        for _ in range(repeat):
            for start in range(0, count, batch):
                yield {n: data[n][start:start + batch] for n in names}

    if kind == "bare":
        import onnxruntime as ort

        session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        for feed in feeds():
            session.run(None, feed)
    elif kind.startswith("trtq-"):
        from trtq.calibrate import calibrate
        from trtq.model import load_model

        model = load_model(model_path)
        result = calibrate(model, feeds(), kind.removeprefix("trtq-"), providers=["CPUExecutionProvider"])
        with tempfile.TemporaryDirectory() as tmp:
            result.write_cache(Path(tmp) / "bench.cache")
    elif kind.startswith("ort-"):
        from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.iterator = feeds()

            def get_next(self):
                return next(self.iterator, None)

        method, options = {
            "ort-entropy": (CalibrationMethod.Entropy, {"num_bins": 2048, "num_quantized_bins": 128}),
            "ort-minmax": (CalibrationMethod.MinMax, {}),
            "ort-percentile": (CalibrationMethod.Percentile, {"num_bins": 2048, "percentile": 99.99}),
        }[kind]
        with tempfile.TemporaryDirectory() as tmp:
            calibrator = create_calibrator(model_path, None, augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                           calibrate_method=method, providers=["CPUExecutionProvider"],
                                           extra_options=options)
            calibrator.collect_data(Reader())
            calibrator.compute_data()
    else:
        raise SystemExit(f"unknown contender {kind}")


def run_once(kind: str, model: str, batches: str, batch: int, repeat: int) -> tuple[float, float] | str:
    """Wall time (s) and peak RSS (MB) of one fresh process running contender ``kind``, or an error."""
    env = {**os.environ, "BENCH_BATCH": str(batch)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # load compiled modules, as an installed package does
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, __file__, "--child", kind, model, batches, str(repeat)], env=env)
    try:
        _, status, usage = os.wait4(process.pid, 0)
    except KeyboardInterrupt:
        process.kill()
        raise
    if status != 0:
        return f"exit status {status}"
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def measure_all(contenders: list[tuple[str, int, int]], model: str, batches: str, batch: int) -> list[dict]:
    """Run the contenders round-robin (so slow drifts of the machine hit all alike); report medians."""
    results: dict[tuple[str, int], dict] = {}
    rounds = max(runs for _, _, runs in contenders)
    for round_index in range(rounds):
        for kind, repeat, runs in contenders:
            if round_index >= runs:
                continue
            row = results.setdefault((kind, repeat), {"kind": kind, "repeat": repeat, "walls": [], "peaks": []})
            outcome = run_once(kind, model, batches, batch, repeat)
            if isinstance(outcome, str):
                row["error"] = outcome
            else:
                row["walls"].append(outcome[0])
                row["peaks"].append(outcome[1])
    rows = []
    for row in results.values():
        if row["walls"]:
            row.update(runs=len(row["walls"]), wall_s=statistics.median(row["walls"]),
                       peak_rss_mb=statistics.median(row["peaks"]))
        rows.append(row)
    return rows


def prepare(model_path: str, data: str, batch: int, max_samples: int | None, out: Path) -> int:
    from trtq.data import open_batches
    from trtq.model import load_model

    model = load_model(model_path)
    source = open_batches(model, data, batch_size=batch, max_samples=max_samples)
    collected: dict[str, list[np.ndarray]] = {}
    for feed in source:
        for name, array in feed.items():
            collected.setdefault(name, []).append(array)
    arrays = {name: np.concatenate(parts) for name, parts in collected.items()}
    np.savez(out, **arrays)
    return next(iter(arrays.values())).shape[0]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-samples", type=int, default=96)
    parser.add_argument("--skip-ort-entropy", action="store_true", help="onnxruntime's entropy takes minutes")
    parser.add_argument("--runs", type=int, default=3, help="processes per contender; medians are reported")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    import compileall

    import trtq

    compileall.compile_dir(Path(trtq.__file__).parent, quiet=1)  # as pip does for an installed package
    with tempfile.TemporaryDirectory() as tmp:
        batches = str(Path(tmp) / "batches.npz")
        samples = prepare(args.model, args.data, args.batch_size, args.max_samples, Path(batches))
        print(f"{samples} samples in batches of {args.batch_size} from {args.data}; model {args.model}")
        kinds = ["bare", "trtq-minmax", "trtq-entropy2", "trtq-percentile", "trtq-mse", "ort-minmax",
                 "ort-percentile"]
        contenders = [(k, 1, args.runs) for k in kinds]
        contenders += [(k, 4, args.runs) for k in ("trtq-minmax", "trtq-entropy2")]
        if not args.skip_ort_entropy:
            contenders.append(("ort-entropy", 1, 1))  # minutes per run
        rows = measure_all(contenders, args.model, batches, args.batch_size)

    print(f"\n{'contender':<22}{'samples':>9}{'wall s':>10}{'peak RSS MB':>14}   (medians of {args.runs} processes)")
    by_kind = {}
    for row in rows:
        label = row["kind"] + (f" x{row['repeat']}" if row["repeat"] > 1 else "")
        by_kind[label] = row
        if "error" in row:
            print(f"{label:<22}{samples * row['repeat']:>9}   {row['error']}")
        else:
            print(f"{label:<22}{samples * row['repeat']:>9}{row['wall_s']:>10.2f}{row['peak_rss_mb']:>14.1f}")

    def ratio(a: str, b: str, key: str) -> str:
        if a in by_kind and b in by_kind and key in by_kind[a] and key in by_kind[b]:
            return f"{by_kind[a][key] / by_kind[b][key]:.2f}"
        return "n/a"

    print("\nratios (targets in brackets)")
    checks = [
        ("trtq entropy2 / ort minmax, wall", "trtq-entropy2", "ort-minmax", "wall_s", "<= 1"),
        ("trtq entropy2 / ort minmax, peak RSS", "trtq-entropy2", "ort-minmax", "peak_rss_mb", "<= 0.5"),
        ("ort entropy / trtq entropy2, wall", "ort-entropy", "trtq-entropy2", "wall_s", ""),
        ("trtq minmax / ort minmax, wall", "trtq-minmax", "ort-minmax", "wall_s", ""),
        ("trtq minmax / ort minmax, peak RSS", "trtq-minmax", "ort-minmax", "peak_rss_mb", ""),
        ("trtq minmax / bare inference, wall", "trtq-minmax", "bare", "wall_s", "<= 3"),
        ("trtq minmax x4 / x1, peak RSS", "trtq-minmax x4", "trtq-minmax", "peak_rss_mb", "<= 1.10"),
        ("trtq entropy2 x4 / x1, peak RSS", "trtq-entropy2 x4", "trtq-entropy2", "peak_rss_mb", "<= 1.10"),
    ]
    for label, a, b, key, target in checks:
        print(f"  {label:<38}{ratio(a, b, key):>7}  {f'[{target}]' if target else ''}")
    if args.json:
        Path(args.json).write_text(json.dumps({"samples": samples, "batch_size": args.batch_size, "rows": rows},
                                              indent=2))


if __name__ == "__main__":
    main()
