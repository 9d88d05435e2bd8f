"""The sensitivity ranking on Ray: the per-layer evaluations as Ray actor calls.

Each actor (one per worker CPU, up to the number of layers) holds the switchable model and the evaluation
batches -- its own onnxruntime session, built once and reused for every layer it evaluates -- and evaluates a
share of the layers' configurations with :meth:`SensitivityAnalysis.evaluate`. The driver merges the
outcomes (each configuration's outcome depends only on that configuration and the batches), so the ranking
and the keep set that follows are those of the local run. The keep-set search itself (one verified
evaluation per step, each depending on the last) stays on the driver.

What travels: the model's bytes, the ranges, and the evaluation batches (small and in memory already:
the sensitivity set is capped), through Ray's object store -- the data need not be on shared storage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from trtq.accuracy.evaluate import Comparison
from trtq.accuracy.holdout import take_samples
from trtq.accuracy.labels import Labels, labels_for_fed
from trtq.accuracy.sensitivity import SensitivityAnalysis
from trtq.distributed.backend import cluster_cpus, count_done, gather, ray_session
from trtq.distributed.calibrate import model_payload, worker_model
from trtq.errors import TrtqError

CHUNKS_PER_ACTOR = 2  # more, smaller tasks: finer progress, but each task repeats one reference pass


class LayerEvaluator:
    """The Ray actor: one :class:`SensitivityAnalysis` (one session) per worker, reused across its layers."""

    def __init__(self, shared: list, amax: dict[str, float], exclude: list[str],
                 labels: Labels | None, logits: str | None, ranges_source: str):
        import ray

        # [model ref, batches ref], nested: fetched here, zero-copy where the worker shares the object store
        payload, batches = ray.get(shared)
        self.analysis = SensitivityAnalysis(worker_model(payload), amax, batches, exclude=exclude, labels=labels,
                                            logits=logits, ranges_source=ranges_source)

    def evaluate(self, configurations: dict[str, list[str]], max_samples: int | None,
                 downstream: bool) -> Comparison:
        return self.analysis.evaluate(configurations, max_samples, downstream=downstream)


def merge_comparisons(parts: list[Comparison], order: Iterable[str]) -> Comparison:
    """One comparison of every configuration, from comparisons of disjoint sets of them on the same batches."""
    outcomes = {}
    for part in parts:
        outcomes.update(part.outcomes)
    first = parts[0]
    scores = None
    if any(p.metric_scores for p in parts):
        scores = {}
        for part in parts:
            scores.update(part.metric_scores or {})
    return Comparison(first.samples, {key: outcomes[key] for key in order}, first.reference_accuracy,
                      first.logits, scores)


def chunk(keys: list[str], parts: int) -> list[list[str]]:
    """``keys`` in ``parts`` contiguous groups of near-equal size (none empty)."""
    parts = max(1, min(parts, len(keys)))
    bounds = [round(k * len(keys) / parts) for k in range(parts + 1)]
    return [keys[bounds[k]:bounds[k + 1]] for k in range(parts)]


def use_ray(analysis: SensitivityAnalysis, model, address: str, *, exclude: Iterable[str] = (),
            ranges_source: str = "the ranges", actors: int | None = None,
            progress: Callable[[int, int], None] | None = None) -> Callable[[], None]:
    """Make ``analysis.rank`` evaluate its layers on Ray at ``address``; returns a function that closes the
    Ray session (call it when the analysis is done). ``progress(done, total)`` after each task."""
    if analysis._metric is not None:
        raise TrtqError("--ray does not run a task metric yet; drop --metric or --ray")
    labels = analysis._labels
    if labels is not None:  # the workers get the labels of the batches, in feed order
        fed = sum(int(next(iter(b.values())).shape[0]) for b in analysis.batches)
        labels = Labels(labels.origin, by_index=labels_for_fed(labels, analysis._source, fed))
    session = ray_session(address)
    ray = session.__enter__()
    try:
        count = max(1, min(actors or cluster_cpus(ray), len(analysis.switchable.nodes)))
        shared = [ray.put(model_payload(model)), ray.put(analysis.batches)]
        # no actor restarts: Ray warns that restarting with object-store arguments may fail; a dead worker is
        # one error line (calibration's stateless tasks, in contrast, are retried)
        actor = ray.remote(num_cpus=1)(LayerEvaluator)
        pool = [actor.remote(shared, analysis.amax, list(exclude), labels, analysis.logits, ranges_source)
                for _ in range(count)]
    except BaseException:
        session.__exit__(None, None, None)
        raise

    def evaluate(configurations: Mapping[str, Iterable[str]], max_samples: int | None = None,
                 downstream: bool = False) -> Comparison:
        configurations = {key: list(value) for key, value in configurations.items()}
        groups = chunk(list(configurations), CHUNKS_PER_ACTOR * len(pool))
        refs = [pool[i % len(pool)].evaluate.remote({k: configurations[k] for k in group}, max_samples, downstream)
                for i, group in enumerate(groups)]
        # meanwhile the driver runs the float reference once per batch: the statistics and the cached reference
        # outputs the keep-set steps reuse are then exactly those of the local run
        for feed in take_samples(analysis.batches, max_samples, max_bytes=None):
            analysis._reference_run(feed)
        done = count_done(progress, len(refs))
        comparison = merge_comparisons(gather(ray, refs, done), configurations)
        analysis.samples = comparison.samples
        return comparison

    analysis.rank_evaluator = evaluate

    def close() -> None:
        shared.clear()  # the model and batches stay in the object store until the analysis is done
        analysis.rank_evaluator = None
        for handle in pool:
            ray.kill(handle)
        session.__exit__(None, None, None)

    return close
