"""Loading, LoRA/full finetune setup, checkpoints that resume exactly, EMA, and export to pipelines.

!!! Every model here is a TINY RANDOMLY INITIALISED CogVideoX (training.models.build_tiny) with
UNTRAINED weights, loaded through the same from_pretrained code as a real checkpoint. The
generated "videos" are noise; the tests check plumbing, shapes and exactness only. !!!
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach a model hub

import ast
import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from training.ema import EMA, EMAConfig
from training.export import generate, load_pipeline
from training.models import (
    TINY_MARKER,
    LoraOptions,
    ModelConfig,
    build_tiny,
    load_models,
)
from training.objective import ObjectiveConfig, training_step

FRAMES, SIZE = 9, 32
LORA = LoraOptions(rank=4, alpha=8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {v: build_tiny(root / v, variant=v, version="1.5") for v in ("t2v", "i2v")}


def _cfg(tiny, variant="t2v", **kw):
    kw.setdefault("lora", LORA)
    return ModelConfig(pretrained=str(tiny[variant]), variant=variant, version="1.5", dtype="fp32", **kw)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"pixels": torch.rand(2, 3, FRAMES, SIZE, SIZE, generator=g) * 2 - 1, "prompts": ["a cat runs", "a red car"]}


# --- loading -----------------------------------------------------------------------------------


def test_build_tiny_writes_the_pipeline_layout_and_loading_warns_once(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="training.models"):
        out = build_tiny(tmp_path / "t", variant="t2v", version="1.0")
        load_models(ModelConfig(pretrained=str(out), version="1.0", dtype="fp32", lora=LORA))
    for sub in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (out / sub).is_dir(), sub
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "CogVideoXPipeline"
    assert (out / TINY_MARKER).exists()
    assert sum("UNTRAINED" in r.getMessage() for r in caplog.records) == 1  # on load, once per process and folder
    with caplog.at_level(logging.WARNING, logger="training.models"):
        load_models(ModelConfig(pretrained=str(out), version="1.0", dtype="fp32", lora=LORA))
    assert sum("UNTRAINED" in r.getMessage() for r in caplog.records) == 1


def test_lora_makes_only_adapter_weights_trainable_and_freezes_vae_t5(tiny):
    m = load_models(_cfg(tiny))
    trainable = m.trainable_parameters()
    assert trainable and all("lora_" in n for n, _ in trainable)
    assert all(p.dtype == torch.float32 for _, p in trainable)
    frozen = [n for n, p in m.transformer.named_parameters() if not p.requires_grad]
    assert frozen and not any("lora_" in n for n in frozen)
    assert not any(p.requires_grad for p in m.vae.parameters())
    assert not any(p.requires_grad for p in m.text_encoder.parameters())
    assert m.transformer.gradient_checkpointing and m.transformer.training and not m.vae.training
    assert m.scheduler.config.prediction_type == "v_prediction" and m.scheduler.config.rescale_betas_zero_snr


def test_full_finetune_trains_every_transformer_weight(tiny):
    m = load_models(_cfg(tiny, lora=None, gradient_checkpointing=False, snr_shift_scale=2.0))
    assert all(p.requires_grad for p in m.transformer.parameters())
    assert len(m.trainable_parameters()) == len(list(m.transformer.parameters()))
    assert not m.transformer.gradient_checkpointing
    assert m.scheduler.config.snr_shift_scale == 2.0
    assert not any(p.requires_grad for p in m.vae.parameters())


def test_variant_or_version_that_does_not_fit_the_weights_is_refused(tiny):
    with pytest.raises(ValueError, match="model.variant"):
        load_models(ModelConfig(pretrained=str(tiny["i2v"]), variant="t2v", version="1.5", dtype="fp32"))
    with pytest.raises(ValueError, match="model.version"):
        load_models(ModelConfig(pretrained=str(tiny["t2v"]), variant="t2v", version="1.0", dtype="fp32"))
    with pytest.raises(ValueError, match="model.lora.rank"):
        LoraOptions(rank=0)


def test_lora_from_a_config_file_table():
    cfg = ModelConfig(lora={"rank": 8, "target_modules": ["to_q", "to_v"]})
    assert cfg.lora == LoraOptions(rank=8, target_modules=("to_q", "to_v"))
    assert ModelConfig(lora=False).lora is None and ModelConfig(lora=None).lora is None  # TOML has no null
    with pytest.raises(ValueError, match="model.lora.rnk"):
        ModelConfig(lora={"rnk": 8})
    with pytest.raises(ValueError, match="model.dtype"):
        ModelConfig(dtype="int8")


def test_tiny_pretrained_builds_once_into_tiny_dir(tmp_path):
    m = load_models(ModelConfig(pretrained="tiny", tiny_dir=str(tmp_path), variant="i2v", version="1.0", dtype="fp32"))
    assert (tmp_path / "i2v-1.0" / TINY_MARKER).exists() and m.path == str(tmp_path / "i2v-1.0")
    assert m.transformer.config.in_channels == 2 * m.vae.config.latent_channels


def test_tokenizer_works_in_the_pipelines_prompt_encoding(tiny):
    from training.export import pipeline_from_models

    pipe = pipeline_from_models(load_models(_cfg(tiny)))
    cond, uncond = pipe.encode_prompt(["a cat runs on the road"], do_classifier_free_guidance=True)
    assert cond.shape == uncond.shape == (1, 226, 32)
    assert not torch.equal(cond, uncond)


# --- checkpoints ---------------------------------------------------------------------------------


class Run:
    """A miniature training loop: the state a real loop keeps between steps."""

    def __init__(self, tiny, *, lora, seed):
        torch.manual_seed(seed)
        self.models = load_models(_cfg(tiny, lora=lora))
        params = [p for _, p in self.models.trainable_parameters()]
        self.opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
        self.lr = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / 3))
        self.ema = EMA(self.models.trainable_parameters(), EMAConfig(decay=0.9))
        self.gen = torch.Generator().manual_seed(seed)
        self.batches = [_batch(0), _batch(1)]

    def step(self) -> float:
        # The data order draws from Python's and NumPy's RNGs, as a shuffling loader would.
        batch = self.batches[random.randrange(2)]
        batch = dict(batch, pixels=batch["pixels"] + float(np.random.rand()) * 0.01)
        loss = training_step(self.models, batch, ObjectiveConfig(text_dropout=0.5), self.gen)
        loss.backward()
        self.opt.step()
        self.lr.step()
        self.opt.zero_grad()
        self.ema.update(self.models.trainable_parameters())
        return loss.item()

    def save(self, root, step):
        return save_checkpoint(root, step=step, models=self.models, optimizer=self.opt, lr_scheduler=self.lr,
                               ema=self.ema, data_position={"epoch": 0, "index": step}, generators={"train": self.gen})

    def load(self, path):
        return load_checkpoint(path, models=self.models, optimizer=self.opt, lr_scheduler=self.lr, ema=self.ema,
                               generators={"train": self.gen})


def _seed_all(seed):
    random.seed(seed)
    np.random.seed(seed)


@pytest.mark.parametrize("lora", [LORA, None], ids=["lora", "full"])
def test_k_steps_save_load_then_rest_equals_an_uninterrupted_run(tiny, tmp_path, lora):
    _seed_all(0)
    straight = Run(tiny, lora=lora, seed=0)
    want = [straight.step() for _ in range(4)]

    _seed_all(0)
    first = Run(tiny, lora=lora, seed=0)
    got = [first.step() for _ in range(2)]
    path = first.save(tmp_path, 2)
    del first
    _seed_all(99)  # a fresh process: other seeds, other LoRA init, nothing carried over
    resumed = Run(tiny, lora=lora, seed=99)
    state = resumed.load(path)
    assert state.step == 2 and state.data_position == {"epoch": 0, "index": 2}
    got += [resumed.step() for _ in range(2)]

    assert got == want  # bit-exact on CPU
    for (n, a), (_, b) in zip(straight.models.trainable_parameters(), resumed.models.trainable_parameters(), strict=True):
        assert torch.equal(a, b), n
    assert all(torch.equal(straight.ema.shadow[n], resumed.ema.shadow[n]) for n in straight.ema.shadow)
    assert straight.lr.get_last_lr() == resumed.lr.get_last_lr()


def test_checkpoint_layout_rng_and_latest(tiny, tmp_path):
    _seed_all(0)
    run = Run(tiny, lora=LORA, seed=0)
    run.step()
    path = run.save(tmp_path, 1)
    expect = {"lora", "ema.safetensors", "optimizer.pt", "lr_scheduler.pt", "rng.pt", "state.json"}
    assert {p.name for p in path.iterdir()} == expect
    assert (path / "lora" / "pytorch_lora_weights.safetensors").exists()
    after = (random.random(), float(np.random.rand()), torch.rand(1), torch.rand(1, generator=run.gen))
    _seed_all(5)
    torch.manual_seed(5)
    run.gen.manual_seed(5)
    run.load(path)
    again = (random.random(), float(np.random.rand()), torch.rand(1), torch.rand(1, generator=run.gen))
    assert after[:2] == again[:2] and torch.equal(after[2], again[2]) and torch.equal(after[3], again[3])

    run.save(tmp_path, 10)
    (tmp_path / ".tmp-checkpoint-00000020-1").mkdir()  # a save that crashed: never "latest"
    (tmp_path / "checkpoint-00000030").mkdir()  # no state.json: incomplete
    assert latest_checkpoint(tmp_path).name == "checkpoint-00000010"
    assert latest_checkpoint(tmp_path / "nothing") is None
    run.save(tmp_path, 10)  # re-saving a step replaces it atomically
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp-checkpoint-00000010", ".old-"))]


def test_checkpoint_files_are_only_read_with_weights_only():
    src = Path(__file__).resolve().parents[2] / "training" / "checkpoint.py"
    loads = [n for n in ast.walk(ast.parse(src.read_text())) if isinstance(n, ast.Call) and ast.unparse(n.func) == "torch.load"]
    assert loads and all(any(k.arg == "weights_only" and ast.unparse(k.value) == "True" for k in n.keywords) for n in loads)


def test_ema_is_an_exponential_moving_average_with_warmup():
    w = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([("w", w)], EMAConfig(decay=0.9, warmup=False))
    with torch.no_grad():
        w.fill_(1.0)
    ema.update([("w", w)])
    ema.update([("w", w)])
    torch.testing.assert_close(ema.shadow["w"], torch.full((3,), 1 - 0.9**2))
    warm = EMA([("w", w)], EMAConfig(decay=0.999))
    assert [round(warm.current_decay(), 6)] == [0.1]  # (1 + 0) / (10 + 0): early shadows follow the weights
    with ema.applied([("w", w)]):
        torch.testing.assert_close(w.detach(), ema.shadow["w"])
    assert torch.equal(w.detach(), torch.ones(3))


# --- export --------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["t2v", "i2v"])
def test_lora_checkpoint_loads_into_the_pipeline_and_generates(tiny, tmp_path, variant):
    torch.manual_seed(0)
    m = load_models(_cfg(tiny, variant))
    opt = torch.optim.AdamW([p for _, p in m.trainable_parameters()], lr=1e-2)
    ema = EMA(m.trainable_parameters(), EMAConfig(decay=0.8, warmup=False))
    for _ in range(2):
        training_step(m, _batch(), ObjectiveConfig(), torch.Generator().manual_seed(0)).backward()
        opt.step()
        opt.zero_grad()
        ema.update(m.trainable_parameters())
    path = save_checkpoint(tmp_path, step=2, models=m, optimizer=opt, ema=ema)

    pipe = load_pipeline(tiny[variant], path, dtype="fp32")
    loaded = dict(pipe.transformer.named_parameters())
    trained = dict(m.trainable_parameters())
    assert any(n.endswith("lora_B.default.weight") and loaded[n].abs().sum() > 0 for n in trained)
    assert all(torch.equal(loaded[n], p) for n, p in trained.items())  # LoRA B starts at 0: these were trained
    image = np.full((SIZE, SIZE, 3), 128, np.uint8) if variant == "i2v" else None
    frames = generate(pipe, "a cat", image=image, num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=2)
    assert frames.shape == (FRAMES, SIZE, SIZE, 3) and frames.dtype == np.uint8

    ema_pipe = load_pipeline(tiny[variant], path, dtype="fp32", use_ema=True)
    ema_params = dict(ema_pipe.transformer.named_parameters())
    assert all(torch.equal(ema_params[n], ema.shadow[n]) for n in trained)


def test_full_checkpoint_loads_into_the_pipeline(tiny, tmp_path):
    torch.manual_seed(0)
    m = load_models(_cfg(tiny, lora=None, gradient_checkpointing=False))
    opt = torch.optim.AdamW([p for _, p in m.trainable_parameters()], lr=1e-3)
    training_step(m, _batch(), ObjectiveConfig(), torch.Generator().manual_seed(0)).backward()
    opt.step()
    path = save_checkpoint(tmp_path, step=1, models=m, optimizer=opt)
    pipe = load_pipeline(tiny["t2v"], path, dtype="fp32")
    loaded = dict(pipe.transformer.named_parameters())
    assert all(torch.equal(loaded[n], p) for n, p in m.transformer.named_parameters())
    frames = generate(pipe, "a dog", num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=2)
    assert frames.shape == (FRAMES, SIZE, SIZE, 3)
