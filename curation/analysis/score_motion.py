"""Motion scores from optical flow between consecutive sampled frames.

Flow is OpenCV's DIS (dense inverse search) on grey frames at the working short side: at
~160 px it costs about a millisecond a pair, where Farneback at full size costs tens.

DIS alone loses track of displacements beyond a few pixels at its coarsest pyramid level:
with samples 0.25 s apart, a pan faster than ~0.6 short sides/s moved tens of pixels and
was scored as slow, so `motion_too_high` could never fire. So each pair is first phase-
correlated (at half size, ~0.1 ms); when that finds a confident global shift too large for
DIS, DIS starts from the shift instead of from zero and refines it per pixel. One DIS pass a
pair either way. A fast motion that covers less of the frame than the static part is still
underestimated: phase correlation only reports the dominant shift.

* motion_score: mean flow magnitude (px) / working short side (px) / frame gap (s): the
  fraction of the frame's short side the content travels per second. Independent of the
  working resolution and of the sampling rate; ~0 for a static clip.
* motion_min_patch: the same score per cell of a grid x grid split, minimum over cells (a
  talking head over a still background scores low here even when the face moves).
* motion_coherence: how much of the change between frames the flow explains,
  1 - unexplained / max(changed, 0.25 * pixels), counted over all pairs, where `changed` is
  the pixels whose grey level moved by more than 12 and `unexplained` those still more than
  16 off after warping by the flow. Rigid motion (pans, zooms, objects) is explained by flow
  (~1); dissolves, snow, teleporting objects and chaos are not (~0). Pixels whose match lies
  outside the next frame (content a pan reveals) are left out. Null when under 0.5% of the
  pixels changed: codec noise around the edges of a still slide is not motion.
  Why the floor of a quarter of the frame: on real footage small moving things (people
  walking across a static street, a face talking, leaves) are a small share of the frame and
  the hardest for flow at the working size (a walker is ~10 px tall at 128 px), so the share
  of *their* change that flow explains is low (0.36-0.49 on a real static-camera street scene
  with the first formula, sum|residual| / sum|change| over changed pixels) although the clip
  is perfectly natural. Counting unexplained pixels against at least a quarter of the frame
  scores such clips 0.57-0.99 while a cross-dissolve between photographs (0.20) or a filmed
  screen's snow (0.25), whose unexplained change covers the frame, stay low. Pixel counts
  with a level threshold rather than summed levels: compression noise and slow lighting
  changes move many pixels by a few levels and are not incoherence.
* noise_residual: median |I1 - warp(I0)| in grey levels over pixels whose match lies inside
  the next frame: change flow cannot explain anywhere in the frame (the noisy-screen tag).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from curation.core.config_loader import check_positive
from curation.media.container import MediaError


@dataclass(frozen=True, kw_only=True)
class MotionConfig:
    # Flow between consecutive samples at this rate: the motion budget per second of video,
    # whatever the source's frame rate. Not lower: at 2/s a pan of 2.2 short sides/s moved
    # more than half the working frame between samples and read as 1.69 (0.76 of its speed;
    # 0.92-0.99 at 3/s, tests/curation/test_score_motion.py), so motion_too_high (1.5) would
    # hang on a thread; the real development set's tags held at 2/s but it has no fast pan.
    sample_fps: float = 3.0
    patch_grid: int = 4  # motion_min_patch over a grid x grid split
    dis_preset: str = "ultrafast"  # OpenCV DIS preset: ultrafast | fast | medium

    def __post_init__(self) -> None:
        check_positive(self, "sample_fps", "patch_grid")
        if self.dis_preset not in ("ultrafast", "fast", "medium"):
            raise ValueError(f"motion.dis_preset must be ultrafast, fast or medium, got {self.dis_preset!r}")


_CHANGED_LEVELS = 12  # grey-level change that counts as "this pixel changed"
_UNEXPLAINED_LEVELS = 16  # residual after warping that counts as "flow did not explain this pixel"
_MIN_CHANGED_FRAC = 0.005  # below this share of changed pixels, coherence is null
_COHERENCE_FLOOR = 0.25  # unexplained pixels are counted against at least this share of the frame
# A phase-correlation shift is trusted as a starting point when its peak holds this much of
# the correlation energy (translations measure 0.45-0.85 here, teleporting blobs < 0.1) and
# it is larger than DIS reliably finds from zero (in working px).
_PC_MIN_RESPONSE = 0.2
_PC_MIN_SHIFT = 4.0
# OpenCV's DIS needs its patch (8 px; 12 at "medium") at its finest pyramid scale (1/4; 1/2 at
# "medium"): a short side of 32 px. Under it, it raises (a 2400x10 strip), or picks its
# pyramid from the width alone and fails in a resize. Sources are refused from their header
# under [decode] min_side; this catches a frame that shrinks mid-stream.
MIN_FLOW_SIDE = 32
_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


def _half(g: np.ndarray) -> np.ndarray:
    """A grey frame at half size, float32: what phase correlation reads (a quarter of the FFT
    work; the shift only seeds DIS, which refines it per pixel). Made once per frame: each
    frame is the second of one pair and the first of the next."""
    size = (max(8, g.shape[1] // 2), max(8, g.shape[0] // 2))
    return cv2.resize(g, size, interpolation=cv2.INTER_AREA).astype(np.float32)


def _median_u8(values: np.ndarray, mask: np.ndarray) -> float:
    """Median of the uint8 `values` under `mask`, from a 256-bin histogram (no sort, no copy)."""
    cum = np.cumsum(cv2.calcHist([values], [0], mask, [256], [0, 256]).ravel())
    return float(np.searchsorted(cum, (cum[-1] + 1) / 2)) if cum[-1] else 0.0


@dataclass(frozen=True)
class MotionScores:
    motion_score: float | None
    motion_min_patch: float | None
    motion_coherence: float | None
    noise_residual: float | None


@dataclass
class PairScores:
    """What one pair of consecutive motion samples contributes to its clip's scores."""

    speed: float  # mean flow magnitude / short side / gap (short sides per second)
    patch_speeds: np.ndarray  # (grid, grid) float32: the same per cell
    residual: float  # median |a - warp(b)| inside, grey levels
    changed_px: int
    unexplained_px: int
    inside_px: int
    total_px: int
    half: np.ndarray  # the second frame at half size (the next pair's first)


class MotionScorer:
    def __init__(self, cfg: MotionConfig):
        self.cfg = cfg
        self._dis: cv2.DISOpticalFlow | None = None
        self._dis_shape: tuple[int, int] | None = None
        self._grid_cache: tuple[np.ndarray, np.ndarray] | None = None

    def _grid(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        if self._grid_cache is None or self._grid_cache[0].shape != (h, w):
            self._grid_cache = tuple(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)))
        return self._grid_cache

    def _dis_for(self, shape: tuple[int, int]) -> cv2.DISOpticalFlow:
        # One DIS object per frame size: OpenCV 5's DIS crashes (segfault) when a call with an
        # initial flow is followed by a call at another size on the same object.
        if self._dis is None or self._dis_shape != shape:
            self._dis = cv2.DISOpticalFlow_create(_PRESETS[self.cfg.dis_preset])
            self._dis_shape = shape
        return self._dis

    def flow(self, a: np.ndarray, b: np.ndarray, ha: np.ndarray | None = None, hb: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(flow x, flow y, |a - warp(b)|, inside) for a pair of grey frames (`ha`, `hb`: their
        `_half` when the caller has them). DIS flow satisfies a(x) ~ b(x + flow(x)): b is pulled
        back onto a's grid; `inside` (255/0) marks pixels whose match lies inside b."""
        dis = self._dis_for(a.shape)
        (dx, dy), response = cv2.phaseCorrelate(_half(a) if ha is None else ha, _half(b) if hb is None else hb)
        dx, dy = 2.0 * dx, 2.0 * dy
        init = None
        if response >= _PC_MIN_RESPONSE and np.hypot(dx, dy) >= _PC_MIN_SHIFT:
            init = np.empty(a.shape + (2,), np.float32)
            init[..., 0], init[..., 1] = dx, dy
        fx, fy = cv2.split(dis.calc(a, b, init))
        grid_x, grid_y = self._grid(*a.shape)
        mx, my = cv2.add(grid_x, fx), cv2.add(grid_y, fy)  # where each pixel's match lies in b
        res = cv2.absdiff(cv2.remap(b, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE), a)
        h, w = a.shape
        inside = cv2.bitwise_and(cv2.inRange(mx, 0, w - 1), cv2.inRange(my, 0, h - 1))
        return fx, fy, res, inside

    def pair(self, a: np.ndarray, b: np.ndarray, ta: float, tb: float, ha: np.ndarray | None = None) -> "PairScores":
        """One pair of consecutive samples (grey, display orientation) at times `ta` < `tb` (s):
        what `combine` sums over a clip. `ha`: `_half(a)`, when the caller kept it from the pair
        before (PairScores.half is b's)."""
        if min(a.shape[:2]) < MIN_FLOW_SIDE:
            h, w = a.shape[:2]
            raise MediaError(f"frame too small to score: {w}x{h} px, optical flow needs a short side of {MIN_FLOW_SIDE} px", code="too_small")
        g = self.cfg.patch_grid
        h, w = a.shape
        norm = min(h, w) * max(tb - ta, 1e-3)
        if ha is None or ha.shape[:2] != (max(8, h // 2), max(8, w // 2)):
            ha = _half(a)
        hb = _half(b)
        # OpenCV primitives throughout: on ~30k-pixel frames numpy's temporaries cost more
        # than the flow itself.
        fx, fy, res, inside = self.flow(a, b, ha, hb)
        mag = cv2.magnitude(fx, fy)
        changed = cv2.bitwise_and(cv2.compare(cv2.absdiff(a, b), _CHANGED_LEVELS, cv2.CMP_GT), inside)
        return PairScores(
            speed=cv2.mean(mag)[0] / norm,
            patch_speeds=cv2.resize(mag, (g, g), interpolation=cv2.INTER_AREA) / norm,  # cell means
            residual=_median_u8(res, inside),
            changed_px=cv2.countNonZero(changed),
            unexplained_px=cv2.countNonZero(cv2.bitwise_and(cv2.compare(res, _UNEXPLAINED_LEVELS, cv2.CMP_GT), inside)),
            inside_px=cv2.countNonZero(inside),
            total_px=h * w,
            half=hb,
        )

    @staticmethod
    def combine(pairs: Sequence["PairScores"]) -> MotionScores:
        """A clip's scores from its pairs (see the module docstring for each score)."""
        if not pairs:
            return MotionScores(None, None, None, None)
        changed = sum(p.changed_px for p in pairs)
        total = sum(p.total_px for p in pairs)
        coherence = None
        if changed and changed >= _MIN_CHANGED_FRAC * total:
            unexplained, inside = sum(p.unexplained_px for p in pairs), sum(p.inside_px for p in pairs)
            coherence = float(np.clip(1.0 - unexplained / max(changed, _COHERENCE_FLOOR * inside), 0.0, 1.0))
        return MotionScores(
            motion_score=float(np.mean([p.speed for p in pairs])),
            motion_min_patch=float(np.mean([p.patch_speeds for p in pairs], axis=0).min()),
            motion_coherence=coherence,
            noise_residual=float(np.mean([p.residual for p in pairs])),
        )

    def score(self, frames: Sequence[np.ndarray], times: Sequence[float]) -> MotionScores:
        """Score a clip from its sampled grey frames (display orientation) and their times (s)."""
        pairs: list[PairScores] = []
        for a, b, ta, tb in zip(frames, frames[1:], times, times[1:]):
            pairs.append(self.pair(a, b, ta, tb, pairs[-1].half if pairs else None))
        return self.combine(pairs)
