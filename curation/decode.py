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
Only sampled frames pay for swscale (through reused contexts), and decoding runs in its
own thread ahead of the scorers, so the pass stays decode-bound.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from dataclasses import dataclass
from typing import Iterator

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from curation.media import MediaError, display_rotation, open_container

_PLANAR_8BIT = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p"}


@dataclass
class Frame:
    index: int
    t: float  # presentation time in seconds
    rotation: int  # display rotation of the decoded frame, counter-clockwise degrees
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
    """Nearest-neighbour Y/U/V thumbnail read straight from the planes (no swscale).

    The step is a multiple of the chroma subsampling, so every plane is a plain strided view
    and only the small result is copied."""
    if frame.format.name not in _PLANAR_8BIT:
        frame = frame.reformat(format="yuv420p")
    y = _plane(frame, 0)
    u, v = _plane(frame, 1), _plane(frame, 2)
    fy, fx = frame.height // u.shape[0], frame.width // u.shape[1]  # chroma subsampling
    f = max(fx, fy)
    step = max(f, frame.width // thumb_width // f * f)
    planes = [y[::step, ::step], u[:: step // fy, :: step // fx], v[:: step // fy, :: step // fx]]
    h = min(p.shape[0] for p in planes)
    w = min(p.shape[1] for p in planes)
    return np.stack([p[:h, :w] for p in planes], axis=-1)


class _Sampler:
    """Reformats sampled frames with one reused swscale context per output kind (a fresh
    context per call costs more than decoding a small frame)."""

    def __init__(self, short_side: int, fmt: str, fps: float):
        self.short_side, self.fmt, self.fps = short_side, fmt, fps
        self.next_t: float | None = None
        self.reformatter = VideoReformatter()

    def due(self, t: float) -> bool:
        if self.next_t is None:
            self.next_t = t
        if t + 1e-6 < self.next_t:
            return False
        self.next_t += (1.0 / self.fps) * max(1, int((t - self.next_t) * self.fps) + 1)
        return True

    def take(self, frame: av.VideoFrame, rot: int) -> np.ndarray:
        w, h = scaled_size(frame.width, frame.height, self.short_side)
        small = self.reformatter.reformat(frame, width=w, height=h, format=self.fmt, interpolation="AREA", threads=1)
        # .copy(): the reused context recycles its output buffer, and an array from a
        # reformatted frame can outlive that buffer (seen as SIGSEGV in cv2 inside Ray
        # workers); own the pixels before the next call.
        return np.ascontiguousarray(np.rot90(small.to_ndarray().copy(), rot))


def _decode(uri: str, thumb_width: int, motion: _Sampler, tags: _Sampler, threads: int) -> Iterator[Frame]:
    with open_container(uri) as c:
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        if threads:
            vs.codec_context.thread_count = threads
        index = 0
        last_t = -1.0
        try:
            for frame in c.decode(vs):
                t = float(frame.time) if frame.time is not None else (last_t + 1 / 25 if index else 0.0)
                if t <= last_t:  # broken/missing timestamps: keep time strictly increasing
                    t = last_t + 1e-3
                rot = display_rotation(frame) // 90
                out = Frame(index=index, t=t, rotation=rot * 90, thumb=np.rot90(yuv_thumb(frame, thumb_width), rot))
                if motion.due(t):
                    out.gray = motion.take(frame, rot)
                if tags.due(t):
                    out.rgb = tags.take(frame, rot)
                yield out
                last_t = t
                index += 1
        except av.error.FFmpegError as e:
            why = getattr(e, "strerror", None) or e
            if index == 0:
                raise MediaError(f"video stream does not decode ({why})") from None
            raise MediaError(f"truncated or corrupt video: decoding failed after {index} frames ({last_t:.2f} s): {why}") from None


_END = object()


def iter_frames(
    uri: str,
    *,
    thumb_width: int,
    work_short_side: int,
    motion_fps: float,
    tags_short_side: int,
    tags_fps: float,
    threads: int = 0,
    prefetch: int = 32,
) -> Iterator[Frame]:
    """Yield every frame of `uri` in presentation order. Raises MediaError on a broken stream.

    Decoding (and the cheap per-frame views) runs in a background thread, `prefetch` frames
    ahead, so it overlaps the caller's scoring: FFmpeg, swscale, OpenCV and numpy all
    release the GIL in their heavy parts."""
    motion = _Sampler(work_short_side, "gray", motion_fps)
    tags = _Sampler(tags_short_side, "rgb24", tags_fps)
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def put(item: object) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            with contextlib.closing(_decode(uri, thumb_width, motion, tags, threads)) as frames:
                for fr in frames:
                    if stop.is_set():
                        return
                    put(fr)
            put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer and re-raised there
            put(e)

    worker = threading.Thread(target=produce, name=f"decode:{uri}", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()
