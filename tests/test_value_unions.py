"""Tensors whose values are the union of others' (a Concat's output, a Split's input) are not captured: their
statistics are the merge of their parts', exactly what capturing them gives (checked against every tensor
exposed and folded whole)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.test_segments import anchor_model, assert_same_statistics, batches_of
from trtq.calibrate import calibrate, collect_raw_statistics, collect_statistics
from trtq.model import Model, load_model
from trtq.stats import TensorStats

CPU = ["CPUExecutionProvider"]


def csp_model() -> Model:
    """A CSP-like block (YOLOv8's C2f in miniature): x -> Relu -> Split in two; one half through Mul and
    Sigmoid; Concat of both halves and the branch; a Concat of one tensor with itself; a Concat with a
    constant (not a calibrated tensor, so that Concat is captured as it is)."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Split", ["a", "sizes"], ["a1", "a2"], axis=1),
        helper.make_node("Mul", ["a2", "scale"], ["b"]),
        helper.make_node("Sigmoid", ["b"], ["g"]),
        helper.make_node("Concat", ["a1", "a2", "g"], ["c"], axis=1),
        helper.make_node("Concat", ["g", "g"], ["twice"], axis=0),
        helper.make_node("Concat", ["c", "bias"], ["with_constant"], axis=0),
        helper.make_node("ReduceMean", ["with_constant"], ["y"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "csp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("twice", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([1, 3], np.int64), "sizes"),
         numpy_helper.from_array(np.float32(-2.5), "scale"),
         numpy_helper.from_array(np.full((1, 7, 3, 3), 7.0, np.float32), "bias")])
    return Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((24, 4, 3, 3)).astype(np.float32) * 4


def test_concat_outputs_and_split_inputs_are_unions_of_their_parts():
    model = csp_model()
    assert model.value_unions(model.calibration_tensors()) == {"a": [["a1", "a2"]], "c": [["a1", "a2", "g"]],
                                                               "twice": [["g", "g"]]}
    assert model.value_unions(["a1", "a2", "g", "c"]) == {"c": [["a1", "a2", "g"]]}  # a subset: whole unions only


def split_concat_model() -> Model:
    """``m`` is both a Concat's output (of ``p`` and ``q``) and a Split's input (into ``m1`` and ``m2``)."""
    nodes = [helper.make_node("Relu", ["x"], ["p"]), helper.make_node("Neg", ["x"], ["q"]),
             helper.make_node("Concat", ["p", "q"], ["m"], axis=1),
             helper.make_node("Split", ["m", "halves"], ["m1", "m2"], axis=1),
             helper.make_node("Mul", ["m1", "m2"], ["y"])]
    graph = helper.make_graph(nodes, "both", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array([4, 4], np.int64), "halves")])
    return Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))


def test_a_tensor_made_two_ways_takes_whichever_parts_were_captured():
    model = split_concat_model()
    assert model.value_unions(model.calibration_tensors())["m"] == [["p", "q"], ["m1", "m2"]]
    data = np.random.default_rng(4).standard_normal((12, 4)).astype(np.float32)
    every = collect_statistics(model, batches_of("x", data, 4), providers=CPU)
    # a subset holding the Split's parts but not the Concat's: m comes from m1 and m2
    subset = collect_statistics(model, batches_of("x", data, 4), providers=CPU, tensors=["m", "m1", "m2"])
    assert list(subset.tensors) == ["m", "m1", "m2"]
    for name in subset.tensors:
        left, right = every[name], subset[name]
        assert (left.count, left.zeros, left.min, left.max, left.exponent) == \
            (right.count, right.zeros, right.min, right.max, right.exponent), name
        np.testing.assert_array_equal(left.hist, right.hist, err_msg=name)


def test_unions_are_not_captured_but_get_statistics(data):
    model = csp_model()
    raw = collect_raw_statistics(model, batches_of("x", data, 8), providers=CPU)
    assert {"a", "c", "twice"}.isdisjoint(raw.tensors)
    assert {"a1", "a2", "g", "with_constant"} <= set(raw.tensors)
    full = collect_statistics(model, batches_of("x", data, 8), providers=CPU)
    assert list(full.tensors) == model.calibration_tensors()


@pytest.mark.parametrize("histograms", [True, False])
def test_derived_statistics_are_those_of_every_tensor_captured_in_one_piece(data, histograms):
    """The ground truth: onnxruntime with every tensor exposed, each tensor folded as it is, batch by batch;
    trtq's statistics (unions merged from their parts) must equal it."""
    model = csp_model()
    names = model.calibration_tensors()
    proto = model.proto.__class__()
    proto.CopyFrom(model.proto)
    exposed = {o.name for o in proto.graph.output}
    proto.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names
                              if n not in exposed and n != "x")
    session = ort.InferenceSession(proto.SerializeToString(), providers=CPU)
    fetch = [o.name for o in session.get_outputs()]
    truths = {name: TensorStats(name, keep_histogram=histograms) for name in names}
    for batch in batches_of("x", data, 5):
        values = dict(zip(fetch, session.run(fetch, batch), strict=True)) | batch
        for name, truth in truths.items():
            truth.update(values[name])
    ours = collect_statistics(model, batches_of("x", data, 5), providers=CPU, keep_histograms=histograms)
    for name, truth in truths.items():
        got = ours[name]
        assert (got.count, got.zeros, got.nonfinite, got.min, got.max, got.exponent) == \
            (truth.count, truth.zeros, truth.nonfinite, truth.min, truth.max, truth.exponent), name
        np.testing.assert_array_equal(got.hist, truth.hist, err_msg=name)


def test_a_union_with_a_shape_derived_part_no_longer_depends_on_the_batch_size():
    """Concat of a data tensor and an anchor-like one (the same values every run, counted once per sample):
    captured whole, the anchors would count once per *run*; merged from its parts they count once per sample."""
    base = anchor_model()
    graph = base.proto.graph
    graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), "axis0"))
    graph.node.extend([helper.make_node("Unsqueeze", ["anchors", "axis0"], ["anchor_row"]),  # an alias
                       helper.make_node("Concat", ["r", "anchor_row"], ["both"], axis=0)])
    graph.output.append(helper.make_tensor_value_info("both", TensorProto.FLOAT, None))
    model = Model(base.proto)
    assert model.value_unions(model.calibration_tensors()) == {"both": [["r", "anchor_row"]]}
    data = np.random.default_rng(1).standard_normal((24, 4)).astype(np.float32)
    results = [collect_statistics(model, batches_of("x", data, size), providers=CPU) for size in (1, 5, 24)]
    for other in results[1:]:
        assert_same_statistics(results[0], other, same_batches=False)
    assert results[0]["both"].count == results[0]["r"].count + results[0]["anchors"].count


def test_the_mnist_cache_is_unchanged(mnist_model_path, mnist_digits):
    """No Concat or Split in MNIST: the same tensors captured as before, nothing derived."""
    model = load_model(mnist_model_path)
    assert model.value_unions(model.calibration_tensors()) == {}
    result = calibrate(model, batches_of(model.inputs[0].name, mnist_digits[0][:32], 1), "entropy2", providers=CPU)
    assert len(result.amax) == len(model.calibration_tensors())
