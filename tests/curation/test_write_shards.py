"""Shards written and read back: contents, index, buckets, size targets, determinism, crashes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from curation.core.buckets import DEFAULT_RESOLUTIONS, Resolution, assign_bucket, choose_frames, choose_resolution, parse_bucket
from curation.core.config import load_config
from curation.core.manifest import Layout
from curation.core.schema import (
    NEG_TAGS,
    clip_schema,
    neg_column,
    scored_clip_schema,
    to_table,
)
from curation.corpora.synthetic import moving, texture, write_video
from curation.outputs.write_shards import ShardConfig, check_key, write_shards

REPO = Path(__file__).resolve().parents[2]
FPS = 25.0
# (clip id, (width, height), frames): two 16:9 and two 4:3 videos, long enough for f49.
VIDEOS = [("aa16x9_0_52", (128, 72), 52), ("ab16x9_0_60", (128, 72), 60), ("ba4x3_0_50", (96, 72), 50), ("bb4x3_0_56", (96, 72), 56)]
IMAGE = ("ca_image_0_1", (128, 72))


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """Clip files as extraction leaves them, made once: {clip_id: file}."""
    d = tmp_path_factory.mktemp("media")
    out = {}
    for i, (cid, size, n) in enumerate(VIDEOS):
        out[cid] = write_video(d / f"{cid}.mp4", moving(n, size, seed=i), FPS, options={"preset": "ultrafast"})
    cid, (w, h) = IMAGE
    cv2.imwrite(str(d / f"{cid}.jpg"), cv2.cvtColor(texture(h, w, 9), cv2.COLOR_RGB2BGR))
    out[cid] = d / f"{cid}.jpg"
    return out


def _row(cid: str, media_type: str, size: tuple[int, int], frames: int, status: str = "accepted") -> dict:
    w, h = size
    row = {
        "clip_id": cid, "source": f"/in/{cid}.src", "media_type": media_type, "start_frame": 0, "end_frame": frames,
        "start_s": 0.0, "end_s": frames / FPS, "num_frames": frames, "fps": FPS, "width": w, "height": h,
        "motion_score": 0.1, "motion_min_patch": 0.05, "motion_coherence": 0.9, "sharpness": 50.0,
        "bits_per_pixel": 0.2, "border_frac": 0.0, "text_area": 0.01, "neg_tags": [], "status": status, "reject_reasons": [],
    }
    row |= {neg_column(t): 0.1 for t in NEG_TAGS}
    if status == "accepted":
        row["clip_path"] = f"clips/{cid}.{'jpg' if media_type == 'image' else 'mp4'}"
    else:
        row["reject_reasons"] = ["motion_too_low"]
    return row


def make_run(out: Path, media: dict[str, Path], drop: tuple[str, ...] = ()) -> pa.Table:
    """A fresh OUT holding the clip files, and its final clips manifest (plus a rejected clip)."""
    (out / "clips").mkdir(parents=True, exist_ok=True)
    rows = []
    for cid, size, n in VIDEOS:
        rows.append(_row(cid, "video", size, n, "rejected" if cid in drop else "accepted"))
    rows.append(_row(IMAGE[0], "image", IMAGE[1], 1))
    rows.append(_row("zz_rejected_0_50", "video", (128, 72), 50, "rejected"))
    for r in rows:
        if r.get("clip_path"):
            shutil.copyfile(media[r["clip_id"]], out / r["clip_path"])
    return to_table(rows, clip_schema())


def accepted(table: pa.Table) -> list[str]:
    return sorted(r["clip_id"] for r in table.to_pylist() if r["status"] == "accepted")


def read_back(out: Path, index: dict) -> dict[str, dict]:
    urls = [str(out / s["path"]) for s in index["shards"]]
    samples = {}
    for s in wds.WebDataset(urls, shardshuffle=False):
        assert s["__key__"] not in samples, f"{s['__key__']} in two samples"
        samples[s["__key__"]] = s
    return samples


def files_under(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


def test_shards_hold_exactly_the_accepted_clips(tmp_path, media):
    out = tmp_path / "out"
    clips = make_run(out, media)
    table, index = write_shards(clips, Layout.at(out), ShardConfig())
    samples = read_back(out, index)
    assert sorted(samples) == accepted(clips)
    rows = {r["clip_id"]: r for r in table.to_pylist()}
    for key, s in samples.items():
        row = rows[key]
        ext = "jpg" if row["media_type"] == "image" else "mp4"
        assert s[ext] == (out / row["clip_path"]).read_bytes()
        assert "txt" not in s  # no caption column yet
        meta = json.loads(s["json"])
        for col in ("clip_id", "source", "start_s", "end_s", "fps", "num_frames", "width", "height", "text_area",
                    "sharpness", "border_frac", "bits_per_pixel", "motion_score", "motion_min_patch", "neg_tags", "bucket"):
            assert col in meta, col
        assert all(neg_column(t) in meta for t in NEG_TAGS)
        assert meta["clip_id"] == key and meta["bucket"] == row["bucket"]
        assert row["shard"].startswith(f"shards/{row['bucket']}/shard-") and (out / row["shard"]).is_file()
    rejected = rows["zz_rejected_0_50"]
    assert rejected["shard"] is None and rejected["bucket"] is None
    assert table.schema.names == clip_schema().names


def test_index_matches_the_files(tmp_path, media):
    out = tmp_path / "out"
    clips = make_run(out, media)
    _, index = write_shards(clips, Layout.at(out), ShardConfig(max_samples_per_shard=1))
    assert json.loads((out / "shards" / "index.json").read_text()) == index
    for e in index["shards"]:
        data = (out / e["path"]).read_bytes()
        assert len(data) == e["bytes"] and hashlib.sha256(data).hexdigest() == e["sha256"]
        with tarfile.open(out / e["path"]) as tf:
            keys = sorted({m.name.split(".", 1)[0] for m in tf.getmembers()})
        assert keys == sorted(e["keys"]) and e["samples"] == len(keys)
    tars = sorted(str(p.relative_to(out)) for p in (out / "shards").rglob("*.tar"))
    assert tars == sorted(e["path"] for e in index["shards"])
    assert index["totals"] == {
        "shards": len(tars), "samples": len(accepted(clips)), "bytes": sum(e["bytes"] for e in index["shards"]), "unsharded": 0
    }
    assert sum(b["samples"] for b in index["buckets"].values()) == len(accepted(clips))


def test_bucket_assignment(tmp_path, media):
    out = tmp_path / "out"
    table, index = write_shards(make_run(out, media), Layout.at(out), ShardConfig())
    got = {r["clip_id"]: r["bucket"] for r in table.to_pylist()}
    assert got["aa16x9_0_52"] == got["ab16x9_0_60"] == "1024x576_f49"
    assert got["ba4x3_0_50"] == got["bb4x3_0_56"] == "720x480_f49"
    assert got[IMAGE[0]] == "image_1024x576"
    assert set(index["buckets"]) == {"1024x576_f49", "720x480_f49", "image_1024x576"}


def test_bucket_rules():
    video = [r for r in DEFAULT_RESOLUTIONS if r.media == "video"]

    def size(w: int, h: int) -> tuple[int, int]:
        r = choose_resolution(w, h, video)
        return r.width, r.height

    assert size(1920, 1080) == (1360, 768)  # 16:9, big enough: the largest 16:9 without upscaling
    assert size(1280, 720) == (1024, 576)
    assert size(480, 270) == (1024, 576)  # too small for any: the smallest of its aspect
    assert size(640, 480) == (720, 480)  # 4:3 is nearest 3:2
    assert size(270, 480) == (480, 720)  # portrait
    assert choose_frames(48, (17, 33, 49, 81)) == 33 and choose_frames(81, (17, 33, 49, 81)) == 81
    assert choose_frames(16, (17, 33)) is None
    name, why = assign_bucket("video", 1280, 720, 10, DEFAULT_RESOLUTIONS, (17, 49))
    assert name is None and "fewer than the smallest frame bucket (17)" in why
    for name in ("720x480_f49", "image_1024x576"):
        res, frames = parse_bucket(name)
        assert (f"image_{res.width}x{res.height}" if frames is None else f"{res.width}x{res.height}_f{frames}") == name
    with pytest.raises(ValueError):
        parse_bucket("image_720x480_f49")


def test_too_short_clips_are_left_out_and_said_why(tmp_path, media):
    out = tmp_path / "out"
    table, index = write_shards(make_run(out, media), Layout.at(out), ShardConfig(frame_buckets=(53,)))
    rows = {r["clip_id"]: r for r in table.to_pylist()}
    assert set(index["unsharded"]) == {"aa16x9_0_52", "ba4x3_0_50"}
    assert rows["aa16x9_0_52"]["shard"] is None and rows["aa16x9_0_52"]["bucket"] is None
    assert rows["ab16x9_0_60"]["bucket"] == "1024x576_f53"
    assert sorted(read_back(out, index)) == sorted(set(accepted(table)) - set(index["unsharded"]))


def test_size_targets_split_shards(tmp_path, media):
    out = tmp_path / "out"
    clips = make_run(out, media)
    n = len(accepted(clips))
    _, by_count = write_shards(clips, Layout.at(out), ShardConfig(bucketing=False, max_samples_per_shard=2))
    assert [e["samples"] for e in by_count["shards"]] == [2] * (n // 2) + [1] * (n % 2)
    assert all(e["path"].startswith("shards/shard-") and e["bucket"] is None for e in by_count["shards"])
    one = max(e["bytes"] for e in by_count["shards"])  # a two-sample shard: room for ~2 samples
    _, by_bytes = write_shards(clips, Layout.at(out), ShardConfig(bucketing=False, max_samples_per_shard=None, max_bytes_per_shard=one))
    assert 1 < len(by_bytes["shards"]) < n
    assert all(e["bytes"] <= one for e in by_bytes["shards"])
    assert sorted(read_back(out, by_bytes)) == accepted(clips)
    assert files_under(out / "shards") == sorted(
        ["index.json"] + [e["path"][len("shards/"):] for e in by_bytes["shards"]]
        + [f"records/{Path(e['path']).stem}.json" for e in by_bytes["shards"]]
    )  # the count-sharded set is gone, not mixed in


def test_same_input_same_bytes(tmp_path, media):
    for cfg in (ShardConfig(max_samples_per_shard=1), ShardConfig(bucketing=False, max_samples_per_shard=2, shuffle_seed=7)):
        a, b = tmp_path / "a", tmp_path / "b"
        _, ia = write_shards(make_run(a, media), Layout.at(a), cfg)
        _, ib = write_shards(make_run(b, media), Layout.at(b), cfg)
        assert ia == ib
        assert (a / "shards" / "index.json").read_bytes() == (b / "shards" / "index.json").read_bytes()
        shutil.rmtree(a)
        shutil.rmtree(b)
    shuffled = [k for e in ib["shards"] for k in e["keys"]]
    assert shuffled != sorted(shuffled)  # shuffled across shards, the same way twice


def test_rerun_reuses_complete_shards_and_drops_stale_ones(tmp_path, media):
    out = tmp_path / "out"
    cfg = ShardConfig(bucketing=False, max_samples_per_shard=2)
    clips = make_run(out, media)
    _, first = write_shards(clips, Layout.at(out), cfg)
    mtimes = {e["path"]: (out / e["path"]).stat().st_mtime_ns for e in first["shards"]}
    _, again = write_shards(clips, Layout.at(out), cfg)
    assert again == first
    assert {p: (out / p).stat().st_mtime_ns for p in mtimes} == mtimes
    # Re-decided: the first clip is now rejected. Every shard after it shifts, one disappears.
    fewer = make_run(out, media, drop=("aa16x9_0_52",))
    table, index = write_shards(fewer, Layout.at(out), cfg)
    assert sorted(read_back(out, index)) == accepted(fewer)
    assert sorted(str(p.relative_to(out)) for p in (out / "shards").rglob("*.tar")) == [e["path"] for e in index["shards"]]
    assert table.to_pylist()[0]["shard"] is None


def test_captions_become_txt_and_metadata(tmp_path, media):
    out = tmp_path / "out"
    clips = make_run(out, media)
    caps = ["a red disc crosses a textured field" if i % 2 == 0 else None for i in range(clips.num_rows)]
    clips = clips.append_column("caption", pa.array(caps, pa.string()))
    clips = clips.append_column("caption_model", pa.array(["tiny-captioner"] * clips.num_rows, pa.string()))
    _, index = write_shards(clips, Layout.at(out), ShardConfig())
    samples = read_back(out, index)
    for r in clips.to_pylist():
        if r["status"] != "accepted":
            continue
        s = samples[r["clip_id"]]
        assert s.get("txt") == (r["caption"].encode() if r["caption"] is not None else None)
        assert json.loads(s["json"])["caption_model"] == "tiny-captioner"


@pytest.mark.parametrize("bad", ["a.b", "../x", ".hidden", "a/b", "", "a b", "x" * 91])
def test_unsafe_keys_are_refused(bad, tmp_path, media):
    with pytest.raises(ValueError, match="shard key"):
        check_key(bad)
    out = tmp_path / "out"
    clips = make_run(out, media)
    ids = [bad if i == 0 else c for i, c in enumerate(clips.column("clip_id").to_pylist())]
    with pytest.raises(ValueError, match="shard key"):
        write_shards(clips.set_column(0, "clip_id", pa.array(ids)), Layout.at(out), ShardConfig())


_CRASH = """
import os, signal, sys
import pyarrow.parquet as pq
import webdataset as wds
from curation.core.manifest import Layout
from curation.outputs.write_shards import ShardConfig, write_shards

written, real = 0, wds.TarWriter.write
def write(self, sample):
    global written
    if written == int(sys.argv[3]):  # mid-shard: earlier shards are complete, this one is not
        os.kill(os.getpid(), signal.SIGKILL)
    written += 1
    return real(self, sample)
wds.TarWriter.write = write
write_shards(pq.read_table(sys.argv[1]), Layout.at(sys.argv[2]), ShardConfig(bucketing=False, max_samples_per_shard=2))
"""


def test_killed_midway_then_rerun_has_every_clip_once(tmp_path, media):
    out = tmp_path / "out"
    clips = make_run(out, media)
    pq.write_table(clips, tmp_path / "clips.parquet")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", _CRASH, str(tmp_path / "clips.parquet"), str(out), "3"], env=env, cwd=REPO, timeout=120)
    assert r.returncode == -signal.SIGKILL
    shards = out / "shards"
    assert not (shards / "index.json").exists()
    assert sorted(p.name for p in shards.glob("*.tar")) == ["shard-000000.tar"]  # the second was cut off
    assert [p.name for p in shards.glob(".shard-000001.tar.tmp-*")]  # ...and left its temporary
    done = (shards / "shard-000000.tar").stat().st_mtime_ns

    cfg = ShardConfig(bucketing=False, max_samples_per_shard=2)
    _, index = write_shards(clips, Layout.at(out), cfg)
    assert (shards / "shard-000000.tar").stat().st_mtime_ns == done  # complete shard reused
    assert sorted(read_back(out, index)) == accepted(clips)
    assert not [p for p in shards.rglob(".*")]  # no temporaries left, none counted as a shard
    assert sorted(str(p.relative_to(out)) for p in shards.rglob("*.tar")) == [e["path"] for e in index["shards"]]
    fresh = tmp_path / "fresh"
    _, clean = write_shards(make_run(fresh, media), Layout.at(fresh), cfg)
    assert clean == index  # the resumed set is the one an uninterrupted run writes


def test_a_failing_write_leaves_no_partial_tar(tmp_path, media, monkeypatch):
    out = tmp_path / "out"
    clips = make_run(out, media)
    real = wds.TarWriter.write
    calls = []

    def write(self, sample):
        calls.append(sample["__key__"])
        if len(calls) == 2:
            raise OSError("disk full")
        return real(self, sample)

    monkeypatch.setattr(wds.TarWriter, "write", write)
    with pytest.raises(OSError, match="disk full"):
        write_shards(clips, Layout.at(out), ShardConfig(bucketing=False))
    assert files_under(out / "shards") == []


@pytest.mark.parametrize(
    "override, field",
    [
        ({"max_samples_per_shard": 0}, "max_samples_per_shard"),
        ({"max_samples_per_shard": None, "max_bytes_per_shard": None}, "max_bytes_per_shard"),
        ({"frame_buckets": [48]}, "frame_buckets"),
        ({"resolutions": [{"width": 100, "height": 480}]}, "resolutions"),
        ({"resolutions": [{"width": 720, "height": 480, "media": "audio"}]}, "resolutions"),
        ({"resolutions": [{"width": 1024, "height": 576, "media": "image"}]}, "resolutions"),
        ({"resolutions": [{"widht": 720, "height": 480}]}, r"shard\.resolutions\[0\]\.widht"),
    ],
)
def test_shard_config_names_the_field(override, field):
    with pytest.raises(ValueError, match=field):
        load_config(overrides={"shard": override})


def test_shard_config_from_toml(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(
        "[shard]\nmax_samples_per_shard = 500\nframe_buckets = [81, 49]\nshuffle_seed = 3\n"
        "[[shard.resolutions]]\nwidth = 720\nheight = 480\n"
        '[[shard.resolutions]]\nwidth = 720\nheight = 480\nmedia = "image"\n'
    )
    cfg = load_config(f).shard
    assert cfg.frame_buckets == (49, 81) and cfg.shuffle_seed == 3
    assert cfg.resolutions == (Resolution(width=720, height=480), Resolution(width=720, height=480, media="image"))
    assert "bucket" not in scored_clip_schema().names and "shard" not in scored_clip_schema().names


@pytest.mark.slow
def test_shards_of_a_real_curate_run(tmp_path, prefect_server):
    from flows.curate import curate

    src = tmp_path / "in"
    write_video(src / "wide.mp4", moving(60, (480, 270), (3.0, 0.0), seed=1), 25)
    write_video(src / "four_three.mp4", moving(60, (360, 270), (0.0, 2.0), seed=2), 25)
    src.joinpath("photo.jpg").write_bytes(cv2.imencode(".jpg", cv2.cvtColor(texture(288, 512, 6), cv2.COLOR_RGB2BGR))[1].tobytes())
    out = tmp_path / "out"
    summary = curate(inputs=[str(src)], out=str(out), profile="tiny", executor="local")
    assert summary["accepted"] == 3, summary
    layout = Layout.at(out)
    clips = pq.read_table(layout.clip_manifest / "clips.parquet")
    table, index = write_shards(clips, layout, load_config(profile="tiny").shard)
    got = {Path(r["source"]).name: r["bucket"] for r in table.to_pylist()}
    assert got == {"wide.mp4": "1024x576_f49", "four_three.mp4": "720x480_f49", "photo.jpg": "image_1024x576"}
    samples = read_back(out, index)
    assert sorted(samples) == accepted(table)
    for r in table.to_pylist():
        ext = "jpg" if r["media_type"] == "image" else "mp4"
        assert samples[r["clip_id"]][ext] == (out / r["clip_path"]).read_bytes()
