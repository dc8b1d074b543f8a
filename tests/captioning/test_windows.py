"""Caption frames for long clips: Cosmos-Curate's windows, and the frames the caption stream
prepares on CPU workers being exactly the ones the caption stage would read itself."""

from __future__ import annotations

import pyarrow as pa
import pytest

from captioning.frames import read_windows, windows


@pytest.mark.parametrize("total,want", [
    (100, [(0, 100)]),                        # shorter than a window: one
    (256, [(0, 256)]),
    (300, [(0, 300)]),                        # a 44-frame remainder joins the window
    (384, [(0, 256), (256, 128)]),            # half a window: its own
    (600, [(0, 256), (256, 344)]),            # 88 < 128: joins the last
    (700, [(0, 256), (256, 256), (512, 188)]),
])
def test_windows_follow_cosmos_curate(total, want):
    assert windows(total, 256) == want
    assert sum(n for _, n in want) == total


def test_prepared_frames_are_the_ones_the_stage_reads_from_the_file(clips_root, tmp_path):
    import dataclasses
    import shutil

    from captioning.caption_clips import TODO, CaptionClips, _Row
    from captioning.prepare import PrepareFrames
    from curation.core.config import load_config

    base = load_config(profile="tiny").caption
    for policy in ("spread", "windows"):
        cfg = dataclasses.replace(base, policy=policy, window_frames=16, max_frames=3)
        (tmp_path / "clips").mkdir(exist_ok=True)
        shutil.copy(clips_root / "clips" / "v0.mp4", tmp_path / "clips" / "v0.mp4")
        rows = pa.table({"clip_id": ["v0"], "clip_path": ["clips/v0.mp4"], "media_type": ["video"], TODO: [True]})
        prepared = PrepareFrames(cfg, str(tmp_path))(rows)
        direct = read_windows(tmp_path / "clips" / "v0.mp4", cfg.fps, cfg.max_frames, cfg.max_pixels,
                              16 if policy == "windows" else None)
        (tmp_path / "clips" / "v0.mp4").unlink()  # the caption stage works from the prepared frames alone
        for source in ("auto", "clip"):
            stage = CaptionClips(dataclasses.replace(cfg, frame_source=source), str(tmp_path))
            row = _Row("v0")
            stage._frames(prepared, 0, row)
            got = [u.media for u in row.units]
            assert len(got) == len(direct) and (policy == "spread") == (len(got) == 1), (policy, source)
            for a, b in zip(got, direct):
                assert (a.frame_indices, a.start_frame, a.total_frames, a.source_fps) == \
                    (b.frame_indices, b.start_frame, b.total_frames, b.source_fps), (policy, source)
                assert (a.frames == b.frames).all()
