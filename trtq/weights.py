"""Ranges of weight-derived tensors: float tensors computed from the initializers alone.

TensorRT's own calibrators write a scale for every float tensor it sees, Constant outputs and
Reshapes/broadcasts of constants included (PReLU slopes, LayerNorm and SE-block biases); a tensor
without one makes TensorRT warn "Missing scale and zero-point" and keep its layers out of INT8.
These tensors never vary with the data, so their range is simply max|w| of their values, computed
here by evaluating the weight-only subgraph (onnxruntime on a sub-model holding just those nodes,
onnx's numpy reference evaluator if onnxruntime cannot run it), never from calibration data.

Only node outputs are covered (they keep their ONNX name in TensorRT); initializers themselves are
weights that TensorRT quantizes itself or turns into constant layers whose names its parser invents
(``<initializer>_output``) and that the 10.x build sets through the network API instead
(:mod:`trtq.trt.range_walk`). Integer and bool tensors never get a range.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np
import onnx

from trtq.errors import first_line
from trtq.model import FLOAT_TYPES, Model

# The reason given for a float initializer in a coverage report (see :func:`weight_ranges`).
INITIALIZER_REASON = "initializer: a weight, quantized by TensorRT itself (its constant layer gets max|w| in the build)"


@dataclass
class WeightRanges:
    """``amax``: tensor -> max|w| (0.0 for an all-zero tensor); ``unavailable``: tensor -> why it has none."""

    amax: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    evaluator: str | None = None  # "onnxruntime" or "onnx.reference"; None when there was nothing to evaluate

    def as_meta(self) -> dict:
        """JSON-ready, for the statistics' ``meta["weights"]``."""
        return {"amax": dict(self.amax), "unavailable": dict(self.unavailable), "evaluator": self.evaluator}


def weight_derived_tensors(model: Model) -> list[str]:
    """Node outputs computable from the initializers alone whose type is float or unknown, in graph order."""
    constant, types = model.constant_tensors, model.tensor_types
    names: list[str] = []
    for node in model.graph.node:
        for out in node.output:
            if out and out in constant and out not in model.initializer_names and out not in names:
                if types.get(out, onnx.TensorProto.FLOAT) in FLOAT_TYPES:
                    names.append(out)
    return names


def _weight_submodel(model: Model, targets: list[str]) -> onnx.ModelProto:
    """The weight-only nodes of ``model`` with the initializers they read, ``targets`` as outputs."""
    constant = model.constant_tensors
    nodes = [n for n in model.graph.node if any(o in constant for o in n.output if o)]
    needed = {i for n in nodes for i in n.input if i}
    types = model.tensor_types
    outputs = [onnx.helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None)
               for name in targets]
    graph = onnx.helper.make_graph(
        nodes, "trtq_weight_ranges", [], outputs,
        initializer=[t for t in model.graph.initializer if t.name in needed],
        sparse_initializer=[t for t in model.graph.sparse_initializer if t.values.name in needed])
    sub = onnx.helper.make_model(graph, opset_imports=list(model.proto.opset_import))
    sub.ir_version = model.proto.ir_version
    return sub


def _run_onnxruntime(sub: onnx.ModelProto) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(sub.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {})


def _run_reference(sub: onnx.ModelProto) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(sub).run(None, {})


_COMPUTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Model -> WeightRanges


def weight_ranges(model: Model) -> WeightRanges:
    """max|w| of every weight-derived float tensor of ``model`` (see the module docstring), computed once per
    model object: the statistics of every pass (a hold-out split and its merge, shards) record them."""
    if model not in _COMPUTED:
        _COMPUTED[model] = _compute_weight_ranges(model)
    return _COMPUTED[model]


def _compute_weight_ranges(model: Model) -> WeightRanges:
    result = WeightRanges()
    targets = weight_derived_tensors(model)
    if not targets:
        return result
    sub = _weight_submodel(model, targets)
    problems = []
    values = None
    for evaluator, run in (("onnxruntime", _run_onnxruntime), ("onnx.reference", _run_reference)):
        try:
            values = run(sub)
            result.evaluator = evaluator
            break
        except Exception as exc:  # an op either evaluator lacks, a model over 2 GiB, ...
            problems.append(f"{evaluator}: {first_line(exc)}")
    if values is None:
        why = f"could not evaluate the weight-only subgraph ({'; '.join(problems)})"
        result.unavailable = dict.fromkeys(targets, why)
        return result
    for name, value in zip(targets, values, strict=True):
        array = np.asarray(value)
        if array.dtype.kind != "f":
            continue  # typed float by nobody: an integer or bool tensor never gets a range
        finite = array[np.isfinite(array)] if array.size else array
        if array.size and finite.size < array.size:
            result.unavailable[name] = "weight-derived with NaN/Inf values"
            continue
        result.amax[name] = float(np.max(np.abs(finite))) if finite.size else 0.0
    return result
