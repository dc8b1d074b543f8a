"""The trainer's data: bucketed batches from OUT/shards (pixels) or from the latent cache.

**Buckets** (Open-Sora style) come from `DataConfig.buckets`, not from the shards, so the
trainer can train at sizes curation did not bucket for. A sample goes to the config buckets
of its media whose aspect is nearest its own (log space, `curation.buckets.ASPECT_TOL`), tried
in order: resolutions needing no upscaling largest first, then the others smallest first; at
each resolution the longest frame count the clip can fill at the bucket's fps. Each candidate
keeps the sample with its `keep_prob`, else the next one is tried (so a keep_prob < 1 on a big
bucket demotes some clips to a smaller one); a sample no candidate keeps is dropped, as is a
clip too short for every frame count of its aspect. Pixels: resized preserving aspect to cover
the bucket, centre-cropped, frames picked at the bucket fps (training/video_io.py).

**Streams.** Per rank, batches are numbered g = 0, 1, 2, ...; epoch e is g in [e*L, (e+1)*L)
with L = `epoch_length`. Batch g is made by stream s = g mod S (S = max(1, num_workers)) as
that stream's next batch. A stream reads its own slice of the data -- shards resampled with
its own seed (`resample`), or a disjoint slice of each shuffled pass, split by rank and then
by stream -- through webdataset verbs, plans each sample from its KEY.json alone (bucket, keep
draws, start time), groups samples by bucket and emits a batch when one is full. Images and
videos are separate streams; before each batch a seeded draw picks image with probability
`image_ratio`, so a batch never mixes shapes or media. Every RNG is seeded from (seed, epoch,
rank, stream) or (seed, epoch, clip_id): batch g depends on the seed, rank, world size, S, the
config and g, never on timing or on which DataLoader worker runs the stream.

**Exact resume.** The data position is the number of batches a rank has consumed
(`TrainLoader.state_dict()`). Resumed at g0, DataLoader worker w runs stream (g0 + w) mod S;
the DataLoader takes batches from its workers in turn, so it delivers g0, g0+1, ... (each batch
carries its `index`, checked on arrival). A stream fast-forwards to its first batch >= g0 by
replaying the epoch's plan -- tar reads and JSON, no decoding -- which is exact because which
sample goes to which batch is decided before decoding. Cost: re-reading at most one epoch of
shards per stream, so keep epochs to minutes of reading. A decode error raises (with the shard
and key) rather than skipping, because skipping would make batches depend on decoding.

**Cache.** With `cache_dir` set, batches come from the latent cache (format below) instead:
same buckets, streams, ratio and position rules; no pixels are decoded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
from collections import Counter
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import webdataset as wds
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from curation.buckets import ASPECT_TOL, SIZE_MULTIPLE, Resolution, bucket_name, parse_bucket
from training.video_io import DecodeError, decode_image, decode_video, frame_times, time_slack

log = logging.getLogger("videomill")

MEDIA = ("video", "image")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
PIXEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "uint8": torch.uint8}
# A stream that drops this many samples in a row is not going to make a batch: say why.
_MAX_DROP_STREAK = 10_000


# ---------------------------------------------------------------------------------------- config


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
    fps: float | None = None  # frames are picked at this rate; None: DataConfig.fps

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
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"{where}.fps must be > 0 or null, got {self.fps!r}")

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
    shards: str = ""  # OUT, OUT/shards or OUT/shards/index.json (curation/write_shards.py)
    cache_dir: str | None = None  # read latents and text embeddings from here instead of pixels
    buckets: tuple[BucketSpec, ...] = DEFAULT_BUCKETS
    fps: float | None = 8.0  # default bucket fps; None: each clip's own rate (consecutive frames)
    frame_multiple: int = 8  # video frames = frame_multiple*N + 1: 4 (the VAE), 8 (CogVideoX 1.0), 16 (1.5)
    image_ratio: float | None = None  # share of image batches; None: the images' share of samples
    resample: bool = True  # shards drawn with replacement per rank and stream (multi-node); else split passes
    shuffle_buffer: int = 100  # samples (compressed) held per stream and media for shuffling
    seed: int = 0
    epoch_length: int = 1000  # batches per epoch per rank
    num_workers: int = 4  # DataLoader workers per rank (0: in the training process)
    random_start: bool = True  # clip start drawn within its spare time, else the clip's first frame
    pixel_dtype: str = "float32"  # float32 | bfloat16 in [-1, 1], or uint8 (see to_model_pixels)

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
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"data.fps must be > 0 or null, got {self.fps!r}")
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

    def bucket(self, name: str) -> BucketSpec:
        for b in self.buckets:
            if b.name == name:
                return b
        raise KeyError(name)

    def bucket_fps(self, b: BucketSpec) -> float | None:
        return b.fps if b.fps is not None else self.fps

    @property
    def streams(self) -> int:
        return max(1, self.num_workers)


def to_model_pixels(pixels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Pixels in [-1, 1] as `dtype`: uint8 batches (pixel_dtype = "uint8", a quarter of the
    bytes through worker queues and host-to-device copies) are converted on the device."""
    if pixels.dtype == torch.uint8:
        return pixels.to(dtype).div_(127.5).sub_(1.0)
    return pixels.to(dtype)


# ---------------------------------------------------------------------------------------- cache format


@dataclass(frozen=True)
class CacheFormat:
    """The latent cache `videomill train precompute` writes and `CacheSource` reads.

    CACHE/index.json:
        {"format": "videomill-cache-1",
         "parts": [{"path": "720x480_f49/part-000000.safetensors", "bucket": "720x480_f49", "samples": 64}, ...],
         ...anything else (vae, text encoder, dtype, data config) is informational}
      `path` is relative to CACHE; `bucket` is a DataConfig bucket name (the bucket the sample
      was encoded at); a part holds samples of one bucket only, so they stack.
    CACHE/<bucket>/part-NNNNNN.safetensors, n samples each:
        latent_moments  (n, 2*C, f, h, w)  float32 | float16 | bfloat16: the VAE posterior's
                        parameters, mean and log-variance concatenated on dim 1 as diffusers'
                        DiagonalGaussianDistribution holds them (`vae.encode(x).latent_dist.parameters`),
                        before any scaling factor. CogVideoX: C = 16, f = (F-1)/4 + 1, h = H/8, w = W/8.
        prompt_embeds   (n, L, D)  same dtypes: the text encoder's last hidden state, padded to L
                        (T5-XXL for CogVideoX: L = 226, D = 4096).
        optional, passed through when present (same keys in every part of a bucket):
        prompt_mask     (n, L) bool/uint8; image_latent_moments (n, 2*C, 1, h, w) for I2V.
      safetensors metadata (str -> str):
        format  "videomill-cache-1";  bucket  the bucket name;
        clip_ids  JSON list of n clip ids;  prompts  JSON list of n captions ("" when none).
    Writing it: iterate `PrecomputeSamples` (every sample once, decoded, with its bucket), encode,
    gather a bucket's samples into parts, `write_cache_part` each, `write_cache_index` last: a
    cache with an index is complete.
    """

    version: str = "videomill-cache-1"
    index: str = "index.json"
    part: str = "{bucket}/part-{part:06d}.safetensors"
    latents: str = "latent_moments"
    embeds: str = "prompt_embeds"
    dtypes: tuple[str, ...] = ("float32", "float16", "bfloat16")


CACHE_FORMAT = CacheFormat()
_ST_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def write_cache_part(root: str | Path, bucket: str, part: int, tensors: dict[str, torch.Tensor],
                     clip_ids: list[str], prompts: list[str]) -> dict:
    """Write one part atomically; returns its index entry."""
    n = len(clip_ids)
    for key in (CACHE_FORMAT.latents, CACHE_FORMAT.embeds):
        if key not in tensors:
            raise ValueError(f"cache part: missing tensor {key!r}")
        if _ST_DTYPES.get(tensors[key].dtype) not in CACHE_FORMAT.dtypes:
            raise ValueError(f"cache part: {key} has dtype {tensors[key].dtype}; use one of {CACHE_FORMAT.dtypes}")
    bad = {k: tuple(t.shape) for k, t in tensors.items() if t.shape[0] != n}
    if bad or len(prompts) != n:
        raise ValueError(f"cache part: {n} clip ids but tensors {bad} and {len(prompts)} prompts")
    rel = CACHE_FORMAT.part.format(bucket=bucket, part=part)
    path = Path(root) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    meta = {"format": CACHE_FORMAT.version, "bucket": bucket, "clip_ids": json.dumps(clip_ids), "prompts": json.dumps(prompts)}
    save_file({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return {"path": rel, "bucket": bucket, "samples": n}


def write_cache_index(root: str | Path, parts: list[dict], **info: Any) -> Path:
    """Write CACHE/index.json (last: its presence says the cache is complete)."""
    path = Path(root) / CACHE_FORMAT.index
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"format": CACHE_FORMAT.version, "parts": parts, **info}, indent=1, default=str))
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------- helpers


def _seed(*parts: object) -> int:
    """A 63-bit seed from ints and strings, the same in every process (hash() of a str is not)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): the arguments, else torch.distributed (torchrun, Ray Train), else
    the RANK/WORLD_SIZE environment, else (0, 1). Resolve in the training process: DataLoader
    workers have no process group."""
    if rank is None and world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        elif "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        else:
            rank, world_size = 0, 1
    if rank is None or world_size is None or not 0 <= rank < world_size:
        raise ValueError(f"rank/world_size: need 0 <= rank < world_size, got {rank}/{world_size}")
    return rank, world_size


def read_shard_index(shards: str | Path) -> tuple[Path, list[dict]]:
    """(OUT, shard entries with samples) from OUT, OUT/shards or OUT/shards/index.json."""
    p = Path(shards)
    for cand in (p, p / "index.json", p / "shards" / "index.json"):
        if cand.is_file():
            index = json.loads(cand.read_text())
            # Shard paths are relative to OUT, and index.json lives in OUT/shards.
            return cand.parent.parent, [e for e in index["shards"] if e.get("samples")]
    raise FileNotFoundError(f"data.shards: no index.json at {p} (write the shards first)")


def shard_media(entry: dict) -> str | None:
    """A bucketed shard's media from its bucket name; None for unbucketed shards (both)."""
    return parse_bucket(entry["bucket"])[0].media if entry.get("bucket") else None


def natural_image_ratio(cfg: DataConfig, samples: dict[str, int]) -> float:
    """The image batch share when data.image_ratio is null: the images' share of samples, among
    the media the config has buckets for (a config without image buckets trains on no image)."""
    has = {m: any(b.media == m for b in cfg.buckets) for m in MEDIA}
    n = {m: samples.get(m, 0) if has[m] else 0 for m in MEDIA}
    return n["image"] / (n["image"] + n["video"]) if n["image"] + n["video"] else 0.0


@dataclass(frozen=True)
class _Planned:
    """A sample assigned to a bucket, still compressed: what a batch is made of before decoding."""

    key: str
    url: str
    bucket: BucketSpec
    data: bytes
    prompt: str
    clip_id: str
    times: tuple[float, ...] | None  # video frame times (s); None for images


class Planner:
    """Assigns samples to the config's buckets from their KEY.json (see the module docstring)."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self._candidates: dict[tuple[str, int, int], list[BucketSpec]] = {}
        self.dropped: Counter[str] = Counter()

    def candidates(self, media: str, width: int, height: int) -> list[BucketSpec]:
        """Same-aspect buckets in the order they are offered the sample: the ordered form of
        curation.buckets.choose_resolution (no upscaling largest first, then smallest first),
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

    def plan(self, sample: dict, epoch: object) -> _Planned | str:
        """The planned sample, or why it is dropped. Draws come from an RNG seeded by
        (seed, epoch, key), so a plan does not depend on the order samples arrive in."""
        key = sample["__key__"]
        ext = next((e for e in ("mp4", *IMAGE_EXTS) if e in sample), None)
        if ext is None or "json" not in sample:
            return "no media or json"
        media = "video" if ext == "mp4" else "image"
        meta = json.loads(sample["json"])
        w, h = meta.get("width"), meta.get("height")
        if not (w and h) and meta.get("bucket"):  # no source size: the curation bucket's aspect
            res, _ = parse_bucket(meta["bucket"])
            w, h = res.width, res.height
        if not (w and h):
            return "unknown size"
        rng = random.Random(_seed(self.cfg.seed, epoch, key))
        duration = clip_fps = 0.0
        if media == "video":
            clip_fps = float(meta.get("fps") or 0)
            start, end = meta.get("start_s"), meta.get("end_s")
            duration = end - start if start is not None and end is not None else (meta.get("num_frames") or 0) / (clip_fps or 1)
            if not (clip_fps > 0 and duration > 0):
                return "unknown fps or duration"
        reason = f"no {media} bucket"
        for b in self.candidates(media, w, h):
            times = None
            if media == "video":
                fps = self.cfg.bucket_fps(b) or clip_fps
                slack = time_slack(duration, clip_fps, b.frames, fps) if fps else None
                if slack is None:
                    reason = "too short for every bucket of its aspect"
                    continue
                start_s = rng.uniform(0.0, slack) if self.cfg.random_start else 0.0
                times = tuple(frame_times(b.frames, fps, start_s))
            if b.keep_prob < 1 and rng.random() >= b.keep_prob:
                reason = "not kept (keep_prob)"
                continue
            prompt = sample["txt"].decode() if isinstance(sample.get("txt"), bytes) else (sample.get("txt") or "")
            return _Planned(key=key, url=sample.get("__url__", ""), bucket=b, data=sample[ext], prompt=prompt,
                            clip_id=meta.get("clip_id") or key, times=times)
        return reason


def load_pixels(planned: list[_Planned], cfg: DataConfig) -> torch.Tensor:
    """(B, C, F, H, W) pixels of one bucket's planned samples, as cfg.pixel_dtype."""
    arrs = []
    for p in planned:
        b = p.bucket
        try:
            if p.times is None:
                arrs.append(decode_image(p.data, width=b.width, height=b.height))
            else:
                arrs.append(decode_video(p.data, width=b.width, height=b.height, times=p.times))
        except DecodeError as e:
            raise DecodeError(f"{p.url} sample {p.key}: {e}") from None
    x = torch.from_numpy(np.stack(arrs)).permute(0, 4, 1, 2, 3).contiguous()  # (B, F, H, W, C) -> (B, C, F, H, W)
    if cfg.pixel_dtype == "uint8":
        return x
    return to_model_pixels(x, torch.float32).to(PIXEL_DTYPES[cfg.pixel_dtype])


def group_by_bucket(planned: Iterator[_Planned]) -> Iterator[list[_Planned]]:
    """A batch whenever a bucket has batch_size samples. Hand-written: wds.batched batches
    consecutive samples whatever their shape. Streams are endless within an epoch; the
    partial buckets left at its end are dropped with it."""
    buffers: dict[str, list[_Planned]] = {}
    for p in planned:
        buf = buffers.setdefault(p.bucket.name, [])
        buf.append(p)
        if len(buf) == p.bucket.batch_size:
            yield buf
            buffers[p.bucket.name] = []


# ---------------------------------------------------------------------------------------- sources


class ShardSource:
    """Planned batches of one media from the shards, for (epoch, rank, stream); and their pixels."""

    def __init__(self, cfg: DataConfig, rank: int, world_size: int):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        root, entries = read_shard_index(cfg.shards)
        self.urls = {m: [str(root / e["path"]) for e in entries if shard_media(e) in (m, None)] for m in MEDIA}
        counts = {m: sum(e["samples"] for e in entries if shard_media(e) == m) for m in MEDIA}
        if cfg.image_ratio is not None:
            self.image_ratio = cfg.image_ratio
        elif any(shard_media(e) is None for e in entries):
            raise ValueError("data.image_ratio: the shards are not bucketed, so the images' share is unknown; set it")
        else:
            self.image_ratio = natural_image_ratio(cfg, counts)
        for m, needed in (("image", self.image_ratio > 0), ("video", self.image_ratio < 1)):
            if needed and not self.urls[m]:
                raise ValueError(f"data.image_ratio: {self.image_ratio:g} needs {m} samples, and {cfg.shards} has no {m} shards")

    def _shard_urls(self, media: str, epoch: int, stream: int, streams: int) -> Iterator[dict]:
        """Passes over the shards, each shuffled alike on every rank (same seed), then split by
        rank and stream: disjoint within a pass. Hand-written: wds.split_by_node/worker read the
        rank from torch.distributed and the DataLoader worker, and here the rank is an argument
        and the split is by stream, which need not be the worker running it."""
        for p in count():
            order = list(wds.SimpleShardList(self.urls[media], seed=_seed(self.cfg.seed, epoch, p, media)))
            mine = order[self.rank :: self.world_size][stream::streams]
            if not mine:
                raise ValueError(f"data.resample: {len(order)} {media} shards cannot be split over {self.world_size} "
                                 f"rank(s) x {streams} stream(s); resample, or write smaller shards")
            yield from mine

    def batches(self, media: str, epoch: int, stream: int, streams: int) -> Iterator[list[_Planned]]:
        cfg = self.cfg
        if cfg.resample:
            # Each (rank, stream) draws its own shards: no split needed, any number of nodes.
            shards = wds.ResampledShards(self.urls[media], seed=_seed(cfg.seed, epoch, self.rank, stream, media),
                                         worker_seed=lambda: 0, deterministic=True)
        else:
            def shards() -> Iterator[dict]:
                return self._shard_urls(media, epoch, stream, streams)
        pipeline = wds.DataPipeline(
            shards,
            wds.tarfile_to_samples(),  # errors raise (wds.reraise_exception): a bad tar is not data
            wds.shuffle(cfg.shuffle_buffer, initial=cfg.shuffle_buffer, seed=_seed(cfg.seed, epoch, self.rank, stream, media, "shuffle")),
            lambda src: self._plan(src, media, epoch),
            group_by_bucket,
        )
        yield from pipeline

    def _plan(self, samples: Iterator[dict], media: str, epoch: int) -> Iterator[_Planned]:
        planner, streak = Planner(self.cfg), 0
        for s in samples:
            if ("mp4" in s) != (media == "video"):  # the other media, from an unbucketed shard
                streak += 1
            else:
                p = planner.plan(s, epoch)
                if isinstance(p, _Planned):
                    streak = 0
                    yield p
                    continue
                planner.dropped[p] += 1
                streak += 1
            if streak >= _MAX_DROP_STREAK:
                raise ValueError(f"data.buckets: {streak} {media} samples in a row fit no bucket; drops: {dict(planner.dropped)}")

    def load(self, planned: list[_Planned]) -> dict:
        b = planned[0].bucket
        return {"pixels": load_pixels(planned, self.cfg), "prompts": [p.prompt for p in planned],
                "clip_ids": [p.clip_id for p in planned], "bucket": b.name, "is_image": b.media == "image",
                "fps": None if b.media == "image" else self.cfg.bucket_fps(b)}


class CacheSource:
    """Planned batches from the latent cache (CACHE_FORMAT): rows of one bucket per batch."""

    def __init__(self, cfg: DataConfig, rank: int, world_size: int):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.root = Path(cfg.cache_dir)
        path = self.root / CACHE_FORMAT.index
        if not path.is_file():
            raise FileNotFoundError(f"data.cache_dir: no {CACHE_FORMAT.index} in {self.root} (run `videomill train precompute`)")
        index = json.loads(path.read_text())
        if index.get("format") != CACHE_FORMAT.version:
            raise ValueError(f"data.cache_dir: format {index.get('format')!r}, this reader reads {CACHE_FORMAT.version!r}")
        known = {b.name for b in cfg.buckets}
        unknown = sorted({p["bucket"] for p in index["parts"]} - known)
        if unknown:
            raise ValueError(f"data.buckets: the cache holds buckets {unknown} that are not configured")
        # rows[media][bucket] = [(part path, row), ...] in index order
        self.rows: dict[str, dict[str, list[tuple[str, int]]]] = {m: {} for m in MEDIA}
        for p in index["parts"]:
            b = cfg.bucket(p["bucket"])
            self.rows[b.media].setdefault(b.name, []).extend((p["path"], i) for i in range(p["samples"]))
        counts = {m: sum(map(len, self.rows[m].values())) for m in MEDIA}
        self.image_ratio = cfg.image_ratio if cfg.image_ratio is not None else natural_image_ratio(cfg, counts)
        for m, needed in (("image", self.image_ratio > 0), ("video", self.image_ratio < 1)):
            if needed and not counts[m]:
                raise ValueError(f"data.image_ratio: {self.image_ratio:g} needs {m} samples, and the cache has none")

    def batches(self, media: str, epoch: int, stream: int, streams: int) -> Iterator[list[tuple[str, int, str]]]:
        """Passes over the cache: rows permuted per bucket and cut into batches, the batches
        shuffled (alike on every rank), then split by rank and stream. Exact sample-level
        split from the index, so it needs no shard granularity (and no resampling)."""
        for p in count():
            rng = random.Random(_seed(self.cfg.seed, epoch, p, media, "cache"))
            batches = []
            for name, rows in sorted(self.rows[media].items()):
                bs = self.cfg.bucket(name).batch_size
                rows = rows[:]
                rng.shuffle(rows)
                batches += [[(path, i, name) for path, i in rows[k : k + bs]] for k in range(0, len(rows) - bs + 1, bs)]
            rng.shuffle(batches)
            mine = batches[self.rank :: self.world_size][stream::streams]
            if not mine:
                raise ValueError(f"data.buckets: {len(batches)} cached {media} batches per pass cannot be split over "
                                 f"{self.world_size} rank(s) x {streams} stream(s); use smaller batches or fewer workers")
            yield from mine

    def load(self, rows: list[tuple[str, int, str]]) -> dict:
        name = rows[0][2]
        out: dict[str, list[torch.Tensor]] = {}
        clip_ids, prompts = [], []
        handles: dict[str, Any] = {}
        for path, i, _ in rows:
            if path not in handles:
                f = safe_open(str(self.root / path), framework="pt")
                meta = f.metadata() or {}
                handles[path] = (f, json.loads(meta.get("clip_ids", "[]")), json.loads(meta.get("prompts", "[]")))
            f, ids, texts = handles[path]
            for key in f.keys():
                out.setdefault(key, []).append(f.get_slice(key)[i : i + 1])
            clip_ids.append(ids[i] if i < len(ids) else "")
            prompts.append(texts[i] if i < len(texts) else "")
        sizes = {k: len(v) for k, v in out.items()}
        if set(sizes.values()) != {len(rows)} or not {CACHE_FORMAT.latents, CACHE_FORMAT.embeds} <= set(out):
            raise ValueError(f"cache bucket {name}: parts disagree on their tensors ({sizes}) or lack "
                             f"{CACHE_FORMAT.latents}/{CACHE_FORMAT.embeds}")
        b = self.cfg.bucket(name)
        return {**{k: torch.cat(v) for k, v in out.items()}, "prompts": prompts, "clip_ids": clip_ids, "bucket": name,
                "is_image": b.media == "image", "fps": None if b.media == "image" else self.cfg.bucket_fps(b)}


# ---------------------------------------------------------------------------------------- batches


class BucketBatches(IterableDataset):
    """A rank's batches from index `start` on, forever (see the module docstring): run it in a
    DataLoader with batch_size=None and num_workers=cfg.num_workers, or use TrainLoader."""

    def __init__(self, cfg: DataConfig, *, rank: int, world_size: int, start: int = 0):
        super().__init__()
        self.cfg, self.rank, self.world_size, self.start = cfg, rank, world_size, start
        self.source = (CacheSource if cfg.cache_dir else ShardSource)(cfg, rank, world_size)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.cfg.streams:
            raise RuntimeError(f"BucketBatches runs in {workers} worker(s) but data.num_workers is {self.cfg.num_workers}")
        # Worker w makes batches start+w, start+w+S, ...: stream (start + w) mod S.
        return self.stream_batches((self.start + worker) % workers, self.start + worker)

    def stream_batches(self, stream: int, first: int) -> Iterator[dict]:
        """Stream `stream`'s batches with index >= first, each tagged with its epoch and index."""
        L, S = self.cfg.epoch_length, self.cfg.streams
        g = first
        while True:
            epoch = g // L
            mine = range(g, (epoch + 1) * L, S)  # the indices this stream makes in the epoch from g on
            # Before g: this stream's batches of the epoch already consumed, replayed undecoded.
            skip = len(range(epoch * L + (stream - epoch * L) % S, g, S))
            if len(mine):
                plans = self.plan_epoch(epoch, stream)
                try:
                    for _ in range(skip):
                        next(plans)
                    for index in mine:
                        yield {**self.source.load(next(plans)), "epoch": epoch, "index": index}
                finally:
                    plans.close()
            g = (epoch + 1) * L
            g += (stream - g) % S

    def plan_epoch(self, epoch: int, stream: int) -> Iterator[list]:
        """This stream's batches for the epoch, planned but not loaded (also a cheap dry run):
        a seeded draw per batch picks the media."""
        rng = random.Random(_seed(self.cfg.seed, epoch, self.rank, stream, "mix"))
        sources: dict[str, Iterator[list]] = {}
        try:
            while True:
                media = "image" if rng.random() < self.source.image_ratio else "video"
                if media not in sources:
                    sources[media] = self.source.batches(media, epoch, stream, self.cfg.streams)
                yield next(sources[media])
        finally:
            for s in sources.values():
                s.close()


class TrainLoader:
    """This rank's batches, with a data position to save and restore.

    Iterating yields dicts: `pixels` (B, C, F, H, W) (or, from the cache, `latent_moments`
    (B, 2C, f, h, w) and `prompt_embeds` (B, L, D) plus any other cached tensors), `prompts`
    (list[str], "" for no caption), `clip_ids`, `bucket` (name), `is_image`, `fps` (the
    bucket's, None for images or the clips' own rate), `epoch`, `index` (this rank's batch
    number). For I2V the conditioning frame is pixels[:, :, :1]. Never ends: stop at your step
    count. Iterating again (after a break) continues at the position, through fresh workers.
    """

    def __init__(self, cfg: DataConfig, *, rank: int | None = None, world_size: int | None = None, pin_memory: bool = False):
        self.cfg, self.pin_memory = cfg, pin_memory
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.batches = 0  # consumed by the trainer: the data position
        self._dataset = BucketBatches(cfg, rank=self.rank, world_size=self.world_size)  # validates now, not in a worker

    @property
    def epoch(self) -> int:
        return self.batches // self.cfg.epoch_length

    def __iter__(self) -> Iterator[dict]:
        self._dataset.start = self.batches
        if self.cfg.num_workers:
            # A fresh DataLoader per iteration: workers get the dataset, `start` included, when
            # they start; batch_size=None because batches are made per bucket in the workers.
            it = iter(DataLoader(self._dataset, batch_size=None, num_workers=self.cfg.num_workers,
                                 pin_memory=self.pin_memory, persistent_workers=False))
        else:
            it = iter(self._dataset)
        for batch in it:
            if batch["index"] != self.batches:
                raise RuntimeError(f"data position: got batch {batch['index']}, expected {self.batches} (worker order broken)")
            self.batches += 1
            yield batch

    def state_dict(self) -> dict:
        cfg = self.cfg
        return {"batches": self.batches, "epoch": self.epoch, "seed": cfg.seed, "world_size": self.world_size,
                "streams": cfg.streams, "epoch_length": cfg.epoch_length}

    def load_state_dict(self, state: dict) -> None:
        """Continue at the saved position. Batches match the saved run's only under the same
        seed, world size, streams (num_workers) and epoch length (checked) and the same data
        and buckets (not checked)."""
        now = self.state_dict()
        differ = {k: (state.get(k), now[k]) for k in ("seed", "world_size", "streams", "epoch_length") if state.get(k) != now[k]}
        if differ:
            raise ValueError(f"data position: saved with different settings {differ} (saved, now); the position would not be exact")
        self.batches = int(state["batches"])


# ---------------------------------------------------------------------------------------- precompute


class PrecomputeSamples(IterableDataset):
    """Every sample once, decoded, for `videomill train precompute`: dicts with `pixels`
    (C, F, H, W) as cfg.pixel_dtype, `prompt`, `clip_id`, `bucket`, `is_image`. Shards in index
    order split by rank (wds-style islice) and by DataLoader worker (wds.split_by_worker); no
    shuffle. Plans use epoch "precompute", so a rerun makes the same buckets and frame times."""

    def __init__(self, cfg: DataConfig, *, rank: int | None = None, world_size: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.rank, self.world_size = resolve_rank(rank, world_size)
        root, entries = read_shard_index(cfg.shards)
        self.urls = [str(root / e["path"]) for e in entries]

    def __iter__(self) -> Iterator[dict]:
        mine = self.urls[self.rank :: self.world_size]
        if not mine:  # more ranks than shards
            return
        planner = Planner(self.cfg)
        for s in wds.DataPipeline(wds.SimpleShardList(mine), wds.split_by_worker, wds.tarfile_to_samples()):
            p = planner.plan(s, "precompute")
            if isinstance(p, str):
                planner.dropped[p] += 1
                continue
            yield {"pixels": load_pixels([p], self.cfg)[0], "prompt": p.prompt, "clip_id": p.clip_id,
                   "bucket": p.bucket.name, "is_image": p.bucket.media == "image"}
        log.info("precompute rank %d: dropped %s", self.rank, dict(planner.dropped))
