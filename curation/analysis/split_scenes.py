"""Shot boundaries and clip windows, from the decode pass's own thumbnails.

Why one module: one online algorithm. The three tests (cuts, dissolves, fades) read one ring of
frame measurements and decide together which frames belong to no shot; the windows take frames
only once those decisions are final (the detector's `settle_lag`), so detector, splitter and
windower share one contract about time. Split, that contract and the small measurements
(`change`, `structure_change`, `same_scene`) would be spread over files only this algorithm
uses, and the figures below would leave the code they calibrate. Most of the length is
`ShotDetector`.

Why not PySceneDetect or TransNetV2 as they are: both decode the video themselves, and the
analysis pass is decode-bound, so a second decode would halve it; and on the labelled
benchmark (bench/shots.py, bench/RESULTS.md) both leave transition frames in clips
(PySceneDetect misses most dissolves, TransNetV2 cuts between similar framings of one scene)
and fire on hard motion. The detector here reads the Y/U/V thumbnails the pass already holds
(curation/media/decode.py) and costs ~55 us of CPU a frame (~40 for the detector it replaced).

Hard cuts. A cut changes the whole picture once: the frame's change from the one before
(mean |Y/U/V delta| of 3x3-smoothed thumbnails) stands `cut_isolation` times above every
other change within three frames either side, flash and glitch frames left out (motion,
shake, whip pans and zooms change the picture over several frames: on the benchmark's
development part no change outside a transition stood 1.5x above its neighbours, cuts,
similar framings included, 1.8x-100x). Two more checks: the structure changes (1 - the rank
correlation of the 20x12 luma, which no exposure, gain or gamma change moves: exposure steps
measured 0.005-0.046 with clipping, cuts 0.11-1.6), by more than it changes between the frames
around (noise and flicker move the ranks on every frame: cuts stood >= 0.089 above them); and
the picture is not back at the end of the three frames after (flashes, glitch frames).

Gradual transitions. A dissolve's frames are mixes of the shot before and the shot after.
Motion alone can look like a mix on coarse grids, so the test is the fine texture: mixing two
unrelated pictures lowers its energy (thumbnail minus its 3x3 blur) to (1-a)^2 E_A + a^2 E_B,
a dip following that curve, which steady motion, pans and zooms do not make (development part:
dissolves 0.69-1.09 of the predicted dip, in-shot spans whose grids fit a mix at most 0.25;
shake and blur dip but off the curve). Spans of every length up to `gradual_max_frames`
ending at each frame are tested (a batch of end frames at a time: numpy's per-call cost is
what a frame pays): the ends must differ as shots do, each frame's 4x4 grid must be the
linear ramp between them; the best-fitting of overlapping spans wins and its ends are refined
from where each frame's mixing coefficient starts and stops ramping. Fades: the picture's
energy (rms luma above black) dips to dark with frames on the way down and up; frames that
stay black between a fade-out and a fade-in belong to the transition, so a held black never
opens a clip. A dip to dark whose two sides are one scene once aligned for the camera's move
(a hand over the lens, someone passing close to it) is no boundary.

Clips never hold a transition frame: frames reach the windows only once no later decision
can change them, and each dissolve's frames go with a margin (`gradual_margin`: its fitted
ends can be a few frames off). Every cut counts, however close to another; the short piece
between is dropped by the windows (`min_clip_s`). A change of frame size mid-stream is a cut.

TransNetV2 (curation/analysis/shot_model.py) is a second opinion on the gpu profile only
(`split.model`): on two CPU cores it scores ~20-120 frames/s where this pass decodes
~1000-3000, and scoring only 100-frame windows around candidates would still cost more than
decoding the whole shot. Its boundaries join ours only where our measurements agree (a cut
must change the structure, stand 1.3x above the changes around it and not come back; a
gradual one's sides must be different scenes): unchecked, its only additions on the
development part were mid whip pan and mid crash zoom.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from curation.core.config_loader import check_positive
from curation.analysis.shot_model import WindowedScores, thumb_rgb


@dataclass(frozen=True, kw_only=True)
class SplitConfig:
    """Shot boundaries (this module) and clip windows. Thresholds were chosen on the
    development part of the shot benchmark (bench/shotset.py, bench/shots.py); the
    held-back part was not used to set them."""

    # Hard cuts: a frame's change (mean |Y/U/V delta| of 3x3-smoothed thumbnails, 0-255) at
    # least this...
    cut_threshold: float = 5.0
    # ...standing this many times above every change within 3 frames either side (cuts on the
    # development part: 1.8-100x; no other frame there above 1.5x)...
    cut_isolation: float = 2.0
    # ...or this many when the structure changes at least cut_structure_strong (below: a cut
    # into fast dark motion measured 1.8x and 0.26; strong shake at most 1.5x)
    cut_isolation_strong: float = 1.6
    # ...with the luma structure changed (1 - rank correlation of 20x12 luma: cuts on the
    # development part measured 0.11-1.6, exposure steps 0.005-0.046, clipping included) by at
    # least this more than between the frames 2 either side (cuts: >= 0.089 more)...
    cut_structure: float = 0.075
    cut_structure_strong: float = 0.25
    # ...and the picture not back within 3 frames: a flash or glitch when the frame before is
    # within this fraction of the change of one of them (cuts measured >= 0.69).
    transient_return: float = 0.5
    min_clip_s: float = 2.0
    max_clip_s: float = 10.0  # longer shots are cut into windows of this length
    # Gradual transitions, on a 4x4 grid of block means (0-255) and the fine texture.
    gradual_change: float = 6.0  # rms grid change between the frames around a dissolve, at least
    gradual_fit: float = 0.25  # rms misfit of the linear mix / that change, at most (dissolves: <= 0.23)
    gradual_dip: float = 0.5  # the fine-texture dip, as a fraction of what mixing predicts (dissolves: 0.69-1.09)...
    # ...at most this (blur loses more texture than mixing; an encoder smooths mixed detail
    # more: synthetic dissolves measured up to 1.45)
    gradual_dip_max: float = 1.6
    # ...and following the mixing curve: rms texture misfit / the predicted dip's depth, at most
    # (dissolves on the development part: <= 0.21; spans of shake and of fades: >= 0.46)
    gradual_texture_fit: float = 0.35
    # Fades: the picture's energy (rms luma above black) dips below this fraction of both sides;
    # each fade frame is at least `fade_step` darker than the next outside frame.
    fade_dark: float = 0.3
    fade_step: float = 0.01
    # The two sides of a dip to dark with less structure change than this are one scene (a hand
    # over the lens): no boundary.
    fade_same_scene: float = 0.15
    # TransNetV2 beside the measurements above (curation/analysis/shot_model.py): "off", "transnetv2",
    # or "auto" (TransNetV2 on the gpu profile, off elsewhere: on CPU it costs ~10x the decode).
    # Its boundaries (frames scored above model_threshold) that ours do not cover are added
    # when our checks do not contradict them (flashes, a scene that comes back).
    model: str = "auto"
    model_threshold: float = 0.5
    # A cut the model finds and we do not must still stand this many times above the changes
    # around it (mid whip pan and mid crash zoom, where it fired on the development part: 1.0)
    model_cut_isolation: float = 1.3
    model_device: str = "auto"  # auto: cuda when there is one
    # GPU share of each analysis actor when the model runs on Ray GPUs (16 per GPU; each holds
    # a CUDA context, ~0.5 GB); 0: the model runs where the analysis task runs, without a GPU.
    model_gpus: float = 0.0625

    def model_for(self, profile: str) -> str:
        """The shot model a run with this profile uses."""
        return ("transnetv2" if profile == "gpu" else "off") if self.model == "auto" else self.model
    gradual_max_frames: int = 60  # longer spans are motion, not a transition
    # Frames dropped around a gradual transition beyond its estimated ends, as a fraction of
    # its length (at least 2): ends estimated a few frames off leave no mixed frame in a clip
    # (refined dissolve ends on the development part: within 3 frames of the labels).
    gradual_margin: float = 0.2

    def __post_init__(self) -> None:
        check_positive(self, "cut_threshold", "cut_isolation", "cut_isolation_strong", "cut_structure", "cut_structure_strong", "transient_return", "min_clip_s",
                  "max_clip_s", "gradual_change", "gradual_fit", "gradual_dip", "gradual_dip_max", "gradual_texture_fit", "gradual_max_frames", "fade_dark",
                  "fade_step", "fade_same_scene", "model_cut_isolation")
        if self.gradual_margin < 0:
            raise ValueError("split.gradual_margin must be >= 0")
        if self.model not in ("auto", "off", "transnetv2"):
            raise ValueError(f"split.model must be 'auto', 'off' or 'transnetv2', got {self.model!r}")
        if not 0 < self.model_threshold < 1 or self.model_gpus < 0:
            raise ValueError("split.model_threshold must be within (0, 1) and split.model_gpus >= 0")
        if self.max_clip_s < self.min_clip_s:
            raise ValueError("split.max_clip_s must be >= split.min_clip_s")


LOOKAHEAD = 3  # frames after a cut candidate that the transient check needs
_BATCH = 8  # dissolve spans are tested for this many end frames at a time
_NEAR = 3  # a cut's change is compared with changes this many frames either side
# A frame more than this many nominal frame durations after the previous one follows a gap in
# the recording (a paused phone, dropped seconds): the picture moved on meanwhile.
GAP_STEP = 3.0
# No dissolve out of a stream's first frames: an encoder's rate control settles there (PyAV's
# MJPEG: fine texture 5.1 -> 3.5 over frames 1-7 of a steady pan, which fitted a dissolve of
# frames 1-18 and lost the clip), and a shot of fewer frames before it gives no clip anyway.
_SETTLE = 4
_BLACK_Y = 40.0  # a frame this dark (mean Y, 16 = video black)...
_BLACK_STD = 10.0  # ...and this flat is black


@dataclass(frozen=True)
class Transition:
    """Frames [first, end) belong to no shot; a cut has first == end (the new shot's first frame)."""

    first: int
    end: int
    kind: str  # cut | dissolve | fade | black (a cut to or from black frames, which it holds)
    score: float = field(default=0.0, compare=False)  # how well a dissolve fits (overlapping candidates: the best wins)


class _Frame:
    """What the detector keeps of one frame."""

    __slots__ = ("index", "blur", "small", "mean_y", "std_y", "_lo")

    def __init__(self, index: int, blur: np.ndarray, small: np.ndarray, mean_y: float, std_y: float):
        self.index, self.blur, self.small, self.mean_y, self.std_y = index, blur, small, mean_y, std_y
        self._lo: np.ndarray | None = None

    @property
    def black(self) -> bool:
        return self.mean_y <= _BLACK_Y and self.std_y <= _BLACK_STD

    @property
    def lo(self) -> np.ndarray:
        """Ranks of the 20x12 luma, zero-mean (computed when a test asks)."""
        if self._lo is None:
            y = self.small[..., 0].ravel()
            r = np.empty(y.size, np.float32)
            r[np.argsort(y, kind="stable")] = np.arange(y.size, dtype=np.float32)
            self._lo = r - r.mean()
        return self._lo


def describe(index: int, thumb: np.ndarray) -> tuple[_Frame, np.ndarray]:
    """The frame, and its row of per-frame features: the 4x4 grid of Y/U/V block means (48),
    fine texture (rms of the luma minus its 3x3 blur) and energy (rms luma above video
    black, what a fade scales)."""
    blur = cv2.blur(thumb, (3, 3))
    # 20x12 by linear steps on the smoothed thumbnail, then 4x4 block means: within a grey
    # level of area-averaging the thumbnail to 4x4, at a third of its cost.
    small = cv2.resize(blur, (20, 12), interpolation=cv2.INTER_LINEAR)
    row = np.empty(_WIDTH, np.float32)
    row[:48] = cv2.resize(small, (4, 4), interpolation=cv2.INTER_AREA).reshape(-1)
    y = cv2.extractChannel(blur, 0)
    row[_FINE] = cv2.norm(cv2.extractChannel(thumb, 0), y, cv2.NORM_L2) / math.sqrt(y.size)
    m, s = cv2.meanStdDev(y)
    mean, std = m.item(0), s.item(0)
    row[_ENERGY] = math.sqrt(std * std + max(mean - 16.0, 0.0) ** 2)
    return _Frame(index, blur, small, mean, std), row


_FINE, _ENERGY, _D = 48, 49, 50  # columns of a feature row after the grid
_WIDTH = 51


def _aligned(index: int, before: np.ndarray, after: np.ndarray) -> _Frame:
    """Frame `index` (thumbnail `before`) moved by the dominant shift between it and `after`
    (cv2.phaseCorrelate on the luma), edges replicated."""
    a = np.ascontiguousarray(before[..., 0], np.float32)
    b = np.ascontiguousarray(after[..., 0], np.float32)
    (dx, dy), _ = cv2.phaseCorrelate(a, b)
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    moved = cv2.warpAffine(before, m, (before.shape[1], before.shape[0]), borderMode=cv2.BORDER_REPLICATE)
    return describe(index, moved)[0]


def change(a: _Frame, b: _Frame) -> float:
    """Mean |Y/U/V delta| between two smoothed thumbnails (0-255)."""
    return float(cv2.norm(a.blur, b.blur, cv2.NORM_L1)) / a.blur.size


def structure_change(a: _Frame, b: _Frame) -> float:
    """1 - rank correlation of the 20x12 luma: ~0 for any change of exposure, gain, gamma or
    contrast (the order of brightnesses stays), ~1 for unrelated pictures."""
    if min(a.std_y, b.std_y) < 2.0:  # flat: structural when the other side is not flat
        return 1.0 if max(a.std_y, b.std_y) > 2 * _BLACK_STD / 3 else 0.0
    x, y = a.lo, b.lo
    return 1.0 - float(x @ y) / float(np.sqrt((x @ x) * (y @ y)))


def _transient(h, i: int, d: float, cfg: SplitConfig) -> bool:
    """A flash, a glitch: the picture of one of the three frames before frame i is back (within
    `transient_return` of i's change) at the last two of the LOOKAHEAD frames after it, so the
    change did not last. (A flash may span two frames and either may be the one tested; a
    cut followed by a frame of stale pictures, as broken streams show, does not come back.)"""
    ks = [k for k in (i + LOOKAHEAD - 1, i + LOOKAHEAD) if k < len(h)]
    if not ks:
        return False
    lim = cfg.transient_return * d
    return all(any(change(h[j], h[k]) <= lim for j in range(max(0, i - 3), i)) for k in ks)


def same_scene(a: _Frame, b: _Frame, cfg: SplitConfig) -> bool:
    """Whether two frames a second or so apart show one scene: their luma structure agrees
    once aligned for the camera's move between them (phase correlation)."""
    if structure_change(a, b) < cfg.fade_same_scene:
        return True
    ya = cv2.extractChannel(a.blur, 0).astype(np.float32)
    yb = cv2.extractChannel(b.blur, 0).astype(np.float32)
    (dx, dy), _ = cv2.phaseCorrelate(ya, yb)
    h, w = ya.shape
    ix, iy = int(round(dx)), int(round(dy))
    if abs(ix) > w // 2 or abs(iy) > h // 2:
        return False
    # b(x) ~ a(x - shift): compare the overlap
    sa = ya[max(0, -iy) : h - max(0, iy), max(0, -ix) : w - max(0, ix)]
    sb = yb[max(0, iy) : h - max(0, -iy), max(0, ix) : w - max(0, -ix)]
    ra, rb = (np.argsort(np.argsort(x, axis=None)).astype(np.float32) for x in (cv2.resize(sa, (20, 12), interpolation=cv2.INTER_AREA),
                                                                             cv2.resize(sb, (20, 12), interpolation=cv2.INTER_AREA)))
    ra -= ra.mean()
    rb -= rb.mean()
    return 1.0 - float(ra @ rb) / float(np.sqrt((ra @ ra) * (rb @ rb))) < cfg.fade_same_scene


class _Ring:
    """The last `cap` rows of a per-frame feature, readable as one contiguous slice (each
    row is stored twice, `cap` apart)."""

    def __init__(self, cap: int, width: int = 0):
        self.cap, self.n = cap, 0
        self.a = np.zeros((2 * cap, width) if width else 2 * cap, np.float32)

    def append(self, row) -> None:
        k = self.n % self.cap
        self.a[k] = row
        self.a[k + self.cap] = row
        self.n += 1

    def last(self, k: int) -> np.ndarray:
        """The newest min(k, held) rows, oldest first."""
        k = min(k, self.n, self.cap)
        end = self.n % self.cap + self.cap
        return self.a[end - k : end]

    def clear(self) -> None:
        self.n = 0


class ShotDetector:
    """Feed every frame's thumbnail in order (`push`); it returns the transitions it has
    decided, each once, in order. Decisions lag: a cut needs `LOOKAHEAD` frames after it, a
    gradual transition is final `settle_lag` frames after its last frame. `finish()` returns
    the rest."""

    def __init__(self, cfg: SplitConfig, model=None):
        self.cfg = cfg
        maxl = int(cfg.gradual_max_frames)
        self.lengths = np.unique(np.round(np.geomspace(4, maxl, 20)).astype(int))
        cap = 2 * maxl + 2 * _NEAR + 8  # a span, and half a span either side for refining it
        self.frames: deque[_Frame] = deque(maxlen=cap)
        self.rows = _Ring(cap, _WIDTH)
        # Per span length: the mix's position of the middle frame (the cheap first test).
        self._mid = ((self.lengths + 1) // 2).astype(int)
        self._a = (self._mid / (self.lengths + 1)).astype(np.float32)
        self.settle_lag = 2 * maxl + 2 * _NEAR + 4
        self._cut_checked = -1  # last frame index whose cut test ran
        self._cands: list[tuple[float, int, int]] = []  # fitting dissolve spans: (score, first, end)
        self._dark: int | None = None  # index of the darkest frame of an open dip to dark
        self._top = 0.0  # the brightest recent energy
        self._found: list[Transition] = []  # decided, not yet released
        # TransNetV2's second opinion (curation/analysis/shot_model.py), when a model is given.
        self._scores = WindowedScores(model) if model is not None else None
        self._run: int | None = None  # first frame of an open run of model scores above the threshold
        self._model: list[Transition] = []  # the model's boundaries, checked against our measurements
        self._thumb: np.ndarray | None = None  # the previous frame's thumbnail
        self._gaps: dict[int, _Frame] = {}  # frame after a recording gap -> the frame before it, aligned

    def push(self, index: int, thumb: np.ndarray, step: float = 1.0) -> list[Transition]:
        """`step`: time since the previous frame in nominal frame durations (curation/media/decode.py
        Frame.step); above GAP_STEP the frame follows a gap in the recording."""
        f, row = describe(index, thumb)
        out: list[Transition] = []
        if self.frames and self.frames[-1].blur.shape != f.blur.shape:  # a new frame size: a cut
            out += self._flush()
            self.rows.clear()
            self.frames.clear()
            self._gaps.clear()
            self._found.append(Transition(index, index, "cut"))
        before = self.frames[-1] if self.frames else None
        if before is not None and step > GAP_STEP and self._thumb is not None:
            # After a gap the camera has moved on: a 0.4 s pause in a pan changed the picture
            # as much as a cut. Compare with the frame before moved by the dominant shift
            # between the two (phase correlation); a cut at a gap still changes everything.
            before = self._gaps[index] = _aligned(before.index, self._thumb, thumb)
        row[_D] = change(before, f) if before is not None else 0.0
        self._thumb = thumb
        while self._gaps and next(iter(self._gaps)) < (self.frames[0].index if self.frames else index):
            del self._gaps[next(iter(self._gaps))]
        self.frames.append(f)
        self.rows.append(row)
        if self._scores is not None:
            for first, p in self._scores.push(index, thumb_rgb(thumb)):
                self._model_scores(first, p)
        self._test_cut()
        self._test_fade()
        self._test_dissolve()
        return out + self._release(index - self.settle_lag)

    def finish(self) -> list[Transition]:
        if self.frames:
            last = self.frames[-1].index
            while self._cut_checked < last:
                self._test_cut(final=True)
            self._test_fade(final=True)
            self._test_dissolve(final=True)
            if self._scores is not None:
                for first, p in self._scores.finish():
                    self._model_scores(first, p)
                self._model_scores(last + 1, np.zeros(1, np.float32))  # closes an open run
        return self._flush()

    # -- hard cuts -----------------------------------------------------------------------

    def _test_cut(self, final: bool = False) -> None:
        h = self.frames
        n = len(h)
        i = n - 1 - LOOKAHEAD
        if final:
            i = next((k for k in range(n) if h[k].index > self._cut_checked), n)
            if i >= n:
                self._cut_checked = h[-1].index
                return
        if i < 1 or h[i].index <= self._cut_checked:
            if final and i < n:  # the first frame: nothing before it to cut from (a 1-4 frame stream)
                self._cut_checked = h[i].index
            return
        self._cut_checked = h[i].index
        cfg = self.cfg
        d = self.rows.last(n)[:, _D]
        if d[i] < cfg.cut_threshold:
            return
        iso = d[i] / max(self._level(d, i), 0.5)
        if iso < cfg.cut_isolation_strong:
            return
        before, f = h[i - 1], h[i]
        sc, above = self._structure(i)
        if above < cfg.cut_structure or (iso < cfg.cut_isolation and sc < cfg.cut_structure_strong):
            return
        if _transient(h, i, float(d[i]), cfg):
            return
        self._found.append(Transition(f.index, f.index, "cut"))

    def _structure(self, i: int) -> tuple[float, float]:
        """Frame i's structure change, and how much more it is than the changes of the frames
        around (noise, flicker and fast motion move the rank order a little on every frame; a
        cut once)."""
        h = self.frames
        near = [structure_change(self._gaps.get(h[k].index, h[k - 1]), h[k])
                for k in range(max(1, i - 2), min(len(h), i + 3)) if k != i]
        sc = structure_change(self._gaps.get(h[i].index, h[i - 1]), h[i])
        return sc, sc - max(near, default=0.0)

    def _level(self, d: np.ndarray, i: int) -> float:
        """The largest change within _NEAR frames of frame i, flashes and glitch frames left
        out (a frame that changes and whose next frame or the one after is back: its change
        and the change back are no measure of the shot's motion)."""
        h, cfg = self.frames, self.cfg
        lo, hi = max(1, i - _NEAR), min(len(h), i + _NEAR + 1)
        skip: set[int] = set()
        for k in range(lo, hi):
            if k == i or k in skip or d[k] < cfg.cut_threshold:
                continue
            for w in (1, 2):  # a flash of one frame or of two
                if k + w < len(h) and k + w != i and change(h[k - 1], h[k + w]) <= cfg.transient_return * d[k]:
                    skip.update(range(k, k + w + 1))
                    break
        return max((float(d[k]) for k in range(lo, hi) if k != i and k not in skip), default=0.0)

    # -- fades through black -------------------------------------------------------------

    def _test_fade(self, final: bool = False) -> None:
        """A dip of the picture's energy to dark, found once it has recovered."""
        cfg = self.cfg
        h, e = self.frames, self.rows.last(len(self.frames))[:, _ENERGY]
        n = len(h)
        if n < 3:
            return
        if self._dark is None:
            if h[-1].index % _BATCH == 0:  # the brightest recent frame, refreshed now and then
                self._top = float(e.max())
            if e[-1] <= cfg.fade_dark * self._top:
                self._dark = h[-1].index
            return
        top = float(e.max())
        k = self._dark - h[0].index  # the dip's darkest frame so far
        if k < 0:
            self._dark = None
            return
        if e[-1] < e[k]:
            self._dark = h[-1].index
            return
        # Wait until the picture is back up (or the stream ends, or the history runs out).
        rising = n >= 3 and e[-1] > e[-2] * 1.01 or e[-1] <= cfg.fade_dark * top
        if rising and not final and n - 1 - k < len(h) - 8:
            return
        self._dark = None
        dark = cfg.fade_dark * top
        s = k  # walk back through held black and up the fade-out...
        while s > 0 and (e[s - 1] <= dark and e[s] <= dark or e[s - 1] > e[s] * (1 + cfg.fade_step)):
            s -= 1
        t = k  # ...and forward, up the fade-in
        while t < n - 1 and (e[t + 1] <= dark and e[t] <= dark or e[t + 1] > e[t] * (1 + cfg.fade_step)):
            t += 1
        if s == 0 or t == n - 1 and not final:
            return  # the fade runs out of the history: too long for a transition
        p, q = h[s], h[min(t, n - 1)]
        if e[k] > cfg.fade_dark * min(e[s], e[t]):
            return  # not deep enough: a darker patch of a shot
        # Frames on the way down or up, between dark and 0.9 of their side: a cut into a dark
        # shot and out of it has none.
        ramps = sum(dark < e[j] <= 0.9 * e[s if j < k else t] for j in range(s + 1, t))
        if ramps < 2:
            return
        # The same scene on both sides (the camera may have moved meanwhile): something passed
        # over the lens, no boundary.
        if same_scene(p, q, cfg):
            return
        self._found.append(Transition(p.index + 1, q.index if t > k else q.index + 1, "fade"))

    # -- dissolves -----------------------------------------------------------------------

    def _test_dissolve(self, final: bool = False) -> None:
        """Spans [s, e) before each of the last `_BATCH` frames e: the frames of a span are a
        mix of the frame before and the frame after (see `_fit`). Spans are tested a batch of
        end frames at a time (numpy's per-call cost, not the arithmetic, is what a frame
        pays); of overlapping fitting spans the best wins."""
        cfg = self.cfg
        n = len(self.frames)
        k = min(_BATCH, n)
        if not final and self.frames[-1].index % _BATCH != _BATCH - 1 or n < 6:
            return
        rows = self.rows.last(n)
        g, fine = rows[:, :48], rows[:, _FINE]
        qpos = np.arange(n - k, n)[:, None]  # the frame after each span
        lengths, a, mid = self.lengths[None, :], self._a[None, :], self._mid[None, :]
        pp = qpos - 1 - lengths  # the frame before it
        valid = pp >= 0
        pp = np.where(valid, pp, 0)
        # The texture dips in the middle of a mix (a cheap first test on the middle frame)...
        fa, fb = fine[pp], fine[qpos]
        lin = (1 - a) * fa + a * fb
        mix = np.sqrt((1 - a) ** 2 * fa * fa + a * a * fb * fb)
        ok = valid & (lin - fine[np.where(valid, qpos - mid, 0)] >= 0.4 * (lin - mix)) & (lin - mix > 0.02 * lin)
        qi, li = np.nonzero(ok)
        if qi.size:
            # ...the two ends differ as two shots do, and the middle frame sits near the
            # middle of the mix.
            p0, q0 = pp[qi, li], qpos[qi, 0]
            diff = g[q0] - g[p0]
            ch = np.sqrt(np.einsum("ij,ij->i", diff, diff) / 48)
            dm = g[q0 - self._mid[li]] - g[p0] - self._a[li, None] * diff
            keep = (ch >= cfg.gradual_change) & (np.einsum("ij,ij->i", dm, dm) <= 48 * (1.5 * cfg.gradual_fit * ch) ** 2)
            for j in np.flatnonzero(keep):
                p, q = int(p0[j]), int(q0[j])
                if any(self.frames[p].index < g <= self.frames[q].index for g in self._gaps):
                    continue  # no mix is measured across a gap in the recording
                if self.frames[p].index < _SETTLE:
                    continue  # the encoder's rate control still settling (see _SETTLE)
                fit = _fit(g[p], g[p + 1 : q], g[q], fine[p], fine[p + 1 : q], fine[q], float(ch[j]), cfg)
                if fit is not None:
                    self._cands.append((fit, self.frames[p + 1].index, self.frames[q].index))
        self._decide_dissolves(None if final else self.frames[-1].index - _BATCH - _NEAR)

    def _decide_dissolves(self, before: int | None) -> None:
        """Groups of overlapping candidate spans that no later span can join: the best of each
        group, its ends refined, is a dissolve."""
        if not self._cands:
            return
        self._cands.sort(key=lambda c: c[1])
        groups, cur, last = [], [self._cands[0]], self._cands[0][2]
        for c in self._cands[1:]:
            if c[1] < last:
                cur.append(c)
                last = max(last, c[2])
            else:
                groups.append((cur, last))
                cur, last = [c], c[2]
        groups.append((cur, last))
        self._cands = []
        i0 = self.frames[0].index
        n = len(self.frames)
        for grp, last in groups:
            if before is not None and last >= before:
                self._cands.append(max(grp))  # a later span may still overlap it: keep its best
                continue
            score, first, end = max(grp)
            if first - 1 - i0 < 0:
                continue
            s, e = _refine(self.rows.last(n)[:, :48], first - i0, end - i0)
            self._found.append(Transition(s + i0, e + i0, "dissolve", score))

    # -- bookkeeping ---------------------------------------------------------------------

    # -- the model's second opinion --------------------------------------------------------

    def _model_scores(self, first: int, p: np.ndarray) -> None:
        """Runs of frames the model calls transition frames: a run of one or two marks a cut
        after it (the model marks the last frame of the old shot), a longer one a gradual
        transition. Each must pass our own checks before it counts (`_model_check`)."""
        above = p > self.cfg.model_threshold
        for k, up in enumerate(above):
            i = first + k
            if up and self._run is None:
                self._run = i
            elif not up and self._run is not None:
                a, self._run = self._run, None
                t = Transition(i, i, "cut") if i - a <= 2 else Transition(a + 1, i, "dissolve")
                if self._model_check(t):
                    self._model.append(t)

    def _model_check(self, t: Transition) -> bool:
        """What the model finds and we did not, where our measurements do not contradict it:
        a cut must change the picture's structure and not come back (TransNetV2 fires on
        flashes), a gradual transition's two sides must differ (it fires on whip pans that
        return and on hands over the lens)."""
        h = self.frames
        i0 = h[0].index
        if t.first - 1 - i0 < 0 or t.end - i0 >= len(h):
            return False
        p, q = h[t.first - 1 - i0], h[t.end - i0]
        if t.first == t.end:
            i = t.end - i0
            d = self.rows.last(len(h))[:, _D]
            # The picture must change more there than on the frames around (TransNetV2 fires
            # mid whip pan and mid crash zoom, where every frame changes as much).
            return (d[i] >= self.cfg.cut_threshold and d[i] >= self.cfg.model_cut_isolation * self._level(d, i)
                    and self._structure(i)[1] >= self.cfg.cut_structure and not _transient(h, i, float(d[i]), self.cfg))
        return not same_scene(p, q, self.cfg)

    def _release(self, settled: int) -> list[Transition]:
        """Transitions no later decision can change (their last frame before `settled`)."""
        if self._model:
            self._adopt_model(settled)
        if not any(t.end < settled for t in self._found):
            return []
        self._found = self._resolve(self._found)
        out = []
        while self._found and self._found[0].end < settled:
            out.append(self._found.pop(0))
        return self._merge_black(out)

    def _adopt_model(self, settled: int | None) -> None:
        """The model's settled boundaries that none of ours covers (within 2 frames) join ours."""
        keep = []
        for t in self._model:
            if settled is not None and t.end >= settled:
                keep.append(t)
            elif not any(o.first - 2 <= t.end and t.first <= o.end + 2 for o in self._found):
                self._found.append(t)
        self._model = keep

    def _flush(self) -> list[Transition]:
        if self._model:
            self._adopt_model(None)
        out, self._found = self._resolve(self._found), []
        return self._merge_black(out)

    @staticmethod
    def _resolve(ts: list[Transition]) -> list[Transition]:
        """Overlaps: a fade takes what it covers; a cut inside a dissolve is what changed the
        picture (the dissolve was its motion); of overlapping dissolves the best fit stays."""
        ts = sorted(ts, key=lambda t: (t.first, t.end))
        fades = [t for t in ts if t.kind == "fade"]
        cuts = [t for t in ts if t.kind == "cut"]
        dissolves = [t for t in ts if t.kind == "dissolve"]
        keep = []
        for t in ts:
            if t.kind != "fade" and any(f.first - 1 <= t.first <= f.end + 1 or t.first <= f.first < t.end for f in fades):
                continue
            if t.kind == "dissolve" and any(t.first <= c.first < t.end for c in cuts):
                continue
            if t.kind == "dissolve" and any(o is not t and o.first < t.end and t.first < o.end and o.score > t.score for o in dissolves):
                continue
            keep.append(t)
        return keep

    def _merge_black(self, keep: list[Transition]) -> list[Transition]:
        """Black frames next to a transition join it; two with only black between are one."""
        black = {f.index for f in self.frames if f.black}
        out: list[Transition] = []
        for t in keep:
            first, end = t.first, t.end
            while first - 1 in black:
                first -= 1
            while end in black:
                end += 1
            if out and first <= out[-1].end and (first, end) != (t.first, t.end):  # only black between the two
                prev = out.pop()
                t = Transition(prev.first, max(prev.end, end), "fade")
            elif (first, end) != (t.first, t.end):
                t = Transition(first, end, "black" if t.kind == "cut" else t.kind)  # a cut to or from black frames
            out.append(t)
        return out


def _refine(g: np.ndarray, first: int, end: int) -> tuple[int, int]:
    """Where a dissolve found as frames [first, end) of `g` really starts and ends.

    The best-fitting span can be a few frames off (its ends may be mixes themselves, or
    motion). Each frame's mixing coefficient between the span's end frames (projection of its
    grid on the change) is flat, ramps linearly, then flat again, whatever frames the span was
    anchored on: fit that shape with free levels and take where the ramp starts and ends."""
    k = end - first
    w = k // 2 + 4
    p, d = g[first - 1], g[end] - g[first - 1]
    js = np.arange(max(0, first - w - 3), min(len(g), end + w + 3))
    a = (g[js] - p) @ d / max(float(d @ d), 1e-6)
    ss_, ee = np.meshgrid(np.arange(max(int(js[0]) + 1, first - w), first + w + 1),
                          np.arange(max(int(js[0]) + 4, end - w), min(int(js[-1]), end + w) + 1), indexing="ij")
    ss_, ee = ss_.ravel(), ee.ravel()
    keep = ee >= ss_ + 3
    ss_, ee = ss_[keep], ee[keep]
    if ss_.size == 0:
        return first, end
    # a_j ~ c0 (1 - r_j) + c1 r_j for every (s, e) at once: 2x2 normal equations.
    r = np.clip((js[None, :] - ss_[:, None] + 1) / (ee - ss_ + 1)[:, None], 0.0, 1.0)
    u = 1 - r
    suu, sur, srr = (u * u).sum(1), (u * r).sum(1), (r * r).sum(1)
    sua, sra = u @ a, r @ a
    det = np.maximum(suu * srr - sur * sur, 1e-9)
    c0, c1 = (srr * sua - sur * sra) / det, (suu * sra - sur * sua) / det
    err = float(a @ a) - c0 * sua - c1 * sra  # residual sum of squares at the optimum
    j = int(np.argmin(err))
    return int(ss_[j]), int(ee[j])


def _fit(gp, grids, gq, fp, fine, fq, change_rms: float, cfg: SplitConfig) -> float | None:
    """A score when the frames between are a dissolve from the frame before to the one after.

    Each frame's 4x4 grid must be (1-a) gp + a gq with a ramping linearly (`gradual_fit`),
    and its fine texture must dip as mixing two unrelated pictures predicts, neither much
    less (motion) nor much more (blur: whip pans, crash zooms) than predicted."""
    k = len(grids)
    a = np.arange(1, k + 1, dtype=np.float32) / (k + 1)
    resid = grids - (gp[None, :] + a[:, None] * (gq - gp)[None, :])
    misfit = float(np.sqrt(np.mean(resid * resid))) / max(change_rms, 1e-3)
    if misfit > cfg.gradual_fit:
        return None
    lin = (1 - a) * fp + a * fq
    mix = np.sqrt((1 - a) ** 2 * fp * fp + a * a * fq * fq)
    den = float(((lin - mix) ** 2).sum())
    dip = float(((lin - fine) * (lin - mix)).sum()) / den if den > 1e-6 else 0.0
    if not cfg.gradual_dip <= dip <= cfg.gradual_dip_max:
        return None
    # The texture follows the mixing curve frame by frame, not just lower somewhere in the
    # middle (shake and blur make it jump about).
    wobble = float(np.sqrt(np.mean((fine - mix) ** 2))) / max(float((lin - mix).max()), 1e-3)
    if wobble > cfg.gradual_texture_fit:
        return None
    return 1.0 - abs(1.0 - dip) - misfit


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
    as they are known, so a caller only buffers frames of the open window. A `dropped` frame
    (a transition's) is in no window: it closes the open one, the next kept frame opens one.
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

    def push(self, index: int, t: float, is_cut: bool, dropped: bool = False) -> list[Window]:
        out: list[Window] = []
        if dropped:
            out = self._close(index, t)
            self.start = None
        elif self.start is None:
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


class Splitter:
    """Thumbnails in, clip windows out: the detector's decisions applied to the frames they
    concern. Frames reach the windows only once no later decision can change them (the
    detector's lag), so a window never closes over a transition found later; a gradual
    transition's frames and a margin around them go into no window."""

    def __init__(self, cfg: SplitConfig, model=None):
        self.cfg = cfg
        self.detector = ShotDetector(cfg, model)
        self.windower = Windower(cfg)
        self.frames: deque[tuple[int, float]] = deque()  # pushed, not yet windowed
        self.transitions: list[Transition] = []
        self._cuts: set[int] = set()
        self._drops: list[tuple[int, int]] = []  # [first, end) to leave out, with margins

    @property
    def last_blur(self) -> np.ndarray:
        """The newest pushed frame's thumbnail after its 3x3 blur (`describe`)."""
        return self.detector.frames[-1].blur

    @property
    def start(self) -> int | None:
        """The first frame a window may still need."""
        if self.windower.start is not None:
            return self.windower.start
        return self.frames[0][0] if self.frames else None

    def push(self, index: int, t: float, thumb: np.ndarray, step: float = 1.0) -> list[Window]:
        """`step`: time since the previous frame in nominal frame durations (Frame.step)."""
        self.frames.append((index, t))
        self._take(self.detector.push(index, thumb, step))
        # A transition is released once final (settle_lag after its end) and spans at most
        # gradual_max_frames: frames older than that and its margin can go into windows.
        return self._advance(index - self.detector.settle_lag - int(self.cfg.gradual_max_frames) - self._margin_max())

    def finish(self, end: int, end_t: float) -> list[Window]:
        self._take(self.detector.finish())
        out = self._advance(end)
        return out + self.windower.finish(end, end_t)

    def _margin(self, t: Transition) -> int:
        """Frames dropped beyond an estimated span: a dissolve's ends are fitted (a few frames
        off at worst), a fade's ramp is measured frame by frame, black frames and cuts are exact."""
        if t.kind == "dissolve":
            return max(2, int(round(self.cfg.gradual_margin * (t.end - t.first))))
        return 1 if t.kind == "fade" else 0

    def _margin_max(self) -> int:
        return max(1, int(round(self.cfg.gradual_margin * self.cfg.gradual_max_frames)))

    def _take(self, ts: list[Transition]) -> None:
        for t in ts:
            self.transitions.append(t)
            if t.first == t.end:
                self._cuts.add(t.first)
            else:
                m = self._margin(t)
                self._drops.append((max(0, t.first - m), t.end + m))

    def _advance(self, upto: int) -> list[Window]:
        out: list[Window] = []
        while self.frames and self.frames[0][0] < upto:
            i, t = self.frames.popleft()
            dropped = bool(self._drops) and any(a <= i < b for a, b in self._drops)
            out += self.windower.push(i, t, i in self._cuts, dropped)
        if self._drops:
            self._drops = [d for d in self._drops if d[1] > upto]
        return out
