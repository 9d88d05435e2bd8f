"""Per-layer precision and latency reports for TensorRT engines, and trtexec-compatible timing.

Everything here is pure Python: it reads the JSON files and logs that TensorRT and trtexec
write, and the plain data that :mod:`trtq.trt` returns, so reports work on any machine. Reading
an engine file (:mod:`trtq.report.engine`) and trtq's own measurement (:mod:`trtq.report.gpu_bench`)
call :mod:`trtq.trt.inspect` and :mod:`trtq.trt.runner` inside their functions; nothing here
imports TensorRT or a CUDA binding.
"""
