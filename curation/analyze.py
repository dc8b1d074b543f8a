"""Stage: one decode pass per source -> shot cuts, clip windows, motion and tag scores.

Frames stream through once (curation/decode.py). Cut detection sees every frame; clips close
as soon as their window is known and are scored from the samples buffered for them, so
memory holds one open window's samples, not the video. Source-level facts known only at the
end (cut rate, frame rate, VFR, truncation) are filled in after the pass.
"""

from __future__ import annotations


import av
import cv2
import fsspec
import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps

from curation.config import RunConfig
from curation.decode import DecodeStats, check_complete, iter_frames, scaled_size
from curation.media import MediaError
from curation.schema import analyzed_source_schema, to_table
from curation.score_motion import MotionScorer
from curation.split_scenes import CutDetector, Window, Windower
from curation.stage import Stage
from curation.tag_negatives import FrameMeasures, flicker, measure_frame, tag_scores

# The source row fields this stage reads (written by ProbeSources).
_PROBED = ("source", "source_id", "media_type", "status", "width", "height", "duration_s", "bit_rate")


def clip_id(src_id: str, start: int, end: int) -> str:
    return f"{src_id}_{start:07d}_{end:07d}"


class _ClipScorer:
    """Buffers one open window's samples and scores windows as they close."""

    def __init__(self, cfg: RunConfig, motion: MotionScorer, row: dict):
        self.cfg, self.motion, self.row = cfg, motion, row
        self.grays: list[tuple[int, float, np.ndarray]] = []
        self.measures: list[tuple[int, FrameMeasures]] = []
        self.clips: list[dict] = []

    def add(self, index: int, t: float, gray: np.ndarray | None, rgb: np.ndarray | None) -> None:
        if gray is not None:
            self.grays.append((index, t, gray))
        if rgb is not None:
            self.measures.append((index, measure_frame(rgb)))

    def close(self, w: Window) -> None:
        g = [(t, a) for i, t, a in self.grays if w.start <= i < w.end]
        m = [fm for i, fm in self.measures if w.start <= i < w.end]
        ms = self.motion.score([a for _, a in g], [t for t, _ in g])
        n = w.end - w.start
        self.clips.append(
            {
                "clip_id": clip_id(self.row["source_id"], w.start, w.end),
                "source": self.row["source"],
                "media_type": "video",
                "start_frame": w.start,
                "end_frame": w.end,
                "start_s": w.start_s,
                "end_s": w.end_s,
                "num_frames": n,
                "fps": n / max(w.end_s - w.start_s, 1e-6),
                "width": self.row["width"],
                "height": self.row["height"],
                "motion_score": ms.motion_score,
                "motion_min_patch": ms.motion_min_patch,
                "motion_coherence": ms.motion_coherence,
                "_noise": ms.noise_residual,
                "_flicker": flicker([a for _, a in g]),
                "_measures": m,
            }
        )

    def prune(self, keep_from: int | None) -> None:
        if keep_from is None:
            self.grays, self.measures = [], []
        else:
            self.grays = [x for x in self.grays if x[0] >= keep_from]
            self.measures = [x for x in self.measures if x[0] >= keep_from]


def _finish_tags(clips: list[dict], cfg: RunConfig, bits_per_pixel: float | None, cut_rate: float) -> None:
    for c in clips:
        c.update(
            tag_scores(
                c.pop("_measures"),
                cfg=cfg.tags,
                motion_score=c["motion_score"],
                motion_coherence=c["motion_coherence"],
                noise_residual=c.pop("_noise"),
                flicker_level=c.pop("_flicker"),
                width=c["width"],
                height=c["height"],
                bits_per_pixel=bits_per_pixel,
                cut_rate_per_min=cut_rate,
            )
        )
        c["bits_per_pixel"] = bits_per_pixel


def analyze_video(row: dict, cfg: RunConfig, motion: MotionScorer) -> tuple[dict, list[dict]]:
    """Returns (source field updates, clip rows). Raises MediaError for a broken video."""
    detector = CutDetector(cfg.split)
    windower = Windower(cfg.split)
    scorer = _ClipScorer(cfg, motion, row)
    times: list[float] = []
    cuts = 0
    stats = DecodeStats()
    for fr in iter_frames(
        row["source"],
        thumb_width=cfg.decode.cut_thumb_width,
        work_short_side=cfg.decode.work_short_side,
        motion_fps=cfg.motion.sample_fps,
        tags_short_side=cfg.tags.short_side,
        # At least one tag frame in the shortest clip, whatever the configured rate.
        tags_fps=max(cfg.tags.sample_fps, 1.0 / cfg.split.min_clip_s),
        threads=cfg.decode.threads,
        stats=stats,
        stall_timeout_s=cfg.decode.stall_timeout_s,
    ):
        if fr.index == 0 and fr.rotation:
            # Display rotation lives in frame side data: sizes are reported after it.
            row["rotation"] = fr.rotation
            if fr.rotation in (90, 270):
                row["width"], row["height"] = row["height"], row["width"]
        is_cut = detector.update(fr.index, fr.thumb)
        closed = windower.push(fr.index, fr.t, is_cut)
        if (gradual := detector.transition()) is not None:  # frames [first, end) are dropped
            closed += windower.drop(*gradual)
            is_cut = True
        cuts += is_cut
        for w in closed:
            scorer.close(w)
        if closed or is_cut:  # the open window moved: drop samples before it
            scorer.prune(windower.start)
        scorer.add(fr.index, fr.t, fr.gray, fr.rgb)
        times.append(fr.t)
    if not times:
        raise MediaError("video stream has no decodable frames", code="undecodable")
    check_complete(stats)  # judged on the video stream, from its first decodable frame
    intervals = np.diff(times)
    frame_dur = float(np.median(intervals)) if len(intervals) else stats.frame_s
    duration = times[-1] - times[0] + frame_dur
    for w in windower.finish(len(times), times[-1] + frame_dur):
        scorer.close(w)
    fps = len(times) / duration
    vfr = bool(len(intervals) > 1 and np.std(intervals) > 0.1 * np.mean(intervals))
    bpp = None
    if row.get("bit_rate") and row.get("width") and row.get("height"):
        bpp = row["bit_rate"] / (row["width"] * row["height"] * fps)
    cut_rate = cuts / (duration / 60.0)
    _finish_tags(scorer.clips, cfg, bpp, cut_rate)
    updates = {
        "width": row["width"],
        "height": row["height"],
        "rotation": row.get("rotation") or 0,
        "duration_s": duration,
        "fps": fps,
        "vfr": vfr,
        "num_frames": len(times),
        "num_shots": cuts + 1,
        "cut_rate_per_min": cut_rate,
        "num_clips": len(scorer.clips),
    }
    return updates, scorer.clips


def read_image(uri: str) -> np.ndarray:
    with fsspec.open(uri, "rb") as f:
        return np.asarray(ImageOps.exif_transpose(Image.open(f)).convert("RGB"))


def analyze_image(row: dict, cfg: RunConfig) -> tuple[dict, list[dict]]:
    """An image is a one-frame clip: no motion, tags from its single frame."""
    rgb = read_image(row["source"])
    h, w = rgb.shape[:2]
    tw, th = scaled_size(w, h, cfg.tags.short_side)
    small = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA)
    clip = {
        "clip_id": clip_id(row["source_id"], 0, 1),
        "source": row["source"],
        "media_type": "image",
        "start_frame": 0,
        "end_frame": 1,
        "start_s": 0.0,
        "end_s": 0.0,
        "num_frames": 1,
        "fps": None,
        "width": w,
        "height": h,
        "_measures": [measure_frame(small)],
        "_noise": None,
        "_flicker": 0.0,
        "motion_score": None,
        "motion_min_patch": None,
        "motion_coherence": None,
    }
    _finish_tags([clip], cfg, None, 0.0)
    return {"num_frames": 1, "num_shots": 1, "cut_rate_per_min": 0.0, "num_clips": 1}, [clip]


class SplitAndScore(Stage):
    """Per source: decode once, split at cuts, score every clip (CPU tier)."""

    reads = _PROBED
    writes = ("width", "height", "rotation", "duration_s", "fps", "vfr", "num_frames", "num_shots", "cut_rate_per_min", "num_clips", "clips")
    batch_size = 1

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self._motion: MotionScorer | None = None

    def setup(self) -> None:
        cv2.setNumThreads(1)  # parallelism comes from running many sources at once
        self._motion = MotionScorer(self.cfg.motion)

    def analyze(self, row: dict) -> dict:
        row = dict(row)
        row["clips"] = []
        if row["status"] != "ok":
            return row
        try:
            if row["media_type"] == "image":
                updates, clips = analyze_image(row, self.cfg)
            else:
                updates, clips = analyze_video(row, self.cfg, self._motion)
        except (MediaError, av.error.FFmpegError, cv2.error, OSError) as e:
            row.update(
                status="error",
                error=str(e) if isinstance(e, MediaError) else f"{type(e).__name__}: {e}",
                error_code=e.code if isinstance(e, MediaError) else "decode",
            )
            return row
        row.update(updates)
        row["clips"] = clips
        return row

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self._motion is None:
            self.setup()
        rows = [self.analyze(r) for r in batch.to_pylist()]
        return to_table(rows, analyzed_source_schema())
