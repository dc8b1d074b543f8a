"""Buckets and planning: the data config, and which bucket, frame rate and frame times a
sample gets, decided from its KEY.json alone (no decoding).

**Buckets** (Open-Sora style) come from `DataConfig.buckets`, not from the shards, so the
trainer can train at sizes curation did not bucket for. A sample goes to the config buckets
of its media whose aspect is nearest its own (log space, `curation.core.buckets.ASPECT_TOL`), tried
in order: resolutions needing no upscaling largest first, then the others smallest first; at
each resolution the longest frame count the clip can fill at the bucket's fps. Each candidate
keeps the sample with its `keep_prob`, else the next one is tried (so a keep_prob < 1 on a big
bucket demotes some clips to a smaller one); a sample no candidate keeps is skipped, as is a
clip too short for every frame count of its aspect. Every skip is counted by reason
(`SKIP_REASONS`); the loader reports the counts.

**Multi-frame-rate** (CogVideo's hierarchical multi-frame-rate training, Hong et al. 2022,
arXiv:2205.15868, Sec. 3.1): a video bucket (or `data.fps`) may list several frame rates.
Among the listed rates at which the clip can fill the bucket's frames, one is drawn uniformly
per sample (seeded), so long clips are seen both sparse and dense and short clips only at the
rates they can fill. With `data.fps_condition = "text_prefix"` the model is told the rate as
CogVideo does, a token prefixed to the text (`fps_prompt`: "<8 fps> a cat ..."); with "none"
(the default: the released CogVideoX models were not trained with it) it is not told.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import torch

from curation.core.buckets import ASPECT_TOL, SIZE_MULTIPLE, Resolution, bucket_name, parse_bucket
from training.data.video_io import frame_times, time_slack

MEDIA = ("video", "image")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
PIXEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "uint8": torch.uint8}
FPS_CONDITIONS = ("none", "text_prefix")
# Why a sample is not trained on (planner and loader). Counted per reason, never silent.
SKIP_REASONS = {
    "no_media": "no media or KEY.json in the sample",
    "bad_metadata": "KEY.json lacks the size, fps or duration",
    "no_bucket": "no configured bucket of its media",
    "too_short": "too short for every bucket of its aspect at every listed fps",
    "not_kept": "not kept by any candidate bucket (keep_prob)",
    "undecodable": "its media failed to decode",
}


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from ints and strings, the same in every process (hash() of a str is not)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def _rates(value: object, where: str) -> float | tuple[float, ...] | None:
    """A frame rate, a list of them (multi-frame-rate), or None; lists become sorted tuples."""
    if value is None:
        return None
    many = isinstance(value, (list, tuple))
    vals = list(value) if many else [value]
    if not vals or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in vals):
        raise ValueError(f"{where} must be a rate > 0, a non-empty list of them, or null, got {value!r}")
    if len(set(vals)) != len(vals):
        raise ValueError(f"{where}: duplicate rates in {value!r}")
    return tuple(sorted(float(v) for v in vals)) if many else float(value)


@dataclass(frozen=True, kw_only=True)
class BucketSpec:
    """One training bucket: a name (`720x480_f49`, `image_1024x576`) or width/height/frames/media."""

    name: str = ""
    width: int = 0
    height: int = 0
    frames: int = 0  # video: frames per clip; image: 1 (filled in)
    media: str = "video"
    keep_prob: float = 1.0  # chance a sample offered to this bucket stays in it (else the next candidate)
    batch_size: int = 1
    # Frames are picked at this rate (frames/s); a list: one drawn per sample (multi-frame-rate);
    # None: DataConfig.fps.
    fps: float | tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        where = f"data.buckets[{self.name or f'{self.width}x{self.height}'}]"
        if self.name:
            try:
                res, frames = parse_bucket(self.name)
            except ValueError:
                raise ValueError(f"{where}.name: not a bucket name like '720x480_f49' or 'image_1024x576'") from None
            given = {"width": self.width, "height": self.height, "frames": self.frames}
            implied = {"width": res.width, "height": res.height, "frames": frames or 1}
            for f, v in given.items():
                if v and v != implied[f]:
                    raise ValueError(f"{where}.{f}: {v} contradicts the name ({implied[f]})")
            if self.media != res.media and self.media != "video":  # "video" is the default, not a choice
                raise ValueError(f"{where}.media: {self.media!r} contradicts the name")
            for f, v in (*implied.items(), ("media", res.media)):
                object.__setattr__(self, f, v)
        if self.media not in MEDIA:
            raise ValueError(f"{where}.media must be one of {MEDIA}, got {self.media!r}")
        if self.media == "image":
            if self.frames not in (0, 1):
                raise ValueError(f"{where}.frames: an image bucket has 1 frame, got {self.frames}")
            object.__setattr__(self, "frames", 1)
        for f in ("width", "height"):
            v = getattr(self, f)
            if not isinstance(v, int) or v <= 0 or v % SIZE_MULTIPLE:
                raise ValueError(f"{where}.{f} must be a positive multiple of {SIZE_MULTIPLE}, got {v!r}")
        res = Resolution(width=self.width, height=self.height, media=self.media)
        if self.media == "video" and (not isinstance(self.frames, int) or self.frames < 1 or (self.frames - 1) % 4):
            raise ValueError(f"{where}.frames must be 4k+1, got {self.frames!r}")
        object.__setattr__(self, "name", bucket_name(res, self.frames))
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"{where}.batch_size must be a positive integer, got {self.batch_size!r}")
        if not 0 < self.keep_prob <= 1:
            raise ValueError(f"{where}.keep_prob must be within (0, 1], got {self.keep_prob!r}")
        object.__setattr__(self, "fps", _rates(self.fps, f"{where}.fps"))

    @property
    def log_aspect(self) -> float:
        return math.log(self.width / self.height)


# CogVideoX 1.0 trains 720x480 x 49 frames at 8 fps; 1.5 adds 16:9 up to 1360x768. The 16:9
# sizes share an aspect, so 16:9 clips big enough go to 1360x768 half the time and are demoted
# to 1024x576 otherwise; f17 buckets keep the 2-6 s clips that cannot fill 49 frames at 8 fps.
DEFAULT_BUCKETS: tuple[BucketSpec, ...] = (
    BucketSpec(name="720x480_f49", batch_size=1),
    BucketSpec(name="720x480_f17", batch_size=4),
    BucketSpec(name="480x720_f49", batch_size=1),
    BucketSpec(name="1360x768_f49", batch_size=1, keep_prob=0.5),
    BucketSpec(name="1024x576_f49", batch_size=1),
    BucketSpec(name="1024x576_f17", batch_size=2),
    BucketSpec(name="image_720x480", batch_size=8),
    BucketSpec(name="image_1024x576", batch_size=8),
)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    shards: str = ""  # OUT, OUT/shards or OUT/shards/index.json (curation/outputs/write_shards.py)
    cache_dir: str | None = None  # read latents and text embeddings from here instead of pixels
    buckets: tuple[BucketSpec, ...] = DEFAULT_BUCKETS
    # Default bucket fps; a list: multi-frame-rate (one drawn per sample, clip length
    # permitting); None: each clip's own rate (consecutive frames).
    fps: float | tuple[float, ...] | None = 8.0
    fps_condition: str = "none"  # "text_prefix": prompts start with "<n fps> " (CogVideo); "none"
    frame_multiple: int = 8  # video frames = frame_multiple*N + 1: 4 (the VAE), 8 (CogVideoX 1.0), 16 (1.5)
    image_ratio: float | None = None  # share of image batches; None: the images' share of samples
    resample: bool = True  # shards drawn with replacement per rank and stream (multi-node); else split passes
    shuffle_buffer: int = 100  # samples (compressed) held per stream and media for shuffling
    seed: int = 0
    epoch_length: int = 1000  # batches per epoch per rank
    num_workers: int = 4  # DataLoader workers per rank (0: in the training process)
    random_start: bool = True  # clip start drawn within its spare time, else the clip's first frame
    pixel_dtype: str = "float32"  # float32 | bfloat16 in [-1, 1], or uint8 (see to_model_pixels)
    # T2V refuses to train when more than this share of samples has an empty caption (a few act
    # like extra CFG dropout; many mean captioning did not run), unless allow_empty_captions.
    max_empty_caption_share: float = 0.05
    allow_empty_captions: bool = False  # empty prompts are intended (e.g. unconditional training)

    def __post_init__(self) -> None:
        if not self.shards and not self.cache_dir:
            raise ValueError("data.shards: give the shards (OUT, OUT/shards or its index.json) or data.cache_dir")
        if not self.buckets:
            raise ValueError("data.buckets: need at least one bucket")
        names = [b.name for b in self.buckets]
        if len(set(names)) != len(names):
            raise ValueError(f"data.buckets: duplicate buckets {sorted(n for n, c in Counter(names).items() if c > 1)}")
        if self.frame_multiple not in (4, 8, 16):
            raise ValueError(f"data.frame_multiple must be 4, 8 or 16, got {self.frame_multiple!r}")
        for b in self.buckets:
            if b.media == "video" and (b.frames - 1) % self.frame_multiple:
                raise ValueError(f"data.buckets[{b.name}].frames: {b.frames} is not {self.frame_multiple}N+1 (data.frame_multiple)")
        object.__setattr__(self, "fps", _rates(self.fps, "data.fps"))
        if self.fps_condition not in FPS_CONDITIONS:
            raise ValueError(f"data.fps_condition must be one of {FPS_CONDITIONS}, got {self.fps_condition!r}")
        if self.image_ratio is not None:
            if not 0 <= self.image_ratio <= 1:
                raise ValueError(f"data.image_ratio must be within [0, 1] or null, got {self.image_ratio!r}")
            for media, needed in (("image", self.image_ratio > 0), ("video", self.image_ratio < 1)):
                if needed and not any(b.media == media for b in self.buckets):
                    raise ValueError(f"data.image_ratio: {self.image_ratio} needs an {media} bucket in data.buckets")
        for f in ("shuffle_buffer", "epoch_length"):
            if not (isinstance(getattr(self, f), int) and getattr(self, f) >= 1):
                raise ValueError(f"data.{f} must be a positive integer, got {getattr(self, f)!r}")
        if not (isinstance(self.num_workers, int) and self.num_workers >= 0):
            raise ValueError(f"data.num_workers must be an integer >= 0, got {self.num_workers!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"data.seed must be an integer, got {self.seed!r}")
        if self.pixel_dtype not in PIXEL_DTYPES:
            raise ValueError(f"data.pixel_dtype must be one of {list(PIXEL_DTYPES)}, got {self.pixel_dtype!r}")
        if not 0 <= self.max_empty_caption_share <= 1:
            raise ValueError(f"data.max_empty_caption_share must be within [0, 1], got {self.max_empty_caption_share!r}")

    def bucket(self, name: str) -> BucketSpec:
        for b in self.buckets:
            if b.name == name:
                return b
        raise KeyError(name)

    def bucket_rates(self, b: BucketSpec) -> tuple[float | None, ...]:
        """The frame rates a video bucket samples at; (None,) for the clips' own rate, () for images."""
        if b.media == "image":
            return ()
        fps = b.fps if b.fps is not None else self.fps
        return fps if isinstance(fps, tuple) else (fps,)

    @property
    def streams(self) -> int:
        return max(1, self.num_workers)


def fps_prompt(prompt: str, fps: float | None, condition: str) -> str:
    """The text the encoder sees: `prompt`, or with condition "text_prefix" and a frame rate,
    "<{fps:g} fps> " before it (CogVideo's frame-rate token, written as text for T5). Images
    (fps None) get no prefix."""
    if condition == "text_prefix" and fps is not None:
        return f"<{fps:g} fps> {prompt}" if prompt else f"<{fps:g} fps>"
    return prompt


def natural_image_ratio(cfg: DataConfig, samples: dict[str, int]) -> float:
    """The image batch share when data.image_ratio is null: the images' share of samples, among
    the media the config has buckets for (a config without image buckets trains on no image)."""
    has = {m: any(b.media == m for b in cfg.buckets) for m in MEDIA}
    n = {m: samples.get(m, 0) if has[m] else 0 for m in MEDIA}
    return n["image"] / (n["image"] + n["video"]) if n["image"] + n["video"] else 0.0


@dataclass(frozen=True)
class Planned:
    """A sample assigned to a bucket, still compressed: what a batch is made of before decoding."""

    key: str
    url: str
    bucket: BucketSpec
    data: bytes
    caption: str  # the sample's caption ("" when none)
    clip_id: str
    times: tuple[float, ...] | None  # video frame times (s); None for images
    rate: float | None = None  # the configured rate drawn (None: images, or the clip's own rate)
    fps: float | None = None  # the rate the frames show: `rate`, or the clip's own; None for images

    @property
    def group(self) -> tuple[str, float | None]:
        """Samples batch together when they share bucket and drawn rate: one fps per batch."""
        return self.bucket.name, self.rate


class Planner:
    """Assigns samples to the config's buckets from their KEY.json (see the module docstring)."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self._candidates: dict[tuple[str, int, int], list[BucketSpec]] = {}
        self.skipped: Counter[str] = Counter()  # SKIP_REASONS key -> samples

    def candidates(self, media: str, width: int, height: int) -> list[BucketSpec]:
        """Same-aspect buckets in the order they are offered the sample: the ordered form of
        curation.core.buckets.choose_resolution (no upscaling largest first, then smallest first),
        longest frame count first at each resolution."""
        k = (media, width, height)
        if k not in self._candidates:
            specs = [b for b in self.cfg.buckets if b.media == media]
            aspect = math.log(width / height)
            nearest = min((abs(b.log_aspect - aspect) for b in specs), default=0.0)
            same = [b for b in specs if abs(b.log_aspect - aspect) <= nearest + ASPECT_TOL]

            def order(b: BucketSpec) -> tuple:
                area = b.width * b.height
                fits = b.width <= width and b.height <= height
                return (0, -area, -b.width, -b.frames) if fits else (1, area, b.width, -b.frames)

            self._candidates[k] = sorted(same, key=order)
        return self._candidates[k]

    def plan(self, sample: dict, epoch: object) -> Planned | str:
        """The planned sample, or the SKIP_REASONS key saying why it is skipped (the caller
        counts it). Draws come from an RNG seeded by (seed, epoch, key), so a plan does not
        depend on the order samples arrive in."""
        key = sample["__key__"]
        ext = next((e for e in ("mp4", *IMAGE_EXTS) if e in sample), None)
        if ext is None or "json" not in sample:
            return "no_media"
        media = "video" if ext == "mp4" else "image"
        meta = json.loads(sample["json"])
        w, h = meta.get("width"), meta.get("height")
        if not (w and h) and meta.get("bucket"):  # no source size: the curation bucket's aspect
            res, _ = parse_bucket(meta["bucket"])
            w, h = res.width, res.height
        if not (w and h):
            return "bad_metadata"
        rng = random.Random(stable_seed(self.cfg.seed, epoch, key))
        duration = clip_fps = 0.0
        if media == "video":
            clip_fps = float(meta.get("fps") or 0)
            start, end = meta.get("start_s"), meta.get("end_s")
            duration = end - start if start is not None and end is not None else (meta.get("num_frames") or 0) / (clip_fps or 1)
            if not (clip_fps > 0 and duration > 0):
                return "bad_metadata"
        reason = "no_bucket"
        for b in self.candidates(media, w, h):
            times = rate = fps = None
            if media == "video":
                # (rate, slack) for each listed rate the clip can fill; None: the clip's own rate.
                fits = [(r, s) for r in self.cfg.bucket_rates(b)
                        if (s := time_slack(duration, clip_fps, b.frames, r or clip_fps)) is not None]
                if not fits:
                    reason = "too_short"
                    continue
                # One rate listed (the common case): no draw, so single-rate plans are unchanged.
                rate, slack = fits[0] if len(fits) == 1 else fits[rng.randrange(len(fits))]
                fps = rate or clip_fps
                start_s = rng.uniform(0.0, slack) if self.cfg.random_start else 0.0
                times = tuple(frame_times(b.frames, fps, start_s))
            if b.keep_prob < 1 and rng.random() >= b.keep_prob:
                reason = "not_kept"
                continue
            caption = sample["txt"].decode() if isinstance(sample.get("txt"), bytes) else (sample.get("txt") or "")
            return Planned(key=key, url=sample.get("__url__", ""), bucket=b, data=sample[ext], caption=caption,
                           clip_id=meta.get("clip_id") or key, times=times, rate=rate, fps=fps)
        return reason


def group_by_bucket(planned: Iterator[Planned]) -> Iterator[list[Planned]]:
    """A batch whenever a (bucket, drawn rate) group has batch_size samples. Hand-written:
    wds.batched batches consecutive samples whatever their shape. Streams are endless within
    an epoch; the partial groups left at its end are dropped with it."""
    buffers: dict[tuple, list[Planned]] = {}
    for p in planned:
        buf = buffers.setdefault(p.group, [])
        buf.append(p)
        if len(buf) == p.bucket.batch_size:
            yield buf
            buffers[p.group] = []
