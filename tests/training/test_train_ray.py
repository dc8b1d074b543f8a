"""The trainer end to end under Ray Train: 2 CPU workers (gloo), shards made by the curation
flow, mixed image and video buckets, and a worker crash that Ray Train restarts from the last
checkpoint. THE MODELS ARE TINY, RANDOM-INITIALISED AND UNTRAINED: only the mechanics are
tested, never what a trained model would produce."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import av
import pytest

from curation.corpora import synthetic
from curation.core.config_loader import build_config
from training.config import TrainConfig, ValidationConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(tmp_path_factory, prefect_server):
    """`videomill run`'s flow over 16:9 and 4:3 videos and two images: real shards."""
    from flows.curate import curate

    root = tmp_path_factory.mktemp("train_in")
    synthetic.write_video(root / "wide.mp4", synthetic.moving(75, (480, 270), (3.0, 0.0), seed=1), 25)
    synthetic.write_video(root / "wide2.mp4", synthetic.moving(75, (480, 270), (0.0, 2.0), seed=2), 25)
    synthetic.write_video(root / "square.mp4", synthetic.moving(75, (360, 270), (2.0, 1.0), seed=3), 25)
    import cv2

    for i in range(2):
        cv2.imwrite(str(root / f"photo{i}.jpg"), synthetic.texture(288, 512, 10 + i))
    out = tmp_path_factory.mktemp("train_out")
    summary = curate(inputs=[str(root)], out=str(out), profile="tiny", executor="local")
    assert summary["sharded"] == 5, summary
    return out


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from training.models import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny") / "t2v-1.0", variant="t2v", version="1.0")


def config(shards: Path, tiny_dir: Path, out: Path) -> TrainConfig:
    return build_config(TrainConfig, {
        "data": {
            "shards": str(shards),
            # 2:1 takes the 16:9 clips, 3:2 the 4:3 one; images get their own bucket.
            "buckets": [
                {"width": 64, "height": 32, "frames": 9, "media": "video", "batch_size": 1},
                {"width": 48, "height": 32, "frames": 9, "media": "video", "batch_size": 1},
                {"width": 48, "height": 32, "media": "image", "batch_size": 2},
            ],
            "fps": 8.0, "frame_multiple": 8, "image_ratio": 0.4, "num_workers": 0, "allow_empty_captions": True,
            "epoch_length": 20, "shuffle_buffer": 4, "seed": 3,
        },
        "model": {"pretrained": str(tiny_dir), "variant": "t2v", "version": "1.0", "dtype": "fp32",
                  "lora": {"rank": 4, "alpha": 4.0}, "gradient_checkpointing": False},
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "run": {"out": str(out), "max_steps": 4, "checkpoint_every": 2, "log_every": 1, "mixed_precision": "no", "seed": 7},
        "distributed": {"num_workers": 2, "max_failures": 1},
    }, "")


def steps(out: Path) -> dict[int, dict]:
    """The last record of each step (a crashed attempt's records are superseded)."""
    recs = {}
    for line in (out / "steps.jsonl").read_text().splitlines():
        r = json.loads(line)
        recs[r["step"]] = r
    return recs


def test_two_workers_crash_and_resume_exactly(shards, tiny_dir, tmp_path, ray_local):
    from flows.train import fit
    from training.checkpoint import latest_checkpoint

    straight = tmp_path / "straight"
    fit(config(shards, tiny_dir, straight))
    crashed = tmp_path / "crashed"
    fit(config(shards, tiny_dir, crashed), crash_once_at=3)  # dies after step 3; checkpoint at 2

    a, b = steps(straight), steps(crashed)
    assert sorted(a) == sorted(b) == list(range(1, 5))
    assert all(math.isfinite(r["loss"]) for r in a.values())
    buckets = {r["bucket"] for r in a.values()}
    assert any(x.startswith("image") for x in buckets) and len(buckets) >= 2, buckets
    for s in range(1, 5):  # same data, same order, same loss: the resume was exact
        assert b[s]["clip_ids"] == a[s]["clip_ids"] and b[s]["batch"] == a[s]["batch"], s
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], rel=1e-5, abs=1e-7), s
    # The crashed run really restarted: step 3 was trained twice, and it ends at the same checkpoint.
    log = (crashed / "steps.jsonl").read_text().splitlines()
    assert sum(json.loads(x)["step"] == 3 for x in log) == 2
    assert latest_checkpoint(crashed / "checkpoints").name == latest_checkpoint(straight / "checkpoints").name == "checkpoint-00000004"
    state = json.loads((crashed / "checkpoints" / "checkpoint-00000004" / "state.json").read_text())
    assert state["step"] == 4 and set(state["data_position"]) == {"0", "1"}
    assert all(p["batches"] == 4 for p in state["data_position"].values())


def test_trained_lora_loads_into_the_pipeline(shards, tiny_dir, tmp_path):
    """A checkpoint the loop wrote loads into diffusers' CogVideoXPipeline and samples."""
    from training.export import generate, load_pipeline
    from training.loop import train

    cfg = config(shards, tiny_dir, tmp_path / "one")
    cfg = replace(cfg, run=replace(cfg.run, max_steps=2, checkpoint_every=2),
                  validation=ValidationConfig(prompts=("a ball",), every=2, num_frames=9, height=32, width=32, steps=2))
    summary = train(cfg)
    assert summary["step"] == 2
    with av.open(str(tmp_path / "one" / "validation" / "step00000002_00.mp4")) as c:  # the validation video
        assert len(list(c.decode(video=0))) == 9
    from training.checkpoint import latest_checkpoint

    pipe = load_pipeline(str(tiny_dir), latest_checkpoint(tmp_path / "one" / "checkpoints"), dtype="fp32")
    frames = generate(pipe, "a ball", num_frames=9, height=32, width=32, num_inference_steps=2)
    assert frames.shape == (9, 32, 32, 3)


def test_readme_quick_start_from_the_repo_root(shards, ray_local, tmp_path, monkeypatch, capsys):
    """README: `make demo`, then `videomill train training/configs/train-tiny.toml` from the
    repository root. This module's shards (the curation flow's output, as `make demo` writes)
    stand at demo/out; the command runs as written, config paths relative, from a directory that
    is not the Ray workers' working directory. It shows progress and ends with a summary."""
    import re
    import shutil

    from flows.cli import main

    repo = Path(__file__).resolve().parents[2]
    readme = (repo / "README.md").read_text()
    assert "make demo" in readme and "videomill train training/configs/train-tiny.toml" in readme
    root = tmp_path / "checkout"
    shutil.copytree(repo / "training" / "configs", root / "training" / "configs")
    (root / "demo").mkdir()
    (root / "demo" / "out").symlink_to(shards)
    monkeypatch.chdir(root)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the tiny-model cache: built fresh, not the user's
    capsys.readouterr()
    assert main(["train", "training/configs/train-tiny.toml"]) == 0
    out, err = capsys.readouterr()
    assert re.search(r"^step 10/10  loss [\d.]+  [\d.]+ samples/s  ETA 00:00:00$", err, re.M), err[-3000:]
    # log_every = 1: every step from step 1; what the workers do before it; the warning once.
    steps = [int(m) for m in re.findall(r"^step (\d+)/10 ", err, re.M)]
    assert steps == list(range(1, 11)), err[-3000:]
    assert re.search(r"^step 1/10  loss [\d.]+  \? samples/s  ETA \?$", err, re.M), err[-3000:]
    assert "workers: 2 worker(s) up on cpu; loading the models" in err and "workers: models ready in" in err
    assert err.count("UNTRAINED") == 1, err[-3000:]
    run = root / "demo" / "train"
    assert out.splitlines() == [
        out.splitlines()[0],
        out.splitlines()[1],
        f"checkpoints: {run / 'checkpoints'} (latest: {run / 'checkpoints' / 'checkpoint-00000010'})",
        f"TensorBoard: tensorboard --logdir {run / 'tensorboard'}",
        f"per-step log: {run / 'steps.jsonl'}",
    ]
    assert re.fullmatch(r"trained 10/10 steps; last loss [\d.]+", out.splitlines()[0])
    assert re.fullmatch(r"samples skipped: (none|([a-z_]+ \d+(, )?)+)", out.splitlines()[1])
    assert any((run / "tensorboard").iterdir())
    # README: the tiny base folder for load_pipeline, as the quick start leaves it.
    from training.export import load_pipeline

    pipe = load_pipeline(tmp_path / "home" / ".cache" / "videomill" / "tiny" / "t2v-1.0",
                         run / "checkpoints" / "checkpoint-00000010", dtype="fp32")
    assert type(pipe).__name__ == "CogVideoXPipeline"
