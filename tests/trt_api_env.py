"""The REAL TensorRT Python bindings, importable without TensorRT's libraries or a GPU (API tests only).

NVIDIA publishes the compiled bindings on PyPI as ``tensorrt-cu12-bindings`` (also
``tensorrt-cu13-bindings`` from 10.13; the two 11.4.0.106 wheels hold the identical module). The
native libraries they link against (libnvinfer, libnvinfer_plugin, libnvonnxparser) are not on
PyPI, so this helper compiles stand-ins with gcc: shared libraries with the right sonames whose
few exported entry points return NULL. Then:

* ``import tensorrt`` works and every class, enum, method and docstring is the real one;
* Python subclasses of ``trt.IInt8EntropyCalibrator2``, ``trt.IProgressMonitor``, ``trt.ILogger``
  can be created, and the C++ trampolines dispatch to their Python overrides;
* anything that needs the library (``trt.Builder``, ``trt.Runtime``) fails exactly as on a machine
  without a usable GPU: ``TypeError: pybind11::init(): factory function returned nullptr``.

Nothing here can build or run an engine; tests marked ``gpu`` do that on a real machine, and get
TensorRT and a CUDA backend from the :func:`tensorrt_gpu` fixture at the end of this module.

One process can import one tensorrt version, so checks run in subprocesses
(:func:`run_checks`). The environment is cached under ``.cache/trt-api/`` in the repository
(ignored by git; ``TRTQ_TRT_API_CACHE`` overrides). Without gcc or PyPI the tests that need it are
skipped with the reason; ``TRTQ_REQUIRE_TRT_API=1`` turns that skip into a failure (for CI).
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VERSIONS = ("10.16.1.11", "11.4.0.106")
PACKAGES = ("tensorrt-cu12-bindings", "tensorrt-cu13-bindings")
CHECKER = Path(__file__).resolve().parent / "trt_api_checks.py"

# The only C symbols the bindings resolve in TensorRT's libraries at load time (everything else is
# reached through C++ virtual calls on objects these factories would create).
_STUB_C = """\
/* Stand-in for libnvinfer / libnvinfer_plugin / libnvonnxparser: API conformance tests only, NOT TensorRT. */
#define NULL_FACTORY(name) void* name(void) { return 0; }
NULL_FACTORY(createInferBuilder_INTERNAL)
NULL_FACTORY(createInferRefitter_INTERNAL)
NULL_FACTORY(createInferRuntime_INTERNAL)
NULL_FACTORY(createNvOnnxParserRefitter_INTERNAL)
NULL_FACTORY(createNvOnnxParser_INTERNAL)
NULL_FACTORY(getBuilderPluginRegistry)
NULL_FACTORY(getPluginRegistry)
int getNvOnnxParserVersion(void) { return 0; }
int getInferLibVersion(void) { return 0; }
int initLibNvInferPlugins(void* logger, const char* ns) { return 0; }
"""
_SHIM = """\
# Stand-in for NVIDIA's `tensorrt` meta package: it re-exports tensorrt_bindings (API tests only).
from tensorrt_bindings import *  # noqa: F401,F403
from tensorrt_bindings import __version__  # noqa: F401
"""
_LIBRARIES = ("libnvinfer", "libnvinfer_plugin", "libnvonnxparser")


class TrtApiUnavailable(Exception):
    """gcc, pip or PyPI is missing: the environment cannot be made here."""


@dataclass(frozen=True)
class TrtApiEnv:
    version: str
    root: Path
    package: str
    wheel: str

    @property
    def site(self) -> Path:
        return self.root / "site"

    @property
    def lib(self) -> Path:
        return self.root / "lib"

    def environ(self, *, with_libraries: bool = True) -> dict[str, str]:
        """``os.environ`` plus what makes the bindings importable (the repo too, for trtq)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.site), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        libs = [str(self.lib)] if with_libraries else []
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env

    def run(self, args: list[str], *, with_libraries: bool = True, cwd: Path | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], env=self.environ(with_libraries=with_libraries),
                              cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout)


def cache_root() -> Path:
    return Path(os.environ.get("TRTQ_TRT_API_CACHE", REPO / ".cache" / "trt-api"))


def _python_tag() -> str:
    return f"cp{sys.version_info[0]}{sys.version_info[1]}"


def _download(version: str, dest: Path) -> tuple[str, Path]:
    errors = []
    for package in PACKAGES:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", str(dest), f"{package}=={version}"]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            errors.append(f"{package}: {exc}")
            continue
        wheels = sorted(dest.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
        if result.returncode == 0 and wheels:
            return package, wheels[0]
        tail = (result.stderr.strip().splitlines() or ["no wheel for this Python/platform"])[-1]
        errors.append(f"{package}: {tail}")
    raise TrtApiUnavailable(f"cannot download the TensorRT {version} bindings from PyPI ({'; '.join(errors)})")


def _compile_stubs(version: str, lib: Path, workdir: Path) -> None:
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise TrtApiUnavailable("no C compiler (gcc/cc) to build the stand-in TensorRT libraries")
    source = workdir / "stub.c"
    source.write_text(_STUB_C)
    major = version.split(".")[0]
    for name in _LIBRARIES:
        soname = f"{name}.so.{major}"
        result = subprocess.run([compiler, "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(lib / soname),
                                 str(source)], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise TrtApiUnavailable(f"{compiler} cannot build {soname}: {result.stderr.strip()[:200]}")


def prepare(version: str) -> TrtApiEnv:
    """The cached environment for ``version``, made on first use (under a lock: parallel sessions)."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{version}-{_python_tag()}"
    marker = target / "env.json"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.is_file():
            staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root))
            try:
                (staging / "site" / "tensorrt").mkdir(parents=True)
                (staging / "lib").mkdir()
                package, wheel = _download(version, staging / "dl")
                with zipfile.ZipFile(wheel) as archive:
                    archive.extractall(staging / "site")
                if not (staging / "site" / "tensorrt_bindings" / "__init__.py").is_file():
                    raise TrtApiUnavailable(f"{wheel.name} does not contain tensorrt_bindings")
                (staging / "site" / "tensorrt" / "__init__.py").write_text(_SHIM)
                _compile_stubs(version, staging / "lib", staging)
                (staging / "env.json").write_text(json.dumps({"version": version, "package": package,
                                                              "wheel": wheel.name}))
                shutil.rmtree(staging / "dl")
                if target.exists():
                    shutil.rmtree(target)
                staging.rename(target)
            finally:
                if staging.exists():
                    shutil.rmtree(staging, ignore_errors=True)
    meta = json.loads(marker.read_text())
    return TrtApiEnv(version, target, meta["package"], meta["wheel"])


def _skip_or_fail(reason: str):
    if os.environ.get("TRTQ_REQUIRE_TRT_API"):
        pytest.fail(f"TRTQ_REQUIRE_TRT_API is set but the TensorRT API environment is unavailable: {reason}")
    pytest.skip(f"real TensorRT bindings unavailable here: {reason}")


def run_checks(env: TrtApiEnv, workdir: Path, *args: str) -> dict:
    """Run ``tests/trt_api_checks.py`` against ``env``'s real bindings; returns its JSON report."""
    report = workdir / f"report-{env.version}.json"
    result = env.run([str(CHECKER), "--report", str(report), "--workdir", str(workdir), *args], timeout=600)
    if result.returncode != 0 or not report.is_file():
        raise AssertionError(f"the conformance checker failed for TensorRT {env.version} "
                             f"(rc={result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return json.loads(report.read_text())


# -- pytest fixtures (this module is registered as a plugin in tests/conftest.py) ---------------------


@pytest.fixture(scope="session", params=VERSIONS, ids=lambda v: f"trt{v}")
def trt_api_env(request) -> TrtApiEnv:
    """One real-bindings environment per TensorRT version (10.16.1.11 and 11.4.0.106)."""
    try:
        return prepare(request.param)
    except TrtApiUnavailable as exc:
        _skip_or_fail(str(exc))


@pytest.fixture(scope="session")
def trt_api_report(trt_api_env: TrtApiEnv, tmp_path_factory) -> dict:
    """What the checker observed in one subprocess per version (it runs once per session)."""
    workdir = tmp_path_factory.mktemp(f"trt-api-{trt_api_env.version}")
    report = run_checks(trt_api_env, workdir)
    report["_env"] = {"package": trt_api_env.package, "wheel": trt_api_env.wheel, "root": str(trt_api_env.root)}
    return report


@pytest.fixture(scope="session")
def tensorrt_gpu():
    """``(tensorrt module, CUDA backend)`` where TensorRT can create a builder on a GPU, else a skip that
    says what is missing: the one probe for every test marked ``gpu``."""
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("TensorRT is not installed (pip install 'trtq[trt]')")
    from trtq.errors import TrtqError
    from trtq.trt import import_tensorrt
    from trtq.trt.cuda import get_backend
    from trtq.trt.engine import create_builder, logger_class

    try:
        trt = import_tensorrt()
        backend = get_backend()
        backend.device_info()
        create_builder(trt, logger_class(trt)(echo=lambda text: None))
    except TrtqError as exc:
        pytest.skip(f"no usable TensorRT/GPU here: {exc}")
    return trt, backend
