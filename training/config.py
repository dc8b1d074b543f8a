"""The trainer's configuration: one TOML/YAML/JSON file mapped onto each component's Config.

    [data]        training/data/loader.py       shards, buckets, image/video ratio, workers
    [model]       training/models.py     base model, T2V/I2V, 1.0/1.5, LoRA or full, dtype
    [objective]   training/objective.py  v-prediction loss, text/condition dropout, I2V noise
    [optim]       below                  AdamW (8-bit when bitsandbytes is installed), LR schedule
                                         (diffusers' get_scheduler), gradient accumulation
    [run]         below                  steps, checkpoints, validation, logging, seed
    [distributed] below                  workers, GPUs, DDP or FSDP2
    [precompute]  training/data/precompute.py `videomill train precompute`: storage dtype, VAE slicing/tiling

Unknown keys fail at load time with their dotted path (curation/core/config_loader.py); the
resolved config is written into the run directory.

**Paths** (data.shards, data.cache_dir, model.pretrained when it is a local directory,
model.tiny_dir, run.out, validation.images) are resolved by `load_train_config` relative to
the directory the command runs in (not the config file's), so Ray Train workers, whose
working directory is elsewhere, get absolute paths.

**Version defaults** live in one place, `VERSION_DEFAULTS`: what a config leaves unsaid about
frame rate, frame count rule, buckets and validation comes from `model.version`, and
`check_model_fit` refuses what contradicts the version or the model's positional embeddings.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from curation.core.config_loader import build_config, merge_dicts, read_config_file
from training.data.loader import DataConfig
from training.models import ModelConfig
from training.objective import ObjectiveConfig
from training.data.precompute import PrecomputeConfig

LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts")


@dataclass(frozen=True, kw_only=True)
class VersionDefaults:
    """What a CogVideoX version was trained and is sampled at (THUDM/CogVideo README and model
    cards; diffusers' CogVideoX pipelines and the released scheduler configs)."""

    fps: float  # training frame rate
    frame_multiple: int  # frames = frame_multiple * N + 1
    buckets: tuple[dict, ...]  # default data.buckets
    num_frames: int  # native clip length (validation)
    height: int  # native size (validation)
    width: int
    scheduler: Literal["ddim", "dpm"]  # the sampler of the official inference settings
    use_dynamic_cfg: bool
    guidance_scale: float = 6.0
    steps: int = 50


VERSION_DEFAULTS: dict[str, VersionDefaults] = {
    # 1.0: 49 frames (8N+1) at 8 fps, 720x480; sampled with DDIM and static CFG 6, 50 steps.
    "1.0": VersionDefaults(
        fps=8.0, frame_multiple=8, num_frames=49, height=480, width=720, scheduler="ddim", use_dynamic_cfg=False,
        buckets=({"name": "720x480_f49", "batch_size": 1}, {"name": "720x480_f17", "batch_size": 4},
                 {"name": "image_720x480", "batch_size": 8}),
    ),
    # 1.5: 81 frames (16N+1) at 16 fps, 1360x768 native (min side 768, max side <= 1360);
    # sampled with CogVideoXDPMScheduler (its released scheduler config) and dynamic CFG 6.
    "1.5": VersionDefaults(
        fps=16.0, frame_multiple=16, num_frames=81, height=768, width=1360, scheduler="dpm", use_dynamic_cfg=True,
        buckets=({"name": "1360x768_f81", "batch_size": 1}, {"name": "1360x768_f49", "batch_size": 1},
                 {"name": "768x1360_f81", "batch_size": 1}, {"name": "1024x768_f81", "batch_size": 1},
                 {"name": "768x768_f81", "batch_size": 1}, {"name": "image_1360x768", "batch_size": 4}),
    ),
}

# The released models' transformer facts that decide what they can be trained on
# (transformer/config.json of each hub repository; THUDM is now also zai-org).
_NATIVE_720x480 = {"sample_height": 60, "sample_width": 90, "sample_frames": 49, "max_text_seq_length": 226}
RELEASED: dict[str, dict] = {
    "CogVideoX-2b": {**_NATIVE_720x480, "version": "1.0", "variant": "t2v", "use_rotary_positional_embeddings": False,
                     "use_learned_positional_embeddings": False, "patch_size_t": None},
    "CogVideoX-5b": {**_NATIVE_720x480, "version": "1.0", "variant": "t2v", "use_rotary_positional_embeddings": True,
                     "use_learned_positional_embeddings": False, "patch_size_t": None},
    "CogVideoX-5b-I2V": {**_NATIVE_720x480, "version": "1.0", "variant": "i2v", "use_rotary_positional_embeddings": True,
                         "use_learned_positional_embeddings": True, "patch_size_t": None},
    "CogVideoX1.5-5B": {"version": "1.5", "variant": "t2v", "sample_height": 300, "sample_width": 170, "sample_frames": 81, "max_text_seq_length": 226,
                        "use_rotary_positional_embeddings": True, "use_learned_positional_embeddings": False,
                        "patch_size_t": 2},
    "CogVideoX1.5-5B-I2V": {"version": "1.5", "variant": "i2v", "sample_height": 300, "sample_width": 170, "sample_frames": 81, "max_text_seq_length": 226,
                            "use_rotary_positional_embeddings": True, "use_learned_positional_embeddings": False,
                            "patch_size_t": 2},
}
VAE_SPATIAL = 8  # CogVideoX's VAE: pixels per latent, spatially


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    # diffusers.optimization.get_scheduler, stepped once per optimizer step over run.max_steps;
    # CogVideoX finetunes (CogVideo, diffusers' example, finetrainers) use constant with warmup.
    lr_schedule: str = "constant_with_warmup"
    warmup_steps: int = 100
    num_cycles: int = 1  # cosine_with_restarts: hard restarts
    max_grad_norm: float | None = 1.0
    # Micro-batches per optimizer step: losses are averaged over them before the step (DDP and
    # FSDP2 synchronise gradients only on the last), so the effective batch is k x the bucket's.
    gradient_accumulation_steps: int = 1
    use_8bit: bool = False  # bitsandbytes AdamW8bit; fails loudly when not installed

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"optim.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.lr_schedule == "constant" and self.warmup_steps:
            raise ValueError("optim.warmup_steps: the constant schedule has no warmup (use constant_with_warmup)")
        if not (isinstance(self.num_cycles, int) and self.num_cycles >= 1):
            raise ValueError(f"optim.num_cycles must be an integer >= 1, got {self.num_cycles!r}")
        k = self.gradient_accumulation_steps
        if not (isinstance(k, int) and k >= 1):
            raise ValueError(f"optim.gradient_accumulation_steps must be an integer >= 1, got {k!r}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"optim.max_grad_norm must be > 0 or null, got {self.max_grad_norm}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")


@dataclass(frozen=True, kw_only=True)
class ValidationConfig:
    """Sampling settings; every field left null takes model.version's official inference
    setting from VERSION_DEFAULTS (TrainConfig fills them in)."""

    prompts: tuple[str, ...] = ("a red ball rolls across a wooden table",)
    images: tuple[str, ...] = ()  # I2V: one condition image per prompt (paths)
    every: int = 0  # steps between validations; 0: never
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None  # denoising steps
    guidance_scale: float | None = None
    use_dynamic_cfg: bool | None = None
    scheduler: Literal["ddim", "dpm"] | None = None
    fps: int | None = None  # of the written mp4

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError(f"validation.every must be >= 0, got {self.every}")
        if self.images and len(self.images) != len(self.prompts):
            raise ValueError("validation.images: give one image per prompt (or none for T2V)")
        if self.scheduler not in (None, "ddim", "dpm"):
            raise ValueError(f"validation.scheduler must be ddim or dpm, got {self.scheduler!r}")
        if self.num_frames is not None and (self.num_frames < 1 or (self.num_frames - 1) % 4):
            raise ValueError(f"validation.num_frames must be 4k+1, got {self.num_frames}")


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
        vd = VERSION_DEFAULTS[self.model.version]
        v = self.validation
        filled = {f: getattr(vd, f) for f in ("num_frames", "height", "width", "steps", "guidance_scale",
                                              "use_dynamic_cfg", "scheduler") if getattr(v, f) is None}
        if v.fps is None:
            filled["fps"] = int(round(vd.fps))
        if filled:
            object.__setattr__(self, "validation", replace(v, **filled))
        check_version(self)
        facts = released_facts(self.model.pretrained)
        if facts is not None:
            for f in ("version", "variant"):
                if getattr(self.model, f) != facts[f]:
                    raise ValueError(f"model.{f}: {self.model.pretrained} is {facts[f]}, "
                                     f"got {getattr(self.model, f)!r}")
            check_model_fit(self, facts)


def check_version(cfg: TrainConfig) -> None:
    """Refuse what contradicts model.version or model.variant, before anything loads."""
    m, d, v = cfg.model, cfg.data, cfg.validation
    vd = VERSION_DEFAULTS[m.version]
    if m.version == "1.5" and d.frame_multiple != 16:
        raise ValueError(f"data.frame_multiple: CogVideoX 1.5 trains on 16N+1 frames, got {d.frame_multiple}N+1")
    if m.version == "1.0" and d.frame_multiple % 8:
        raise ValueError(f"data.frame_multiple: CogVideoX 1.0 trains on 8N+1 frames, got {d.frame_multiple}N+1")
    if (v.num_frames - 1) % vd.frame_multiple:
        raise ValueError(f"validation.num_frames: CogVideoX {m.version} samples {vd.frame_multiple}N+1 frames, "
                         f"got {v.num_frames}")
    if m.variant == "i2v":
        # An image is a 1-frame video: conditioned on its own first frame it is an identity task.
        images = [b.name for b in d.buckets if b.media == "image"]
        if images:
            raise ValueError(f"data.buckets: image buckets {images} with model.variant = i2v (an image conditioned on "
                             "itself teaches nothing); remove them")
        if d.image_ratio:
            raise ValueError(f"data.image_ratio must be 0 with model.variant = i2v, got {d.image_ratio}")
        if v.every and not v.images:
            raise ValueError("validation.images: I2V validation needs one condition image per prompt")
    if m.variant == "t2v" and v.images:
        raise ValueError("validation.images: T2V validation takes no images")


def released_facts(pretrained: str) -> dict | None:
    """The RELEASED facts of a hub id such as THUDM/CogVideoX-5b (or its local snapshot), else None."""
    return RELEASED.get(pretrained.rstrip("/").rsplit("/", 1)[-1])


def check_model_fit(cfg: TrainConfig, transformer: dict) -> None:
    """Refuse buckets and validation sizes the model's embeddings cannot take, and a text length
    other than the one it was trained on. ``transformer`` is its config (transformer/config.json
    or RELEASED). Raises ValueError naming the field."""
    t = transformer
    if cfg.objective.max_text_len != t["max_text_seq_length"]:
        raise ValueError(f"objective.max_text_len: the model was trained on {t['max_text_seq_length']} text tokens "
                         f"(its positional layout assumes it), got {cfg.objective.max_text_len}")
    native = (t["sample_frames"], t["sample_height"] * VAE_SPATIAL, t["sample_width"] * VAE_SPATIAL)
    v = cfg.validation
    sizes = [(f"data.buckets[{b.name}]", b.frames, b.height, b.width) for b in cfg.data.buckets]
    if v.every:
        sizes.append(("validation", v.num_frames, v.height, v.width))
    name = cfg.model.pretrained.rstrip("/").rsplit("/", 1)[-1]
    for where, frames, h, w in sizes:
        if t["use_learned_positional_embeddings"] and (frames, h, w) != native:
            # diffusers' CogVideoXPatchEmbed silently swaps the learned table for sin-cos
            # embeddings at any other shape (CogVideoX-5b-I2V).
            raise ValueError(f"{where}: the model's learned positional embeddings take only {native[0]} frames at "
                             f"{native[2]}x{native[1]}, got {frames} frames at {w}x{h}")
        if name in ("CogVideoX-5b", "CogVideoX-5b-I2V") and (h, w) != native[1:]:
            raise ValueError(f"{where}: CogVideoX-5b (1.0) supports {native[2]}x{native[1]} only, got {w}x{h}")
        if t["patch_size_t"] and (h > native[1] or w > native[2]):
            # 1.5's RoPE grid is sliced from one of the native size; larger does not fit.
            raise ValueError(f"{where}: {w}x{h} exceeds the model's RoPE grid ({native[2]}x{native[1]})")


def version_defaults(raw: dict) -> dict:
    """The data settings a raw config leaves unsaid, from its model.version (VERSION_DEFAULTS)."""
    version = (raw.get("model") or {}).get("version", ModelConfig.version)
    vd = VERSION_DEFAULTS.get(version)
    if vd is None:
        raise ValueError(f"model.version must be one of {sorted(VERSION_DEFAULTS)}, got {version!r}")
    return {"data": {"fps": vd.fps, "frame_multiple": vd.frame_multiple, "buckets": [dict(b) for b in vd.buckets]}}


def resolve_paths(cfg: TrainConfig, base: str | Path | None = None) -> TrainConfig:
    """Every path of CFG made absolute relative to BASE (default: the current directory).
    model.pretrained counts as a path when it starts with ., / or ~ or names an existing directory
    (else it is a hub id, as diffusers' from_pretrained decides)."""
    base = Path(base) if base is not None else Path.cwd()

    def absolute(p: str | None) -> str | None:
        return p if not p else str((base / Path(p).expanduser()).resolve())

    pre = cfg.model.pretrained
    if pre != "tiny" and (pre.startswith((".", "/", "~")) or (base / pre).is_dir()):
        pre = absolute(pre)
    return replace(
        cfg,
        data=replace(cfg.data, shards=absolute(cfg.data.shards) or "", cache_dir=absolute(cfg.data.cache_dir)),
        model=replace(cfg.model, pretrained=pre, tiny_dir=absolute(cfg.model.tiny_dir)),
        run=replace(cfg.run, out=absolute(cfg.run.out)),
        validation=replace(cfg.validation, images=tuple(absolute(i) for i in cfg.validation.images)),
    )


def load_train_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                      base: str | Path | None = None) -> TrainConfig:
    """The config file with OVERRIDES on top and the version's defaults below, paths resolved
    relative to BASE (default: the current directory). ValueError names a bad field."""
    data = merge_dicts(read_config_file(path) if path else {}, overrides or {})
    cfg = build_config(TrainConfig, merge_dicts(version_defaults(data), data), "")
    cfg = resolve_paths(cfg, base)
    local = Path(cfg.model.pretrained) / "transformer" / "config.json"
    if local.is_file():  # a local model: check against its own transformer config now
        check_model_fit(cfg, json.loads(local.read_text()))
    return cfg


def config_dict(cfg: TrainConfig) -> dict:
    """CFG as plain JSON-able data (what build_config reads back)."""
    return json.loads(json.dumps(asdict(cfg), default=str))



