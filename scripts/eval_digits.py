"""Simulated INT8 accuracy of the digits MLP (Gemm/MatMul + residual Add) per range method.

Calibrates ``tests/data/digits_mlp.onnx`` on the 1,297 training digits of ``tests/data/digits_split.npz``
(scikit-learn's real 8x8 handwritten digits; see tests/data/PROVENANCE.md), evaluates FP32 and the
Q/DQ model of every method on the 500 held-out digits, and ranks the entropy2 model's layers.

    python scripts/eval_digits.py

The numbers in docs/evaluate.md ("Real accuracy") come from this script.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trtq.accuracy import Labels, SensitivityAnalysis, compare_methods  # noqa: E402
from trtq.accuracy.sensitivity import format_ranking  # noqa: E402
from trtq.calibrate import calibrate  # noqa: E402
from trtq.model import load_model  # noqa: E402

BATCH = 100


def batches(pixels: np.ndarray) -> list[dict[str, np.ndarray]]:
    return [{"pixels": pixels[i : i + BATCH].astype(np.float32)} for i in range(0, len(pixels), BATCH)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "tests" / "data" / "digits_mlp.onnx")
    parser.add_argument("--data", type=Path, default=REPO / "tests" / "data" / "digits_split.npz")
    args = parser.parse_args()

    with np.load(args.data) as split:
        x_train, x_test, y_test = split["x_train"], split["x_test"], split["y_test"].astype(np.int64)
    model = load_model(args.model)
    result = calibrate(model, batches(x_train), "entropy2")
    print(f"statistics of {len(result.stats)} tensors on {result.samples} training digits")
    methods = compare_methods(model, result.stats, batches(x_test), labels=Labels("y_test", by_index=y_test))
    print(f"FP32 and {len(methods.scores)} INT8 models on {methods.samples} held-out digits:")
    print(methods.format_table())
    print(f"recommended: {methods.best.label} (rule: {methods.rule})")

    ranking = SensitivityAnalysis(model, result.amax, batches(x_test)).rank("alone")
    print(f"\nentropy2 INT8 sensitivity on {ranking.samples} held-out digits (each layer alone in INT8):")
    print(format_ranking(ranking))


if __name__ == "__main__":
    main()
