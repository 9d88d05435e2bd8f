"""Build steps every TensorRT path shares (10.x and 11.x): logger, builder, ONNX parsing, optimization
profiles, workspace, profiling verbosity, timing cache and the progress monitor slot.

Only APIs that exist in both TensorRT 10.16 and 11.4 belong here; the conformance tests check every
``trt.*`` name and builder/config/network method this module uses against both real bindings.
Precision flags, calibrators and per-layer precision are 10.x-only and live in
:mod:`trtq.trt.implicit`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from trtq.errors import TrtqError, first_line
from trtq.fileio import atomic_write
from trtq.shapes import Shape
from trtq.trt import NO_GPU_HINT

# ILogger severities by name, most severe first; their integer values are not stable across versions.
SEVERITIES = ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")


class LogCollector:
    """The Python half of trtq's TensorRT logger: shows what the user asked for, keeps the errors."""

    def _setup(self, show: str = "WARNING", echo: Callable[[str], None] | None = None) -> None:
        self.show_rank = SEVERITIES.index(show)
        self.echo = echo or (lambda text: print(text, file=sys.stderr))
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def log(self, severity, msg: str) -> None:
        name = getattr(severity, "name", str(severity)).split(".")[-1]
        rank = SEVERITIES.index(name) if name in SEVERITIES else len(SEVERITIES)
        if rank <= SEVERITIES.index("ERROR"):
            self.errors.append(msg)
        elif rank == SEVERITIES.index("WARNING"):
            self.warnings.append(msg)
        if rank <= self.show_rank:
            self.echo(f"tensorrt: [{name.lower()}] {msg}")

    def last_error(self) -> str | None:
        """The first line of the last error TensorRT logged (its messages can carry long dumps)."""
        lines = self.errors[-1].strip().splitlines() if self.errors else []
        return lines[0] if lines else None


def logger_class(trt: ModuleType) -> type:
    """``TrtqLogger``: :class:`LogCollector` on the real ``trt.ILogger``."""
    base = trt.ILogger

    def __init__(self, **options) -> None:
        base.__init__(self)
        LogCollector._setup(self, **options)

    return type("TrtqLogger", (LogCollector, base), {"__init__": __init__, "__module__": __name__})


def create_builder(trt: ModuleType, logger):
    """``trt.Builder``; without a usable GPU/driver TensorRT's factory returns null, which pybind11
    raises as ``TypeError: ... factory function returned nullptr``: say that in one line."""
    version = ".".join(str(trt.__version__).split(".")[:2])
    try:
        builder = trt.Builder(logger)
    except (TypeError, RuntimeError) as exc:
        detail = logger.last_error() or first_line(exc)
        raise TrtqError(
            f"TensorRT {version} could not create a builder ({detail}): no usable NVIDIA GPU or driver; "
            f"{NO_GPU_HINT}"
        ) from exc
    if builder is None:
        raise TrtqError(f"TensorRT {version} could not create a builder: no usable NVIDIA GPU or driver; {NO_GPU_HINT}")
    return builder


def create_network(trt: ModuleType, builder):
    """An explicit-batch network (the only kind since 10.0); flags 0 are valid on 10.x and 11.x."""
    return builder.create_network(0)


def parse_onnx(trt: ModuleType, network, logger, onnx_path: Path) -> object:
    """Parse the model file into ``network``; keep the parser alive as long as the network."""
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        problems = []
        for index in range(parser.num_errors):
            error = parser.get_error(index)
            where = error.node_name() or error.node_operator()
            problems.append(f"{where}: {error.desc()}" if where else error.desc())
        detail = "; ".join(problems[:3]) or logger.last_error() or "unknown parser error"
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise TrtqError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {detail}{more}")
    return parser


def network_inputs(network) -> dict[str, tuple[int, ...]]:
    """Input name -> dims as TensorRT parsed them (-1 where dynamic)."""
    inputs = {}
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        inputs[tensor.name] = tuple(int(d) for d in tensor.shape)
    return inputs


@dataclass(frozen=True)
class ProfileShapes:
    """min/opt/max per input, in trtexec's terms."""

    min: Mapping[str, Shape]
    opt: Mapping[str, Shape]
    max: Mapping[str, Shape]


def check_profile_against_network(inputs: Mapping[str, tuple[int, ...]], shapes: ProfileShapes) -> None:
    """Every dynamic network input needs a profile, and profiles must agree with fixed dims."""
    missing = [name for name, dims in inputs.items() if any(d < 0 for d in dims) and name not in shapes.opt]
    if missing:
        raise TrtqError(
            f"TensorRT sees dynamic dimensions in input(s) {', '.join(missing)}; give their shapes with "
            "--opt-shapes (and --min-shapes/--max-shapes for a range), e.g. --opt-shapes "
            f"{missing[0]}:{'x'.join(str(d if d > 0 else 1) for d in inputs[missing[0]])}"
        )
    for name, opt in shapes.opt.items():
        dims = inputs.get(name)
        if dims is None:
            raise TrtqError(f"--opt-shapes names '{name}', which TensorRT does not see as a network input")
        for which, value in (("min", shapes.min[name]), ("opt", opt), ("max", shapes.max[name])):
            if len(value) != len(dims) or any(d >= 0 and d != v for d, v in zip(dims, value, strict=True)):
                raise TrtqError(
                    f"{which} shape {list(value)} for input '{name}' does not fit TensorRT's view of it {list(dims)}"
                )


def add_optimization_profile(trt: ModuleType, builder, config, shapes: ProfileShapes) -> None:
    profile = builder.create_optimization_profile()
    for name in shapes.opt:
        profile.set_shape(name, shapes.min[name], shapes.opt[name], shapes.max[name])
    if config.add_optimization_profile(profile) < 0:
        raise TrtqError("TensorRT rejected the optimization profile (check that min <= opt <= max)")


def set_workspace(trt: ModuleType, config, workspace_bytes: int | None) -> None:
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))


def set_detailed_profiling(trt: ModuleType, config) -> None:
    """Keep layer names, tactics and formats in the engine so ``trtq report`` can explain it."""
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED


def attach_timing_cache(trt: ModuleType, config, path: Path | None):
    """Load (or start) the timing cache; it makes rebuilds on the same GPU much faster."""
    if path is None:
        return None
    data = path.read_bytes() if path.is_file() else b""
    timing_cache = config.create_timing_cache(data)
    if not config.set_timing_cache(timing_cache, False):
        raise TrtqError(f"TensorRT cannot use the timing cache {path} (written by another GPU or TensorRT?)")
    return timing_cache


def save_timing_cache(timing_cache, path: Path | None) -> None:
    if timing_cache is not None and path is not None:
        atomic_write(path, bytes(memoryview(timing_cache.serialize())))


def attach_progress_monitor(trt: ModuleType, config, monitor) -> None:
    config.progress_monitor = monitor
