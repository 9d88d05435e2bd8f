"""trtq: TensorRT INT8/FP16 calibration, engine building and per-layer reports.

Importing trtq never imports tensorrt or a CUDA binding; the GPU layer is loaded lazily
by the commands that need it.
"""

__version__ = "0.1.0"
