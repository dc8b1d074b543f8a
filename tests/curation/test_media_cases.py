"""The media real collections contain (issue 12's table, rows 1-9), each with its right
result: timestamps, stream selection, partial streams, frame size changes, gradual
transitions and short shots; plus geometry and colour surviving from source to clip.

Row 10 (names and paths) is in test_inputs.py; the whole hostile corpus through a real run
is tests/flows/test_hostile.py.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pytest

from curation.corpora import hostile
from curation.analysis.analyze import SplitAndScore, group_sources
from curation.core.config import load_config
from curation.outputs.extract_clips import ExtractConfig, extract_video
from curation.media.probe import ProbeSources
from curation.corpora.synthetic import moving


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("media_cases")
    expect: dict = {}
    for make in (hostile.row1_joined_ts, hostile.row2_long_audio, hostile.row3_raw_h264, hostile.row4_huge_jpeg,
                 hostile.row5_size_change, hostile.row6_mid_gop_ts, hostile.row7_cover_art, hostile.row8_transitions,
                 hostile.row9_short_shots, hostile.row_copy_cut):
        expect.update(make(d))
    return d, expect


@pytest.fixture(scope="module")
def stage():
    s = SplitAndScore(load_config())
    s.setup()
    return s


def analyzed(path: Path, stage: SplitAndScore) -> dict:
    (row,) = group_sources(stage(ProbeSources(load_config())(pa.table({"source": [str(path)]}))))
    return row


def spans(row: dict) -> list[tuple[int, int]]:
    return [(c["start_frame"], c["end_frame"]) for c in row["clips"]]


def check(row: dict, want: dict) -> None:
    assert row["status"] == want["status"], row["error"]
    if want["status"] == "error":
        assert row["error_code"] == want["error_code"]
        assert want["error_contains"] in row["error"]
        return
    assert row["error"] is None and row["error_code"] is None
    for key in ("duration_s", "fps"):
        if key in want:
            assert row[key] == pytest.approx(want[key], abs=0.01), key
    for key in ("vfr", "num_frames"):
        if key in want:
            assert row[key] == want[key], key
    if "clips" in want:
        assert spans(row) == want["clips"]
    if "clips_within" in want:  # one clip inside each span, a few frames shorter at most
        got = spans(row)
        assert len(got) == len(want["clips_within"]), got
        for (a, b), (lo, hi) in zip(got, want["clips_within"]):
            assert lo <= a < b <= hi and (hi - lo) - (b - a) <= want["lose_at_most"], (got, want)


def extract(row: dict, out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    return extract_video(row["source"], row["clips"], out, ExtractConfig())


def extracted_frames(path: Path) -> tuple[int, Fraction]:
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        return sum(1 for _ in c.decode(vs)), vs.average_rate


@pytest.mark.parametrize(
    "name",
    ["joined.ts", "long_audio.mkv", "long_audio.webm", "raw.h264", "raw_h264_named.mp4", "huge.jpg", "size_change.mkv",
     "song_with_cover.mp4", "dissolve.mp4", "fade_black.mp4", "stub_start.mp4", "insert.mp4", "copy_cut.mp4"],
)
def test_table_row_right_result(cases, stage, name):
    d, expect = cases
    check(analyzed(d / name, stage), expect[name])


def test_row1_restarting_timestamps_extract_both_shots(cases, stage, tmp_path):
    """Two MPEG-TS joined with `cat`: 6 s at 25 fps, constant rate, clips [0,75) and [75,150),
    and extraction (the same timeline) writes both with 75 frames at 25 fps."""
    d, _ = cases
    row = analyzed(d / "joined.ts", stage)
    results = extract(row, tmp_path)
    assert [r["error"] for r in results] == [None, None]
    for r in results:
        n, rate = extracted_frames(Path(r["clip_path"]))
        assert (n, rate) == (75, 25)


def test_row3_stream_without_timestamps_is_extracted(cases, stage, tmp_path):
    """Raw H.264 (no timestamps) at 30 fps, under its own name and named .mp4: 4 s, and the
    clip is extracted with all 120 frames at 30 fps (one timestamp policy for both passes)."""
    d, _ = cases
    for name in ("raw.h264", "raw_h264_named.mp4"):
        row = analyzed(d / name, stage)
        (res,) = extract(row, tmp_path / name)
        assert res["error"] is None
        assert extracted_frames(Path(res["clip_path"])) == (120, 30)


def test_row6_recording_starting_mid_gop_is_not_truncation(cases, stage, tmp_path):
    d, expect = cases
    row = analyzed(d / "mid_gop.ts", stage)
    assert row["status"] == "ok", row["error"]
    assert row["num_frames"] >= expect["mid_gop.ts"]["min_frames"]
    assert row["duration_s"] == pytest.approx(row["num_frames"] / 25, abs=0.01)
    results = extract(row, tmp_path)
    assert results and all(r["error"] is None for r in results)


def test_row5_size_change_clips_have_their_own_size(cases, stage, tmp_path):
    """Each clip has its own size in its file and in the manifest (so in KEY.json and its
    bucket): the clip after the change was 480x270 in its file but 320x240, the stream's first
    size, in the manifest, and went to a 4:3 bucket (issue 18)."""
    from curation.core.buckets import DEFAULT_RESOLUTIONS, assign_bucket

    d, _ = cases
    row = analyzed(d / "size_change.mkv", stage)
    results = extract(row, tmp_path)
    sizes = []
    for r in results:
        with av.open(r["clip_path"]) as c:
            sizes.append((c.streams.video[0].width, c.streams.video[0].height))
    assert sizes == [(320, 240), (480, 270)]
    assert [(c["width"], c["height"]) for c in row["clips"]] == sizes
    for c, (w, h) in zip(row["clips"], sizes):
        want = assign_bucket("video", w, h, c["num_frames"], DEFAULT_RESOLUTIONS, (49,))
        assert assign_bucket("video", c["width"], c["height"], c["num_frames"], DEFAULT_RESOLUTIONS, (49,)) == want


def test_row8_transition_frames_are_in_no_clip(cases, stage):
    d, _ = cases
    for name in ("dissolve.mp4", "fade_black.mp4"):
        row = analyzed(d / name, stage)
        covered = {i for a, b in spans(row) for i in range(a, b)}
        assert covered.isdisjoint(range(60, 80)), name
        assert row["num_shots"] == 2


def test_steady_pans_are_not_gradual_transitions(tmp_path, stage):
    for speed in (1.0, 4.0, 12.0):
        path = hostile.encode(tmp_path / f"pan{speed:g}.mp4", moving(150, hostile.SIZE, (speed, speed / 2), seed=40))
        row = analyzed(path, stage)
        assert spans(row) == [(0, 150)], speed


def test_colour_range_matrix_and_sample_aspect_survive_to_the_clip(tmp_path, stage):
    """Full-range BT.709 with 4:3 pixels: the clip is square-pixel at the display size, with
    the same range/matrix/primaries/transfer in its stream (what ffprobe shows) and its black
    and white kept at full range (0 and 255, not squashed to 16-235)."""
    frames = []
    for f in moving(75, (320, 240), seed=41):
        f = f.copy()
        f[:, :40] = 0
        f[:, -40:] = 255
        frames.append(f)
    colour = {"color_range": 2, "colorspace": 1, "color_primaries": 1, "color_trc": 1}
    src = hostile.encode(tmp_path / "full_range.mp4", frames, colour=colour, sar=Fraction(4, 3))
    row = analyzed(src, stage)
    assert (row["width"], row["height"]) == (427, 240)
    (res,) = extract(row, tmp_path / "clips")
    with av.open(res["clip_path"]) as c:
        vs = c.streams.video[0]
        cc = vs.codec_context
        got = {k: int(getattr(cc, k)) for k in colour}
        assert got == colour
        assert (vs.width, vs.height) == (426, 240)
        assert vs.sample_aspect_ratio in (None, 1)
        frame = next(c.decode(vs))
        y = frame.to_ndarray()[: frame.height]  # the Y plane, as stored
    assert y[:, 5:40].mean() < 6  # full-range black
    assert y[:, -40:-5].mean() > 249  # full-range white


def test_limited_range_source_stays_limited(tmp_path, stage):
    colour = {"color_range": 1, "colorspace": 6, "color_primaries": 6, "color_trc": 6}
    src = hostile.encode(tmp_path / "bt601.mp4", moving(60, (320, 240), seed=42), colour=colour)
    row = analyzed(src, stage)
    (res,) = extract(row, tmp_path / "clips")
    with av.open(res["clip_path"]) as c:
        cc = c.streams.video[0].codec_context
        assert {k: int(getattr(cc, k)) for k in colour} == colour


def test_truncation_is_judged_on_the_video_stream():
    """The same 3 s video with 8 s of audio is fine in MKV/WebM (checked above) and MP4."""
    from curation.media.decode import DecodeStats, check_complete

    check_complete(DecodeStats(declared_start_s=0.0, declared_duration_s=3.0, first_raw_s=0.0, last_raw_s=2.96, frame_s=0.04))
    with pytest.raises(Exception, match="truncated video: frames stop at 1.00 s of the 3.00 s"):
        check_complete(DecodeStats(declared_start_s=0.0, declared_duration_s=3.0, first_raw_s=0.0, last_raw_s=0.96, frame_s=0.04))


def test_timeline_repairs_missing_backwards_and_jumping_timestamps():
    from curation.media.decode import DecodeStats, Timeline

    stats = DecodeStats()
    tl = Timeline(25.0, stats)
    raw = [-0.08, -0.04, None, 0.04, 0.08, 0.0, 0.04, 900.0, 900.04]  # negative start, missing, restart, jump
    got = [round(tl.time(r), 3) for r in raw]
    assert got == [0.0, 0.04, 0.08, 0.12, 0.16, 0.2, 0.24, 0.28, 0.32]
    assert (stats.missing, stats.repaired, stats.frames) == (1, 2, 9)
    assert np.all(np.diff(got) > 0)


OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")


@pytest.mark.skipif(not (OPENCV_DATA / "Megamind.avi").exists(), reason="needs Debian's opencv-doc (.ci/run installs it)")
def test_real_avi_with_decode_order_timestamps(stage, tmp_path):
    """Real footage: opencv-doc's Megamind.avi (MPEG-4 Part 2 with packed B-frames in AVI)
    hands frames out in display order stamped in decode order (88 of 269 steps go back).
    Put in order it is 270 frames at 23.976 fps, constant rate, four shots; extraction (the
    same timeline) writes every frame of a clip. Taken as stamped, it read as 14.5 fps."""
    row = analyzed(OPENCV_DATA / "Megamind.avi", stage)
    assert row["status"] == "ok", row["error"]
    assert row["fps"] == pytest.approx(24000 / 1001, abs=0.01)
    assert (row["num_frames"], row["num_shots"], row["vfr"]) == (270, 4, False)
    assert row["duration_s"] == pytest.approx(270 * 1001 / 24000, abs=0.01)
    # shots [0,98) [98,154) [154,200) [200,270); the third is 1.9 s, under min_clip_s; frame 0
    # is black (a leader before the first picture): in no clip
    assert spans(row) == [(1, 98), (98, 154), (200, 270)]
    res = extract(row, tmp_path)
    assert [r["error"] for r in res] == [None] * 3
    assert extracted_frames(Path(res[0]["clip_path"])) == (97, Fraction(24000, 1001))


def test_a_stalled_decoder_fails_its_item_not_the_run(cases, monkeypatch):
    """A decoder call that never returns (a test double stands in for the hung FFmpeg call;
    the real decode path is everything around it) becomes an error row with code `timeout`
    after [decode] stall_timeout_s, and the stage goes on to the next item."""
    import threading
    import time

    from curation.media import decode

    d, _ = cases
    release = threading.Event()
    real = decode._decode

    def stuck(uri, *a, **k):
        if uri.endswith("insert.mp4"):
            release.wait(60)
        yield from real(uri, *a, **k)

    monkeypatch.setattr(decode, "_decode", stuck)
    cfg = load_config(overrides={"decode": {"stall_timeout_s": 1.0}})
    stage = SplitAndScore(cfg)
    stage.setup()
    t0 = time.monotonic()
    rows = group_sources(stage(ProbeSources(cfg)(pa.table({"source": [str(d / "insert.mp4"), str(d / "stub_start.mp4")]}))))
    release.set()
    assert time.monotonic() - t0 < 20
    assert (rows[0]["status"], rows[0]["error_code"]) == ("error", "timeout")
    assert "decoder stalled" in rows[0]["error"]
    assert rows[1]["status"] == "ok" and spans(rows[1]) == [(3, 100)]


def test_pipes_folders_and_dangling_links_named_explicitly_are_error_rows(tmp_path):
    """Opening a FIFO would block forever: anything that is not a regular file is refused
    before FFmpeg or Pillow sees it."""
    import os

    from curation.media.probe import probe_source

    os.mkfifo(tmp_path / "pipe.mp4")
    (tmp_path / "folder.mp4").mkdir()
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    got = {p: probe_source(str(tmp_path / p)) for p in ("pipe.mp4", "folder.mp4", "dangling.jpg")}
    assert {p: (r["status"], r["error_code"]) for p, r in got.items()} == {
        "pipe.mp4": ("error", "not_a_file"),
        "folder.mp4": ("error", "not_a_file"),
        "dangling.jpg": ("error", "not_found"),
    }
    assert "pipe, device or socket" in got["pipe.mp4"]["error"]


def test_a_stalled_decoder_fails_extraction_of_its_source_not_the_run(cases, stage, tmp_path, monkeypatch):
    import threading
    import time

    from curation.outputs import extract_clips

    d, _ = cases
    row = analyzed(d / "stub_start.mp4", stage)
    release = threading.Event()
    real = extract_clips.decoded_frames

    def stuck(container, *args, **kwargs):
        for k, item in enumerate(real(container, *args, **kwargs)):
            if k == 10:
                release.wait(60)  # a decoder call that never returns, mid-clip
            yield item

    monkeypatch.setattr(extract_clips, "decoded_frames", stuck)
    t0 = time.monotonic()
    (out,) = extract_video(row["source"], row["clips"], tmp_path, ExtractConfig(), stall_timeout_s=1.0)
    release.set()
    assert time.monotonic() - t0 < 20
    assert out["clip_path"] is None and "decoder stalled" in out["error"]
    assert not list(tmp_path.glob("*.mp4"))  # nothing with a final name; the temporary is removed

    # The flow's extraction step takes the timeout from [decode] stall_timeout_s, and first
    # removes the partial clip files a killed extraction left (only names it writes).
    from flows.curate import extract_step

    release.clear()
    out_dir = tmp_path / "out"
    clips_dir = out_dir / "clips"
    clips_dir.mkdir(parents=True)
    left = [clips_dir / ".abc_0_98.mp4.tmp-4242", clips_dir / ".abc_0_1.jpg.tmp-7"]
    kept = [clips_dir / ".abc_0_98.mp4.tmp-x", clips_dir / "notes.txt"]
    for p in left + kept:
        p.write_bytes(b"partial")
    decided = pa.Table.from_pylist([{**c, "source": row["source"], "media_type": "video", "status": "accepted"} for c in row["clips"]])
    # (captions off: with them on, extraction is the caption stream's first stage: flows/captions.py)
    cfg = load_config(overrides={"decode": {"stall_timeout_s": 1.0}, "runtime": {"executor": "local"}, "caption": {"enabled": False}})
    t0 = time.monotonic()
    (res,) = extract_step.fn(decided, str(out_dir), cfg).to_pylist()
    release.set()
    assert time.monotonic() - t0 < 20  # the default timeout is minutes
    assert res["clip_path"] is None and "decoder stalled" in res["error"]
    assert not any(p.exists() for p in left) and all(p.exists() for p in kept)


# ---- issue 18, round 3: media kinds from public bug reports ----------------------------------


def decided_clips(paths: list[Path], stage: SplitAndScore) -> dict[str, dict]:
    """Analyse and decide (default thresholds): {file name: its first clip row}."""
    from curation.decisions.decide import decide
    from curation.core.manifest import split_rows

    _, clips = split_rows(stage(ProbeSources(load_config())(pa.table({"source": [str(p) for p in paths]}))))
    rows, _ = decide(clips, load_config().decide)
    out: dict[str, dict] = {}
    for r in rows.to_pylist():
        out.setdefault(Path(r["source"]).name, r)
    return out


def test_16bit_greyscale_png_is_the_photograph_not_white(tmp_path, stage):
    """A 16-bit greyscale PNG (Pillow mode I;16) is the photograph it holds, for every
    consumer: the tags, the frames the model stages and captioner get, and the extracted
    image that is sharded and trained on match the same photograph saved at 8 bits.
    Pillow's convert("RGB") clips I;16 at 255: the picture was pure white, rejected as blurry
    lecture, and with those tags kept it went on to captioning, shards and training."""
    from PIL import Image
    from skimage import data

    from curation.outputs.extract_clips import extract_image
    from curation.core.frames import FRAMES, FRAMES_SHAPE
    from curation.media.images import read_image

    camera = data.camera()
    Image.fromarray(camera.astype(np.uint16) * 257).save(tmp_path / "camera16.png")
    Image.fromarray(camera).save(tmp_path / "camera8.png")
    assert Image.open(tmp_path / "camera16.png").mode == "I;16"
    assert np.array_equal(read_image(str(tmp_path / "camera16.png")), np.repeat(camera[..., None], 3, -1))

    got = decided_clips([tmp_path / "camera16.png", tmp_path / "camera8.png"], stage)
    deep, flat = got["camera16.png"], got["camera8.png"]
    assert deep["status"] == "accepted", deep["reject_reasons"]
    for key in ("sharpness", "text_area", "border_frac", *(k for k in deep if k.startswith("neg_") and k != "neg_tags")):
        assert deep[key] == pytest.approx(flat[key]), key
    probed = ProbeSources(load_config())(pa.table({"source": [str(tmp_path / "camera16.png")]}))
    (clip,) = [c for c in group_sources(stage(probed))[0]["clips"]]
    shape = clip[FRAMES_SHAPE]
    pictured = np.frombuffer(clip[FRAMES], np.uint8).reshape(shape)
    assert 60 < pictured.mean() < 200  # the photograph (mean 118), not a white field

    (tmp_path / "clips").mkdir()
    res = extract_image(str(tmp_path / "camera16.png"), {"clip_id": "c16_0_1"}, tmp_path / "clips", ExtractConfig())
    written = np.asarray(Image.open(res["clip_path"]).convert("L"), np.float32)
    ref = np.asarray(Image.fromarray(camera).resize(written.shape[::-1], Image.BILINEAR), np.float32)
    assert abs(written.mean() - camera.mean()) < 3 and np.abs(written - ref).mean() < 12


def test_transparent_area_is_composited_over_white(tmp_path, stage):
    """Transparent pixels are composited over white (curation/media/images.py says why), never shown
    as their hidden RGB: a cut-out whose transparent third hides black was a black bar, read
    as letterboxing and rejected as low quality. RGBA, grey+alpha and a palette image with a
    transparent index all come out the same way."""
    from PIL import Image
    from skimage import data

    from curation.outputs.extract_clips import extract_image
    from curation.media.images import read_image

    photo = data.astronaut()  # 512x512 RGB
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    rgba[:, :170] = 0  # transparent, and black underneath
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    la = np.dstack([photo[..., 1], rgba[..., 3]])
    Image.fromarray(la, "LA").save(tmp_path / "cutout_la.png")
    pal = Image.fromarray(photo).quantize(255)
    idx = np.asarray(pal).copy()
    idx[:, :170] = 255  # the transparent palette entry, black in the palette
    pal_img = Image.fromarray(idx, "P")
    pal_img.putpalette(pal.getpalette()[: 255 * 3] + [0, 0, 0])
    pal_img.save(tmp_path / "cutout_p.png", transparency=255)

    for name in ("cutout.png", "cutout_la.png", "cutout_p.png"):
        rgb = read_image(str(tmp_path / name))
        assert rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8, name
        assert (rgb[:, :170] == 255).all(), name  # the background, not the hidden black
        assert rgb[:, 200:].std() > 20, name  # the photograph itself is kept
    got = decided_clips([tmp_path / "cutout.png"], stage)["cutout.png"]
    assert got["border_frac"] == 0.0
    assert "neg:low_quality" not in got["reject_reasons"], got["reject_reasons"]
    (tmp_path / "clips").mkdir()
    res = extract_image(str(tmp_path / "cutout.png"), {"clip_id": "a_0_1"}, tmp_path / "clips", ExtractConfig())
    assert np.asarray(Image.open(res["clip_path"]))[:, :150].min() > 240


def test_greyscale_photographs_are_not_lectures(tmp_path, stage):
    """A greyscale photograph is a photograph: the lecture tag stays under 0.5 on scikit-image's
    real grey photographs and on colour photographs turned grey, as images and as still
    video, while a greyscale slide is still a lecture. (The 4-bit colour cube has 16 cells on
    its grey axis, so every grey photo counted as "a few colours", 3-11, like a slide.)"""
    import cv2
    from PIL import Image
    from skimage import data

    from bench.realset import slide

    greys = {n: getattr(data, n)() for n in ("camera", "coins", "moon", "brick", "grass", "gravel")}
    greys |= {f"{n}_grey": cv2.cvtColor(getattr(data, n)(), cv2.COLOR_RGB2GRAY) for n in ("astronaut", "chelsea", "coffee")}
    paths = []
    for name, img in greys.items():
        Image.fromarray(img).save(tmp_path / f"{name}.png")
        paths.append(tmp_path / f"{name}.png")
    still = cv2.resize(greys["camera"], (480, 480), interpolation=cv2.INTER_AREA)
    paths.append(hostile.encode(tmp_path / "camera_still.mp4", [np.dstack([still] * 3)] * 60, options={"preset": "veryfast"}))
    grey_slide = cv2.cvtColor(slide(), cv2.COLOR_RGB2GRAY)
    Image.fromarray(grey_slide).save(tmp_path / "grey_slide.png")
    paths.append(tmp_path / "grey_slide.png")
    got = decided_clips(paths, stage)
    lecture = {n: round(r["neg_lecture"], 2) for n, r in got.items()}
    assert all(v < 0.5 for n, v in lecture.items() if n != "grey_slide.png"), lecture
    assert all("lecture" not in r["neg_tags"] for n, r in got.items() if n != "grey_slide.png"), lecture
    assert lecture["grey_slide.png"] >= 0.5


def test_a_frame_too_small_to_score_has_its_own_reason(tmp_path, stage):
    """A 2400x10 strip: optical flow (OpenCV's DIS) raised on it and the row read
    `error_code = decode`, as if the file were broken. Frames and images whose short side is
    under [decode] min_side are refused from their header as `too_small`; a frame that
    shrinks mid-stream is refused by the motion scorer the same way."""
    from PIL import Image

    from curation.analysis.score_motion import MotionConfig
    from curation.media.container import MediaError
    from curation.analysis.score_motion import MotionScorer
    from curation.corpora.synthetic import texture

    strip = [np.ascontiguousarray(np.roll(texture(10, 2400, 70), 3 * k, axis=1)) for k in range(75)]
    hostile.encode(tmp_path / "strip.mp4", strip, options={"preset": "ultrafast"})
    Image.fromarray(strip[0]).save(tmp_path / "strip.png")
    for name in ("strip.mp4", "strip.png"):
        row = analyzed(tmp_path / name, stage)
        assert (row["status"], row["error_code"]) == ("error", "too_small"), (name, row["error"])
        assert "2400x10" in row["error"] and "[decode] min_side" in row["error"]
    scorer = MotionScorer(MotionConfig())
    with pytest.raises(MediaError, match="too small to score") as e:
        scorer.score([s[..., 0] for s in strip[:3]], [0.0, 0.3, 0.6])
    assert e.value.code == "too_small"
    edge = [np.ascontiguousarray(texture(32, 2400, 71)[..., 0])] * 3  # 32 px: the smallest DIS takes at any width
    assert scorer.score(edge, [0.0, 0.3, 0.6]).motion_score == pytest.approx(0.0, abs=1e-3)


def test_stream_copy_cut_from_a_non_keyframe_is_25_fps_constant(cases, stage, tmp_path):
    """`ffmpeg -ss 2.5 -i in.mp4 -t 2 -c copy`: an edit list hides frames with negative
    times, and the cut, made in decode order, ends in two frames after gaps (1.96, 2.04,
    2.12). It read 24.07 fps and VFR, and the clip was written at 24 fps; the orphans are
    left out (curation/media/decode.py `_Reorder.flush`): 50 frames, 25 fps, constant, in analysis
    and in the extracted clip alike."""
    d, _ = cases
    with av.open(str(d / "copy_cut.mp4")) as c:  # the input is of the kind: edit list, negative times, gaps
        vs = c.streams.video[0]
        assert min(p.dts for p in c.demux(vs) if p.dts is not None) < 0
        c.seek(0)
        times = [f.time for f in c.decode(video=0)]
    assert b"elst" in (d / "copy_cut.mp4").read_bytes()
    assert np.round(np.diff(times)[-2:], 3).tolist() == [0.08, 0.08]
    row = analyzed(d / "copy_cut.mp4", stage)
    assert (row["fps"], row["vfr"], row["num_frames"]) == (pytest.approx(25.0), False, 50)
    (res,) = extract(row, tmp_path)
    assert extracted_frames(Path(res["clip_path"])) == (50, 25)


@pytest.mark.parametrize("name", ["vfr_drop.mp4", "recording_gap.mp4"])
def test_frame_rate_drop_and_recording_gap_are_one_shot(tmp_path_factory, stage, name):
    """Phone footage dropping from 30 to 15 fps mid-shot (the same pan moves twice as far
    between frames) read as a shot boundary plus a "gradual transition" whose frames were
    thrown away (3 shots, one clip (0, 76) of 112 frames); a 0.4 s recording gap in a 30 fps
    shot cut it in two. The timeline is right (the times are the stored ones); the detector
    compared consecutive frames as if they were one nominal frame apart. Now a frame's change
    is measured against the changes around it (a rate drop doubles them all, so none stands
    out), and after a gap of more than 3 nominal frame durations (Frame.step) against the
    picture before moved by its phase-correlated shift, with no dissolve fitted across the
    gap (tests/curation/test_split_scenes.py: a cut at a gap still cuts)."""
    d = tmp_path_factory.getbasetemp() / "vfr_cases"
    if not d.exists():
        d.mkdir()
        hostile.row_vfr_drop(d)
    row = analyzed(d / name, stage)
    check(row, hostile.VFR_EXPECT[name])
    assert row["num_shots"] == 1
