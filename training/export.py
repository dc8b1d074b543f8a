"""Sample videos from a trained checkpoint (or from the models being trained) with diffusers' pipelines.

The pipelines are the inference contract the objective mirrors: the I2V pipeline encodes the
condition image *without* the training-time noise, places it at latent frame 0 and, for 1.5
models, pads the latent frames to the temporal patch size and drops the padding after.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    CogVideoXImageToVideoPipeline,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
)
from PIL import Image
from safetensors.torch import load_file

from training.models import DTYPES, Models

PIPELINES = {"t2v": CogVideoXPipeline, "i2v": CogVideoXImageToVideoPipeline}


def load_pipeline(
    base: str | Path,
    checkpoint: str | Path | None = None,
    *,
    variant: str | None = None,
    dtype: str = "bf16",
    device: str | torch.device = "cpu",
    use_ema: bool = False,
):
    """The base model's pipeline with a checkpoint's LoRA or full transformer (and optionally its EMA).

    ``variant`` defaults to the checkpoint's; it is required without a checkpoint.
    """
    state = json.loads((Path(checkpoint) / "state.json").read_text()) if checkpoint else None
    variant = variant or (state and state["variant"])
    if variant not in PIPELINES:
        raise ValueError(f"variant must be t2v or i2v (or come from a checkpoint), got {variant!r}")
    cls, torch_dtype = PIPELINES[variant], DTYPES[dtype]
    if state is not None and state["kind"] == "full":
        transformer = CogVideoXTransformer3DModel.from_pretrained(checkpoint, subfolder="transformer", dtype=torch_dtype)
        pipe = cls.from_pretrained(str(base), transformer=transformer, dtype=torch_dtype)
    else:
        pipe = cls.from_pretrained(str(base), dtype=torch_dtype)
        if state is not None:
            # Adapter name "default", as in training, so EMA shadows (keyed by parameter name) fit.
            pipe.load_lora_weights(str(Path(checkpoint) / "lora"), adapter_name="default")
    if use_ema:
        if state is None or state["ema_updates"] is None:
            raise ValueError(f"use_ema: {checkpoint} has no EMA weights")
        _apply_ema(pipe.transformer, load_file(Path(checkpoint) / "ema.safetensors"))
    return pipe.to(device)


def pipeline_from_models(models: Models, scheduler: str = "ddim"):
    """A pipeline over the in-memory models being trained (LoRA active): validation without a save.

    ``scheduler``: "ddim" (CogVideoXDDIMScheduler) or "dpm" (CogVideoXDPMScheduler, the 1.5
    models' released sampler), built from the training scheduler's config: a copy, because
    sampling calls set_timesteps, which training should not see.
    """
    sampler = {"ddim": CogVideoXDDIMScheduler, "dpm": CogVideoXDPMScheduler}[scheduler]
    return PIPELINES[models.config.variant](
        tokenizer=models.tokenizer,
        text_encoder=models.text_encoder,
        vae=models.vae,
        transformer=models.transformer,
        scheduler=sampler.from_config(models.scheduler.config),
    )


@torch.no_grad()
def generate(
    pipe,
    prompt: str,
    *,
    image: Image.Image | np.ndarray | None = None,
    num_frames: int = 49,
    height: int = 480,
    width: int = 720,
    num_inference_steps: int = 50,
    guidance_scale: float = 6.0,
    use_dynamic_cfg: bool = False,
    seed: int = 0,
) -> np.ndarray:
    """One video as uint8 (F, H, W, 3). ``image`` (PIL or uint8 HWC) is required for I2V pipelines."""
    is_i2v = isinstance(pipe, CogVideoXImageToVideoPipeline)
    if is_i2v != (image is not None):
        raise ValueError("image is required for an I2V pipeline and not accepted by a T2V one")
    kwargs = {}
    if is_i2v:
        kwargs["image"] = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    transformer = pipe.transformer
    was_training = transformer.training
    transformer.eval()
    # A fully finetuned transformer keeps fp32 weights next to a bf16 VAE/T5: autocast bridges them.
    mixed = transformer.time_embedding.linear_1.weight.dtype != pipe.text_encoder.dtype
    autocast = torch.autocast(pipe.device.type, dtype=pipe.text_encoder.dtype, enabled=mixed)
    try:
        with autocast:
            out = pipe(
                prompt=prompt,
                num_frames=num_frames,
                height=height,
                width=width,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                use_dynamic_cfg=use_dynamic_cfg,
                generator=torch.Generator(device="cpu").manual_seed(seed),
                output_type="np",
                **kwargs,
            )
    finally:
        transformer.train(was_training)
    return (np.clip(out.frames[0], 0.0, 1.0) * 255.0).round().astype(np.uint8)


@torch.no_grad()
def _apply_ema(transformer, shadow: dict[str, torch.Tensor]) -> None:
    params = dict(transformer.named_parameters())
    missing = shadow.keys() - params.keys()
    if missing:
        raise ValueError(f"EMA weights do not fit the transformer: {sorted(missing)[:3]}")
    for name, tensor in shadow.items():
        params[name].copy_(tensor.to(params[name]))
