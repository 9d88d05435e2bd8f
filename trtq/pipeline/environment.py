"""What this machine has: tool versions for the manifest and the fingerprints, and whether the GPU
steps (build, bench, report) can run here -- with the reason when they cannot."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field

from trtq import __version__
from trtq.errors import TrtqError
from trtq.versions import installed_trt_version, package_version


@dataclass
class Machine:
    """Versions (``None`` when absent) and the GPU steps' availability."""

    versions: dict[str, str | None]
    gpu_ready: bool = False
    gpu_reason: str | None = None  # why the GPU steps cannot run (None when they can, or were not probed)
    probed: bool = False
    device: dict = field(default_factory=dict)

    @property
    def cpu_env(self) -> dict[str, str | None]:
        """Versions that decide what the CPU steps produce."""
        return {k: self.versions[k] for k in ("trtq", "onnx", "onnxruntime", "numpy")}

    @property
    def gpu_env(self) -> dict[str, str | None]:
        """Versions and hardware that decide what the GPU steps produce."""
        return {k: self.versions[k] for k in ("trtq", "tensorrt", "cuda", "driver", "gpu")}


def describe_machine(probe_gpu: bool) -> Machine:
    """Versions of everything the pipeline uses; with ``probe_gpu`` also load TensorRT and ask CUDA
    for the device (this is what decides whether build, bench and report run)."""

    versions: dict[str, str | None] = {
        "trtq": __version__,
        "python": platform.python_version(),
        "numpy": package_version("numpy"),
        "onnx": package_version("onnx"),
        "onnxruntime": package_version("onnxruntime", "onnxruntime-gpu"),
        "tensorrt": installed_trt_version(),
        "cuda": None,
        "driver": None,
        "gpu": None,
    }
    machine = Machine(versions)
    if not probe_gpu:
        return machine
    machine.probed = True
    device_problem = None
    try:
        from trtq.trt import device_info

        machine.device = device_info()
        versions["cuda"] = machine.device.get("cuda_runtime_version")
        versions["driver"] = machine.device.get("driver_version")
        versions["gpu"] = machine.device.get("name")
    except TrtqError as exc:
        device_problem = str(exc)
    try:
        from trtq.trt import tensorrt_info

        versions["tensorrt"] = str(tensorrt_info("building engines").version)
    except TrtqError as exc:
        machine.gpu_reason = str(exc)
        return machine
    if device_problem is not None:
        machine.gpu_reason = device_problem
        return machine
    machine.gpu_ready = True
    return machine
