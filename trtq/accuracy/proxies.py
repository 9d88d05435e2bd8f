"""Each output judged by what it means: the built-in task proxies of ``trtq quantize`` and their inference.

Why: SQNR of raw outputs predicts neither a CTC decoder's string nor a thresholded map. A text detector
whose thresholded map matched FP32's at IoU 0.976 all-INT8 measured 18.7 dB; a recogniser that read
the same strings measured 12.7 dB. A proxy compares what the application will do with the output.

Every proxy gives each sample an *agreement* with FP32 in [0, 1] (1: the application sees no change);
the loss of a sample is ``1 - agreement`` and the drop is 100 x the mean loss, in points, with the
interval of :mod:`.uncertainty`.

=============  ===================================================  ======================================
name           output                                               agreement of a sample
=============  ===================================================  ======================================
``top1``       class scores along an axis: ``[B, C]``,              share of positions whose argmax class
               ``[B, T, C]``, ``[B, C, H, W]`` (softmax or logits)   is FP32's
``ctc``        a sequence ``[B, T, C]`` with a dominant blank        1 when the greedy-decoded sequences
               class (CTC)                                          are equal, else 0
``iou:T``      a probability map (values within [0, 1], e.g.        IoU of the positives (> T; default 0.5);
               after a Sigmoid)                                     two empty maps agree
``cosine:C``   anything else (boxes, embeddings, regression)        1 when the sample's cosine similarity
                                                                    to FP32 is at least C (default 0.99)
                                                                    and its relative error at most what
                                                                    that cosine allows (about 14 %)
``equal``      integer or boolean outputs (indices, counts)         1 when equal
=============  ===================================================  ======================================

Inference (:func:`infer_proxy`) looks at the FP32 outputs of the evaluation data and the op that
produces the output, and says why it chose what it chose; ``--metric NAME[=OUTPUT]`` overrides it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from trtq.errors import TrtqError

DEFAULT_IOU_THRESHOLD = 0.5
DEFAULT_COSINE = 0.99
BLANK_SHARE = 0.3  # a class that is the argmax of at least this share of the positions, at index 0 or C-1: a blank
SUM_TOLERANCE = 1e-3  # rows of a softmax sum to 1 within this
PROXY_NAMES = ("top1", "ctc", "iou", "cosine", "equal")
# ops that make class scores: a classifier's last layer (a bias Add after them is looked through)
CLASSIFIER_OPS = frozenset({"Gemm", "MatMul", "Conv", "Softmax", "LogSoftmax", "Sigmoid"})
# ops that only move or copy values: looked through to find the op that computes an output
PASS_THROUGH_OPS = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Cast",
                              "Concat", "Expand", "Slice"})


@dataclass(frozen=True)
class Proxy:
    """One output's proxy: ``kind`` of :data:`PROXY_NAMES`, its parameter, and why it was chosen."""

    kind: str
    threshold: float | None = None  # iou: the positive threshold; cosine: the agreement threshold
    axis: int = -1  # top1 / ctc: the class axis (of the output with the batch on axis 0)
    blank: int | None = None  # ctc: the blank class
    reason: str = ""
    batch_axis: int = 0  # where the output holds the samples ([T, B, C] sequences of a PyTorch CRNN: 1)
    channels: tuple[int, ...] = ()  # iou of a concatenated head: the probability channels (axis 1); the rest cosine

    @property
    def name(self) -> str:
        if self.kind == "iou" and self.channels:
            return f"iou:{self.threshold:g} of channels {_span(self.channels)} + cosine:{DEFAULT_COSINE:g} of the rest"
        if self.kind in ("iou", "cosine"):
            return f"{self.kind}:{self.threshold:g}"
        return self.kind

    def describe(self) -> str:
        threshold = f"{self.threshold:g}" if self.threshold is not None else "?"
        meaning = {
            "top1": f"top-1 agreement per position (classes on axis {self.axis})",
            "ctc": "agreement of the greedy-decoded sequences",
            "iou": f"IoU of the thresholded map (> {threshold})" + (
                f" of channels {_span(self.channels)}, the other channels within cosine {DEFAULT_COSINE:g}"
                if self.channels else ""),
            "cosine": f"share of samples with cosine >= {threshold}",
            "equal": "share of samples whose output is equal",
        }[self.kind]
        return meaning + (f" ({self.reason})" if self.reason else "")

    def document(self) -> dict:
        return {"proxy": self.kind, "name": self.name, "threshold": self.threshold, "class_axis": self.axis,
                "blank": self.blank, "reason": self.reason, "meaning": self.describe()}

    def agreement(self, reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
        """Per sample (axis 0), how far ``candidate`` agrees with ``reference`` for this proxy, in [0, 1]."""
        ref, out = np.asarray(reference), np.asarray(candidate)
        if ref.shape != out.shape:
            raise TrtqError(f"output shapes differ: FP32 {list(ref.shape)}, INT8 {list(out.shape)}")
        if self.batch_axis and ref.ndim > self.batch_axis:
            ref, out = np.moveaxis(ref, self.batch_axis, 0), np.moveaxis(out, self.batch_axis, 0)
        if ref.ndim == 0:
            ref, out = ref.reshape(1, 1), out.reshape(1, 1)
        if ref.shape[0] == 0:
            return np.zeros(0)
        return _AGREEMENTS[self.kind](self, ref, out)


def _top1(proxy: Proxy, ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    if ref.ndim < 2:
        return (ref == out).astype(np.float64)
    same = np.argmax(ref, axis=proxy.axis) == np.argmax(out, axis=proxy.axis)  # ties: the first index, as argmax
    return same.reshape(same.shape[0], -1).mean(axis=1)


def greedy_decode(classes: np.ndarray, blank: int) -> list[np.ndarray]:
    """CTC greedy decoding of argmax classes ``[B, T]``: repeats collapsed, blanks dropped."""
    keep = classes != blank
    keep[:, 1:] &= classes[:, 1:] != classes[:, :-1]
    return [row[mask] for row, mask in zip(classes, keep, strict=True)]


def _ctc(proxy: Proxy, ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    axis = proxy.axis % ref.ndim
    ref_classes = np.argmax(ref, axis=axis).reshape(ref.shape[0], -1)
    out_classes = np.argmax(out, axis=axis).reshape(ref.shape[0], -1)
    blank = proxy.blank if proxy.blank is not None else 0
    decoded_ref, decoded_out = greedy_decode(ref_classes, blank), greedy_decode(out_classes, blank)
    return np.array([float(a.shape == b.shape and bool(np.all(a == b))) for a, b in zip(decoded_ref, decoded_out,
                                                                                         strict=True)])


def _span(channels: Sequence[int]) -> str:
    return f"{channels[0]}-{channels[-1]}" if list(channels) == list(range(channels[0], channels[-1] + 1)) \
        else ",".join(map(str, channels))


def _iou(proxy: Proxy, ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    if proxy.channels:  # a concatenated head: its probabilities thresholded, the rest (box pixels) by cosine
        chosen = np.zeros(ref.shape[1], dtype=bool)
        chosen[list(proxy.channels)] = True
        maps = _iou(Proxy("iou", proxy.threshold), ref[:, chosen], out[:, chosen])
        rest = _cosine(Proxy("cosine", DEFAULT_COSINE), ref[:, ~chosen], out[:, ~chosen])
        return np.minimum(maps, rest)
    threshold = proxy.threshold if proxy.threshold is not None else DEFAULT_IOU_THRESHOLD
    positive_ref = (ref > threshold).reshape(ref.shape[0], -1)
    positive_out = (out > threshold).reshape(ref.shape[0], -1)
    inter = np.count_nonzero(positive_ref & positive_out, axis=1)
    union = np.count_nonzero(positive_ref | positive_out, axis=1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def _cosine(proxy: Proxy, ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    threshold = proxy.threshold if proxy.threshold is not None else DEFAULT_COSINE
    a = ref.reshape(ref.shape[0], -1).astype(np.float64)
    b = out.reshape(ref.shape[0], -1).astype(np.float64)
    dot, aa, bb = np.sum(a * b, axis=1), np.sum(a * a, axis=1), np.sum(b * b, axis=1)
    norm = np.sqrt(aa * bb)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(norm > 0, dot / np.where(norm > 0, norm, 1.0), 0.0)
    cosine = np.where((aa == 0) & (bb == 0), 1.0, cosine)
    # the relative error a cosine of ``threshold`` allows between vectors of equal length: it also catches a change
    # of length, which a cosine cannot see (a regression's one value per sample has a cosine of 1 whatever it is)
    error = np.sqrt(np.sum((a - b) ** 2, axis=1))
    allowed = np.sqrt(max(2.0 * (1.0 - threshold), 0.0)) * np.sqrt(aa)
    return ((cosine >= threshold) & (error <= allowed + 1e-12 * (aa == 0))).astype(np.float64)


def _equal(proxy: Proxy, ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    return np.all((ref == out).reshape(ref.shape[0], -1), axis=1).astype(np.float64)


_AGREEMENTS = {"top1": _top1, "ctc": _ctc, "iou": _iou, "cosine": _cosine, "equal": _equal}


def relative_noise(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Per sample, the error power relative to the signal power (10^(-SQNR/10) of the sample): the continuous
    measure that breaks ties between candidates whose proxies agree."""
    a = np.asarray(reference, dtype=np.float64).reshape(np.shape(reference)[0] if np.ndim(reference) else 1, -1)
    b = np.asarray(candidate, dtype=np.float64).reshape(a.shape)
    signal, error = np.sum(a * a, axis=1), np.sum((a - b) ** 2, axis=1)
    return np.where(signal > 0, error / np.where(signal > 0, signal, 1.0), np.where(error > 0, 1.0, 0.0))


def proxy_noise(proxy: Proxy, reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """:func:`relative_noise` as the proxy sees the output (samples first): a detection head's probability channels
    and its other channels each relative to their own power, then averaged. Why: the box channels hold pixel
    coordinates hundreds of times larger than the probabilities, so the whole head's noise is the boxes' alone and
    a ranking by it would not see a layer that moves the class scores (YOLOv8n: the layers kept first were not the
    ones that changed its detections)."""
    if not proxy.channels or np.ndim(reference) < 2:
        return relative_noise(reference, candidate)
    chosen = np.zeros(np.shape(reference)[1], dtype=bool)
    chosen[list(proxy.channels)] = True
    parts = [relative_noise(reference[:, chosen], candidate[:, chosen])]
    if not chosen.all():
        parts.append(relative_noise(reference[:, ~chosen], candidate[:, ~chosen]))
    return np.mean(parts, axis=0)


# --------------------------------------------------------------------------------------------------------------------
# inference
# --------------------------------------------------------------------------------------------------------------------


def _sums_to_one(values: np.ndarray, axis: int) -> bool:
    return values.shape[axis] > 1 and bool(np.allclose(values.sum(axis=axis), 1.0, atol=SUM_TOLERANCE))


def _softmax_axis(values: np.ndarray, producer: str | None, producer_axis: int | None) -> tuple[int | None, str]:
    """The class axis of a softmax / log-softmax output, and how it was recognised (None: not one)."""
    if producer in ("Softmax", "LogSoftmax") and producer_axis is not None and values.ndim >= 2:
        return producer_axis % values.ndim, f"produced by {producer}"
    finite = np.isfinite(values).all()
    if not finite or values.ndim < 2:
        return None, ""
    candidates = [values.ndim - 1, *range(1, values.ndim - 1)]  # the last axis first, then the channel axes
    if values.min() >= 0 and values.max() <= 1 + SUM_TOLERANCE:
        for axis in candidates:
            if _sums_to_one(values, axis):
                return axis, "its rows sum to 1 (softmax)"
    if values.max() <= SUM_TOLERANCE:
        exp = np.exp(values.astype(np.float64))
        for axis in candidates:
            if _sums_to_one(exp, axis):
                return axis, "its rows are log-probabilities (log-softmax)"
    return None, ""


def _blank(values: np.ndarray, axis: int) -> int | None:
    """The dominant class of a sequence's positions when it is a CTC blank (index 0 or C-1), else None."""
    classes = np.argmax(values, axis=axis).ravel()
    count = values.shape[axis]
    if classes.size == 0 or count < 3:
        return None
    tally = np.bincount(classes, minlength=count)
    top = int(np.argmax(tally))
    if top in (0, count - 1) and tally[top] >= BLANK_SHARE * classes.size:
        return top
    return None


def batch_axis_of(shape: Sequence[int], samples: int | None) -> int:
    """The axis holding the samples: 0 unless its length is not the batch's and exactly one other axis's is."""
    if samples is None or not shape or shape[0] == samples:
        return 0
    others = [axis for axis, size in enumerate(shape) if size == samples]
    return others[0] if len(others) == 1 else 0


def infer_proxy(values: np.ndarray, producer: str | None = None, producer_axis: int | None = None,
                samples: int | None = None) -> Proxy:
    """The proxy of one output from its FP32 values on one batch of ``samples`` samples and the op that produces
    it (its ``axis`` attribute for a Softmax): the rules of the module docstring's table."""
    values = np.asarray(values)
    batch = batch_axis_of(values.shape, samples)
    if batch:
        if producer_axis is not None:
            normal = producer_axis % values.ndim
            producer_axis = None if normal == batch else normal + 1 if normal < batch else normal
        values = np.moveaxis(values, batch, 0)
        inferred = infer_proxy(values, producer, producer_axis)
        return dataclasses.replace(inferred, reason=inferred.reason + f"; samples on axis {batch}", batch_axis=batch)
    if not np.issubdtype(values.dtype, np.floating):
        return Proxy("equal", reason=f"{values.dtype} output")
    shape = list(values.shape)
    dims = "[" + ", ".join(["N", *map(str, shape[1:])]) + "]"  # N: the samples (the batch fed varies)
    axis, how = _softmax_axis(values, producer, producer_axis)
    if axis is not None:
        if values.ndim == 3 and axis == 2:
            blank = _blank(values, axis)
            if blank is not None:
                return Proxy("ctc", axis=axis, blank=blank,
                             reason=f"a sequence {dims} of class scores ({how}), class {blank} dominant: "
                                    "a CTC blank")
        return Proxy("top1", axis=axis, reason=f"class scores along axis {axis} of {dims}: {how}")
    finite = values[np.isfinite(values)]
    if values.ndim >= 2 and finite.size and finite.min() >= 0 and finite.max() <= 1:
        return Proxy("iou", threshold=DEFAULT_IOU_THRESHOLD,
                     reason=f"values of {dims} within [0, 1]" + (f" after {producer}" if producer else "")
                     + ": a probability map")
    if values.ndim == 2 and shape[1] > 1:
        norms = np.linalg.norm(values.astype(np.float64), axis=1)
        if norms.size and np.allclose(norms, 1.0, atol=1e-3):
            return Proxy("cosine", threshold=DEFAULT_COSINE, reason=f"rows of {dims} of unit length: an embedding")
        if producer is None or producer in CLASSIFIER_OPS:
            return Proxy("top1", axis=1, reason=f"a [batch, classes] output {dims}"
                         + (f" made by {producer}" if producer else "") + ": class scores (logits)")
        return Proxy("cosine", threshold=DEFAULT_COSINE,
                     reason=f"a [batch, C] output {dims} made by {producer}, not a classifier's layer: an embedding")
    head = _probability_channels(values) if producer == "Concat" else ()
    if head:
        return Proxy("iou", threshold=DEFAULT_IOU_THRESHOLD, channels=head,
                     reason=f"a Concat of {dims} whose channels {_span(head)} lie within [0, 1] and the others not: "
                            "a detection head (probabilities thresholded, boxes by cosine)")
    if values.ndim == 3 and shape[2] > 2:
        blank = _blank(values, 2)
        if blank is not None:
            return Proxy("ctc", axis=2, blank=blank,
                         reason=f"a sequence {dims} whose argmax is class {blank} at most positions: CTC logits")
    return Proxy("cosine", threshold=DEFAULT_COSINE,
                 reason=f"{dims}: not class scores nor a probability map (boxes, embeddings, regression)")


def _probability_channels(values: np.ndarray) -> tuple[int, ...]:
    """The channels (axis 1) of an output whose values all lie within [0, 1] when others do not (a concatenated
    detection head: box pixels then class probabilities); () when not so split."""
    if values.ndim < 3 or values.shape[1] < 2 or not np.isfinite(values).all():
        return ()
    moved = np.moveaxis(values, 1, 0).reshape(values.shape[1], -1)
    within = (moved.min(axis=1) >= 0) & (moved.max(axis=1) <= 1)
    if within.all() or not within.any():
        return ()
    return tuple(int(c) for c in np.flatnonzero(within))


def parse_proxy(text: str) -> Proxy:
    """A built-in metric name: ``top1``, ``ctc``, ``iou[:T]``, ``cosine[:C]``, ``equal``."""
    kind, _, parameter = text.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in PROXY_NAMES:
        raise TrtqError(f"unknown metric '{text}' (built-in: top1, ctc, iou[:T], cosine[:C], equal; "
                        "or FILE.py:FUNC)")
    threshold = None
    if kind in ("iou", "cosine"):
        default = DEFAULT_IOU_THRESHOLD if kind == "iou" else DEFAULT_COSINE
        try:
            threshold = float(parameter) if parameter else default
        except ValueError:
            raise TrtqError(f"metric '{text}': '{parameter}' is not a number") from None
        if not -1.0 <= threshold <= 1.0 or not np.isfinite(threshold):
            raise TrtqError(f"metric '{text}': the threshold must lie within [-1, 1]")
    elif parameter:
        raise TrtqError(f"metric '{kind}' takes no parameter (got '{text}')")
    return Proxy(kind, threshold=threshold, reason="named by --metric")


def is_builtin_metric(spec: str) -> bool:
    """Whether a ``--metric`` value names a built-in proxy (``NAME[:P][=OUTPUT]``) rather than ``FILE.py:FUNC``."""
    head = spec.split("=", 1)[0]
    return head.split(":", 1)[0].strip().lower() in PROXY_NAMES and not head.endswith(".py")


def parse_builtin_metrics(specs: Sequence[str], outputs: Sequence[str]) -> dict[str, Proxy]:
    """``--metric NAME[=OUTPUT]`` values -> output name -> proxy. A name without ``=OUTPUT`` applies to every
    output not named otherwise; only the outputs given a proxy are judged."""
    named: dict[str, Proxy] = {}
    every: Proxy | None = None
    for spec in specs:
        head, _, output = spec.partition("=")
        proxy = parse_proxy(head)
        if output:
            if output not in outputs:
                raise TrtqError(f"--metric {spec}: '{output}' is not an output of the model "
                                f"(its outputs: {', '.join(outputs)})")
            named[output] = proxy
        elif every is not None:
            raise TrtqError(f"--metric {spec}: a second metric for every output; name its output with =OUTPUT")
        else:
            every = proxy
    if every is not None:
        named = {name: named.get(name, every) for name in outputs}
    return named


def producers(graph_nodes: Sequence, outputs: Sequence[str]) -> dict[str, tuple[str, int | None]]:
    """Output name -> (the op that computes it, its ``axis`` attribute or None), looking back through ops that only
    move or copy values (Identity, Reshape, Flatten, Squeeze, Cast, a one-input Concat, ...); a bias ``Add`` whose
    other input is a constant counts as the op before it (a MatMul + Add classifier head is a classifier head).
    A Softmax's axis is its own only when nothing moved the values after it."""
    made_by = {name: node for node in graph_nodes for name in node.output}
    found: dict[str, tuple[str, int | None]] = {}
    for output in outputs:
        name, moved = output, False
        node = made_by.get(name)
        for _ in range(16):
            if node is None:
                break
            data_inputs = [i for i in node.input if i in made_by]
            if node.op_type in PASS_THROUGH_OPS and len(data_inputs) == 1 or (
                    node.op_type == "Add" and len(data_inputs) == 1 and made_by[data_inputs[0]].op_type in
                    ("MatMul", "Gemm", "Conv")):
                moved |= node.op_type not in ("Identity", "Cast", "Add")
                node = made_by[data_inputs[0]]
                continue
            break
        if node is None:
            continue
        axis = next((int(a.i) for a in node.attribute if a.name == "axis"), None)
        if node.op_type in ("Softmax", "LogSoftmax"):
            axis = None if moved else (-1 if axis is None else axis)  # opset >= 13 default: the last axis
        found[output] = (node.op_type, axis)
    return found


def infer_proxies(reference: Mapping[str, np.ndarray], producer_ops: Mapping[str, tuple[str, int | None]],
                  samples: int | None = None, chosen: Mapping[str, Proxy] | None = None) -> dict[str, Proxy]:
    """Output name -> proxy: the ``chosen`` ones (``--metric NAME=OUTPUT``: only those outputs, their sample axis
    found as for inferred ones), else inferred for every output from its FP32 values on one batch."""
    result = {}
    for name, values in reference.items():
        if chosen and name not in chosen:
            continue
        op, axis = producer_ops.get(name, (None, None))
        inferred = infer_proxy(values, op, axis, samples)
        if chosen:
            given = chosen[name]
            axis_ = given.axis if given.kind not in ("top1", "ctc") or inferred.kind not in ("top1", "ctc") \
                else inferred.axis
            blank = inferred.blank if given.kind == "ctc" else None
            if given.kind == "ctc" and blank is None:
                blank = 0
            inferred = Proxy(given.kind, given.threshold, axis_, blank, given.reason, inferred.batch_axis)
        result[name] = inferred
    return result
