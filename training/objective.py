"""The CogVideoX training objective: v-prediction on VAE latents, T2V and I2V.

Follows diffusers' CogVideoX LoRA example and CogVideo's own finetune code, with the inference
pipelines (``CogVideoXPipeline``, ``CogVideoXImageToVideoPipeline``) as the contract: whatever
the model sees here it must also see at sampling time.

Shapes: pixels (B, C, F, H, W) in [-1, 1]; latents (B, F, C, h, w), scaled by the VAE's
scaling_factor, which is the layout the transformer takes.

I2V condition (CogVideoX): the clip's first frame gets Gaussian noise with
sigma = exp(N(-3, 0.5)) per sample (none at inference), is VAE-encoded, placed at latent
frame 0 with zeros after, and concatenated to the noisy latents on the channel axis. With
temporal patch size 2 (1.5 models) 81 frames -> 21 latent frames -> the first latent frame is
prepended -> 22; the image latent sits at frame 0 of those 22, as in the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox import (
    get_resize_crop_region_for_grid,
)

from training.models import Models

MAX_TEXT_LEN = 226  # CogVideoX's T5 sequence length; the transformer was trained on exactly this


@dataclass(frozen=True, kw_only=True)
class ObjectiveConfig:
    # "inv_one_minus_alpha": the diffusers/CogVideo example: the v output is turned into an x0
    # estimate (scheduler.get_velocity(v, x_t, t)) and the squared error is weighted by
    # 1 / (1 - alphas_cumprod[t]), which is exactly the plain MSE on v. "none": unweighted x0
    # MSE, which down-weights low-noise timesteps by (1 - alphas_cumprod[t]).
    loss_weighting: Literal["inv_one_minus_alpha", "none"] = "inv_one_minus_alpha"
    text_dropout: float = 0.1  # prompt -> "" so the model learns the unconditional branch of CFG
    # I2V: zero the image latents (SAT's noised_image_dropout); 0.05 as CogVideo's I2V finetune
    # configs and finetrainers, so the model keeps a weaker-conditioned branch.
    condition_dropout: float = 0.05
    condition_noise_mean: float = -3.0  # log sigma of the noise on the I2V condition image
    condition_noise_std: float = 0.5
    ofs: float = 2.0  # the ofs value CogVideoX1.5 I2V pipelines pass; used when the model has ofs
    max_text_len: int = MAX_TEXT_LEN

    def __post_init__(self) -> None:
        if self.loss_weighting not in ("inv_one_minus_alpha", "none"):
            raise ValueError(f"objective.loss_weighting must be inv_one_minus_alpha or none, got {self.loss_weighting!r}")
        for name in ("text_dropout", "condition_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"objective.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.condition_noise_std < 0:
            raise ValueError(f"objective.condition_noise_std must be >= 0, got {self.condition_noise_std}")
        if self.max_text_len < 1:
            raise ValueError(f"objective.max_text_len must be >= 1, got {self.max_text_len}")


# --- small exact pieces ---------------------------------------------------------------------


def num_latent_frames(num_frames: int, temporal_ratio: int = 4) -> int:
    """Frames the causal VAE makes of a clip: the first frame alone, then one per ``temporal_ratio``."""
    if num_frames < 1 or (num_frames - 1) % temporal_ratio:
        raise ValueError(f"num_frames must be {temporal_ratio}k + 1 for the CogVideoX VAE, got {num_frames}")
    return (num_frames - 1) // temporal_ratio + 1


def pad_to_patch_t(latents: torch.Tensor, p_t: int | None) -> torch.Tensor:
    """Prepend copies of latent frame 0 until F (dim 1 of B, F, C, h, w) divides by ``p_t``."""
    if not p_t:
        return latents
    n = (-latents.shape[1]) % p_t
    if n == 0:
        return latents
    return torch.cat([latents[:, :1].expand(-1, n, -1, -1, -1), latents], dim=1)


def condition_noise_sigma(
    batch: int, generator: torch.Generator | None = None, mean: float = -3.0, std: float = 0.5
) -> torch.Tensor:
    """Per-sample sigma = exp(N(mean, std)) for the I2V condition image (float32, generator's device)."""
    device = generator.device if generator is not None else None
    return torch.exp(torch.randn(batch, generator=generator, device=device) * std + mean)


def noisy_condition(image: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """image (B, C, H, W) + sigma[b] * N(0, 1); sigma 0 returns the image unchanged."""
    device = generator.device if generator is not None else image.device
    noise = torch.randn(image.shape, generator=generator, device=device, dtype=torch.float32).to(image.device)
    return image + (noise * sigma.to(image.device).view(-1, 1, 1, 1)).to(image.dtype)


def image_latents_layout(image_latent: torch.Tensor, num_latent_frames: int) -> torch.Tensor:
    """(B, 1, C, h, w) image latent -> (B, F, C, h, w): the latent at frame 0, zeros after."""
    if image_latent.shape[1] != 1:
        raise ValueError(f"image_latent must have one frame, got {image_latent.shape[1]}")
    pad = image_latent.new_zeros((image_latent.shape[0], num_latent_frames - 1, *image_latent.shape[2:]))
    return torch.cat([image_latent, pad], dim=1)


def concat_condition(noisy_latents: torch.Tensor, image_latents: torch.Tensor) -> torch.Tensor:
    """Channel concat on dim 2 of (B, F, C, h, w): the I2V transformer takes 2 x latent channels."""
    if noisy_latents.shape[:2] != image_latents.shape[:2] or noisy_latents.shape[3:] != image_latents.shape[3:]:
        raise ValueError(f"latents {tuple(noisy_latents.shape)} and image latents {tuple(image_latents.shape)} differ")
    return torch.cat([noisy_latents, image_latents], dim=2)


def image_latent_scale(vae_config) -> float:
    """The factor the pipeline applies to image latents; 1.5 I2V VAEs invert it (sic, see the pipeline)."""
    s = vae_config.scaling_factor
    return 1.0 / s if getattr(vae_config, "invert_scale_latents", False) else s


def dropout_mask(batch: int, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Bool (B,) on CPU, True where the sample is dropped. Always draws, so p does not shift the RNG stream."""
    device = generator.device if generator is not None else None
    return (torch.rand(batch, generator=generator, device=device) < p).cpu()


def rotary_embeddings(transformer_config, num_frames: int, height: int, width: int, device=None):
    """3D RoPE for a latent grid (frames after padding, latent h, w); the pipeline's helper without pixels."""
    p, p_t = transformer_config.patch_size, transformer_config.patch_size_t
    grid_h, grid_w = height // p, width // p
    base_w, base_h = transformer_config.sample_width // p, transformer_config.sample_height // p
    head_dim = transformer_config.attention_head_dim
    if p_t is None:  # 1.0
        crops = get_resize_crop_region_for_grid((grid_h, grid_w), base_w, base_h)
        return get_3d_rotary_pos_embed(
            embed_dim=head_dim, crops_coords=crops, grid_size=(grid_h, grid_w), temporal_size=num_frames, device=device
        )
    return get_3d_rotary_pos_embed(  # 1.5
        embed_dim=head_dim,
        crops_coords=None,
        grid_size=(grid_h, grid_w),
        temporal_size=(num_frames + p_t - 1) // p_t,
        grid_type="slice",
        max_size=(base_h, base_w),
        device=device,
    )


def v_prediction_loss(scheduler, model_output, noisy_latents, latents, timesteps, weighting: str) -> torch.Tensor:
    """The example's loss: x0 = get_velocity(v_pred, x_t, t); mean over samples of weighted x0 MSE."""
    model_output, noisy_latents, latents = model_output.float(), noisy_latents.float(), latents.float()
    x0_pred = scheduler.get_velocity(model_output, noisy_latents, timesteps)
    err = (x0_pred - latents) ** 2
    if weighting == "inv_one_minus_alpha":
        alphas = scheduler.alphas_cumprod.to(latents.device)[timesteps.to(latents.device)]
        weights = (1.0 / (1.0 - alphas.double())).float()  # up to ~1e3 at t=0: compute in float64
        err = err * weights.view(-1, *[1] * (err.dim() - 1))
    return err.reshape(err.shape[0], -1).mean(dim=1).mean()


# --- encoders ---------------------------------------------------------------------------------


def model_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """float pixels in [-1, 1]; uint8 batches (data.pixel_dtype = "uint8") as training.data.loader.to_model_pixels maps them."""
    return pixels.float() / 127.5 - 1.0 if pixels.dtype == torch.uint8 else pixels


@torch.no_grad()
def vae_moments(vae, pixels: torch.Tensor) -> torch.Tensor:
    """pixels (B, C, F, H, W) -> posterior parameters (B, 2C, f, h, w): mean and log-variance, unscaled
    (what the latent cache stores as latent_moments)."""
    return vae.encode(model_pixels(pixels).to(vae.device, vae.dtype)).latent_dist.parameters


def sample_latents(moments: torch.Tensor, scale: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A posterior sample from (B, 2C, f, h, w) moments, times ``scale``, as (B, f, C, h, w) float32.

    Pixels and the cache both come through here, so a cached batch trains exactly like its pixels.
    """
    dist = DiagonalGaussianDistribution(moments.float())
    return (dist.sample(generator=generator) * scale).permute(0, 2, 1, 3, 4)


def encode_video(vae, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """pixels (B, C, F, H, W) in [-1, 1] -> latents (B, F, C, h, w): a posterior sample times scaling_factor."""
    return sample_latents(vae_moments(vae, pixels), vae.config.scaling_factor, generator)


def encode_image(vae, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """image (B, C, H, W) -> (B, 1, C, h, w), scaled as the I2V pipeline scales its image latents."""
    return sample_latents(vae_moments(vae, image.unsqueeze(2)), image_latent_scale(vae.config), generator)


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str], max_len: int = MAX_TEXT_LEN) -> torch.Tensor:
    """T5 embeddings (B, max_len, D), tokenised exactly as CogVideoXPipeline._get_t5_prompt_embeds."""
    ids = tokenizer(
        list(prompts), padding="max_length", max_length=max_len, truncation=True, add_special_tokens=True, return_tensors="pt"
    ).input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


def video_latents(models: Models, batch: dict, generator) -> torch.Tensor:
    """(B, F, C, h, w) scaled latents from ``latents`` (already sampled), ``latent_moments`` (the
    cache) or ``pixels``, in that order of preference."""
    if "latents" in batch:
        return batch["latents"].to(models.device, torch.float32)
    if "latent_moments" in batch:
        moments = batch["latent_moments"].to(models.device)
        return sample_latents(moments, models.vae.config.scaling_factor, generator)
    return encode_video(models.vae, batch["pixels"], generator)


def prompt_embeddings(models: Models, batch: dict, cfg: ObjectiveConfig, generator, batch_size: int) -> torch.Tensor:
    """Text embeddings with CFG dropout: a dropped prompt becomes "" (cached rows become T5(""))."""
    drop = dropout_mask(batch_size, cfg.text_dropout, generator)
    cached = batch.get("prompt_embeds")
    if cached is None:
        prompts = ["" if d else p for p, d in zip(batch["prompts"], drop.tolist(), strict=True)]
        return encode_prompts(models.tokenizer, models.text_encoder, prompts, cfg.max_text_len)
    embeds = cached.to(models.device)
    if drop.any():
        if models.empty_prompt_embeds is None:
            models.empty_prompt_embeds = encode_prompts(models.tokenizer, models.text_encoder, [""], cfg.max_text_len)
        embeds = torch.where(drop.to(models.device).view(-1, 1, 1), models.empty_prompt_embeds.to(embeds.dtype), embeds)
    return embeds


def condition_latents(models: Models, batch: dict, cfg: ObjectiveConfig, generator, num_frames: int) -> torch.Tensor:
    """I2V: noisy first frame -> VAE -> (B, num_frames, C, h, w) with the latent at frame 0, zeros after.

    From pixels (``image`` or frame 0 of ``pixels``) the noise is drawn here, every step. A cache
    batch without pixels uses ``image_latent_moments``: whatever noise precompute baked in, fixed
    per clip (training/data/precompute.py draws one sigma per clip).
    """
    if "image" in batch or "pixels" in batch:
        image = batch["image"] if "image" in batch else batch["pixels"][:, :, 0]
        image = model_pixels(image).to(models.device, torch.float32)
        b = image.shape[0]
        sigma = condition_noise_sigma(b, generator, cfg.condition_noise_mean, cfg.condition_noise_std)
        latent = encode_image(models.vae, noisy_condition(image, sigma, generator), generator)
    elif "image_latent_moments" in batch:
        moments = batch["image_latent_moments"].to(models.device)
        b = moments.shape[0]
        latent = sample_latents(moments, image_latent_scale(models.vae.config), generator)
    else:
        raise ValueError("I2V batch needs pixels, image or image_latent_moments for the condition frame")
    latents = image_latents_layout(latent, num_frames)
    drop = dropout_mask(b, cfg.condition_dropout, generator)
    return latents * (~drop).to(latents).view(-1, 1, 1, 1, 1)


def training_step(
    models: Models, batch: dict, cfg: ObjectiveConfig, generator: torch.Generator, *, transformer=None
) -> torch.Tensor:
    """One loss on a batch. Keys: ``pixels`` (B, C, F, H, W) in [-1, 1] (or uint8) and ``prompts``
    (list[str]); a cache batch instead has ``latent_moments`` (B, 2C, f, h, w; or ``latents``,
    B, f, C, h, w, sampled and scaled) and ``prompt_embeds`` (B, L, D), which skip the VAE / T5.
    I2V: the condition is ``image`` (B, C, H, W), else frame 0 of ``pixels``, else
    ``image_latent_moments`` (B, 2C, 1, h, w) from the cache.

    All randomness (latent sample, timesteps, noise, dropouts, condition noise) comes from
    ``generator``, so a run resumes exactly when its state is restored. ``transformer`` is the
    module to call when it is wrapped (DDP); its config is read from ``models.transformer``.
    """
    tr, sched, device = models.transformer, models.scheduler, models.device
    gdev = generator.device
    latents = pad_to_patch_t(video_latents(models, batch, generator), tr.config.patch_size_t)
    b, f, _, h, w = latents.shape
    embeds = prompt_embeddings(models, batch, cfg, generator, b)

    t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=generator, device=gdev).to(device)
    noise = torch.randn(latents.shape, generator=generator, device=gdev).to(device)
    noisy = sched.add_noise(latents, noise, t)
    model_input = noisy
    if models.config.variant == "i2v":
        model_input = concat_condition(noisy, condition_latents(models, batch, cfg, generator, f))

    rotary = rotary_embeddings(tr.config, f, h, w, device) if tr.config.use_rotary_positional_embeddings else None
    ofs = latents.new_full((1,), cfg.ofs) if tr.config.ofs_embed_dim else None
    dtype = models.compute_dtype
    pred = (transformer or tr)(
        hidden_states=model_input.to(dtype),
        encoder_hidden_states=embeds.to(dtype),
        timestep=t,
        ofs=ofs,
        image_rotary_emb=rotary,
        return_dict=False,
    )[0]
    return v_prediction_loss(sched, pred, noisy, latents, t, cfg.loss_weighting)
