"""Heuristic negative tags: the cheap CPU tier of CogVideoX's six negative labels.

Every tag is a score in [0, 1]; the decision step (curation/decide.py) compares it with the
tag's threshold (default 0.5). The raw measures behind the scores are kept in the manifest
too (text_area, sharpness, border_frac, bits_per_pixel), so thresholds can be re-tuned
without re-scoring. Per-frame measures run on the tag samples (RGB at the tags short side);
temporal ones come from the motion pass.

Scores (x+ means clip(x, 0, 1)):
* text_dominated  = (text_area / 0.25)+ : 12.5% of the frame covered by text lines -> 0.5.
* lecture         = still * (flat_frac + few_colours) / 2, with still = (1 - motion / 0.02)+,
                    few_colours = ((64 - colours) / 56)+ where colours is the number of
                    4-bit-per-channel colours covering 95% of pixels.
* low_quality     = max(blur, low_res, borders, starved): blur = (1 - sharpness / sharp_ref)+
                    with sharpness measured inside any black bars,
                    low_res = ((L - short) / (L / 2))+ for L = low_res_short_side, borders =
                    (border_frac / 0.5)+, starved = (1 - bpp / min_bpp)+ * moving (a still
                    slide needs few bits; a moving clip with few bits is blocky).
* noisy_screen    = max(noise_residual / 8, flicker / 6)+: change optical flow cannot explain
                    (grey levels), and frame-to-frame brightness jitter.
* incoherent_motion = ((1 - motion_coherence) / 0.75)+, 0 when coherence is null: 0.5 at
                    coherence 0.625, between rigid motion (>= 0.79 measured, pans up to 2 short
                    sides/s and 90p sources included) and teleporting blobs (0.41-0.46).
* over_edited     = rate / (rate + R) for the source's cut rate per minute, R the configured
                    rate that scores 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from curation.config import TagsConfig
from curation.schema import neg_column


@dataclass(frozen=True)
class FrameMeasures:
    text_area: float
    sharpness: float
    flat_frac: float
    colours: int
    border_frac: float


def text_area(gray: np.ndarray) -> float:
    """Fraction of the frame inside text-line boxes: strong gradients closed horizontally into
    wide, short, densely filled components (the classic morphological text detector)."""
    h, w = gray.shape
    grad = cv2.morphologyEx(gray, cv2.MORPH_GRADIENT, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    _, bw = cv2.threshold(grad, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    kw = max(3, w // 40)
    closed = cv2.morphologyEx(bw, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (kw, 1)))
    _, _, stats, _ = cv2.connectedComponentsWithStats(closed, connectivity=8)
    bw_, bh, px = (stats[1:, i].astype(np.int64) for i in (cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT, cv2.CC_STAT_AREA))
    line = (bh >= 4) & (bh <= h * 0.15) & (bw_ >= 2.5 * bh) & (bw_ >= w * 0.05) & (px >= 0.45 * bw_ * bh)
    return min(1.0, float((bw_ * bh)[line].sum()) / float(h * w))


def border_bars(gray: np.ndarray, dark: int = 24) -> tuple[int, int, int, int]:
    """(top, bottom, left, right): widths in px of uniform dark bars along the edges."""
    g = gray.astype(np.float32)
    sq = g * g

    def dark_lines(axis: int) -> np.ndarray:  # mean < dark and std < 8, via cv2.reduce
        m = cv2.reduce(g, axis, cv2.REDUCE_AVG).ravel()
        var = cv2.reduce(sq, axis, cv2.REDUCE_AVG).ravel() - m * m
        return (m < dark) & (var < 64)

    rows, cols = dark_lines(1), dark_lines(0)

    def run(mask: np.ndarray) -> int:
        idx = np.flatnonzero(~mask)
        return len(mask) if idx.size == 0 else int(idx[0])

    return run(rows), run(rows[::-1]), run(cols), run(cols[::-1])


def _bar_area(shape: tuple[int, int], bars: tuple[int, int, int, int]) -> float:
    h, w = shape
    top, bottom, left, right = bars
    return 1.0 - max(0, h - top - bottom) * max(0, w - left - right) / float(h * w)


def border_frac(gray: np.ndarray, dark: int = 24) -> float:
    """Fraction of the frame in uniform dark bars along the edges (letterbox/pillarbox)."""
    return _bar_area(gray.shape, border_bars(gray, dark))


def _inside_bars(gray: np.ndarray, bars: tuple[int, int, int, int], margin: int = 2) -> np.ndarray:
    """The picture inside the bars, `margin` px further in where there is a bar (the row
    where a bar meets the picture is a blend of both and an edge sharper than any content)."""
    h, w = gray.shape
    top, bottom, left, right = (b + margin if b else 0 for b in bars)
    inner = gray[top : h - bottom, left : w - right]
    return inner if inner.size else gray


def measure_frame(rgb: np.ndarray) -> FrameMeasures:
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    bars = border_bars(gray)
    # Sharpness inside the bars: a bar's edge would make any blurry letterboxed clip "sharp".
    # |Laplacian| saturates at 255 (convertScaleAbs): only its 99th percentile is kept, and
    # a histogram of 256 bins finds that several times faster than a sort.
    lap = cv2.convertScaleAbs(cv2.Laplacian(_inside_bars(gray, bars), cv2.CV_16S, ksize=3))
    hist = cv2.calcHist([lap], [0], None, [256], [0, 256]).ravel()
    sharpness = float(np.searchsorted(np.cumsum(hist), 0.99 * lap.size))
    gx = cv2.convertScaleAbs(cv2.Sobel(gray, cv2.CV_16S, 1, 0, ksize=3))
    gy = cv2.convertScaleAbs(cv2.Sobel(gray, cv2.CV_16S, 0, 1, ksize=3))
    flat_frac = 1.0 - cv2.countNonZero(cv2.compare(cv2.add(gx, gy), 16, cv2.CMP_GE)) / float(gray.size)
    # Colours on every other pixel: the count covering 95% of the frame barely moves.
    q = (rgb[::2, ::2] >> 4).astype(np.int32)
    counts = np.bincount((q[..., 0] << 8 | q[..., 1] << 4 | q[..., 2]).ravel(), minlength=4096)
    counts = np.sort(counts)[::-1]
    colours = int(np.searchsorted(np.cumsum(counts), 0.95 * counts.sum()) + 1)
    return FrameMeasures(
        text_area=text_area(gray),
        sharpness=sharpness,
        flat_frac=flat_frac,
        colours=colours,
        border_frac=_bar_area(gray.shape, bars),
    )


def flicker(gray_frames: Sequence[np.ndarray]) -> float:
    """Median |second difference| of mean brightness: fast jitter, not slow lighting changes."""
    if len(gray_frames) < 3:
        return 0.0
    m = np.array([float(g.mean()) for g in gray_frames])
    return float(np.median(np.abs(m[1:-1] - (m[:-2] + m[2:]) / 2)))


def _c(x: float) -> float:
    return float(np.clip(x, 0.0, 1.0))


def tag_scores(
    frames: Sequence[FrameMeasures],
    *,
    cfg: TagsConfig,
    motion_score: float | None,
    motion_coherence: float | None,
    noise_residual: float | None,
    flicker_level: float,
    width: int,
    height: int,
    bits_per_pixel: float | None,
    cut_rate_per_min: float,
) -> dict[str, float]:
    """The six tag scores plus the raw measures, as manifest columns."""
    text = float(np.median([f.text_area for f in frames])) if frames else 0.0
    sharp = float(np.median([f.sharpness for f in frames])) if frames else 0.0
    flat = float(np.median([f.flat_frac for f in frames])) if frames else 0.0
    colours = float(np.median([f.colours for f in frames])) if frames else 0.0
    borders = float(np.median([f.border_frac for f in frames])) if frames else 0.0
    motion = motion_score or 0.0
    still = _c(1 - motion / 0.02)
    few_colours = _c((64 - colours) / 56)
    short = min(width, height)
    low_res = _c((cfg.low_res_short_side - short) / (cfg.low_res_short_side / 2))
    starved = 0.0
    if bits_per_pixel is not None:
        starved = _c(1 - bits_per_pixel / cfg.min_bits_per_pixel) * _c(motion / 0.02)
    blur = _c(1 - sharp / cfg.sharp_ref) if frames else 0.0
    r = cut_rate_per_min
    return {
        "text_area": text,
        "sharpness": sharp,
        "border_frac": borders,
        neg_column("text_dominated"): _c(text / 0.25),
        neg_column("lecture"): still * (flat + few_colours) / 2,
        neg_column("low_quality"): max(blur, low_res, _c(borders / 0.5), starved),
        neg_column("noisy_screen"): _c(max((noise_residual or 0.0) / 8.0, flicker_level / 6.0)),
        neg_column("incoherent_motion"): 0.0 if motion_coherence is None else _c((1 - motion_coherence) / 0.75),
        neg_column("over_edited"): r / (r + cfg.over_edited_cuts_per_min) if r > 0 else 0.0,
    }
