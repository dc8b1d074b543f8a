"""Shot-cut detection and clip windows.

The detector is PySceneDetect's ContentDetector idea (mean absolute colour delta between
consecutive frames, a threshold, a minimum shot length) plus an adaptive guard (the delta
must also stand `adaptive_ratio` times above the recent median, so fast pans are not cuts).
It is written here rather than called from PySceneDetect because it must run inside the
single decode pass on thumbnails we already hold; PySceneDetect opens and decodes the video
itself, which would double the decode cost (the stage is decode-bound).

Thumbnails are strided samples, so fine detail aliases and any motion makes them flicker.
A 3x3 box filter first removes most of that (a 2 px/frame pan's delta halves) while a cut,
which changes the whole picture, keeps nearly all of its delta.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from curation.config import SplitConfig


class CutDetector:
    """Feed thumbnails in order; `update` returns True when this frame starts a new shot."""

    def __init__(self, cfg: SplitConfig, history: int = 24):
        self.cfg = cfg
        self._prev: np.ndarray | None = None
        self._recent: deque[float] = deque(maxlen=history)
        self._last_cut = 0
        self.deltas: list[float] = []

    def update(self, index: int, thumb: np.ndarray) -> bool:
        cur = cv2.blur(thumb, (3, 3))
        if self._prev is None or self._prev.shape != cur.shape:
            self._prev = cur
            self.deltas.append(0.0)
            return False
        delta = sum(cv2.mean(cv2.absdiff(cur, self._prev))[:3]) / 3.0  # mean |delta| over Y, U, V
        self._prev = cur
        self.deltas.append(delta)
        baseline = statistics.median(self._recent) if self._recent else 0.0
        is_cut = (
            delta >= self.cfg.cut_threshold
            and delta >= self.cfg.adaptive_ratio * baseline
            and index - self._last_cut >= self.cfg.min_shot_frames
        )
        if is_cut:
            self._last_cut = index
            self._recent.clear()
        else:
            self._recent.append(delta)
        return is_cut


@dataclass(frozen=True)
class Window:
    start: int  # first frame (inclusive)
    end: int  # end frame (exclusive)
    start_s: float
    end_s: float  # presentation time just after the last frame


class Windower:
    """Turn a stream of frames and cuts into clip windows, online.

    Shots are cut greedily into windows of at most `max_clip_s`; a piece shorter than
    `min_clip_s` (a short shot, or the tail of a long one) is dropped. Windows close as soon
    as they are known, so a caller only buffers frames of the open window.
    """

    def __init__(self, cfg: SplitConfig):
        self.cfg = cfg
        self.start: int | None = None
        self._start_t = 0.0
        self._prev: tuple[int, float] | None = None

    def _close(self, end: int, end_t: float) -> list[Window]:
        start, start_t = self.start, self._start_t
        if start is None or end <= start or end_t - start_t + 1e-6 < self.cfg.min_clip_s:
            return []
        return [Window(start, end, start_t, end_t)]

    def push(self, index: int, t: float, is_cut: bool) -> list[Window]:
        out: list[Window] = []
        if self.start is None:
            self.start, self._start_t = index, t
        elif is_cut:
            out = self._close(index, t)
            self.start, self._start_t = index, t
        elif t - self._start_t > self.cfg.max_clip_s + 1e-6 and self._prev is not None:
            # [start, index) would be too long; [start, prev] is the longest that fits.
            prev_i, prev_t = self._prev
            out = self._close(prev_i, prev_t)
            self.start, self._start_t = prev_i, prev_t
        self._prev = (index, t)
        return out

    def finish(self, end: int, end_t: float) -> list[Window]:
        out = self._close(end, end_t)
        self.start = None
        return out
