"""Seconds per sample of the quantize loop's sessions (FP32 and a Q/DQ candidate) by how many samples one run feeds.

Why: the loop runs its judged samples through FP32 and every candidate many times, and the data sources yield
batches of the model's batch size (1 by default); :mod:`trtq.accuracy.feeds` merges them into feeds of up to
``FEED_SAMPLES`` samples. This measures what that buys on a given model and data, on this machine.

    python scripts/bench_feeds.py MODEL.onnx DATA.npz [--sizes 1,2,4,8,16] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from trtq.calibrate import collect_statistics, compute_ranges
from trtq.export import export_qdq
from trtq.export.compare import fake_quant_session, session_runner
from trtq.model import load_model


def per_sample(run, feed: dict[str, np.ndarray], samples: int, seconds: float) -> float:
    run(feed)  # warm-up
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        run(feed)
        done += samples
    return (time.perf_counter() - started) / done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("data", help=".npz with one array per model input, samples on axis 0")
    parser.add_argument("--sizes", default="1,2,4,8,16")
    parser.add_argument("--seconds", type=float, default=5.0, help="time measured per size and session")
    args = parser.parse_args()
    model = load_model(args.model)
    arrays = dict(np.load(args.data))
    sizes = [int(s) for s in args.sizes.split(",")]
    amax = compute_ranges(collect_statistics(model, [{k: v[:2] for k, v in arrays.items()}]), "minmax")
    sessions = {"fp32": fake_quant_session(model.proto),
                "q/dq": fake_quant_session(export_qdq(model, amax, check=False).model)}
    print(f"{os.path.basename(args.model)} on {platform.machine()}, {os.cpu_count()} cores; seconds per sample")
    print("samples a run | " + " | ".join(sessions))
    for size in sizes:
        feed = {name: value[:size] for name, value in arrays.items()}
        cells = [f"{per_sample(session_runner(s, list(model.output_names)), feed, size, args.seconds):.3f}"
                 for s in sessions.values()]
        print(f"{size:>13} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
