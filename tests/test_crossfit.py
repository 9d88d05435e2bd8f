"""Cross-fitting (trtq.accuracy.crossfit) and the noise-aware keep search (trtq.accuracy.search), on the real
MNIST zoo model and real MNIST digits.

What must hold: each fold is judged by ranges computed exactly as a calibration that never saw the fold would
compute them (bit for bit), every judged sample belongs to one fold, and a keep step whose gain is inside the
noise is not taken as meeting the target.
"""

from __future__ import annotations

import numpy as np
import pytest

from trtq.accuracy.crossfit import FoldPlan, cross_fit
from trtq.accuracy.judge import Measure
from trtq.accuracy.proxies import Proxy
from trtq.accuracy.quantize import quantize
from trtq.accuracy.search import Verifier, cost_ordered, search_keep
from trtq.calibrate import collect_statistics, collect_statistics_groups, compute_ranges
from trtq.model import load_model


@pytest.fixture(scope="module")
def mnist(mnist_model_path, mnist_digits):
    images, labels = mnist_digits
    return load_model(mnist_model_path), images, labels


def _feeds(images: np.ndarray) -> list[dict[str, np.ndarray]]:
    return [{"Input3": image[None]} for image in images]


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("method", ["minmax", "entropy2", "percentile", "mse"])
def test_each_folds_ranges_equal_a_calibration_without_that_fold_bit_for_bit(mnist, method, grouped):
    """Also with every fold's statistics gathered in one capture (``collect_statistics_groups``, what quantize
    does): each fold's are still those of its batches alone."""
    model, images, _ = mnist
    feeds = _feeds(images[:60])

    def gather(source):
        return collect_statistics(model, source)

    def gather_groups(batches, groups):
        return collect_statistics_groups(model, batches, groups)

    fit = cross_fit(feeds, gather, folds=4, max_samples=40, gather_groups=gather_groups if grouped else None)
    assert fit.samples == 40 and fit.folds == 4 and fit.rest is not None and fit.rest.samples == 20
    assert fit.fold_of == [i % 4 for i in range(40)]
    for fold in range(4):
        unseen = [f for i, f in enumerate(feeds) if i >= 40 or i % 4 != fold]
        alone = compute_ranges(collect_statistics(model, unseen), method)
        crossed = compute_ranges(fit.training_stats(fold), method)
        assert crossed.keys() == alone.keys()
        assert all(np.float64(crossed[k]).tobytes() == np.float64(alone[k]).tobytes() for k in alone), fold
    total = compute_ranges(fit.total(), method)
    everything = compute_ranges(collect_statistics(model, feeds), method)
    assert all(np.float64(total[k]).tobytes() == np.float64(everything[k]).tobytes() for k in everything)


def test_a_feed_is_judged_by_its_own_folds_model(mnist):
    model, images, _ = mnist
    fit = cross_fit(_feeds(images[:8]), lambda s: collect_statistics(model, s), folds=2, max_samples=8)
    plan = FoldPlan.of(fit)
    seen = []
    run = plan.dispatch([lambda feed: seen.append(0) or [], lambda feed: seen.append(1) or []])
    for feed in fit.held:
        run(feed)
    assert seen == fit.fold_of == [0, 1, 0, 1, 0, 1, 0, 1]


def test_quantize_without_eval_data_judges_every_held_sample_across_folds(mnist):
    model, images, labels = mnist
    result = quantize(model, _feeds(images[:120]), max_eval_samples=80)
    assert result.ok and result.eval_samples == 80 and "cross-fitted in 4 folds" in result.eval_description
    assert result.stats.samples == 120  # the written model's ranges: every sample
    final = result.steps[-1]
    assert final.drop is not None and final.drop.samples == 80 and final.drop.low <= final.drop.points
    assert result.measure.kind == "proxies" and result.measure.proxies["Plus214_Output_0"].kind == "top1"


def test_a_keep_step_inside_the_noise_is_not_accepted(mnist):
    """A target so tight that all-INT8 misses it on the point estimate: a kept layer whose effect on 20 samples
    is inside the noise (no sample changes its top-1 class) does not count as meeting it, though its point
    estimate would. Here the only gain possible is in the output noise, which keeping layers lowers beyond the
    noise; so the search records the steps and says honestly which met."""
    model, images, _ = mnist
    feeds = _feeds(images[:20])
    stats = collect_statistics(model, _feeds(images[100:300]))
    amax = compute_ranges(stats, "entropy2")  # entropy2 clips MNIST's input: a noisy all-INT8
    plan = FoldPlan.single(stats)
    measure = Measure(proxies={"Plus214_Output_0": Proxy("top1", axis=1)})
    verifier = Verifier(model, feeds, measure, None, plan)
    baseline = verifier.compare({"int8": verifier.qdq_runner([amax])})
    nodes = verifier.use_switchable([amax], "entropy2")
    steps, size = search_keep(verifier, nodes, lambda sqnr, drop: drop is not None and drop <= 0.0, len(nodes) - 1,
                              baseline.judgement, "int8")
    assert steps and size is not None
    # the step taken beats all-INT8 beyond the noise: here on the output noise (the top-1 drop is 0 on both)
    assert baseline.judgement.drop("int8").points == 0.0
    first_met = steps[[s.meets_target for s in steps].index(True)]
    assert first_met.noise_db > baseline.judgement.noise_db("int8")

    # the same search where the candidate's gain is only on the drop's point estimate, inside its noise: not met
    def meets(sqnr, drop):
        return drop is not None and drop <= 0.0

    judgement = baseline.judgement
    judgement.noise["int8"] = np.zeros_like(judgement.noise["int8"])  # all-INT8 as quiet as can be
    steps, size = search_keep(verifier, nodes[:1], meets, 1, judgement, "int8")
    assert steps[0].drop.points == 0.0 and not steps[0].meets_target and size is None


def test_the_keep_order_is_harm_per_share_of_the_macs():
    macs = {"fc2": 400, "qkv": 300, "proj": 100, "add": 0, "pool": 0}
    ranking = [("fc2", 0.30), ("add", 0.20), ("qkv", 0.25), ("proj", 0.15), ("pool", 0.001)]
    # add: no MACs, charged half an average layer's share (0.1); pool barely matters, so it goes last though free
    assert cost_ordered(ranking, macs) == ["add", "proj", "qkv", "fc2", "pool"]
    assert cost_ordered(ranking, {}) == ["fc2", "add", "qkv", "proj", "pool"]  # MACs unknown: the ranking's order


class _TableVerifier:
    """A verifier whose configuration ``keep k`` loses the samples ``lost(k)`` names (0/1 losses on 48 samples):
    the search's decisions, without a model."""

    def __init__(self, lost):
        self.lost, self.sizes = lost, []

    def keep_runner(self, kept):
        return len(kept)

    def compare(self, candidates, stop=None):
        from types import SimpleNamespace

        from trtq.accuracy.uncertainty import estimate

        size = candidates["step"]
        self.sizes.append(size)
        losses = np.zeros(48)
        losses[:self.lost(size)] = 1.0
        noise = np.full(48, 1.0 / (1 + size))
        judgement = SimpleNamespace(losses={"step": losses}, noise={"step": noise}, unit_weights=None,
                                    drop=lambda key: estimate(losses), noise_db=lambda key: 0.0)
        return SimpleNamespace(judgement=judgement, outcomes={"step": SimpleNamespace(sqnr_db=30.0)})


def _all_int8(lost: int):
    from types import SimpleNamespace

    from trtq.accuracy.uncertainty import estimate

    losses = np.zeros(48)
    losses[:lost] = 1.0
    return SimpleNamespace(losses={"int8": losses}, noise={"int8": np.ones(48)}, unit_weights=None,
                           drop=lambda key: estimate(losses))


@pytest.mark.parametrize("middle_lost, expected", [(1, 120), (10, 100)])
def test_the_bisection_stops_where_its_bracket_cannot_be_told_apart(middle_lost, expected):
    # keep < 64: 10 of 48 samples lost (as all INT8); 64..99: middle_lost; 100 and more: none
    layers = [f"layer{i}" for i in range(126)]
    verifier = _TableVerifier(lambda k: 10 if k < 64 else middle_lost if k < 100 else 0)
    notes = []
    steps, size = search_keep(verifier, layers, lambda sqnr, drop: drop is not None and drop <= 1.0, 120,
                              _all_int8(10), "int8", note=notes.append, max_drop=1.0)
    assert size == expected
    if middle_lost == 1:  # one sample of 48 between keep 64 and keep 120: no prefix between them can be resolved
        assert verifier.sizes == [1, 2, 4, 8, 16, 32, 64, 120]
        assert "keep 64 and keep 120 in float do not differ beyond the noise on 48 samples" in notes[-1]
    else:  # 10 samples: beyond the noise, bisected down to the first prefix that loses none
        assert verifier.sizes[-1] in (99, 100) and len(verifier.sizes) > 8


def test_the_gallop_starts_where_the_rankings_noise_shares_say_the_target_could_first_be_met():
    from trtq.accuracy.search import first_probe

    # all INT8 loses 20 points, the target is 1: 95 % of the ranked noise must go; the first 3 layers hold 96 %
    assert first_probe([0.5, 0.3, 0.16, 0.02, 0.02], 20.0, 1.0, 5) == 3
    assert first_probe([0.5, 0.3, 0.16, 0.02, 0.02], 1.5, 1.0, 5) == 1  # a third of the noise: the top layer holds it
    assert first_probe([0.2] * 5, 20.0, 1.0, 3) == 3  # capped at the most a model may keep
    assert first_probe(None, 20.0, 1.0, 5) == first_probe([0.5, 0.5], None, 1.0, 5) == 1
    assert first_probe([0.0, 0.0], 20.0, 1.0, 5) == first_probe([0.5, 0.5], 0.5, 1.0, 5) == 1
    # the search from there finds what a gallop from 1 finds: keep 3 loses nothing, keep 2 loses all-INT8's 10
    layers = [f"layer{i}" for i in range(5)]
    for shares, first in (([0.5, 0.3, 0.16, 0.02, 0.02], 3), (None, 1)):
        verifier = _TableVerifier(lambda k: 10 if k < 3 else 0)
        _steps, size = search_keep(verifier, layers, lambda sqnr, drop: drop is not None and drop <= 1.0, 4,
                                   _all_int8(10), "int8", max_drop=1.0, shares=shares)
        assert size == 3 and verifier.sizes[0] == first
