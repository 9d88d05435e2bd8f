"""Per-layer precision and latency reports for TensorRT engines, and trtexec-compatible timing.

Everything here except :mod:`trtq.report.engine` and :mod:`trtq.report.gpu_bench` is pure
Python: it reads the JSON files and logs that TensorRT and trtexec write, so reports work on
any machine. The two GPU modules import TensorRT lazily, inside their functions.
"""
