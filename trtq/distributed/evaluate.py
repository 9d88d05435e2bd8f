"""``trtq evaluate`` on Ray: the evaluation data cut into shards of whole batches (as for calibration), one Ray
task per shard running the FP32 and the Q/DQ model on its batches.

Each task returns, per batch, the running sums of :func:`trtq.export.compare.batch_sums` (a few numbers per
output, never the outputs), the top-k predictions with labels, and the |x| statistics for the figures. The
driver adds the batches' sums in batch order: that repeats the single-machine pass's arithmetic exactly, so
every per-output figure and the accuracy are the same numbers as the local run's. (An image folder with
files that do not decode regroups the batches around them, per shard: then the sums agree to rounding only.)

What travels: the FP32 and Q/DQ models' bytes (once, through Ray's object store) and each shard's data-source
object; the data is read by the workers, from storage every node mounts at the same path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from trtq.accuracy.evaluate import CapturingRunner, Evaluation, Predictions, finish_comparison
from trtq.accuracy.labels import Labels, check_labels
from trtq.accuracy.targets import logits_index
from trtq.data.base import BatchSource
from trtq.distributed.backend import cluster_cpus, count_done, gather, ray_session
from trtq.distributed.calibrate import SHARDS_PER_CPU, model_payload, split_source, worker_model, worker_source
from trtq.export import export_qdq
from trtq.export.compare import BatchSums, batch_sums, fake_quant_session, fold_sums, session_runner
from trtq.model import Model
from trtq.stats import StatsCollector

KEY = "int8"


@dataclass
class ShardOutcome:
    """What one task sends back: per-batch sums, predictions (labels only), statistics (figures only)."""

    sums: list[BatchSums]
    predictions: Predictions | None
    stats: StatsCollector | None
    skipped_files: set[str]
    samples: int


def evaluate_shard(models: tuple, source: BatchSource, names: list[str], index: int, predict: bool,
                   tensors: list[str] | None) -> ShardOutcome:
    """One Ray task: FP32 vs the Q/DQ model on one shard (runs on a worker)."""
    reference_payload, int8_payload = models
    source = worker_source(source)
    proto = worker_model(reference_payload).proto
    capture = CapturingRunner(proto, names, tensors) if tensors is not None else None
    reference = capture if capture is not None else session_runner(fake_quant_session(proto), names)
    candidate = session_runner(fake_quant_session(worker_model(int8_payload).proto), names)
    if capture is not None:
        candidate = capture.sliced(candidate)
    predictions = Predictions(index, names[index], [KEY]) if predict else None
    sums = list(batch_sums(reference, {KEY: candidate}, names, source,
                           observe=predictions.observe if predictions is not None else None))
    samples = sum(part[KEY][0].samples for part in sums)
    return ShardOutcome(sums, predictions, capture.stats if capture is not None else None,
                        set(getattr(source, "skipped_files", ())), samples)


def evaluate_int8_ray(model: Model, amax: Mapping[str, float], source: BatchSource, address: str = "local", *,
                      exclude: Iterable[str] = (), labels: Labels | None = None, logits: str | None = None,
                      collect_stats: bool = False, ranges_source: str = "the ranges", shards: int | None = None,
                      progress: Callable[[int, int], None] | None = None) -> Evaluation:
    """:func:`trtq.accuracy.evaluate.evaluate_int8` with the batches as Ray tasks (the same numbers).
    ``progress(done, total)`` after each task."""
    export = export_qdq(model, amax, exclude=exclude, ranges_source=ranges_source)
    names = list(model.output_names)
    index = logits_index(names, logits)
    if labels is not None:
        check_labels(labels, source)  # before the long part
    with ray_session(address) as ray:
        parts = split_source(source, shards or SHARDS_PER_CPU * cluster_cpus(ray))
        models = ray.put((model_payload(model), model_payload(Model(export.model))))
        task = ray.remote(num_cpus=1, max_retries=2)(evaluate_shard)
        tensors = list(export.activation_tensors) if collect_stats else None
        refs = [task.remote(models, part, names, index, labels is not None, tensors) for part in parts]
        done = count_done(progress, len(refs))
        outcomes: list[ShardOutcome] = gather(ray, refs, done)
    rows = fold_sums((part for outcome in outcomes for part in outcome.sums), names, [KEY])  # in batch order
    predictions = None
    if labels is not None:
        predictions = Predictions(index, names[index], [KEY])
        for outcome in outcomes:
            predictions.merge(outcome.predictions)
        if hasattr(source, "skipped_files"):  # the labels are lined up over the files the workers decoded
            source.skipped_files = set().union(*(outcome.skipped_files for outcome in outcomes))
    comparison = finish_comparison(rows, names, index, predictions, labels, source)
    stats = None
    if collect_stats:
        stats = StatsCollector(tensors)
        for outcome in outcomes:
            for tensor in outcome.stats:  # Ray hands numpy arrays out read-only
                tensor.hist = tensor.hist.copy()
            stats.merge(outcome.stats)
    return Evaluation(comparison, export, dict(amax), stats)
