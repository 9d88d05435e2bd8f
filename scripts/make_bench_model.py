"""Write a MobileNet-style text-direction classifier like the one in trtq's calibration benchmark.

The benchmark target was measured on PaddleOCR's 0.6 MB direction classifier (input 3x48x192).
That model cannot be downloaded here, so this script builds one of the same shape and size class:
depthwise-separable conv blocks with batch-norm folded, HardSwish/ReLU activations, global pooling
and a Gemm head, about 150 k parameters, seeded He-initialised weights. Timing and memory behave
like the real architecture's; its predictions mean nothing (it is untrained).

    python scripts/make_bench_model.py out.onnx
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    counter = iter(range(10_000))

    def weight(shape, fan_in):
        name = f"w{next(counter)}"
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32),
                                             name))
        return name

    def bias(n):
        name = f"b{next(counter)}"
        inits.append(numpy_helper.from_array((rng.standard_normal(n) * 0.05).astype(np.float32), name))
        return name

    def conv(x, cin, cout, k, stride=1, group=1, act="hardswish"):
        out = f"conv{next(counter)}"
        nodes.append(helper.make_node("Conv", [x, weight((cout, cin // group, k, k), cin // group * k * k),
                                               bias(cout)], [out], kernel_shape=[k, k], strides=[stride, stride],
                                      pads=[k // 2] * 4, group=group, name=out))
        if act == "relu":
            nodes.append(helper.make_node("Relu", [out], [out + "_relu"], name=out + "_relu"))
            return out + "_relu"
        if act == "hardswish":  # x * hardsigmoid(x), as exported by Paddle/PyTorch before opset 14
            nodes.append(helper.make_node("HardSigmoid", [out], [out + "_hsig"], alpha=1 / 6, beta=0.5,
                                          name=out + "_hsig"))
            nodes.append(helper.make_node("Mul", [out, out + "_hsig"], [out + "_hswish"], name=out + "_hswish"))
            return out + "_hswish"
        return out

    x = conv("x", 3, 16, 3, stride=2)
    channels = 16
    for cout, stride in [(24, 2), (24, 1), (48, 2), (48, 1), (96, 2), (96, 1), (128, 1), (192, 2), (192, 1)]:
        dw = conv(x, channels, channels, 3, stride=stride, group=channels, act="relu")
        pw = conv(dw, channels, cout, 1, act="hardswish")
        if stride == 1 and cout == channels:
            added = f"add{next(counter)}"
            nodes.append(helper.make_node("Add", [x, pw], [added], name=added))
            pw = added
        x, channels = pw, cout
    x = conv(x, channels, 384, 1)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], axis=1, name="flat"))
    nodes.append(helper.make_node("Gemm", ["flat", weight((2, 384), 384), bias(2)], ["logits"], transB=1,
                                  name="head"))
    nodes.append(helper.make_node("Softmax", ["logits"], ["prob"], axis=1, name="softmax"))
    graph = helper.make_graph(
        nodes, "direction_classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 48, 192])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="trtq-bench",
                              ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    model = build()
    onnx.save(model, sys.argv[1])
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    print(f"wrote {sys.argv[1]}: {params} parameters, {model.ByteSize() / 1e6:.2f} MB, {len(model.graph.node)} nodes")
