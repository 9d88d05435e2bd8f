"""The thin TensorRT/CUDA layer: the only place in trtq that touches ``tensorrt`` or a CUDA binding.

Nothing here imports them at module import time. :func:`import_tensorrt` loads TensorRT when a
command needs it and :func:`probe` reads what the installed version can do from the module itself
(``trt.__version__`` plus feature probes), because TensorRT 11 removed whole APIs that 10.x had:
the INT8 calibrators, the FP16/INT8 builder flags and per-layer precision constraints. The path a
build takes is decided in one place, :func:`trtq.trt.plan.plan_build`. Code outside this package
asks it for plain data (layer JSON, timings, :func:`tensorrt_info`) and never holds the modules;
``tests/test_architecture.py`` checks that from the source (its one listed exception,
``trtq/pipeline/environment.py``, still calls :func:`import_tensorrt` and the CUDA backend factory).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from types import ModuleType

from trtq.errors import MissingDependencyError, TrtqError, first_line
from trtq.range_methods import TENSORRT_CLASSES

# calibrator name -> the TensorRT 10.x class implementing it (all removed in TensorRT 11): a view of
# :data:`trtq.range_methods.RANGE_METHODS`
CALIBRATOR_CLASSES = TENSORRT_CLASSES

NO_GPU_HINT = "`trtq calibrate` and `trtq export` work without TensorRT and without a GPU"


def import_tensorrt(purpose: str = "building a TensorRT engine") -> ModuleType:
    """The ``tensorrt`` module, or a one-line error saying what is missing."""
    try:
        import tensorrt
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("tensorrt", "tensorrt_bindings", "tensorrt_libs"):
            raise _unloadable(exc) from exc
        raise TensorRTMissingError(purpose) from exc
    except (ImportError, OSError) as exc:  # bindings present, libnvinfer missing or mismatched
        raise _unloadable(exc) from exc
    return tensorrt


class TensorRTMissingError(MissingDependencyError):
    """``tensorrt`` is not installed; the message also says what works without it."""

    def __init__(self, purpose: str):
        super().__init__("tensorrt", "trt", purpose)
        self.args = (f"{self.args[0]}; {NO_GPU_HINT}",)


def _unloadable(exc: BaseException) -> TrtqError:
    return TrtqError(
        f"the tensorrt package is installed but cannot be loaded ({first_line(exc)}); its native libraries "
        f"(libnvinfer) are missing or do not match; {NO_GPU_HINT}"
    )


@dataclass(frozen=True)
class TensorRTInfo:
    """What the installed TensorRT offers, read from the module (never from the version number alone)."""

    version: str
    calibrators: tuple[str, ...]  # trtq names whose TensorRT calibrator class exists
    builder_flags: tuple[str, ...]
    has_int8_calibrator: bool  # IBuilderConfig.int8_calibrator
    has_calibration_profile: bool  # IBuilderConfig.set_calibration_profile
    has_layer_precision: bool  # ILayer.precision / set_output_type (precision constraints)
    has_progress_monitor: bool  # trt.IProgressMonitor + IBuilderConfig.progress_monitor

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def short_version(self) -> str:
        """``10.16`` from ``10.16.1.11``: what messages show."""
        return ".".join(self.version.split(".")[:2])

    @property
    def patch_version(self) -> str:
        """``10.16.1``: what the calibration cache header encodes."""
        return ".".join(self.version.split(".")[:3])

    @property
    def implicit_quantization(self) -> bool:
        """TensorRT calibrates INT8 itself (10.x): calibrator classes, the INT8 flag and the config slot."""
        return bool(self.calibrators) and "INT8" in self.builder_flags and self.has_int8_calibrator

    @property
    def fp16_flag(self) -> bool:
        return "FP16" in self.builder_flags

    def as_dict(self) -> dict:
        data = asdict(self)
        data["implicit_quantization"] = self.implicit_quantization
        return data


def probe(trt: ModuleType) -> TensorRTInfo:
    """Feature probes on the imported module; names are strings so the probe itself never fails."""
    version = str(getattr(trt, "__version__", "0"))
    flags_enum = getattr(trt, "BuilderFlag", None)
    flags = tuple(sorted(getattr(flags_enum, "__members__", {}) or {}))
    config_cls = getattr(trt, "IBuilderConfig", None)
    layer_cls = getattr(trt, "ILayer", None)
    return TensorRTInfo(
        version=version,
        calibrators=tuple(name for name, cls in CALIBRATOR_CLASSES.items() if hasattr(trt, cls)),
        builder_flags=flags,
        has_int8_calibrator=hasattr(config_cls, "int8_calibrator"),
        has_calibration_profile=hasattr(config_cls, "set_calibration_profile"),
        has_layer_precision=hasattr(layer_cls, "precision") and hasattr(layer_cls, "set_output_type"),
        has_progress_monitor=hasattr(trt, "IProgressMonitor") and hasattr(config_cls, "progress_monitor"),
    )


def tensorrt_info(purpose: str = "building a TensorRT engine") -> TensorRTInfo:
    """What the installed TensorRT offers (:func:`probe` of :func:`import_tensorrt`): for callers outside
    this package, which need the version and features but must not hold the module itself."""
    return probe(import_tensorrt(purpose))


def device_info() -> dict:
    """The CUDA device's name, compute capability, runtime and driver versions (from the installed CUDA
    binding), for callers outside this package: a one-line :class:`TrtqError` when there is none."""
    from trtq.trt.cuda import get_backend

    return get_backend(None).device_info()
