"""The shipped trainer configs load, and bad ones fail naming the field."""

from pathlib import Path

import pytest

from curation.core.config_loader import build_config
from training.config import TrainConfig, load_train_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "training" / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_train_config(path)
    assert cfg.data.buckets and cfg.run.max_steps >= 1


def test_unknown_and_invalid_keys_name_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"optim\.lrr"):
        load_train_config(CONFIGS[0], overrides={"optim": {"lrr": 1}})
    with pytest.raises(ValueError, match=r"distributed\.strategy"):
        load_train_config(CONFIGS[0], overrides={"distributed": {"strategy": "zero3"}})
    with pytest.raises(ValueError, match="fsdp2 is for full finetuning"):
        load_train_config(CONFIGS[0], overrides={"distributed": {"strategy": "fsdp2"}})


# --- version defaults, contradictions, I2V guards, model fit ------------------------------------

def _load(tmp_path, **sections):
    raw = {"data": {"shards": "out"}, **sections}
    return load_train_config(None, overrides=raw, base=tmp_path)


def test_defaults_follow_the_model_version(tmp_path):
    c15 = _load(tmp_path, model={"version": "1.5", "pretrained": "THUDM/CogVideoX1.5-5B"})
    assert (c15.data.fps, c15.data.frame_multiple) == (16.0, 16)
    assert all((b.frames - 1) % 16 == 0 for b in c15.data.buckets if b.media == "video")
    v = c15.validation
    assert (v.num_frames, v.height, v.width, v.scheduler, v.use_dynamic_cfg, v.fps) == (81, 768, 1360, "dpm", True, 16)
    c10 = _load(tmp_path, model={"version": "1.0"})
    assert (c10.data.fps, c10.data.frame_multiple) == (8.0, 8)
    v = c10.validation
    assert (v.num_frames, v.height, v.width, v.scheduler, v.use_dynamic_cfg, v.fps) == (49, 480, 720, "ddim", False, 8)
    assert {(b.width, b.height) for b in c10.data.buckets} == {(720, 480)}
    # What the config says wins over the version's default.
    assert _load(tmp_path, model={"version": "1.5", "pretrained": "p"}, data={"shards": "out", "fps": 8.0}).data.fps == 8.0
    with pytest.raises(ValueError, match=r"model\.version: THUDM/CogVideoX-5b is 1\.0, got"):
        _load(tmp_path, model={"version": "1.5"})  # the default pretrained
    assert _load(tmp_path, validation={"scheduler": "dpm"}).validation.scheduler == "dpm"
    assert c10.objective.condition_dropout == 0.05 and c10.objective.max_text_len == 226


def test_contradictions_with_the_version_fail(tmp_path):
    with pytest.raises(ValueError, match=r"data\.frame_multiple: CogVideoX 1\.5 trains on 16N\+1"):
        _load(tmp_path, model={"version": "1.5", "pretrained": "p"}, data={"shards": "out", "frame_multiple": 8,
                                                         "buckets": [{"name": "720x480_f49"}]})
    with pytest.raises(ValueError, match=r"validation\.num_frames: CogVideoX 1\.5 samples 16N\+1"):
        _load(tmp_path, model={"version": "1.5", "pretrained": "p"}, validation={"num_frames": 57})
    with pytest.raises(ValueError, match=r"data\.frame_multiple: CogVideoX 1\.0 trains on 8N\+1"):
        _load(tmp_path, data={"shards": "out", "frame_multiple": 4, "buckets": [{"name": "720x480_f45"}]})


def test_i2v_refuses_image_buckets_and_image_ratio(tmp_path):
    i2v = {"variant": "i2v", "version": "1.5", "pretrained": "THUDM/CogVideoX1.5-5B-I2V"}
    with pytest.raises(ValueError, match=r"data\.buckets: image buckets \['image_1360x768'\] with model\.variant = i2v"):
        _load(tmp_path, model=i2v)  # the 1.5 default buckets include an image bucket
    with pytest.raises(ValueError, match=r"image_ratio"):
        _load(tmp_path, model=i2v, data={"shards": "out", "image_ratio": 0.2, "buckets": [{"name": "1360x768_f81"}]})
    ok = _load(tmp_path, model=i2v, data={"shards": "out", "buckets": [{"name": "1360x768_f81"}]})
    assert ok.model.variant == "i2v"
    with pytest.raises(ValueError, match=r"validation\.images: I2V validation needs"):
        _load(tmp_path, model=i2v, data={"shards": "out", "buckets": [{"name": "1360x768_f81"}]}, validation={"every": 10})


def test_released_models_need_their_native_shapes_and_text_length(tmp_path):
    five_i2v = {"pretrained": "THUDM/CogVideoX-5b-I2V", "variant": "i2v", "version": "1.0"}
    native = {"shards": "out", "buckets": [{"name": "720x480_f49"}]}
    assert _load(tmp_path, model=five_i2v, data=native).model.pretrained == "THUDM/CogVideoX-5b-I2V"
    with pytest.raises(ValueError, match=r"learned positional embeddings take only 49 frames at 720x480, got 17"):
        _load(tmp_path, model=five_i2v, data={"shards": "out", "buckets": [{"name": "720x480_f17"}]})
    with pytest.raises(ValueError, match=r"validation: the model's learned positional embeddings"):
        _load(tmp_path, model=five_i2v, data=native, validation={"every": 5, "images": ["a.png"], "height": 256, "width": 256})
    with pytest.raises(ValueError, match=r"CogVideoX-5b \(1\.0\) supports 720x480 only"):
        _load(tmp_path, model={"pretrained": "zai-org/CogVideoX-5b"}, data={"shards": "out", "buckets": [{"name": "1024x576_f49"}]})
    assert _load(tmp_path, model={"pretrained": "THUDM/CogVideoX-2b"},
                 data={"shards": "out", "buckets": [{"name": "1024x576_f49"}]}).data.buckets[0].width == 1024
    with pytest.raises(ValueError, match=r"objective\.max_text_len: the model was trained on 226"):
        _load(tmp_path, model={"pretrained": "THUDM/CogVideoX-2b"}, objective={"max_text_len": 128})
    with pytest.raises(ValueError, match=r"exceeds the model's RoPE grid"):
        _load(tmp_path, model={"pretrained": "THUDM/CogVideoX1.5-5B", "version": "1.5"},
              data={"shards": "out", "buckets": [{"name": "1536x768_f81"}]})
    with pytest.raises(ValueError, match=r"model\.variant: THUDM/CogVideoX-5b-I2V is i2v, got"):
        _load(tmp_path, model={**five_i2v, "variant": "t2v"}, data=native)


def test_a_local_model_is_checked_against_its_own_transformer_config(tmp_path):
    """The tiny I2V 1.0 model has learned positional embeddings like CogVideoX-5b-I2V (32x32, 9 frames)."""
    from training.models import build_tiny

    build_tiny(tmp_path / "models" / "i2v", variant="i2v", version="1.0")
    model = {"pretrained": "models/i2v", "variant": "i2v", "version": "1.0"}
    with pytest.raises(ValueError, match=r"learned positional embeddings take only 9 frames at 32x32"):
        _load(tmp_path, model=model, data={"shards": "out", "buckets": [{"width": 64, "height": 32, "frames": 9}]})
    cfg = _load(tmp_path, model=model, data={"shards": "out", "buckets": [{"width": 32, "height": 32, "frames": 9}]})
    assert cfg.model.pretrained == str(tmp_path / "models" / "i2v")


def test_paths_resolve_relative_to_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "models" / "mine").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    cfg = load_train_config(None, overrides={
        "data": {"shards": "demo/out", "cache_dir": "cache"}, "run": {"out": "runs/x"},
        "model": {"pretrained": "models/mine", "tiny_dir": "~/tiny"}, "validation": {"images": [], "prompts": ["a"]}})
    assert cfg.data.shards == str(tmp_path / "demo" / "out") and cfg.data.cache_dir == str(tmp_path / "cache")
    assert cfg.run.out == str(tmp_path / "runs" / "x") and cfg.model.pretrained == str(tmp_path / "models" / "mine")
    assert cfg.model.tiny_dir == str(Path("~/tiny").expanduser())
    hub = load_train_config(None, overrides={"data": {"shards": "o"}, "model": {"pretrained": "THUDM/CogVideoX-2b"}})
    assert hub.model.pretrained == "THUDM/CogVideoX-2b"  # no such directory here: a hub id


@pytest.mark.parametrize("name", ["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts"])
def test_lr_schedules_come_from_diffusers(tmp_path, name):
    import torch

    from training.loop import make_lr_scheduler, make_optimizer

    cfg = _load(tmp_path, optim={"lr": 1.0, "lr_schedule": name, "warmup_steps": 0 if name == "constant" else 2,
                                 "num_cycles": 2}, run={"max_steps": 10})
    opt = make_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    sched = make_lr_scheduler(opt, cfg)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    if name != "constant":
        assert lrs[0] == 0.0 and lrs[1] == 0.5 and lrs[2] == 1.0  # linear warmup over 2 steps
    expect_late = {"constant": 1.0, "constant_with_warmup": 1.0, "linear": 0.125, "cosine": None, "cosine_with_restarts": None}
    if expect_late[name] is not None:
        assert lrs[9] == pytest.approx(expect_late[name])
    if name == "cosine":
        assert lrs[9] < 0.05 and all(b <= a for a, b in zip(lrs[2:], lrs[3:]))
    if name == "cosine_with_restarts":  # two cycles over the 8 decay steps: back to the top at step 6
        assert lrs[5] < 0.2 and lrs[6] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"optim\.lr_schedule"):
        _load(tmp_path, optim={"lr_schedule": "step"})


def test_multi_frame_rate_lists_load_from_a_config(tmp_path):
    # README: `fps = [8, 16]` (per bucket or for all) draws one rate per sample.
    cfg = _load(tmp_path, data={"shards": "out", "fps": [16, 8], "buckets": [{"name": "720x480_f49", "fps": [8, 12]}]})
    assert cfg.data.fps == (8.0, 16.0) and cfg.data.buckets[0].fps == (8.0, 12.0)
    assert _load(tmp_path, data={"shards": "out", "fps": None}).data.fps is None
    with pytest.raises(ValueError) as e:
        _load(tmp_path, data={"shards": "out", "fps": "fast"})
    assert str(e.value) == "data.fps must be a number or a list, got 'fast'"


def test_lora_false_choices_and_missing_sections(tmp_path):
    assert _load(tmp_path, model={"lora": False}).model.lora is None  # TOML has no null
    assert _load(tmp_path, model={"lora": {"rank": 8}}).model.lora.rank == 8
    with pytest.raises(ValueError) as e:
        _load(tmp_path, model={"lora": {"rnk": 8}})
    assert str(e.value) == "unknown config key: model.lora.rnk (did you mean model.lora.rank?)"
    with pytest.raises(ValueError) as e:
        _load(tmp_path, model={"dtype": "fp8"})
    assert str(e.value) == "model.dtype must be 'bf16', 'fp16' or 'fp32', got 'fp8'"
    with pytest.raises(ValueError) as e:
        _load(tmp_path, optim={"betas": [0.9, 0.95, 0.99]})
    assert str(e.value) == "optim.betas must hold 2 values, got [0.9, 0.95, 0.99]"
    with pytest.raises(ValueError) as e:
        build_config(TrainConfig, {})
    assert str(e.value) == "missing config key: data"
