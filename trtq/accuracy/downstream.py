"""Sensitivity ``alone`` runs that start at the layer under test instead of at the graph inputs.

With one layer in INT8 and every other in float, everything upstream of that layer computes exactly
what the FP32 reference computed. So each ``alone`` run only needs the part of the switchable model
from the layer's Q/DQ inputs to the outputs, fed with the FP32 tensors that part reads from outside
(its *boundary*). Those are captured once per batch from one extra float run; each layer's sub-model
then runs on them. On a chain-like network a layer sits on average half-way, so the ranking costs
about half the forward work (and none of the Q/DQ arithmetic of the layers upstream).

Values are those of the full switchable model up to float rounding: the sub-model holds the same nodes,
in the same order, with the same inputs (onnxruntime may fuse the cut graph a little differently: on
MNIST the logits agree to 1e-6 relative). An output the layer does not reach is the FP32 reference's. A layer whose
sub-model cannot be built or run falls back to the full model (:meth:`DownstreamRuns.runner` returns None).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from trtq.accuracy.switch import SwitchableModel
from trtq.capture import with_extra_outputs
from trtq.export.compare import fake_quant_session, session_runner

Run = Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]


class _Region:
    """The nodes from one layer's Q/DQ inputs to the outputs, and what they read from outside."""

    def __init__(self, graph: onnx.GraphProto, switch: str, producers: dict[str, int],
                 consumers: dict[str, list[int]], initializers: set[str]):
        wheres = [i for i, n in enumerate(graph.node) if n.op_type == "Where" and n.input and n.input[0] == switch]
        start = set(wheres)
        for index in wheres:  # Where(switch, DQ(Q(source)), source): take the layer's Q/DQ along
            dq = producers.get(graph.node[index].input[1])
            if dq is not None and graph.node[dq].op_type == "DequantizeLinear":
                start.add(dq)
                q = producers.get(graph.node[dq].input[0])
                if q is not None and graph.node[q].op_type == "QuantizeLinear":
                    start.add(q)
        region, stack = set(start), [o for i in start for o in graph.node[i].output if o]
        while stack:  # every node downstream of them
            for index in consumers.get(stack.pop(), ()):
                if index not in region:
                    region.add(index)
                    stack.extend(o for o in graph.node[index].output if o)
        self.nodes = sorted(region)
        produced = {o for i in self.nodes for o in graph.node[i].output if o}
        read = {name for i in self.nodes for name in graph.node[i].input if name}
        self.boundary = sorted(read - produced - initializers)
        self.initializers = sorted(read & initializers)
        self.outputs = [o.name for o in graph.output if o.name in produced]


class DownstreamRuns:
    """Builds, per quantized layer, the sub-model that starts at it; captures the boundary tensors of a
    batch from one float run of the switchable model (all switches off)."""

    def __init__(self, switchable: SwitchableModel, names: Sequence[str]):
        self.switchable = switchable
        self.names = list(names)
        graph = switchable.proto.graph
        producers = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
        consumers: dict[str, list[int]] = defaultdict(list)
        for index, node in enumerate(graph.node):
            for name in node.input:
                if name:
                    consumers[name].append(index)
        initializers = {t.name for t in graph.initializer}
        self.regions = {layer.node: _Region(graph, layer.switch, producers, consumers, initializers)
                        for layer in switchable.layers}
        self.graph_inputs = {i.name for i in graph.input}
        captured = sorted({b for r in self.regions.values() for b in r.boundary} - self.graph_inputs)
        self._captured = captured
        self._capture = session_runner(fake_quant_session(with_extra_outputs(switchable.proto, captured)),
                                       [*self.names, *captured], switchable.switches([]))
        self._sessions: dict[str, object] = {}
        self._failed: set[str] = set()
        self._batch: tuple[int, dict[str, np.ndarray], list[np.ndarray]] | None = None

    def reference(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The float outputs of ``feed``, with the boundary tensors kept for the layers' runs (one batch)."""
        values = self._capture(feed)
        outputs = values[: len(self.names)]
        tensors = dict(zip(self._captured, values[len(self.names):], strict=True))
        tensors.update({name: np.asarray(feed[name]) for name in self.graph_inputs if name in feed})
        self._batch = (id(feed), tensors, outputs)
        return outputs

    def _session(self, node: str, tensors: Mapping[str, np.ndarray]):
        if node not in self._sessions:
            region, graph = self.regions[node], self.switchable.proto.graph
            switches = {layer.switch for layer in self.switchable.layers}
            inputs = [helper.make_tensor_value_info(name, onnx.TensorProto.BOOL, []) if name in switches else
                      helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(tensors[name].dtype), None)
                      for name in region.boundary]
            outputs = [o for o in graph.output if o.name in region.outputs]
            initializers = {t.name: t for t in graph.initializer}
            sub = helper.make_graph([graph.node[i] for i in region.nodes], f"{graph.name}_from_{node}", inputs,
                                    outputs, [initializers[n] for n in region.initializers])
            proto = helper.make_model(sub, opset_imports=self.switchable.proto.opset_import,
                                      ir_version=self.switchable.proto.ir_version)
            self._sessions[node] = fake_quant_session(proto, arena=False)
        return self._sessions[node]

    def runner(self, node: str, fallback: Run) -> Run:
        """``feed -> outputs`` of the model with only ``node`` in INT8, from the boundary of the current batch
        (captured by :meth:`reference`, which must run first on the same feed). ``fallback`` (the full
        switchable model) serves a layer whose sub-model onnxruntime refuses."""
        region = self.regions[node]
        switches = self.switchable.switches([node])

        def run(feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            if node in self._failed or self._batch is None or self._batch[0] != id(feed):
                return fallback(feed)
            _, tensors, reference = self._batch
            values = {name: (switches[name] if name in switches else tensors[name]) for name in region.boundary}
            try:
                results = self._session(node, tensors).run(region.outputs, values)
            except Exception:  # onnxruntime could not build or run the cut graph: the full model still can
                self._failed.add(node)
                return fallback(feed)
            computed = dict(zip(region.outputs, results, strict=True))
            return [computed.get(name, ref) for name, ref in zip(self.names, reference, strict=True)]

        return run
