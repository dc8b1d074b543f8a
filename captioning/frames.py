"""The frames a captioner sees, and their timing: ~2 fps, capped in count and in pixels per frame.

Two sources (`caption.frame_source`), measured against each other in bench/captions.py:

* ``pipeline``: the frames the analysis pass already decoded for the model stages (the
  transient ``frames`` columns of curation/core/frames.py), resampled to the caption policy;
* ``clip``: the extracted clip file (OUT/clips/<clip_id>.mp4): small, already at training size,
  decoded here with PyAV, keeping the frame showing at each sample time.

``auto`` takes the pipeline's frames when a row carries them, else the clip file.

Long clips (`caption.policy`): ``spread`` samples the whole clip at ``fps``, at most
``max_frames`` spread over it; ``windows`` cuts it into windows (`windows`: Cosmos-Curate's
rule) and samples each window the same way, one `Sampled` per window, decoded in one pass.

Either way the result is a `Sampled`: the frames *and* where they sit in the clip (frame
indices at the clip's own frame rate, the clip's frame count and duration). A video model
needs that timing as much as the pixels: Qwen2.5-VL spaces its temporal rope positions by
``second_per_grid_ts`` = temporal_patch_size / sampling rate, SmolVLM2 writes the clip's
duration and each frame's time into its prompt. transformers 5 takes the timing only from a
per-video ``VideoMetadata`` (its ``fps=`` keyword is ignored for frames handed over as
arrays, and a missing metadata falls back to 24 fps), so `Sampled.metadata` gives exactly
that, one per clip (captioning/backends.py hands it over).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import av
import cv2
import numpy as np

from curation.media.container import MediaError, open_container


@dataclass(frozen=True)
class Sampled:
    """Frames sampled from one clip, with the timing a processor or server needs.

    frames: (K, h, w, 3) uint8 RGB. frame_indices: K indices into the clip's frames at
    ``source_fps`` (0 = the clip's first frame). total_frames: frames in the clip.
    duration_s = total_frames / source_fps. A still image is K = 1, total_frames = 1."""

    frames: np.ndarray
    frame_indices: tuple[int, ...]
    source_fps: float
    total_frames: int
    start_frame: int = 0  # a window: where its frame 0 is in the clip (the model sees the window as the video)

    @property
    def duration_s(self) -> float:
        return self.total_frames / self.source_fps

    @property
    def span_s(self) -> tuple[float, float]:
        """The seconds of the clip these frames stand for: the window, or the whole clip."""
        return self.start_frame / self.source_fps, (self.start_frame + self.total_frames) / self.source_fps

    @property
    def times_s(self) -> np.ndarray:
        """(K,) seconds from the clip's first frame: frame index / frame rate (as transformers'
        ``VideoMetadata.timestamps`` computes them)."""
        return np.asarray(self.frame_indices, np.float64) / self.source_fps

    @property
    def rate(self) -> float:
        """Sampling rate in frames/s: K / duration (transformers' ``VideoMetadata.sampled_fps``)."""
        return len(self.frame_indices) / self.duration_s

    def metadata(self) -> dict:
        """The fields of transformers' ``VideoMetadata`` for this clip."""
        return {"total_num_frames": self.total_frames, "fps": self.source_fps, "duration": self.duration_s,
                "frames_indices": list(self.frame_indices), "height": int(self.frames.shape[1]),
                "width": int(self.frames.shape[2])}

    def subset(self, idx) -> "Sampled":
        """The frames at positions `idx` (of this sample), same clip timing."""
        idx = list(idx)
        return replace(self, frames=self.frames[idx], frame_indices=tuple(self.frame_indices[i] for i in idx))


def windows(total_frames: int, size: int) -> list[tuple[int, int]]:
    """(first frame, frame count) of each window of a clip: windows of `size` frames; a remainder
    of at least half a window is a window of its own, a shorter one joins the last window
    (Cosmos-Curate's captioning windows: 256 frames, remainder threshold 128). A clip of at most
    `size` frames is one window."""
    total_frames = max(1, int(total_frames))
    full, rest = divmod(total_frames, size)
    if full == 0:
        return [(0, total_frames)]
    out = [(i * size, size) for i in range(full)]
    if rest * 2 >= size:
        out.append((full * size, rest))
    elif rest:
        out[-1] = (out[-1][0], size + rest)
    return out


def sample_times(duration_s: float, fps: float, max_frames: int) -> np.ndarray:
    """Sample times in seconds from the clip start: every 1/fps, at the middle of each interval;
    when that is more than `max_frames`, `max_frames` times spread evenly over the clip."""
    n = max(1, int(math.floor(duration_s * fps + 1e-6)))
    if n > max_frames:
        n = max_frames
    return (np.arange(n) + 0.5) * (duration_s / n)


def cap_pixels(frame: np.ndarray, max_pixels: int) -> np.ndarray:
    """Scale (H, W, 3) down (area filter) so H*W <= max_pixels; never upscaled."""
    h, w = frame.shape[:2]
    if h * w <= max_pixels:
        return frame
    s = math.sqrt(max_pixels / (h * w))
    return cv2.resize(frame, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA)


def pick(frames: np.ndarray, times: list[float], *, start_s: float, source_fps: float, total_frames: int,
         fps: float, max_frames: int, max_pixels: int) -> Sampled:
    """Resample already-decoded frames to the caption policy.

    frames (K, H, W, 3) uint8 with their presentation times `times` (seconds, the source's
    clock); the clip starts at `start_s` and holds `total_frames` frames at `source_fps`. Each
    sample time (`sample_times` over the clip) takes the carried frame showing at it."""
    total_frames = max(1, int(total_frames))
    t = np.asarray(times, np.float64) - start_s
    want = sample_times(total_frames / source_fps, fps, max_frames)
    idx = np.unique(np.clip(np.searchsorted(t, want + 1e-6, side="right") - 1, 0, len(t) - 1))
    where = np.clip(np.round(t[idx] * source_fps).astype(np.int64), 0, total_frames - 1)
    return Sampled(np.stack([cap_pixels(frames[i], max_pixels) for i in idx]), tuple(int(k) for k in where),
                   float(source_fps), total_frames)


def pick_windows(frames: np.ndarray, times: list[float], *, start_s: float, source_fps: float, total_frames: int,
                 fps: float, max_frames: int, max_pixels: int, window_frames: int) -> list[Sampled]:
    """`pick` per window of the clip (`windows`): one `Sampled` each, its timing the window's."""
    out = []
    for first, n in windows(total_frames, window_frames):
        got = pick(frames, times, start_s=start_s + first / source_fps, source_fps=source_fps, total_frames=n,
                   fps=fps, max_frames=max_frames, max_pixels=max_pixels)
        out.append(replace(got, start_frame=first))
    return out


def read_clip(path: str | Path, fps: float, max_frames: int, max_pixels: int) -> Sampled:
    """Decode the sampled frames of a clip file (video or image). MediaError when unreadable."""
    return read_windows(path, fps, max_frames, max_pixels, None)[0]


def read_windows(path: str | Path, fps: float, max_frames: int, max_pixels: int, window_frames: int | None) -> list[Sampled]:
    """The sampled frames of a clip file per window (`windows`; None: the whole clip as one),
    in one decoding pass. An image is one frame. MediaError when unreadable."""
    path = str(path)
    if Path(path).suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"):
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise MediaError(f"cannot read image {path}", code="caption_frames")
        return [Sampled(cap_pixels(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), max_pixels)[None], (0,), 1.0, 1)]
    with open_container(path) as c:
        if not c.streams.video:
            raise MediaError(f"{path}: no video stream", code="caption_frames")
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        rate = float(s.average_rate or s.guessed_rate or 0)
        duration = float(s.duration * s.time_base) if s.duration else float(c.duration or 0) / av.time_base
        if duration <= 0 or rate <= 0:
            raise MediaError(f"{path}: unknown duration or frame rate", code="caption_frames")
        total = int(s.frames) or max(1, round(duration * rate))
        start = float(s.start_time * s.time_base) if s.start_time is not None else 0.0
        spans = windows(total, window_frames) if window_frames else [(0, total)]
        # Every window's sample times, in order: (window, time in the clip).
        want = [(w, first / rate + t) for w, (first, n) in enumerate(spans) for t in sample_times(n / rate, fps, max_frames)]
        got, where, last, n = [], [], None, -1
        try:
            for frame in c.decode(s):
                t = float(frame.pts * s.time_base) - start if frame.pts is not None else (n + 1) / rate
                while want and t > want[0][1] + 1e-6 and last is not None:  # the frame showing at want[0] is `last`
                    got.append((want.pop(0)[0], last))
                    where.append(n)
                if not want:
                    break
                last, n = cap_pixels(frame.to_ndarray(format="rgb24"), max_pixels), n + 1
        except av.error.FFmpegError as e:
            raise MediaError(f"{path}: decoding failed ({e})", code="caption_frames") from None
        if last is not None:  # the tail: the last frame decoded is showing
            got += [(w, last) for w, _ in want]
            where += [n] * len(want)
    if not got:
        raise MediaError(f"{path}: no frames decoded", code="caption_frames")
    total = max(total, n + 1)
    out = []
    for w, (first, count) in enumerate(spans):
        if w == len(spans) - 1:
            count = total - first  # the last window ends with the clip
        idx = [i for i, (ww, _) in enumerate(got) if ww == w]
        if not idx:
            continue
        keep = np.unique([where[i] for i in idx], return_index=True)[1]  # a frame shown at two sample times is sent once
        frames = np.stack([got[idx[k]][1] for k in keep])
        rel = tuple(int(min(max(where[idx[k]] - first, 0), count - 1)) for k in keep)
        out.append(Sampled(frames, rel, rate, count, start_frame=first))
    return out
