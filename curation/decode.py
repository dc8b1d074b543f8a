"""Decode a video once, sequentially, and hand every scorer the view of each frame it needs.

Why PyAV and not decord: our access pattern is one sequential pass over every frame (cut
detection needs them all). Measured here (bench/cpu_stages.py prints it), PyAV's threaded
sequential decode beats decord's, and decord 0.6 is unmaintained (leaks, wrong frames on
irregular timestamps, `get_batch` deadlocks).

Per frame the pass keeps only what is cheap:
* every frame: a strided thumbnail of the Y, U and V planes, read straight from the decoded
  planes with no colour conversion or scaling (cut detection);
* at `motion_fps`: a grey frame at the working short side (optical flow);
* at `tags_fps`: an RGB frame at the tags short side (text, sharpness, colours, borders).
Only sampled frames pay for swscale, so the pass stays decode-bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import av
import numpy as np

from curation.media import MediaError, display_rotation, open_container

_PLANAR_8BIT = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p"}


@dataclass
class Frame:
    index: int
    t: float  # presentation time in seconds
    thumb: np.ndarray  # (h, w, 3) uint8 Y/U/V at thumbnail size (display orientation)
    gray: np.ndarray | None = None  # (h, w) uint8 at working size, on motion samples
    rgb: np.ndarray | None = None  # (h, w, 3) uint8 at tags size, on tag samples


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the short side set to `short_side` (never upscaled), both even."""
    s = min(1.0, short_side / min(width, height))
    return max(2, int(round(width * s / 2)) * 2), max(2, int(round(height * s / 2)) * 2)


def _plane(frame: av.VideoFrame, i: int) -> np.ndarray:
    p = frame.planes[i]
    return np.frombuffer(p, dtype=np.uint8).reshape(p.height, p.line_size)[:, : p.width]


def yuv_thumb(frame: av.VideoFrame, thumb_width: int) -> np.ndarray:
    """Nearest-neighbour Y/U/V thumbnail read straight from the planes (no swscale)."""
    if frame.format.name not in _PLANAR_8BIT:
        frame = frame.reformat(format="yuv420p")
    step = max(1, frame.width // thumb_width)
    rows = np.arange(0, frame.height, step)
    cols = np.arange(0, frame.width, step)
    out = np.empty((len(rows), len(cols), 3), np.uint8)
    for i in range(3):
        p = _plane(frame, i)
        fy, fx = frame.height // p.shape[0], frame.width // p.shape[1]  # chroma subsampling
        out[..., i] = p[np.ix_(rows // fy, cols // fx)]
    return out


def iter_frames(
    uri: str,
    *,
    thumb_width: int,
    work_short_side: int,
    motion_fps: float,
    tags_short_side: int,
    tags_fps: float,
    threads: int = 0,
) -> Iterator[Frame]:
    """Yield every frame of `uri` in presentation order. Raises MediaError on a broken stream."""
    with open_container(uri) as c:
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        if threads:
            vs.codec_context.thread_count = threads
        next_motion = next_tags = None
        index = 0
        last_t = -1.0
        try:
            for frame in c.decode(vs):
                t = float(frame.time) if frame.time is not None else (last_t + 1 / 25 if index else 0.0)
                if t <= last_t:  # broken/missing timestamps: keep time strictly increasing
                    t = last_t + 1e-3
                rot = display_rotation(frame) // 90
                out = Frame(index=index, t=t, thumb=np.rot90(yuv_thumb(frame, thumb_width), rot))
                if next_motion is None:
                    next_motion = next_tags = t
                if t + 1e-6 >= next_motion:
                    next_motion += 1.0 / motion_fps * max(1, int((t - next_motion) * motion_fps) + 1)
                    w, h = scaled_size(frame.width, frame.height, work_short_side)
                    # .copy(): an array from a reformatted frame can outlive its buffer in
                    # PyAV 18 (seen as SIGSEGV in cv2 inside Ray workers); own the pixels.
                    g = frame.reformat(width=w, height=h, format="gray", interpolation="AREA").to_ndarray().copy()
                    out.gray = np.ascontiguousarray(np.rot90(g, rot))
                if t + 1e-6 >= next_tags:
                    next_tags += 1.0 / tags_fps * max(1, int((t - next_tags) * tags_fps) + 1)
                    w, h = scaled_size(frame.width, frame.height, tags_short_side)
                    rgb = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray().copy()
                    out.rgb = np.ascontiguousarray(np.rot90(rgb, rot))
                yield out
                last_t = t
                index += 1
        except av.error.FFmpegError as e:
            raise MediaError(
                f"truncated or corrupt video: decoding failed after {index} frames "
                f"({last_t if last_t >= 0 else 0:.2f} s): {getattr(e, 'strerror', None) or e}"
            ) from None
