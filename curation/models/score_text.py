"""OCR text score: how much of the frame a real text detector finds covered by text.

The detector is PP-OCRv4's (PaddleOCR's DB text detector, Liao et al. 2020 "Real-time Scene
Text Detection with Differentiable Binarization") run through ``rapidocr-onnxruntime``, which
ships the ONNX weights inside its wheel: real weights, offline, on CPU.

Per frame: the union of the detected text quadrilaterals, rasterised, as a fraction of the
frame area (0-1). Detection alone fires on text-like texture (fur, eyes, foliage: up to 0.16
of a photograph measured on scikit-image's photos), so the ``VERIFY`` largest boxes go
through the PP-OCRv4 recogniser and the frame counts only when one of them reads as text
(confidence >= ``MIN_REC_SCORE``, >= 3 letters or digits), each first turned the right way
up by the engine's text-direction classifier (text filmed upside down or sideways). Recognising every line of a
slide would cost ~7 s per frame on 2 cores; three boxes cost ~0.1 s. Per clip: ``ocr_text_area``, the median over ``ocr_frames`` evenly spaced
carried frames, and ``ocr_text_area_max``. A frame of subtitles scores ~0.02-0.05, a slide
of bullet points 0.1-0.4, natural footage ~0 (tests/curation/test_model_scoring.py). It sits
beside the heuristic ``text_area`` (curation/analysis/tag_negatives.py); decide combines them
(``decide.tag_signals``).
"""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np
import pyarrow as pa

from curation.models.score_clip import ModelsConfig
from curation.core.frames import FRAMES, FRAMES_SHAPE, FRAMES_T, unpack_frames
from curation.core.stage import Stage

OCR_COLUMNS = ("ocr_text_area", "ocr_text_area_max")
VERIFY = 3  # largest detected boxes read by the recogniser per frame
MIN_REC_SCORE = 0.8


def text_area(boxes: list | None, shape: tuple[int, int]) -> float:
    """Fraction of an (H, W) frame covered by the union of quadrilaterals [[x, y] x 4]."""
    if not boxes:
        return 0.0
    mask = np.zeros(shape, np.uint8)
    for b in boxes:  # one call per box: fillPoly with several polygons cancels their overlaps
        cv2.fillPoly(mask, [np.asarray(b, np.float32).round().astype(np.int32)], 1)
    return float(mask.mean())


class ScoreText(Stage):
    """``ocr_text_area`` / ``ocr_text_area_max`` from the PP-OCRv4 text detector."""

    reads = ("clip_id", FRAMES, FRAMES_SHAPE, FRAMES_T)
    writes = OCR_COLUMNS
    stateful: ClassVar[bool] = True

    def __init__(self, cfg: ModelsConfig):
        self.cfg = cfg
        self.batch_size = cfg.clips_per_batch
        self.engine = None

    def setup(self) -> None:
        if self.engine is not None:
            return
        from rapidocr_onnxruntime import RapidOCR

        # limit_type "min": the detector scales the short side to ocr_side (its default, 736,
        # upscales our 336 px frames and quadruples the cost for no gain on frame-sized text).
        self.engine = RapidOCR(det_limit_side_len=self.cfg.ocr_side, det_limit_type="min")

    def frame_area(self, rgb: np.ndarray) -> float:
        """Text-area fraction of one (H, W, 3) uint8 RGB frame."""
        # The engine's own det, cls and rec steps (rapidocr_onnxruntime.main.RapidOCR.__call__
        # runs them in this order), so that only the largest boxes pay for recognition.
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        boxes, _ = self.engine.text_det(bgr)
        if boxes is None or len(boxes) == 0:
            return 0.0
        sizes = [cv2.contourArea(np.asarray(b, np.float32)) for b in boxes]
        largest = [boxes[k] for k in np.argsort(sizes)[::-1][:VERIFY]]
        # A few words are enough to tell text from texture: long lines are cut to 6:1. The
        # engine's crops lie along each box's long side, so text turned 90 or 180 degrees
        # (slides and phone screens filmed sideways) reaches the recogniser upside down half
        # the time, reads as nothing, and the frame scored 0: its angle classifier (PP-OCR's
        # text direction model, RapidOCR's own `cls` step) turns those crops the right way up.
        crops = [c[:, : 6 * c.shape[0]] for c in self.engine.get_crop_img_list(bgr, largest)]
        crops, _, _ = self.engine.text_cls(crops)
        read, _ = self.engine.text_rec(crops)
        if not any(score >= MIN_REC_SCORE and sum(c.isalnum() for c in text) >= 3 for text, score in read):
            return 0.0
        return text_area([np.asarray(b).tolist() for b in boxes], rgb.shape[:2])

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        med: list = [None] * n
        top: list = [None] * n
        for i in range(n):
            got = unpack_frames(batch, i)
            if got is None:
                continue
            arr, _ = got
            idx = np.unique(np.linspace(0, len(arr) - 1, min(self.cfg.ocr_frames, len(arr))).round().astype(int))
            areas = [self.frame_area(arr[j]) for j in idx]
            med[i], top[i] = float(np.median(areas)), float(max(areas))
        for name, vals in zip(OCR_COLUMNS, (med, top)):
            arr = pa.array(vals, pa.float64())
            batch = batch.set_column(batch.column_names.index(name), name, arr) if name in batch.column_names else batch.append_column(name, arr)
        return batch
