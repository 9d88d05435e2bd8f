"""What makes the quantize loop's passes cheaper must not change what they measure, on the real MNIST zoo model and
real MNIST digits.

- :mod:`trtq.accuracy.scale_feed`: one Q/DQ session fed each candidate's activation scales computes bit for bit
  what that candidate's exported model computes, and serves only ranges that quantize the same tensors;
- :mod:`trtq.accuracy.feeds`: judged samples merged into larger feeds stay in their fold, keep their labels, and are
  not merged where the model does not take a larger batch;
- the verifier's passes judge every sample the same whichever way it runs them.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from trtq.accuracy.crossfit import FoldPlan, cross_fit
from trtq.accuracy.feeds import merge_feeds
from trtq.accuracy.judge import Measure
from trtq.accuracy.proxies import Proxy
from trtq.accuracy.scale_feed import scales_as_inputs
from trtq.accuracy.search import Verifier
from trtq.calibrate import collect_statistics, compute_ranges
from trtq.export import export_qdq
from trtq.export.compare import fake_quant_session
from trtq.model import Model, load_model


def _feeds(images: np.ndarray) -> list[dict[str, np.ndarray]]:
    return [{"Input3": image[None]} for image in images]


@pytest.fixture(scope="module")
def digits(mnist_digits):
    images, labels = mnist_digits
    return images[:48], labels[:48]


@pytest.fixture(scope="module")
def statistics(dynamic_mnist, digits):
    return collect_statistics(dynamic_mnist, _feeds(digits[0][:24]), keep_histograms=True)


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse", "entropy2"])
def test_a_scale_fed_session_computes_each_candidates_exported_model_bit_for_bit(dynamic_mnist, digits, statistics,
                                                                                  method):
    first = compute_ranges(statistics, "minmax")
    scaled = scales_as_inputs(export_qdq(dynamic_mnist, first, check=False))
    assert scaled is not None and set(scaled.scale_inputs) == set(export_qdq(dynamic_mnist, first).activation_tensors)
    assert not any(i.name in {n for n, _ in scaled.scale_inputs.values()} for i in scaled.proto.graph.initializer)
    session = fake_quant_session(scaled.proto)
    amax = compute_ranges(statistics, method)
    assert scaled.fits(amax)
    exported = fake_quant_session(export_qdq(dynamic_mnist, amax).model)
    feed = {"Input3": digits[0][24:40]}
    fed = session.run(None, {**feed, **scaled.feed(amax)})[0]
    written = exported.run(None, feed)[0]
    assert fed.tobytes() == written.tobytes()
    if method != "minmax":  # another candidate's scales do change the outputs: the feed is not ignored
        assert not np.array_equal(fed, session.run(None, {**feed, **scaled.feed(first)})[0])


def test_a_scale_fed_model_refuses_ranges_that_quantize_other_tensors(dynamic_mnist, statistics):
    amax = compute_ranges(statistics, "minmax")
    scaled = scales_as_inputs(export_qdq(dynamic_mnist, amax, check=False))
    tensor = next(iter(scaled.scale_inputs))
    assert not scaled.fits({**amax, tensor: 0.0}) and not scaled.fits({k: v for k, v in amax.items() if k != tensor})
    fewer = scales_as_inputs(export_qdq(dynamic_mnist, {**amax, tensor: 0.0}, check=False))
    assert tensor in fewer.unquantized and not fewer.fits(amax)  # a usable range there would add a Q/DQ pair
    assert fewer.fits({**amax, tensor: float("nan")})


def _fitted(model: Model, images: np.ndarray, folds: int = 4):
    feeds = _feeds(images)
    fit = cross_fit(feeds, lambda s: collect_statistics(model, s, keep_histograms=True), folds=folds,
                    max_samples=len(images))
    return fit, FoldPlan.of(fit)


def _verifier(model: Model, fit, plan: FoldPlan, labels=None) -> Verifier:
    measure = Measure(proxies={model.output_names[0]: Proxy("top1", axis=-1)})
    return Verifier(model, fit.held, measure, labels, plan)


def test_one_scale_fed_session_judges_every_fold_as_its_own_exported_model(dynamic_mnist, digits, monkeypatch):
    fit, plan = _fitted(dynamic_mnist, digits[0])
    fold_ranges = {method: plan.ranges(lambda s, m=method: compute_ranges(s, m)) for method in ("minmax", "mse")}
    shared = _verifier(dynamic_mnist, fit, plan)
    one = shared.compare({m: shared.qdq_runner(r) for m, r in fold_ranges.items()})
    assert len(shared._scaled_sessions) == 1  # both methods, all four folds: one session
    monkeypatch.setattr("trtq.accuracy.search.scale_fed", lambda export, fold_ranges: None)
    apart = _verifier(dynamic_mnist, fit, plan)
    each = apart.compare({m: apart.qdq_runner(r) for m, r in fold_ranges.items()})
    for method in fold_ranges:
        assert np.array_equal(one.judgement.noise[method][0], each.judgement.noise[method][0])
        assert [x.tolist() for x in one.judgement.losses[method]] == [x.tolist() for x in each.judgement.losses[method]]
    assert one.outcomes["mse"].sqnr_db == each.outcomes["mse"].sqnr_db


def test_merged_feeds_stay_in_their_fold_and_keep_their_labels(dynamic_mnist, digits):
    images, labels = digits
    fit, plan = _fitted(dynamic_mnist, images)
    merged = merge_feeds(fit.held, lambda feed: plan.fold_of_feed[id(feed)])
    assert merged is not None and [feed["Input3"].shape[0] for feed in merged.feeds] == [8] * 4 + [4] * 4  # 12 a fold
    assert merged.folds[:4] == [0, 1, 2, 3]  # dealt in turn: a pass that stops early has seen every fold
    stacked = np.concatenate([feed["Input3"] for feed in merged.feeds])
    assert np.array_equal(stacked, images[merged.order]) and sorted(merged.order) == list(range(48))
    for fold, parts in zip(merged.folds, merged.parts, strict=True):
        assert {fit.fold_of[i] for i in parts} == {fold}
    verifier = _verifier(dynamic_mnist, fit, plan, labels)
    assert verifier.merge_feeds()
    assert np.array_equal(verifier.labels, labels[merged.order]) and len(verifier.batches) == 8
    assert all(verifier.plan.fold_of_feed[id(f)] == fold for f, fold in zip(verifier.batches, merged.folds,
                                                                                strict=True))


def test_feeds_are_not_merged_where_the_model_takes_no_larger_batch(mnist_model_path, dynamic_mnist, digits):
    images = digits[0][:16]
    static = load_model(mnist_model_path)  # the zoo model fixes its batch to 1
    fit, plan = _fitted(static, images)
    verifier = _verifier(static, fit, plan)
    assert not verifier.merge_feeds() and verifier.batches == fit.held
    proto = onnx.ModelProto()
    proto.CopyFrom(dynamic_mnist.proto)  # a batch left free in the input, but a Reshape fixed to one sample
    for index, tensor in enumerate(proto.graph.initializer):
        if tensor.name == "Pooling160_Output_0_reshape0_shape":
            proto.graph.initializer[index].CopyFrom(numpy_helper.from_array(np.array([1, 256], np.int64),
                                                                            tensor.name))
    fixed = Model(proto)
    fit, plan = _fitted(fixed, images)
    verifier = _verifier(fixed, fit, plan)
    assert not verifier.merge_feeds() and verifier.batches == fit.held


def test_the_ranking_takes_the_samples_its_time_budget_allows_within_its_floor_and_cap():
    from trtq.accuracy.quantize import MIN_RANK_SAMPLES, RANK_SAMPLES, RANK_SECONDS, rank_sample_count

    # a ViT-S on 2 cores: 126 layers, 0.16 s a judged sample, 0.05 s a layer's session: 3 fit in the minute
    chosen = rank_sample_count(126, 0.16, 48, 0.05)
    assert chosen == 3 and chosen * 127 * 0.85 * 0.16 + 126 * 0.05 <= RANK_SECONDS
    assert rank_sample_count(126, 5.0, 48) == MIN_RANK_SAMPLES  # too slow for any: the floor
    assert rank_sample_count(10, 0.001, 300) == RANK_SAMPLES and rank_sample_count(10, 0.001, 5) == 5
    assert rank_sample_count(10, None, 300) == RANK_SAMPLES


@pytest.mark.parametrize("held_out", [False, True])
def test_merged_feeds_keep_every_label_with_its_sample_end_to_end(dynamic_mnist, mnist_digits, tmp_path, held_out,
                                                                   monkeypatch):
    """trtq quantize on a model that takes any batch (its judged digits merged 8 a feed, each fold's apart): FP32's
    accuracy it reports is FP32's accuracy on those very digits, label by label, cross-fitted or on --eval-data."""
    import json

    from click.testing import CliRunner

    from trtq.cli import cli

    images, labels = mnist_digits
    model = tmp_path / "dynamic.onnx"
    onnx.save(dynamic_mnist.proto, model)
    cal, val = slice(420, 492), slice(640, 712)  # FP32 misreads digits 445 and 449; 646, 659 and 691
    np.save(tmp_path / "cal.npy", images[cal])
    np.save(tmp_path / "cal_labels.npy", labels[cal])
    np.save(tmp_path / "val.npy", images[val])
    np.save(tmp_path / "val_labels.npy", labels[val])
    data = ["--data", str(tmp_path / "cal.npy")]
    data += (["--eval-data", str(tmp_path / "val.npy"), "--labels", str(tmp_path / "val_labels.npy")] if held_out
             else ["--labels", str(tmp_path / "cal_labels.npy")])
    merged = []
    real = Verifier.merge_feeds
    monkeypatch.setattr(Verifier, "merge_feeds", lambda self: merged.append(real(self)) or merged[-1])
    result = CliRunner().invoke(cli, ["quantize", str(model), *data, "-o", str(tmp_path / "q.onnx"), "-q"])
    assert result.exit_code == 0, result.output
    assert merged == [True]
    scores = json.loads((tmp_path / "q.report.json").read_text())["task_scores"]
    judged, truth = (images[val], labels[val]) if held_out else (images[cal], labels[cal])
    fp32 = fake_quant_session(dynamic_mnist.proto).run(None, {"Input3": judged})[0].argmax(axis=1)
    assert scores["samples"] == 72 and scores["fp32"] == pytest.approx(float(np.mean(fp32 == truth)))
    assert 0.9 < scores["fp32"] < 1.0  # some digits wrong: a shuffled label would show
