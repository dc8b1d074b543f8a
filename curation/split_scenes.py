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

Every cut counts, however close to the start or to another cut: the short piece between is
a short shot, dropped by the windows (`min_clip_s`), never merged into its neighbour.
A change of frame size mid-stream is a cut.

Gradual transitions (dissolves, fades to and from black) are found by twin comparison
(Zhang, Kankanhalli & Smoliar 1993, "Automatic partitioning of full-motion video"): a run
of frames whose change stands above the recent level but below a cut, whose end differs
from its start as a cut would. On top of it each frame inside the run must be a mix of the
frame before and the frame after it (plus a constant: fades through black), fitted by least
squares on a 4x4 grid of block means, which motion barely moves and a mix moves linearly.
The run's frames are dropped: the shot before ends at its first frame, the next begins after.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from curation.config import SplitConfig


class CutDetector:
    """Feed thumbnails in order; `update` returns True when this frame starts a new shot
    (a hard cut). After each update, `transition()` returns the frames [first, end) of a
    gradual transition that has just been recognised (once), else None."""

    def __init__(self, cfg: SplitConfig, history: int = 24):
        self.cfg = cfg
        self._prev: np.ndarray | None = None
        self._recent: deque[float] = deque(maxlen=history)
        self.deltas: list[float] = []
        self._gradual = _GradualDetector(cfg, history)

    def update(self, index: int, thumb: np.ndarray) -> bool:
        cur = cv2.blur(thumb, (3, 3))
        if self._prev is None or self._prev.shape != cur.shape:
            resized = self._prev is not None  # a new frame size mid-stream starts a new shot
            self._prev = cur
            self.deltas.append(0.0)
            self._gradual.reset(index, cur)
            return resized
        delta = sum(cv2.mean(cv2.absdiff(cur, self._prev))[:3]) / 3.0  # mean |delta| over Y, U, V
        self._prev = cur
        self.deltas.append(delta)
        # The first delta of a shot has no level to stand above: it is taken as the level (a
        # shot of one frame is dropped anyway), so a fast pan right after a cut is no cut.
        is_cut = bool(self._recent) and (
            delta >= self.cfg.cut_threshold and delta >= self.cfg.adaptive_ratio * statistics.median(self._recent)
        )
        if is_cut:
            self._recent.clear()
            self._gradual.reset(index, cur)
        else:
            self._recent.append(delta)
            self._gradual.update(index, cur)
        return is_cut

    def transition(self) -> tuple[int, int] | None:
        found, self._gradual.found = self._gradual.found, None
        return found


class _GradualDetector:
    """Twin comparison on 4x4 block means (see the module docstring)."""

    def __init__(self, cfg: SplitConfig, history: int):
        self.cfg = cfg
        self.grids: deque[tuple[int, np.ndarray]] = deque(maxlen=cfg.gradual_max_frames + 2)
        self.recent: deque[float] = deque(maxlen=history)
        self.start: int | None = None  # index of the last frame before a candidate run
        self.level = 0.0  # the recent delta level the run stands above
        self.run_deltas: list[float] = []
        self.found: tuple[int, int] | None = None

    def reset(self, index: int, thumb: np.ndarray) -> None:
        self.grids.clear()
        self.recent.clear()
        self.start = None
        self.grids.append((index, _grid(thumb)))

    def update(self, index: int, thumb: np.ndarray) -> None:
        g = _grid(thumb)
        d = float(np.abs(g - self.grids[-1][1]).mean()) if self.grids else 0.0
        self.grids.append((index, g))
        cfg = self.cfg
        if self.start is None:
            # A level needs a few frames of history: the first frames of a shot start no run.
            base = statistics.median(self.recent) if len(self.recent) >= 4 else None
            if base is not None and d >= cfg.gradual_delta and d >= cfg.gradual_ratio * base:
                self.start, self.level, self.run_deltas = index - 1, base, [d]
            else:
                self.recent.append(d)
            return
        if d >= cfg.gradual_delta and d >= cfg.gradual_ratio * self.level:
            self.run_deltas.append(d)
            if index - self.start > cfg.gradual_max_frames:  # too long for a transition: motion
                self.start = None
                self.recent.extend(self.run_deltas)  # the new level
            return
        end = index - 1  # the last frame of the run: the first of the next shot
        if end - self.start >= 3:
            run = [gr for i, gr in self.grids if self.start <= i <= end]
            if len(run) == end - self.start + 1 and _is_mix(run, cfg):
                self.found = (self.start + 1, end)
        self.start = None
        self.recent.append(d)


def _grid(thumb: np.ndarray) -> np.ndarray:
    return cv2.resize(thumb.astype(np.float32), (4, 4), interpolation=cv2.INTER_AREA)


def _is_mix(run: list[np.ndarray], cfg: SplitConfig) -> bool:
    """Whether the frames between run[0] and run[-1] are mixes of the two (plus a constant per
    channel: black in fades), and the two differ as shots do."""
    a, b = run[0].reshape(-1, 3), run[-1].reshape(-1, 3)
    change = float(np.abs(b - a).mean())
    if change < cfg.gradual_change:
        return False
    x = np.zeros((a.size, 5), np.float64)
    x[:, 0], x[:, 1] = a.ravel(), b.ravel()
    for c in range(3):
        x[c::3, 2 + c] = 1.0
    mids = np.stack([m.reshape(-1) for m in run[1:-1]], axis=1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(x, mids, rcond=None)
    resid = float(np.sqrt(np.mean((x @ coef - mids) ** 2)))
    return resid <= cfg.gradual_fit * float(np.sqrt(np.mean((b - a) ** 2)))


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
    as they are known, so a caller only buffers frames of the open window. `drop` removes
    the frames of a gradual transition recognised after they were pushed.
    """

    def __init__(self, cfg: SplitConfig):
        self.cfg = cfg
        self.start: int | None = None
        self._start_t = 0.0
        self._prev: tuple[int, float] | None = None
        self._times: deque[tuple[int, float]] = deque(maxlen=cfg.gradual_max_frames + 4)

    def drop(self, first: int, end: int) -> list[Window]:
        """Frames [first, end) are a transition: the open window closes at `first`, the next
        starts at `end`. (A window closed by `max_clip_s` inside the run keeps its frames.)"""
        times = dict(self._times)
        if self.start is None or first not in times or end not in times:
            return []
        out = self._close(first, times[first]) if self.start < first else []
        if self.start < end:
            self.start, self._start_t = end, times[end]
        return out

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
        self._times.append((index, t))
        return out

    def finish(self, end: int, end_t: float) -> list[Window]:
        out = self._close(end, end_t)
        self.start = None
        return out
