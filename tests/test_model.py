"""Model inspection: which inputs are data, which tensors get a range, shapes after --shapes/--batch-size."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtq.errors import TrtqError
from trtq.model import Model, check_shapes_known, load_model, resolve_shape


def mixed_model() -> Model:
    """Float image + int32 token ids; a Constant weight; a weight listed as a graph input (old exporters);
    a Reshape (value-preserving) and an integer Shape output."""
    weight = numpy_helper.from_array(np.ones((1, 3, 1, 1), np.float32), "w")
    nodes = [
        helper.make_node("Constant", [], ["bias"], value=numpy_helper.from_array(np.full(1, 0.5, np.float32))),
        helper.make_node("Mul", ["w", "bias"], ["w_scaled"], name="fold_me"),  # weights only: folded by TRT
        helper.make_node("Conv", ["image", "w_scaled"], ["conv"], name="conv"),
        helper.make_node("Add", ["conv", "bias"], ["biased"], name="add"),
        helper.make_node("Shape", ["biased"], ["shape"], name="shape"),
        helper.make_node("Flatten", ["biased"], ["flat"], name="flatten"),
        helper.make_node("Cast", ["ids"], ["ids_float"], to=TensorProto.FLOAT, name="cast"),
    ]
    graph = helper.make_graph(
        nodes, "mixed",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8]),
         helper.make_tensor_value_info("ids", TensorProto.INT32, ["N", 4]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 3, 1, 1])],  # an initializer, also an input
        [helper.make_tensor_value_info("flat", TensorProto.FLOAT, ["N", 192]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [4]),
         helper.make_tensor_value_info("ids_float", TensorProto.FLOAT, ["N", 4])],
        [weight])
    return Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))


def test_data_inputs_exclude_weights_listed_as_inputs():
    model = mixed_model()
    assert [s.name for s in model.inputs] == ["image", "ids"]
    image, ids = model.inputs
    assert image.is_float and not image.is_static and image.dims == (None, 3, 8, 8)
    assert image.describe() == "image float[N,3,8,8]"
    assert not ids.is_float and ids.dtype == np.int32


def test_only_float_activations_get_ranges():
    tensors = mixed_model().calibration_tensors()
    # no int32 input, no int64 Shape output, no Constant or weight-only tensor
    assert tensors == ["image", "conv", "biased", "flat", "ids_float"]


def test_value_preserving_ops_alias_their_source():
    model = mixed_model()
    assert model.value_aliases(model.calibration_tensors()) == {"flat": "biased"}


def test_resolve_shape_applies_shapes_and_batch_size():
    image = mixed_model().inputs[0]
    assert resolve_shape(image, None, 4) == (4, 3, 8, 8)
    assert resolve_shape(image, (2, 3, 8, 8), 4) == (2, 3, 8, 8)  # --shapes wins
    with pytest.raises(TrtqError, match="model fixes it to 3"):
        resolve_shape(image, (2, 1, 8, 8), None)
    with pytest.raises(TrtqError, match="gives 3 dimensions"):
        resolve_shape(image, (2, 3, 8), None)
    with pytest.raises(TrtqError, match="'nosuch'"):
        check_shapes_known(mixed_model(), {"nosuch": (1,)})


def test_external_data_is_loaded(tmp_path):
    model = mixed_model()
    big = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(64, 64), "big")
    model.proto.graph.initializer.append(big)
    path = tmp_path / "external.onnx"
    onnx.save(model.proto, str(path), save_as_external_data=True, location="external.data", size_threshold=1024)
    loaded = load_model(path)
    values = {t.name: numpy_helper.to_array(t) for t in loaded.proto.graph.initializer}
    np.testing.assert_array_equal(values["big"], np.arange(4096, dtype=np.float32).reshape(64, 64))
    (tmp_path / "external.data").unlink()
    with pytest.raises(TrtqError, match="external data"):
        load_model(path)
