"""Simulated INT8 accuracy of the ONNX Model Zoo MNIST classifier on the real MNIST test set, per range method.

Calibrates ``calib_data/mnist-8.onnx`` on the first 1,000 test digits (one statistics pass), then
evaluates FP32 and the Q/DQ model of every method on the other 9,000 (one FP32 run per digit
shared by all methods), ranks the layers of the entropy2 model by INT8 sensitivity and finds the
layers to keep in float for a target SQNR.

    python scripts/eval_mnist.py /path/to/mnist-test   # t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz

The numbers in docs/evaluate.md ("Real accuracy") come from this script.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trtq.accuracy import Labels, SensitivityAnalysis, compare_methods  # noqa: E402
from trtq.accuracy.sensitivity import format_ranking, format_steps  # noqa: E402
from trtq.calibrate import calibrate  # noqa: E402
from trtq.model import load_model  # noqa: E402

CALIBRATION_DIGITS = 1000


def read_idx(path: Path, magic: int, offset: int) -> np.ndarray:
    """The payload of a gzipped IDX file (the format of the MNIST distribution), checked by its magic number."""
    data = gzip.decompress(path.read_bytes())
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise SystemExit(f"{path}: magic number {found}, expected {magic}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("idx_dir", type=Path,
                        help="folder with t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")
    parser.add_argument("--model", type=Path, default=REPO / "calib_data" / "mnist-8.onnx")
    parser.add_argument("--sensitivity-samples", type=int, default=1000,
                        help="held-out digits for the sensitivity ranking (0: skip it)")
    parser.add_argument("--target-sqnr", type=float, default=30.0,
                        help="find the layers to keep in float for this SQNR, verified on the same digits")
    args = parser.parse_args()

    images = read_idx(args.idx_dir / "t10k-images-idx3-ubyte.gz", 2051, 16).reshape(-1, 1, 1, 28, 28)
    labels = read_idx(args.idx_dir / "t10k-labels-idx1-ubyte.gz", 2049, 8).astype(np.int64)
    model = load_model(args.model)
    feeds = [{"Input3": digit.astype(np.float32)} for digit in images]  # the model's batch is fixed to 1
    calibration, held_out = feeds[:CALIBRATION_DIGITS], feeds[CALIBRATION_DIGITS:]

    started = time.perf_counter()
    result = calibrate(model, calibration, "entropy2")
    print(f"statistics of {len(result.stats)} tensors on digits 0-{CALIBRATION_DIGITS - 1}: "
          f"{time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    methods = compare_methods(model, result.stats, held_out,
                              labels=Labels("MNIST test labels", by_index=labels[CALIBRATION_DIGITS:]))
    print(f"FP32 and {len(methods.scores)} INT8 models on the other {methods.samples} digits: "
          f"{time.perf_counter() - started:.1f} s")
    print(methods.format_table())
    print(f"recommended: {methods.best.label} (rule: {methods.rule})")

    if args.sensitivity_samples:
        first = slice(CALIBRATION_DIGITS, CALIBRATION_DIGITS + args.sensitivity_samples)
        analysis = SensitivityAnalysis(model, result.amax, feeds[first],
                                       labels=Labels("MNIST test labels", by_index=labels[first]))
        ranking = analysis.rank("alone")
        print(f"\nentropy2 INT8 sensitivity on {ranking.samples} held-out digits (each layer alone in INT8):")
        print(format_ranking(ranking))
        analysis.keep_set(ranking, target_sqnr=args.target_sqnr)
        print(f"keep in float for SQNR >= {args.target_sqnr:g} dB:")
        print("\n".join(format_steps(ranking)))


if __name__ == "__main__":
    main()
