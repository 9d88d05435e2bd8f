"""Run a checked config: plan the steps, decide for each whether to run, reuse, keep or skip it, run
what is needed, and keep ``manifest.json`` true after every step.

Per model: ``statistics`` (one pass over the calibration data, shared by every INT8 variant), then per
variant ``calibrate`` (int8/best), ``export``, ``evaluate`` (all variants of a model in one pass over
the evaluation data), ``build``, ``bench``, ``report`` (the last three need TensorRT and a GPU).

A step's fingerprint has two parts: ``inputs`` (content hashes of the model, the data, the earlier
steps' outputs, and the step's options) and ``env`` (the tool versions and, for GPU steps, the GPU).
A step is reused when both are unchanged and its files still hash as recorded; ``--force`` runs it
anyway. A step that cannot run here (no GPU, or not selected with ``--steps``) keeps an earlier
result whose inputs are unchanged -- a GPU job's engines stay listed when the CPU job runs again --
and otherwise its stale result is removed.
"""

from __future__ import annotations

import datetime
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtq.errors import TrtqError
from trtq.fileio import atomic_write, sha256_file, write_json
from trtq.pipeline import steps as impl
from trtq.pipeline.environment import Machine, describe_machine
from trtq.pipeline.manifest import MANIFEST_FORMAT, Manifest, file_record, fingerprint
from trtq.pipeline.schema import DataConfig, ModelConfig, PipelineConfig, Variant
from trtq.pipeline.signals import Interrupted, SignalGuard
from trtq.pipeline.summary import FAIL, check_gates, render

STEP_KINDS = ("calibrate", "export", "evaluate", "build", "bench", "report")
GPU_KINDS = ("build", "bench", "report")
STEP_GROUPS = {"cpu": ("calibrate", "export", "evaluate"), "gpu": GPU_KINDS, "all": STEP_KINDS}

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_GATE_FAILED = 3
EXIT_STEP_FAILED = 4
STAGING = ".trtq-staging"
SUMMARY_NAME = "summary.md"

Echo = Callable[[str], None]


def parse_steps(text: str | None) -> tuple[str, ...]:
    """``"cpu"``, ``"gpu"``, ``"all"`` or a comma list of step kinds."""
    if not text:
        return STEP_KINDS
    kinds: list[str] = []
    for part in (p.strip().lower() for p in text.split(",")):
        if part in STEP_GROUPS:
            kinds.extend(STEP_GROUPS[part])
        elif part in STEP_KINDS:
            kinds.append(part)
        elif part:
            raise TrtqError(f"--steps: unknown step '{part}' (choose from {', '.join(STEP_KINDS)}, or cpu, gpu, all)")
    if not kinds:
        raise TrtqError("--steps: no step given")
    return tuple(dict.fromkeys(kinds))


@dataclass(frozen=True)
class Step:
    id: str
    kind: str  # statistics, calibrate, export, evaluate, build, bench, report
    model: ModelConfig
    variant: Variant | None
    needs: tuple[str, ...] = ()

    @property
    def selector(self) -> str:
        """The ``--steps`` name that selects it (statistics is part of calibrate)."""
        return "calibrate" if self.kind == "statistics" else self.kind

    @property
    def gpu(self) -> bool:
        return self.kind in GPU_KINDS


@dataclass
class RunResult:
    exit_code: int
    manifest: dict[str, Any]
    text: str
    markdown: str
    output: Path


def plan(config: PipelineConfig) -> list[Step]:
    """Every step of every model and variant, in the order they run."""
    steps: list[Step] = []
    for model in config.models:
        m = model.name
        stats_id = f"{m}/statistics"
        if any(v.int8 for v in model.variants):
            steps.append(Step(stats_id, "statistics", model, None))
        per_variant: dict[str, list[Step]] = {}
        for v in model.variants:
            base = f"{m}/{v.name}"
            calibrate = (f"{base}/calibrate",) if v.int8 else ()
            per_variant[v.name] = [
                *([Step(f"{base}/calibrate", "calibrate", model, v, (stats_id,))] if v.int8 else []),
                Step(f"{base}/export", "export", model, v, calibrate),
                Step(f"{base}/evaluate", "evaluate", model, v, (f"{base}/export",)),
                Step(f"{base}/build", "build", model, v, calibrate),
                Step(f"{base}/bench", "bench", model, v, (f"{base}/build",)),
                Step(f"{base}/report", "report", model, v, (f"{base}/build",)),
            ]
        # CPU steps of every variant, then the evaluations (one pass), then the GPU steps.
        for kinds in (("calibrate", "export"), ("evaluate",), GPU_KINDS):
            for v in model.variants:
                steps.extend(s for s in per_variant[v.name] if s.kind in kinds)
    return steps


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _engine_options(model: ModelConfig) -> dict[str, Any]:
    """The ``[build]`` options that decide the engine: not ``timing_cache``, a path to a cache of timings."""
    return {k: v for k, v in model.build.items() if k != "timing_cache"}


class Pipeline:
    """One ``trtq run``: see the module docstring."""

    def __init__(self, config: PipelineConfig, *, steps: tuple[str, ...] = STEP_KINDS, force: bool = False,
                 require_gpu: bool = False, guard: SignalGuard | None = None, echo: Echo | None = None,
                 warn: Echo | None = None):
        self.config = config
        self.out = config.output
        self.kinds = steps
        self.force = force
        self.require_gpu = require_gpu
        self.guard = guard or SignalGuard()
        self.echo = echo or (lambda _text: None)
        self.warn = warn or (lambda _text: None)
        self.steps = plan(config)
        self.by_id = {s.id: s for s in self.steps}
        self.wanted = self._wanted()
        self.actions: dict[str, dict[str, Any]] = {}
        self.manifest: Manifest | None = None
        self.machine: Machine | None = None
        self._models: dict[str, Any] = dict(config.loaded)  # loaded by the config check, or on first use
        self._hashes: dict[Path, str] = {}
        self._data: dict[str, dict] = {}
        self._summary: dict[str, Any] = {}  # what finish() renders: summary.md and the text of RunResult
        self._markdown = ""

    # -- selection -------------------------------------------------------------------------------------------

    def _wanted(self) -> set[str]:
        """The selected steps and everything they need."""
        wanted: set[str] = set()
        pending = [s.id for s in self.steps if s.selector in self.kinds]
        while pending:
            step_id = pending.pop()
            if step_id not in wanted:
                wanted.add(step_id)
                pending.extend(self.by_id[step_id].needs)
        return wanted

    def gpu_needed(self) -> bool:
        return any(self.by_id[s].gpu for s in self.wanted)

    # -- hashes and inputs -----------------------------------------------------------------------------------

    def _sha(self, path: Path) -> str:
        if path not in self._hashes:
            self._hashes[path] = sha256_file(path)
        return self._hashes[path]

    def _rel(self, path: Path) -> str:
        """How the manifest shows a path: relative to the config's folder when inside it."""
        resolved, root = Path(path).resolve(), self.config.root.resolve()
        return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else str(path)

    def data_fingerprint(self, data: DataConfig) -> dict[str, Any]:
        """Content hash of the data (every file under a data folder but hidden ones, or the script) and its
        options, taken before the data is opened: it decides whether the steps that read the data run."""
        if data.key in self._data:
            return self._data[data.key]
        if data.path is not None:
            if data.path.is_file():
                listing = [(data.path.name, self._sha(data.path))]
            else:
                listing = [(p.relative_to(data.path).as_posix(), self._sha(p)) for p in sorted(data.path.rglob("*"))
                           if p.is_file() and not any(part.startswith(".") for part in p.relative_to(data.path).parts)]
            source = {"path": self._rel(data.path), "files": len(listing),
                      "sha256": fingerprint([f"{name} {digest}" for name, digest in listing])}
        else:
            script = Path(data.loader_script.rpartition(":")[0])
            source = {"loader_script": f"{self._rel(script)}:{data.loader_script.rpartition(':')[2]}",
                      "sha256": self._sha(script)}
        record = {**source, "options": dict(sorted(data.options.items()))}
        if data.labels is not None:
            record["labels"] = {"path": self._rel(data.labels), "sha256": self._sha(data.labels)}
            record["logits"] = data.logits
        self._data[data.key] = record
        return record

    def data_inputs(self, data: DataConfig) -> dict[str, Any]:
        """The data's part of a fingerprint: contents and options, not where the files are (a CI runner
        checks the repository out elsewhere; moved data with the same contents gives the same results)."""
        record = dict(self.data_fingerprint(data))
        record.pop("path", None)
        if "loader_script" in record:
            record["loader_script"] = record["loader_script"].rpartition(":")[2]  # the function's name
        if "labels" in record:
            record["labels"] = record["labels"]["sha256"]
        return record

    def model(self, config: ModelConfig):
        if config.name not in self._models:
            from trtq.model import load_model

            self._models[config.name] = load_model(config.path)
        return self._models[config.name]

    def _file_sha(self, rel: str) -> str:
        return self.manifest.files[rel]["sha256"]

    def _result(self, step_id: str) -> dict[str, Any]:
        return self.manifest.entry(step_id).get("result", {})

    def cache_trt_version(self) -> str:
        from trtq.cache import DEFAULT_TRT_VERSION

        return self.machine.versions.get("tensorrt") or DEFAULT_TRT_VERSION

    def _profile_rel(self, step: Step) -> str | None:
        """The per-layer profile the variant's bench step wrote, if it wrote one."""
        bench = self.manifest.entry(f"{step.model.name}/{step.variant.name}/bench")
        rel = impl.Layout(step.model).profile(step.variant)
        return rel if bench and rel in bench["files"] else None

    def inputs(self, step: Step) -> dict[str, Any]:
        """The step's input fingerprint (JSON: tuples of dimensions hash as lists)."""
        m, v, layout = step.model, step.variant, impl.Layout(step.model)
        model_sha = self._sha(m.path)
        base = f"{m.name}/{v.name}" if v else m.name
        if step.kind == "statistics":
            return {"model": model_sha, "data": self.data_inputs(m.data), "shapes": m.shapes}
        if step.kind == "calibrate":
            return {"statistics": self._file_sha(layout.statistics()), "calibrator": v.calibrator,
                    "percentile": v.percentile, "cache_trt_version": self.cache_trt_version()}
        rules, _ = impl.keep_rules(m, v)
        ranges = self._result(f"{base}/calibrate")["ranges_sha256"] if v.int8 else None
        if step.kind == "export":
            return {"model": model_sha, "precision": v.precision, "ranges": ranges, "keep_precision": rules}
        if step.kind == "evaluate":
            return {"model": model_sha, "onnx": self._file_sha(layout.onnx(v)), "data": self.data_inputs(m.eval),
                    "shapes": m.shapes}
        if step.kind == "build":
            dynamic = any(not spec.is_static for spec in self.model(m).inputs) and "opt" not in m.profile
            return {"model": model_sha, "precision": v.precision, "calibrator": v.calibrator, "ranges": ranges,
                    "keep_precision": rules, "profile": m.profile, "build": _engine_options(m),
                    "data_shapes": self.data_inputs(m.data) if dynamic else None}
        engine = self._result(f"{base}/build")["engine_sha256"]
        if step.kind == "bench":
            return {"engine": engine, "bench": m.bench}
        if step.kind == "report":
            profile = self._profile_rel(step)
            return {"engine": engine, "profile": self._file_sha(profile) if profile else None, "ranges": ranges}
        raise ValueError(step.kind)

    def env(self, step: Step) -> dict[str, Any]:
        versions = self.machine.versions
        if step.gpu:
            return self.machine.gpu_env
        if step.kind == "calibrate":
            return {k: versions[k] for k in ("trtq", "numpy")}
        if step.kind == "export":
            return {k: versions[k] for k in ("trtq", "onnx")}
        return self.machine.cpu_env

    # -- bookkeeping --------------------------------------------------------------------------------------

    def _act(self, step: Step, action: str, reason: str | None = None, seconds: float | None = None,
             say: bool = True) -> None:
        self.actions[step.id] = {"action": action, **({"reason": reason} if reason else {}),
                                 **({"seconds": round(seconds, 3)} if seconds is not None else {})}
        if not say:
            return
        tail = f" ({seconds:.2f} s)" if seconds is not None else ""
        if reason and action in ("skipped", "failed", "kept"):
            shown = "no TensorRT/GPU here (see above)" if reason == (self.machine.gpu_reason or "") and step.gpu \
                else reason
            tail += f": {shown}"
        self.echo(f"[{action}] {step.id}{tail}")

    def _drop(self, step: Step, status: str, reason: str) -> None:
        """No result for the step here: remove an earlier one (its files too) and note why."""
        with self.guard.deferred():
            self.manifest.forget(step.id)
            self.manifest.note(step.id, status, reason)
            self.manifest.save()

    def decide(self, step: Step) -> dict[str, Any] | None:
        """The fingerprint parts when the step must run; None when it was reused, kept or skipped."""
        for need in step.needs:
            if self.manifest.entry(need) is None:
                upstream = self.manifest.steps.get(need, {})
                if upstream.get("status") == "skipped":
                    reason = upstream.get("reason", "skipped")
                else:
                    reason = f"needs {self.by_id[need].kind} ({need}), which {upstream.get('status', 'did not run')}"
                self._drop(step, "skipped", reason)
                self._act(step, "skipped", reason)
                return None
        parts = {"inputs": self.inputs(step), "env": self.env(step)}
        digests = {"inputs_sha256": fingerprint(parts["inputs"]), "env_sha256": fingerprint(parts["env"])}
        previous = self.manifest.entry(step.id)
        same_inputs = previous is not None and previous.get("inputs_sha256") == digests["inputs_sha256"]
        requested = step.id in self.wanted
        if not requested or (step.gpu and not self.machine.gpu_ready):
            reason = self.machine.gpu_reason if requested else f"not selected (--steps {','.join(self.kinds)})"
            if same_inputs and self.manifest.verified(step.id):
                self._act(step, "kept", f"{reason}; its earlier result has the same inputs")
            else:
                self._drop(step, "skipped", reason)
                self._act(step, "skipped", reason)
            return None
        if (not self.force and same_inputs and previous.get("env_sha256") == digests["env_sha256"]
                and self.manifest.verified(step.id)):
            self._act(step, "reused")
            return None
        return {**parts, **digests}

    def begin(self, step: Step) -> Path:
        """Forget the step's earlier result (files included) before it runs again; a fresh staging folder."""
        with self.guard.deferred():
            self.manifest.forget(step.id)
            self.manifest.save()
        staging = self.out / STAGING / step.id.replace("/", "__")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        self.echo(f"[running] {step.id}")
        return staging

    def commit(self, step: Step, parts: dict[str, Any], files: dict[str, Path], result: dict[str, Any],
               seconds: float, staging: Path) -> None:
        """Move the step's files into place and record it, all while signals wait."""
        records = {rel: file_record(path) for rel, path in files.items()}
        entry = {"kind": step.kind, "model": step.model.name, "variant": step.variant.name if step.variant else None,
                 **parts, "result": result, "seconds": round(seconds, 3), "finished": _now()}
        try:  # folders first: a file where the model's or variant's folder goes fails the step before any move
            for rel in files:
                (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            self.fail(step, f"cannot create the folder {exc.filename}: {exc.strerror}")
            return
        with self.guard.deferred():
            for rel, path in files.items():
                os.replace(path, self.out / rel)  # staging is inside the output folder: a rename, never a copy
            self.manifest.record(step.id, entry, records)
            self.manifest.save()
        shutil.rmtree(staging, ignore_errors=True)
        self._act(step, "ran", seconds=seconds)

    def fail(self, step: Step, message: str) -> None:
        self._drop(step, "failed", message)
        self._act(step, "failed", message)

    def execute(self, todo: list[tuple[Step, dict[str, Any]]],
                produce: Callable[[dict[str, Path]], dict[str, tuple[dict, dict]]]) -> None:
        """Run steps that are produced together (one step, or a model's evaluations): ``produce`` gets each
        step's staging folder and returns each step's ``(files, result)``. A :class:`TrtqError` fails them
        all; anything else (an interruption) leaves their staging folders to :meth:`run`'s cleanup."""
        stagings = {step.id: self.begin(step) for step, _ in todo}
        started = time.perf_counter()
        try:
            produced = produce(stagings)
        except TrtqError as exc:
            for step, _ in todo:
                shutil.rmtree(stagings[step.id], ignore_errors=True)
                self.fail(step, str(exc))
            return
        seconds = (time.perf_counter() - started) / len(todo)
        for step, parts in todo:
            files, result = produced[step.id]
            self.commit(step, parts, files, result, seconds, stagings[step.id])

    # -- the steps ----------------------------------------------------------------------------------------

    def produce(self, step: Step, staging: Path) -> tuple[dict, dict]:
        m, v, layout = step.model, step.variant, impl.Layout(step.model)
        warn = self._step_warn(step)
        cache = self.out / layout.cache(v) if v is not None and v.int8 else None
        if step.kind == "statistics":
            return impl.run_statistics(self.model(m), m, staging, layout, warn)
        if step.kind == "calibrate":
            return impl.run_calibrate(self.out / layout.statistics(), v, self.cache_trt_version(), staging, layout,
                                      warn)
        if step.kind == "export":
            return impl.run_export(self.model(m), m, v, cache, staging, layout, warn)
        if step.kind == "build":
            return impl.run_build(self.model(m), m, v, cache, staging, layout, self._step_echo(step), warn)
        if step.kind == "bench":
            return impl.run_bench(self.out / layout.engine(v), m, v, self.machine.versions["tensorrt"], staging,
                                  layout, self._step_echo(step))
        if step.kind == "report":
            profile = self._profile_rel(step)
            return impl.run_report(self.out / layout.engine(v), self.out / profile if profile else None, v, cache,
                                   f"{m.name}/{v.name}", staging, layout)
        raise ValueError(step.kind)

    def _step_warn(self, step: Step) -> Echo:
        return lambda text: self.warn(f"{step.id}: {text}")

    def _step_echo(self, step: Step) -> Echo:
        return lambda text: self.echo(f"    {text}")

    def run_evaluations(self, steps: list[Step]) -> None:
        """All evaluate steps of one model that must run, in one pass over the evaluation data."""
        todo = [(step, parts) for step in steps if (parts := self.decide(step)) is not None]
        if not todo:
            return
        model_config = todo[0][0].model
        layout = impl.Layout(model_config)

        def produce(stagings: dict[str, Path]) -> dict[str, tuple[dict, dict]]:
            exported = {step.variant: self.out / layout.onnx(step.variant) for step, _ in todo}
            documents = impl.run_evaluations(self.model(model_config), model_config, exported,
                                             self._step_warn(todo[0][0]))
            produced = {}
            for step, _ in todo:
                rel = layout.evaluation(step.variant)
                path = write_json(impl.staged(stagings[step.id], rel), documents[step.variant], indent=1)
                produced[step.id] = ({rel: path}, documents[step.variant]["metrics"])
            return produced

        self.execute(todo, produce)

    # -- the run ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Machine, output folder, previous manifest; drop results of steps that are no longer configured."""
        self.machine = describe_machine(probe_gpu=self.gpu_needed() or self.require_gpu)
        if self.require_gpu and not self.machine.gpu_ready:
            raise TrtqError(f"--require-gpu: the GPU steps cannot run here: {self.machine.gpu_reason}")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrtqError(f"cannot create the output folder {self.out}: {exc.strerror}") from exc
        if not os.access(self.out, os.W_OK):
            raise TrtqError(f"the output folder {self.out} is not writable")
        shutil.rmtree(self.out / STAGING, ignore_errors=True)  # left by a killed run
        self.manifest = Manifest.load(self.out, self.warn)
        stale = [step_id for step_id in self.manifest.steps if step_id not in self.by_id]
        removed = []
        with self.guard.deferred():
            for step_id in stale:
                removed += self.manifest.forget(step_id)
            (self.out / SUMMARY_NAME).unlink(missing_ok=True)  # it describes the previous run; rewritten at the end
            self.manifest.doc.update(self._header("running"))
            self.manifest.save()
        if removed:
            self.echo(f"removed {len(removed)} file(s) of steps no longer in the config")
        if self.gpu_needed() and not self.machine.gpu_ready:
            self.echo(f"build, bench and report cannot run here: {self.machine.gpu_reason}")

    def _header(self, status: str) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "status": status,
            "config": {"path": self._rel(self.config.source), "sha256": self.config.sha256},
            "started": self.manifest.doc.get("started") if status != "running" else _now(),
            "versions": self.machine.versions,
            "gpu_steps": {"available": self.machine.gpu_ready, "reason": self.machine.gpu_reason,
                          "probed": self.machine.probed},
            "steps_selected": list(self.kinds),
            "force": self.force,
        }

    def run(self) -> RunResult:
        self.start()
        status = "error"
        try:
            for model_config in self.config.models:
                model_steps = [s for s in self.steps if s.model is model_config]
                evaluated = False
                for step in model_steps:
                    if step.kind == "evaluate":  # the plan lists a model's evaluations together: one pass
                        if not evaluated:
                            self.run_evaluations([s for s in model_steps if s.kind == "evaluate"])
                            evaluated = True
                        continue
                    parts = self.decide(step)
                    if parts is not None:
                        self.execute([(step, parts)], lambda stagings, s=step: {s.id: self.produce(s, stagings[s.id])})
            status = "complete"
        except Interrupted:
            status = "interrupted"
            raise
        finally:
            shutil.rmtree(self.out / STAGING, ignore_errors=True)
            self.finish(status)
        return self.result()

    def variants_summary(self) -> list[dict[str, Any]]:
        rows = []
        for m in self.config.models:
            for v in m.variants:
                base = f"{m.name}/{v.name}"
                evaluation = self.manifest.entry(f"{base}/evaluate")
                bench = self.manifest.entry(f"{base}/bench")
                metrics = evaluation.get("result") if evaluation else None
                latency = bench.get("result") if bench else None
                rows.append({"model": m.name, "variant": v.name, "precision": v.precision,
                             "calibrator": v.calibrator, "evaluation": metrics, "bench": latency,
                             "gates": check_gates(m.gates, metrics, latency)})
        return rows

    def finish(self, status: str) -> None:
        """The manifest's summary sections (inputs, per-variant figures, gates), saved with ``status``."""
        doc = self.manifest.doc
        doc.update(self._header(status))
        doc["finished"] = _now()
        doc["actions"] = self.actions
        variants = self.variants_summary()
        models = {}
        for m in self.config.models:
            entries = {}
            for row in (r for r in variants if r["model"] == m.name):
                v = next(x for x in m.variants if x.name == row["variant"])
                options = {"precision": v.precision, "calibrator": v.calibrator, "percentile": v.percentile,
                           "keep_precision": impl.keep_rules(m, v)[0], "shapes": m.shapes, "profile": m.profile,
                           "build": _engine_options(m)}
                prefix = f"{m.name}/{v.name}/"
                entries[v.name] = {
                    "precision": v.precision, "calibrator": v.calibrator, "options": options,
                    "options_sha256": fingerprint(options),
                    "files": sorted(f for f, rec in self.manifest.files.items() if str(rec.get("step", "")
                                                                                       ).startswith(prefix)),
                    "accuracy": row["evaluation"], "latency": row["bench"], "gates": row["gates"],
                }
            models[m.name] = {"path": self._rel(m.path), "sha256": self._sha(m.path),
                              "data": self.data_fingerprint(m.data), "eval_data": self.data_fingerprint(m.eval),
                              "gates": m.gates, "variants": entries}
        doc["models"] = models
        failed_gates = [f"{r['model']}/{r['variant']}: {g['gate']}" for r in variants for g in r["gates"]
                        if g["status"] == FAIL]
        failed_steps = [k for k, a in self.actions.items() if a["action"] == "failed"]
        doc["gates"] = {"passed": not failed_gates, "failed": failed_gates}
        doc["exit_code"] = (EXIT_STEP_FAILED if failed_steps else EXIT_GATE_FAILED if failed_gates else EXIT_OK) \
            if status == "complete" else None
        self._summary = self._run_summary(variants)
        if status == "complete":
            self._markdown = render(self._summary, markdown=True)
            with self.guard.deferred():
                atomic_write(self.out / SUMMARY_NAME, self._markdown)
                self.manifest.files[SUMMARY_NAME] = {**file_record(self.out / SUMMARY_NAME), "step": None}
        with self.guard.deferred():
            self.manifest.save()

    def _run_summary(self, variants: list[dict[str, Any]]) -> dict[str, Any]:
        counts = {action: 0 for action in ("ran", "reused", "kept", "skipped", "failed")}
        skipped: dict[str, list[str]] = {}
        failed = {}
        for step_id, action in self.actions.items():
            counts[action["action"]] = counts.get(action["action"], 0) + 1
            if action["action"] == "skipped":
                skipped.setdefault(action.get("reason", ""), []).append(step_id)
            elif action["action"] == "failed":
                failed[step_id] = action.get("reason", "")
        return {"config": self.config.display, "output": str(self.out), "variants": variants, "counts": counts,
                "skipped": skipped, "failed": failed,
                "files": len(self.manifest.files) + (SUMMARY_NAME not in self.manifest.files)}

    def result(self) -> RunResult:
        doc = self.manifest.doc
        return RunResult(doc["exit_code"], doc, render(self._summary, markdown=False), self._markdown, self.out)
