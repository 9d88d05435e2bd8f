"""INT8 accuracy on any machine, before building: simulated INT8 (the Q/DQ export in onnxruntime)
against FP32 on held-out data, per-layer sensitivity with the cause of each layer's error, the set
of layers to keep in higher precision, range-method comparison, and the figures that show why."""

from trtq.accuracy.evaluate import Comparison, Evaluation, Outcome, evaluate_int8
from trtq.accuracy.labels import Labels, labels_for_fed, read_labels
from trtq.accuracy.methods import DEFAULT_CANDIDATES, MethodComparison, compare_methods, method_thresholds
from trtq.accuracy.sensitivity import (
    LayerSensitivity,
    QuantizationError,
    SensitivityAnalysis,
    SensitivityResult,
    quantization_error,
)
from trtq.accuracy.switch import Layer, SwitchableModel, build_switchable

__all__ = [
    "DEFAULT_CANDIDATES",
    "Comparison",
    "Evaluation",
    "Labels",
    "Layer",
    "LayerSensitivity",
    "MethodComparison",
    "Outcome",
    "QuantizationError",
    "SensitivityAnalysis",
    "SensitivityResult",
    "SwitchableModel",
    "build_switchable",
    "compare_methods",
    "evaluate_int8",
    "labels_for_fed",
    "method_thresholds",
    "quantization_error",
    "read_labels",
]
