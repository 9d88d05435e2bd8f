"""Run a checked config: plan the steps (:mod:`trtq.pipeline.plan`), decide for each whether to run,
reuse, keep or skip it (:mod:`trtq.pipeline.reuse`), run what is needed through the staging
transaction (:mod:`trtq.pipeline.staging`), and keep ``manifest.json`` true after every step.

A step's fingerprint has two parts: ``inputs`` (content hashes of the model, the data, the earlier
steps' outputs, and the step's options) and ``env`` (the tool versions and, for GPU steps, the GPU);
each step class (:mod:`trtq.pipeline.steps`) says what goes into both. A step is reused when both are
unchanged and its files still hash as recorded; ``--force`` runs it anyway. A step that cannot run
here (no GPU, or not selected with ``--steps``) keeps an earlier result whose inputs are unchanged --
a GPU job's engines stay listed when the CPU job runs again -- and otherwise its stale result is
removed. The runner itself knows no step kind: it is one loop over the plan.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtq.errors import TrtqError
from trtq.fileio import atomic_write
from trtq.pipeline.environment import Machine, describe_machine
from trtq.pipeline.fingerprints import Fingerprints, engine_options
from trtq.pipeline.manifest import MANIFEST_FORMAT, MANIFEST_NAME, Manifest, file_record, fingerprint
from trtq.pipeline.plan import STEP_KINDS, parse_steps, plan
from trtq.pipeline.reuse import KEPT, REUSED, SKIPPED, Policy, decide
from trtq.pipeline.schema import ModelConfig, PipelineConfig
from trtq.pipeline.signals import Interrupted, SignalGuard
from trtq.pipeline.staging import STAGING, Staging, clear_staging
from trtq.pipeline.steps import Step, keep_rules
from trtq.pipeline.summary import FAIL, check_gates, render

__all__ = ["EXIT_BAD_INPUT", "EXIT_GATE_FAILED", "EXIT_OK", "EXIT_STEP_FAILED", "STAGING", "STEP_KINDS",
           "SUMMARY_NAME", "Pipeline", "RunResult", "parse_steps", "plan"]

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_GATE_FAILED = 3
EXIT_STEP_FAILED = 4
SUMMARY_NAME = "summary.md"

Echo = Callable[[str], None]


@dataclass
class RunResult:
    exit_code: int
    manifest: dict[str, Any]
    text: str
    markdown: str
    output: Path


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def check_artifacts(config: PipelineConfig, step_summary: str | os.PathLike | None = None) -> None:
    """No artifact may replace a file the run reads (a model or data file that lies where an artifact goes), and
    ``step_summary`` (``--step-summary``) may be none of them either: one line, exit 2, before any work. Every
    :class:`Pipeline` checks this when it is made."""
    from trtq.fileio import check_outputs, refuse_inputs
    from trtq.pipeline.layout import Layout, input_files

    outputs: dict[str, str | None] = {f"the artifact {name}": str(config.output / name)
                                      for name in (MANIFEST_NAME, SUMMARY_NAME)}
    read: dict = {"the config": config.source}
    for model in config.models:
        outputs.update({f"the artifact {rel}": str(config.output / rel) for rel in Layout(model).files()})
        read.update(input_files(model))
    refuse_inputs(outputs, read)  # their folders are made by the run: only a collision with an input is checked here
    if step_summary:
        check_outputs({"--step-summary": step_summary}, {**read, **outputs})


class Pipeline:
    """One ``trtq run``: see the module docstring. It is the :class:`~trtq.pipeline.steps.RunContext`
    its steps read from."""

    def __init__(self, config: PipelineConfig, *, steps: tuple[str, ...] = STEP_KINDS, force: bool = False,
                 require_gpu: bool = False, guard: SignalGuard | None = None, echo: Echo | None = None,
                 warn: Echo | None = None):
        check_artifacts(config)
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
        self.fingerprints = Fingerprints(config.root)
        self._models: dict[str, Any] = dict(config.loaded)  # loaded by the config check, or on first use
        self._summary: dict[str, Any] = {}  # what finish() renders: summary.md and the text of RunResult
        self._markdown = ""
        self._ray = None  # the Ray session of ``ray = "ADDRESS"``, opened by the first step that asks for it

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

    # -- what the steps read ---------------------------------------------------------------------------------

    def model(self, config: ModelConfig):
        if config.name not in self._models:
            from trtq.model import load_model

            self._models[config.name] = load_model(config.path)
        return self._models[config.name]

    def ray(self) -> str | None:
        """The config's ``ray`` address, connected on first use and kept until the run ends (one start of a
        ``local`` instance for every step that uses it; none when every such step is reused)."""
        if self.config.ray is not None and self._ray is None:
            from trtq.distributed.backend import ray_session

            session = ray_session(self.config.ray)
            session.__enter__()
            self._ray = session
        return self.config.ray

    def _close_ray(self) -> None:
        session, self._ray = self._ray, None
        if session is not None:
            session.__exit__(None, None, None)

    def step_warn(self, step: Step) -> Echo:
        return lambda text: self.warn(f"{step.id}: {text}")

    def step_echo(self, step: Step) -> Echo:
        return lambda text: self.echo(f"    {text}")

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
        policy = Policy(self.wanted, self.kinds, self.force, self.machine.gpu_ready, self.machine.gpu_reason)
        decision = decide(step.id, step.needs, step.gpu, self.manifest, policy,
                          {need: self.by_id[need].kind for need in step.needs},
                          lambda: {"inputs": step.inputs(self), "env": step.env(self)})
        if decision.action == SKIPPED:
            self._drop(step, SKIPPED, decision.reason)
        if decision.action in (SKIPPED, KEPT, REUSED):
            self._act(step, decision.action, decision.reason)
            return None
        return decision.parts

    def fail(self, step: Step, message: str) -> None:
        self._drop(step, "failed", message)
        self._act(step, "failed", message)

    def execute(self, todo: list[tuple[Step, dict[str, Any]]],
                produce: Callable[[dict[str, Path]], dict[str, tuple[dict, dict]]]) -> None:
        """Run steps that are produced together (one step, or a model's evaluations): ``produce`` gets each
        step's staging folder and returns each step's ``(files, result)``. A :class:`TrtqError` fails them
        all; anything else (an interruption) leaves their staging folders to :meth:`run`'s cleanup."""
        staging = Staging(self.out, self.manifest, self.guard)
        stagings = {}
        for step, _ in todo:
            stagings[step.id] = staging.begin(step.id)
            self.echo(f"[running] {step.id}")
        started = time.perf_counter()
        try:
            produced = produce(stagings)
        except TrtqError as exc:
            for step, _ in todo:
                staging.discard(stagings[step.id])
                self.fail(step, str(exc))
            return
        seconds = (time.perf_counter() - started) / len(todo)
        for step, parts in todo:
            files, result = produced[step.id]
            entry = {"kind": step.kind, "model": step.model.name,
                     "variant": step.variant.name if step.variant else None,
                     **parts, "result": result, "seconds": round(seconds, 3), "finished": _now()}
            problem = staging.commit(step.id, entry, files, stagings[step.id])
            if problem is None:
                self._act(step, "ran", seconds=seconds)
            else:
                self.fail(step, problem)

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
        clear_staging(self.out)  # left by a killed run
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
            "config": {"path": self.fingerprints.rel(self.config.source), "sha256": self.config.sha256},
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
                self.run_model([s for s in self.steps if s.model is model_config])
            status = "complete"
        except Interrupted:
            status = "interrupted"
            raise
        finally:
            self._close_ray()
            clear_staging(self.out)
            self.finish(status)
        return self.result()

    def run_model(self, model_steps: list[Step]) -> None:
        """The model's steps in plan order; the steps of a ``together`` kind run as one group at the first."""
        grouped: set[type[Step]] = set()
        for step in model_steps:
            kind = type(step)
            if kind.together:
                if kind in grouped:
                    continue
                grouped.add(kind)
                group = [s for s in model_steps if type(s) is kind]
            else:
                group = [step]
            todo = [(s, parts) for s in group if (parts := self.decide(s)) is not None]
            if todo:
                self.execute(todo, lambda stagings, k=kind, t=todo: k.produce_together(self, [s for s, _ in t],
                                                                                       stagings))

    def variants_summary(self) -> list[dict[str, Any]]:
        rows = []
        for m in self.config.models:
            for v in m.variants:
                base = f"{m.name}/{v.name}"
                evaluation = self.manifest.entry(f"{base}/evaluate")
                bench = self.manifest.entry(f"{base}/bench")
                quantized = self.manifest.entry(f"{base}/quantize") if v.quantize else None
                metrics = evaluation.get("result") if evaluation else None
                latency = bench.get("result") if bench else None
                quantize = quantized.get("result") if quantized else None
                rows.append({"model": m.name, "variant": v.name, "precision": v.precision,
                             "calibrator": v.calibrator, "evaluation": metrics, "bench": latency,
                             "gates": check_gates(m.gates, metrics, latency, quantize)})
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
                           "keep_precision": keep_rules(m, v)[0], "shapes": m.shapes, "profile": m.profile,
                           "build": engine_options(m)}
                prefix = f"{m.name}/{v.name}/"
                entries[v.name] = {
                    "precision": v.precision, "calibrator": v.calibrator, "options": options,
                    "options_sha256": fingerprint(options),
                    "files": sorted(f for f, rec in self.manifest.files.items() if str(rec.get("step", "")
                                                                                       ).startswith(prefix)),
                    "accuracy": row["evaluation"], "latency": row["bench"], "gates": row["gates"],
                }
            prints = self.fingerprints
            models[m.name] = {"path": prints.rel(m.path), "sha256": prints.sha(m.path),
                              "data": prints.data_fingerprint(m.data), "eval_data": prints.data_fingerprint(m.eval),
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
