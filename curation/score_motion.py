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

from curation.config import MotionConfig
from curation.media import MediaError

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


def _global_shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(dx, dy, response) of the dominant translation, by phase correlation at half size
    (a quarter of the FFT work; the shift only seeds DIS, which refines it per pixel)."""
    size = (max(8, a.shape[1] // 2), max(8, a.shape[0] // 2))
    ha = cv2.resize(a, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    hb = cv2.resize(b, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    (dx, dy), response = cv2.phaseCorrelate(ha, hb)
    return 2.0 * dx, 2.0 * dy, response


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

    def _residual(self, a: np.ndarray, b: np.ndarray, f: np.ndarray) -> np.ndarray:
        # DIS flow satisfies a(x) ~ b(x + flow(x)): pull b back onto a's grid.
        grid_x, grid_y = self._grid(*a.shape)
        warped = cv2.remap(b, grid_x + f[..., 0], grid_y + f[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return cv2.absdiff(warped, a)

    def flow(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(flow, |a - warp(b)|) for a pair of grey frames."""
        dis = self._dis_for(a.shape)
        dx, dy, response = _global_shift(a, b)
        init = None
        if response >= _PC_MIN_RESPONSE and np.hypot(dx, dy) >= _PC_MIN_SHIFT:
            init = np.empty(a.shape + (2,), np.float32)
            init[..., 0], init[..., 1] = dx, dy
        f = dis.calc(a, b, init)
        return f, self._residual(a, b, f)

    def score(self, frames: Sequence[np.ndarray], times: Sequence[float]) -> MotionScores:
        """Score a clip from its sampled grey frames (display orientation) and their times."""
        if len(frames) < 2:
            return MotionScores(None, None, None, None)
        if min(frames[0].shape[:2]) < MIN_FLOW_SIDE:
            h, w = frames[0].shape[:2]
            raise MediaError(f"frame too small to score: {w}x{h} px, optical flow needs a short side of {MIN_FLOW_SIDE} px", code="too_small")
        g = self.cfg.patch_grid
        speeds, patch_speeds, residuals = [], [], []
        changed_px = unexplained_px = inside_px = total_px = 0
        for a, b, ta, tb in zip(frames, frames[1:], times, times[1:]):
            dt = max(tb - ta, 1e-3)
            h, w = a.shape
            norm = min(h, w) * dt
            f, res = self.flow(a, b)
            # OpenCV primitives throughout: on ~30k-pixel frames numpy's temporaries cost
            # more than the flow itself.
            fx, fy = cv2.split(f)
            mag = cv2.magnitude(fx, fy)
            speeds.append(cv2.mean(mag)[0] / norm)
            patch_speeds.append(cv2.resize(mag, (g, g), interpolation=cv2.INTER_AREA) / norm)  # cell means
            grid_x, grid_y = self._grid(h, w)
            inside = cv2.bitwise_and(cv2.inRange(grid_x + fx, 0, w - 1), cv2.inRange(grid_y + fy, 0, h - 1))
            raw = cv2.absdiff(a, b)
            changed = cv2.bitwise_and(cv2.compare(raw, _CHANGED_LEVELS, cv2.CMP_GT), inside)
            residuals.append(_median_u8(res, inside))
            changed_px += cv2.countNonZero(changed)
            unexplained_px += cv2.countNonZero(cv2.bitwise_and(cv2.compare(res, _UNEXPLAINED_LEVELS, cv2.CMP_GT), inside))
            inside_px += cv2.countNonZero(inside)
            total_px += h * w
        coherence = None
        if changed_px and changed_px >= _MIN_CHANGED_FRAC * total_px:
            coherence = float(np.clip(1.0 - unexplained_px / max(changed_px, _COHERENCE_FLOOR * inside_px), 0.0, 1.0))
        return MotionScores(
            motion_score=float(np.mean(speeds)),
            motion_min_patch=float(np.mean(patch_speeds, axis=0).min()),
            motion_coherence=coherence,
            noise_residual=float(np.mean(residuals)),
        )
