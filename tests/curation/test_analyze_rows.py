"""SplitAndScore emits clip rows: one per clip, model-stage frames on each, the source row once."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from PIL import Image

from curation.corpora import synthetic
from curation.analysis.analyze import SplitAndScore
from curation.core.config import load_config
from curation.core.frames import unpack_frames
from curation.media.probe import ProbeSources
from curation.core.schema import SOURCE_ROW, analyzed_clip_schema


def _run(paths, frames=True, overrides=None):
    cfg = load_config(overrides=overrides)
    stage = SplitAndScore(cfg, frames=frames)
    stage.setup()
    return cfg, stage(ProbeSources()(pa.table({"source": [str(p) for p in paths]})))


def test_clip_rows_carry_frames_and_one_source_row(make_video, tmp_path):
    # Two shots of 2.4 s (cut at frame 60) and 640x360: frames come out at short side 336.
    video = make_video("rows_two_shots", synthetic.with_cuts(120, (640, 360), [60], seed=5))
    image = tmp_path / "photo.png"
    Image.fromarray(synthetic.texture(200, 300, 1)).save(image)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    cfg, out = _run([video, image, broken], overrides={"frames": {"fps": 2.0, "max_frames": 3}})
    assert out.schema == analyzed_clip_schema()
    heads = [r for r in out.column(SOURCE_ROW).to_pylist() if r is not None]
    assert sorted(h["source"] for h in heads) == sorted(map(str, (video, image, broken)))
    by_src = {h["source"]: h for h in heads}
    assert by_src[str(broken)]["status"] == "error" and by_src[str(broken)]["num_clips"] == 0
    rows = out.to_pylist()
    vclips = [i for i, r in enumerate(rows) if r["source"] == str(video) and r["clip_id"]]
    assert len(vclips) == by_src[str(video)]["num_clips"] == 2
    assert rows[vclips[0]][SOURCE_ROW] is not None and rows[vclips[1]][SOURCE_ROW] is None
    for i in vclips:
        arr, times = unpack_frames(out, i)
        # 2.4 s at 2 fps is 5 samples, capped at max_frames = 3, spread over the clip.
        assert arr.shape == (3, 336, 598, 3) and arr.dtype == np.uint8
        assert all(rows[i]["start_s"] - 1e-6 <= t < rows[i]["end_s"] for t in times) and times == sorted(times)
        assert times[-1] - times[0] >= 1.0
    (img_row,) = [i for i, r in enumerate(rows) if r["source"] == str(image) and r["clip_id"]]
    arr, times = unpack_frames(out, img_row)
    assert arr.shape == (1, 200, 300, 3) and times == [0.0]  # smaller than short_side: never upscaled
    (broken_row,) = [r for r in rows if r["source"] == str(broken)]
    assert broken_row["clip_id"] is None


def test_frames_off_leaves_them_null(make_video):
    video = make_video("rows_two_shots", synthetic.with_cuts(120, (640, 360), [60], seed=5))
    _, out = _run([video], frames=False)
    assert out.num_rows == 2 and out.column("frames").null_count == 2


def test_any_exception_analysing_a_source_is_its_error_row(make_video, monkeypatch):
    import curation.analysis.analyze as analyze

    video = make_video("rows_two_shots", synthetic.with_cuts(120, (640, 360), [60], seed=5))

    def boom(*a, **k):
        raise KeyError("unexpected")

    monkeypatch.setattr(analyze, "analyze_video", boom)
    _, out = _run([video])
    (row,) = out.to_pylist()
    src = row[SOURCE_ROW]
    assert src["status"] == "error" and src["error_code"] == "exception"
    assert src["error"] == "KeyError: 'unexpected'" and "boom" in src["error_detail"]


def test_any_exception_probing_a_source_is_its_error_row(tmp_path, monkeypatch):
    import curation.media.probe as probe

    def boom(*args, **kwargs):
        raise ZeroDivisionError("odd container")

    monkeypatch.setattr(probe, "probe_video", boom)
    f = tmp_path / "x.mp4"
    f.write_bytes(b"\0" * 100)
    (row,) = ProbeSources()(pa.table({"source": [str(f)]})).to_pylist()
    assert row["status"] == "error" and row["error_code"] == "exception" and "ZeroDivisionError" in row["error"]
