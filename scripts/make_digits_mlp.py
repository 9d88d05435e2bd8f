#!/usr/bin/env python3
"""Regenerate ``tests/data/digits_mlp.onnx`` and ``tests/data/digits_split.npz``: a small real
classifier with Gemm/MatMul layers and a residual Add, trained on real handwritten digits.

    pip install scikit-learn        # only for this script; trtq does not depend on it
    python scripts/make_digits_mlp.py [--out tests/data]

Data: scikit-learn's ``load_digits()`` (1,797 8x8 digits, pixel values 0..16, from the UCI
"Optical Recognition of Handwritten Digits" set by E. Alpaydin and C. Kaynak, CC BY 4.0; the copy
that ships inside scikit-learn, BSD-3-Clause). A seeded permutation splits it into 1,297 training
and 500 held-out digits; the split is saved as uint8 so tests need neither scikit-learn nor a
download.

Model (opset 13, input ``pixels`` float32 [batch, 64] with raw 0..16 values, output ``logits``
[batch, 10]); the forms are chosen to exercise every weight-axis rule of the Q/DQ export:

    normalize     Mul(pixels, 1/16)                       constant Mul: no Q/DQ
    fc1           Gemm(x, W1[48,64], b1, transB=1) -> relu1   per-channel axis 0
    fc2_matmul    MatMul(h1, W2[48,48]) -> fc2_bias Add(b2) -> relu2   per-channel axis 1 (last)
    residual_add  Add(relu2, relu1)                        two activations: residual Add
    fc3           Gemm(r, W3[48,10], b3, transB=0)         per-channel axis 1

Training is plain numpy (Adam, softmax cross-entropy, 120 epochs, seed 0): deterministic for a
given numpy/BLAS build, a few seconds on a CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 0
HIDDEN = 48
CLASSES = 10
TEST_SIZE = 500
EPOCHS = 120
BATCH = 64
LEARNING_RATE = 3e-3


def load_split() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = digits.data.astype(np.uint8)  # integers 0..16
    labels = digits.target.astype(np.uint8)
    order = np.random.default_rng(SEED).permutation(len(labels))
    test, train = order[:TEST_SIZE], order[TEST_SIZE:]
    return {"x_train": pixels[train], "y_train": labels[train], "x_test": pixels[test], "y_test": labels[test]}


def init_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    def he(fan_in: int, shape: tuple[int, ...]) -> np.ndarray:
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return {
        "W1": he(64, (HIDDEN, 64)),  # Gemm transB=1: [out, in]
        "b1": np.zeros(HIDDEN, np.float32),
        "W2": he(HIDDEN, (HIDDEN, HIDDEN)),  # MatMul: [in, out]
        "b2": np.zeros(HIDDEN, np.float32),
        "W3": he(HIDDEN, (HIDDEN, CLASSES)),  # Gemm transB=0: [in, out]
        "b3": np.zeros(CLASSES, np.float32),
    }


def forward(params: dict[str, np.ndarray], pixels: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    x = pixels.astype(np.float32) / 16.0
    z1 = x @ params["W1"].T + params["b1"]
    h1 = np.maximum(z1, 0)
    z2 = h1 @ params["W2"] + params["b2"]
    h2 = np.maximum(z2, 0)
    r = h2 + h1
    logits = r @ params["W3"] + params["b3"]
    return logits, {"x": x, "z1": z1, "h1": h1, "z2": z2, "r": r}


def gradients(params, pixels, labels) -> tuple[float, dict[str, np.ndarray]]:
    logits, cache = forward(params, pixels)
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    n = len(labels)
    loss = float(-np.log(probs[np.arange(n), labels] + 1e-12).mean())
    d_logits = probs
    d_logits[np.arange(n), labels] -= 1
    d_logits /= n
    grads = {"W3": cache["r"].T @ d_logits, "b3": d_logits.sum(axis=0)}
    d_r = d_logits @ params["W3"].T
    d_z2 = d_r * (cache["z2"] > 0)
    grads["W2"] = cache["h1"].T @ d_z2
    grads["b2"] = d_z2.sum(axis=0)
    d_h1 = d_r + d_z2 @ params["W2"].T
    d_z1 = d_h1 * (cache["z1"] > 0)
    grads["W1"] = d_z1.T @ cache["x"]
    grads["b1"] = d_z1.sum(axis=0)
    return loss, grads


def train(split: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    params = init_params(rng)
    moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in params.items()}
    beta1, beta2, step = 0.9, 0.999, 0
    x, y = split["x_train"], split["y_train"].astype(np.int64)
    for epoch in range(EPOCHS):
        order = rng.permutation(len(y))
        for start in range(0, len(y), BATCH):
            batch = order[start:start + BATCH]
            loss, grads = gradients(params, x[batch], y[batch])
            step += 1
            for key, grad in grads.items():
                m, v = moments[key]
                m[:] = beta1 * m + (1 - beta1) * grad
                v[:] = beta2 * v + (1 - beta2) * grad * grad
                m_hat = m / (1 - beta1**step)
                v_hat = v / (1 - beta2**step)
                params[key] -= (LEARNING_RATE * m_hat / (np.sqrt(v_hat) + 1e-8)).astype(np.float32)
        if epoch % 20 == 0 or epoch == EPOCHS - 1:
            print(f"epoch {epoch:3d}  loss {loss:.4f}")
    return params


def to_onnx(params: dict[str, np.ndarray]) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in params.items()]
    inits.append(numpy_helper.from_array(np.array(1 / 16, np.float32), "inv16"))
    nodes = [
        helper.make_node("Mul", ["pixels", "inv16"], ["scaled"], name="normalize"),
        helper.make_node("Gemm", ["scaled", "W1", "b1"], ["fc1_out"], name="fc1", transB=1),
        helper.make_node("Relu", ["fc1_out"], ["h1"], name="relu1"),
        helper.make_node("MatMul", ["h1", "W2"], ["fc2_mm"], name="fc2_matmul"),
        helper.make_node("Add", ["fc2_mm", "b2"], ["fc2_out"], name="fc2_bias"),
        helper.make_node("Relu", ["fc2_out"], ["h2"], name="relu2"),
        helper.make_node("Add", ["h2", "h1"], ["res"], name="residual_add"),
        helper.make_node("Gemm", ["res", "W3", "b3"], ["logits"], name="fc3"),
    ]
    graph = helper.make_graph(
        nodes, "digits_mlp",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="trtq-scripts")
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "data")
    args = parser.parse_args()
    split = load_split()
    params = train(split)
    for part in ("train", "test"):
        logits, _ = forward(params, split[f"x_{part}"])
        accuracy = float((logits.argmax(axis=1) == split[f"y_{part}"]).mean())
        print(f"{part} accuracy: {accuracy * 100:.2f} % ({len(logits)} digits)")
    model = to_onnx(params)
    args.out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, args.out / "digits_mlp.onnx")
    np.savez_compressed(args.out / "digits_split.npz", **split)
    print(f"wrote {args.out / 'digits_mlp.onnx'} and {args.out / 'digits_split.npz'}")


if __name__ == "__main__":
    main()
