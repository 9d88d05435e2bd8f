"""Stand-ins for a parsed TensorRT network (INetworkDefinition, ILayer, ITensor), holding only what
:mod:`trtq.trt.range_walk` reads and writes. The enums and ``Weights`` come from the module passed in:
a fake one in tests/test_range_walk.py, the REAL 10.16 bindings in tests/trt_api_checks.py (where no
network can be created without TensorRT's library, but enums and ``trt.Weights`` are real).

The network mirrors what TensorRT's ONNX parser makes of a LayerNorm/PReLU-style block: an
initializer as a constant layer (``<initializer>_output``) broadcast by a shuffle
(``ONNXTRT_Broadcast_output``), a shape constant (int64), a reshape the parser adds to a cached tensor,
a parser tensor no rule covers, an all-zero constant, and a cached tensor of range 0.
"""

from __future__ import annotations

import numpy as np


class FakeTensor:
    def __init__(self, name: str, dtype):
        self.name = name
        self.dtype = dtype
        self.dynamic_range = None  # the real getter returns None until a range is set
        self.assignments: list[tuple[float, float]] = []

    def __setattr__(self, key, value):
        if key == "dynamic_range" and value is not None:
            self.__dict__.setdefault("assignments", []).append(tuple(value))
        super().__setattr__(key, value)


class FakeLayer:
    def __init__(self, layer_type, inputs, outputs, weights=None):
        self.type = layer_type
        self._inputs = inputs
        self._outputs = outputs
        if weights is not None:
            self.weights = weights

    @property
    def num_inputs(self):
        return len(self._inputs)

    @property
    def num_outputs(self):
        return len(self._outputs)

    def get_input(self, index):
        return self._inputs[index] if index < len(self._inputs) else None

    def get_output(self, index):
        return self._outputs[index] if index < len(self._outputs) else None


class FakeNetwork:
    def __init__(self, inputs, layers):
        self._inputs = inputs
        self._layers = layers

    @property
    def num_inputs(self):
        return len(self._inputs)

    @property
    def num_layers(self):
        return len(self._layers)

    def get_input(self, index):
        return self._inputs[index]

    def get_layer(self, index):
        return self._layers[index]

    def tensors(self) -> dict[str, FakeTensor]:
        found = {t.name: t for t in self._inputs}
        for layer in self._layers:
            found.update({t.name: t for t in layer._inputs + layer._outputs})
        return found


class UnreadableWeights:
    """Weights numpy cannot hold (bfloat16 in the real bindings raises here)."""

    def numpy(self):
        raise TypeError("bfloat16 weights cannot be converted to numpy")


BIAS = np.array([0.5, -3.0, 2.0], np.float32)
SLOPE = np.array([0.25, -0.125], np.float16)
CACHE = {"x": 6.0, "y": 9.0, "z": 0.0}  # what the served cache holds (ONNX names)


def parsed_block(trt) -> FakeNetwork:
    dt, lt = trt.DataType, trt.LayerType
    t = {name: FakeTensor(name, dt.FLOAT) for name in (
        "x", "bias_output", "ONNXTRT_Broadcast_output", "y", "x_parser_reshape", "conv_out", "zeros_output",
        "bf16_output", "z", "z_reshaped", "slope_output", "ONNXTRT_Broadcast_1_output", "slope_cast")}
    t["slope_output"].dtype = dt.HALF
    shape = FakeTensor("shape_output", dt.INT64)
    flag = FakeTensor("flag", dt.BOOL)
    layers = [
        FakeLayer(lt.CONSTANT, [], [t["bias_output"]], trt.Weights(BIAS)),
        FakeLayer(lt.SHUFFLE, [t["bias_output"]], [t["ONNXTRT_Broadcast_output"]]),
        FakeLayer(lt.ELEMENTWISE, [t["x"], t["ONNXTRT_Broadcast_output"]], [t["y"]]),
        FakeLayer(lt.CONSTANT, [], [shape], trt.Weights(np.array([1, 3, 1, 1], np.int64))),
        FakeLayer(lt.SHUFFLE, [t["x"], shape], [t["x_parser_reshape"]]),
        FakeLayer(lt.CONVOLUTION, [t["x_parser_reshape"]], [t["conv_out"]]),
        FakeLayer(lt.CONSTANT, [], [t["zeros_output"]], trt.Weights(np.zeros(3, np.float32))),
        FakeLayer(lt.CONSTANT, [], [t["bf16_output"]], UnreadableWeights()),
        FakeLayer(lt.ACTIVATION, [t["conv_out"]], [t["z"], flag]),
        FakeLayer(lt.SHUFFLE, [t["z"]], [t["z_reshaped"]]),
        FakeLayer(lt.CONSTANT, [], [t["slope_output"]], trt.Weights(SLOPE)),
        FakeLayer(lt.SHUFFLE, [t["slope_output"]], [t["ONNXTRT_Broadcast_1_output"]]),
        FakeLayer(lt.CAST, [t["ONNXTRT_Broadcast_1_output"]], [t["slope_cast"]]),
    ]
    return FakeNetwork([t["x"]], layers)


# what set_network_ranges must do with parsed_block and CACHE
EXPECTED_SET = {"bias_output": 3.0, "ONNXTRT_Broadcast_output": 3.0, "x_parser_reshape": 6.0,
                "slope_output": 0.25, "ONNXTRT_Broadcast_1_output": 0.25, "slope_cast": 0.25}
EXPECTED_COUNTS = {"cache": 2, "weights": 2, "walk": 4, "none": 5,
                   "without": ["conv_out", "zeros_output", "bf16_output", "z", "z_reshaped"]}
