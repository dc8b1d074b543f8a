"""The loop's step (gradient accumulation) and the tiny-model cache.

!!! The models are TINY RANDOMLY INITIALISED CogVideoX (training.models.build_tiny) with
UNTRAINED weights; only the arithmetic and plumbing are tested. !!!
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from training.config import load_train_config
from training.loop import build_state, train_step
from training.models import TINY_COMPLETE, ModelConfig, build_tiny, load_models, resolve_pretrained
from training.objective import rotary_embeddings, v_prediction_loss


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny") / "t2v-1.0", variant="t2v", version="1.0")


def _state(tiny, lora):
    cfg = load_train_config(None, overrides={
        "data": {"shards": "unused", "buckets": [{"width": 32, "height": 32, "frames": 9}]},
        "model": {"pretrained": str(tiny), "dtype": "fp32", "lora": {"rank": 4, "alpha": 4.0} if lora else False,
                  "gradient_checkpointing": False},
        "optim": {"lr": 1e-2, "warmup_steps": 0, "max_grad_norm": 1e-3},  # clipping active: it sees the summed gradient
        "run": {"mixed_precision": "no", "ema_decay": 0.9}})
    torch.manual_seed(0)
    return build_state(cfg, load_models(cfg.model))


def _samples(n, seed=0):
    """Latents, embeddings, timesteps and noise fixed per sample, so a sample's loss does not
    depend on which batch it is in (the objective draws them per call)."""
    g = torch.Generator().manual_seed(seed)
    return {"latents": torch.randn(n, 3, 4, 4, 4, generator=g), "prompt_embeds": torch.randn(n, 226, 32, generator=g),
            "noise": torch.randn(n, 3, 4, 4, 4, generator=g), "t": torch.randint(0, 1000, (n,), generator=g),
            "prompts": ["a cat"] * n}


def _split(batch, sizes):
    out, i = [], 0
    for n in sizes:
        out.append({k: v[i:i + n] for k, v in batch.items()})
        i += n
    return out


def _loss_fn(state):
    sched, tr = state.models.scheduler, state.models.transformer

    def loss(b):
        noisy = sched.add_noise(b["latents"], b["noise"], b["t"])
        rotary = rotary_embeddings(tr.config, 3, 4, 4)
        pred = state.module(hidden_states=noisy, encoder_hidden_states=b["prompt_embeds"], timestep=b["t"],
                            image_rotary_emb=rotary, return_dict=False)[0]
        return v_prediction_loss(sched, pred, noisy, b["latents"], b["t"], "inv_one_minus_alpha")

    return loss


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_accumulating_micro_batches_equals_one_big_batch(tiny, lora):
    batch = _samples(5)
    big, acc = _state(tiny, lora), _state(tiny, lora)
    for _ in range(2):  # two optimizer steps: AdamW moments and the EMA carry the equality on
        r_big = train_step(big, [batch], torch.Generator(), loss_fn=_loss_fn(big))
        r_acc = train_step(acc, _split(batch, [2, 1, 2]), torch.Generator(), loss_fn=_loss_fn(acc))
        assert r_acc.samples == r_big.samples == 5
        assert r_acc.loss == pytest.approx(r_big.loss, rel=1e-5)
        assert r_acc.grad_norm == pytest.approx(r_big.grad_norm, rel=1e-4) and r_big.grad_norm > 1e-3
    # AdamW divides by sqrt(v): summation-order rounding in a near-zero gradient element can move
    # it by a little of one step (lr 1e-2), so the tolerance is 1e-3 of a step.
    for (_, a), (_, b) in zip(big.named, acc.named, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for n in big.ema.shadow:
        torch.testing.assert_close(big.ema.shadow[n], acc.ema.shadow[n], rtol=1e-5, atol=1e-5)
    assert big.lr_scheduler.last_epoch == acc.lr_scheduler.last_epoch == 2  # one scheduler step per optimizer step


def test_validation_samples_with_the_versions_scheduler_and_cfg(tiny):
    """1.5's official settings: CogVideoXDPMScheduler and dynamic CFG (1.0: DDIM, static)."""
    from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

    from training.export import generate, pipeline_from_models

    m = load_models(ModelConfig(pretrained=str(tiny), variant="t2v", version="1.0", dtype="fp32", lora=None))
    assert type(pipeline_from_models(m).scheduler) is CogVideoXDDIMScheduler
    pipe = pipeline_from_models(m, scheduler="dpm")
    assert type(pipe.scheduler) is CogVideoXDPMScheduler and pipe.scheduler is not m.scheduler
    frames = generate(pipe, "a cat", num_frames=9, height=32, width=32, num_inference_steps=2, use_dynamic_cfg=True)
    assert frames.shape == (9, 32, 32, 3)


def test_an_incomplete_tiny_cache_is_rebuilt(tmp_path):
    cfg = ModelConfig(pretrained="tiny", tiny_dir=str(tmp_path), variant="t2v", version="1.0", dtype="fp32")
    path = resolve_pretrained(cfg)
    assert (tmp_path / "t2v-1.0" / TINY_COMPLETE).is_file()
    weights = next((tmp_path / "t2v-1.0" / "text_encoder").glob("*.safetensors"))
    weights.unlink()  # as found: model_index.json present, text_encoder/ empty
    assert resolve_pretrained(cfg) == path and weights.is_file()
    (tmp_path / "t2v-1.0" / TINY_COMPLETE).unlink()  # a cache from before the completion record
    resolve_pretrained(cfg)
    assert (tmp_path / "t2v-1.0" / TINY_COMPLETE).is_file()
    load_models(cfg)  # loads


def test_train_refuses_in_the_driver_when_shards_or_model_are_missing(tmp_path, monkeypatch, capsys):
    """The README's command from a checkout without `make demo` run: one line, exit 2, before
    Prefect or Ray start."""
    import json
    import shutil
    from pathlib import Path

    import ray

    from flows.cli import main

    # Earlier tests of the suite may share a Ray session in this process: what must hold is that
    # this command starts none.
    ray_was_up = ray.is_initialized()

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started before the driver's preflight refused")

    monkeypatch.setattr(ray, "init", no_ray)
    shutil.copytree(Path(__file__).resolve().parents[2] / "training" / "configs", tmp_path / "training" / "configs")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "training/configs/train-tiny.toml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"videomill: cannot train: data.shards: no index.json at {tmp_path / 'demo' / 'out'} (write the shards first)"
    (tmp_path / "demo" / "out" / "shards").mkdir(parents=True)
    (tmp_path / "demo" / "out" / "shards" / "index.json").write_text(json.dumps({"shards": [{"path": "shards/a.tar", "samples": 3}]}))
    cfg = tmp_path / "training" / "configs" / "train-tiny.toml"
    cfg.write_text(cfg.read_text().replace('pretrained = "tiny"', 'pretrained = "./models/none"'))
    assert main(["train", "training/configs/train-tiny.toml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"videomill: cannot train: model.pretrained: {tmp_path / 'models' / 'none'} is not a diffusers "
                   "pipeline directory (no model_index.json)")
    assert ray.is_initialized() == ray_was_up
