"""The pipeline's steps, one class per kind (:mod:`.cpu`, :mod:`.gpu`, on the base in :mod:`.base`).
Each one reads its inputs (the model, the data, earlier steps' files in the output folder) and writes
its artifacts into a private staging folder; the runner moves them into place and records them only
when the step has finished.

Each step calls trtq's Python API, never the CLI: statistics (:func:`trtq.calibrate.collect_statistics`,
one pass shared by every calibrator), calibrate (:func:`trtq.calibrate.ranges_from_stats`), quantize
(:func:`trtq.accuracy.quantize.quantize`, for variants without an explicit calibrator), export
(:func:`trtq.trt.explicit.strongly_typed_model`: the exact ONNX that TensorRT 11 builds), evaluate
(:func:`trtq.accuracy.evaluate.compare_candidates`: one FP32 run per batch for every variant), build
(:func:`trtq.trt.build.build_engine`, fed trtq's cache so that the engine uses the ranges that were
evaluated), bench (:func:`trtq.report.gpu_bench.run_gpu_bench`) and report
(:func:`trtq.report.analysis.build_report`).
"""

from trtq.pipeline.layout import Layout
from trtq.pipeline.steps.base import Produced, RunContext, Step, keep_rules, staged
from trtq.pipeline.steps.cpu import CalibrateStep, EvaluateStep, ExportStep, QuantizeStep, StatisticsStep
from trtq.pipeline.steps.gpu import BenchStep, BuildStep, ReportStep, write_report_files

__all__ = ["BenchStep", "BuildStep", "CalibrateStep", "EvaluateStep", "ExportStep", "Layout", "Produced",
           "QuantizeStep", "ReportStep", "RunContext", "StatisticsStep", "Step", "keep_rules", "staged",
           "write_report_files"]
