"""The shard source: planned batches from OUT/shards (webdataset tars), and their pixels.

A stream reads its own slice of the shards -- resampled with its own seed (`resample`), or a
disjoint slice of each shuffled pass, split by rank and then by stream -- through webdataset
verbs, plans each sample from its KEY.json alone (training/data/bucket_plan.py), groups samples by
bucket and drawn frame rate and emits a batch when one is full. Pixels are decoded only when a
batch is loaded (training/data/video_io.py): resized preserving aspect to cover the bucket,
centre-cropped, frames picked at the drawn fps.

A sample whose media fails to decode is skipped and counted ("undecodable"), with a warning
naming the shard and key; the batch keeps its other samples (see training/data/loader.py for what
happens when none is left).
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections import Counter
from itertools import count
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import webdataset as wds

from curation.core.buckets import parse_bucket
from training.data.bucket_plan import (
    MEDIA,
    PIXEL_DTYPES,
    DataConfig,
    Planned,
    Planner,
    fps_prompt,
    group_by_bucket,
    natural_image_ratio,
    stable_seed,
)
from training.data.video_io import DecodeError, decode_image, decode_video

log = logging.getLogger("videomill")

# A stream that skips this many samples in a row is not going to make a batch: say why.
_MAX_SKIP_STREAK = 10_000


def to_model_pixels(pixels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Pixels in [-1, 1] as `dtype`: uint8 batches (pixel_dtype = "uint8", a quarter of the
    bytes through worker queues and host-to-device copies) are converted on the device."""
    if pixels.dtype == torch.uint8:
        return pixels.to(dtype).div_(127.5).sub_(1.0)
    return pixels.to(dtype)


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


def count_empty_captions(shards: str | Path) -> tuple[int, int]:
    """(samples with no or a blank caption, samples) over every shard. Reads tar headers and
    the small KEY.txt members only (tarfile seeks over the media), so it costs one pass of
    header reads, not of the media."""
    root, entries = read_shard_index(shards)
    empty = total = 0
    for e in entries:
        keys: dict[str, bool] = {}  # key -> has a non-blank caption
        with tarfile.open(root / e["path"], mode="r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, _, ext = m.name.partition(".")
                keys.setdefault(key, False)
                if ext == "txt" and m.size:
                    keys[key] = bool(tf.extractfile(m).read().decode("utf-8", "replace").strip())
        total += len(keys)
        empty += sum(not v for v in keys.values())
    return empty, total


def decode_planned(planned: list[Planned], cfg: DataConfig, skipped: Counter | None = None) -> tuple[torch.Tensor | None, list[Planned]]:
    """(B, C, F, H, W) pixels (as cfg.pixel_dtype) of the planned samples that decode, and those
    samples; a sample that fails is logged, counted in `skipped["undecodable"]` and left out.
    (None, []) when none decodes."""
    arrs, kept = [], []
    for p in planned:
        b = p.bucket
        try:
            if p.times is None:
                arrs.append(decode_image(p.data, width=b.width, height=b.height))
            else:
                arrs.append(decode_video(p.data, width=b.width, height=b.height, times=p.times))
            kept.append(p)
        except DecodeError as e:
            log.warning("skipping undecodable sample %s of %s: %s", p.key, p.url, e)
            if skipped is not None:
                skipped["undecodable"] += 1
    if not arrs:
        return None, []
    x = torch.from_numpy(np.stack(arrs)).permute(0, 4, 1, 2, 3).contiguous()  # (B, F, H, W, C) -> (B, C, F, H, W)
    if cfg.pixel_dtype == "uint8":
        return x, kept
    return to_model_pixels(x, torch.float32).to(PIXEL_DTYPES[cfg.pixel_dtype]), kept


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

    def _shard_urls(self, media: str, epoch: int, stream: int, streams: int) -> Iterator[str]:
        """Passes over the shards, each shuffled alike on every rank (same seed), then split by
        rank and stream: disjoint within a pass. Hand-written: wds.split_by_node/worker read the
        rank from torch.distributed and the DataLoader worker, and here the rank is an argument
        and the split is by stream, which need not be the worker running it."""
        for p in count():
            order = list(wds.SimpleShardList(self.urls[media], seed=stable_seed(self.cfg.seed, epoch, p, media)))
            mine = order[self.rank :: self.world_size][stream::streams]
            if not mine:
                raise ValueError(f"data.resample: {len(order)} {media} shards cannot be split over {self.world_size} "
                                 f"rank(s) x {streams} stream(s); resample, or write smaller shards")
            yield from mine

    def batches(self, media: str, epoch: int, stream: int, streams: int, skipped: Counter) -> Iterator[list[Planned]]:
        """Endless planned batches; every sample the planner skips is counted in `skipped`."""
        cfg = self.cfg
        if cfg.resample:
            # Each (rank, stream) draws its own shards: no split needed, any number of nodes.
            shards = wds.ResampledShards(self.urls[media], seed=stable_seed(cfg.seed, epoch, self.rank, stream, media),
                                         worker_seed=lambda: 0, deterministic=True)
        else:
            def shards() -> Iterator[dict]:
                return self._shard_urls(media, epoch, stream, streams)
        pipeline = wds.DataPipeline(
            shards,
            wds.tarfile_to_samples(),  # errors raise (wds.reraise_exception): a bad tar is not data
            wds.shuffle(cfg.shuffle_buffer, initial=cfg.shuffle_buffer,
                        seed=stable_seed(cfg.seed, epoch, self.rank, stream, media, "shuffle")),
            lambda src: self._plan(src, media, epoch, skipped),
            group_by_bucket,
        )
        yield from pipeline

    def _plan(self, samples: Iterator[dict], media: str, epoch: int, skipped: Counter) -> Iterator[Planned]:
        planner, streak = Planner(self.cfg), 0
        for s in samples:
            if ("mp4" in s) != (media == "video"):  # the other media's, from an unbucketed shard: not a skip
                streak += 1
            else:
                p = planner.plan(s, epoch)
                if isinstance(p, Planned):
                    streak = 0
                    yield p
                    continue
                skipped[p] += 1
                planner.skipped[p] += 1
                streak += 1
            if streak >= _MAX_SKIP_STREAK:
                raise ValueError(f"data.buckets: {streak} {media} samples in a row fit no bucket; skipped: {dict(planner.skipped)}")

    def load(self, planned: list[Planned], skipped: Counter) -> dict | None:
        """The batch of the planned samples that decode (None when none does)."""
        pixels, kept = decode_planned(planned, self.cfg, skipped)
        if pixels is None:
            return None
        b, cond = kept[0].bucket, self.cfg.fps_condition
        return {"pixels": pixels, "prompts": [fps_prompt(p.caption, p.fps, cond) for p in kept],
                "clip_ids": [p.clip_id for p in kept], "bucket": b.name, "is_image": b.media == "image",
                "fps": kept[0].rate}
