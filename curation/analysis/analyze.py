"""Stage: one decode pass per source -> shot cuts, clip windows, motion and tag scores.

Frames stream through once (curation/media/decode.py). Cut detection sees every frame; clips close
as soon as their window is known and are scored from the samples buffered for them, so
memory holds one open window's samples, not the video. Source-level facts known only at the
end (cut rate, frame rate, VFR, truncation) are filled in after the pass.

Rows out are clips (schema.analyzed_clip_schema), so later stages batch by clip: each carries
its scores, the RGB frames model stages read (curation/core/frames.py, `[frames]` config), and the
first clip of a source carries the source's own row in `source_row`.
"""

from __future__ import annotations


import av
import cv2
import numpy as np
import pyarrow as pa

from curation.core.config import RunConfig
from curation.media.decode import DecodeStats, Frame, check_complete, iter_frames, scaled_size
from curation.media.container import MediaError
from curation.core.frames import pack_frames
from curation.media.images import read_image
from curation.core.schema import SOURCE_ROW, analyzed_clip_schema, source_schema, to_table
from curation.analysis.score_motion import MotionScorer, PairScores
from curation.analysis.split_scenes import Splitter, Window
from curation.core.stage import Stage, item_error
from curation.analysis.tag_negatives import FrameJumps, FrameMeasures, flicker, measure_frame, tag_scores

# The source row fields this stage reads (written by ProbeSources).
_PROBED = ("source", "source_id", "media_type", "status", "width", "height", "duration_s", "bit_rate")


def clip_id(src_id: str, start: int, end: int) -> str:
    return f"{src_id}_{start:07d}_{end:07d}"


class _ClipScorer:
    """Buffers one open window's samples and scores windows as they close.

    Flow runs as motion samples arrive, one pair per new sample, not in a burst when a window
    closes (a 10 s window's 30 pairs at once stalled the decoder once its queue was full);
    a window sums its pairs. All in the loop's thread: a worker thread for the samples was
    slower (vtest, Megamind, Megamind_bugy: 0.42-0.63 of raw decode with one, 0.48-0.70
    without), as three threads' Python then wait on each other for the GIL."""

    def __init__(self, cfg: RunConfig, motion: MotionScorer, row: dict, jumps: FrameJumps | None = None):
        self.cfg, self.motion, self.row = cfg, motion, row
        self.max_frames = cfg.frames_plan()[1]
        self.jumps = jumps
        self.pairs: list[tuple[int, int, PairScores]] = []  # (first, second sample's index, scores)
        self.gray_means: list[tuple[int, float]] = []  # (index, mean grey level) per motion sample: flicker
        self._last_gray: tuple[int, float, np.ndarray] | None = None
        self._last_half: np.ndarray | None = None
        self.measures: list[tuple[int, FrameMeasures]] = []
        self.pictures: list[tuple[int, float, np.ndarray]] = []  # model-stage frames
        # (first frame, (w, h)) of each frame size met: a size change is a cut, so a clip
        # has one size, its own (the stream's first size was every clip's).
        self.sizes: list[tuple[int, tuple[int, int]]] = []
        self.clips: list[dict] = []

    def add(self, fr: Frame) -> None:
        """Take frame `fr`'s size and its samples."""
        if not self.sizes or self.sizes[-1][1] != fr.size:
            self.sizes.append((fr.index, fr.size))
        if fr.gray is not None:
            last = self._last_gray
            if last is not None and last[2].shape == fr.gray.shape:
                p = self.motion.pair(last[2], fr.gray, last[1], fr.t, self._last_half)
                self.pairs.append((last[0], fr.index, p))
                self._last_half = p.half
            else:
                self._last_half = None
            self._last_gray = (fr.index, fr.t, fr.gray)
            self.gray_means.append((fr.index, cv2.mean(fr.gray)[0]))
        if fr.rgb is not None:
            self.measures.append((fr.index, measure_frame(fr.rgb)))
        if fr.model_rgb is not None:
            self.pictures.append((fr.index, fr.t, fr.model_rgb))

    def close(self, w: Window) -> None:
        m = [fm for i, fm in self.measures if w.start <= i < w.end]
        ms = self.motion.combine([p for i, j, p in self.pairs if w.start <= i and j < w.end])
        n = w.end - w.start
        pics = [(t, a) for i, t, a in self.pictures if w.start <= i < w.end]
        if len(pics) > self.max_frames:  # evenly spread over the clip
            pics = [pics[int(k)] for k in np.linspace(0, len(pics) - 1, self.max_frames).round()]
        frames = pack_frames([a for _, a in pics], [t for t, _ in pics]) if pics else {}
        jumps, transients = self.jumps.count(w.start, w.end) if self.jumps is not None else (0, 0)
        width, height = next((s for i, s in reversed(self.sizes) if i <= w.start), (self.row["width"], self.row["height"]))
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
                "width": width,
                "height": height,
                "motion_score": ms.motion_score,
                "motion_min_patch": ms.motion_min_patch,
                "motion_coherence": ms.motion_coherence,
                "_noise": ms.noise_residual,
                "_flicker": flicker([g for i, g in self.gray_means if w.start <= i < w.end]),
                "_measures": m,
                **frames,
                "_jumps": jumps,
                "_transients": transients,
            }
        )

    def prune(self, keep_from: int | None) -> None:
        if self.jumps is not None:
            self.jumps.prune(keep_from)
        if keep_from is None:
            self.pairs, self.gray_means, self.measures, self.pictures = [], [], [], []
        else:
            self.pairs = [x for x in self.pairs if x[0] >= keep_from]
            self.gray_means = [x for x in self.gray_means if x[0] >= keep_from]
            self.measures = [x for x in self.measures if x[0] >= keep_from]
            self.pictures = [x for x in self.pictures if x[0] >= keep_from]


def _finish_tags(clips: list[dict], cfg: RunConfig, bits_per_pixel: float | None) -> None:
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
                fps=c["fps"],
                duration_s=c["end_s"] - c["start_s"],
                jumps=c.pop("_jumps", 0),
                transients=c.pop("_transients", 0),
            )
        )
        c["bits_per_pixel"] = bits_per_pixel


def analyze_video(row: dict, cfg: RunConfig, motion: MotionScorer, frames: bool = True, threads: int | None = None,
                  shot_model=None) -> tuple[dict, list[dict]]:
    """Returns (source field updates, clip rows). Raises MediaError for a broken video.

    With `frames`, each clip row carries its model-stage frames (`cfg.frames`); with
    `shot_model` (curation/analysis/shot_model.py), the split takes its second opinion."""
    splitter = Splitter(cfg.split, shot_model)
    jumps = FrameJumps()
    scorer = _ClipScorer(cfg, motion, row, jumps)
    times: list[float] = []
    stats = DecodeStats()
    for fr in iter_frames(
        row["source"],
        thumb_width=cfg.decode.cut_thumb_width,
        work_short_side=cfg.decode.work_short_side,
        motion_fps=cfg.motion.sample_fps,
        tags_short_side=cfg.tags.short_side,
        # At least one tag frame in the shortest clip, whatever the configured rate.
        tags_fps=max(cfg.tags.sample_fps, 1.0 / cfg.split.min_clip_s),
        threads=cfg.decode.threads if threads is None else threads,
        stats=stats,
        stall_timeout_s=cfg.decode.stall_timeout_s,
        model_short_side=cfg.frames.short_side if frames else None,
        model_fps=cfg.frames_plan()[0] if frames else None,
    ):
        if fr.index == 0 and fr.rotation:
            # Display rotation lives in frame side data: sizes are reported after it.
            row["rotation"] = fr.rotation
            if fr.rotation in (90, 270):
                row["width"], row["height"] = row["height"], row["width"]
        # Windows close some frames behind the newest (the split decides with a lag): the
        # scorer holds samples from the first frame an open or coming window may need.
        closed = splitter.push(fr.index, fr.t, fr.thumb, fr.step)
        jumps.update(fr.thumb, splitter.last_blur)
        for w in closed:
            scorer.close(w)
        if closed or fr.index % 64 == 0:
            scorer.prune(splitter.start)
        scorer.add(fr)
        times.append(fr.t)
    if not times:
        raise MediaError("video stream has no decodable frames", code="undecodable")
    check_complete(stats)  # judged on the video stream, from its first decodable frame
    intervals = np.diff(times)
    frame_dur = float(np.median(intervals)) if len(intervals) else stats.frame_s
    duration = times[-1] - times[0] + frame_dur
    for w in splitter.finish(len(times), times[-1] + frame_dur):
        scorer.close(w)
    # Shot boundaries have a shot on both sides: black leading or trailing the video is
    # dropped from the clips but starts or ends no shot.
    cuts = sum(0 < t.first and t.end < len(times) for t in splitter.transitions)
    fps = len(times) / duration
    vfr = bool(len(intervals) > 1 and np.std(intervals) > 0.1 * np.mean(intervals))
    bpp = None
    if row.get("bit_rate") and row.get("width") and row.get("height"):
        bpp = row["bit_rate"] / (row["width"] * row["height"] * fps)
    cut_rate = cuts / (duration / 60.0)
    _finish_tags(scorer.clips, cfg, bpp)
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


def analyze_image(row: dict, cfg: RunConfig, frames: bool = True) -> tuple[dict, list[dict]]:
    """An image is a one-frame clip: no motion, tags from its single frame."""
    rgb = read_image(row["source"])
    h, w = rgb.shape[:2]
    tw, th = scaled_size(w, h, cfg.tags.short_side)
    small = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA)
    picture = {}
    if frames:
        fw, fh = scaled_size(w, h, cfg.frames.short_side)
        picture = pack_frames(cv2.resize(rgb, (fw, fh), interpolation=cv2.INTER_AREA)[None], [0.0])
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
        **picture,
    }
    _finish_tags([clip], cfg, None)
    return {"num_frames": 1, "num_shots": 1, "cut_rate_per_min": 0.0, "num_clips": 1}, [clip]


class SplitAndScore(Stage):
    """Per source: decode once, split at cuts, score every clip (CPU tier).

    In: probed source rows. Out: clip rows (schema.analyzed_clip_schema), one per clip, in
    source order; a source with no clip is one row with a null `clip_id` carrying its
    `source_row`. Any exception while analysing a source becomes that source's error row
    (stage.item_error): one bad input never fails the batch.

    `frames=False` leaves the model-stage frame columns null (no model stage will read them,
    and sampling them costs a colour conversion per sampled frame).

    With the shot model on (`split.model`, TransNetV2 on the gpu profile) the stage holds it:
    it runs on an actor pool, each actor with `split.model_gpus` of a GPU when it has one.
    """

    reads = _PROBED
    writes = tuple(n for n in analyzed_clip_schema().names if n != "source")
    batch_size = 1

    def __init__(self, cfg: RunConfig, frames: bool = True):
        self.cfg = cfg
        self.frames = frames
        self._motion: MotionScorer | None = None
        self._shot_model = None
        self.shot_model = cfg.split.model_for(cfg.profile) != "off"
        if self.shot_model:  # instance values shadow the class defaults: the runners read them
            self.stateful = True
            if cfg.split.model_device != "cpu":
                self.num_gpus = cfg.split.model_gpus

    def setup(self) -> None:
        cv2.setNumThreads(1)  # parallelism comes from running many sources at once
        self._motion = MotionScorer(self.cfg.motion)
        if self.shot_model and self._shot_model is None:
            from curation.analysis import shot_model

            self._shot_model = shot_model.load(self.cfg.split.model_device)

    def analyze(self, row: dict) -> tuple[dict, list[dict]]:
        """(source row, its clip rows) for one probed source row."""
        row = dict(row)
        if row["status"] != "ok":
            return row, []
        try:
            if row["media_type"] == "image":
                updates, clips = analyze_image(row, self.cfg, self.frames)
            else:
                # FFmpeg threads follow the stage's CPUs (Ray's accounting), unless [decode] sets them.
                threads = self.cfg.decode.threads or self.threads
                updates, clips = analyze_video(row, self.cfg, self._motion, self.frames, threads, self._shot_model)
        except (av.error.FFmpegError, cv2.error, OSError) as e:
            row.update(status="error", **item_error(e, default_code="decode"))
            return row, []
        except Exception as e:  # noqa: BLE001 - any failure on one source is that source's error row
            row.update(status="error", **item_error(e))
            return row, []
        row.update(updates)
        return row, clips

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self._motion is None:
            self.setup()
        names = set(source_schema().names)
        out: list[dict] = []
        for probed in batch.to_pylist():
            src, clips = self.analyze(probed)
            src = {k: v for k, v in src.items() if k in names}
            src["num_clips"] = len(clips)
            if not clips:
                out.append({"source": src["source"], "media_type": src.get("media_type"), SOURCE_ROW: src})
                continue
            clips[0][SOURCE_ROW] = src
            out += clips
        return to_table(out, analyzed_clip_schema())


def group_sources(table: pa.Table) -> list[dict]:
    """Clip rows (SplitAndScore's output) back to source rows, each with its `clips` list.

    For tests and benchmarks that look at one source at a time; the pipeline never does this."""
    rows: dict[str, dict] = {}
    for r in table.to_pylist():
        head = r.pop(SOURCE_ROW)
        if head is not None:
            rows[head["source"]] = dict(head, clips=[])
        if r["clip_id"] is not None:
            rows[r["source"]]["clips"].append(r)
    return list(rows.values())
