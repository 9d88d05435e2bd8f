"""Time each range method per tensor on 2048-bin histograms (the issue's target: <= 2 ms per tensor).

    python scripts/bench_ranges.py [--tensors 50] [--repeat 5]

The histograms come from real-looking activations: Gaussian, ReLU'd Gaussian (half exact zeros),
Laplace (heavy tail) and a sparse long tail, one million values each.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from trtq.ranges import entropy2_amax, minmax_amax, mse_amax, percentile_amax
from trtq.stats import TensorStats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=50, help="timed calls per method and distribution")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    samples = {
        "gaussian": rng.standard_normal(1_000_000),
        "relu": np.maximum(rng.standard_normal(1_000_000), 0),
        "laplace": rng.laplace(size=1_000_000),
        "sparse tail": np.concatenate([rng.standard_normal(999_000), rng.standard_normal(1000) * 40]),
    }
    methods = {"entropy2": entropy2_amax, "mse": mse_amax, "percentile": percentile_amax, "minmax": minmax_amax}
    print(f"{'distribution':<14}" + "".join(f"{m:>14}" for m in methods) + "   (median ms per tensor)")
    for name, values in samples.items():
        stats = TensorStats(name)
        stats.update(values.astype(np.float32))
        row = []
        for method in methods.values():
            method(stats)  # warm caches (bounds tables, scratch buffers)
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                method(stats)
                times.append((time.perf_counter() - start) * 1000)
            row.append(statistics.median(times))
        print(f"{name:<14}" + "".join(f"{t:>14.3f}" for t in row))


if __name__ == "__main__":
    main()
