"""Motion scores from optical flow between consecutive sampled frames.

Flow is OpenCV's DIS (dense inverse search) on grey frames at the working short side: at
~160 px it costs about a millisecond a pair, where Farneback at full size costs tens.

* motion_score: mean flow magnitude (px) / working short side (px) / frame gap (s): the
  fraction of the frame's short side the content travels per second. Independent of the
  working resolution and of the sampling rate; ~0 for a static clip.
* motion_min_patch: the same score per cell of a grid x grid split, minimum over cells (a
  talking head over a still background scores low here even when the face moves).
* motion_coherence: how much of the change between frames the flow explains,
  1 - mean|I1 - warp(I0)| / mean|I1 - I0| over pixels that changed. Rigid motion (pans,
  zooms, objects) is explained by flow (~1); flashes, teleporting objects and chaos are not
  (~0). Null when nothing changed.
* noise_residual: median |I1 - warp(I0)| in grey levels, the change flow cannot explain
  anywhere in the frame (used by the noisy-screen tag).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from curation.config import MotionConfig

_CHANGED_LEVELS = 12  # grey-level change that counts as "this pixel changed"


@dataclass(frozen=True)
class MotionScores:
    motion_score: float | None
    motion_min_patch: float | None
    motion_coherence: float | None
    noise_residual: float | None


class MotionScorer:
    def __init__(self, cfg: MotionConfig):
        self.cfg = cfg
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
        self._grid_cache: tuple[np.ndarray, np.ndarray] | None = None

    def _grid(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        if self._grid_cache is None or self._grid_cache[0].shape != (h, w):
            self._grid_cache = tuple(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)))
        return self._grid_cache

    def flow(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._dis.calc(a, b, None)

    def score(self, frames: Sequence[np.ndarray], times: Sequence[float]) -> MotionScores:
        """Score a clip from its sampled grey frames (display orientation) and their times."""
        if len(frames) < 2:
            return MotionScores(None, None, None, None)
        g = self.cfg.patch_grid
        speeds, patch_speeds, explained, changed_total, residuals = [], [], 0.0, 0.0, []
        for a, b, ta, tb in zip(frames, frames[1:], times, times[1:]):
            dt = max(tb - ta, 1e-3)
            h, w = a.shape
            norm = min(h, w) * dt
            f = self.flow(a, b)
            mag = np.sqrt(f[..., 0] ** 2 + f[..., 1] ** 2)
            speeds.append(float(mag.mean()) / norm)
            cells = mag[: h - h % g, : w - w % g].reshape(g, h // g, g, w // g).mean(axis=(1, 3))
            patch_speeds.append(cells / norm)
            # DIS flow satisfies a(x) ~ b(x + flow(x)): pull b back onto a's grid.
            grid_x, grid_y = self._grid(h, w)
            warped = cv2.remap(b, grid_x + f[..., 0], grid_y + f[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            raw = cv2.absdiff(a, b)
            res = cv2.absdiff(warped, a)
            changed = raw > _CHANGED_LEVELS
            residuals.append(float(np.median(res)))
            if changed.any():
                changed_total += float(raw[changed].sum())
                explained += float(raw[changed].sum()) - float(res[changed].sum())
        coherence = None
        if changed_total > 0:
            coherence = float(np.clip(explained / changed_total, 0.0, 1.0))
        return MotionScores(
            motion_score=float(np.mean(speeds)),
            motion_min_patch=float(np.mean(patch_speeds, axis=0).min()),
            motion_coherence=coherence,
            noise_residual=float(np.mean(residuals)),
        )
