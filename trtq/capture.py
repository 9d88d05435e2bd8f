"""Activation capture: run the model in onnxruntime with every calibrated tensor as an extra output.

Graph optimisations are off so that every ONNX tensor keeps its name (TensorRT keys its cache by
the ONNX names, and fused-away tensors would otherwise vanish). Each batch's tensors are handed
to the caller, who drops them once counted, so memory does not grow with the batch count.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from trtq.errors import TrtqError, first_line
from trtq.model import PROTO_LIMIT, Model


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


class ActivationCapture:
    """Runs a model and returns the float tensors to calibrate, batch by batch."""

    def __init__(self, model: Model, tensors: list[str] | None = None, providers: list[str] | None = None):
        import onnxruntime as ort

        self.model = model
        requested = tensors if tensors is not None else model.calibration_tensors()
        input_names = {s.name for s in model.inputs}
        self._input_tensors = [n for n in requested if n in input_names]
        node_tensors = [n for n in requested if n not in input_names]
        augmented = with_extra_outputs(model.proto, node_tensors)

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        # every captured tensor is a fresh output; without the arena its memory goes back once freed
        options.enable_cpu_mem_arena = False
        # the statistics threads work while onnxruntime runs the next batch: idle onnxruntime threads must
        # sleep, not spin on the cores those threads need. Measured on 2 cores: the bench model (12 batches of
        # 3.5 M values) 0.30 s -> 0.22 s; the cost is waking the threads for each run, which shows only on
        # tiny batches (MNIST, 300 batches of 1 image: 0.27 s -> 0.36 s)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        try:
            if augmented.ByteSize() > PROTO_LIMIT:
                # over 2 GiB: onnxruntime must read it from a file with external data
                self._tmpdir = tempfile.TemporaryDirectory(prefix="trtq-capture-")
                path = Path(self._tmpdir.name) / "augmented.onnx"
                onnx.save(augmented, str(path), save_as_external_data=True, location="augmented.data")
                source: str | bytes = str(path)
            else:
                source = augmented.SerializeToString()
            self.session = ort.InferenceSession(source, options, providers=providers or default_providers())
        except Exception as exc:
            self.close()
            raise TrtqError(f"onnxruntime cannot load {model.name}: {first_line(exc)}") from exc
        finally:
            del augmented

        outputs = self.session.get_outputs()
        wanted = set(node_tensors)
        # tensors whose type onnx could not infer show up typed here; keep the float ones
        float_types = {"tensor(float)", "tensor(float16)", "tensor(double)", "tensor(bfloat16)"}
        float_outputs = {o.name for o in outputs if o.name in wanted and o.type in float_types}
        self._captured = [n for n in node_tensors if n in float_outputs]  # graph order
        self.tensor_names = [*self._input_tensors, *self._captured]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; returns {tensor name: array} for every captured tensor."""
        try:
            results = self.session.run(self._captured, feed)
        except Exception as exc:
            raise TrtqError(f"onnxruntime failed to run {self.model.name} on a batch: {first_line(exc)}") from exc
        # inputs are copied: the statistics may be folded in while the caller prepares the next batch
        captured = {name: np.array(feed[name], copy=True) for name in self._input_tensors}
        captured.update(zip(self._captured, results, strict=True))
        return captured

    def iterate(self, batches) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        """Yield ``(activations, samples in the batch)`` for each batch of ``batches``."""
        for feed in batches:
            samples = _batch_samples(feed)
            yield self.run(feed), samples

    def close(self) -> None:
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> ActivationCapture:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _batch_samples(feed: dict[str, np.ndarray]) -> int:
    for array in feed.values():
        array = np.asarray(array)
        return int(array.shape[0]) if array.ndim else 1
    return 0

