"""Cut detection on synthetic shots with known cut frames, and clip windows."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from curation.corpora import synthetic
from curation.core.config import load_config
from curation.media.decode import iter_frames
from curation.analysis.split_scenes import ShotDetector, SplitConfig, Windower

# (size, shot lengths in frames, speed in px/frame): cut positions, shot lengths and motion
# speeds all vary, down to shots of 9 frames and static shots.
CUT_CASES = [
    ((320, 180), (25, 25, 25, 25, 25, 25), 2.0),
    ((320, 180), (12, 40, 18, 60, 10, 30), 8.0),
    ((480, 270), (50, 37, 63, 30), 0.5),
    ((480, 270), (20, 45, 15, 33, 40), 4.0),
    ((400, 224), (30, 30, 70, 22), 0.0),
    ((320, 180), (35, 9, 48, 28, 41), 6.0),
]


def detected_cuts(path) -> list[int]:
    """Frames where the split starts a new shot, over the decode pass's own thumbnails."""
    cfg = load_config()
    detector = ShotDetector(cfg.split)
    frames = iter_frames(
        str(path),
        thumb_width=cfg.decode.cut_thumb_width,
        work_short_side=cfg.decode.work_short_side,
        motion_fps=cfg.motion.sample_fps,
        tags_short_side=cfg.tags.short_side,
        tags_fps=cfg.tags.sample_fps,
    )
    found = [t for f in frames for t in detector.push(f.index, f.thumb)]
    return [t.end for t in found + detector.finish()]


def true_cuts(lengths) -> list[int]:
    return [int(c) for c in np.cumsum(lengths)[:-1]]


@pytest.fixture(scope="module")
def cut_videos(make_video):
    out = []
    for k, (size, lengths, speed) in enumerate(CUT_CASES):
        cuts = true_cuts(lengths)
        frames = synthetic.with_cuts(sum(lengths), size, cuts, speed=speed, seed=k)
        out.append((make_video(f"cuts_{k}", frames), cuts))
    return out


def test_cuts_found_within_one_frame(cut_videos):
    found = missed = false = 0
    report = []
    for path, cuts in cut_videos:
        det = detected_cuts(path)
        hits = [c for c in cuts if any(abs(c - d) <= 1 for d in det)]
        found += len(hits)
        missed += len(cuts) - len(hits)
        false += sum(not any(abs(c - d) <= 1 for c in cuts) for d in det)
        report.append(f"{path.name}: true {cuts} detected {det}")
    total = found + missed
    assert found / total >= 0.95, "\n".join(report)
    assert false <= 0.05 * total, "\n".join(report)


@pytest.mark.parametrize("speed", [(8.0, 0.0), (16.0, 4.0), (32.0, 8.0)], ids=lambda s: f"{s[0]:g}px")
def test_fast_pan_is_not_a_cut(make_video, speed):
    # 32 px/frame is a tenth of the width per frame, faster than any usable pan.
    path = make_video(f"pan_{speed[0]:g}", synthetic.moving(100, (320, 180), speed, seed=3))
    assert detected_cuts(path) == []


def test_clips_start_at_cuts(make_video, analyze):
    lengths = (30, 20, 45, 25)
    cuts = true_cuts(lengths)
    path = make_video("clip_starts", synthetic.with_cuts(sum(lengths), (320, 180), cuts, speed=3.0, seed=7))
    row = analyze(path, {"split": {"min_clip_s": 0.5}})
    assert row["num_shots"] == len(cuts) + 1
    assert [c["start_frame"] for c in row["clips"]] == [0, *cuts]
    assert [c["end_frame"] for c in row["clips"]] == [*cuts, sum(lengths)]


# --- Windower ---------------------------------------------------------------------------


def windows(n: int, cuts=(), fps: float = 25.0, **cfg):
    """Windows over `n` frames at `fps` with cuts at the given frames."""
    w = Windower(SplitConfig(**{"min_clip_s": 2.0, "max_clip_s": 10.0, **cfg}))
    out = []
    for i in range(n):
        out += w.push(i, i / fps, i in cuts)
    out += w.finish(n, n / fps)
    return out


def test_long_shot_is_cut_into_windows_of_at_most_max():
    ws = windows(25 * 25)  # 25 s
    assert [(w.start, w.end) for w in ws] == [(0, 250), (250, 500), (500, 625)]
    assert all(w.end_s - w.start_s <= 10.0 + 1e-6 for w in ws)


def test_windows_are_frame_exact():
    # Every piece here is >= min_clip_s (the 2.0 s one exactly), so the windows tile the video.
    ws = windows(25 * 37, cuts={300, 610})
    assert [(w.start, w.end) for w in ws] == [(0, 250), (250, 300), (300, 550), (550, 610), (610, 860), (860, 925)]
    for a, b in itertools.pairwise(ws):
        assert a.end == b.start
        assert a.end_s == pytest.approx(b.start_s)
    for w in ws:
        assert w.end_s - w.start_s == pytest.approx((w.end - w.start) / 25.0)


def test_short_shot_is_dropped():
    # 1 s shot between two long ones: below min_clip_s, so no window covers frames 100-124.
    ws = windows(250, cuts={100, 125})
    assert [(w.start, w.end) for w in ws] == [(0, 100), (125, 250)]


def test_short_tail_is_dropped():
    ws = windows(25 * 21)  # 10 s + 10 s + a 1 s tail
    assert [(w.start, w.end) for w in ws] == [(0, 250), (250, 500)]


# --- hard motion is no boundary; transitions are in no clip ------------------------------


def moving_list(n: int, speed=(3.0, 1.0), seed: int = 20) -> list[np.ndarray]:
    return list(synthetic.moving(n, (320, 180), speed, seed=seed))


def transitions(path) -> list:
    cfg = load_config()
    det = ShotDetector(cfg.split)
    frames = iter_frames(str(path), thumb_width=cfg.decode.cut_thumb_width, work_short_side=cfg.decode.work_short_side,
                         motion_fps=cfg.motion.sample_fps, tags_short_side=cfg.tags.short_side, tags_fps=cfg.tags.sample_fps)
    found = [t for f in frames for t in det.push(f.index, f.thumb)]
    return found + det.finish()


def brighten(f: np.ndarray, gain: float, lift: float = 0.0, rows: slice = slice(None)) -> np.ndarray:
    out = f.astype(np.float32)
    out[rows] = out[rows] * gain + lift
    return np.clip(out, 0, 255).astype(np.uint8)


def test_flashes_and_exposure_steps_are_not_cuts(make_video):
    # A one-frame flash, a two-frame flash, a flash caught by a rolling shutter on the top half
    # then the bottom half, and an exposure step up (clipping the highlights) then down.
    frames = moving_list(200)
    for k in (30,):
        frames[k] = brighten(frames[k], 1.7, 100)
    for k in (60, 61):
        frames[k] = brighten(frames[k], 1.7, 100)
    frames[90] = brighten(frames[90], 1.7, 100, slice(0, 90))
    frames[91] = brighten(frames[91], 1.7, 100, slice(90, None))
    frames[120:160] = [brighten(f, 1.8) for f in frames[120:160]]
    frames[160:] = [brighten(f, 0.6) for f in frames[160:]]
    assert transitions(make_video("flashes_exposure", frames)) == []


def test_whip_pan_is_not_a_boundary(make_video):
    # The camera rests, whips 40 px/frame for 6 frames (motion-blurred), rests again.
    tex = synthetic.texture(180, 1200, seed=21).astype(np.float32)
    x, frames = 10.0, []
    for k in range(120):
        v = 40.0 if 50 <= k < 56 else 0.5
        acc = sum(tex[:, int(x + v * j / 6) : int(x + v * j / 6) + 320] for j in range(6)) / 6
        frames.append(acc.clip(0, 255).astype(np.uint8))
        x += v
    assert transitions(make_video("whip_pan", frames)) == []


def test_a_hand_over_the_lens_is_no_boundary(make_video):
    # The frame goes dark over 8 frames, stays dark 10, comes back on the same scene, which the
    # camera has meanwhile panned over (a real photograph: noise textures have no scene to
    # recognise once shifted).
    from bench.realset import camera, pan, photo

    img = photo("astronaut.png")
    frames = list(camera(img, pan(img, 0.15, n=150), n=150, size=(320, 180)))
    cover = [0.0] * 40 + [k / 8 for k in range(1, 9)] + [1.0] * 10 + [1 - k / 8 for k in range(1, 9)] + [0.0] * 84
    dark = np.full_like(frames[0], (40, 28, 24))
    frames = [(f * (1 - c) + dark * c).astype(np.uint8) for f, c in zip(frames, cover)]
    assert transitions(make_video("hand_over_lens", frames)) == []


def test_a_fades_held_black_opens_no_clip(make_video, analyze):
    # Fade out over 10 frames, 12 frames of black, fade in over 10: frames 60-91 are the
    # transition; the clips are the shots on either side (less a frame of margin at most).
    a, b = moving_list(70, seed=23), moving_list(80, speed=(0.0, 2.0), seed=24)
    out = a[:60] + [(a[60 + k] * (1 - (k + 1) / 11)).astype(np.uint8) for k in range(10)]
    out += [np.zeros_like(a[0])] * 12 + [(b[k] * ((k + 1) / 11)).astype(np.uint8) for k in range(10)] + b[10:70]
    row = analyze(make_video("fade_held_black", out), {"split": {"min_clip_s": 1.0}})
    spans = [(c["start_frame"], c["end_frame"]) for c in row["clips"]]
    assert len(spans) == 2 and row["num_shots"] == 2, spans
    assert spans[0][0] == 0 and 58 <= spans[0][1] <= 60 and 92 <= spans[1][0] <= 94 and spans[1][1] == 152, spans


def test_a_long_dissolve_over_moving_shots_is_in_no_clip(make_video, analyze):
    # 30 frames of dissolve between two real photographs the camera pans fast across, in
    # opposite directions (noise textures are no stand-in: their block means barely differ).
    from bench.realset import camera, pan, photo

    ia, ib = photo("coffee.png"), photo("rocket.jpg")
    a = list(camera(ia, pan(ia, 0.35, n=110), n=110, size=(320, 180)))
    b = list(camera(ib, pan(ib, -0.3, n=110), n=110, size=(320, 180)))
    out = a[:70] + [(a[70 + k] * (1 - (k + 1) / 31) + b[k] * ((k + 1) / 31)).astype(np.uint8) for k in range(30)] + b[30:100]
    row = analyze(make_video("long_dissolve", out), {"split": {"min_clip_s": 1.0}})
    covered = {i for c in row["clips"] for i in range(c["start_frame"], c["end_frame"])}
    assert covered.isdisjoint(range(70, 100)) and row["num_shots"] == 2
    assert len(covered) >= 170 - 30 - 16  # the shots, less the dissolve's margin


def test_a_cut_at_a_recording_gap_is_still_a_cut(tmp_path):
    """A gap in the recording is compared with the picture before it moved by the camera's
    shift (tests/curation/test_media_cases.py: a 0.4 s pause in a pan is one shot); two
    different shots either side of the same gap stay two."""
    from curation.corpora import hostile

    size = (480, 270)
    times = [k / 30 for k in range(60)] + [2.4 + k / 30 for k in range(60)]
    frames = [*itertools.islice(hostile.timed_pan(times, size, 60.0, 51), 60),
              *itertools.islice(hostile.timed_pan(times[60:], size, 60.0, 52), 60)]
    path = tmp_path / "gap_cut.mp4"
    synthetic.write_video(path, iter(frames), 30, frame_times=times)
    cfg = load_config()
    detector = ShotDetector(cfg.split)
    found, steps = [], []
    for f in iter_frames(str(path), thumb_width=cfg.decode.cut_thumb_width, work_short_side=cfg.decode.work_short_side,
                         motion_fps=cfg.motion.sample_fps, tags_short_side=cfg.tags.short_side, tags_fps=cfg.tags.sample_fps):
        steps.append(f.step)
        found += detector.push(f.index, f.thumb, f.step)
    found += detector.finish()
    assert max(steps) > 10  # the gap reached the detector as one
    assert [(t.end, t.kind) for t in found] == [(60, "cut")]


@pytest.mark.parametrize("n", [1, 2, 4, 5])
def test_a_stream_of_a_few_frames_finishes(n):
    """An image is a 1-frame stream; a 2-4 frame video never reaches the cut test's lookahead:
    `finish` must still end (it looped forever on the first frame)."""
    cfg = load_config()
    detector = ShotDetector(cfg.split)
    rng = np.random.default_rng(3)
    for i in range(n):
        detector.push(i, rng.integers(0, 255, (36, 64, 3), np.uint8))
    assert all(t.end < n for t in detector.finish())
