"""The run's progress line: sources done/total, clips, clips/s, ETA."""

from __future__ import annotations

import logging

import pyarrow as pa

from flows.curate import Progress


def test_progress_line_counts_parts_and_estimates(caplog, monkeypatch):
    import flows.curate as curate

    now = [100.0]
    monkeypatch.setattr(curate.time, "monotonic", lambda: now[0])
    p = Progress(total=10, done=2, log=logging.getLogger("videomill.test"), every_s=5.0)
    with caplog.at_level(logging.INFO, logger="videomill.test"):
        now[0] = 102.0
        p.update(pa.table({"part": ["a"], "sources": [2], "clips": [8], "errors": [1]}))
        assert not caplog.records  # at most one line every 5 s
        now[0] = 106.0
        p.update(pa.table({"part": ["b"], "sources": [2], "clips": [4], "errors": [0]}))
    (rec,) = caplog.records
    # 4 sources scored in 6 s -> the 4 left at 0.667/s take 6 s; 12 clips / 6 s = 2 clips/s.
    assert rec.getMessage() == "progress: 6/10 sources (1 failed), 12 clips, 2.00 clips/s, ETA 6 s"
