"""How long ``trtq quantize`` takes on a real ~70-layer model, step by step, next to the floor.

The model is nudenet's YOLOv8n (``320n.onnx``, 75 layers that get Q/DQ; ``pip install nudenet==3.4.2``), fed
128 calibration images (crops of the scikit-image / scikit-learn photos, ``real_model_data.photo_variants``)
at 1x3x320x320 in batches of 4. Printed side by side:

* the floor: plain onnxruntime inference of the same 128 images (default graph optimisations);
* ``trtq quantize`` with its defaults (target, auto ranges, keep search only when needed);
* ``trtq quantize --min-sqnr 40``: a target the all-INT8 model misses, so the full sensitivity ranking
  (layers + 1 forward passes per evaluation batch) and the keep search run;
* onnxruntime's ``quantize_static`` (MinMax, QDQ) on the same data, the peer's calibration alone.

    python scripts/bench_quantize.py [--samples 128] [--skip-peer]

Issue 10's budget: ``trtq quantize`` on a ~70-layer model with 128 calibration samples in <= 5 min on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from real_model_data import photo_variants  # noqa: E402

from trtq.accuracy.quantize import quantize  # noqa: E402
from trtq.accuracy.quantize_result import format_steps  # noqa: E402
from trtq.model import load_model  # noqa: E402


def yolo_path() -> Path:
    import nudenet

    return Path(nudenet.__file__).parent / "320n.onnx"


def floor_seconds(path: Path, batches: list[dict]) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    started = time.perf_counter()
    for feed in batches:
        session.run(None, feed)
    return time.perf_counter() - started


def peer_seconds(path: Path, batches: list[dict]) -> float:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(batches)

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        quantize_static(str(path), str(Path(tmp) / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--skip-peer", action="store_true")
    args = parser.parse_args()
    path = yolo_path()
    images, _ = photo_variants(args.samples, 1)
    batches = [{"images": images[i:i + 4]} for i in range(0, len(images), 4)]
    model = load_model(path)
    rows = [("floor: onnxruntime inference", floor_seconds(path, batches), "")]
    for label, options in (("trtq quantize (defaults)", {}), ("trtq quantize --min-sqnr 40", {"min_sqnr": 40.0})):
        started = time.perf_counter()
        result = quantize(model, batches, **options)
        seconds = time.perf_counter() - started
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items() if k != "total")
        rows.append((label, seconds, f"{result.layers} layers, {len(result.keep)} kept; {steps}"))
        print(f"{label}:", *format_steps(result), sep="\n")
    if not args.skip_peer:
        rows.append(("onnxruntime quantize_static (MinMax)", peer_seconds(path, batches), "calibration only"))
    print(f"\nYOLOv8n 320n.onnx, {len(images)} calibration samples (batches of 4), "
          f"{np.__name__} {np.__version__}:")
    width = max(len(r[0]) for r in rows)
    for label, seconds, note in rows:
        print(f"  {label:<{width}}  {seconds:7.1f} s  {note}")


if __name__ == "__main__":
    main()
