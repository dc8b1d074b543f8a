"""Open and probe media with PyAV; turn FFmpeg's failures into reasons a person understands."""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from typing import Iterator

import av
import fsspec

from curation.inputs import is_image, is_url


class MediaError(Exception):
    """A problem with one input file (not with the system): becomes an `error` row.

    `code` is the short reason code that groups errors in the report (schema `error_code`);
    the message is for a person."""

    def __init__(self, message: str, code: str = "media"):
        super().__init__(message)
        self.code = code


def source_id(uri: str) -> str:
    return hashlib.sha1(uri.encode()).hexdigest()[:12]


def file_size(uri: str) -> int:
    if is_url(uri):
        return int(fsspec.filesystem(fsspec.utils.get_protocol(uri)).size(uri))
    return os.path.getsize(uri)


@contextlib.contextmanager
def open_container(uri: str) -> Iterator[av.container.InputContainer]:
    """Open `uri` (local path or fsspec URL) for demuxing; MediaError when it is not media."""
    fobj = None
    try:
        if is_url(uri):
            fobj = fsspec.open(uri, "rb").open()
            container = av.open(fobj, mode="r")
        else:
            container = av.open(uri, mode="r")
    except FileNotFoundError:
        raise MediaError("file not found") from None
    except av.error.InvalidDataError as e:
        raise MediaError(f"not a readable media file ({_ffmpeg_msg(e)})") from None
    except av.error.FFmpegError as e:
        raise MediaError(f"FFmpeg cannot open it ({_ffmpeg_msg(e)})") from None
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


@dataclass(frozen=True)
class VideoInfo:
    container: str
    codec: str
    coded_width: int
    coded_height: int
    rotation: int  # 0 here; the analysis pass reads it from the decoded frames
    duration_s: float | None
    avg_fps: float | None
    bit_rate: int | None
    has_audio: bool

    @property
    def width(self) -> int:
        return self.coded_height if self.rotation in (90, 270) else self.coded_width

    @property
    def height(self) -> int:
        return self.coded_width if self.rotation in (90, 270) else self.coded_height


def probe_video(uri: str) -> VideoInfo:
    """Read container and stream metadata without decoding a frame.

    Whether the stream decodes, and its display rotation (carried as frame side data), are
    learnt by the analysis pass, which decodes every frame anyway: decoding a first frame
    here as well cost as much as opening the file (~25 ms at 720p)."""
    size = file_size(uri)
    if size == 0:
        raise MediaError("empty file (0 bytes)")
    with open_container(uri) as c:
        videos = c.streams.video
        if not videos:
            kinds = sorted({s.type for s in c.streams}) or ["no"]
            raise MediaError(f"no video stream (has {', '.join(kinds)} streams only)")
        vs = videos[0]
        if not vs.codec_context.width or not vs.codec_context.height:
            raise MediaError("video stream has no frame size (corrupt header or unsupported codec)")
        duration = None
        if vs.duration is not None and vs.time_base is not None:
            duration = float(vs.duration * vs.time_base)
        elif c.duration is not None:
            duration = c.duration / av.time_base
        avg = float(vs.average_rate) if vs.average_rate else None
        return VideoInfo(
            container=c.format.name,
            codec=vs.codec_context.name,
            coded_width=vs.codec_context.width,
            coded_height=vs.codec_context.height,
            rotation=0,
            duration_s=duration,
            avg_fps=avg,
            bit_rate=int(c.bit_rate) if c.bit_rate else None,
            has_audio=bool(c.streams.audio),
        )


def media_type(uri: str) -> str:
    return "image" if is_image(uri) else "video"
