"""The latent cache: its format, the helpers that write it (training/data/precompute.py) and the
source that reads planned batches from it instead of pixels: same buckets, streams, image
ratio and position rules as the shard source; no pixels are decoded.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from training.data.bucket_plan import MEDIA, DataConfig, natural_image_ratio, stable_seed

@dataclass(frozen=True)
class CacheFormat:
    """The latent cache `videomill train precompute` writes and `CacheSource` reads.

    CACHE/index.json:
        {"format": "videomill-cache-1",
         "parts": [{"path": "720x480_f49/part-000000.safetensors", "bucket": "720x480_f49", "samples": 64,
                    "fps": 8.0}, ...],
         "empty_captions": 3, "samples": 1000, "skipped": {"too_short": 12, ...},
         ...anything else (vae, text encoder, dtype, data config) is informational}
      `path` is relative to CACHE; `bucket` is a DataConfig bucket name (the bucket the sample
      was encoded at); a part holds samples of one bucket only, so they stack; `fps` (optional,
      null when absent) the frame rate its frames were drawn at (multi-frame-rate buckets get
      one part series per rate, and a batch never mixes rates). `empty_captions` / `samples`
      (optional) let a T2V run check its captions without opening parts; `skipped` counts the
      samples precompute did not encode, by reason (training/data/bucket_plan.py SKIP_REASONS).
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
        clip_ids  JSON list of n clip ids;  prompts  JSON list of n prompts as encoded (the
        caption, "" when none, with the fps prefix when data.fps_condition = "text_prefix").
    Writing it: iterate `training.data.precompute.PrecomputeSamples` (every sample once, decoded, with its bucket), encode,
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
                     clip_ids: list[str], prompts: list[str], fps: float | None = None) -> dict:
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
    entry = {"path": rel, "bucket": bucket, "samples": n}
    return entry | {"fps": fps} if fps is not None else entry


def write_cache_index(root: str | Path, parts: list[dict], **info: Any) -> Path:
    """Write CACHE/index.json (last: its presence says the cache is complete)."""
    path = Path(root) / CACHE_FORMAT.index
    path.parent.mkdir(parents=True, exist_ok=True)  # a rank or run with no samples wrote no part
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"format": CACHE_FORMAT.version, "parts": parts, **info}, indent=1, default=str))
    os.replace(tmp, path)
    return path




def cache_caption_counts(cache_dir: str | Path) -> tuple[int, int] | None:
    """(empty captions, samples) as precompute recorded them in index.json; None when it did not."""
    path = Path(cache_dir) / CACHE_FORMAT.index
    if not path.is_file():
        raise FileNotFoundError(f"data.cache_dir: no {CACHE_FORMAT.index} in {cache_dir} (run `videomill train precompute`)")
    index = json.loads(path.read_text())
    if "empty_captions" not in index:
        return None
    return int(index["empty_captions"]), int(index.get("samples", sum(p["samples"] for p in index["parts"])))


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
        # rows[media][(bucket, fps)] = [(part path, row), ...] in index order
        self.rows: dict[str, dict[tuple[str, float | None], list[tuple[str, int]]]] = {m: {} for m in MEDIA}
        for p in index["parts"]:
            b = cfg.bucket(p["bucket"])
            rates = cfg.bucket_rates(b)  # a part without "fps": the bucket's rate when it has one
            group = (b.name, p.get("fps", rates[0] if len(rates) == 1 else None))
            self.rows[b.media].setdefault(group, []).extend((p["path"], i) for i in range(p["samples"]))
        counts = {m: sum(map(len, self.rows[m].values())) for m in MEDIA}
        self.image_ratio = cfg.image_ratio if cfg.image_ratio is not None else natural_image_ratio(cfg, counts)
        for m, needed in (("image", self.image_ratio > 0), ("video", self.image_ratio < 1)):
            if needed and not counts[m]:
                raise ValueError(f"data.image_ratio: {self.image_ratio:g} needs {m} samples, and the cache has none")

    def batches(self, media: str, epoch: int, stream: int, streams: int,
                skipped: Counter | None = None) -> Iterator[list[tuple[str, int, str, float | None]]]:
        """Passes over the cache: rows permuted per (bucket, fps) and cut into batches, the batches
        shuffled (alike on every rank), then split by rank and stream. Exact sample-level
        split from the index, so it needs no shard granularity (and no resampling)."""
        for p in count():
            rng = random.Random(stable_seed(self.cfg.seed, epoch, p, media, "cache"))
            batches = []
            for (name, fps), rows in sorted(self.rows[media].items(), key=lambda kv: (kv[0][0], kv[0][1] or 0.0)):
                bs = self.cfg.bucket(name).batch_size
                rows = rows[:]
                rng.shuffle(rows)
                batches += [[(path, i, name, fps) for path, i in rows[k : k + bs]] for k in range(0, len(rows) - bs + 1, bs)]
            rng.shuffle(batches)
            mine = batches[self.rank :: self.world_size][stream::streams]
            if not mine:
                raise ValueError(f"data.buckets: {len(batches)} cached {media} batches per pass cannot be split over "
                                 f"{self.world_size} rank(s) x {streams} stream(s); use smaller batches or fewer workers")
            yield from mine

    def load(self, rows: list[tuple[str, int, str, float | None]], skipped: Counter | None = None) -> dict:
        name, fps = rows[0][2], rows[0][3]
        out: dict[str, list[torch.Tensor]] = {}
        clip_ids, prompts = [], []
        handles: dict[str, Any] = {}
        for path, i, *_ in rows:
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
                "is_image": b.media == "image", "fps": fps}


