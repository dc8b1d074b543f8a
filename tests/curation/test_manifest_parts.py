"""Manifest parts as the unit of resume: only committed parts are read, and `settle` leaves
exactly the complete sources, so a crash anywhere can never duplicate or orphan a clip."""

from __future__ import annotations

import pyarrow as pa

from curation.core.manifest import Layout, committed_parts, read_scores, read_sources, settle, split_rows, write_part, write_table_atomic
from curation.core.schema import SOURCE_ROW, analyzed_clip_schema, to_table


def source_rows(name: str, n_clips: int) -> list[dict]:
    """A source's rows as the analysis emits them: its clips, the first carrying the source row."""
    head = {"source": name, "source_id": name, "media_type": "video", "status": "ok", "num_clips": n_clips}
    if not n_clips:
        return [{"source": name, "media_type": "video", SOURCE_ROW: head}]
    rows = [{"clip_id": f"{name}_{k}", "source": name, "media_type": "video", "motion_score": 0.1 * k} for k in range(n_clips)]
    rows[0][SOURCE_ROW] = head
    return rows


def batch(rows: list[dict]) -> pa.Table:
    return to_table(rows, analyzed_clip_schema())


def test_split_rows_drops_frames_and_keeps_one_source_row():
    s, c = split_rows(batch(source_rows("a", 2) + source_rows("b", 0)))
    assert s.column("source").to_pylist() == ["a", "b"] and s.column("num_clips").to_pylist() == [2, 0]
    assert c.column("clip_id").to_pylist() == ["a_0", "a_1"] and "frames" not in c.column_names


def test_settle_keeps_complete_sources_only(tmp_path):
    layout = Layout.at(tmp_path)
    layout.make()
    a, b, c = source_rows("a", 3), source_rows("b", 2), source_rows("c", 1)
    write_part(layout, batch(a[:2] + b[:1]))  # a: 2 of 3 clips here...
    write_part(layout, batch(a[2:] + source_rows("z", 0)))  # ...the third in another part: complete
    # b's second clip only reached a scores file whose marker never got written (a crash).
    _, clips = split_rows(batch(b[1:]))
    write_table_atomic(clips, layout.scores / "part-orphan.parquet")
    write_part(layout, batch(c))  # c written twice (a retried batch): one row too many
    write_part(layout, batch(c + source_rows("y", 0)))
    assert "part-orphan.parquet" not in committed_parts(layout)
    assert set(read_scores(layout).column("source").to_pylist()) == {"a", "b", "c"}  # the orphan is never read

    assert settle(layout) == {"a", "z", "y"}
    assert not (layout.scores / "part-orphan.parquet").exists()
    assert sorted(read_sources(layout).column("source").to_pylist()) == ["a", "y", "z"]
    assert sorted(read_scores(layout).column("clip_id").to_pylist()) == ["a_0", "a_1", "a_2"]

    # The rerun scores b and c again: every source complete, no clip twice.
    write_part(layout, batch(b + c))
    assert settle(layout) == {"a", "b", "c", "y", "z"}
    ids = read_scores(layout).column("clip_id").to_pylist()
    assert sorted(ids) == ["a_0", "a_1", "a_2", "b_0", "b_1", "c_0"]
    assert read_sources(layout).num_rows == 5


def test_a_retried_identical_batch_rewrites_the_same_part(tmp_path):
    layout = Layout.at(tmp_path)
    layout.make()
    rows = batch(source_rows("a", 2))
    first, again = write_part(layout, rows), write_part(layout, rows)
    assert first["part"] == again["part"] and committed_parts(layout) == [first["part"]]
    assert settle(layout) == {"a"}
