"""Task proxies (trtq.accuracy.proxies) on hand-made outputs, the per-sample judge, and the uncertainty rules.

Each proxy is checked on outputs whose right answer is known by construction: a CTC sequence whose raw scores
change but whose decoded string does not (and one where one character changes), a sigmoid map whose thresholded
region moves by a known number of pixels, class scores along each axis.
"""

from __future__ import annotations

import numpy as np
import pytest

from trtq.accuracy.judge import Measure
from trtq.accuracy.proxies import (
    Proxy,
    greedy_decode,
    infer_proxy,
    is_builtin_metric,
    parse_builtin_metrics,
    parse_proxy,
)
from trtq.accuracy.targets import TaskMetric
from trtq.accuracy.uncertainty import better_beyond_noise, estimate, resolve
from trtq.errors import TrtqError

RNG = np.random.default_rng(7)


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _ctc_scores(sequences: list[list[int]], steps: int = 12, classes: int = 8, blank: int = 0) -> np.ndarray:
    """[B, T, C] softmax scores whose argmax path spells each sequence with blanks between (CTC)."""
    logits = RNG.normal(0, 0.3, size=(len(sequences), steps, classes))
    for b, sequence in enumerate(sequences):
        path = [blank] * steps
        for i, symbol in enumerate(sequence):
            path[1 + 2 * i] = symbol
        logits[b, np.arange(steps), path] += 6.0
    return _softmax(logits).astype(np.float32)


# -- CTC -----------------------------------------------------------------------------------------------------------


def test_greedy_decode_collapses_repeats_and_drops_blanks():
    decoded = greedy_decode(np.array([[0, 3, 3, 0, 3, 5, 5, 0], [0, 0, 0, 0, 0, 0, 0, 0]]), blank=0)
    assert decoded[0].tolist() == [3, 3, 5] and decoded[1].tolist() == []


def test_ctc_is_inferred_and_judges_the_decoded_string_not_the_scores():
    reference = _ctc_scores([[1, 2, 3], [4, 5], [6, 6, 7]])
    proxy = infer_proxy(reference, producer="Softmax", producer_axis=-1, samples=3)
    assert proxy.kind == "ctc" and proxy.blank == 0 and proxy.axis == 2
    # noisy scores that keep every argmax: the strings agree though the SQNR is poor
    noisy = reference + RNG.normal(0, 0.05, size=reference.shape).astype(np.float32)
    kept = np.argmax(noisy, axis=2) == np.argmax(reference, axis=2)
    noisy = np.where(kept[..., None], noisy, reference)
    assert proxy.agreement(reference, noisy).tolist() == [1.0, 1.0, 1.0]
    # one character of the second sample changed: only that sample disagrees
    changed = reference.copy()
    changed[1, 3] = 0.0
    changed[1, 3, 7] = 1.0
    assert proxy.agreement(reference, changed).tolist() == [1.0, 0.0, 1.0]


def test_ctc_logits_without_a_softmax_are_recognised_by_their_dominant_blank():
    logits = np.log(_ctc_scores([[1, 2], [3]], classes=9, blank=8)) * 3.0  # not log-probabilities any more
    proxy = infer_proxy(logits, producer="MatMul", samples=2)
    assert proxy.kind == "ctc" and proxy.blank == 8


def test_a_time_major_sequence_is_judged_per_sample():
    batch_major = _ctc_scores([[1, 2], [3], [4, 4]])
    time_major = np.ascontiguousarray(np.moveaxis(batch_major, 0, 1))  # [T, B, C], as a PyTorch CRNN outputs
    proxy = infer_proxy(time_major, samples=3)
    assert proxy.kind == "ctc" and proxy.batch_axis == 1
    changed = time_major.copy()
    changed[1, 2] = 0.0
    changed[1, 2, 7] = 1.0
    assert proxy.agreement(time_major, changed).tolist() == [1.0, 1.0, 0.0]


# -- probability maps ----------------------------------------------------------------------------------------------


def test_a_sigmoid_map_gets_iou_of_the_thresholded_region():
    reference = np.zeros((2, 1, 8, 8), np.float32)
    reference[0, 0, 2:6, 2:6] = 0.9  # 16 positive pixels
    proxy = infer_proxy(reference, producer="Sigmoid", samples=2)
    assert proxy.kind == "iou" and proxy.threshold == 0.5
    moved = np.zeros_like(reference)
    moved[0, 0, 2:6, 3:7] = 0.8  # shifted one column: 12 shared of 20
    agreement = proxy.agreement(reference, moved)
    assert agreement[0] == pytest.approx(12 / 20)
    assert agreement[1] == 1.0  # two empty maps agree
    assert parse_proxy("iou:0.75").agreement(reference, moved)[0] == pytest.approx(12 / 20)
    assert parse_proxy("iou:0.85").agreement(reference, reference * 0.9)[0] == 0.0  # 0.81 is below 0.85


# -- class scores, other outputs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, axis", [((6, 5), 1), ((6, 4, 5), 2), ((6, 5, 3, 3), 1)])
def test_softmax_class_scores_along_any_axis_get_top1_per_position(shape, axis):
    scores = _softmax(RNG.normal(size=shape), axis=axis).astype(np.float32)
    proxy = infer_proxy(scores, samples=shape[0])
    assert proxy.kind == "top1" and proxy.axis == axis
    flipped = scores.copy()
    index = [0] * len(shape)
    positions = int(np.prod(shape[1:]) // shape[axis])
    top = np.argmax(scores, axis=axis)
    moved = np.moveaxis(flipped, axis, -1)
    first = tuple(index[:1] + [0] * (len(shape) - 2))
    moved[first] = np.roll(moved[first], 1)  # sample 0's first position: another class on top
    changed = np.argmax(flipped, axis=axis) != top
    expected = 1.0 - changed.reshape(shape[0], -1).sum(axis=1) / positions
    assert proxy.agreement(scores, flipped) == pytest.approx(expected)
    assert expected[0] < 1.0 and np.all(expected[1:] == 1.0)


def test_logits_of_a_classifier_get_top1_and_a_detection_head_its_probabilities_thresholded():
    assert infer_proxy(RNG.normal(size=(4, 10)).astype(np.float32), producer="Gemm", samples=4).kind == "top1"
    # a YOLO head: box pixels concatenated with class probabilities ([B, 4 + 80, anchors]); a cosine of the whole
    # is blind to the scores (the box pixels dominate it): nudenet's YOLOv8n lost 10 points of box F1 all-INT8
    # at a cosine of 0.998
    boxes, scores = RNG.uniform(0, 640, size=(2, 4, 300)), RNG.uniform(0, 1, size=(2, 80, 300))
    head = np.concatenate([boxes, scores], axis=1)
    proxy = infer_proxy(head, producer="Concat", samples=2)
    assert proxy.kind == "iou" and proxy.channels == tuple(range(4, 84)) and proxy.threshold == 0.5
    moved_boxes = np.concatenate([boxes * (1 + RNG.normal(0, 0.01, size=boxes.shape)), scores], axis=1)
    assert proxy.agreement(head, moved_boxes).tolist() == [1.0, 1.0]
    flipped = head.copy()
    flipped[0, 4:] = 1.0 - flipped[0, 4:]  # sample 0's scores on the other side of 0.5
    agreement = proxy.agreement(head, flipped)
    assert agreement[0] < 0.1 and agreement[1] == 1.0
    far_boxes = np.concatenate([boxes * (1 + RNG.normal(0, 0.5, size=boxes.shape)), scores], axis=1)
    assert proxy.agreement(head, far_boxes).tolist() == [0.0, 0.0]
    # the same values not made by a Concat (one layer's output): not split, judged by cosine
    assert infer_proxy(head, producer="Conv", samples=2).kind == "cosine"


def test_an_integer_output_must_be_equal():
    assert infer_proxy(np.array([3, 1], np.int64), samples=2).kind == "equal"
    proxy = Proxy("equal")
    assert proxy.agreement(np.array([3, 1]), np.array([3, 2])).tolist() == [1.0, 0.0]


def test_builtin_metric_names_parse_and_bad_ones_are_one_line_errors():
    assert is_builtin_metric("ctc") and is_builtin_metric("iou:0.3=maps") and not is_builtin_metric("m.py:f")
    named = parse_builtin_metrics(["iou:0.3=maps", "ctc"], ["maps", "text"])
    assert named["maps"].threshold == 0.3 and named["text"].kind == "ctc"
    with pytest.raises(TrtqError, match="not an output"):
        parse_builtin_metrics(["top1=nope"], ["out"])
    with pytest.raises(TrtqError, match="unknown metric"):
        parse_proxy("f1")
    with pytest.raises(TrtqError, match="not a number"):
        parse_proxy("iou:abc")


# -- the judge and the uncertainty ---------------------------------------------------------------------------------


def test_the_judge_keeps_one_loss_per_sample_and_the_worst_output_counts():
    measure = Measure(proxies={"map": Proxy("iou", threshold=0.5), "cls": Proxy("top1", axis=1)})
    judge = measure.judge(["map", "cls"])
    maps = np.zeros((3, 1, 4, 4), np.float32)
    maps[:, 0, :2, :2] = 0.9
    classes = np.eye(3, dtype=np.float32)
    int8_maps = maps.copy()
    int8_maps[1, 0, 0, 0] = 0.1  # sample 1: 3 of 4 pixels left
    int8_classes = classes.copy()
    int8_classes[2] = [1, 0, 0]  # sample 2: another class
    judge.observe([maps, classes], {"int8": [int8_maps, int8_classes]})
    judgement = judge.result()
    assert judgement.losses["int8"] == pytest.approx([0.0, 0.25, 1.0])
    assert judgement.drop("int8").points == pytest.approx(100 * 1.25 / 3)
    assert judgement.output_drops("int8")["map"].points == pytest.approx(100 * 0.25 / 3)


def test_a_per_sample_task_metric_is_judged_per_sample():
    metric = TaskMetric("hits", lambda fp32, int8, labels: (np.argmax(int8["y"], 1) == labels).astype(float))
    judge = Measure(metric=metric).judge(["y"], labels=np.array([0, 1, 2, 0]))
    reference = np.eye(3, dtype=np.float32)[[0, 1, 2, 1]]  # FP32 right on 3 of 4
    candidate = np.eye(3, dtype=np.float32)[[0, 2, 2, 0]]  # INT8: loses sample 1, gains sample 3
    judge.observe([reference], {"int8": [candidate]})
    judgement = judge.result()
    assert judgement.losses["int8"].tolist() == [0.0, 1.0, 0.0, -1.0]
    assert judgement.drop("int8").points == 0.0 and judgement.drop("int8").samples == 4


def test_no_disagreement_on_few_samples_does_not_prove_a_small_drop():
    few, many = estimate(np.zeros(24)), estimate(np.zeros(1000))
    assert few.points == 0.0 and few.high > 5.0  # 24 samples cannot show a drop under 1 point
    assert many.high < 0.25
    verdict = resolve(few, 1.0)
    # no disagreement on n samples bounds the drop at about 2/n: about 200 samples show a 1-point target met
    assert verdict.meets and not verdict.resolved and 150 <= verdict.samples_needed <= 260
    assert resolve(estimate(np.zeros(verdict.samples_needed)), 1.0).resolved
    assert resolve(many, 1.0).resolved
    assert "cannot decide" in verdict.describe(1.0, few)


def test_a_difference_of_one_sample_in_24_is_inside_the_noise_and_of_twenty_is_not():
    incumbent = np.zeros(24)
    incumbent[:3] = 1  # 3 samples wrong
    one_better = incumbent.copy()
    one_better[0] = 0
    assert not better_beyond_noise(one_better, incumbent)
    incumbent = np.zeros(400)
    incumbent[:40] = 1
    much_better = incumbent.copy()
    much_better[:20] = 0
    assert better_beyond_noise(much_better, incumbent)
    assert not better_beyond_noise(incumbent, much_better)


def test_a_continuous_measure_is_compared_on_its_own_scale():
    base = RNG.uniform(1e-3, 2e-3, size=64)
    assert better_beyond_noise(base * 0.5, base)  # every sample's noise halved: a real gain, however small
    assert not better_beyond_noise(base + RNG.normal(0, 1e-4, size=64), base + RNG.normal(0, 1e-4, size=64))


def test_continuous_losses_get_an_interval_on_their_own_scale():
    losses = RNG.uniform(0.0, 0.04, size=200)  # IoU losses of a few hundredths
    interval = estimate(losses)
    t_half = 100 * 1.96 * losses.std(ddof=1) / np.sqrt(len(losses))
    assert interval.points == pytest.approx(100 * losses.mean())
    assert t_half <= interval.half_width <= 1.2 * t_half  # not swamped by pseudo-losses of 1


def test_a_pooled_or_normalised_vector_is_an_embedding_not_class_scores():
    pooled = RNG.normal(size=(4, 384)).astype(np.float32)
    assert infer_proxy(pooled, producer="Div", samples=4).kind == "cosine"  # mean pooling: ReduceSum / count
    unit = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    assert infer_proxy(unit, producer="Gemm", samples=4).kind == "cosine"
    assert infer_proxy(pooled, producer="MatMul", samples=4).kind == "top1"


def test_producers_look_through_ops_that_only_move_values():
    from onnx import helper

    from trtq.accuracy.proxies import producers

    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "bias"], ["logits"]),  # a bias: the classifier head is the MatMul
        helper.make_node("Flatten", ["logits"], ["flat"]),
        helper.make_node("Identity", ["flat"], ["scores"]),
        helper.make_node("Softmax", ["mm"], ["p"], axis=1),
        helper.make_node("Transpose", ["p"], ["pt"], perm=[1, 0]),
        helper.make_node("ReduceSum", ["x"], ["s"]),
        helper.make_node("Add", ["s", "mm"], ["residual"]),
    ]
    found = producers(nodes, ["scores", "p", "pt", "residual"])
    assert found["scores"] == ("MatMul", None)
    assert found["p"] == ("Softmax", 1)
    assert found["pt"] == ("Softmax", None)  # moved after the Softmax: its axis is no longer the output's
    assert found["residual"] == ("Add", None)


def test_cosine_also_sees_a_change_of_length_a_regression_output_has_nothing_else():
    proxy = Proxy("cosine", threshold=0.99)
    ages = np.array([[30.0], [42.0], [7.0]])
    assert proxy.agreement(ages, ages * [[1.05], [1.3], [1.0]]).tolist() == [1.0, 0.0, 1.0]  # 5 % ok, 30 % not
    assert proxy.agreement(np.zeros((1, 3)), np.zeros((1, 3))).tolist() == [1.0]


def test_a_detection_heads_noise_counts_its_class_scores_as_much_as_its_boxes():
    """YOLOv8n's head [B, 4 + 18, anchors]: box pixels up to 320 beside probabilities; an INT8 layer that moves only
    the class scores adds almost nothing to the whole output's noise, and must still rank as harmful."""
    from trtq.accuracy.proxies import Proxy, proxy_noise, relative_noise

    rng = np.random.default_rng(0)
    reference = np.concatenate([rng.uniform(0, 320, (2, 4, 50)), rng.uniform(0, 1, (2, 18, 50)) ** 8], axis=1)
    moved = reference.copy()
    moved[:, 4:] = np.clip(moved[:, 4:] + rng.normal(0, 0.05, (2, 18, 50)), 0, 1)  # class scores only
    head = Proxy("iou", 0.5, channels=tuple(range(4, 22)))
    assert relative_noise(reference, moved).max() < 1e-4
    assert proxy_noise(head, reference, moved).min() > 100 * relative_noise(reference, moved).max()
    plain = proxy_noise(Proxy("cosine", 0.99), reference, moved)
    np.testing.assert_array_equal(plain, relative_noise(reference, moved))
