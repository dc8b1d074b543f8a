"""Precompute the latent cache: VAE posterior moments and T5 embeddings, once per sample.

Writes the format training/data/latent_cache.py defines and reads (``CacheFormat``): per bucket
(and drawn frame rate), parts of
``part_size`` samples with ``latent_moments`` (unscaled mean and log-variance, so training
still draws a fresh posterior sample every step) and ``prompt_embeds``; for I2V also
``image_latent_moments``. ``index.json`` is written last, by one process, and marks the cache
complete.

The I2V condition is where a cache loses something: CogVideoX noises the condition image
before encoding it, with a fresh sigma = exp(N(-3, 0.5)) every step. A cache can hold one draw
per clip (seeded by the clip id, so reruns agree), which keeps the augmentation's spread
across clips but not across epochs. Train I2V from pixels when that matters. Likewise a
multi-frame-rate bucket caches the one rate drawn per clip (plan epoch "precompute").

Memory: ``vae_slicing`` encodes a batch one sample at a time, ``vae_tiling`` encodes each
frame in overlapping spatial tiles (diffusers' ``AutoencoderKLCogVideoX.enable_slicing`` /
``enable_tiling``), which bounds the activation memory of large buckets (1360x768) at some
cost in speed; tiles are blended, so the moments differ slightly from untiled ones.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import webdataset as wds
from torch.utils.data import IterableDataset

from training.data.bucket_plan import DataConfig, Planned, Planner, fps_prompt
from training.data.loader import resolve_rank
from training.data.latent_cache import write_cache_index, write_cache_part
from training.data.shard_source import decode_planned, read_shard_index
from training.models import Models
from training.objective import (
    MAX_TEXT_LEN,
    condition_noise_sigma,
    encode_prompts,
    model_pixels,
    noisy_condition,
    vae_moments,
)

log = logging.getLogger(__name__)
STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class PrecomputeSamples(IterableDataset):
    """Every sample once, decoded, for `videomill train precompute`: dicts with `pixels`
    (C, F, H, W) as cfg.pixel_dtype, `prompt` (as the text encoder gets it: with the fps prefix
    under data.fps_condition = "text_prefix"), `caption`, `clip_id`, `bucket`, `fps` (the drawn
    rate; None for images or the clip's own rate), `is_image`. Shards in index order split by
    rank (wds-style islice) and by DataLoader worker (wds.split_by_worker); no shuffle. Plans
    use epoch "precompute", so a rerun makes the same buckets, rates and frame times. Skipped
    samples (planner reasons, undecodable) are counted in `self.skipped` (in-process use) and
    logged per worker."""

    def __init__(self, cfg: DataConfig, *, rank: int | None = None, world_size: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.rank, self.world_size = resolve_rank(rank, world_size)
        root, entries = read_shard_index(cfg.shards)
        self.urls = [str(root / e["path"]) for e in entries]
        self.skipped: Counter[str] = Counter()

    def __iter__(self) -> Iterator[dict]:
        mine = self.urls[self.rank :: self.world_size]
        if not mine:  # more ranks than shards
            return
        planner, skipped = Planner(self.cfg), Counter()
        for s in wds.DataPipeline(wds.SimpleShardList(mine), wds.split_by_worker, wds.tarfile_to_samples()):
            p = planner.plan(s, "precompute")
            if not isinstance(p, Planned):
                skipped[p] += 1
                continue
            pixels, kept = decode_planned([p], self.cfg, skipped)
            if not kept:
                continue
            yield {"pixels": pixels[0], "prompt": fps_prompt(p.caption, p.fps, self.cfg.fps_condition),
                   "caption": p.caption, "clip_id": p.clip_id, "bucket": p.bucket.name, "fps": p.rate,
                   "is_image": p.bucket.media == "image", "skipped": dict(skipped)}
            self.skipped.update(skipped)
            skipped.clear()
        self.skipped.update(skipped)
        if skipped or self.skipped:
            logging.getLogger("videomill").warning("precompute rank %d: skipped %s", self.rank, dict(self.skipped))


@dataclass(frozen=True, kw_only=True)
class PrecomputeConfig:
    out: str = ""  # the cache directory (`videomill train precompute` sets it to data.cache_dir)
    part_size: int = 64  # samples per safetensors part
    dtype: str = "bfloat16"  # storage dtype of moments and embeddings: half the bytes of float32
    i2v_condition: bool = False  # also store image_latent_moments of the (noised) first frame
    condition_noise_mean: float = -3.0  # as ObjectiveConfig: log sigma of the condition noise
    condition_noise_std: float = 0.5
    seed: int = 0
    max_text_len: int = MAX_TEXT_LEN
    vae_slicing: bool = False  # encode a batch one sample at a time (AutoencoderKLCogVideoX.enable_slicing)
    vae_tiling: bool = False  # encode in overlapping spatial tiles (enable_tiling): large buckets in less memory

    def __post_init__(self) -> None:
        if self.part_size < 1:
            raise ValueError(f"precompute.part_size must be >= 1, got {self.part_size}")
        if self.dtype not in STORE_DTYPES:
            raise ValueError(f"precompute.dtype must be one of {sorted(STORE_DTYPES)}, got {self.dtype!r}")


def clip_seed(seed: int, clip_id: str) -> int:
    """The same in every process and rerun (Python's hash() of a str is not)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{clip_id}".encode()).digest()[:8], "little") >> 1


@torch.no_grad()
def encode_sample(models: Models, sample: dict, cfg: PrecomputeConfig) -> dict[str, torch.Tensor]:
    """One sample (``pixels`` (C, F, H, W), ``prompt``, ``clip_id``) -> its cache tensors, batch dim 1."""
    store = STORE_DTYPES[cfg.dtype]
    pixels = model_pixels(sample["pixels"][None]).float()
    out = {
        "latent_moments": vae_moments(models.vae, pixels).to(store).cpu(),
        "prompt_embeds": encode_prompts(models.tokenizer, models.text_encoder, [sample["prompt"]], cfg.max_text_len)
        .to(store)
        .cpu(),
    }
    if cfg.i2v_condition:
        g = torch.Generator().manual_seed(clip_seed(cfg.seed, sample["clip_id"]))
        sigma = condition_noise_sigma(1, g, cfg.condition_noise_mean, cfg.condition_noise_std)
        image = noisy_condition(pixels[:, :, 0], sigma, g)
        out["image_latent_moments"] = vae_moments(models.vae, image.unsqueeze(2)).to(store).cpu()
    return out


def precompute_cache(
    models: Models, samples: Iterable[dict], cfg: PrecomputeConfig, *, rank: int = 0, world_size: int = 1
) -> list[dict]:
    """Encode ``samples`` (dicts as PrecomputeSamples yields) into parts under cfg.out.

    Returns this rank's index entries. With one process the index is written too; with several,
    gather every rank's entries and call ``training.data.latent_cache.write_cache_index`` once, after all.
    Part numbers interleave ranks (k * world_size + rank), so ranks never write the same file.
    """
    if not cfg.out:
        raise ValueError("precompute.out: give the cache directory (data.cache_dir)")
    root = Path(cfg.out)
    if cfg.vae_slicing:
        models.vae.enable_slicing()
    if cfg.vae_tiling:
        models.vae.enable_tiling()
    pending: dict[tuple[str, float | None], list[tuple[dict, dict]]] = {}  # (bucket, drawn fps) -> rows
    written: dict[str, int] = {}
    entries: list[dict] = []
    skipped: Counter[str] = Counter()

    def flush(group: tuple[str, float | None]) -> None:
        rows = pending.pop(group, [])
        if not rows:
            return
        bucket, fps = group
        k = written.get(bucket, 0)  # part numbers per bucket, whatever the rate
        written[bucket] = k + 1
        tensors = {key: torch.cat([t[key] for t, _ in rows]) for key in rows[0][0]}
        ids = [s["clip_id"] for _, s in rows]
        prompts = [s["prompt"] for _, s in rows]
        entries.append(write_cache_part(root, bucket, k * world_size + rank, tensors, ids, prompts, fps=fps))

    n = empty = 0
    for sample in samples:
        meta = {"clip_id": sample["clip_id"], "prompt": sample["prompt"]}
        group = (sample["bucket"], sample.get("fps"))
        pending.setdefault(group, []).append((encode_sample(models, sample, cfg), meta))
        n += 1
        empty += not sample.get("caption", sample["prompt"]).strip()
        skipped.update(sample.get("skipped", {}))
        if len(pending[group]) >= cfg.part_size:
            flush(group)
    for group in list(pending):
        flush(group)
    log.info("precompute rank %d: %d samples in %d parts; skipped %s", rank, n, len(entries), dict(skipped))
    if world_size == 1:
        write_cache_index(root, entries, model=models.path, variant=models.config.variant, dtype=cfg.dtype,
                          samples=n, empty_captions=empty, skipped=dict(skipped))
    return entries


def precompute(models: Models, data_cfg: DataConfig, cfg: PrecomputeConfig, *, rank: int = 0, world_size: int = 1) -> list[dict]:
    """Every sample of ``data_cfg.shards`` once (decoded by DataLoader workers), into the cache."""
    from torch.utils.data import DataLoader

    dataset = PrecomputeSamples(data_cfg, rank=rank, world_size=world_size)
    samples = DataLoader(dataset, batch_size=None, num_workers=data_cfg.num_workers) if data_cfg.num_workers else dataset
    return precompute_cache(models, samples, cfg, rank=rank, world_size=world_size)
