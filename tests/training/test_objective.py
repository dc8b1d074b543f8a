"""The CogVideoX objective: latent layout, I2V condition, loss, and that training moves the loss.

!!! Every model here is a TINY RANDOMLY INITIALISED CogVideoX (training.models.build_tiny) with
UNTRAINED weights. The tests check shapes, exact layouts, the maths of the loss and that
gradients flow; nothing here says anything about sample quality. !!!
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach a model hub

import math

import pytest
import torch

from training.models import LoraOptions, ModelConfig, build_tiny, load_models
from training.objective import (
    ObjectiveConfig,
    concat_condition,
    condition_noise_sigma,
    encode_image,
    encode_prompts,
    encode_video,
    image_latents_layout,
    noisy_condition,
    num_latent_frames,
    pad_to_patch_t,
    prompt_embeddings,
    rotary_embeddings,
    training_step,
    v_prediction_loss,
    vae_moments,
)

FRAMES, SIZE = 9, 32  # 9 frames -> 3 latent frames; 32 px -> 4x4 latents -> 2x2 patches
LORA = LoraOptions(rank=4, alpha=4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny pipeline directories, one per (variant, version), built once for the module."""
    root = tmp_path_factory.mktemp("tiny")
    return {(v, ver): build_tiny(root / f"{v}-{ver}", variant=v, version=ver) for v in ("t2v", "i2v") for ver in ("1.0", "1.5")}


def _models(tiny, variant, version, **kw):
    torch.manual_seed(0)  # LoRA A matrices are drawn from the global RNG
    cfg = ModelConfig(pretrained=str(tiny[variant, version]), variant=variant, version=version, dtype="fp32", **kw)
    return load_models(cfg, "cpu")


def _batch(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(b, 3, FRAMES, SIZE, SIZE, generator=g) * 2 - 1
    return {"pixels": pixels, "prompts": ["a cat runs on grass", "a red car drives on the road"][:b]}


# --- latent layout ----------------------------------------------------------------------------


def test_81_frames_make_21_latent_frames_and_pad_to_22_by_duplicating_frame_0(tiny):
    m = _models(tiny, "i2v", "1.5")
    assert num_latent_frames(81) == 21 and num_latent_frames(49) == 13
    with pytest.raises(ValueError, match="num_frames"):
        num_latent_frames(80)
    pixels = torch.rand(1, 3, 81, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = encode_video(m.vae, pixels, torch.Generator().manual_seed(0))
    assert latents.shape == (1, 21, 4, 1, 1)  # the tiny VAE compresses time 4x, like the real one
    padded = pad_to_patch_t(latents, m.transformer.config.patch_size_t)
    assert padded.shape[1] == 22
    assert torch.equal(padded[:, 0], latents[:, 0]) and torch.equal(padded[:, 1:], latents)


def test_pad_only_when_needed():
    x = torch.randn(2, 4, 3, 2, 2)
    assert pad_to_patch_t(x, None) is x and pad_to_patch_t(x, 2) is x
    odd = pad_to_patch_t(x[:, :3], 4)  # general p_t: 3 -> 4 with one copy of frame 0
    assert odd.shape[1] == 4 and torch.equal(odd[:, 0], x[:, 0]) and torch.equal(odd[:, 1:], x[:, :3])


def test_image_latent_at_frame_0_zeros_after_and_channel_concat():
    img = torch.randn(2, 1, 4, 3, 5)
    lay = image_latents_layout(img, 22)
    assert lay.shape == (2, 22, 4, 3, 5)
    assert torch.equal(lay[:, :1], img) and not lay[:, 1:].any()
    noisy = torch.randn(2, 22, 4, 3, 5)
    both = concat_condition(noisy, lay)
    assert both.shape == (2, 22, 8, 3, 5)
    assert torch.equal(both[:, :, :4], noisy) and torch.equal(both[:, :, 4:], lay)
    with pytest.raises(ValueError):
        concat_condition(noisy[:, :21], lay)


def test_condition_noise_sigma_is_lognormal_minus3_half():
    sigma = condition_noise_sigma(20000, torch.Generator().manual_seed(0))
    log = sigma.log()
    # Fixed generator, so this cannot flake; the tolerances are > 5 standard errors anyway.
    assert abs(log.mean().item() + 3.0) < 0.02 and abs(log.std().item() - 0.5) < 0.02
    assert sigma.shape == (20000,) and (sigma > 0).all()


def test_noisy_condition_adds_sigma_scaled_gaussian():
    image = torch.rand(3, 3, 16, 16) * 2 - 1
    assert torch.equal(noisy_condition(image, torch.zeros(3), torch.Generator().manual_seed(1)), image)
    sigma = torch.tensor([0.01, 0.1, 1.0])
    resid = (noisy_condition(image, sigma, torch.Generator().manual_seed(1)) - image) / sigma.view(-1, 1, 1, 1)
    expect = torch.randn(image.shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(resid, expect, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("version", ["1.0", "1.5"])
def test_inference_condition_is_the_training_layout_without_noise(tiny, version):
    """What the I2V pipeline feeds the transformer equals our layout with sigma = 0 (no noise at
    inference), including 1.5's padding to an even latent count and its inverted latent scale."""
    from training.export import pipeline_from_models

    m = _models(tiny, "i2v", version)
    pipe = pipeline_from_models(m)
    seen = []
    hook = m.transformer.register_forward_pre_hook(lambda mod, args, kw: seen.append(kw["hidden_states"]), with_kwargs=True)
    image = (torch.rand(SIZE, SIZE, 3, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8).numpy()
    from PIL import Image

    pil = Image.fromarray(image)
    pipe(image=pil, prompt="a cat", num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=1,
         guidance_scale=1.0, generator=torch.Generator().manual_seed(5), output_type="latent")
    hook.remove()
    cond = seen[0][:, :, 4:]
    frames = 4 if version == "1.5" else 3  # 3 latent frames, padded to 4 for patch_size_t 2
    assert cond.shape == (1, frames, 4, SIZE // 8, SIZE // 8)
    pixels = pipe.video_processor.preprocess(pil, height=SIZE, width=SIZE)
    ours = image_latents_layout(encode_image(m.vae, pixels, torch.Generator().manual_seed(5)), frames)
    torch.testing.assert_close(cond, ours, rtol=0, atol=1e-6)
    noisy = noisy_condition(pixels, condition_noise_sigma(1, torch.Generator().manual_seed(0)), torch.Generator())
    assert not torch.allclose(encode_image(m.vae, noisy, torch.Generator().manual_seed(5)), ours[:, :1], atol=1e-4)


# --- rotary embeddings and the loss ------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "1.5"])
def test_rotary_embeddings_equal_the_pipelines(tiny, version):
    from training.export import pipeline_from_models

    m = _models(tiny, "t2v", version)
    pipe = pipeline_from_models(m)
    # 1.0 crops a wider grid into the sample grid; 1.5 slices its max grid (no larger than the sample).
    width = SIZE * 2 if version == "1.0" else SIZE
    want = pipe._prepare_rotary_positional_embeddings(SIZE, width, 4, torch.device("cpu"))
    got = rotary_embeddings(m.transformer.config, 4, SIZE // 8, width // 8)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_weighted_x0_loss_equals_v_mse_and_unweighted_differs(tiny):
    sched = _models(tiny, "t2v", "1.0").scheduler
    g = torch.Generator().manual_seed(0)
    x0, noise, pred = (torch.randn(4, 3, 4, 4, 4, generator=g) for _ in range(3))
    t = torch.tensor([0, 10, 500, 999])
    xt = sched.add_noise(x0, noise, t)
    v_target = sched.get_velocity(x0, noise, t)
    v_mse = ((pred - v_target) ** 2).reshape(4, -1).mean(1).mean()
    weighted = v_prediction_loss(sched, pred, xt, x0, t, "inv_one_minus_alpha")
    torch.testing.assert_close(weighted, v_mse, rtol=1e-4, atol=1e-5)
    # A perfect v prediction gives zero loss either way.
    assert v_prediction_loss(sched, v_target, xt, x0, t, "none").item() < 1e-8
    assert not math.isclose(v_prediction_loss(sched, pred, xt, x0, t, "none").item(), v_mse.item(), rel_tol=1e-2)


def test_text_dropout_replaces_prompts_with_empty(tiny):
    m = _models(tiny, "t2v", "1.0")
    batch = _batch()
    dropped = prompt_embeddings(m, batch, ObjectiveConfig(text_dropout=1.0), torch.Generator(), 2)
    torch.testing.assert_close(dropped, encode_prompts(m.tokenizer, m.text_encoder, ["", ""]))
    kept = prompt_embeddings(m, batch, ObjectiveConfig(text_dropout=0.0), torch.Generator(), 2)
    assert kept.shape == (2, 226, 32)
    torch.testing.assert_close(kept, encode_prompts(m.tokenizer, m.text_encoder, batch["prompts"]))
    cached = prompt_embeddings(m, {"prompt_embeds": kept}, ObjectiveConfig(text_dropout=1.0), torch.Generator(), 2)
    torch.testing.assert_close(cached, dropped, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant,version", [("t2v", "1.0"), ("i2v", "1.5")])
def test_cached_moments_and_embeddings_give_the_same_loss(tiny, variant, version):
    """The cache path (VAE moments + T5 embeddings, as training.data.loader's cache holds them) trains
    exactly like the pixels it was made from; pre-sampled ``latents`` too."""
    m = _models(tiny, variant, version)
    cfg = ObjectiveConfig(text_dropout=0.5)
    batch = _batch()
    direct = training_step(m, batch, cfg, torch.Generator().manual_seed(7))
    embeds = encode_prompts(m.tokenizer, m.text_encoder, batch["prompts"])
    cached = {"latent_moments": vae_moments(m.vae, batch["pixels"]), "prompt_embeds": embeds}
    if variant == "i2v":
        cached["pixels"] = batch["pixels"]  # the condition frame is still noised from pixels
    torch.testing.assert_close(training_step(m, cached, cfg, torch.Generator().manual_seed(7)), direct, rtol=1e-5, atol=1e-6)
    g = torch.Generator().manual_seed(7)
    sampled = dict(cached, latents=encode_video(m.vae, batch["pixels"], g))
    del sampled["latent_moments"]
    torch.testing.assert_close(training_step(m, sampled, cfg, g), direct, rtol=1e-5, atol=1e-6)


def test_precompute_writes_a_cache_the_data_reader_serves_and_training_consumes(tiny, tmp_path):
    from training.data.loader import BucketSpec, CacheSource, DataConfig
    from training.data.precompute import PrecomputeConfig, precompute_cache

    m = _models(tiny, "i2v", "1.0")
    pixels = _batch(b=2)["pixels"]
    samples = [
        {"pixels": pixels[i], "prompt": p, "clip_id": f"clip{i}", "bucket": "32x32_f9", "is_image": False}
        for i, p in enumerate(["a cat runs", "a red car"])
    ] + [{"pixels": pixels[0, :, :1], "prompt": "a dog", "clip_id": "img0", "bucket": "image_32x32", "is_image": True}]
    # The [precompute] switches reach diffusers' VAE (tiling is left out of the encode below: the
    # tiny VAE's 16-pixel tiles are too small for its convolutions).
    precompute_cache(m, [], PrecomputeConfig(out=str(tmp_path / "empty"), vae_tiling=True))
    assert m.vae.use_tiling
    m.vae.disable_tiling()
    pc = PrecomputeConfig(out=str(tmp_path / "cache"), part_size=1, dtype="float32", i2v_condition=True, vae_slicing=True)
    entries = precompute_cache(m, samples, pc)
    assert m.vae.use_slicing
    assert sorted(e["bucket"] for e in entries) == ["32x32_f9", "32x32_f9", "image_32x32"]
    data = DataConfig(cache_dir=pc.out, buckets=(BucketSpec(name="32x32_f9", batch_size=2), BucketSpec(name="image_32x32")),
                      num_workers=0, image_ratio=0.0)
    source = CacheSource(data, 0, 1)
    batch = source.load(next(source.batches("video", 0, 0, 1)))
    assert batch["latent_moments"].shape == (2, 8, 3, 4, 4) and batch["prompt_embeds"].shape == (2, 226, 32)
    assert batch["image_latent_moments"].shape == (2, 8, 1, 4, 4)
    order = [int(c.removeprefix("clip")) for c in batch["clip_ids"]]
    torch.testing.assert_close(batch["latent_moments"], vae_moments(m.vae, pixels[order]))
    # The cached condition is one noised draw per clip: not the clean frame's moments.
    clean = vae_moments(m.vae, pixels[order][:, :, :1])
    assert not torch.allclose(batch["image_latent_moments"], clean, atol=1e-4)
    loss = training_step(m, batch, ObjectiveConfig(), torch.Generator().manual_seed(0))
    assert math.isfinite(loss.item())


# --- training ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant,version,lora", [("t2v", "1.0", LORA), ("t2v", "1.5", LORA), ("i2v", "1.5", LORA), ("i2v", "1.0", None)]
)
def test_a_few_adamw_steps_overfit_one_batch(tiny, variant, version, lora):
    m = _models(tiny, variant, version, lora=lora)
    opt = torch.optim.AdamW([p for _, p in m.trainable_parameters()], lr=5e-2 if lora else 3e-3)
    cfg = ObjectiveConfig(text_dropout=0.0, condition_dropout=0.0)
    batch, losses = _batch(), []
    for _ in range(8):
        # Same seed every step: same t, noise and condition noise, so the target is fixed.
        loss = training_step(m, batch, cfg, torch.Generator().manual_seed(0))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.85 * losses[0], losses


def test_bf16_autocast_step_runs_on_cpu(tiny):
    torch.manual_seed(0)
    cfg = ModelConfig(pretrained=str(tiny["i2v", "1.5"]), variant="i2v", version="1.5", dtype="bf16", lora=LORA)
    m = load_models(cfg, "cpu")
    assert m.compute_dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = training_step(m, _batch(), ObjectiveConfig(), torch.Generator().manual_seed(0))
    loss.backward()
    assert math.isfinite(loss.item())
    grads = [p.grad for _, p in m.trainable_parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_a_wrapped_transformer_is_the_one_called(tiny):
    m = _models(tiny, "t2v", "1.5")

    class Wrapper(torch.nn.Module):  # stands in for DistributedDataParallel, which has no .config
        def __init__(self, module):
            super().__init__()
            self.module, self.calls = module, 0

        def forward(self, **kw):
            self.calls += 1
            return self.module(**kw)

    wrapped = Wrapper(m.transformer)
    gen = torch.Generator().manual_seed(0)
    loss = training_step(m, _batch(), ObjectiveConfig(), gen, transformer=wrapped)
    assert wrapped.calls == 1
    torch.testing.assert_close(loss, training_step(m, _batch(), ObjectiveConfig(), torch.Generator().manual_seed(0)))


def test_objective_config_validation_names_the_field():
    with pytest.raises(ValueError, match="objective.text_dropout"):
        ObjectiveConfig(text_dropout=1.5)
    with pytest.raises(ValueError, match="objective.loss_weighting"):
        ObjectiveConfig(loss_weighting="snr")
