"""Open and probe media with PyAV; turn FFmpeg's failures into reasons a person understands."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import av
import fsspec

from curation.media.inputs import is_image, is_url


class MediaError(Exception):
    """A problem with one input file (not with the system): becomes an `error` row.

    `code` is the short reason code that groups errors in the report (schema `error_code`);
    the message is for a person."""

    def __init__(self, message: str, code: str = "media"):
        super().__init__(message)
        self.code = code


def source_id(uri: str) -> str:
    return hashlib.sha1(uri.encode()).hexdigest()[:16]  # 12 digits collide at ~0.2% over 1M sources


def file_size(uri: str) -> int:
    if is_url(uri):
        return int(fsspec.filesystem(fsspec.utils.get_protocol(uri)).size(uri))
    return os.path.getsize(uri)


# How long one demuxer read (or the open) may block before FFmpeg's interrupt callback gives
# up: a stalled network mount or device must not hang the run. Decoding itself is not
# interruptible; curation/media/decode.py bounds it with its own stall timeout.
IO_TIMEOUT_S = 60.0


def check_regular_file(uri: str) -> None:
    """MediaError unless a local `uri` is a regular file (a FIFO or device would block the
    open forever; a folder is no media)."""
    if is_url(uri):
        return
    try:
        mode = os.stat(uri).st_mode
    except FileNotFoundError:
        raise MediaError("file not found", code="not_found") from None
    except PermissionError:
        raise MediaError("cannot read file (permission denied)", code="unreadable") from None
    except OSError as e:  # ELOOP, ENAMETOOLONG, ...
        raise MediaError(f"cannot read file ({e.strerror or e})", code="unreadable") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (pipe, device or socket)"
        raise MediaError(f"not a media file: {kind}", code="not_a_file")


def mp4_without_index(path: str) -> bool:
    """Whether a local file is an MP4/MOV (starts with an 'ftyp' box) whose top-level boxes,
    walked by their headers (ISO/IEC 14496-12), hold no 'moov' (the index FFmpeg needs)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            pos, first = 0, True
            while pos + 8 <= size:
                f.seek(pos)
                head = f.read(16)
                n, kind = int.from_bytes(head[:4], "big"), head[4:8]
                if first and kind != b"ftyp":
                    return False
                first = False
                if kind == b"moov":
                    return False
                if n == 1 and len(head) == 16:
                    n = int.from_bytes(head[8:16], "big")
                elif n == 0:  # the box runs to the end of the file
                    break
                if n < 8:
                    return False  # not a box structure we can walk
                pos += n
            return not first
    except OSError:
        return False


@contextlib.contextmanager
def open_container(uri: str) -> Iterator[av.container.InputContainer]:
    """Open `uri` (local path or fsspec URL) for demuxing; MediaError when it is not media."""
    check_regular_file(uri)
    fobj = None
    try:
        if is_url(uri):
            fobj = fsspec.open(uri, "rb").open()
            container = av.open(fobj, mode="r", timeout=IO_TIMEOUT_S)
        else:
            container = av.open(uri, mode="r", timeout=IO_TIMEOUT_S)
    except FileNotFoundError:
        raise MediaError("file not found", code="not_found") from None
    except PermissionError:
        raise MediaError("cannot read file (permission denied)", code="unreadable") from None
    except av.error.InvalidDataError as e:
        if not is_url(uri) and mp4_without_index(uri):
            raise MediaError(
                "truncated MP4: its index (the 'moov' box) is missing, as in an unfinished recording or an "
                "interrupted copy", code="truncated"
            ) from None
        raise MediaError(f"not a readable media file ({_ffmpeg_msg(e)})", code="not_media") from None
    except av.error.FFmpegError as e:
        raise MediaError(f"FFmpeg cannot open it ({_ffmpeg_msg(e)})", code="not_media") from None
    try:
        yield container
    finally:
        container.close()
        if fobj is not None:
            fobj.close()


def _ffmpeg_msg(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


def display_rotation(frame: av.VideoFrame) -> int:
    """Counter-clockwise degrees (0/90/180/270) to rotate the decoded frame for display."""
    return int(round(frame.rotation / 90.0)) % 4 * 90


def video_stream(c: av.container.InputContainer) -> av.VideoStream:
    """The stream that is the video: the first video stream that is not an attached picture
    (cover art is a one-frame "video" stream in MP3/M4A/MKV; it never counts as the video).
    MediaError(code="no_video") when there is none."""
    videos = [s for s in c.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if videos:
        return videos[0]
    if c.streams.video:
        raise MediaError("no video stream (only cover art)", code="no_video")
    kinds = sorted({s.type for s in c.streams}) or ["no"]
    raise MediaError(f"no video stream (has {', '.join(kinds)} streams only)", code="no_video")


def nominal_rate(vs: av.VideoStream) -> float | None:
    """The stream's nominal frame rate in frames/s: the codec's (H.264 VUI, MPEG-2 header),
    else FFmpeg's guess from the container, else the average. A raw elementary stream has no
    timestamps and an `average_rate` that is only the demuxer's 25 fps default, so the codec's
    own rate comes first. None when nothing plausible (1-240 fps) is declared."""
    codec_rate = vs.codec_context.framerate if vs.codec_context is not None else None
    for r in (codec_rate, vs.guessed_rate, vs.average_rate):
        if r and 1.0 <= float(r) <= 240.0:
            return float(r)
    return None


def declared_video_span(c: av.container.InputContainer, vs: av.VideoStream) -> tuple[float | None, float | None]:
    """(start, duration) in seconds the container declares for the video stream itself.

    The container's own duration is the longest stream's (8 s of audio under 3 s of video
    in MKV/WebM), so it stands in only when the video is the file's sole stream; Matroska
    keeps the per-stream duration as a DURATION tag (HH:MM:SS.nnnnnnnnn)."""
    start = float(vs.start_time * vs.time_base) if vs.start_time is not None and vs.time_base else None
    if vs.duration is not None and vs.time_base is not None:
        return start, float(vs.duration * vs.time_base)
    tag = (vs.metadata or {}).get("DURATION") or (vs.metadata or {}).get("duration")
    if tag:
        try:
            h, m, sec = tag.split(":")
            return start, int(h) * 3600 + int(m) * 60 + float(sec)
        except ValueError:
            pass
    if c.duration is not None and len(c.streams) == 1:
        return start, c.duration / av.time_base
    return start, None


def display_size(width: int, height: int, sar: Fraction | None) -> tuple[int, int]:
    """(w, h) of the picture as a player shows it: the coded width stretched by the sample
    aspect ratio (ffmpeg prints it as "SAR 4:3 DAR 16:9"), height kept, before rotation."""
    if sar and sar.numerator > 0 and sar.denominator > 0 and sar != 1:
        return max(1, int(round(width * sar))), height
    return width, height


@dataclass(frozen=True)
class VideoInfo:
    container: str
    codec: str
    coded_width: int
    coded_height: int
    rotation: int  # 0 here; the analysis pass reads it from the decoded frames
    duration_s: float | None  # of the video stream, as declared (not the container's)
    avg_fps: float | None
    bit_rate: int | None
    has_audio: bool
    sar: Fraction | None = None  # sample (pixel) aspect ratio, None when square/undeclared

    @property
    def width(self) -> int:
        w, h = display_size(self.coded_width, self.coded_height, self.sar)
        return h if self.rotation in (90, 270) else w

    @property
    def height(self) -> int:
        w, h = display_size(self.coded_width, self.coded_height, self.sar)
        return w if self.rotation in (90, 270) else h


def check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    """Refuse a frame size over the configured `[decode] max_pixels` before decoding it: a
    header can claim a size that needs tens of GB (a 60000x60000 frame is 5 GB per plane set)."""
    if width * height > max_pixels:
        raise MediaError(
            f"{what} too large: {width}x{height} is {width * height / 1e6:.0f} Mpx, over the limit of "
            f"{max_pixels / 1e6:.0f} Mpx ([decode] max_pixels); not decoded",
            code="too_large",
        )


def check_side(width: int, height: int, min_side: int, what: str) -> None:
    """Refuse a frame or image whose short side is under `[decode] min_side`: too small to
    score (optical flow cannot run on it) and to train on."""
    if min(width, height) < min_side:
        raise MediaError(
            f"{what} too small to score: {width}x{height}, its short side under the {min_side} px that optical flow "
            f"and the tags need ([decode] min_side)",
            code="too_small",
        )


def probe_video(uri: str, max_pixels: int | None = None, min_side: int | None = None) -> VideoInfo:
    """Read container and stream metadata without decoding a frame.

    Whether the stream decodes, and its display rotation (carried as frame side data), are
    learnt by the analysis pass, which decodes every frame anyway: decoding a first frame
    here as well cost as much as opening the file (~25 ms at 720p).
    Raises MediaError with a code: empty, not_media, no_video, no_size, too_large, too_small,
    unreadable."""
    check_regular_file(uri)
    size = file_size(uri)
    if size == 0:
        raise MediaError("empty file (0 bytes)", code="empty")
    with open_container(uri) as c:
        vs = video_stream(c)
        cc = vs.codec_context
        if cc is None:  # FFmpeg knows no decoder for the stream's codec tag
            tag = getattr(vs, "codec_tag", None) or "unknown"
            raise MediaError(f"video codec not supported by this FFmpeg build (codec tag {tag!r})", code="unsupported_codec")
        if not cc.width or not cc.height:
            raise MediaError("video stream has no frame size (corrupt header or unsupported codec)", code="no_size")
        if max_pixels:
            check_pixels(cc.width, cc.height, max_pixels, "frame")
        if min_side:
            check_side(cc.width, cc.height, min_side, "frame")
        _, duration = declared_video_span(c, vs)
        sar = vs.sample_aspect_ratio or cc.sample_aspect_ratio
        return VideoInfo(
            container=c.format.name,
            codec=cc.name,
            coded_width=cc.width,
            coded_height=cc.height,
            rotation=0,
            duration_s=duration,
            avg_fps=nominal_rate(vs),
            bit_rate=int(c.bit_rate) if c.bit_rate else None,
            has_audio=bool(c.streams.audio),
            sar=Fraction(sar) if sar else None,
        )


def media_type(uri: str) -> str:
    return "image" if is_image(uri) else "video"
