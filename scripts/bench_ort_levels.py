"""onnxruntime alone on one model, by graph optimisation level, with and without every tensor exposed.

What calibration cannot go below: the capture runs the graph with every tensor exposed (TensorRT 10 keys its
cache by every ONNX tensor name), while the floor of ``bench_calibrate.py`` runs it fully optimised with
nothing exposed. This separates the levels (which optimisation buys the
floor its speed), the cost of exposing the tensors, and of the memory arena; and two ways to keep the
blocked (NCHWc) layout with every tensor captured: the capture's (``trtq.blocked``: the optimised graph's output
reorders stripped) and one measured but not built (each tensor reduced to its min, max and sum inside the
graph, nothing exposed: what a minmax calibration needs, without handing the tensors out). Both rows use the
capture's own session options::

    python scripts/bench_ort_levels.py --prepare rapid /tmp/bench       # or: yolo (data as bench_calibrate)
    python scripts/bench_ort_levels.py MODEL.onnx DATA.npy --batch-size 4 [--runs 3]

Each configuration runs every batch once per round, round-robin (the machine's drift hits all alike);
best and median seconds over the rounds. One process, one model input (the first).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))


def sessions(model: onnx.ModelProto) -> dict:
    import onnxruntime as ort

    levels = ort.GraphOptimizationLevel
    every = [o for node in model.graph.node for o in node.output if o]

    def make(level, expose: bool, arena: bool):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        if expose:
            have = {o.name for o in proto.graph.output}
            proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in every if n not in have)
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.enable_cpu_mem_arena = arena
        options.log_severity_level = 3
        return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def exposed() -> onnx.ModelProto:
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        have = {o.name for o in proto.graph.output}
        proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in every if n not in have)
        return proto

    from trtq.capture import ActivationCapture

    options_for = ActivationCapture._session_options  # the capture's own options (arena off)

    def blocked_capture():
        from trtq.blocked import blocked_session

        with tempfile.TemporaryDirectory() as tmp:
            made = blocked_session(exposed().SerializeToString(), set(), Path(tmp), options_for,
                                   ["CPUExecutionProvider"])
        return None if made is None else made[0]

    def reduced_in_graph():
        """The blocked capture's graph with each exposed tensor replaced by its ReduceMin, ReduceMax and
        ReduceSum (the sum because onnxruntime's min and max skip a NaN unless it comes first: a NaN or an Inf
        must show somewhere). Assumes no padding lanes (no channel count off the block size)."""
        from trtq.blocked import blocked_graph

        with tempfile.TemporaryDirectory() as tmp:
            optimized, _ = blocked_graph(exposed().SerializeToString(), set(), Path(tmp), options_for,
                                         ["CPUExecutionProvider"])
        outputs = []
        for output in optimized.graph.output:
            for op in ("ReduceMin", "ReduceMax", "ReduceSum"):
                reduced = f"{output.name}:{op}"
                optimized.graph.node.append(onnx.helper.make_node(op, [output.name], [reduced], keepdims=0))
                outputs.append(onnx.ValueInfoProto(name=reduced))
        del optimized.graph.output[:]
        optimized.graph.output.extend(outputs)
        options = options_for(levels.ORT_DISABLE_ALL)
        options.enable_cpu_mem_arena = True  # nothing is exposed: the arena holds no more than inference's
        return ort.InferenceSession(optimized.SerializeToString(), options, providers=["CPUExecutionProvider"])

    made = {
        "all (the floor)": make(levels.ORT_ENABLE_ALL, False, True),
        "extended": make(levels.ORT_ENABLE_EXTENDED, False, True),
        "basic": make(levels.ORT_ENABLE_BASIC, False, True),
        "none": make(levels.ORT_DISABLE_ALL, False, True),
        "none, every tensor exposed": make(levels.ORT_DISABLE_ALL, True, True),
        "none, every tensor exposed, arena off (TRTQ_LAYOUT=nchw)": make(levels.ORT_DISABLE_ALL, True, False),
        "all, every tensor exposed": make(levels.ORT_ENABLE_ALL, True, True),
        "all, reorders stripped, arena off (the capture)": blocked_capture(),
        "all, min/max/sum reduced in the graph, arena on": reduced_in_graph(),
    }
    return {label: session for label, session in made.items() if session is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("data", nargs="?", help=".npy of samples along axis 0")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prepare", nargs=2, metavar=("NAME", "DIR"),
                        help="write NAME's data (yolo, rapid) to DIR as bench_calibrate.py does, then run on it")
    args = parser.parse_args()
    if args.prepare:
        import bench_calibrate

        args.model, args.data, _batch, _title = bench_calibrate.prepare_in_child(args.prepare[0],
                                                                                 Path(args.prepare[1]))
    if not args.model or not args.data:
        parser.error("give MODEL and DATA, or --prepare NAME DIR")
    model = onnx.load(args.model)
    data = np.load(args.data, mmap_mode="r")
    name = model.graph.input[0].name
    feeds = [{name: np.ascontiguousarray(data[s:s + args.batch_size])}
             for s in range(0, data.shape[0], args.batch_size)]
    configured = sessions(model)
    times: dict[str, list[float]] = {label: [] for label in configured}
    for _ in range(args.runs):
        for label, session in configured.items():
            started = time.perf_counter()
            for feed in feeds:
                session.run(None, feed)
            times[label].append(time.perf_counter() - started)
    print(f"{Path(args.model).name}: {data.shape[0]} samples, batch {args.batch_size}, onnxruntime alone "
          f"(best / median of {args.runs})")
    for label, seconds in times.items():
        print(f"  {label:<52} {min(seconds):6.2f} / {statistics.median(seconds):.2f} s")


if __name__ == "__main__":
    main()
