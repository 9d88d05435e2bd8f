"""Already-quantized models: detection in the model layer and the bad-input rules (issue 13, items 1-2)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from trtq.cli import cli
from trtq.errors import TrtqError
from trtq.model import Model, load_model


def trtq(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_float_models_are_not_explicitly_quantized(qdq_models):
    for key in ("fp32", "mlp"):
        assert not load_model(qdq_models[key]).quantization.explicit


def test_onnxruntime_qdq_mnist_is_detected_with_its_pairs_types_and_granularity(qdq_models):
    q = load_model(qdq_models["ort"]).quantization
    assert q.explicit and q.problems() == []
    assert len(q.pairs) == 18 and q.dtypes == {"int8": 18}
    kinds = {p.name: p.kind for p in q.pairs}
    assert kinds["Input3_QuantizeLinear"] == "activation"
    assert kinds["Parameter5_DequantizeLinear"] == "weight"  # stored int8, DequantizeLinear only
    assert kinds["Parameter193_reshape1_QuantizeLinear"] == "weight"  # a reshaped weight is still a weight
    per_channel = {p.name for p in q.pairs if p.per_channel}
    assert per_channel == {"Parameter5_DequantizeLinear", "Parameter87_DequantizeLinear"}
    assert q.per_tensor == 16 and q.float_layers == [] and len(q.quantized_layers) == 3
    assert q.describe().startswith("18 Q/DQ pairs (12 activations, 6 weights; 2 per-channel, 16 per-tensor; int8)")


def test_trtq_export_and_the_mlp_are_detected_and_float_layers_named(qdq_models):
    q = load_model(qdq_models["trtq"]).quantization
    assert len(q.pairs) == 8 and q.per_channel == 3 and q.float_layers == []
    mlp = load_model(qdq_models["mlp_ort"]).quantization
    assert mlp.dtypes["int32"] == 2 and {p.kind for p in mlp.pairs} == {"activation", "weight", "bias"}
    # a layer the model left in float is named
    proto = onnx.load(str(qdq_models["trtq"]))
    conv = next(n for n in proto.graph.node if n.op_type == "Conv" and n.name == "Convolution110")
    q_in = next(n for n in proto.graph.node if n.output and n.output[0] == conv.input[0])  # the DQ
    conv.input[0] = next(n for n in proto.graph.node if n.output[0] == q_in.input[0]).input[0]
    q = Model(proto).quantization
    assert q.float_layers == ["Convolution110"] and "left in float: Convolution110" in q.describe()


def _edited(path, edit) -> onnx.ModelProto:
    proto = onnx.load(str(path))
    inits = {t.name: t for t in proto.graph.initializer}
    edit(proto, inits)
    return proto


def _set(inits, name, array):
    inits[name].CopyFrom(numpy_helper.from_array(np.asarray(array, dtype=numpy_helper.to_array(inits[name]).dtype),
                                                 name))


def _scale_of(proto, node_name):
    return next(n for n in proto.graph.node if n.name == node_name).input[1]


BAD = {
    "zero scale": (lambda p, i: _set(i, _scale_of(p, "Input3_QuantizeLinear"), 0.0),
                   "QuantizeLinear 'Input3_QuantizeLinear' has a zero, negative or non-finite scale (0)"),
    "negative scale": (lambda p, i: _set(i, _scale_of(p, "Parameter5_DequantizeLinear"),
                                         -numpy_helper.to_array(i["Parameter5_scale"])),
                       "DequantizeLinear 'Parameter5_DequantizeLinear' has a zero, negative or non-finite scale"),
    "zero point": (lambda p, i: _set(i, "Input3_zero_point", 3),
                   "QuantizeLinear 'Input3_QuantizeLinear' has a non-zero zero point (3): TensorRT needs symmetric"),
    "axis": (lambda p, i: [a for a in next(n for n in p.graph.node if n.name == "Parameter5_DequantizeLinear")
                           .attribute if a.name == "axis"][0].__setattr__("i", 1),
             "DequantizeLinear 'Parameter5_DequantizeLinear' has 8 per-channel scales on axis 1, but "
             "'Parameter5_quantized' has 1 channels there"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_qdq_is_one_line_naming_the_node_before_any_work(qdq_models, tmp_path, case):
    edit, message = BAD[case]
    path = tmp_path / "bad.onnx"
    onnx.save(_edited(qdq_models["ort"], edit), str(path))
    with pytest.raises(TrtqError, match="^bad.onnx: ") as info:
        load_model(path)
    assert message in str(info.value)
    run = trtq("calibrate", path, "--data", tmp_path / "nothing-read.npy", "--cache", tmp_path / "c.cache")
    assert run.exit_code == 2 and message in run.output and len(run.output.strip().splitlines()) == 1
    assert not (tmp_path / "c.cache").exists()


def test_qdq_on_an_integer_tensor_is_refused():
    x = helper.make_tensor_value_info("x", TensorProto.INT64, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["xc"], to=TensorProto.INT32),
         helper.make_node("QuantizeLinear", ["xc", "s", "z"], ["q"], name="q_on_int"),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")],
        "g", [x], [y], [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(0), "z")])
    model = Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert model.quantization.problems()[0] == ("QuantizeLinear 'q_on_int' quantizes 'xc', a int32 tensor: "
                                                "Q/DQ belongs on float tensors")


def test_asymmetric_uint8_from_onnxruntimes_defaults_is_refused(qdq_models, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from tests.qdq_fixtures import mnist_feeds

    feeds = iter(mnist_feeds(4))

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(feeds, None)

    out = tmp_path / "u8.onnx"
    quantize_static(str(qdq_models["fp32"]), str(out), Reader(), quant_format=QuantFormat.QDQ)
    with pytest.raises(TrtqError, match="non-zero zero point|quantizes to uint8"):
        load_model(out)
