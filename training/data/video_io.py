"""Decode one training sample to its bucket's shape: frames picked by time, resized to cover
the bucket, centre-cropped. Returns uint8 (F, H, W, 3); the caller makes the tensor.

Video: PyAV on the sample's bytes in memory. A training clip is short and we need a run of
frames from its start, so one sequential decode that stops after the last frame needed is
both the fastest and the exact way (no seeking, whose keyframe snapping decord gets wrong on
some files); bench/loader_decode.py measures it against decord's `get_batch` for this pattern
(figures in bench/RESULTS.md). Only the frames picked are scaled, through one reused swscale
context per call (`frame.reformat` builds a fresh context every time, which costs more than
decoding).

Frame picking: output frame k shows time `start_s + k / fps` (seconds from the first decoded
frame), and the source frame nearest that time is taken (ties go to the earlier frame). A
bucket rate below the clip's drops frames, one above repeats them; a time past the last frame
by at most one frame interval takes the last frame (the clip's metadata and its file may
round the duration differently), further than that is an error: the planner checked the
duration before, so this means the file is shorter than its metadata says.

Images: PIL (EXIF orientation applied), the same cover-and-crop.
"""

from __future__ import annotations

import io
import math
from typing import Sequence

import av
import cv2
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter
from PIL import Image, ImageOps


class DecodeError(Exception):
    """A sample's media does not decode to what its metadata promised."""


def cover_size(width: int, height: int, out_w: int, out_h: int) -> tuple[int, int]:
    """The size that keeps the aspect ratio and covers (out_w, out_h): crop, never pad."""
    s = max(out_w / width, out_h / height)
    return max(out_w, round(width * s)), max(out_h, round(height * s))


def crop_origin(width: int, height: int, out_w: int, out_h: int) -> tuple[int, int]:
    """Top-left corner of the centred (out_w, out_h) window in a (width, height) image."""
    return (width - out_w) // 2, (height - out_h) // 2


def frame_times(frames: int, fps: float, start_s: float = 0.0) -> list[float]:
    return [start_s + k / fps for k in range(frames)]


def decode_video(data: bytes, *, width: int, height: int, times: Sequence[float]) -> np.ndarray:
    """(len(times), height, width, 3) uint8: the frames nearest `times` (seconds from the
    first frame, non-decreasing), covering (width, height) and centre-cropped."""
    if not times:
        raise ValueError("times: need at least one frame time")
    out: list[np.ndarray] = []
    scaler = _Scaler(width, height)
    try:
        with av.open(io.BytesIO(data), mode="r") as c:
            if not c.streams.video:
                raise DecodeError("no video stream")
            vs = c.streams.video[0]
            # One thread: DataLoader workers are the parallelism, and more threads per
            # worker only oversubscribe the cores.
            vs.codec_context.thread_count = 1
            rate = float(vs.average_rate or vs.guessed_rate or 25)
            prev, prev_t, t0, n, interval = None, 0.0, None, 0, 1.0 / rate
            for frame in c.decode(vs):
                t = float(frame.time) if frame.time is not None else n / rate
                t0 = t if t0 is None else t0
                t -= t0
                if prev is not None and t > prev_t:
                    interval = t - prev_t
                while len(out) < len(times) and times[len(out)] <= t:
                    want = times[len(out)]
                    pick = prev if prev is not None and want - prev_t <= t - want else frame
                    out.append(scaler(pick))
                if len(out) == len(times):
                    break  # decode no further than needed
                prev, prev_t, n = frame, t, n + 1
    except av.error.FFmpegError as e:
        raise DecodeError(f"video does not decode: {getattr(e, 'strerror', None) or e}") from None
    if prev is None and not out:
        raise DecodeError("video has no frames")
    while len(out) < len(times):  # times past the last frame
        late = times[len(out)] - prev_t
        if late > interval + 1e-3:
            raise DecodeError(f"video ends at {prev_t:.3f} s, {late:.3f} s before frame time {times[len(out)]:.3f} s")
        out.append(scaler(prev))
    return np.stack(out)


class _Scaler:
    """Rotate for display, scale to cover, centre-crop; caches the last frame it converted
    (a bucket rate above the clip's picks one source frame several times in a row)."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.reformatter = VideoReformatter()
        self.last: tuple[object, np.ndarray] | None = None

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if self.last is not None and self.last[0] is frame:
            return self.last[1]
        rot = round(frame.rotation / 90.0) % 4  # counter-clockwise quarter turns for display
        w, h = (frame.height, frame.width) if rot % 2 else (frame.width, frame.height)
        sw, sh = cover_size(w, h, self.width, self.height)
        coded_w, coded_h = (sh, sw) if rot % 2 else (sw, sh)
        if sw <= w:
            # Shrinking: swscale's AREA averages (no aliasing), converting and scaling in one pass.
            small = self.reformatter.reformat(frame, width=coded_w, height=coded_h, format="rgb24",
                                              interpolation=Interpolation.AREA, threads=1)
            # Copy while `small` is alive: the reused context recycles its output buffer and
            # PyAV 18 can free it under a live numpy view.
            coded = small.to_ndarray()
        else:
            # Enlarging: convert at the source size, then OpenCV's bicubic, ~4x faster than
            # swscale's bicubic on decoded frames (bench/loader_decode.py, bench/RESULTS.md).
            src = self.reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
            coded = cv2.resize(src, (coded_w, coded_h), interpolation=cv2.INTER_CUBIC)
        rgb = np.rot90(coded, rot) if rot else coded
        x0, y0 = crop_origin(sw, sh, self.width, self.height)
        arr = rgb[y0 : y0 + self.height, x0 : x0 + self.width].copy()
        self.last = (frame, arr)
        return arr


def decode_image(data: bytes, *, width: int, height: int) -> np.ndarray:
    """(1, height, width, 3) uint8: the image covering (width, height), centre-cropped."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            sw, sh = cover_size(im.width, im.height, width, height)
            # PIL's resize filters widen with the scale factor, so shrinking is antialiased.
            im = im.resize((sw, sh), Image.Resampling.BICUBIC)
            x0, y0 = crop_origin(sw, sh, width, height)
            arr = np.asarray(im.crop((x0, y0, x0 + width, y0 + height)))
    except (OSError, Image.DecompressionBombError) as e:
        raise DecodeError(f"image does not decode: {e}") from None
    return arr[None].copy()


def time_slack(duration_s: float, clip_fps: float, frames: int, fps: float) -> float | None:
    """Slack in seconds when `frames` frames at `fps` fit in a clip of `duration_s` seconds
    sampled at `clip_fps` (the last frame shows at duration - 1/clip_fps); None when not."""
    if not (duration_s > 0 and clip_fps > 0 and math.isfinite(duration_s)):
        return None
    slack = (duration_s - 1.0 / clip_fps) - (frames - 1) / fps
    return max(0.0, slack) if slack > -1e-6 else None
