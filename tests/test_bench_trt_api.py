"""The GPU code of `trtq report`/`trtq bench` against the REAL TensorRT 10.16 and 11.4 Python bindings.

``tests/trt_api_env.py`` makes the real bindings importable without TensorRT's libraries (stand-in
libraries return NULL), one subprocess per version. That checks every name trtq's GPU code uses,
subclasses ``trt.IProfiler`` the way ``trtq bench`` does, and shows that a machine without usable
libraries gets a one-line error. Running an engine needs a GPU: tests/test_bench_gpu.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.trt_api_env import TrtApiEnv

CHECK = r"""
import json, sys
import tensorrt as trt
from trtq.errors import TrtqError
from trtq.report.engine import layer_info_from_engine
from trtq.trt.runner import TRT_API_USED, _make_profiler
from trtq.report.profile import LayerTimeCollector

out = {"version": trt.__version__, "missing": []}
for owner, names in TRT_API_USED.items():
    obj = trt if owner == "module" else getattr(trt, owner, None)
    out["missing"] += [f"{owner}.{n}" for n in names if obj is None or not hasattr(obj, n)]
collector = LayerTimeCollector()
profiler = _make_profiler(trt, collector)
out["is_iprofiler"] = isinstance(profiler, trt.IProfiler)
for _ in range(3):
    for name, ms in (("conv", 1.5), ("fc", 0.5)):
        profiler.report_layer_time(name, ms)
profile = collector.profile()
out["profile"] = [profile.iterations, [[r.name, r.total_ms] for r in profile.rows]]
out["json_format"] = trt.LayerInformationFormat.JSON.name
try:
    layer_info_from_engine(sys.argv[1])
    out["engine_error"] = None
except TrtqError as exc:
    out["engine_error"] = str(exc)
print(json.dumps(out))
"""


def test_gpu_code_against_real_bindings(trt_api_env: TrtApiEnv, tmp_path: Path) -> None:
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    script = tmp_path / "check.py"
    script.write_text(CHECK)
    result = trt_api_env.run([str(script), str(engine)])
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["version"] == trt_api_env.version
    assert out["missing"] == []
    assert out["is_iprofiler"] is True
    assert out["profile"] == [3, [["conv", 4.5], ["fc", 1.5]]]
    assert out["json_format"] == "JSON"
    # the stand-in library cannot create a runtime: exactly what a machine without a usable GPU sees
    assert out["engine_error"].startswith("TensorRT cannot create a runtime here")
    assert "\n" not in out["engine_error"]
