"""Decode a video once, sequentially, and hand every scorer the view of each frame it needs.

Why one module: the pass is one loop and its parts (the timestamp policy `Timeline`, the reorder
buffer, the per-rate samplers, the decode thread that runs ahead) are tuned against each other:
which frames are held, when swscale runs, what a stall is. Extraction times its frames with the
same `decoded_frames`: one timestamp policy, in one file, is what keeps analysis and extraction
agreeing frame by frame.

Why PyAV and not decord: our access pattern is one sequential pass over every frame (cut
detection needs them all). Measured here (bench/cpu_stages.py prints it), PyAV's threaded
sequential decode beats decord's, and decord 0.6 is unmaintained (leaks, wrong frames on
irregular timestamps, `get_batch` deadlocks).

Per frame the pass keeps only what is cheap:
* every frame: a strided thumbnail of the Y, U and V planes, read straight from the decoded
  planes with no colour conversion or scaling (cut detection; `ThumbReader`);
* at `motion_fps`: a grey frame at the working short side (optical flow);
* at `tags_fps`: an RGB frame at the tags short side (text, sharpness, colours, borders);
* at the model-frame rate (`RunConfig.frames_plan`): an RGB frame for the model stages.
Only sampled frames pay for swscale (through reused contexts, in the scorers' thread), decoding
runs in its own thread ahead of the scorers, and no decoded frame is held past the next decode
unless it is sampled or the stream needs its stamps reordered (`reorder_depth`: held frames cost
as much as decoding).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Iterator

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter

from curation.core.config_loader import check_positive
from curation.media.container import (
    MediaError,
    declared_video_span,
    display_rotation,
    display_size,
    nominal_rate,
    open_container,
    video_stream,
)


@dataclass(frozen=True, kw_only=True)
class DecodeConfig:
    work_short_side: int = 128  # optical flow runs on grey frames at this short side
    cut_thumb_width: int = 64  # cut detection runs on thumbnails this wide
    threads: int = 0  # FFmpeg decode threads; 0: the stage's num_cpus (what Ray reserved for it)
    # Frames (and images) over this many pixels are refused from their header, before any
    # decoding: 100 Mpx holds 8K video (33 Mpx) and large photos, and bounds one decoded
    # RGB frame to 300 MB; a forged header claiming 60000x60000 would need ~10 GB a frame.
    max_pixels: int = 100_000_000
    # A decoder that yields no frame for this long fails its item (error_code "timeout").
    stall_timeout_s: float = 120.0
    # Frames (and images) with a shorter side than this are refused from their header
    # (error_code "too_small"): optical flow (OpenCV's DIS) needs its 8 px patch at its finest
    # pyramid scale, 1/4, so 32 px; a 2400x10 strip made it raise. Far below any training size.
    min_side: int = 32

    def __post_init__(self) -> None:
        check_positive(self, "work_short_side", "cut_thumb_width", "max_pixels", "stall_timeout_s", "min_side")


_PLANAR_8BIT = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p"}


@dataclass
class Frame:
    index: int
    t: float  # presentation time in seconds
    rotation: int  # display rotation of the decoded frame, counter-clockwise degrees
    size: tuple[int, int]  # (w, h) as displayed: sample aspect ratio, then rotation, applied
    # Time since the previous frame in nominal frame durations (DecodeStats.frame_s): 1 at the
    # declared rate, 2 where a phone drops from 30 to 15 fps, 13 after a 0.4 s recording gap at
    # 30 fps. What changes between two frames grows with the time between them: a detector
    # comparing consecutive frames needs it (see tests/curation/test_media_cases.py, VFR).
    step: float
    thumb: np.ndarray  # (h, w, 3) uint8 Y/U/V at thumbnail size (display orientation)
    gray: np.ndarray | None = None  # (h, w) uint8 at working size, on motion samples
    rgb: np.ndarray | None = None  # (h, w, 3) uint8 at tags size, on tag samples
    model_rgb: np.ndarray | None = None  # (h, w, 3) uint8 at the [frames] size, on model-frame samples
    # While in flight from the decode thread: the decoded frame, its quarter turns and the
    # samplers due on it (`_take_samples` converts them in the consumer's thread).
    pending: tuple[av.VideoFrame, int, tuple["_Sampler", ...]] | None = field(default=None, repr=False)


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the short side set to `short_side` (never upscaled), both even."""
    s = min(1.0, short_side / min(width, height))
    return max(2, int(round(width * s / 2)) * 2), max(2, int(round(height * s / 2)) * 2)


def _views(frame: av.VideoFrame) -> list[np.ndarray]:
    """The frame's planes as uint8 arrays (views, no copy). `frame.planes` builds its plane
    objects afresh on every access: read it once."""
    return [np.frombuffer(p, dtype=np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in frame.planes]


# BT.601 limited range, what swscale writes for yuv420p from RGB (Y 16-235, U/V 16-240).
_RGB_TO_YUV = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]], np.float32) / 255.0
_PACKED_RGB = {"rgb24": (0, 1, 2), "bgr24": (2, 1, 0), "rgba": (0, 1, 2), "bgra": (2, 1, 0), "argb": (1, 2, 3), "abgr": (3, 2, 1),
               "rgb0": (0, 1, 2), "bgr0": (2, 1, 0), "0rgb": (1, 2, 3), "0bgr": (3, 2, 1)}


@functools.cache
def _rgb_matrix(order: tuple[int, int, int], channels: int) -> np.ndarray:
    """(3, channels + 1) cv2.transform matrix from a packed pixel of `channels` bytes
    (channel order[k] holds R, G, B for k = 0, 1, 2; the rest is alpha or padding) to BT.601
    limited-range Y/U/V, rounded to uint8 on the way out."""
    m = np.zeros((3, channels + 1), np.float32)
    for k, c in enumerate(order):
        m[:, c] = _RGB_TO_YUV[:, k]
    m[:, channels] = (16.0, 128.0, 128.0)
    return m


class ThumbReader:
    """Nearest-neighbour Y/U/V thumbnails read straight from the decoded planes (no swscale
    on the common path), one reader per decode pass.

    * planar 8-bit YUV (what nearly every codec decodes to): the step is a multiple of the
      chroma subsampling, so every plane is a plain strided view and only the small result
      is copied (~10 us a frame; the geometry is worked out once per format and size);
    * packed RGB (cinepak, PNG, QuickTime RLE, ...): the strided RGB samples are converted
      to BT.601 limited-range Y/U/V as swscale would (chroma from each sample's 2x2 block),
      ~60 us at 320x240 (converting the whole frame through a reused swscale context first
      cost 0.38 ms, five times tree.avi's 0.07 ms decode);
    * anything else (10-bit, NV12, palettes): converted to yuv420p first through one reused
      swscale context (a fresh one per frame, as `frame.reformat` makes, cost ~0.25 ms of a
      2.3 fps source's 0.07 ms decode).
    """

    def __init__(self, thumb_width: int):
        self.thumb_width = thumb_width
        self._to_yuv = VideoReformatter()
        self._key: tuple | None = None  # (format, width, height) the geometry below is for
        self._geom: tuple = ()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        name = frame.format.name
        if name in _PACKED_RGB:
            return self._from_rgb(frame, _PACKED_RGB[name])
        if name not in _PLANAR_8BIT:
            frame = self._to_yuv.reformat(frame, format="yuv420p", threads=1)
            name = "yuv420p"
        y, u, v = _views(frame)[:3]
        key = (name, frame.width, frame.height)
        if key != self._key:
            fy, fx = frame.height // u.shape[0], frame.width // u.shape[1]  # chroma subsampling
            f = max(fx, fy)
            step = max(f, frame.width // self.thumb_width // f * f)
            sy, sx = step // fy, step // fx
            h = min(len(range(0, y.shape[0], step)), len(range(0, u.shape[0], sy)))
            w = min(len(range(0, y.shape[1], step)), len(range(0, u.shape[1], sx)))
            self._key, self._geom = key, (step, sy, sx, h, w)
        step, sy, sx, h, w = self._geom
        out = np.empty((h, w, 3), np.uint8)
        out[..., 0] = y[: h * step : step, : w * step : step]
        out[..., 1] = u[: h * sy : sy, : w * sx : sx]
        out[..., 2] = v[: h * sy : sy, : w * sx : sx]
        return out

    def _from_rgb(self, frame: av.VideoFrame, order: tuple[int, int, int]) -> np.ndarray:
        (p,) = frame.planes
        px = 3 if frame.format.name in ("rgb24", "bgr24") else 4
        a = np.frombuffer(p, dtype=np.uint8).reshape(p.height, p.line_size)[:, : p.width * px].reshape(p.height, p.width, px)
        step = max(2, frame.width // self.thumb_width // 2 * 2)
        h, w = frame.height // step, frame.width // step  # whole step x step cells
        cells = a[: h * step, : w * step]
        # OpenCV does the gathering (numpy's strided copies of 3-byte pixels cost 30 us each
        # here): the sample at each cell's corner (INTER_NEAREST picks floor(x * step)), and
        # the mean of its 2x2 block (an area reduction by 2, then the same corner pick).
        corner = cv2.resize(cells, (w, h), interpolation=cv2.INTER_NEAREST)
        block = cv2.resize(cv2.resize(cells, (w * step // 2, h * step // 2), interpolation=cv2.INTER_AREA), (w, h),
                           interpolation=cv2.INTER_NEAREST)
        m = _rgb_matrix(order, px)
        out = cv2.transform(block, m)
        out[..., 0] = cv2.transform(corner, m)[..., 0]
        return out


# A forward jump of more than this between consecutive frames is a timestamp discontinuity
# (MPEG-TS PCR jump, files joined with `cat`), not a held frame: VFR screen recordings
# hold a frame for a few seconds at most.
MAX_GAP_S = 5.0
# Undecodable packets (corrupt frames mid-stream) are skipped; this many in a row means the
# stream is broken from there on.
MAX_BAD_PACKETS = 50


@dataclass
class DecodeStats:
    """What one decode pass learnt beyond its frames (filled when the pass ends)."""

    declared_start_s: float | None = None  # the container's video stream start and duration
    declared_duration_s: float | None = None
    first_raw_s: float | None = None  # first and last decoded timestamps, as stored
    last_raw_s: float | None = None
    frame_s: float = 1 / 25  # nominal frame duration
    frames: int = 0
    repaired: int = 0  # timestamps that went backwards or jumped (restart, discontinuity)
    missing: int = 0  # frames without a timestamp
    bad_packets: int = 0  # skipped undecodable packets
    orphans: int = 0  # frames left after a gap at the very end by a cut in decode order (not kept)
    end_s: float = 0.0  # timeline time just after the last frame


class Timeline:
    """The one timestamp policy of analysis and extraction: frame k gets time t_k (seconds,
    0 at the first decoded frame), strictly increasing.

    * a timestamp is kept relative to the first decoded frame (negative or late starts,
      leading frames the decoder could not decode are simply not there);
    * a frame without a timestamp (raw H.264/HEVC elementary streams) is one nominal frame
      duration after the previous one;
    * a timestamp that goes backwards, repeats, or jumps ahead more than MAX_GAP_S (restarts
      and discontinuities: MPEG-TS files joined with `cat`) continues one frame duration after
      the previous frame, and later frames keep that new offset.
    Timestamps merely out of order (an AVI with packed B-frames hands frames out in display
    order carrying decode-order stamps) are put back in order first (`_Reorder`).
    Both passes decode the same packets in the same order, so they agree frame by frame."""

    def __init__(self, rate: float | None, stats: DecodeStats | None = None):
        self.stats = stats if stats is not None else DecodeStats()
        self.dur = 1.0 / rate if rate else 1 / 25
        self.stats.frame_s = self.dur
        self.offset = 0.0
        self.last: float | None = None

    def time(self, raw: float | None) -> float:
        """The time of the next frame, given its stored timestamp in seconds (or None)."""
        st = self.stats
        if raw is None:
            st.missing += 1
        else:
            if st.first_raw_s is None:
                st.first_raw_s = raw
            st.last_raw_s = raw
        if self.last is None:
            t = 0.0
            self.offset = -raw if raw is not None else 0.0
        elif raw is None:
            t = self.last + self.dur
        else:
            t = raw + self.offset
            if not self.last < t <= self.last + MAX_GAP_S:
                st.repaired += 1
                t = self.last + self.dur
                self.offset = t - raw
        self.last = t
        st.frames += 1
        st.end_s = t + self.dur
        return t


REORDER_DEPTH = 16  # frames; deeper than any B-frame pyramid


def reorder_depth(has_b_frames: int) -> int:
    """Frames `_Reorder` holds for a decoder that delays output by `has_b_frames` frames
    (FFmpeg's reorder buffer, 0 without B-frames). Stamps out of display order are decode-order
    stamps, off by at most that delay: twice it, and 2 more, covers it. Without B-frames decode
    order is display order and nothing is held. Holding decoded frames is not free: 16 held SD
    frames (10 MB) pushed the decoder's working set out of cache and cost 0.25 ms a frame, as
    much as decoding it (vtest.avi, bench/cpu_stages.py)."""
    return 0 if not has_b_frames else min(REORDER_DEPTH, 2 * int(has_b_frames) + 2)


class _Reorder:
    """Pairs frames (decoder output, display order) with the smallest timestamp among the
    next `depth()` frames' (reorder_depth, read per frame: a decoder may raise its delay
    mid-stream): when the stamps are the right set in the wrong order (decode order), that
    sorts them; in order, it changes nothing. A stamp far behind the one before (a restart
    within the window) is not pulled forward: the frame keeps its own."""

    def __init__(self, frame_s: float, depth: Callable[[], int] = lambda: REORDER_DEPTH):
        self.frame_s = frame_s
        self.depth = depth
        self.frames: list[tuple[av.VideoFrame, float | None]] = []
        self.pool: list[float] = []
        self.last: float | None = None
        self.recent: deque[float | None] = deque(maxlen=REORDER_DEPTH)  # stamps handed out last

    def push(self, frame: av.VideoFrame) -> list[tuple[av.VideoFrame, float | None]]:
        raw = float(frame.time) if frame.time is not None else None
        self.frames.append((frame, raw))
        if raw is not None:
            bisect.insort(self.pool, raw)
        depth = self.depth()
        out = []
        while len(self.frames) > depth:
            out.append(self._pop())
        return out

    def flush(self, reordered: bool = False) -> tuple[list[tuple[av.VideoFrame, float | None]], int]:
        """The frames still held, less the orphans at the very end when the stream
        `reordered` (has B-frames); and how many orphans were left out.

        A cut made in decode order (`ffmpeg -t/-to ... -c copy` stops at the first packet whose
        *decode* time is past the end) keeps the last reference frames but not the B-frames
        shown between them: the stream ends in one to a few frames each after a gap of one to
        a few missing frames (1.92, 1.96, 2.04, 2.12 at 25 fps). They are no part of a
        continuous picture; kept, the last frames were held 2-4 frame durations and a 25 fps
        cut measured 24.06 fps and VFR. A frame counts as an orphan when it is among the last
        REORDER_DEPTH, comes more than 1.5 and at most REORDER_DEPTH local frame intervals
        (the median of the stream's last intervals) after the one before, and every frame
        after it is an orphan too."""
        out = [self._pop() for _ in range(len(self.frames))]
        if not reordered:
            return out, 0
        stamps = list(self.recent)
        if any(s is None for s in stamps) or len(stamps) < 4:
            return out, 0
        steps = np.diff(stamps)
        local = float(np.median(steps))
        n = 0
        while n < min(len(out), len(steps)) and local > 0 and 1.5 * local < steps[-1 - n] <= REORDER_DEPTH * local:
            n += 1
        return (out[: len(out) - n] if n else out), n

    def _pop(self) -> tuple[av.VideoFrame, float | None]:
        frame, raw = self.frames.pop(0)
        if raw is None:
            self.recent.append(None)
            return frame, None
        t = self.pool[0]
        if self.last is not None and t < self.last - REORDER_DEPTH * self.frame_s:
            t = raw  # a restart ahead: do not borrow its stamps
        self.pool.remove(t)
        self.last = t
        self.recent.append(t)
        return frame, t


def decoded_frames(c: av.container.InputContainer, threads: int = 0, stats: DecodeStats | None = None) -> Iterator[tuple[av.VideoFrame, float]]:
    """(frame, time) for every decodable frame of the video stream of open container `c`,
    in presentation order, timed by `Timeline`. Undecodable packets are skipped (counted in
    `stats`); MediaError when the stream does not decode at all or breaks for good."""
    vs = video_stream(c)
    if vs.codec_context is None:
        raise MediaError("video codec not supported by this FFmpeg build", code="unsupported_codec")
    vs.thread_type = "AUTO"
    if threads:
        vs.codec_context.thread_count = threads
    stats = stats if stats is not None else DecodeStats()
    stats.declared_start_s, stats.declared_duration_s = declared_video_span(c, vs)
    timeline = Timeline(nominal_rate(vs), stats)
    cc = vs.codec_context
    reorder = _Reorder(timeline.dur, lambda: reorder_depth(cc.has_b_frames))
    bad_run = 0
    try:
        for packet in c.demux(vs):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError as e:
                stats.bad_packets += 1
                bad_run += 1
                if bad_run > MAX_BAD_PACKETS:
                    raise MediaError(
                        f"corrupt video: {bad_run} undecodable packets in a row after {stats.frames} frames ({_why(e)})",
                        code="decode" if stats.frames else "undecodable",
                    ) from None
                continue
            bad_run = 0
            for frame in frames:
                for fr, raw in reorder.push(frame):
                    yield fr, timeline.time(raw)
        tail, stats.orphans = reorder.flush(reordered=bool(vs.codec_context.has_b_frames))
        for fr, raw in tail:
            yield fr, timeline.time(raw)
    except av.error.FFmpegError as e:
        if stats.frames == 0:
            raise MediaError(f"video stream does not decode ({_why(e)})", code="undecodable") from None
        raise MediaError(
            f"truncated or corrupt video: decoding failed after {stats.frames} frames ({stats.end_s:.2f} s): {_why(e)}", code="truncated"
        ) from None
    if stats.frames == 0:
        raise MediaError("video stream has no decodable frames", code="undecodable")


def _why(e: Exception) -> str:
    return str(getattr(e, "strerror", None) or e)


def check_complete(stats: DecodeStats) -> None:
    """MediaError(code="truncated") when decoding stopped well before the end the container
    declares for the video stream: more than 0.5 s and 10% short. Judged on the video stream
    alone (audio may run longer) and from the first frame that decoded (a recording that
    starts mid-GOP loses its undecodable leading frames, which is not truncation). When the
    timeline was repaired (restarts), stored timestamps mean nothing and the decoded length
    is compared with the declared one."""
    dur = stats.declared_duration_s
    if not dur:
        return
    if stats.repaired == 0 and stats.first_raw_s is not None and stats.last_raw_s is not None:
        declared_end = (stats.declared_start_s if stats.declared_start_s is not None else stats.first_raw_s) + dur
        got_end = stats.last_raw_s + stats.frame_s
        have, want = got_end - stats.first_raw_s, declared_end - stats.first_raw_s
    else:
        have, want = stats.end_s, dur
    if have < want - max(0.5, 0.1 * dur):
        raise MediaError(f"truncated video: frames stop at {have:.2f} s of the {want:.2f} s the container declares", code="truncated")


class _Sampler:
    """Reformats sampled frames with one reused swscale context per output kind (a fresh
    context per call costs more than decoding a small frame); each sample goes to the
    `Frame` attribute named `field`."""

    def __init__(self, field: str, short_side: int, fmt: str, fps: float):
        self.field, self.short_side, self.fmt, self.fps = field, short_side, fmt, fps
        self.sar = None  # the stream's sample aspect ratio: samples are square-pixel
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
        """The sample of `frame`, rotated by `rot` quarter turns."""
        w, h = scaled_size(*display_size(frame.width, frame.height, self.sar), self.short_side)
        small = self.reformatter.reformat(frame, width=w, height=h, format=self.fmt, interpolation="AREA", threads=1)
        # .copy(): the reused context recycles its output buffer, and an array from a
        # reformatted frame can outlive that buffer (seen as SIGSEGV in cv2 inside Ray
        # workers); own the pixels before the next call.
        return np.ascontiguousarray(np.rot90(small.to_ndarray().copy(), rot))


def _decode(uri: str, thumb_width: int, samplers: tuple[_Sampler, ...], threads: int, stats: DecodeStats) -> Iterator[Frame]:
    """Every frame's thumbnail, and which samplers are due on it (the decoded frame rides
    along for them: `_take_samples`)."""
    with open_container(uri) as c:
        sar = video_stream(c).sample_aspect_ratio
        sar = Fraction(sar) if sar else None
        for sampler in samplers:
            sampler.sar = sar
        prev_t: float | None = None
        thumbs = ThumbReader(thumb_width)
        for index, (frame, t) in enumerate(decoded_frames(c, threads, stats)):
            step, prev_t = (1.0 if prev_t is None else (t - prev_t) / stats.frame_s), t
            rot = display_rotation(frame) // 90
            w, h = display_size(frame.width, frame.height, sar)  # per frame: the size may change mid-stream
            thumb = thumbs(frame)
            out = Frame(index=index, t=t, rotation=rot * 90, size=(h, w) if rot % 2 else (w, h), step=step,
                        thumb=np.rot90(thumb, rot) if rot else thumb)
            due = tuple(s for s in samplers if s.due(t))
            if due:
                out.pending = (frame, rot, due)
            yield out


def _take_samples(frames: Iterator[Frame]) -> Iterator[Frame]:
    """`frames` with their due samples converted, in this (the consumer's) thread.

    Why here and not in the decode thread: the samples' swscale conversions (RGB at the tags
    and model sizes cost 0.8-1.0 ms each on 768x576 video, 2-3 times decoding the frame) were
    the decode thread's largest cost and made it the pass's bottleneck while the scorers
    waited; here they overlap the decoding of the frames after. Only sampled frames are held
    until then (2-4 a second); holding every frame made the decoder take fresh buffers
    (0.25 ms a frame, see `reorder_depth`)."""
    with contextlib.closing(frames):
        for fr in frames:
            if fr.pending is not None:
                frame, rot, due = fr.pending
                fr.pending = None
                for s in due:
                    setattr(fr, s.field, s.take(frame, rot))
            yield fr


_END = object()


def run_ahead(
    items: Callable[[], Iterator],
    *,
    stall_timeout_s: float | None,
    prefetch: int = 8,
    batch: int = 1,
    name: str = "decode",
    stall_detail: Callable[[], str] | None = None,
) -> Iterator:
    """Iterate `items()` in a background thread, up to `prefetch` hand-offs of up to `batch`
    items ahead. The thread creates the iterator itself, so whatever it opens (a container) is
    used and closed by one thread only. An item that comes more than 50 ms after the last
    hand-off goes out at once, so a slow source is handed over item by item. No hand-off for
    `stall_timeout_s`: MediaError(code="timeout"), its text extended
    by `stall_detail()` when given; the stuck thread is abandoned (a daemon: an FFmpeg call
    cannot be interrupted)."""
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
        buf: list = []
        try:
            with contextlib.closing(items()) as it:
                since = time.monotonic()
                for x in it:
                    if stop.is_set():
                        return
                    buf.append(x)
                    # Handed off when full, or at once when the last hand-off was a while
                    # ago (a slow source's frames would otherwise wait here for the next).
                    if len(buf) >= batch or time.monotonic() - since > _HANDOFF_S:
                        put(buf)
                        buf = []
                        since = time.monotonic()
            if buf:
                put(buf)
            put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer and re-raised there
            if buf:
                put(buf)
            put(e)

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    stalled = False
    try:
        while True:
            try:
                item = q.get(timeout=stall_timeout_s)
            except queue.Empty:
                stalled = True
                detail = f" {stall_detail()}" if stall_detail else ""
                raise MediaError(
                    f"decoder stalled: nothing for {stall_timeout_s:g} s{detail} ([decode] stall_timeout_s)", code="timeout"
                ) from None
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield from item
    finally:
        stop.set()
        worker.join(timeout=1.0 if stalled else None)


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
    stats: DecodeStats | None = None,
    stall_timeout_s: float | None = None,
    model_short_side: int | None = None,
    model_fps: float | None = None,
) -> Iterator[Frame]:
    """Yield every frame of `uri` in presentation order. Raises MediaError on a broken stream.

    Decoding and the thumbnails run in a background thread, up to `prefetch` frames ahead,
    handed over 16 at a time, so they overlap the caller's scoring (FFmpeg, swscale, OpenCV
    and numpy all release the GIL in their heavy parts); the samples (grey, tags and model
    RGB) are converted in the caller's thread as it takes each frame (`_take_samples`).
    `stats` is filled as the pass goes (complete once
    the iterator is exhausted). When the decoder produces nothing for `stall_timeout_s`,
    MediaError(code="timeout"): an FFmpeg decode call cannot be interrupted, so the stuck
    thread is abandoned (a daemon) and the run goes on with the next item. With
    `model_short_side` and `model_fps`, frames are also sampled as RGB at that size for model
    stages (curation/core/frames.py)."""
    stats = stats if stats is not None else DecodeStats()
    samplers = (_Sampler("gray", work_short_side, "gray", motion_fps), _Sampler("rgb", tags_short_side, "rgb24", tags_fps))
    if model_short_side and model_fps:
        samplers += (_Sampler("model_rgb", model_short_side, "rgb24", model_fps),)
    frames = run_ahead(
        lambda: _decode(uri, thumb_width, samplers, threads, stats),
        stall_timeout_s=stall_timeout_s,
        prefetch=max(1, prefetch // _BATCH),
        batch=_BATCH,
        name=f"decode:{uri}",
        stall_detail=lambda: f"after {stats.frames} frames",
    )
    return _take_samples(frames)


# Frames handed from the decode thread to the scorers at a time: one queue hand-off per
# frame (a lock, a condition and a GIL switch each way) cost ~80 us, a fifth of decoding a
# 768x576 MPEG-4 frame (vtest.avi).
_BATCH = 16
_HANDOFF_S = 0.05
