"""The trainer's data read back from real shards: bucket shapes, frame picking, crops, rank
splits, epochs, exact resume, the image/video mix, and the latent cache reader."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch
from safetensors.torch import save_file

from curation.core.config_loader import build_config
from curation.core.manifest import Layout
from curation.core.schema import NEG_TAGS, clip_schema, neg_column, to_table
from curation.corpora.synthetic import COUNTER_BITS as BITS
from curation.corpora.synthetic import counter_frames, texture, write_video
from curation.outputs.write_shards import ShardConfig, write_shards
from training.data.loader import (
    CACHE_FORMAT,
    DEFAULT_BUCKETS,
    BucketBatches,
    BucketSpec,
    DataConfig,
    Planner,
    TrainLoader,
    resolve_rank,
    write_cache_index,
    write_cache_part,
)
from training.data.precompute import PrecomputeSamples
from training.data.video_io import DecodeError, cover_size, crop_origin, decode_image, decode_video, frame_times

# (clip id, (width, height), fps, frames, caption): 16:9 and 4:3 videos of 1.3 s, and images.
VIDEOS = [(f"w{i}_16x9", (480, 270), 25.0, 33, f"wide clip {i}" if i % 2 else None) for i in range(4)]
VIDEOS += [(f"n{i}_4x3", (360, 270), 24.0, 33, f"narrow clip {i}") for i in range(4)]
IMAGES = [(f"i{i}_img", (512, 288), None, 1, f"image {i}") for i in range(4)]
WIDE, NARROW, IMAGE = "256x144_f9", "144x96_f9", "image_256x144"
BUCKETS = (BucketSpec(name=WIDE, batch_size=2), BucketSpec(name=NARROW, batch_size=2), BucketSpec(name=IMAGE, batch_size=3))


def read_counters(frames: np.ndarray) -> list[int]:
    """Frame indices from (F, H, W, 3) uint8 or (C, F, H, W) in [-1, 1] counter frames."""
    if isinstance(frames, torch.Tensor):
        frames = ((frames.permute(1, 2, 3, 0).float() + 1) * 127.5).numpy()
    w = frames.shape[2]
    return [sum(1 << b for b in range(BITS) if f[:, b * w // BITS + w // (2 * BITS)].mean() > 128) for f in frames]


def _row(cid, size, fps, frames, caption) -> dict:
    image = fps is None
    w, h = size
    row = {"clip_id": cid, "source": f"/in/{cid}.src", "media_type": "image" if image else "video", "start_frame": 0,
           "end_frame": frames, "start_s": 0.0, "end_s": None if image else frames / fps, "num_frames": frames,
           "fps": fps, "width": w, "height": h, "neg_tags": [], "status": "accepted", "reject_reasons": [],
           "clip_path": f"clips/{cid}.{'jpg' if image else 'mp4'}"}
    return row | {neg_column(t): 0.1 for t in NEG_TAGS}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """OUT with 12 one-sample shards written by the real shard writer; returns OUT."""
    out = tmp_path_factory.mktemp("out")
    (out / "clips").mkdir()
    for cid, size, fps, n, _ in VIDEOS:
        write_video(out / "clips" / f"{cid}.mp4", counter_frames(n, size), fps, options={"preset": "ultrafast"})
    for i, (cid, (w, h), *_) in enumerate(IMAGES):
        cv2.imwrite(str(out / "clips" / f"{cid}.jpg"), cv2.cvtColor(texture(h, w, i), cv2.COLOR_RGB2BGR))
    rows = [_row(*v) for v in VIDEOS + IMAGES]
    table = to_table(rows, clip_schema()).append_column("caption", pa.array([v[4] for v in VIDEOS + IMAGES], pa.string()))
    _, index = write_shards(table, Layout.at(out), ShardConfig(max_samples_per_shard=1))
    assert len(index["shards"]) == 12 and set(index["buckets"]) == {"1024x576_f33", "720x480_f33", "image_1024x576"}
    return out


def config(out: Path, **kw) -> DataConfig:
    base = dict(shards=str(out), buckets=BUCKETS, fps=8.0, num_workers=0, epoch_length=6, shuffle_buffer=4, seed=7)
    return DataConfig(**(base | kw))


def take(loader, n: int) -> list[dict]:
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            return out
    raise AssertionError("loader ended")


def test_batches_have_bucket_shapes_and_never_mix(shards):
    captions = {v[0]: v[4] or "" for v in VIDEOS + IMAGES}
    seen = set()
    for batch in take(TrainLoader(config(shards, image_ratio=0.3)), 12):
        b = next(s for s in BUCKETS if s.name == batch["bucket"])
        assert batch["pixels"].shape == (b.batch_size, 3, b.frames, b.height, b.width)
        assert batch["pixels"].dtype == torch.float32 and -1 <= batch["pixels"].min() and batch["pixels"].max() <= 1
        ids = batch["clip_ids"]
        # 16:9 clips to the 16:9 bucket, 4:3 clips to the 3:2 (720x480-like) bucket, images to 1 frame.
        family = {WIDE: "_16x9", NARROW: "_4x3", IMAGE: "_img"}[b.name]
        assert all(i.endswith(family) for i in ids), (b.name, ids)
        assert batch["is_image"] == (b.name == IMAGE) and batch["fps"] == (None if b.name == IMAGE else 8.0)
        assert batch["prompts"] == [captions[i] for i in ids]
        seen.add(b.name)
    assert seen == {WIDE, NARROW, IMAGE}


def test_default_buckets_and_config_validation(tmp_path):
    names = {b.name for b in DEFAULT_BUCKETS}
    assert {"720x480_f49", "1024x576_f49", "1360x768_f49", "image_1024x576"} <= names
    cfg = DataConfig(shards="x")
    assert all((b.frames - 1) % cfg.frame_multiple == 0 for b in cfg.buckets)
    assert BucketSpec(width=720, height=480, frames=49) == BucketSpec(name="720x480_f49")
    assert BucketSpec(width=1024, height=576, media="image").name == "image_1024x576"
    for kw, field in [
        (dict(frame_multiple=3), "frame_multiple"),
        (dict(buckets=(BucketSpec(name="720x480_f13"),)), "frames"),  # 4k+1 but not 8N+1
        (dict(frame_multiple=16, buckets=(BucketSpec(name="720x480_f41"),)), "frames"),  # 8N+1, not 16N+1
        (dict(image_ratio=1.5), "image_ratio"),
        (dict(image_ratio=0.5, buckets=(BucketSpec(name="720x480_f49"),)), "image_ratio"),
        (dict(buckets=()), "buckets"),
        (dict(buckets=(BucketSpec(name="720x480_f49"), BucketSpec(width=720, height=480, frames=49))), "duplicate"),
        (dict(epoch_length=0), "epoch_length"),
        (dict(pixel_dtype="float64"), "pixel_dtype"),
        (dict(shards=""), "shards"),
    ]:
        with pytest.raises(ValueError, match=field):
            DataConfig(**({"shards": "x"} | kw))
    DataConfig(shards="x", frame_multiple=16, buckets=(BucketSpec(name="1360x768_f81"), BucketSpec(name="720x480_f17")))
    # From a config file's table (the trainer's config maps dicts with curation.core.config_loader.build_config).
    built = build_config(DataConfig, {"shards": "x", "buckets": [{"name": "720x480_f49", "batch_size": 2},
                                                                {"width": 1024, "height": 576, "media": "image"}]}, "data")
    assert [b.name for b in built.buckets] == ["720x480_f49", "image_1024x576"] and built.buckets[0].batch_size == 2
    for kw, field in [(dict(name="720x480_f47"), "frames"), (dict(name="720x480_f49", width=640), "width"),
                      (dict(name="720x480_f49", keep_prob=0), "keep_prob"), (dict(name="720x480_f49", batch_size=0), "batch_size"),
                      (dict(width=720, height=470, frames=49), "multiple of 16"), (dict(name="big"), "name")]:
        with pytest.raises(ValueError, match=field):
            BucketSpec(**kw)


def _fake(cid: str, w: int, h: int, fps: float | None = 25.0, frames: int = 33) -> dict:
    meta = {"clip_id": cid, "width": w, "height": h, "fps": fps, "num_frames": frames, "start_s": 0.0,
            "end_s": frames / fps if fps else None}
    return {"__key__": cid, "json": json.dumps(meta).encode(), ("mp4" if fps else "jpg"): b""}


def test_bucket_choice_aspect_size_frames_and_keep_prob():
    default = Planner(DataConfig(shards="x"))
    # 4:3 goes to 720x480's aspect (upscaled: it is the only 3:2 size); 1080p to 1360x768 first.
    assert [b.name for b in default.candidates("video", 640, 480)] == ["720x480_f49", "720x480_f17"]
    assert [b.name for b in default.candidates("video", 1920, 1080)][:3] == ["1360x768_f49", "1024x576_f49", "1024x576_f17"]
    assert [b.name for b in default.candidates("video", 540, 960)] == ["480x720_f49"]
    assert [b.name for b in default.candidates("image", 4000, 3000)] == ["image_720x480"]

    cfg = DataConfig(shards="x", fps=8.0, random_start=False, buckets=(
        BucketSpec(name="256x144_f17"), BucketSpec(name="256x144_f9", keep_prob=0.5), BucketSpec(name="512x288_f9")))
    planner = Planner(cfg)
    # 1.32 s cannot fill 17 frames at 8 fps (2 s): f9; kept half the time, else demoted to the
    # next size (512x288, which upscales the 480x270 clip).
    got = [planner.plan(_fake("a", 480, 270), epoch).bucket.name for epoch in range(400)]
    assert set(got) == {"256x144_f9", "512x288_f9"} and 0.4 < got.count("256x144_f9") / 400 < 0.6
    long = planner.plan(_fake("b", 480, 270, frames=60), 0)  # 2.4 s: 17 frames at 8 fps fit
    assert long.bucket.name == "256x144_f17" and long.times == tuple(k / 8 for k in range(17))
    assert planner.plan(_fake("c", 480, 270, frames=20), 0) == "too_short"
    assert planner.plan(_fake("d", 480, 270, fps=None), 0) == "no_bucket"
    # Plans depend on (seed, epoch, key) only: the same on every call.
    assert [planner.plan(_fake("a", 480, 270), e).bucket.name for e in range(400)] == got


def test_frames_picked_at_the_bucket_fps(shards):
    rate = {v[0]: v[2] for v in VIDEOS}
    for fps, frames in [(7.0, 9), (None, 17)]:  # 7 fps: no ties at 24 or 25 fps; None: the clip's own rate
        # The only bucket is 16:9: the 4:3 clips come too (cropped top and bottom; bars intact).
        buckets = (BucketSpec(name=f"256x144_f{frames}", batch_size=1),)
        cfg = config(shards, buckets=buckets, fps=fps, random_start=False, image_ratio=0.0)
        for batch in take(TrainLoader(cfg), 8):
            src = rate[batch["clip_ids"][0]]
            expect = [round(src * k / fps) for k in range(frames)] if fps else list(range(frames))
            assert read_counters(batch["pixels"][0]) == expect, batch["clip_ids"]
    # With random starts: still consecutive source frames, from a start within the spare time.
    cfg = config(shards, buckets=(BucketSpec(name="256x144_f17", batch_size=1),), fps=None, image_ratio=0.0)
    starts = set()
    for batch in take(TrainLoader(cfg), 8):
        got = read_counters(batch["pixels"][0])
        assert got == list(range(got[0], got[0] + 17)) and 0 <= got[0] <= 33 - 17
        starts.add(got[0])
    assert len(starts) > 1


def test_decode_repeats_frames_above_the_clip_rate_and_refuses_short_clips(tmp_path):
    data = write_video(tmp_path / "c.mp4", counter_frames(33, (256, 144)), 24, options={"preset": "ultrafast"}).read_bytes()
    got = decode_video(data, width=256, height=144, times=frame_times(9, 40.0))
    assert read_counters(got) == [0, 1, 1, 2, 2, 3, 4, 4, 5]  # nearest frame to k/40 s at 24 fps
    assert read_counters(decode_video(data, width=256, height=144, times=frame_times(9, 6.0))) == list(range(0, 33, 4))
    with pytest.raises(DecodeError, match="before frame time"):
        decode_video(data, width=256, height=144, times=frame_times(9, 5.0))  # needs 1.6 s of a 1.375 s clip


def _pattern(w=360, h=270) -> np.ndarray:
    """Green left half, blue right half, red bands of 15 rows top and bottom, a white line at row 135."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (0, 200, 0)
    img[:, w // 2 :] = (0, 0, 200)
    img[:15] = img[h - 15 :] = (220, 0, 0)
    img[134:137] = 255
    return img


def _check_crop(rgb: np.ndarray, line_axis: int) -> None:
    """`rgb` (96 x 144 or 144 x 96): the pattern scaled by 0.4 and centre-cropped 6 px each side."""
    x = rgb.astype(int)
    profile = x.sum(axis=2).mean(axis=1 - line_axis)  # brightness along the cropped axis
    assert abs(int(np.argmax(profile)) - 48) <= 1  # 135 * 0.4 - 6: a top/left crop gives 54, bottom/right 42
    inner = x[2:-2, 2:-2]
    assert (inner[..., 0] - inner[..., 1:].max(axis=2)).max() < 60  # the red bands were cropped away


def test_resize_then_centre_crop_video_image_and_rotation(tmp_path):
    assert cover_size(360, 270, 144, 96) == (144, 108) and crop_origin(144, 108, 144, 96) == (0, 6)
    assert cover_size(480, 270, 144, 96) == (171, 96) and crop_origin(171, 96, 144, 96) == (13, 0)
    img = _pattern()
    mp4 = write_video(tmp_path / "p.mp4", [img] * 3, 24, options={"preset": "ultrafast", "crf": "10"}).read_bytes()
    _, jpg = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    for frames in (decode_video(mp4, width=144, height=96, times=[0.0]), decode_image(jpg.tobytes(), width=144, height=96)):
        assert frames.shape == (1, 96, 144, 3)
        _check_crop(frames[0], line_axis=0)
        rows = np.r_[5:40, 56:90]  # clear of the white line
        left, right = frames[0, rows, 10:66].astype(int), frames[0, rows, 78:134].astype(int)
        assert (left[..., 1] > left[..., 2] + 100).all() and (right[..., 2] > right[..., 1] + 100).all()
    # Enlarging (the OpenCV bicubic path): 360x270 -> 720x540, 30 rows cropped top and bottom.
    up = decode_video(mp4, width=720, height=480, times=[0.0])[0].astype(int)
    assert abs(int(np.argmax(up.sum(axis=2).mean(axis=1))) - 240) <= 1  # the white line: 135 * 2 - 30
    assert (up[10:200, 20:340, 1] > up[10:200, 20:340, 2] + 100).all() and (up[10:200, 380:700, 2] > 100).all()
    # Stored display rotation (90 degrees counter-clockwise): decoded upright, portrait.
    rot = write_video(tmp_path / "r.mp4", [img] * 3, 24, rotation=90, options={"preset": "ultrafast", "crf": "10"}).read_bytes()
    frames = decode_video(rot, width=96, height=144, times=[0.0])
    assert frames.shape == (1, 144, 96, 3)
    _check_crop(frames[0], line_axis=1)
    top, bottom = frames[0, 10:40, 56:86].astype(int), frames[0, 104:134, 56:86].astype(int)  # clear of the line
    assert (top[..., 2] > top[..., 1] + 100).all() and (bottom[..., 1] > bottom[..., 2] + 100).all()  # right half up


def test_ranks_split_shards_disjointly_without_resampling(shards):
    def ids(rank: int) -> list[str]:
        cfg = config(shards, resample=False, image_ratio=0.0, shuffle_buffer=1, epoch_length=4,
                     buckets=(BucketSpec(name=WIDE), BucketSpec(name=NARROW)))
        return [b["clip_ids"][0] for b in take(TrainLoader(cfg, rank=rank, world_size=2), 4)]

    a, b = ids(0), ids(1)
    assert len(set(a)) == len(set(b)) == 4 and not set(a) & set(b)  # one pass: each rank its own half
    assert set(a) | set(b) == {v[0] for v in VIDEOS}
    with pytest.raises(ValueError, match="cannot be split"):  # 4 image shards over 5 ranks
        take(TrainLoader(config(shards, resample=False, image_ratio=1.0), rank=4, world_size=5), 1)


def test_resampled_ranks_differ_and_seeded_runs_repeat(shards):
    def run(rank: int, seed: int = 7) -> list[dict]:
        return take(TrainLoader(config(shards, image_ratio=0.3, seed=seed), rank=rank, world_size=2), 8)

    def dry_run(rank: int, seed: int = 7) -> list[list[str]]:  # the same batches, planned but not decoded
        plans = BucketBatches(config(shards, image_ratio=0.3, seed=seed), rank=rank, world_size=2).plan_epoch(0, 0)
        return [[p.clip_id for p in next(plans)] for _ in range(6)]

    a, again = run(0), run(0)
    assert [b["index"] for b in a] == list(range(8)) and [b["epoch"] for b in a] == [0] * 6 + [1] * 2  # epoch_length 6
    for x, y in zip(a, again):
        assert x["clip_ids"] == y["clip_ids"] and torch.equal(x["pixels"], y["pixels"])
    assert dry_run(0) == [b["clip_ids"] for b in a[:6]]
    assert dry_run(1) != dry_run(0) and dry_run(0, seed=8) != dry_run(0)


@pytest.mark.parametrize("resample", [True, False])
def test_exact_resume_with_workers(shards, resample):
    cfg = config(shards, image_ratio=0.3, num_workers=2, epoch_length=5, resample=resample)
    loader, full, states = TrainLoader(cfg), [], {}
    for batch in loader:  # one uninterrupted run, checkpointing its position as it goes
        full.append(batch)
        states[loader.state_dict()["batches"]] = json.loads(json.dumps(loader.state_dict()))  # survives JSON
        if len(full) == 11:
            break
    assert [b["index"] for b in full] == list(range(11)) and [b["epoch"] for b in full] == [0] * 5 + [1] * 5 + [2]
    for g0 in (3, 5):  # mid-epoch, starting on the second worker's stream; an epoch boundary
        assert states[g0]["epoch"] == g0 // 5
        resumed = TrainLoader(cfg)
        resumed.load_state_dict(states[g0])
        for want, got in zip(full[g0:], take(resumed, 11 - g0), strict=True):
            assert (got["index"], got["epoch"], got["bucket"]) == (want["index"], want["epoch"], want["bucket"])
            assert got["clip_ids"] == want["clip_ids"] and got["prompts"] == want["prompts"]
            assert torch.equal(got["pixels"], want["pixels"])
    with pytest.raises(ValueError, match="streams"):
        TrainLoader(config(shards, image_ratio=0.3, num_workers=0, epoch_length=5)).load_state_dict(states[3])


def test_image_ratio_is_honoured(shards):
    def image_share(ratio, n=400, buckets=BUCKETS) -> float:
        plans = BucketBatches(config(shards, image_ratio=ratio, buckets=buckets), rank=0, world_size=1).plan_epoch(0, 0)
        return sum(next(plans)[0].bucket.media == "image" for _ in range(n)) / n

    # Seeded, so deterministic; the bound is also 3.7 binomial standard deviations wide.
    assert abs(image_share(0.25) - 0.25) < 0.08
    assert abs(image_share(None) - 4 / 12) < 0.08  # default: the images' share of samples
    assert image_share(0.0, 50) == 0.0 and image_share(1.0, 50) == 1.0
    assert image_share(None, 50, buckets=BUCKETS[:2]) == 0.0  # no image bucket configured: no images


def test_uint8_pixels_and_precompute_pass(shards):
    batch = take(TrainLoader(config(shards, image_ratio=0.0, pixel_dtype="uint8")), 1)[0]
    assert batch["pixels"].dtype == torch.uint8
    from training.data.loader import to_model_pixels

    floats = take(TrainLoader(config(shards, image_ratio=0.0)), 1)[0]["pixels"]
    assert torch.allclose(to_model_pixels(batch["pixels"]), floats, atol=1e-6)
    samples = list(PrecomputeSamples(config(shards, random_start=False)))
    assert sorted(s["clip_id"] for s in samples) == sorted(v[0] for v in VIDEOS + IMAGES)
    again = {s["clip_id"]: s for s in PrecomputeSamples(config(shards, random_start=False), rank=1, world_size=2)}
    for s in samples:
        b = next(x for x in BUCKETS if x.name == s["bucket"])
        assert s["pixels"].shape == (3, b.frames, b.height, b.width) and s["is_image"] == (b.name == IMAGE)
        if s["clip_id"] in again:
            assert torch.equal(again[s["clip_id"]]["pixels"], s["pixels"])
    assert 0 < len(again) < len(samples)


def _cache_rows(bucket: str, n: int, latent: tuple, seed: int) -> tuple[dict, list[str], list[str]]:
    g = torch.Generator().manual_seed(seed)
    tensors = {"latent_moments": torch.randn((n, *latent), generator=g).to(torch.bfloat16),
               "prompt_embeds": torch.randn((n, 8, 16), generator=g).to(torch.bfloat16)}
    return tensors, [f"{bucket}-{i}" for i in range(n)], [f"caption {bucket} {i}" for i in range(n)]


def test_cache_reader_reads_a_hand_written_cache(tmp_path):
    root = tmp_path / "cache"
    written, parts = {}, []
    for bucket, n, latent in [(NARROW, 5, (32, 3, 12, 18)), (IMAGE, 4, (32, 1, 18, 32))]:
        tensors, ids, prompts = _cache_rows(bucket, n, latent, seed=len(parts))
        path = f"{bucket}/part-000000.safetensors"  # as CACHE_FORMAT documents, written by hand
        (root / bucket).mkdir(parents=True)
        save_file(tensors, str(root / path), metadata={"format": "videomill-cache-1", "bucket": bucket,
                                                       "clip_ids": json.dumps(ids), "prompts": json.dumps(prompts)})
        parts.append({"path": path, "bucket": bucket, "samples": n})
        written |= {cid: (tensors["latent_moments"][i], tensors["prompt_embeds"][i], prompts[i]) for i, cid in enumerate(ids)}
    (root / "index.json").write_text(json.dumps({"format": "videomill-cache-1", "parts": parts}))

    cfg = DataConfig(cache_dir=str(root), buckets=BUCKETS, epoch_length=4, num_workers=0, seed=3, image_ratio=0.5)
    batches = take(TrainLoader(cfg), 10)
    assert {b["bucket"] for b in batches} == {NARROW, IMAGE}
    for b in batches:
        spec = next(x for x in BUCKETS if x.name == b["bucket"])
        assert b["latent_moments"].shape[0] == b["prompt_embeds"].shape[0] == len(b["clip_ids"]) == spec.batch_size
        assert b["latent_moments"].dtype == torch.bfloat16 and b["is_image"] == (spec.media == "image")
        assert "pixels" not in b
        for i, cid in enumerate(b["clip_ids"]):
            lat, emb, prompt = written[cid]
            assert torch.equal(b["latent_moments"][i], lat) and torch.equal(b["prompt_embeds"][i], emb)
            assert b["prompts"][i] == prompt and cid.startswith(b["bucket"])
    # Exact resume works the same from the cache.
    resumed = TrainLoader(cfg)
    resumed.load_state_dict({**TrainLoader(cfg).state_dict(), "batches": 6})
    for want, got in zip(batches[6:], take(resumed, 4)):
        assert got["clip_ids"] == want["clip_ids"] and torch.equal(got["latent_moments"], want["latent_moments"])


def test_cache_writer_helpers_round_trip(tmp_path):
    root = tmp_path / "cache"
    tensors, ids, prompts = _cache_rows(NARROW, 4, (32, 3, 12, 18), seed=0)
    entry = write_cache_part(root, NARROW, 0, tensors, ids, prompts)
    assert entry == {"path": CACHE_FORMAT.part.format(bucket=NARROW, part=0), "bucket": NARROW, "samples": 4}
    write_cache_index(root, [entry], vae="tiny")
    cfg = DataConfig(cache_dir=str(root), buckets=BUCKETS, epoch_length=2, num_workers=0, image_ratio=0.0)
    got = {cid for b in take(TrainLoader(cfg), 2) for cid in b["clip_ids"]}
    assert got == set(ids)
    with pytest.raises(ValueError, match="prompt_embeds"):
        write_cache_part(root, NARROW, 1, {"latent_moments": tensors["latent_moments"]}, ids, prompts)


def test_rank_from_arguments_environment_or_process_group(monkeypatch, tmp_path):
    assert resolve_rank(1, 4) == (1, 4)
    for bad in ((4, 4), (1, None), (-1, 2)):
        with pytest.raises(ValueError, match="rank"):
            resolve_rank(*bad)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert resolve_rank() == (3, 8)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        assert resolve_rank() == (0, 1)  # an initialised process group (torchrun, Ray Train) comes first
    finally:
        torch.distributed.destroy_process_group()


# --- multi-frame-rate, skips, captions --------------------------------------------------------


def test_multi_frame_rate_spacing_prefix_and_clip_length(shards):
    """Each sample is drawn at one listed rate it can fill (9 frames at 5 fps need 1.6 s of a
    1.32-1.375 s clip: never drawn); frames are spaced at that rate; the prompt says it."""
    rate, captions = {v[0]: v[2] for v in VIDEOS}, {v[0]: v[4] or "" for v in VIDEOS}
    cfg = config(shards, buckets=(BucketSpec(name="256x144_f9", fps=[11, 5.0, 7]),), random_start=False,
                 image_ratio=0.0, fps_condition="text_prefix")
    assert cfg.buckets[0].fps == (5.0, 7.0, 11.0)
    seen: dict[str, set] = {}
    for batch in take(TrainLoader(cfg), 24):
        cid, fps = batch["clip_ids"][0], batch["fps"]
        assert fps in (7.0, 11.0)
        # 7 and 11 fps have no ties at 24 or 25 fps; nearest source frame to k / fps
        assert read_counters(batch["pixels"][0]) == [round(rate[cid] * k / fps) for k in range(9)], (cid, fps)
        assert batch["prompts"] == [f"<{fps:g} fps> {captions[cid]}".rstrip()]
        seen.setdefault(cid, set()).add(fps)
    assert any(rates == {7.0, 11.0} for rates in seen.values())  # the same clip at both rates
    # Images never get a prefix (without one, prompts are the captions: the first test).
    img = take(TrainLoader(config(shards, image_ratio=1.0, fps_condition="text_prefix")), 1)[0]
    assert img["fps"] is None and not any(p.startswith("<") for p in img["prompts"])
    with pytest.raises(ValueError, match="fps"):
        BucketSpec(name=WIDE, fps=[8, 8])
    with pytest.raises(ValueError, match="fps_condition"):
        config(shards, fps_condition="token")


def _bad_shards(out: Path) -> Path:
    """OUT with 3 good 16:9 clips, one that does not decode and one too short for 9 frames at 8 fps."""
    (out / "clips").mkdir(parents=True)
    vids = [(f"g{i}", (480, 270), 25.0, 33, f"good {i}") for i in range(3)]
    vids += [("bad", (480, 270), 25.0, 33, "bad"), ("short", (480, 270), 25.0, 17, "short")]
    for cid, size, fps, n, _ in vids:
        if cid == "bad":
            (out / "clips" / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
        else:
            write_video(out / "clips" / f"{cid}.mp4", counter_frames(n, size), fps, options={"preset": "ultrafast"})
    table = to_table([_row(*v) for v in vids], clip_schema()).append_column("caption", pa.array([v[4] for v in vids]))
    write_shards(table, Layout.at(out), ShardConfig(max_samples_per_shard=1))
    return out


def test_skips_counted_by_reason_undecodable_skipped_and_resume_stays_exact(tmp_path):
    out = _bad_shards(tmp_path / "out")
    cfg = DataConfig(shards=str(out), buckets=(BucketSpec(name=WIDE),), fps=8.0, num_workers=0, epoch_length=4,
                     shuffle_buffer=2, seed=1, resample=False, image_ratio=0.0)
    loader, full, states = TrainLoader(cfg), [], {}
    for batch in loader:  # every shard once per pass: 3 batches a pass, skipping one bad and one short
        full.append(batch)
        states[len(full)] = json.loads(json.dumps(loader.state_dict()))
        if len(full) == 9:
            break
    assert {c for b in full for c in b["clip_ids"]} == {"g0", "g1", "g2"}
    assert set(loader.skipped) == {"undecodable", "too_short"} and 2 <= loader.skipped["undecodable"] <= 3
    assert sum(sum(b["skipped"].values()) for b in full) == sum(loader.skipped.values())
    assert states[9]["skipped"] == dict(loader.skipped)
    from training.data.loader import skipped_in_position, skipped_total

    assert skipped_total(loader) == skipped_in_position({"0": states[9]}) == dict(sorted(loader.skipped.items()))
    for g0 in (2, 5):  # mid-epoch, after a failed decode may have used an extra planned batch
        resumed = TrainLoader(cfg)
        resumed.load_state_dict(states[g0])
        for want, got in zip(full[g0:], take(resumed, 9 - g0), strict=True):
            assert (got["index"], got["clip_ids"], got["skipped"]) == (want["index"], want["clip_ids"], want["skipped"])
            assert torch.equal(got["pixels"], want["pixels"])
        assert resumed.skipped == loader.skipped
    # Precompute skips and counts the same samples instead of raising.
    pre = PrecomputeSamples(cfg)
    assert sorted(s["clip_id"] for s in pre) == ["g0", "g1", "g2"]
    assert dict(pre.skipped) == {"undecodable": 1, "too_short": 1}


def test_t2v_refuses_mostly_uncaptioned_data_unless_intended(shards):
    from training.data.loader import check_captions

    with pytest.raises(ValueError, match=r"2 of 12 samples .* empty caption"):  # w0 and w2 have none
        check_captions(config(shards), "t2v")
    assert check_captions(config(shards, max_empty_caption_share=0.2), "t2v") == (2, 12)
    assert check_captions(config(shards, allow_empty_captions=True), "t2v") is None
    assert check_captions(config(shards), "i2v") is None


def test_fps_prefix_reaches_the_text_encoder(shards, tmp_path):
    """A loader batch under fps_condition = "text_prefix" goes through the real training step
    (tiny RANDOM UNTRAINED CogVideoX): the T5 tokenizer is handed "<n fps> caption"."""
    from training.models import ModelConfig, build_tiny, load_models
    from training.objective import ObjectiveConfig, training_step

    path = build_tiny(tmp_path / "tiny", variant="t2v", version="1.0")
    models = load_models(ModelConfig(pretrained=str(path), variant="t2v", version="1.0", dtype="fp32"), "cpu")
    seen: list[str] = []
    tokenizer = models.tokenizer

    def spy(texts, **kw):
        seen.extend(texts)
        return tokenizer(texts, **kw)

    models.tokenizer = spy
    cfg = config(shards, buckets=(BucketSpec(name="48x32_f9", fps=[7, 11]),), image_ratio=0.0, fps_condition="text_prefix")
    batch = take(TrainLoader(cfg), 1)[0]
    loss = training_step(models, batch, ObjectiveConfig(text_dropout=0.0), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and seen == batch["prompts"] and seen[0].startswith(f"<{batch['fps']:g} fps>")
