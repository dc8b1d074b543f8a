"""Load the CogVideoX components for training: transformer, VAE, T5, tokenizer, scheduler.

Every model is loaded with ``from_pretrained(path, subfolder=...)`` from a hub id or a local
directory in the diffusers pipeline layout. ``build_tiny`` writes such a directory with tiny
*random, untrained* models, so tests and CPU smoke runs go through the same loading code as a
real checkpoint.

Precision: ``ModelConfig.dtype`` is the dtype of the frozen weights (VAE, T5, the transformer
base under LoRA). Trainable parameters are always fp32 (LoRA weights, or the whole
transformer in a full finetune): AdamW updates in bf16 lose most small steps. Run the forward
pass under ``torch.autocast`` to get bf16 speed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Literal

import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    CogVideoXDDIMScheduler,
    CogVideoXTransformer3DModel,
)
from pydantic import BeforeValidator
from transformers import AutoTokenizer, PreTrainedTokenizerBase, T5EncoderModel

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TINY = "tiny"
TINY_MARKER = "videomill_tiny.json"  # written by build_tiny; its presence makes loading warn
TINY_COMPLETE = ".complete.json"  # written last by build_tiny: every file with its size
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # attention projections, as the CogVideoX finetune


@dataclass(frozen=True, kw_only=True)
class LoraOptions:
    # CogVideo's own finetune defaults (rank 128, alpha 64 on the attention projections).
    rank: int = 128
    alpha: float = 64.0
    target_modules: tuple[str, ...] = LORA_TARGETS
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))  # lists from TOML/YAML
        if self.rank < 1:
            raise ValueError(f"model.lora.rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"model.lora.alpha must be > 0, got {self.alpha}")
        if not self.target_modules:
            raise ValueError("model.lora.target_modules must name at least one module")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.lora.dropout must be in [0, 1), got {self.dropout}")


def _false_is_none(value: object) -> object:
    """TOML has no null: `lora = false` in a config file means a full finetune (the loader,
    curation/core/config_loader.py, runs this before it checks the type). A LoRA table is built
    here, by the loader: after a before-validator pydantic checks Python objects, where strict
    mode takes no list for a tuple (`target_modules = [...]` was refused)."""
    if value is False:
        return None
    if isinstance(value, dict):
        from curation.core.config_loader import build_config

        return build_config(LoraOptions, value, "model.lora")
    return value


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    # Hub id, local pipeline directory, or "tiny" (random tiny models built into tiny_dir).
    pretrained: str = "THUDM/CogVideoX-5b"
    variant: Literal["t2v", "i2v"] = "t2v"
    # 1.0: 49-frame models, no temporal patching. 1.5: 81-frame models with patch_size_t 2
    # (odd latent frame counts get the first frame prepended) and, for I2V, the ofs embedding.
    version: Literal["1.0", "1.5"] = "1.0"
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    lora: Annotated[LoraOptions | None, BeforeValidator(_false_is_none)] = field(default_factory=LoraOptions)  # None: full finetune
    gradient_checkpointing: bool = True
    snr_shift_scale: float | None = None  # None: keep the scheduler config's (3.0 for 2B, 1.0 for 5B)
    revision: str | None = None
    vae_tiling: bool = False  # only for resolutions the VAE cannot encode in one piece
    tiny_dir: str | None = None  # where pretrained="tiny" builds its models (default: a user cache)

    def __post_init__(self) -> None:
        # Built in code (the loader has made these a LoraOptions or None already), lora may be a
        # table; TOML has no null, so `lora = false` also means a full finetune (YAML/JSON can say null).
        if self.lora is False:
            object.__setattr__(self, "lora", None)
        elif isinstance(self.lora, dict):
            unknown = set(self.lora) - {f.name for f in fields(LoraOptions)}
            if unknown:
                raise ValueError(f"unknown config key(s): {', '.join('model.lora.' + k for k in sorted(unknown))}")
            object.__setattr__(self, "lora", LoraOptions(**self.lora))
        elif self.lora is not None and not isinstance(self.lora, LoraOptions):
            raise ValueError(f"model.lora must be a LoRA table or null/false (full finetune), got {self.lora!r}")
        if self.variant not in ("t2v", "i2v"):
            raise ValueError(f"model.variant must be t2v or i2v, got {self.variant!r}")
        if self.version not in ("1.0", "1.5"):
            raise ValueError(f"model.version must be '1.0' or '1.5', got {self.version!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not self.pretrained:
            raise ValueError("model.pretrained must be a hub id, a local directory or 'tiny'")
        if self.snr_shift_scale is not None and self.snr_shift_scale <= 0:
            raise ValueError(f"model.snr_shift_scale must be > 0, got {self.snr_shift_scale}")


@dataclass
class Models:
    transformer: CogVideoXTransformer3DModel
    vae: AutoencoderKLCogVideoX
    text_encoder: T5EncoderModel
    tokenizer: PreTrainedTokenizerBase
    scheduler: CogVideoXDDIMScheduler
    config: ModelConfig
    path: str  # the resolved base model (hub id or directory): export loads the pipeline from it
    device: torch.device
    empty_prompt_embeds: torch.Tensor | None = None  # T5("") memoised for text dropout on cached embeddings

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.transformer.named_parameters() if p.requires_grad]

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the transformer's frozen/base weights are stored in (its input dtype)."""
        return self.transformer.time_embedding.linear_1.weight.dtype


def resolve_pretrained(cfg: ModelConfig) -> str:
    """The model path: ``cfg.pretrained``, or for "tiny" the tiny-model cache directory, built
    (or rebuilt, when its completion record is missing or a file it lists is missing or of
    another size) first."""
    if cfg.pretrained != TINY:
        return cfg.pretrained
    tiny = Path(cfg.tiny_dir) if cfg.tiny_dir else Path.home() / ".cache" / "videomill" / "tiny"
    tiny = tiny / f"{cfg.variant}-{cfg.version}"
    problem = tiny_cache_problem(tiny)
    if problem is not None:
        if tiny.exists():
            log.warning("rebuilding the tiny-model cache %s: %s", tiny, problem)
        # Built aside and renamed: ranks starting together never load a half-written directory.
        tmp = tiny.with_name(f".{tiny.name}.tmp-{os.getpid()}")
        build_tiny(tmp, variant=cfg.variant, version=cfg.version)
        if tiny.exists() and tiny_cache_problem(tiny) is not None:  # move the broken one aside
            old = tiny.with_name(f".{tiny.name}.old-{os.getpid()}")
            try:
                os.rename(tiny, old)
                shutil.rmtree(old)
            except OSError:  # another process moved it first
                pass
        try:
            os.rename(tmp, tiny)
        except OSError:  # another process finished first; its models are the same (seed 0)
            shutil.rmtree(tmp)
    return str(tiny)


def tiny_cache_problem(path: Path) -> str | None:
    """Why the tiny-model directory PATH is not complete (None when it is): build_tiny writes
    TINY_COMPLETE last, listing every file of every component with its size."""
    record = path / TINY_COMPLETE
    if not record.is_file():
        return f"no {TINY_COMPLETE} (never finished building)"
    try:
        files = json.loads(record.read_text())["files"]
    except (ValueError, KeyError) as e:
        return f"{TINY_COMPLETE} unreadable: {e}"
    for rel, size in files.items():
        f = path / rel
        if not f.is_file() or f.stat().st_size != size:
            return f"{rel} missing or truncated"
    return None


def load_models(cfg: ModelConfig, device: str | torch.device = "cpu") -> Models:
    device = torch.device(device)
    path = resolve_pretrained(cfg)
    if (Path(path) / TINY_MARKER).exists():
        _warn_tiny(path)
    dtype = DTYPES[cfg.dtype]
    common = {"revision": cfg.revision}
    # A full finetune keeps fp32 master weights; under LoRA the base is frozen in cfg.dtype.
    tr_dtype = dtype if cfg.lora is not None else torch.float32
    transformer = CogVideoXTransformer3DModel.from_pretrained(path, subfolder="transformer", dtype=tr_dtype, **common)
    vae = AutoencoderKLCogVideoX.from_pretrained(path, subfolder="vae", dtype=dtype, **common)
    text_encoder = T5EncoderModel.from_pretrained(path, subfolder="text_encoder", dtype=dtype, **common)
    tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer", **common)
    overrides = {} if cfg.snr_shift_scale is None else {"snr_shift_scale": cfg.snr_shift_scale}
    scheduler = CogVideoXDDIMScheduler.from_pretrained(path, subfolder="scheduler", **overrides, **common)
    _check_matches(cfg, transformer, vae, scheduler)

    for frozen in (vae, text_encoder):
        frozen.requires_grad_(False)
        frozen.eval()
    if cfg.vae_tiling:
        vae.enable_tiling()
    prepare_transformer(transformer, cfg)
    for m in (transformer, vae, text_encoder):
        m.to(device)
    return Models(transformer, vae, text_encoder, tokenizer, scheduler, cfg, path, device)


def prepare_transformer(transformer: CogVideoXTransformer3DModel, cfg: ModelConfig) -> None:
    """LoRA adapter (base frozen) or full finetune; trainable weights in fp32; checkpointing; train mode."""
    if cfg.lora is not None:
        from peft import LoraConfig

        transformer.requires_grad_(False)
        transformer.add_adapter(
            LoraConfig(
                r=cfg.lora.rank,
                lora_alpha=cfg.lora.alpha,
                lora_dropout=cfg.lora.dropout,
                init_lora_weights=True,
                target_modules=list(cfg.lora.target_modules),
            )
        )
    else:
        transformer.requires_grad_(True)
    for p in transformer.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if cfg.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()


def _check_matches(cfg: ModelConfig, transformer, vae, scheduler) -> None:
    """The config names what the loaded weights must be: fail now, not as a shape error mid-step."""
    tc, latent = transformer.config, vae.config.latent_channels
    want_in = 2 * latent if cfg.variant == "i2v" else latent
    if tc.in_channels != want_in:
        raise ValueError(
            f"model.variant={cfg.variant} needs transformer in_channels {want_in} (VAE latent {latent}), "
            f"{cfg.pretrained} has {tc.in_channels}"
        )
    if (tc.patch_size_t is not None) != (cfg.version == "1.5"):
        raise ValueError(
            f"model.version={cfg.version} but {cfg.pretrained} has patch_size_t={tc.patch_size_t} "
            "(1.5 models patch time by 2, 1.0 models do not)"
        )
    if scheduler.config.prediction_type != "v_prediction":
        raise ValueError(f"{cfg.pretrained}: the objective is v-prediction, scheduler has {scheduler.config.prediction_type}")


def tiny_warning(path: str) -> str:
    return (f"!!! {path} holds TINY RANDOMLY INITIALISED models with UNTRAINED weights: fine for tests and "
            "smoke runs, useless for real training or samples !!!")


def _warn_tiny(path: str) -> None:
    """Once per process and folder: loaded again (a restart, an export), it is the same warning."""
    from curation.core.stage import warn_once

    warn_once(tiny_warning(path), log.warning)


# Tiny models. Sizes are the smallest that run every CogVideoX code path on CPU: rotary
# embeddings need head_dim % 16 == 0 (3D split into t/h/w quarters and eighths); the VAE keeps
# 4 blocks so it still compresses space 8x and time 4x (81 frames -> 21 latent frames).
TINY_TEXT_DIM = 32
TINY_WORDS = (
    "a", "an", "the", "cat", "dog", "bird", "car", "person", "runs", "walks", "flies", "drives",
    "on", "in", "over", "red", "blue", "green", "sky", "road", "grass", "water",
)  # fmt: skip


def build_tiny(out: str | Path, *, variant: str = "t2v", version: str = "1.5", seed: int = 0, sample_size: int = 32) -> Path:
    """Write tiny random-initialised CogVideoX models to ``out`` in the diffusers pipeline layout.

    ``sample_size`` (pixels, square) is the resolution the tiny transformer is configured for;
    the 1.0 I2V model (like CogVideoX-5b-I2V) only runs at that resolution.
    """
    from diffusers import CogVideoXImageToVideoPipeline, CogVideoXPipeline
    from transformers import T5Config, T5Tokenizer

    ModelConfig(variant=variant, version=version)  # validates both names
    out = Path(out)
    torch.manual_seed(seed)
    latent, frames = 4, 9
    is_15, is_i2v = version == "1.5", variant == "i2v"
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=2 * latent if is_i2v else latent,
        out_channels=latent,
        time_embed_dim=32,
        ofs_embed_dim=32 if (is_15 and is_i2v) else None,  # the ofs embedding is added to the time embedding
        text_embed_dim=TINY_TEXT_DIM,
        num_layers=2,
        sample_width=sample_size // 8,
        sample_height=sample_size // 8,
        sample_frames=frames,
        patch_size=2,
        patch_size_t=2 if is_15 else None,
        temporal_compression_ratio=4,
        max_text_seq_length=226,
        use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=is_i2v and not is_15,  # as CogVideoX-5b-I2V
        patch_bias=not is_15,
    )
    vae = AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 8, 8),
        latent_channels=latent,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
        sample_height=sample_size,
        sample_width=sample_size,
        scaling_factor=0.7 if is_15 else 1.15258426,
        invert_scale_latents=is_15 and is_i2v,  # as the CogVideoX1.5 I2V VAE config
    )
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0) for w in TINY_WORDS]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(vocab),
            d_model=TINY_TEXT_DIM,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",  # T5 v1.1, as CogVideoX's t5-v1_1-xxl
        )
    )
    scheduler = CogVideoXDDIMScheduler(  # the released CogVideoX scheduler settings
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=True,
        snr_shift_scale=1.0 if is_15 else 3.0,
    )
    pipe_cls = CogVideoXImageToVideoPipeline if is_i2v else CogVideoXPipeline
    pipe = pipe_cls(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler)
    pipe.save_pretrained(out)
    marker = {"warning": "tiny random-initialised models, untrained", "variant": variant, "version": version, "seed": seed}
    (out / TINY_MARKER).write_text(json.dumps(marker, indent=2))
    files = {str(f.relative_to(out)): f.stat().st_size for f in sorted(out.rglob("*")) if f.is_file()}
    (out / TINY_COMPLETE).write_text(json.dumps({"files": files}, indent=2))  # last: the directory is complete
    return out  # (the warning comes when the models are loaded: built in a temporary folder, this path may not last)
