"""The training loop: one function that runs the same under Ray Train, torchrun or alone.

Why one module: nanoGPT's and torchtitan's habit: the loop reads top to bottom in one file
(distributed setup, parallelism in one place, the step, validation, checkpoints, `train`), so
the order in which they are applied is visible. The model, objective, data, checkpoint format
and EMA are their own modules.

    python -m training.loop CONFIG          # one process, or under `torchrun --nproc-per-node N`
    videomill train CONFIG --num-workers N  # Ray Train (flows/train.py) calls `train` per worker

Parallelism is applied in one place (`parallelize`): DDP for LoRA and small models, FSDP2
(`fully_shard`) for full finetunes of large ones. The optimizer, gradient clipping and EMA are
built after it, on the parameters the model has then (FSDP2 replaces them with DTensor shards).
`build_state` + `train_step` are the step, which bench/train_step.py calls too. Everything
random comes from one generator per rank whose state the checkpoint keeps, and the data
loader's position is saved with it, so a resumed run (a Ray Train restart after a failure, or
a rerun) continues exactly. Only rank 0 logs, writes TensorBoard, checkpoints and validation
videos; under FSDP2 every rank samples validation videos (the forward needs every shard).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from training.config import TrainConfig, check_model_fit, config_dict, load_train_config
from training.data.loader import TrainLoader
from training.ema import EMA, EMAConfig
from training.models import Models, load_models
from training.objective import training_step
from training.data.loader import check_captions

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


def _owned_output(module, args, kwargs, output):
    """Forward hook: the transformer's output is a view (reshape/permute of the patch grid);
    FSDP2 warns that an in-place op on a view skips its pre-backward all-gather. A copy owns
    its storage, so nothing downstream can hit that."""
    if isinstance(output, tuple):
        return tuple(o.clone() if isinstance(o, torch.Tensor) and o._base is not None else o for o in output)
    return output


def parallelize(models: Models, cfg: TrainConfig, world: int, device: torch.device) -> torch.nn.Module:
    """The module the step calls: DDP-wrapped, FSDP2-sharded in place (blocks, then the root),
    or as is. Parameters taken before this are stale under FSDP2: read them after."""
    if world == 1:
        return models.transformer
    if cfg.distributed.strategy == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        models.transformer.register_forward_hook(_owned_output, with_kwargs=True)
        for block in models.transformer.transformer_blocks:
            fully_shard(block)
        fully_shard(models.transformer)
        return models.transformer
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(models.transformer, device_ids=ids)


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.use_8bit:
        import bitsandbytes as bnb  # optional: fails loudly when asked for and missing

        return bnb.optim.AdamW8bit(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)


def make_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """diffusers' get_scheduler over run.max_steps optimizer steps."""
    from diffusers.optimization import get_scheduler

    o = cfg.optim
    return get_scheduler(o.lr_schedule, optimizer, num_warmup_steps=o.warmup_steps,
                         num_training_steps=cfg.run.max_steps, num_cycles=o.num_cycles)


@dataclass
class TrainState:
    """What one optimizer step touches. ``named`` are the live trainable parameters (DTensor
    shards under FSDP2), the ones the optimizer, clipping and EMA hold."""

    cfg: TrainConfig
    models: Models
    module: torch.nn.Module
    named: list[tuple[str, torch.nn.Parameter]]
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: EMA | None
    device: torch.device

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for _, p in self.named]

    @property
    def sharded(self) -> bool:
        from torch.distributed.fsdp import FSDPModule

        return isinstance(self.module, FSDPModule)

    def autocast(self):
        if self.cfg.run.mixed_precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def build_state(cfg: TrainConfig, models: Models, *, world: int = 1, device: torch.device | None = None) -> TrainState:
    """Parallelize, then optimizer, LR schedule and EMA on the resulting parameters."""
    device = device or models.device
    module = parallelize(models, cfg, world, device)
    named = models.trainable_parameters()  # after fully_shard: its DTensors, not the replaced tensors
    optimizer = make_optimizer([p for _, p in named], cfg)
    ema = EMA(named, EMAConfig(decay=cfg.run.ema_decay)) if cfg.run.ema_decay else None
    return TrainState(cfg, models, module, named, optimizer, make_lr_scheduler(optimizer, cfg), ema, device)


@dataclass(frozen=True)
class StepResult:
    loss: float  # sample-weighted mean over the micro-batches
    grad_norm: float  # before clipping, over all ranks' gradients
    samples: int  # this rank's samples in the step


def _full(x: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return x.full_tensor() if isinstance(x, DTensor) else x


def _gradient_sync(state: TrainState, on: bool):
    """DDP/FSDP2: reduce gradients only on a step's last micro-batch."""
    if isinstance(state.module, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if on else state.module.no_sync()
    if state.sharded:
        state.module.set_requires_gradient_sync(on)
    return contextlib.nullcontext()


def train_step(state: TrainState, micro_batches: Sequence[dict], generator: torch.Generator,
               loss_fn: Callable[[dict], torch.Tensor] | None = None) -> StepResult:
    """One optimizer step over ``micro_batches`` (gradient accumulation when more than one).

    Each micro-batch's loss (training.objective.training_step unless ``loss_fn`` is given: a
    mean over its samples) is weighted by its share of the step's samples before backward, so
    k micro-batches give the gradient of one batch holding all of them. Then clipping to
    optim.max_grad_norm, the optimizer, the LR schedule and the EMA, once.
    """
    if not micro_batches:
        raise ValueError("train_step needs at least one micro-batch")
    if loss_fn is None:
        def loss_fn(batch: dict) -> torch.Tensor:
            return training_step(state.models, batch, state.cfg.objective, generator, transformer=state.module)
    sizes = [len(b["prompts"]) for b in micro_batches]
    total_samples = sum(sizes)
    if not total_samples:
        raise ValueError("train_step: the micro-batches hold no samples")
    total = 0.0
    for i, (batch, n) in enumerate(zip(micro_batches, sizes, strict=True)):
        last = i == len(micro_batches) - 1
        with _gradient_sync(state, last), state.autocast():
            loss = loss_fn(batch)
        (loss * (n / total_samples)).backward()
        total += float(loss.detach()) * n / total_samples  # waits for the device
    if state.sharded:
        state.module.set_requires_gradient_sync(True)
    grad_norm = torch.nn.utils.clip_grad_norm_(state.params, state.cfg.optim.max_grad_norm or float("inf"))
    state.optimizer.step()
    state.lr_scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    if state.ema is not None:
        state.ema.update(state.named)
    return StepResult(loss=total, grad_norm=float(_full(grad_norm)), samples=total_samples)


class _Metrics:
    """Rank 0's TensorBoard writer and log lines; a no-op on other ranks."""

    def __init__(self, out: Path, rank: int):
        self.rank, self.writer = rank, None
        if rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"))

    def scalars(self, step: int, max_steps: int, values: dict[str, float], eta_s: float) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        log.info("%s", progress_line(step, max_steps, values["loss"], values["samples_per_s"], eta_s))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def progress_line(step: int, max_steps: int, loss: float, samples_per_s: float, eta_s: float | None) -> str:
    """The one progress line the CLI shows: step, loss, samples/s, ETA ("?" where unknown yet)."""
    eta = "?" if eta_s is None or eta_s != eta_s else time.strftime("%H:%M:%S", time.gmtime(max(0.0, eta_s)))
    rate = "?" if samples_per_s != samples_per_s else f"{samples_per_s:.3g}"
    return f"step {step}/{max_steps}  loss {loss:.4g}  {rate} samples/s  ETA {eta}"


EVENTS = "events.jsonl"  # RUN/events.jsonl: what rank 0 is doing before its first step


def _event(out: Path, rank: int, text: str) -> None:
    """Rank 0 says what the run is doing (RUN/events.jsonl, one JSON line each): the driver
    shows it while the workers start, load the models and read the first batch."""
    if rank == 0:
        with open(out / EVENTS, "a") as f:
            f.write(json.dumps({"time": time.time(), "event": text}) + "\n")


def _validate(state: TrainState, step: int, out: Path, rank: int) -> None:
    """Sample videos from the fixed prompts (and images, for I2V) into OUT/validation/, at the
    version's official inference settings (validation.* as TrainConfig resolved them). Under
    FSDP2 every rank runs the same sampling (each forward gathers the shards) and rank 0 writes."""
    from training.export import generate, pipeline_from_models
    from training.video_out import write_mp4

    from training.data.bucket_plan import fps_prompt

    v = state.cfg.validation
    pipe = pipeline_from_models(state.models, scheduler=v.scheduler)
    cond = state.cfg.data.fps_condition  # "<n fps> " before the prompt when the model is trained with it
    ctx = state.ema.applied(state.named) if state.ema is not None else contextlib.nullcontext()
    with ctx, torch.no_grad():
        for i, prompt in enumerate(v.prompts):
            image = None
            if v.images:
                from PIL import Image

                from curation.media.images import read_image  # 16-bit, alpha and orientation as curation reads them

                image = Image.fromarray(read_image(str(v.images[i])))
            frames = generate(pipe, fps_prompt(prompt, v.fps, cond), image=image, num_frames=v.num_frames, height=v.height, width=v.width,
                              num_inference_steps=v.steps, guidance_scale=v.guidance_scale,
                              use_dynamic_cfg=v.use_dynamic_cfg, seed=i)
            if rank == 0:
                write_mp4(out / "validation" / f"step{step:08d}_{i:02d}.mp4", frames, fps=v.fps)


def train(cfg: TrainConfig, *, report: Callable[[dict], None] | None = None, stop_after: int | None = None) -> dict:
    """Train to `cfg.run.max_steps`, resuming from the newest checkpoint under run.out.
    `report` receives each logged metrics dict (Ray Train passes ray.train.report);
    `stop_after` ends this call after that many steps (tests simulate a crash with it)."""
    rank, world, device = _setup_distributed(cfg)
    check_captions(cfg.data, cfg.model.variant)  # T2V: refuse mostly uncaptioned data, every rank alike
    out = Path(cfg.run.out)
    ckpt_root = out / "checkpoints"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.resolved.json").write_text(json.dumps(config_dict(cfg), indent=2))
    _event(out, rank, f"{world} worker(s) up on {device.type}; loading the models ({cfg.model.pretrained})")
    t0 = time.perf_counter()
    torch.manual_seed(cfg.run.seed)  # same initial LoRA/full weights on every rank
    models = load_models(cfg.model, device)
    check_model_fit(cfg, dict(models.transformer.config))
    state = build_state(cfg, models, world=world, device=device)
    generator = torch.Generator(device="cpu").manual_seed(cfg.run.seed * 1_000_003 + rank)
    loader = TrainLoader(cfg.data, rank=rank, world_size=world, pin_memory=device.type == "cuda")
    trainable = sum(p.numel() for p in state.params)
    _event(out, rank, f"models ready in {time.perf_counter() - t0:.0f} s ({trainable:,} trainable parameters)")

    step = 0
    latest = latest_checkpoint(ckpt_root)
    if latest is not None:
        resumed = load_checkpoint(latest, models=models, optimizer=state.optimizer, lr_scheduler=state.lr_scheduler,
                                  ema=state.ema, generators={f"train.rank{rank}": generator},
                                  sharded_module=state.module if state.sharded else None)
        step = resumed.step
        loader.load_state_dict(resumed.data_position[str(rank)])
        if rank == 0:
            log.info("resumed from %s at step %d", latest, step)
        _event(out, rank, f"resumed from {latest.name} at step {step}")
    _event(out, rank, f"reading the first batch from {cfg.data.cache_dir or cfg.data.shards}")

    metrics = _Metrics(out, rank)
    state.module.train()
    k = cfg.optim.gradient_accumulation_steps
    wait = compute = 0.0
    samples = 0
    last_loss = float("nan")
    losses: list[float] = []
    batches = iter(loader)
    t_start = t_end = time.perf_counter()
    first_step = step
    ran = 0
    while step < cfg.run.max_steps and (stop_after is None or ran < stop_after):
        micro = [next(batches) for _ in range(k)]
        t_data = time.perf_counter()
        wait += t_data - t_end
        result = train_step(state, micro, generator)
        skipped_total = _skipped(loader, world)  # every rank's samples skipped so far, by reason (small)
        step += 1
        ran += 1
        last_loss = result.loss
        losses.append(last_loss)
        if rank == 0:  # one line a step: what was trained on, and the loss (resume is checkable)
            with open(out / "steps.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "loss": last_loss, "bucket": micro[-1]["bucket"],
                                    "buckets": [b["bucket"] for b in micro],
                                    "clip_ids": [c for b in micro for c in b["clip_ids"]], "batch": loader.batches - 1,
                                    "fps": [b.get("fps") for b in micro], "samples": result.samples * world,
                                    "skipped": skipped_total, "time": time.time()}) + "\n")
        samples += result.samples
        t_end = time.perf_counter()
        compute += t_end - t_data
        if step % cfg.run.log_every == 0 or step == cfg.run.max_steps:
            values = {"loss": last_loss, "lr": state.lr_scheduler.get_last_lr()[0], "grad_norm": result.grad_norm,
                      "samples_per_s": samples * world / max(wait + compute, 1e-9),
                      "data_wait_frac": wait / max(wait + compute, 1e-9)}
            if device.type == "cuda":
                values["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            values |= {f"skipped/{reason}": float(n) for reason, n in skipped_total.items()}
            per_step = (t_end - t_start) / max(step - first_step, 1)
            metrics.scalars(step, cfg.run.max_steps, values, per_step * (cfg.run.max_steps - step))
            if report is not None:
                report({"step": step, **values})
            wait = compute = 0.0
            samples = 0
        if step % cfg.run.checkpoint_every == 0 or step == cfg.run.max_steps:
            _checkpoint(ckpt_root, step, state, loader, generator, rank, world)
        if cfg.validation.every and step % cfg.validation.every == 0 and (rank == 0 or state.sharded):
            _validate(state, step, out, rank)
    metrics.close()
    return {"step": step, "loss": last_loss, "losses": losses, "rank": rank, "world_size": world}


def _skipped(loader: TrainLoader, world: int) -> dict[str, int]:
    """Samples the data pipeline skipped so far on every rank, by reason (collective)."""
    mine = dict(getattr(loader, "skipped", {}))
    if world == 1:
        return mine
    every: list = [None] * world
    dist.all_gather_object(every, mine)
    total: dict[str, int] = {}
    for counts in every:
        for reason, n in counts.items():
            total[reason] = total.get(reason, 0) + int(n)
    return total


def _checkpoint(root: Path, step: int, state: TrainState, loader: TrainLoader, generator: torch.Generator,
                rank: int, world: int) -> None:
    """Rank 0 writes one checkpoint holding every rank's data position and generator, so each
    rank resumes its own stream exactly. Under DDP the weights and optimizer state are the same
    on every rank, so rank 0's copy is kept; under FSDP2 every rank first takes part in
    gathering the full weights, optimizer state and EMA shadows."""
    position, gen_state = loader.state_dict(), generator.get_state()
    positions, gen_states = [position], [gen_state]
    if world > 1:
        positions, gen_states = [None] * world, [None] * world
        dist.all_gather_object(positions, position)
        dist.all_gather_object(gen_states, gen_state)
    gathered = {}
    if state.sharded:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        gathered["transformer_state"] = get_model_state_dict(state.module, options=opts)
        gathered["optimizer_state"] = get_optimizer_state_dict(state.module, state.optimizer, options=opts)
        if state.ema is not None:
            gathered["ema_state"] = {n: t.cpu() for n, t in state.ema.state_dict().items()}
    if rank == 0:
        gens = {}
        for r, gs in enumerate(gen_states):
            gens[f"train.rank{r}"] = g = torch.Generator(device="cpu")
            g.set_state(gs)
        save_checkpoint(root, step=step, models=state.models, optimizer=state.optimizer,
                        lr_scheduler=state.lr_scheduler, ema=state.ema,
                        data_position={str(r): p for r, p in enumerate(positions)}, generators=gens,
                        keep_last=state.cfg.run.keep_checkpoints, **gathered)
    if world > 1:
        dist.barrier()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train CogVideoX on videomill shards (one process or torchrun).")
    p.add_argument("config")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_train_config(args.config)
    summary = train(cfg)
    if summary["rank"] == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "losses"}
                         | {"run": cfg.run.out, "tensorboard": str(Path(cfg.run.out) / "tensorboard")}))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
