"""Build and run the trtexec command that measures an engine with the same settings as ``trtq bench``.

trtexec's defaults changed in TensorRT 11: CUDA graphs are on (``--noCudaGraph`` turns them off,
``--useCudaGraph`` is a no-op) and data transfers are off (``--includeDataTransfers`` turns them on,
``--noDataTransfers`` is deprecated); ``--separateProfileRun`` became always-on. So the flags that
express one setting depend on the trtexec version, and trtq states every setting explicitly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

from trtq.errors import TrtqError
from trtq.report.timing import DEFAULT_PERCENTILES
from trtq.report.trtexec_log import parse_trtexec_log
from trtq.shapes import Shape, format_shape_spec, parse_shape_spec


@dataclass
class BenchSettings:
    """Measurement settings shared by trtq's own loop and the trtexec run."""

    warmup_ms: float = 200.0
    iterations: int = 10
    duration_s: float = 3.0
    cuda_graph: bool = False
    data_transfers: bool = True
    spin_wait: bool = False
    shapes: dict[str, Shape] = field(default_factory=dict)
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES

    def describe(self) -> dict[str, object]:
        return {
            "warmup_ms": self.warmup_ms,
            "iterations": self.iterations,
            "duration_s": self.duration_s,
            "cuda_graph": self.cuda_graph,
            "data_transfers": self.data_transfers,
            "spin_wait": self.spin_wait,
            "shapes": format_shape_spec(self.shapes) if self.shapes else "engine default",
        }


def trtexec_defaults(major: int) -> tuple[bool, bool]:
    """(cuda_graph, data_transfers) that trtexec of this TensorRT major version uses by default."""
    return (True, False) if major >= 11 else (False, True)


def _num(value: float) -> str:
    return format(value, "g")


def trtexec_command(
    trtexec: str,
    engine: str | os.PathLike,
    major: int,
    settings: BenchSettings,
    *,
    export_profile: str | os.PathLike | None = None,
    export_layer_info: str | os.PathLike | None = None,
    export_times: str | os.PathLike | None = None,
) -> list[str]:
    """The argv for trtexec of TensorRT ``major`` that reproduces ``settings`` on ``engine``."""
    cmd = [trtexec, f"--loadEngine={os.fspath(engine)}"]
    if settings.shapes:
        cmd.append(f"--shapes={format_shape_spec(settings.shapes)}")
    cmd += [
        f"--warmUp={_num(settings.warmup_ms)}",
        f"--iterations={settings.iterations}",
        f"--duration={_num(settings.duration_s)}",
    ]
    if settings.percentiles:
        # trtexec 8.x takes a single percentile; 10.x and later take a list.
        values = settings.percentiles if major >= 10 else settings.percentiles[-1:]
        cmd.append("--percentile=" + ",".join(_num(p) for p in values))
    if major >= 11:
        if not settings.cuda_graph:
            cmd.append("--noCudaGraph")
        if settings.data_transfers:
            cmd.append("--includeDataTransfers")
    else:
        if settings.cuda_graph:
            cmd.append("--useCudaGraph")
        if not settings.data_transfers:
            cmd.append("--noDataTransfers")
    if settings.spin_wait:
        cmd.append("--useSpinWait")
    if export_profile is not None:
        if major < 11:
            # Without it the profiler's synchronisation distorts (and hides) the end-to-end summary.
            cmd.append("--separateProfileRun")
        cmd.append(f"--exportProfile={os.fspath(export_profile)}")
    if export_layer_info is not None:
        cmd.append(f"--exportLayerInfo={os.fspath(export_layer_info)}")
    if export_times is not None:
        cmd.append(f"--exportTimes={os.fspath(export_times)}")
    return cmd


# The measurement settings trtexec logs under "=== Inference Options ===": (log key, BenchSettings field, label).
_LOGGED_SETTINGS = (
    ("CUDA Graph", "cuda_graph", "CUDA graph"),
    ("Data transfers", "data_transfers", "data transfers"),
    ("Spin-wait", "spin_wait", "spin-wait"),
)


def settings_from_log(inference_options: dict[str, str], command: str | None) -> dict[str, object]:
    """The measurement settings a trtexec log records: CUDA graph, transfers, spin-wait, and ``--shapes``."""
    out: dict[str, object] = {}
    for key, field_name, _label in _LOGGED_SETTINGS:
        value = inference_options.get(key)
        if value in ("Enabled", "Disabled"):
            out[field_name] = value == "Enabled"
    for arg in (command or "").split():
        if arg.startswith("--shapes="):
            out["shapes"] = parse_shape_spec(arg.split("=", 1)[1])
    return out


def settings_mismatch(inference_options: dict[str, str], settings: BenchSettings) -> list[str]:
    """Settings in a trtexec log's "Inference Options" that differ from trtq's (numbers not comparable)."""
    out = []
    for key, field_name, label in _LOGGED_SETTINGS:
        value = inference_options.get(key)
        ours = getattr(settings, field_name)
        if value in ("Enabled", "Disabled") and (value == "Enabled") != ours:
            out.append(f"{label}: trtexec {value.lower()}, trtq {'enabled' if ours else 'disabled'}")
    return out


def find_trtexec(path: str | None) -> str:
    """Resolve ``--trtexec [PATH]``: an explicit file, or ``trtexec`` on PATH."""
    candidate = path or "trtexec"
    if os.sep in candidate or (os.altsep and os.altsep in candidate):
        if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            raise TrtqError(f"trtexec not found or not executable: {candidate}")
        return candidate
    found = shutil.which(candidate)
    if not found:
        raise TrtqError(f"'{candidate}' is not on PATH; pass its location: --trtexec /path/to/trtexec")
    return found


def trtexec_version(trtexec: str, timeout_s: float = 120.0) -> str | None:
    """The TensorRT version trtexec reports in its ``&&&& RUNNING ... [TensorRT vNNNNNN]`` line."""
    try:
        proc = subprocess.run([trtexec, "--help"], capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_trtexec_log(proc.stdout + "\n" + proc.stderr, source=trtexec).version


def run_trtexec(cmd: list[str], timeout_s: float) -> str:
    """Run trtexec and return its combined output; a failure becomes one clear error line."""
    try:
        proc = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout_s, check=False
        )
    except FileNotFoundError as exc:
        raise TrtqError(f"cannot run {cmd[0]}: not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise TrtqError(f"trtexec did not finish within {timeout_s:g} s") from exc
    if proc.returncode != 0:
        tail = [line for line in proc.stdout.splitlines() if line.strip()][-1:] or ["(no output)"]
        raise TrtqError(f"trtexec failed with exit code {proc.returncode}: {tail[0][:300]}")
    return proc.stdout
