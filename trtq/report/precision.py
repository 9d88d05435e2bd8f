"""Precision of a TensorRT layer and the class of the kernel that runs it.

Precision comes from the layer's I/O data types (the only signal TensorRT documents). The
kernel class is a *heuristic* read from the tactic (kernel) name: NVIDIA publishes no list,
so tokens were collected from real engines (see ``KERNEL_CLASS_RULES``) and a name that
matches none of them is ``unknown`` rather than a guess.
"""

from __future__ import annotations

import re

# Precision names used everywhere (JSON, tables, colours). Order = display order.
PRECISIONS = ("INT8", "FP8", "FP16", "BF16", "TF32", "FP32", "INT32", "UNKNOWN")

# Data-type words as they appear in layer JSON ("Format/Datatype" of 8.x-10.x CASK layers,
# "Float"/"Half" of kgen/Myelin layers, split "DataType" of 11.x, trt.DataType names).
# Checked in order: "BFloat16" must win over "Float", "FP16FP32" pooling names are not formats.
_DTYPE_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("BF16", re.compile(r"\b(?:k?bf16|bfloat16)\b")),
    ("FP8", re.compile(r"\b(?:k?fp8|float8\w*|e4m3\w*|e5m2\w*)\b")),
    ("FP16", re.compile(r"\b(?:k?fp16|k?half|float16)\b")),
    ("FP32", re.compile(r"\b(?:k?fp32|k?float|float32)\b")),
    ("INT8", re.compile(r"\b(?:k?int8)\b")),
    ("INT32", re.compile(r"\b(?:k?int32)\b")),
)


def _first_rule(rules: tuple[tuple[str, re.Pattern[str]], ...], text: str | None, default: str) -> str:
    """The name of the first rule whose pattern is found in the lower-cased ``text``, else ``default``."""
    lowered = (text or "").lower()
    return next((name for name, pattern in rules if pattern.search(lowered)), default)


def normalize_dtype(text: str | None) -> str:
    """Map any TensorRT data-type/format string to a precision name (``UNKNOWN`` if none fits).

    INT64, BOOL, UINT8, INT4 and FP4 are reported as ``UNKNOWN``: the report's precision
    vocabulary is fixed (see ``PRECISIONS``); the raw string stays on the tensor.
    """
    return _first_rule(_DTYPE_RULES, text, "UNKNOWN")


# Kernel classes, in the order they are tested. The first rule whose pattern is found in the
# lower-cased tactic name wins, so "turing_fp16_i8816cudnn_int8" is INT8 tensor core and
# "ampere_fp32_icudnn_int8x4" is INT8 without tensor cores.
KERNEL_CLASS_LABELS = {
    "int8_tc": "INT8 tensor core",
    "int8_dp4a": "INT8 no tensor core (DP4A)",
    "fp8_tc": "FP8 tensor core",
    "bf16_tc": "BF16 tensor core",
    "fp16_tc": "FP16 tensor core",
    "tf32_tc": "TF32 tensor core",
    "fp32_simt": "FP32 no tensor core",
    "unknown": "unknown",
}

KERNEL_CLASS_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    # IMMA: Volta/Turing cuDNN "i8816", "imma", Hopper "igmma", xmma "i8i8_i8i32"; xmma kernels
    # with INT8 operands, INT32 accumulation and a tensor-core MMA shape ("i8f16_i8i32 ...
    # tensor16x8x32", INT8 in, FP16 out) are IMMA as well.
    ("int8_tc", re.compile(r"i8816|imma|igmma|i8i8|i8i32.*tensor\d+x\d+x\d+")),
    ("int8_dp4a", re.compile(r"int8x4|icudnn")),
    ("fp8_tc", re.compile(r"qgmma|e4m3|e5m2|fp8")),
    ("bf16_tc", re.compile(r"bf16")),
    ("fp16_tc", re.compile(r"h884|h1688|h16816|hmma|hgmma|f16f16")),
    ("tf32_tc", re.compile(r"tf32")),
    ("fp32_simt", re.compile(r"ffma|scudnn|sgemm")),
)


def kernel_class(tactic: str | None) -> str:
    """Heuristic kernel class of a tactic name; ``unknown`` when no token is present."""
    return _first_rule(KERNEL_CLASS_RULES, tactic, "unknown")


def layer_precision(input_dtypes: list[str], output_dtypes: list[str], klass: str) -> str:
    """The precision a layer computes in.

    As in NVIDIA's trex, the first input's data type decides (a quantized convolution has
    INT8 inputs and may write FP16/FP32); a layer without inputs uses its first output. FP32
    data processed by a TF32 tensor-core kernel is reported as TF32.
    """
    dtype = input_dtypes[0] if input_dtypes else (output_dtypes[0] if output_dtypes else "UNKNOWN")
    if dtype == "FP32" and klass == "tf32_tc":
        return "TF32"
    return dtype
