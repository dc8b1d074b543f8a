"""Extraction is frame-exact, applies rotation, resamples to constant fps, and is atomic."""

from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pytest

from curation.outputs.extract_clips import EXTRACT_INPUT, ExtractClips, ExtractConfig, output_fps
from curation.corpora.synthetic import COUNTER_BITS as BITS
from curation.corpora.synthetic import counter_frames, write_video



def read_counters(path, rotation=0):
    out = []
    with av.open(str(path)) as c:
        for fr in c.decode(c.streams.video[0]):
            g = fr.to_ndarray(format="gray").astype(int)
            g = np.rot90(g, -rotation // 90)  # back to the coded orientation
            w = g.shape[1]
            out.append(sum(1 << b for b in range(BITS) if g[:, b * w // BITS + w // (2 * BITS)].mean() > 128))
    return out


def run(source, clips, tmp_path, **cfg):
    table = pa.Table.from_pylist([{"source": str(source), "media_type": "video", "clips": clips}], schema=EXTRACT_INPUT)
    stage = ExtractClips(ExtractConfig(**cfg), str(tmp_path / "clips"))
    stage.setup()
    return {r["clip_id"]: r for r in stage(table).to_pylist()}


def clip(cid, start, end, fps=25.0):
    return {"clip_id": cid, "start_s": start / fps, "end_s": end / fps, "fps": fps}


def test_frame_exact_clips_in_one_pass(tmp_path):
    src = write_video(tmp_path / "count.mp4", counter_frames(150), 25)
    res = run(src, [clip("a", 10, 60), clip("b", 60, 61 + 40), clip("c", 130, 150)], tmp_path)
    assert read_counters(res["a"]["clip_path"]) == list(range(10, 60))
    assert read_counters(res["b"]["clip_path"]) == list(range(60, 101))
    assert read_counters(res["c"]["clip_path"]) == list(range(130, 150))
    assert not [p for p in (tmp_path / "clips").iterdir() if p.name.startswith(".")]


def test_target_fps_and_rotation(tmp_path):
    src = write_video(tmp_path / "rot.mp4", counter_frames(100), 25, rotation=90)
    res = run(src, [clip("r", 0, 100)], tmp_path, target_fps=12.5)
    path = Path(res["r"]["clip_path"])
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert (s.width, s.height) == (144, 256)  # portrait: rotation baked in
        assert float(s.average_rate) == 12.5
    assert read_counters(path, rotation=90) == list(range(0, 100, 2))


def test_vfr_source_becomes_constant_rate_with_true_timing(tmp_path):
    # 60 frames alternately 0.04 s and 0.12 s apart: 4.76 s at an average of 12.6 fps.
    times = np.cumsum([0] + [0.04 if i % 2 == 0 else 0.12 for i in range(59)])
    src = write_video(tmp_path / "vfr.mkv", counter_frames(60), 25, frame_times=times.tolist())
    end = float(times[-1] + 0.08)
    res = run(src, [{"clip_id": "v", "start_s": 0.0, "end_s": end, "fps": 60 / end}], tmp_path)
    got = read_counters(res["v"]["clip_path"])
    fps = output_fps(60 / end, None)
    assert fps == round(60 / end, 2)  # not near a standard rate: kept, to 0.01 fps
    assert len(got) == round(end * fps)
    # Output tick k at time k/fps shows the last source frame shown at or before that time:
    # some source frames repeat, some are skipped, and the timing of motion is kept.
    want = [int(np.searchsorted(times, k / fps + 1e-4, side="right") - 1) for k in range(len(got))]
    assert got == want
    assert len(set(got)) < len(got)


def test_existing_clip_files_are_kept(tmp_path):
    src = write_video(tmp_path / "count.mp4", counter_frames(50), 25)
    first = run(src, [clip("a", 0, 50)], tmp_path)
    path = Path(first["a"]["clip_path"])
    mtime = path.stat().st_mtime_ns
    run(src, [clip("a", 0, 50)], tmp_path)
    assert path.stat().st_mtime_ns == mtime


def test_unreadable_source_gives_error_rows(tmp_path):
    bad = tmp_path / "gone.mp4"
    bad.write_bytes(b"not a video")
    res = run(bad, [clip("x", 0, 10)], tmp_path)
    assert res["x"]["clip_path"] is None and "extraction failed" in res["x"]["error"]


@pytest.mark.parametrize("fps, target, want", [(29.91, None, 30000 / 1001), (23.95, None, 24000 / 1001), (25.06, None, 25.0), (17.3, None, 17.3), (30.0, 8.0, 8.0)])
def test_output_fps(fps, target, want):
    assert output_fps(fps, target) == want


def test_prune_keeps_exactly_the_accepted_clips_files(tmp_path):
    from curation.outputs.extract_clips import prune_clips

    for name in ("a.mp4", "b.mp4", "c.jpg", ".d.mp4.tmp-12"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    assert prune_clips(tmp_path, {"a.mp4", "c.jpg"}) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".d.mp4.tmp-12", "a.mp4", "c.jpg", "sub"]
