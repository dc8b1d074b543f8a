"""The frames a captioner sees: ~2 fps, capped in count and in pixels per frame.

Two sources (`caption.frame_source`), measured against each other in bench/captioning.py:

* ``pipeline``: the frames the analysis pass already decoded for the model stages (the
  transient ``frames`` columns of curation/frames.py), resampled to the caption policy;
* ``clip``: the extracted clip file (OUT/clips/<clip_id>.mp4): small, already at training size,
  decoded here with PyAV, keeping the frame showing at each sample time.

``auto`` takes the pipeline's frames when a row carries them, else the clip file.
"""

from __future__ import annotations

import math
from pathlib import Path

import av
import cv2
import numpy as np

from curation.media import MediaError, open_container


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


def pick(frames: np.ndarray, times: list[float], fps: float, max_frames: int, max_pixels: int) -> tuple[np.ndarray, float]:
    """Resample already-decoded frames (K, H, W, 3) with their times to the caption policy.
    -> (frames (N, h, w, 3) uint8, the effective sample rate in frames/s)."""
    t = np.asarray(times, np.float64) - times[0]
    span = float(t[-1] + (t[1] - t[0] if len(t) > 1 else 1.0 / fps))
    want = sample_times(span, fps, max_frames)
    idx = np.unique(np.clip(np.searchsorted(t, want, side="right") - 1, 0, len(t) - 1))
    out = np.stack([cap_pixels(frames[i], max_pixels) for i in idx])
    return out, len(idx) / span if span > 0 else fps


def read_clip(path: str | Path, fps: float, max_frames: int, max_pixels: int) -> tuple[np.ndarray, float]:
    """Decode the sampled frames of a clip file (video or image).
    -> (frames (N, h, w, 3) uint8 RGB, sample rate in frames/s). MediaError when unreadable."""
    path = str(path)
    if Path(path).suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"):
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise MediaError(f"cannot read image {path}", code="caption_frames")
        return cap_pixels(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), max_pixels)[None], fps
    with open_container(path) as c:
        if not c.streams.video:
            raise MediaError(f"{path}: no video stream", code="caption_frames")
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        duration = float(s.duration * s.time_base) if s.duration else float(c.duration or 0) / av.time_base
        if duration <= 0:
            raise MediaError(f"{path}: unknown duration", code="caption_frames")
        start = float(s.start_time * s.time_base) if s.start_time is not None else 0.0
        want, got, last = list(sample_times(duration, fps, max_frames)), [], None
        try:
            for frame in c.decode(s):
                t = float(frame.pts * s.time_base) - start if frame.pts is not None else 0.0
                while want and t > want[0] + 1e-6 and last is not None:  # the frame showing at want[0] is `last`
                    got.append(last)
                    want.pop(0)
                if not want:
                    break
                last = cap_pixels(frame.to_ndarray(format="rgb24"), max_pixels)
        except av.error.FFmpegError as e:
            raise MediaError(f"{path}: decoding failed ({e})", code="caption_frames") from None
        got += [last] * (len(want) if last is not None else 0)  # the tail: the last frame is showing
    if not got:
        raise MediaError(f"{path}: no frames decoded", code="caption_frames")
    return np.stack(got), len(got) / duration
