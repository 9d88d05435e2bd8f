"""Explicit-precision ONNX exports for TensorRT 11 (strongly typed): a Q/DQ INT8 model from trtq's
ranges and an FP16 model with float32 I/O. Pure onnx + onnxruntime: no TensorRT needed."""

from trtq.export.compare import OutputAgreement, compare_outputs, format_agreement_table
from trtq.export.fp16 import FP32_OP_TYPES, Fp16Export, export_fp16
from trtq.export.graph import save_model
from trtq.export.qdq import QdqExport, QdqPlan, QdqPoint, export_qdq, plan_qdq, weight_scales
from trtq.export.ranges import describe_ranges, load_amax, name_list_files, read_name_list

__all__ = [
    "FP32_OP_TYPES",
    "Fp16Export",
    "OutputAgreement",
    "QdqExport",
    "QdqPlan",
    "QdqPoint",
    "compare_outputs",
    "describe_ranges",
    "export_fp16",
    "export_qdq",
    "format_agreement_table",
    "load_amax",
    "plan_qdq",
    "name_list_files",
    "read_name_list",
    "save_model",
    "weight_scales",
]
