"""Heuristic negative tags: the cheap CPU tier of CogVideoX's six negative labels.

Every tag is a score in [0, 1]; the decision step (curation/decisions/decide.py) compares it with the
tag's threshold (default 0.5). The raw measures behind the scores are kept in the manifest
too (text_area, sharpness, border_frac, bits_per_pixel), so thresholds can be re-tuned
without re-scoring. Per-frame measures run on the tag samples (RGB at the tags short side);
temporal ones come from the motion pass and from the cut-detection thumbnails of every frame.

Calibrated on the real-footage development set (bench/realset.py, labels in
tests/data/realset_labels.csv; `make calibrate` prints the table, bench/RESULTS.md has it), not
only on synthetic clips: real footage has compression noise, film grain, letterbox bars, motion
blur and non-rigid motion, and the first, synthetic-only calibration read all of it as defects.

Scores (x+ means clip(x, 0, 1)):
* text_dominated  = (text_area / 0.25)+ : 12.5% of the frame covered by text lines -> 0.5.
* lecture         = still * (flat_frac + few) / 2, with still = (1 - motion / 0.02)+ and
                    few = min(((64 - colours) / 56)+, ((16 - tones) / 14)+): colours is the
                    number of 4-bit-per-channel colours covering 95% of pixels, tones the
                    number of 8-bit grey levels covering 75%. Both must say "few": the colour
                    cube has only 16 cells on its grey axis, so by colours alone every
                    greyscale photograph is "a few colours" (camera, coins, moon: 3-11, as
                    few as a slide); by tones a slide is its background and text (1-2, the
                    calibration set's real slide: 2) and a grey photograph has 13-115.
* low_quality     = max(blur, low_res, borders, starved, low_fps): blur = (1 - sharpness /
                    sharp_ref)+ with sharpness measured inside any black bars,
                    low_res = ((L - short) / (L / 2))+ for L = low_res_short_side, borders =
                    (border_frac / 0.6)+ (0.5 at 30% of the frame: a 2.39:1 film in a 16:9
                    frame has 24% bars and is kept; real trailers measured 0.20-0.22),
                    starved = (1 - bpp / min_bpp)+ * moving (a still slide needs few bits; a
                    moving clip with few bits is blocky), low_fps = ((F - fps) / (F / 2))+ for
                    F = min_fps: 0.5 at 3/4 of it (a 2-3 fps source cannot teach motion).
* noisy_screen    = max(noise_residual / 16, flicker / 8)+: change optical flow cannot explain
                    (grey levels), and frame-to-frame brightness jitter. Real film grain and
                    compression noise measured <= 4.0 and flicker <= 0.7; a screen filmed off a
                    monitor 15.5 and 8.3 (the first divisors, 8 and 6, rejected heavy grain).
* incoherent_motion = max(((1 - motion_coherence) / 1.1)+, 1 - 0.5 ** transients): 0.5 at
                    coherence 0.45 (real footage 0.57-0.99, dissolves and snow 0.20-0.25; see
                    curation/analysis/score_motion.py), or on one flash/glitch frame (see FrameJumps).
* over_edited     = rate / (rate + R), rate = (jumps - 1)+ per minute of the clip, R =
                    over_edited_cuts_per_min (its name kept from the source-cut-rate days): editing inside the clip (jump cuts, cuts too
                    close together to split at). A lone jump does not count. It describes the
                    clip, not its source: a clip is one shot of an edited source and is not
                    over-edited because the source has many shots (the first version used the
                    source's cut rate and rejected every clip of a trailer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from curation.core.config_loader import check_positive
from curation.core.schema import neg_column


@dataclass(frozen=True, kw_only=True)
class TagsConfig:
    sample_fps: float = 0.5  # frames per second the per-frame tag scorers look at (>= 1 per 2 s clip)
    short_side: int = 270  # tag frames are scaled to this short side (never upscaled)
    low_res_short_side: int = 240  # low_res reaches 0.5 at 3/4 of this short side, 1 at half
    min_bits_per_pixel: float = 0.03  # a moving clip below this is starved of bits (real 25 kbit/s pan: 0.009)
    # 99th percentile |Laplacian| of a crisp frame (blur score 0). Real good footage measured
    # 180-255; real photos under a 2.5 px Gaussian blur 32, 3.5 px 25 (60 let the 2.5 px pass).
    sharp_ref: float = 70.0
    min_fps: float = 8.0  # low_quality reaches 0.5 at 3/4 of this frame rate, 1 at half (a real 2.3 fps source: 1)
    over_edited_cuts_per_min: float = 12.0  # cuts inside a clip (jump cuts) per minute at which over_edited reaches 0.5

    def __post_init__(self) -> None:
        check_positive(self, "sample_fps", "short_side", "low_res_short_side", "sharp_ref", "min_fps", "over_edited_cuts_per_min")


@dataclass(frozen=True)
class FrameMeasures:
    text_area: float
    sharpness: float
    flat_frac: float
    colours: int
    border_frac: float
    tones: int


def text_area(gray: np.ndarray) -> float:
    """Fraction of the frame inside text-line boxes: strong gradients closed horizontally into
    wide, short, densely filled components (the classic morphological text detector)."""
    h, w = gray.shape
    grad = cv2.morphologyEx(gray, cv2.MORPH_GRADIENT, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    _, bw = cv2.threshold(grad, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    kw = max(3, w // 40)
    closed = cv2.morphologyEx(bw, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (kw, 1)))
    # Grana's block-based labelling: the same components and stats as the default (Spaghetti
    # in OpenCV 5), in 0.31 ms instead of 0.71 on a 360x270 frame of ~75 components.
    _, _, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(closed, 8, cv2.CV_32S, cv2.CCL_GRANA)
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
    # Colours on every other pixel: the count covering 95% of the frame barely moves. 16
    # levels a channel (v >> 4), counted by one 3-D histogram; the samples gathered by
    # OpenCV when the sides are even (INTER_NEAREST at exactly half picks pixel 2x: numpy's
    # strided copy of 3-byte pixels cost 0.18 ms of the 0.30 the colour count took).
    h, w = rgb.shape[:2]
    half = (cv2.resize(rgb, (w // 2, h // 2), interpolation=cv2.INTER_NEAREST) if h % 2 == 0 and w % 2 == 0
            else np.ascontiguousarray(rgb[::2, ::2]))
    counts = np.sort(cv2.calcHist([half], [0, 1, 2], None, [16, 16, 16], [0, 256] * 3).ravel())[::-1]
    colours = int(np.searchsorted(np.cumsum(counts), 0.95 * counts.sum()) + 1)
    levels = np.sort(cv2.calcHist([gray[::2, ::2]], [0], None, [256], [0, 256]).ravel())[::-1]
    tones = int(np.searchsorted(np.cumsum(levels), 0.75 * levels.sum()) + 1)
    return FrameMeasures(
        text_area=text_area(gray),
        sharpness=sharpness,
        flat_frac=flat_frac,
        colours=colours,
        border_frac=_bar_area(gray.shape, bars),
        tones=tones,
    )


def flicker(means: Sequence[float]) -> float:
    """Median |second difference| of the motion samples' mean grey levels, in order: fast
    jitter, not slow lighting changes."""
    if len(means) < 3:
        return 0.0
    m = np.asarray(means, np.float64)
    return float(np.median(np.abs(m[1:-1] - (m[:-2] + m[2:]) / 2)))


# A frame "jumps" when its change from the previous frame (mean |Y/U/V delta| of the 3x3
# blurred cut thumbnails, 0-255) is at least JUMP_RATIO times the larger of the three changes
# before it and the clip's median change, and at least JUMP_MIN_LEVEL. Real footage (pans,
# handheld, walking people, animation) measured ratios <= 2.8; jump cuts in a static shot
# 3.1-6.2 at levels 1.4-2.4; flashes and glitches 20-50x. A jump whose picture comes back to
# the frame before it (within RETURN_FRAC of the jump's change) inside 3 frames is a
# transient: a flash, a glitch, a frame of another shot. Otherwise it is a jump cut only if
# the picture then settles (AFTER_FRAC): an animated character leaving a hold measured a 6x
# ratio at level 1.0, with changes of the same size after it.
JUMP_RATIO = 3.0
JUMP_MIN_LEVEL = 1.0
RETURN_FRAC = 0.5
AFTER_FRAC = 0.5  # a jump cut: the three changes after it are at most half of it
_BACK = (2, 3, 4)


class FrameJumps:
    """Feed every frame's cut thumbnail in order; `count(start, end)` finds the jumps and
    transients inside frames [start, end) (global frame indices). Holds the blurred
    thumbnails (~7 KB each at 64 px) and one float per frame of the open window, from three
    frames before it (`prune` drops the rest); changes against older frames are computed only
    where a jump is found."""

    def __init__(self) -> None:
        self._first = 0  # global index of the first frame still held
        self._thumbs: list[np.ndarray] = []  # 3x3-blurred thumbnails
        self._d1: list[float] = []  # change from the previous frame

    @staticmethod
    def _delta(a: np.ndarray, b: np.ndarray) -> float:
        """Mean |Y/U/V delta| (0-255); 0 across a change of frame size."""
        if a.shape != b.shape:
            return 0.0
        return float(cv2.norm(a, b, cv2.NORM_L1)) / a.size

    def update(self, thumb: np.ndarray, blurred: np.ndarray | None = None) -> None:
        """Take the next frame's cut thumbnail; `blurred`: its 3x3 blur when the caller has it
        (the cut detector makes the same one: curation/analysis/split_scenes.py `describe`)."""
        cur = cv2.blur(thumb, (3, 3)) if blurred is None else blurred
        self._d1.append(self._delta(cur, self._thumbs[-1]) if self._thumbs else 0.0)
        self._thumbs.append(cur)

    def prune(self, keep_from: int | None) -> None:
        """Forget frames before `keep_from` (None: all but the last few), keeping the three
        before it that a jump at `keep_from` is compared with."""
        end = self._first + len(self._d1)
        cut = (end if keep_from is None else keep_from) - 3 - self._first
        if cut > 0:
            del self._d1[:cut]
            del self._thumbs[:cut]
            self._first += cut

    def count(self, start: int, end: int) -> tuple[int, int]:
        """(jumps, transients) among frames [start, end). A jump at `start` itself is the cut
        the clip starts at and is not counted; a transient there is (a flash frame opens it)."""
        o = self._first
        if start < o:
            raise ValueError(f"FrameJumps.count: frame {start} was pruned (first held: {o})")
        lo = max(o, start - 3)  # three frames of context before start
        d1, thumbs = self._d1[lo - o : end - o], self._thumbs[lo - o : end - o]
        s, n = start - lo, len(d1)  # start's position in d1; frames held up to end
        if n - s < 2:
            return 0, 0
        median = float(np.median(d1[s + 1 :]))
        jumps = transients = 0
        i = s
        while i < n:
            base = max([median] + d1[max(0, i - 3) : i])
            if i + lo == 0 or d1[i] < max(JUMP_MIN_LEVEL, JUMP_RATIO * base):
                i += 1
                continue
            ret = next((m for m in _BACK if i + m - 1 < n and self._delta(thumbs[i + m - 1], thumbs[i - 1]) <= RETURN_FRAC * d1[i]), None)
            if ret is not None:
                transients += 1
                i += ret  # the return is part of the transient, not a jump of its own
                continue
            # A cut changes the picture once; motion that starts (a head turning, animation
            # leaving a hold) keeps changing it. Only a change that stops counts as a jump.
            after = d1[i + 1 : i + 4]
            jumps += i > s and len(after) > 0 and max(after) <= AFTER_FRAC * d1[i]
            i += 1
        return jumps, transients


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
    fps: float | None,
    duration_s: float,
    jumps: int = 0,
    transients: int = 0,
) -> dict[str, float]:
    """The six tag scores plus the raw measures, as manifest columns. `fps` is the clip's
    frame rate (frames / duration; None for an image), `jumps` and `transients` come from
    FrameJumps.count over the clip's frames."""
    text = float(np.median([f.text_area for f in frames])) if frames else 0.0
    sharp = float(np.median([f.sharpness for f in frames])) if frames else 0.0
    flat = float(np.median([f.flat_frac for f in frames])) if frames else 0.0
    colours = float(np.median([f.colours for f in frames])) if frames else 0.0
    tones = float(np.median([f.tones for f in frames])) if frames else 0.0
    borders = float(np.median([f.border_frac for f in frames])) if frames else 0.0
    motion = motion_score or 0.0
    still = _c(1 - motion / 0.02)
    few_colours = min(_c((64 - colours) / 56), _c((16 - tones) / 14))
    short = min(width, height)
    low_res = _c((cfg.low_res_short_side - short) / (cfg.low_res_short_side / 2))
    starved = 0.0
    if bits_per_pixel is not None:
        starved = _c(1 - bits_per_pixel / cfg.min_bits_per_pixel) * _c(motion / 0.02)
    blur = _c(1 - sharp / cfg.sharp_ref) if frames else 0.0
    low_fps = 0.0 if fps is None else _c((cfg.min_fps - fps) / (cfg.min_fps / 2))
    r = max(0, jumps - 1) / max(duration_s / 60.0, 1e-9)
    coherence_score = 0.0 if motion_coherence is None else _c((1 - motion_coherence) / 1.1)
    return {
        "text_area": text,
        "sharpness": sharp,
        "border_frac": borders,
        neg_column("text_dominated"): _c(text / 0.25),
        neg_column("lecture"): still * (flat + few_colours) / 2,
        neg_column("low_quality"): max(blur, low_res, _c(borders / 0.6), starved, low_fps),
        neg_column("noisy_screen"): _c(max((noise_residual or 0.0) / 16.0, flicker_level / 8.0)),
        neg_column("incoherent_motion"): max(coherence_score, 1.0 - 0.5**transients),
        neg_column("over_edited"): r / (r + cfg.over_edited_cuts_per_min) if r > 0 else 0.0,
    }
