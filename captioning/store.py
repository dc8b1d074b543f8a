"""Captions and judge answers on disk, keyed for resume.

* ``OUT/captions/<caption_key>/part-*.parquet``: `caption_key` hashes the model ids, prompt
  version, sampling, frame policy and budget (captioning/caption_clips.py `settings`).
* ``OUT/judge/<judge_key>/part-*.parquet``: the VLM-judged tags' answers (`vlm_*`), keyed by
  the model, the frames it sees and the questions (`judge_settings`), never by thresholds:
  `videomill decide` re-tunes them on the stored answers without asking again. Kept apart
  from the captions so that turning the judge on, or rewording a question, asks the judge
  and re-captions nothing.

Parts are written as blocks of clips complete (`WriteParts`, in the caption stream), each
atomically, named by a hash of its clip ids: a part is its own completion marker, so a killed
run loses at most the blocks in flight and a rerun generates nothing twice (`plan`: a clip with
a stored caption is not captioned again, one with stored answers is not judged again). A clip
the judge rejects has answers and no caption row: should a looser threshold accept it later,
it is captioned then, its stored answers reused. Changing [caption] gives a new key and a new
folder: captions are redone, scores are not (they live in manifest/scores).

The same caption text on `duplicate_min_clips` or more clips is flagged `duplicate` when the
captions are joined into the clips table, over the whole run.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from captioning import text as T
from captioning.caption_clips import (
    BUSY_S,
    GEN_TOKENS,
    CaptionConfig,
    OUTPUT_SCHEMA,
    WAIT_S,
    CaptionClips,
    caption_key,
    judge_key,
    judged_out,
)
from captioning.judge import JudgeConfig
from curation.core.manifest import Layout, lookup, read_dataset, write_table_atomic
from curation.core.schema import CAPTION_COLUMNS, JUDGE_COLUMNS, JUDGE_TAGS, judge_column
from curation.core.stage import Stage

log = logging.getLogger("videomill")
# (stages, rows, write, rows_per_part) -> each written part's counts: flows/run_ray.py
# `stream_table` or its twin flows/run_local.py `stream_table_local`.
Streamer = Callable[..., Iterator[pa.Table]]

CAPTION_STORE = pa.schema([pa.field("clip_id", pa.string()), *(OUTPUT_SCHEMA.field(c) for c in CAPTION_COLUMNS),
                           OUTPUT_SCHEMA.field(GEN_TOKENS)])
JUDGE_STORE = pa.schema([pa.field("clip_id", pa.string()), *(OUTPUT_SCHEMA.field(c) for c in JUDGE_COLUMNS)])
TODO = "caption_todo"  # a stream row the caption stage works on (captioning/caption_clips.py reads it)
# What the writer hands back per row: the extraction's result and the throughput figures.
RESULT = pa.schema([("clip_id", pa.string()), ("clip_path", pa.string()), ("error", pa.string()),
                    ("captioned", pa.bool_()), ("judged", pa.bool_()), (GEN_TOKENS, pa.int64()), (BUSY_S, pa.float64()),
                    (WAIT_S, pa.float64())])


def caption_dir(layout: Layout, cfg: CaptionConfig) -> Path:
    return layout.root / "captions" / caption_key(cfg)


def judge_dir(layout: Layout, cfg: CaptionConfig, judge: JudgeConfig) -> Path:
    return layout.root / "judge" / judge_key(cfg, judge)


def _unique(table: pa.Table) -> pa.Table:
    """One row per clip_id (a block written twice by a crash between its two parts: the first)."""
    ids = table.column("clip_id")
    if table.num_rows == len(pc.unique(ids)):
        return table
    rows = pa.table({"clip_id": ids, "_i": pa.array(range(table.num_rows), pa.int64())})
    first = rows.group_by("clip_id").aggregate([("_i", "min")]).column("_i_min")
    return table.take(pa.array(sorted(first.to_pylist()), pa.int64()))


def stored(layout: Layout, cfg: CaptionConfig) -> pa.Table:
    """Every caption row already written under this config's key, one per clip."""
    return _unique(read_dataset(caption_dir(layout, cfg), CAPTION_STORE))


def stored_judge(layout: Layout, cfg: CaptionConfig, judge: JudgeConfig | None) -> pa.Table:
    """Every judge row already written under this judge's key, one per clip (empty: judge off)."""
    if judge is None or not judge.enabled:
        return JUDGE_STORE.empty_table()
    return _unique(read_dataset(judge_dir(layout, cfg, judge), JUDGE_STORE))


def with_judge(clips: pa.Table, layout: Layout, cfg: CaptionConfig, judge: JudgeConfig | None) -> pa.Table:
    """`clips` with the judge columns filled from the store (null where not judged, or judge off)."""
    hit = lookup(clips.column("clip_id"), stored_judge(layout, cfg, judge), "clip_id")
    for c in JUDGE_COLUMNS:
        i = clips.schema.get_field_index(c)
        clips = clips.set_column(i, c, hit.column(c)) if i >= 0 else clips.append_column(c, hit.column(c))
    return clips


def plan(clips: pa.Table, layout: Layout, cfg: CaptionConfig, judge: JudgeConfig | None) -> pa.Table:
    """What the caption stage is to do for each of `clips` (the accepted ones), from the store:
    `caption_key` where its caption is stored, `judge_key` and the `vlm_*` answers where judged
    (answers null: the judge failed on it, `judge_error`; not asked again, as a failed caption
    is not), and `TODO`: judge it (judge on, not judged) or caption it (no stored caption, and
    its stored answers, if any, do not reject it). Columns: clip_id, caption_key, judge_key,
    vlm_*, TODO."""
    ids = clips.column("clip_id")
    have = lookup(ids, stored(layout, cfg).select(["clip_id", "caption_key"]), "clip_id").column("caption_key")
    out = pa.table({"clip_id": ids, "caption_key": have})
    on = judge is not None and judge.enabled
    answers = lookup(ids, stored_judge(layout, cfg, judge), "clip_id")
    for c in ("judge_key", *(judge_column(t) for t in JUDGE_TAGS)):
        out = out.append_column(c, answers.column(c))
    need_caption = pc.is_null(have).to_pylist()
    if on:
        judged = pc.is_valid(answers.column("judge_key")).to_pylist()
        rows = answers.select([judge_column(q.name) for q in judge.questions]).to_pylist()
        out_by_judge = [bool(judged_out({k.removeprefix("vlm_"): v for k, v in r.items()}, judge)) for r in rows]
        todo = [(not j) or (c and not o) for j, c, o in zip(judged, need_caption, out_by_judge)]
    else:
        todo = need_caption
    return out.append_column(TODO, pa.array(todo, pa.bool_()))


class WriteParts:
    """The caption stream's writer: one block of stage output rows -> a caption part (the rows
    captioned in it) and a judge part (the rows judged in it), each atomic, named by a hash of
    its clip ids; hands back `RESULT` rows. Picklable: it runs as a task where the block is."""

    def __init__(self, root: str, cfg: CaptionConfig, judge: JudgeConfig | None):
        layout = Layout.at(root)
        self.caption_dir = str(caption_dir(layout, cfg))
        self.judge_dir = str(judge_dir(layout, cfg, judge)) if judge is not None and judge.enabled else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        get = lambda c, t: batch.column(c) if c in batch.column_names else pa.nulls(n, t)  # noqa: E731
        # Only the caption stage's output is stored: rows it never saw (a stream with nothing to
        # caption has no caption stage) still carry the store's own keys, not new work.
        made = GEN_TOKENS in batch.column_names
        captioned, judged = (pc.and_(pc.is_valid(get(c, pa.string())), pa.scalar(made)) for c in ("caption_key", "judge_key"))
        for mask, where, schema in ((captioned, self.caption_dir, CAPTION_STORE), (judged, self.judge_dir, JUDGE_STORE)):
            rows = batch.filter(mask)
            if rows.num_rows and where:
                name = hashlib.sha1("\n".join(sorted(rows.column("clip_id").to_pylist())).encode()).hexdigest()[:16]
                write_table_atomic(rows.select(schema.names).cast(schema), Path(where) / f"part-{name}.parquet")
        return pa.table({"clip_id": batch.column("clip_id"), "clip_path": get("clip_path", pa.string()),
                         "error": get("error", pa.string()), "captioned": captioned, "judged": judged,
                         GEN_TOKENS: pc.fill_null(get(GEN_TOKENS, pa.int64()), 0), BUSY_S: get(BUSY_S, pa.float64()),
                         WAIT_S: get(WAIT_S, pa.float64())},
                        schema=RESULT)


def counts(results: Sequence[pa.Table], already: int = 0, setups: dict | None = None) -> dict:
    """The log/bench figures of a caption stream: its results (`RESULT` tables) and the
    runner's `setups` (its stateful stages set up: the caption stage's model loads)."""
    t = pa.concat_tables(results) if results else RESULT.empty_table()
    return {"already": already, "captioned": pc.sum(t.column("captioned")).as_py() or 0,
            "judged": pc.sum(t.column("judged")).as_py() or 0,
            "generated_tokens": pc.sum(t.column(GEN_TOKENS)).as_py() or 0,
            "model_loads": sum((setups or {}).values()),
            "busy_s": round(pc.sum(t.column(BUSY_S)).as_py() or 0.0, 3), "idle_s": round(pc.sum(t.column(WAIT_S)).as_py() or 0.0, 3)}


def caption_missing(clips: pa.Table, layout: Layout, cfg: CaptionConfig, stream: Streamer, judge: JudgeConfig | None = None,
                    prepare: Sequence[Stage] = ()) -> dict:
    """Judge and caption the accepted clips with a clip file the store lacks (their files
    already on disk), in one stream: `prepare` stages (frame preparation on CPU workers),
    the caption stage, the writer. -> counts for the log/bench."""
    todo = to_caption(clips)
    planned = plan(todo, layout, cfg, judge)
    rows = todo.select([c for c in todo.column_names if c in CaptionClips.reads + CaptionClips.timing or c.startswith("frames")])
    for c in planned.column_names[1:]:
        rows = rows.append_column(c, planned.column(c))
    already = rows.num_rows - (pc.sum(rows.column(TODO)).as_py() or 0)
    rows = rows.filter(rows.column(TODO))
    setups: dict = {}
    results = list(stream([*prepare, CaptionClips(cfg, str(layout.root), judge)], rows, WriteParts(str(layout.root), cfg, judge),
                          cfg.block_size, setups=setups))
    return counts(results, already, setups)


def to_caption(clips: pa.Table) -> pa.Table:
    """The clips a run captions: accepted ones with a clip file (or frames)."""
    mask = pc.and_(pc.equal(clips.column("status"), "accepted"), pc.is_valid(clips.column("clip_path")))
    return clips.filter(mask)


def join_captions(clips: pa.Table, layout: Layout, cfg: CaptionConfig) -> pa.Table:
    """The clips table with its caption columns filled from the store (null where none), and
    `duplicate` flagged on texts shared by `duplicate_min_clips` or more clips."""
    rows = {r["clip_id"]: r for r in stored(layout, cfg).to_pylist()}
    wanted = set(to_caption(clips).column("clip_id").to_pylist())
    dup = T.duplicates((r["caption"] for k, r in rows.items() if k in wanted), cfg.duplicate_min_clips)
    out = {c: [] for c in CAPTION_COLUMNS}
    for cid in clips.column("clip_id").to_pylist():
        r = rows.get(cid) if cid in wanted else None
        for c in CAPTION_COLUMNS:
            out[c].append(r[c] if r else None)
        if r and r["caption"] and T.normalise(r["caption"]) in dup:
            out["caption_flags"][-1] = [*(r["caption_flags"] or []), "duplicate"]
    for c, values in out.items():
        arr = pa.array(values, CAPTION_COLUMNS[c].type)
        i = clips.schema.get_field_index(c)
        clips = clips.set_column(i, c, arr) if i >= 0 else clips.append_column(c, arr)
    return clips
