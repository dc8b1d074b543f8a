"""Stage: write accepted clips as H.264 MP4 (images as JPEG) into OUT/clips.

One decode pass per source serves all its accepted clips, in order. Output is constant frame
rate: the source frame showing at each output tick is taken (frames are repeated or dropped
as needed), so VFR sources and `target_fps` both come out with true motion timing. Frame
times come from the same `Timeline` the analysis used (curation/media/decode.py: missing,
restarting and jumping timestamps repaired the same way), so a clip's `start_s`/`end_s`
select the frames the analysis scored. The pass decodes from the start of the file rather
than seeking: after a seek the repaired timeline could not be reproduced (its cost is at
most the analysis pass already paid).

Geometry and colour: the clip has square pixels at the source's display size (sample aspect
ratio applied, rotation applied, even sides for H.264), and keeps the source's colour range
(full/limited), matrix, primaries and transfer, both in the pixel values and in the stream's
metadata, so ffprobe shows the clip as it shows the source.

Files are written under a temporary name (dot-prefixed, `.tmp-PID`) and renamed, so a file
with the final name is complete; a rerun skips clips whose file exists. Output names come
from the clip id alone (never from the source path): a source named `../../x` cannot write
outside OUT/clips.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np
import pyarrow as pa
from PIL import Image

from curation.media.decode import DecodeConfig, decoded_frames, run_ahead, scaled_size
from curation.media.images import read_image
from curation.media.container import MediaError, display_rotation, display_size, open_container, video_stream
from curation.core.stage import Stage


@dataclass(frozen=True, kw_only=True)
class ExtractConfig:
    target_fps: float | None = None  # None: keep the source frame rate
    short_side: int | None = None  # None: keep the source size
    crf: int = 18
    preset: str = "veryfast"

    def __post_init__(self) -> None:
        if self.short_side is not None and (self.short_side < 2 or self.short_side % 2):
            raise ValueError("extract.short_side must be an even number >= 2 (H.264 needs even sizes)")
        if not 0 <= self.crf <= 51:
            raise ValueError("extract.crf must be within 0-51")


EXTRACT_INPUT = pa.schema(
    [
        ("source", pa.string()),
        ("media_type", pa.string()),
        (
            "clips",
            pa.list_(
                pa.struct([("clip_id", pa.string()), ("start_s", pa.float64()), ("end_s", pa.float64()), ("fps", pa.float64())])
            ),
        ),
    ]
)
EXTRACT_OUTPUT = pa.schema([("clip_id", pa.string()), ("clip_path", pa.string()), ("error", pa.string())])


# The NTSC rates exactly (24000/1001, not 23.976 = 2997/125: that drifts a frame an hour).
_STANDARD_FPS = (24000 / 1001, 24.0, 25.0, 30000 / 1001, 30.0, 48.0, 50.0, 60000 / 1001, 60.0)


def output_fps(clip_fps: float, target: float | None) -> float:
    """The constant output rate: the target, else the clip's average rate snapped to the
    nearest standard rate within 1% (a VFR phone video averaging 29.91 fps -> 29.97)."""
    fps = target or clip_fps
    nearest = min(_STANDARD_FPS, key=lambda s: abs(s - fps))
    return nearest if abs(nearest - fps) <= 0.01 * fps else round(fps, 2)


_SAFE_ID = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def clip_file(clips_dir: str | Path, clip_id: str, media_type: str) -> Path:
    """OUT/clips/<clip_id>.mp4|jpg. ValueError for an id that is not a plain name (ids are
    `<hash>_<start>_<end>`, never from a file name), so nothing is written outside clips_dir."""
    if not clip_id or not set(clip_id) <= _SAFE_ID:
        raise ValueError(f"unsafe clip_id {clip_id!r}: only letters, digits, '_' and '-'")
    return Path(clips_dir) / f"{clip_id}.{'jpg' if media_type == 'image' else 'mp4'}"


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


_TEMP = re.compile(r"\.[A-Za-z0-9_-]+\.(mp4|jpg)\.tmp-\d+\Z")  # what _tmp names a clip file


# Colour metadata copied from the source stream to the clip: what ffprobe prints as
# "yuv420p(pc, bt709/bt709/bt709)" (range, matrix/primaries/transfer). 2 is "unspecified".
_COLOUR = ("color_range", "colorspace", "color_primaries", "color_trc")


class _ClipWriter:
    """Encodes one clip at a constant `fps` from frames pushed with their source times."""

    def __init__(self, path: Path, start_s: float, end_s: float, fps: float, cfg: ExtractConfig, sar=None, colour: dict | None = None,
                 threads: int = 0):
        self.threads = threads  # x264 threads; 0: x264 picks (all cores)
        self.path, self.tmp = path, _tmp(path)
        self.start_s, self.fps, self.cfg = start_s, fps, cfg
        self.sar, self.colour = sar, colour or {}
        self.size: tuple[int, int] | None = None
        self.rate = Fraction(fps).limit_denominator(1001)
        self.n_out = max(1, int(round((end_s - start_s) * fps)))
        self.k = 0  # next output tick
        self.pending: av.VideoFrame | None = None
        self.container = None
        self.stream = None

    def _open(self, w: int, h: int) -> None:
        self.container = av.open(str(self.tmp), mode="w", format="mp4")
        s = self.container.add_stream("libx264", rate=self.rate)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for k, v in self.colour.items():
            setattr(s.codec_context, k, v)
        s.options = {"crf": str(self.cfg.crf), "preset": self.cfg.preset}
        if self.threads:
            s.codec_context.thread_count = self.threads
        self.stream = s

    def _emit(self, frame: av.VideoFrame) -> None:
        rot = display_rotation(frame) // 90
        if self.size is None:  # fixed by the first frame: a later size change is scaled to it
            w, h = display_size(frame.width, frame.height, self.sar)
            w, h = (h, w) if rot % 2 else (w, h)
            if self.cfg.short_side:
                w, h = scaled_size(w, h, self.cfg.short_side)
            self.size = (max(2, w - w % 2), max(2, h - h % 2))
        w, h = self.size
        rng = self.colour.get("color_range") or None
        space = self.colour.get("colorspace")
        space = space if space not in (None, 2) else None
        if rot:
            rgb = frame.reformat(format="rgb24", src_color_range=rng, src_colorspace=space).to_ndarray()
            rgb = np.ascontiguousarray(np.rot90(rgb, rot))
            if rgb.shape[:2] != (h, w):
                rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
            out = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                format="yuv420p", dst_color_range=rng, dst_colorspace=space
            )
        else:
            # Same range in and out: full-range pixels stay full range (no 0-255 -> 16-235 squash).
            out = frame.reformat(width=w, height=h, format="yuv420p", interpolation="AREA", src_color_range=rng, dst_color_range=rng)
        if self.container is None:
            self._open(w, h)
        out.pts = self.k
        out.time_base = 1 / self.rate
        for p in self.stream.encode(out):
            self.container.mux(p)
        self.k += 1

    def push(self, frame: av.VideoFrame, t: float) -> None:
        """Feed frames in order; the pending frame covers every tick before this one's time."""
        while self.pending is not None and self.k < self.n_out and self.start_s + self.k / self.fps < t - 1e-4:
            self._emit(self.pending)
        self.pending = frame

    def finish(self) -> None:
        while self.pending is not None and self.k < self.n_out:
            self._emit(self.pending)
        if self.container is None:
            raise MediaError("no frames decoded for this clip")
        for p in self.stream.encode():
            self.container.mux(p)
        self.container.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self.container is not None:
            self.container.close()
        self.tmp.unlink(missing_ok=True)


def _source_frames(source: str, threads: int = 0) -> Iterator:
    """First (sample aspect ratio, colour metadata to keep), then every (frame, time)."""
    with open_container(source) as container:
        vs = video_stream(container)
        sar = vs.sample_aspect_ratio
        cc = vs.codec_context
        colour = {k: int(getattr(cc, k) or 0) for k in _COLOUR}
        # 0 is "unspecified" for the range; 2 for the others (0 is RGB/reserved there).
        colour = {k: v for k, v in colour.items() if (v != 0 if k == "color_range" else v not in (0, 2))}
        if cc.pix_fmt and cc.pix_fmt.startswith("yuvj"):  # the old "JPEG" formats: full range
            colour["color_range"] = 2
        yield (Fraction(sar) if sar else None), colour
        yield from decoded_frames(container, threads)


def extract_video(
    source: str, clips: list[dict], clips_dir: Path, cfg: ExtractConfig, stall_timeout_s: float | None = DecodeConfig.stall_timeout_s,
    threads: int = 0,
) -> list[dict]:
    """Write every clip of one source in a single decode pass; one result row per clip.

    `threads`: FFmpeg decode and x264 encode threads each (0: FFmpeg's choice, all cores)."""
    todo = sorted((c for c in clips if not clip_file(clips_dir, c["clip_id"], "video").exists()), key=lambda c: c["start_s"])
    results = {c["clip_id"]: {"clip_id": c["clip_id"], "clip_path": str(clip_file(clips_dir, c["clip_id"], "video")), "error": None} for c in clips}
    if not todo:
        return list(results.values())
    writer: _ClipWriter | None = None
    queue = list(todo)
    try:
        # Decoded in a thread, so a decoder call that hangs fails this source after
        # stall_timeout_s instead of hanging the run (curation/media/decode.py: run_ahead).
        items = run_ahead(lambda: _source_frames(source, threads), stall_timeout_s=stall_timeout_s, name=f"extract:{source}")
        with contextlib.closing(items):
            sar, colour = next(items)
            for frame, t in items:
                while queue or writer:
                    if writer is None:
                        c = queue[0]
                        if t < c["start_s"] - 1e-4:
                            break
                        out_fps = output_fps(c["fps"], cfg.target_fps)
                        path = clip_file(clips_dir, c["clip_id"], "video")
                        writer = _ClipWriter(path, c["start_s"], c["end_s"], out_fps, cfg, sar, colour, threads)
                    c = queue[0]
                    if t < c["end_s"] - 1e-4:
                        writer.push(frame, t)
                        break
                    writer.finish()
                    writer = None
                    queue.pop(0)
                if not queue and writer is None:
                    break
            if writer is not None:
                writer.finish()
                writer = None
                queue.pop(0)
    except Exception as e:  # noqa: BLE001 - per-item fault isolation: this source's clips fail, the run goes on
        if writer is not None:
            writer.abort()
        for c in queue:
            results[c["clip_id"]].update(clip_path=None, error=_failed(e))
    for c in queue:  # clips the stream ended before reaching
        if results[c["clip_id"]]["error"] is None:
            results[c["clip_id"]].update(clip_path=None, error="extraction failed: stream ended before the clip")
    return list(results.values())


def extract_image(source: str, clip: dict, clips_dir: Path, cfg: ExtractConfig) -> dict:
    path = clip_file(clips_dir, clip["clip_id"], "image")
    if not path.exists():
        rgb = read_image(source)
        if cfg.short_side:
            w, h = scaled_size(rgb.shape[1], rgb.shape[0], cfg.short_side)
            rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        tmp = _tmp(path)
        Image.fromarray(rgb).save(tmp, format="JPEG", quality=95)
        os.replace(tmp, path)
    return {"clip_id": clip["clip_id"], "clip_path": str(path), "error": None}


def _failed(e: BaseException) -> str:
    """A clip's extraction error: an expected media/IO failure by its message, anything else
    (a bug, a library surprise) by type and message."""
    expected = isinstance(e, (MediaError, av.error.FFmpegError, OSError))
    return f"extraction failed: {e if expected else f'{type(e).__name__}: {e}'}"


def remove_temporaries(clips_dir: str | Path) -> int:
    """Delete the temporaries a killed extraction left in clips_dir (`.X.mp4.tmp-PID`); only
    names this module writes. Call it before extraction starts: one extraction per OUT at a
    time. Returns how many were removed."""
    removed = 0
    for p in Path(clips_dir).glob(".*.tmp-*"):
        if _TEMP.match(p.name) and p.is_file():
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def prune_clips(clips_dir: str | Path, keep: set[str]) -> int:
    """Delete the clip files in clips_dir whose names are not in `keep` (the accepted clips'
    files): a clip a new decision rejected, or one whose extraction failed, leaves no file
    behind, so OUT/clips holds exactly the accepted clips. Temporaries (`.X.tmp-PID`) are
    remove_temporaries' business. Returns how many were removed."""
    removed = 0
    for p in Path(clips_dir).glob("*"):
        if p.name not in keep and not p.name.startswith(".") and p.is_file():
            p.unlink(missing_ok=True)
            removed += 1
    return removed


class ExtractClips(Stage):
    """Per source (a few sources per Ray task, flows/run_ray.py): its accepted clips in one
    decode pass. FFmpeg decode and x264 encode use `num_cpus` threads each, so Ray's CPU
    accounting matches what runs; a decoder that stalls fails its source after
    `stall_timeout_s` ([decode] stall_timeout_s)."""

    reads = ("source", "media_type", "clips")
    writes = ("clip_id", "clip_path", "error")
    batch_size = 1

    def __init__(self, cfg: ExtractConfig, clips_dir: str, stall_timeout_s: float | None = DecodeConfig.stall_timeout_s):
        self.cfg, self.clips_dir, self.stall_timeout_s = cfg, Path(clips_dir), stall_timeout_s

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.clips_dir.mkdir(parents=True, exist_ok=True)
        out: list[dict] = []
        for row in batch.to_pylist():
            if row["media_type"] == "image":
                for c in row["clips"]:
                    try:
                        out.append(extract_image(row["source"], c, self.clips_dir, self.cfg))
                    except Exception as e:  # noqa: BLE001 - per-item fault isolation
                        out.append({"clip_id": c["clip_id"], "clip_path": None, "error": _failed(e)})
            else:
                out += extract_video(row["source"], row["clips"], self.clips_dir, self.cfg, self.stall_timeout_s, threads=self.threads)
        return pa.Table.from_pylist(out, schema=EXTRACT_OUTPUT)
