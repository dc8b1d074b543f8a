"""The trainer's configuration: one TOML/YAML/JSON file mapped onto each component's Config.

    [data]        training/data.py       shards, buckets, image/video ratio, workers
    [model]       training/models.py     base model, T2V/I2V, 1.0/1.5, LoRA or full, dtype
    [objective]   training/objective.py  v-prediction loss, text/condition dropout, I2V noise
    [optim]       below                  AdamW (8-bit when bitsandbytes is installed), warmup
    [run]         below                  steps, checkpoints, validation, logging, seed
    [distributed] below                  workers, GPUs, DDP or FSDP2
    [precompute]  training/precompute.py `videomill train precompute`: storage dtype, VAE slicing/tiling

Unknown keys fail at load time with their dotted path (curation.config.build_config); the
resolved config is written into the run directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.config import build_config, merge_dicts, read_config_file
from training.data import DataConfig
from training.models import ModelConfig
from training.objective import ObjectiveConfig
from training.precompute import PrecomputeConfig


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 100  # linear warmup, then constant (CogVideoX finetunes use constant)
    max_grad_norm: float | None = 1.0
    use_8bit: bool = False  # bitsandbytes AdamW8bit; fails loudly when not installed

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"optim.max_grad_norm must be > 0 or null, got {self.max_grad_norm}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")


@dataclass(frozen=True, kw_only=True)
class ValidationConfig:
    prompts: tuple[str, ...] = ("a red ball rolls across a wooden table",)
    images: tuple[str, ...] = ()  # I2V: one condition image per prompt (paths)
    every: int = 0  # steps between validations; 0: never
    num_frames: int = 49
    height: int = 480
    width: int = 720
    steps: int = 50  # denoising steps
    guidance_scale: float = 6.0
    fps: int = 8

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError(f"validation.every must be >= 0, got {self.every}")
        if self.images and len(self.images) != len(self.prompts):
            raise ValueError("validation.images: give one image per prompt (or none for T2V)")


@dataclass(frozen=True, kw_only=True)
class RunSection:
    out: str = "runs/train"  # checkpoints, TensorBoard logs, validation videos, resolved config
    max_steps: int = 1000
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    seed: int = 0
    mixed_precision: str = "bf16"  # bf16 autocast around the forward pass, or "no"
    ema_decay: float | None = None  # e.g. 0.999; None: no EMA

    def __post_init__(self) -> None:
        for f in ("max_steps", "checkpoint_every", "log_every", "keep_checkpoints"):
            if getattr(self, f) < 1:
                raise ValueError(f"run.{f} must be >= 1, got {getattr(self, f)}")
        if self.mixed_precision not in ("bf16", "no"):
            raise ValueError(f"run.mixed_precision must be bf16 or no, got {self.mixed_precision!r}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"run.ema_decay must be in (0, 1) or null, got {self.ema_decay}")


@dataclass(frozen=True, kw_only=True)
class DistributedConfig:
    num_workers: int = 1  # Ray Train workers (processes); under torchrun, WORLD_SIZE wins
    gpus_per_worker: float = 0.0  # 0: CPU workers with gloo; else NCCL
    strategy: str = "ddp"  # ddp | fsdp2 (full finetune of large models)
    max_failures: int = 3  # Ray Train restarts a failed run from its last checkpoint
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"distributed.num_workers must be >= 1, got {self.num_workers}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"distributed.gpus_per_worker must be >= 0, got {self.gpus_per_worker}")
        if self.strategy not in ("ddp", "fsdp2"):
            raise ValueError(f"distributed.strategy must be ddp or fsdp2, got {self.strategy!r}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    run: RunSection = field(default_factory=RunSection)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    precompute: PrecomputeConfig = field(default_factory=PrecomputeConfig)

    def __post_init__(self) -> None:
        if self.distributed.strategy == "fsdp2" and self.model.lora is not None:
            raise ValueError("distributed.strategy: fsdp2 is for full finetuning (model.lora = null); LoRA uses ddp")


def load_train_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    data = read_config_file(path) if path else {}
    return build_config(TrainConfig, merge_dicts(data, overrides or {}), "")
