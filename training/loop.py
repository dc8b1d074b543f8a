"""The training loop: one function that runs the same under Ray Train, torchrun or alone.

    python -m training.loop CONFIG          # one process, or under `torchrun --nproc-per-node N`
    videomill train CONFIG --num-workers N  # Ray Train (flows/train.py) calls `train` per worker

Parallelism is applied in one place (`_parallelize`): DDP for LoRA and small models, FSDP2
(`fully_shard`) for full finetunes of large ones. Everything random comes from one generator
per rank whose state the checkpoint keeps, and the data loader's position is saved with it,
so a resumed run (a Ray Train restart after a failure, or a rerun) continues exactly.
Only rank 0 logs, writes TensorBoard, checkpoints and validation videos.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from training.config import TrainConfig, load_train_config
from training.data import TrainLoader
from training.ema import EMA, EMAConfig
from training.models import Models, load_models
from training.objective import training_step

log = logging.getLogger("videomill.train")


def _setup_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """Rank, world size and device. Ray Train and torchrun start the process group; a lone
    process runs without one."""
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() and cfg.distributed.gpus_per_worker else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if torch.cuda.is_available() and cfg.distributed.gpus_per_worker:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _parallelize(models: Models, cfg: TrainConfig, world: int, device: torch.device) -> torch.nn.Module:
    """The module the step calls: DDP-wrapped, FSDP2-sharded in place, or as is."""
    if world == 1:
        return models.transformer
    if cfg.distributed.strategy == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for block in models.transformer.transformer_blocks:
            fully_shard(block)
        fully_shard(models.transformer)
        return models.transformer
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(models.transformer, device_ids=ids)


def _optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.use_8bit:
        import bitsandbytes as bnb  # optional: fails loudly when asked for and missing

        return bnb.optim.AdamW8bit(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)


def _warmup(cfg: TrainConfig) -> Callable[[int], float]:
    w = cfg.optim.warmup_steps
    return lambda step: min(1.0, (step + 1) / w) if w else 1.0


class _Metrics:
    """Rank 0's TensorBoard writer and log lines; a no-op on other ranks."""

    def __init__(self, out: Path, rank: int):
        self.rank, self.writer = rank, None
        if rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        log.info("step %d: %s", step, " ".join(f"{k}={v:.4g}" for k, v in values.items()))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _validate(models: Models, cfg: TrainConfig, step: int, out: Path, ema: EMA | None) -> None:
    """Sample videos from the fixed prompts (and images, for I2V) into OUT/validation/."""
    from training.export import generate, pipeline_from_models
    from training.video_out import write_mp4

    v = cfg.validation
    pipe = pipeline_from_models(models)
    ctx = ema.applied(models.trainable_parameters()) if ema is not None else contextlib.nullcontext()
    with ctx, torch.no_grad():
        for i, prompt in enumerate(v.prompts):
            image = None
            if v.images:
                from PIL import Image

                image = Image.open(v.images[i]).convert("RGB")
            frames = generate(pipe, prompt, image=image, num_frames=v.num_frames, height=v.height, width=v.width,
                              num_inference_steps=v.steps, guidance_scale=v.guidance_scale, seed=i)
            write_mp4(out / "validation" / f"step{step:08d}_{i:02d}.mp4", frames, fps=v.fps)


def train(cfg: TrainConfig, *, report: Callable[[dict], None] | None = None, stop_after: int | None = None) -> dict:
    """Train to `cfg.run.max_steps`, resuming from the newest checkpoint under run.out.
    `report` receives each logged metrics dict (Ray Train passes ray.train.report);
    `stop_after` ends this call after that many steps (tests simulate a crash with it)."""
    rank, world, device = _setup_distributed(cfg)
    out = Path(cfg.run.out)
    ckpt_root = out / "checkpoints"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.resolved.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
    torch.manual_seed(cfg.run.seed)  # same initial LoRA/full weights on every rank
    models = load_models(cfg.model, device)
    named = models.trainable_parameters()
    params = [p for _, p in named]
    module = _parallelize(models, cfg, world, device)
    optimizer = _optimizer(params, cfg)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup(cfg))
    ema = EMA(named, EMAConfig(decay=cfg.run.ema_decay)) if cfg.run.ema_decay else None
    generator = torch.Generator(device="cpu").manual_seed(cfg.run.seed * 1_000_003 + rank)
    loader = TrainLoader(cfg.data, rank=rank, world_size=world, pin_memory=device.type == "cuda")

    step = 0
    latest = latest_checkpoint(ckpt_root)
    if latest is not None:
        state = load_checkpoint(latest, models=models, optimizer=optimizer, lr_scheduler=lr_sched, ema=ema,
                                generators={f"train.rank{rank}": generator})
        step = state.step
        loader.load_state_dict(state.data_position[str(rank)])
        if rank == 0:
            log.info("resumed from %s at step %d", latest, step)

    metrics = _Metrics(out, rank)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.run.mixed_precision == "bf16"
                else contextlib.nullcontext())
    module.train()
    wait = compute = 0.0
    samples = 0
    last_loss = float("nan")
    losses: list[float] = []
    batches = iter(loader)
    t_end = time.perf_counter()
    ran = 0
    while step < cfg.run.max_steps and (stop_after is None or ran < stop_after):
        batch = next(batches)
        t_data = time.perf_counter()
        wait += t_data - t_end
        with autocast:
            loss = training_step(models, batch, cfg.objective, generator, transformer=module)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm or float("inf"))
        optimizer.step()
        lr_sched.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(named)
        step += 1
        ran += 1
        last_loss = float(loss.detach())
        losses.append(last_loss)
        if rank == 0:  # one line a step: what was trained on, and the loss (resume is checkable)
            with open(out / "steps.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "loss": last_loss, "bucket": batch["bucket"],
                                    "clip_ids": list(batch["clip_ids"]), "batch": loader.batches - 1}) + "\n")
        samples += len(batch["prompts"])
        t_end = time.perf_counter()
        compute += t_end - t_data
        if step % cfg.run.log_every == 0 or step == cfg.run.max_steps:
            values = {"loss": last_loss, "lr": lr_sched.get_last_lr()[0], "grad_norm": float(grad_norm),
                      "samples_per_s": samples * world / max(wait + compute, 1e-9),
                      "data_wait_frac": wait / max(wait + compute, 1e-9)}
            if device.type == "cuda":
                values["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            metrics.scalars(step, values)
            if report is not None:
                report({"step": step, **values})
            wait = compute = 0.0
            samples = 0
        if step % cfg.run.checkpoint_every == 0 or step == cfg.run.max_steps:
            _checkpoint(ckpt_root, step, models, optimizer, lr_sched, ema, loader, generator, cfg, rank, world)
        if cfg.validation.every and step % cfg.validation.every == 0 and rank == 0:
            _validate(models, cfg, step, out, ema)
    metrics.close()
    return {"step": step, "loss": last_loss, "losses": losses, "rank": rank, "world_size": world}


def _checkpoint(root: Path, step: int, models: Models, optimizer, lr_sched, ema, loader: TrainLoader,
                generator: torch.Generator, cfg: TrainConfig, rank: int, world: int) -> None:
    """Rank 0 writes one checkpoint holding every rank's data position and generator, so each
    rank resumes its own stream exactly. Weights and optimizer state are the same on every
    rank under DDP, so one copy is kept."""
    position, gen_state = loader.state_dict(), generator.get_state()
    positions, gen_states = [position], [gen_state]
    if world > 1:
        positions, gen_states = [None] * world, [None] * world
        dist.all_gather_object(positions, position)
        dist.all_gather_object(gen_states, gen_state)
    if rank == 0:
        gens = {}
        for r, state in enumerate(gen_states):
            gens[f"train.rank{r}"] = g = torch.Generator(device="cpu")
            g.set_state(state)
        save_checkpoint(root, step=step, models=models, optimizer=optimizer, lr_scheduler=lr_sched, ema=ema,
                        data_position={str(r): p for r, p in enumerate(positions)}, generators=gens,
                        keep_last=cfg.run.keep_checkpoints)
    if world > 1:
        dist.barrier()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train CogVideoX on videomill shards (one process or torchrun).")
    p.add_argument("config")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = train(load_train_config(args.config))
    if summary["rank"] == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "losses"}))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
