"""Captioning inside `videomill run`: the caption step between extraction and sharding, on the
Ray actor pool, KEY.txt in the shards, the trainer training on exactly those captions, resume,
and a caption-config change that re-captions without re-scoring. THE TINY MODELS (the VLM and the
CogVideoX ones) ARE RANDOM-INITIALISED AND UNTRAINED: only the machinery is checked."""

from __future__ import annotations

import dataclasses
import json
import tarfile
from pathlib import Path

import cv2
import pyarrow.dataset as pads
import pytest

from curation.corpora import synthetic

pytestmark = pytest.mark.slow


def clips(out: Path) -> list[dict]:
    return pads.dataset(out / "manifest" / "clips").to_table().sort_by("clip_id").to_pylist()


def shard_texts(out: Path) -> dict[str, str | None]:
    """{key: KEY.txt or None} over every shard of OUT."""
    index = json.loads((out / "shards" / "index.json").read_text())
    got: dict[str, str | None] = {}
    for e in index["shards"]:
        with tarfile.open(out / e["path"]) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                got.setdefault(key, None)
                if ext == "txt":
                    got[key] = tar.extractfile(m).read().decode()
    return got


def check_captions(out: Path, max_tokens: int = 226) -> list[dict]:
    rows = clips(out)
    accepted = [c for c in rows if c["status"] == "accepted"]
    assert accepted
    for c in rows:
        if c["status"] != "accepted":
            assert c["caption"] is None and c["caption_error"] is None
            continue
        assert (c["caption"] is None) != (c["caption_error"] is None), c
        if c["caption"] is not None:
            assert 0 < c["caption_tokens"] <= max_tokens
    texts = shard_texts(out)
    assert {c["clip_id"] for c in accepted if c["shard"]} == set(texts)
    for c in accepted:
        if c["shard"]:
            assert texts[c["clip_id"]] == c["caption"]  # KEY.txt is the manifest's caption (None: no KEY.txt)
    return rows


@pytest.fixture(scope="module")
def curated(tmp_path_factory, ray_local, prefect_server):
    """`videomill run --profile tiny` on Ray (caption actors) over 16:9 and 4:3 videos and an image."""
    from flows.curate import curate

    root = tmp_path_factory.mktemp("cap_in")
    synthetic.write_video(root / "wide.mp4", synthetic.moving(75, (480, 270), (3.0, 0.0), seed=1), 25)
    synthetic.write_video(root / "square.mp4", synthetic.moving(75, (360, 270), (2.0, 1.0), seed=3), 25)
    cv2.imwrite(str(root / "photo.jpg"), synthetic.texture(288, 512, 11))
    out = tmp_path_factory.mktemp("cap_out")
    summary = curate(inputs=[str(root)], out=str(out), profile="tiny")
    return root, out, summary


def test_every_accepted_clip_has_a_caption_or_an_error_and_shards_carry_it(curated):
    _, out, summary = curated
    rows = check_captions(out)
    accepted = [c for c in rows if c["status"] == "accepted"]
    assert summary["sharded"] == len(accepted) == 3
    assert sum(c["caption"] is not None for c in accepted) >= 2
    report = json.loads((out / "report.json").read_text())
    assert report["captions"]["count"] == sum(c["caption"] is not None for c in accepted)
    assert report["captions"]["budget"] == 226
    assert report["captions"]["length_tokens"]["max"] <= 226
    samples = report["captions"]["samples"]
    assert samples and all(s["caption"] and s["tokens"] <= 226 for s in samples)
    from markupsafe import escape

    html = (out / "report.html").read_text()
    assert "Sample captions" in html and str(escape(samples[0]["caption"])) in html
    assert html.count("data:image/jpeg;base64,") >= len(samples)  # thumbnails beside the captions


def test_the_tiny_trainer_trains_on_the_shard_captions(curated, tmp_path, monkeypatch):
    """training.loop.train in this process; every prompt it encodes is the clip's shard caption."""
    import training.objective as objective
    from curation.core.config_loader import build_config
    from training.config import TrainConfig
    from training.loop import train
    from training.models import build_tiny

    _, out, _ = curated
    encoded: list[list[str]] = []
    real = objective.encode_prompts

    def spy(tokenizer, text_encoder, prompts, *a, **k):
        encoded.append(list(prompts))
        return real(tokenizer, text_encoder, prompts, *a, **k)

    monkeypatch.setattr(objective, "encode_prompts", spy)
    tiny = build_tiny(tmp_path / "t2v-1.0", variant="t2v", version="1.0")
    cfg = build_config(TrainConfig, {
        "data": {"shards": str(out), "fps": 8.0, "frame_multiple": 8, "image_ratio": 0.3, "num_workers": 0,
                 "epoch_length": 10, "shuffle_buffer": 2, "seed": 1,
                 "buckets": [{"width": 64, "height": 32, "frames": 9, "media": "video", "batch_size": 1},
                             {"width": 48, "height": 32, "frames": 9, "media": "video", "batch_size": 1},
                             {"width": 48, "height": 32, "media": "image", "batch_size": 1}]},
        "model": {"pretrained": str(tiny), "variant": "t2v", "version": "1.0", "dtype": "fp32",
                  "lora": {"rank": 4, "alpha": 4.0}, "gradient_checkpointing": False},
        "objective": {"text_dropout": 0.0},
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "run": {"out": str(tmp_path / "run"), "max_steps": 4, "checkpoint_every": 100, "log_every": 1,
                "mixed_precision": "no", "seed": 7},
    }, "")
    train(cfg)
    steps = [json.loads(line) for line in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    captions = {c["clip_id"]: c["caption"] or "" for c in clips(out)}
    assert len(steps) == len(encoded) == 4
    for step, prompts in zip(steps, encoded):
        assert prompts == [captions[k] for k in step["clip_ids"]]
    assert any(p for ps in encoded for p in ps)


def test_rerun_captions_nothing_new(curated):
    from flows.curate import curate

    root, out, _ = curated
    before = clips(out)
    parts = {p: p.stat().st_mtime_ns for p in (out / "captions").rglob("*.parquet")}
    curate(inputs=[str(root)], out=str(out), profile="tiny")
    assert {p: p.stat().st_mtime_ns for p in (out / "captions").rglob("*.parquet")} == parts
    assert clips(out) == before


def test_frames_summary_over_a_server_recaptions_without_rescoring(curated, openai_server, tiny_vlm, tmp_path):
    from flows.curate import curate

    root, out, _ = curated
    scores = {p: p.stat().st_mtime_ns for p in (out / "manifest" / "scores").glob("*.parquet")}
    keys_before = {p.name for p in (out / "captions").iterdir()}
    cfg = tmp_path / "served.toml"
    cfg.write_text(f'[caption]\nmode = "frames+summary"\nbackend = "openai"\n'
                   f'[caption.openai]\nbase_url = "{openai_server}"\nserved_model = "{tiny_vlm}"\nmax_in_flight = 8\n')
    curate(inputs=[str(root)], out=str(out), config=str(cfg), profile="tiny")
    assert {p: p.stat().st_mtime_ns for p in (out / "manifest" / "scores").glob("*.parquet")} == scores
    rows = check_captions(out)
    new_key = {c["caption_key"] for c in rows if c["status"] == "accepted"}
    assert len(new_key) == 1 and not new_key & keys_before
    assert all(json.loads(c["caption_sampling"])["mode"] == "frames+summary" for c in rows if c["status"] == "accepted")


def test_a_missing_caption_model_fails_at_start_in_one_line(tmp_path, prefect_server):
    from flows.curate import ConfigError, curate

    (tmp_path / "in").mkdir()
    synthetic.write_video(tmp_path / "in" / "a.mp4", synthetic.moving(8, (64, 48)), 8)  # inputs pass their check
    cfg = tmp_path / "c.toml"
    cfg.write_text('[caption]\nmodel = "no-such-org/no-such-vlm"\n')
    with pytest.raises(ConfigError, match=r"^1 model\(s\) missing, offline .*: caption.model no-such-org/no-such-vlm "
                                          r"\(`hf download no-such-org/no-such-vlm`\)") as e:
        curate(inputs=[str(tmp_path / "in")], out=str(tmp_path / "o"), config=str(cfg), profile="tiny")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "o").exists()
