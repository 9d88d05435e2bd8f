"""``trtq quantize`` as a job: the judged data chosen, the loop run (here or with its heavy parts on Ray), its files
written. ``trtq quantize`` and ``trtq run``'s quantize step both call :func:`quantize_job`.

Why one place: the command and the pipeline each assembled the evaluation set, chose the Ray hooks and wrote the
files in their own copy, and the copies drifted (the pipeline's dropped the corrected float model). What differs
between them is only what they are given: the data sources, the loop's options, where the files go and whether a
Ray session is open.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtq.accuracy.holdout import DEFAULT_EVAL_SAMPLES, read_eval_set
from trtq.accuracy.labels import Labels
from trtq.accuracy.quantize import quantize
from trtq.accuracy.quantize_files import QuantizeFiles, write_quantize_files
from trtq.accuracy.quantize_result import QuantizeResult
from trtq.data import BatchSource
from trtq.model import Model

Progress = Callable[[int], None]


@dataclass
class QuantizeRequest:
    """What a quantize job is given. ``evaluation``: ``--eval-data`` (else the calibration data is cross-fitted);
    ``labels``: of the evaluation data when given, else of the calibration data; ``loop``: the loop's own options
    (:func:`trtq.accuracy.quantize.quantize`: target, calibrator, steps, exclusions, float precision, ...)."""

    model: Model
    calibration: BatchSource
    evaluation: BatchSource | None = None
    labels: Labels | None = None
    max_eval_samples: int = DEFAULT_EVAL_SAMPLES
    loop: dict[str, Any] = field(default_factory=dict)
    ray: str | None = None  # an address whose session the caller holds open: the ranking (and shards) run there
    ray_progress: Callable[[int, int], None] | None = None  # (done, total) of the ranking's Ray tasks


@dataclass
class QuantizeOutcome:
    result: QuantizeResult
    written: list[Path]


def quantize_job(request: QuantizeRequest, files: QuantizeFiles | None = None, *, trt_version: str,
                 document: Mapping[str, Any] | None = None, indent: int = 2,
                 note: Callable[[str], None] | None = None, progress: Progress | None = None) -> QuantizeOutcome:
    """Run the loop on the request and write its files (none for ``files`` None). ``progress(samples)``: the
    calibration pass's."""
    model, calibration = request.model, request.calibration
    eval_batches = eval_labels = description = None
    calibration_labels = request.labels
    if request.evaluation is not None:
        held = read_eval_set(request.evaluation, request.labels, request.max_eval_samples)
        eval_batches, eval_labels, description = held.batches, held.labels, held.description
        calibration_labels = None
    hooks = ray_hooks(model, request.ray, sharded=eval_batches is not None, progress=request.ray_progress) \
        if request.ray is not None else {}
    result = quantize(model, calibration, eval_batches=eval_batches, eval_labels=eval_labels,
                      calibration_labels=calibration_labels, max_eval_samples=request.max_eval_samples,
                      note=note, progress=progress, **hooks, **request.loop)
    if description:
        result.eval_description = description
    written = []
    if files is not None:
        written = write_quantize_files(result, files, model_name=model.name, data=calibration.description,
                                       provenance=calibration.provenance(), trt_version=trt_version,
                                       document=document, indent=indent)
    return QuantizeOutcome(result, written)


def ray_hooks(model: Model, address: str, *, sharded: bool,
              progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The loop's Ray hooks at ``address`` (a session the caller holds): the ranking's layers on actors and, with
    ``--eval-data`` (``sharded``), the calibration pass in shards (without it the hold-out split streams through
    this process)."""
    from trtq.distributed.calibrate import ray_collector
    from trtq.distributed.sensitivity import use_ray

    def rank_backend(analysis, ranges_source):
        return use_ray(analysis, model, address, ranges_source=ranges_source, progress=progress)

    return {"collect": ray_collector(address) if sharded else None, "rank_backend": rank_backend}
