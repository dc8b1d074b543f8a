"""The trainer's data loader: bucketed batches from OUT/shards (pixels) or from the latent cache.

The pieces live in their own modules: buckets, the data config and per-sample planning
(training/data/bucket_plan.py), the shard source (training/data/shard_source.py), the latent cache
(training/data/latent_cache.py); this module runs them as a rank's numbered batch sequence. The
public names callers use are re-exported here.

**Streams.** Per rank, batches are numbered g = 0, 1, 2, ...; epoch e is g in [e*L, (e+1)*L)
with L = `epoch_length`. Batch g is made by stream s = g mod S (S = max(1, num_workers)) as
that stream's next batch. A stream reads its own slice of the data (training/data/shard_source.py),
plans each sample from its KEY.json alone, groups samples by bucket and drawn frame rate and
emits a batch when one is full. Images and videos are separate streams; before each batch a
seeded draw picks image with probability `image_ratio`, so a batch never mixes shapes, media
or frame rates. Every RNG is seeded from (seed, epoch, rank, stream) or (seed, epoch, clip_id):
batch g depends on the seed, rank, world size, S, the config and g, never on timing or on
which DataLoader worker runs the stream.

**Skips are counted, never silent.** Each batch carries `skipped`, the samples its stream
skipped since its previous batch, by reason (bucket_plan.SKIP_REASONS: too short, no bucket,
not kept, bad metadata, undecodable); `TrainLoader.skipped` sums them over the run and is part
of the data position, so a resumed run keeps counting from where it was. A sample that fails to
decode is skipped (logged with its shard and key): its batch keeps the other samples, and a
batch none of whose samples decodes is replaced by the stream's next planned batch. Decoding is
deterministic, so the same seed still gives the same batches.

**Exact resume.** The data position is the number of batches a rank has consumed plus, per
stream, how many planned batches that stream used in the current epoch (more than it delivered
when a whole batch failed to decode) (`TrainLoader.state_dict()`). Resumed at g0, DataLoader
worker w runs stream (g0 + w) mod S; the DataLoader takes batches from its workers in turn, so
it delivers g0, g0+1, ... (each batch carries its `index`, checked on arrival). A stream
fast-forwards past the planned batches it used by replaying the epoch's plan -- tar reads and
JSON, no decoding -- which is exact because which sample goes to which batch is decided before
decoding. Cost: re-reading at most one epoch of shards per stream, so keep epochs to minutes of
reading.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from typing import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from training.data.bucket_plan import (  # noqa: F401 (re-exported: the data's public names)
    DEFAULT_BUCKETS,
    SKIP_REASONS,
    BucketSpec,
    DataConfig,
    Planned,
    Planner,
    fps_prompt,
    stable_seed,
)
from training.data.latent_cache import (  # noqa: F401 (re-exported)
    CACHE_FORMAT,
    CacheSource,
    cache_caption_counts,
    write_cache_index,
    write_cache_part,
)
from training.data.shard_source import ShardSource, count_empty_captions, read_shard_index, to_model_pixels  # noqa: F401


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


def check_captions(cfg: DataConfig, variant: str) -> tuple[int, int] | None:
    """T2V only: raise ValueError (with the count) when more than `max_empty_caption_share` of
    the samples has an empty caption, unless `allow_empty_captions`. Returns (empty, samples),
    or None when not checked (I2V, allowed, or a cache written without the counts). In a
    process group rank 0 counts (one pass over the shards' tar headers) and every rank gets
    its answer, so all raise alike."""
    if variant != "t2v" or cfg.allow_empty_captions:
        return None
    dist = torch.distributed
    group = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    answer: list = [None]
    if not group or dist.get_rank() == 0:
        counts = cache_caption_counts(cfg.cache_dir) if cfg.cache_dir else count_empty_captions(cfg.shards)
        answer = [counts]
        if counts is not None and counts[1] and counts[0] / counts[1] > cfg.max_empty_caption_share:
            empty, total = counts
            answer = [
                f"data: {empty} of {total} samples ({empty / total:.1%}) have an empty caption, more than "
                f"data.max_empty_caption_share = {cfg.max_empty_caption_share:g}; a T2V model would learn to ignore "
                f"its prompt. Caption them, or set data.allow_empty_captions = true if empty prompts are intended"]
    if group:
        dist.broadcast_object_list(answer, src=0)
    if isinstance(answer[0], str):
        raise ValueError(answer[0])
    return None if answer[0] is None else tuple(answer[0])


class BucketBatches(IterableDataset):
    """A rank's batches from index `start` on, forever (see the module docstring): run it in a
    DataLoader with batch_size=None and num_workers=cfg.num_workers, or use TrainLoader.
    `plans` maps a stream to [epoch, planned batches used in it] (TrainLoader's position)."""

    def __init__(self, cfg: DataConfig, *, rank: int, world_size: int, start: int = 0,
                 plans: dict[int, list[int]] | None = None):
        super().__init__()
        self.cfg, self.rank, self.world_size, self.start = cfg, rank, world_size, start
        self.plans = plans or {}
        self.source = (CacheSource if cfg.cache_dir else ShardSource)(cfg, rank, world_size)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.cfg.streams:
            raise RuntimeError(f"BucketBatches runs in {workers} worker(s) but data.num_workers is {self.cfg.num_workers}")
        # Worker w makes batches start+w, start+w+S, ...: stream (start + w) mod S.
        return self.stream_batches((self.start + worker) % workers, self.start + worker)

    def stream_batches(self, stream: int, first: int) -> Iterator[dict]:
        """Stream `stream`'s batches with index >= first, each tagged with its epoch, index,
        `plan` (planned batches the stream has used in the epoch) and `skipped` (counts since
        the stream's previous batch)."""
        L, S = self.cfg.epoch_length, self.cfg.streams
        g = first
        while True:
            epoch = g // L
            mine = range(g, (epoch + 1) * L, S)  # the indices this stream makes in the epoch from g on
            saved = self.plans.get(stream)
            if saved is not None and saved[0] == epoch:
                used = saved[1]
            else:  # before g: this stream's batches of the epoch already consumed, one plan each
                used = len(range(epoch * L + (stream - epoch * L) % S, g, S))
            if len(mine):
                skipped: Counter[str] = Counter()
                plans = self.plan_epoch(epoch, stream, skipped)
                try:
                    for _ in range(used):  # replayed undecoded; their skips were counted then
                        next(plans)
                    skipped.clear()
                    for index in mine:
                        batch = None
                        while batch is None:  # a planned batch none of whose samples decodes: the next
                            batch = self.source.load(next(plans), skipped)
                            used += 1
                        yield {**batch, "epoch": epoch, "index": index, "plan": used, "skipped": dict(skipped)}
                        skipped.clear()
                finally:
                    plans.close()
            g = (epoch + 1) * L
            g += (stream - g) % S

    def plan_epoch(self, epoch: int, stream: int, skipped: Counter | None = None) -> Iterator[list]:
        """This stream's batches for the epoch, planned but not loaded (also a cheap dry run):
        a seeded draw per batch picks the media. Samples the planner skips go into `skipped`."""
        rng = random.Random(stable_seed(self.cfg.seed, epoch, self.rank, stream, "mix"))
        skipped = Counter() if skipped is None else skipped
        sources: dict[str, Iterator[list]] = {}
        try:
            while True:
                media = "image" if rng.random() < self.source.image_ratio else "video"
                if media not in sources:
                    sources[media] = self.source.batches(media, epoch, stream, self.cfg.streams, skipped)
                yield next(sources[media])
        finally:
            for s in sources.values():
                s.close()


class TrainLoader:
    """This rank's batches, with a data position to save and restore.

    Iterating yields dicts: `pixels` (B, C, F, H, W) (or, from the cache, `latent_moments`
    (B, 2C, f, h, w) and `prompt_embeds` (B, L, D) plus any other cached tensors), `prompts`
    (list[str]: what the text encoder gets -- the caption, "" for none, prefixed "<n fps> " when
    data.fps_condition = "text_prefix"), `clip_ids`, `bucket` (name), `is_image`, `fps` (the
    rate the batch's frames were drawn at; None for images or the clips' own rate), `epoch`,
    `index` (this rank's batch number), `skipped` ({reason: samples} since the stream's last
    batch; `self.skipped` has the run's totals). B can be below the bucket's batch size when a
    sample failed to decode. For I2V the conditioning frame is pixels[:, :, :1]. Never ends:
    stop at your step count. Iterating again (after a break) continues at the position.
    """

    def __init__(self, cfg: DataConfig, *, rank: int | None = None, world_size: int | None = None, pin_memory: bool = False):
        self.cfg, self.pin_memory = cfg, pin_memory
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.batches = 0  # consumed by the trainer: the data position
        self.plans: dict[int, list[int]] = {}  # stream -> [epoch, planned batches used]
        self.skipped: Counter[str] = Counter()  # samples skipped so far, by reason
        self._dataset = BucketBatches(cfg, rank=self.rank, world_size=self.world_size)  # validates now, not in a worker

    @property
    def epoch(self) -> int:
        return self.batches // self.cfg.epoch_length

    def __iter__(self) -> Iterator[dict]:
        self._dataset.start, self._dataset.plans = self.batches, {k: list(v) for k, v in self.plans.items()}
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
            self.plans[batch["index"] % self.cfg.streams] = [batch["epoch"], batch["plan"]]
            self.skipped.update(batch["skipped"])
            yield batch

    def state_dict(self) -> dict:
        cfg = self.cfg
        return {"batches": self.batches, "epoch": self.epoch, "seed": cfg.seed, "world_size": self.world_size,
                "streams": cfg.streams, "epoch_length": cfg.epoch_length,
                "plans": {str(k): v for k, v in self.plans.items()}, "skipped": dict(self.skipped)}

    def load_state_dict(self, state: dict) -> None:
        """Continue at the saved position. Batches match the saved run's only under the same
        seed, world size, streams (num_workers) and epoch length (checked) and the same data
        and buckets (not checked)."""
        now = self.state_dict()
        differ = {k: (state.get(k), now[k]) for k in ("seed", "world_size", "streams", "epoch_length") if state.get(k) != now[k]}
        if differ:
            raise ValueError(f"data position: saved with different settings {differ} (saved, now); the position would not be exact")
        self.batches = int(state["batches"])
        self.plans = {int(k): [int(e), int(n)] for k, (e, n) in state.get("plans", {}).items()}
        self.skipped = Counter({k: int(v) for k, v in state.get("skipped", {}).items()})


def skipped_total(loader: TrainLoader) -> dict[str, int]:
    """The run's skipped samples by reason, summed over ranks (a collective under a process
    group: call it on every rank at the same step)."""
    mine = dict(loader.skipped)
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return dict(sorted(mine.items()))
    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return dict(sorted(sum((Counter(c) for c in every), Counter()).items()))


def skipped_in_position(data_position: dict) -> dict[str, int]:
    """Skipped samples by reason, summed over the ranks of a checkpoint's data position
    ({rank: TrainLoader.state_dict()}): the end-of-run figure."""
    total: Counter[str] = Counter()
    for state in data_position.values():
        total.update(state.get("skipped", {}))
    return dict(sorted(total.items()))
