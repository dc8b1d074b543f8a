"""Progress lines on a timer: sources (or clips) done/total, failed, clips, clips/s, ETA,
while a step runs, whatever the manifest parts are doing."""

from __future__ import annotations

import logging
import time

import pyarrow as pa
import pytest

import flows.progress as progress_mod
from curation.core.stage import Stage
from flows.curate import score_sources  # imports Prefect, whose logging setup replaces root's handlers: not inside a test
from flows.progress import Live, Progress, count_captioned, count_extracted, count_scored


def test_progress_line_counts_and_estimates(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: now[0])
    p = Progress("scoring", total=10, log=logging.getLogger("videomill.test"), done=2, clips=5, failed=1)
    p.add(2, 8, 0)
    now[0] = 106.0
    p.add(2, 4, 1)
    # 4 sources scored in 6 s -> the 4 left at 0.667/s take 6 s; 12 new clips / 6 s = 2 clips/s.
    assert p.line() == "scoring: 6/10 sources (2 failed), 17 clips, 2.00 clips/s, ETA 6 s"
    c = Progress("captioning", total=4, log=logging.getLogger("videomill.test"), unit="clips")
    assert c.line() == "captioning: 0/4 clips (0 failed), 0.00 clips/s, ETA ? (waiting for the first results)"


def test_scoring_with_model_stages_counts_their_clips_apart(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: now[0])
    p = Progress("scoring", total=4, log=logging.getLogger("videomill.test"), model_stages=True)
    now[0] = 10.0
    p.add(4, 20, 1)  # every source analysed...
    assert p.line() == "scoring: 4/4 sources (1 failed), 20 clips (0 through the model stages), 2.00 clips/s, ETA ?"
    p.add_scored(0, 10, 0)  # ...half the clips through the model stages: 10 more at 1 clip/s
    assert p.line().endswith("20 clips (10 through the model stages), 2.00 clips/s, ETA 10 s")
    p.set(4, 20, 1)
    assert p.line().endswith("20 clips (20 through the model stages), 2.00 clips/s, ETA 0 s")


def test_lines_come_on_the_timer_and_once_at_the_end(caplog):
    log = logging.getLogger("videomill.test")
    with caplog.at_level(logging.INFO, logger="videomill.test"):
        with Progress("extraction", total=3, log=log, unit="clips", every_s=0.05) as p:
            time.sleep(0.3)
            p.add(1, 1, 0)
            time.sleep(0.3)
        lines = [r.getMessage() for r in caplog.records]
    assert len(lines) >= 4, lines  # nothing finished for a while: the line comes anyway
    assert lines[0].startswith("extraction: 0/3 clips") and lines[-1].startswith("extraction: 1/3 clips")


def test_counts_of_each_step():
    heads = pa.array([{"status": "ok"}, None, {"status": "error"}, {"status": "ok"}],
                     pa.struct([("status", pa.string())]))
    scored = pa.table({"clip_id": ["a", "b", None, None], "source_row": heads})
    assert count_scored(scored) == (3, 2, 1)  # 3 sources (one failed, one without clips), 2 clips
    assert count_extracted(pa.table({"clip_id": ["a", "b"], "clip_path": ["x", None], "error": [None, "boom"]})) == (2, 1, 1)
    assert count_captioned(pa.table({"clip_id": ["a", "b"], "caption_error": [None, "refusal"]})) == (2, 1, 1)


class Slow(Stage):
    """A source stage that takes a while per source (a long video's analysis, say)."""

    reads = ("source",)

    def __call__(self, batch: pa.Table) -> pa.Table:
        time.sleep(0.4)
        return batch


def test_scoring_reports_sources_before_any_part_is_written(tmp_path, monkeypatch, caplog):
    """A small run writes one manifest part, at the end: the progress line still moves."""
    from curation.corpora import synthetic
    from curation.core.config import load_config
    from curation.core.manifest import Layout

    sources = []
    for i in range(5):
        p = tmp_path / f"v{i}.mp4"
        synthetic.write_video(p, synthetic.moving(24, (96, 64), (1.0, 0.5), seed=i), 12)
        sources.append(str(p))
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    sources.append(str(tmp_path / "bad.mp4"))
    cfg = load_config(profile="tiny", overrides={"models": {"enabled": False, "ocr": False},
                                                  "runtime": {"executor": "local", "partition_size": 10_000}})
    layout = Layout.at(tmp_path / "out")
    layout.make()
    monkeypatch.setattr(progress_mod, "EVERY_S", 0.2)
    with caplog.at_level(logging.INFO, logger="videomill"):
        result = score_sources(sources, layout, cfg, extra_source_stages=[Slow()])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("scoring:")]
    middle = [ln for ln in lines if not ln.startswith(("scoring: 0/6", "scoring: 6/6"))]
    assert middle, lines  # sources counted as they finish, not when the one part is written
    assert lines[-1].startswith("scoring: 6/6 sources (1 failed), ") and result["scored"] == 6
    assert len(list(layout.sources.glob("part-*.parquet"))) == 1

    # A resume starts from what OUT holds: the failed source is still counted as failed.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="videomill"):
        score_sources(sources, layout, cfg)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("scoring:")]
    assert lines[-1].startswith("scoring: 6/6 sources (1 failed), "), lines


@pytest.mark.parametrize("total", [0])
def test_nothing_to_do_says_nothing(caplog, total):
    with caplog.at_level(logging.INFO, logger="videomill.test"):
        with Progress("captioning", total=total, log=logging.getLogger("videomill.test"), unit="clips", every_s=0.01):
            time.sleep(0.05)
    assert not caplog.records


def test_live_adds_what_count_says():
    got = []
    Live(count_extracted, lambda *c: got.append(c))(pa.table({"clip_id": ["a"], "clip_path": ["x"], "error": [None]}))
    assert got == [(1, 1, 0)]
