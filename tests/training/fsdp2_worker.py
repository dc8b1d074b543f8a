"""Run by tests/training/test_fsdp2.py under `torchrun --nproc-per-node 2` (gloo, CPU): FSDP2
full finetuning of the tiny T2V 1.0 model (RANDOM, UNTRAINED weights; only the mechanics are
checked). Rank 0 writes what it saw to OUT/result.json; the test asserts on it.

    python -m torch.distributed.run --nproc-per-node 2 tests/training/fsdp2_worker.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from curation.core.config_loader import build_config
from training.checkpoint import latest_checkpoint
from training.config import TrainConfig
from training.data.loader import write_cache_index, write_cache_part
from training.loop import _full, build_state, train, train_step
from training.models import build_tiny, load_models

BUCKET = {"width": 32, "height": 32, "frames": 9, "batch_size": 1}  # the tiny model's native size


def config(root: Path, out: str) -> TrainConfig:
    return build_config(TrainConfig, {
        "data": {"cache_dir": str(root / "cache"), "buckets": [BUCKET], "image_ratio": 0.0, "num_workers": 0,
                 "epoch_length": 8, "seed": 1},
        "model": {"pretrained": str(root / "tiny"), "variant": "t2v", "version": "1.0", "dtype": "fp32",
                  "lora": False, "gradient_checkpointing": False},
        "optim": {"lr": 1e-3, "warmup_steps": 0, "gradient_accumulation_steps": 2},  # no gradient sync on the first
        "run": {"out": str(root / out), "max_steps": 4, "checkpoint_every": 2, "log_every": 1,
                "mixed_precision": "no", "seed": 5, "ema_decay": 0.9},
        "validation": {"every": 4, "prompts": ["a cat"], "num_frames": 9, "height": 32, "width": 32, "steps": 2},
        "distributed": {"strategy": "fsdp2"},
    }, "")


def main(root: Path) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank = dist.get_rank()
    if rank == 0:
        build_tiny(root / "tiny", variant="t2v", version="1.0")
        g = torch.Generator().manual_seed(0)
        n = 4  # latent moments of 9 frames at 32x32: (2*4 channels, 3 frames, 4, 4)
        tensors = {"latent_moments": torch.cat([torch.randn(n, 4, 3, 4, 4, generator=g),
                                                torch.full((n, 4, 3, 4, 4), -6.0)], dim=1),
                   "prompt_embeds": torch.randn(n, 226, 32, generator=g)}
        entry = write_cache_part(root / "cache", "32x32_f9", 0, tensors, [f"c{i}" for i in range(n)], ["a cat"] * n)
        write_cache_index(root / "cache", [entry])
    dist.barrier()
    result: dict = {}

    # 1. The optimizer holds the live (sharded) parameters: every weight moves, and the loss on
    #    one repeated batch (same timesteps and noise each step) falls.
    cfg = config(root, "unused")
    torch.manual_seed(cfg.run.seed)
    state = build_state(cfg, load_models(cfg.model), world=dist.get_world_size())
    before = {n: _full(p).detach().clone() for n, p in state.named}
    g = torch.Generator().manual_seed(9)
    batch = {"latents": torch.randn(1, 3, 4, 4, 4, generator=g), "prompt_embeds": torch.randn(1, 226, 32, generator=g),
             "prompts": ["a cat"]}
    losses, norms = [], []
    for _ in range(6):
        r = train_step(state, [batch], torch.Generator().manual_seed(3))
        losses.append(r.loss)
        norms.append(r.grad_norm)
    after = {n: _full(p).detach() for n, p in state.named}
    opt_params = [p for group in state.optimizer.param_groups for p in group["params"]]
    live = dict(state.models.transformer.named_parameters())
    result.update(
        losses=losses, grad_norms=norms, total=len(before),
        changed=sum(not torch.equal(before[n], after[n]) for n in before),
        param_types=sorted({type(p).__name__ for _, p in state.named}),
        optimizer_holds_live=len(opt_params) == len(live) and all(any(p is q for q in live.values()) for p in opt_params),
    )
    del state

    # 2. train() end to end twice: straight, and stopped after 3 steps then rerun (resumes from
    #    the step-2 checkpoint). Same losses, same final weights and EMA.
    straight = train(config(root, "straight"))
    train(config(root, "crashed"), stop_after=3)
    resumed = train(config(root, "crashed"))
    if rank == 0:
        a, b = (latest_checkpoint(root / r / "checkpoints") for r in ("straight", "crashed"))
        wa, wb = (load_file(c / "transformer" / "diffusion_pytorch_model.safetensors") for c in (a, b))
        ea, eb = (load_file(c / "ema.safetensors") for c in (a, b))
        result.update(
            straight_losses=straight["losses"], resumed_losses=resumed["losses"], resumed_step=resumed["step"],
            checkpoint=str(a), weights_equal=wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa),
            ema_equal=ea.keys() == eb.keys() and all(torch.equal(ea[k], eb[k]) for k in ea),
            weights_moved=not all(torch.equal(wa[k], v) for k, v in load_file(
                root / "tiny" / "transformer" / "diffusion_pytorch_model.safetensors").items()),
        )
        # The checkpoint is diffusers weights: the pipeline loads it and samples.
        from training.export import generate, load_pipeline

        pipe = load_pipeline(str(root / "tiny"), a, dtype="fp32")
        result["export_shape"] = list(generate(pipe, "a cat", num_frames=9, height=32, width=32,
                                               num_inference_steps=2).shape)
        (root / "result.json").write_text(json.dumps(result, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
