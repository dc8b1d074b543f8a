"""Captions on disk, keyed for resume: OUT/captions/<caption_key>/part-NNNNNN.parquet.

`caption_key` hashes the model ids, prompt version, sampling, frame policy and budget
(captioning/caption_clips.py `settings`). A run captions the accepted clips its key's folder
does not hold yet, in blocks of `caption.block_size` clips; each block is written atomically
once done (the part is its own completion marker), so a crash loses at most one block and a
rerun generates nothing for clips already captioned. Changing [caption] gives a new key and
a new folder: captions are redone, scores are not (they live in manifest/scores).

The same caption text on `duplicate_min_clips` or more clips is flagged `duplicate` when the
captions are joined into the clips table, over the whole run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from captioning import text as T
from captioning.caption_clips import GEN_TOKENS, OUTPUT_SCHEMA, CaptionClips, caption_key
from curation.config import CaptionConfig
from curation.manifest import Layout, read_dataset, write_table_atomic
from curation.schema import CAPTION_COLUMNS
from curation.stage import Stage

log = logging.getLogger("videomill")
Runner = Callable[[Sequence[Stage], pa.Table], pa.Table]


def caption_dir(layout: Layout, cfg: CaptionConfig) -> Path:
    return layout.root / "captions" / caption_key(cfg)


def stored(layout: Layout, cfg: CaptionConfig) -> pa.Table:
    """Every caption row already written under this config's key."""
    d = caption_dir(layout, cfg)
    return read_dataset(d, OUTPUT_SCHEMA) if d.exists() else OUTPUT_SCHEMA.empty_table()


def to_caption(clips: pa.Table) -> pa.Table:
    """The clips a run captions: accepted ones with a clip file (or frames)."""
    mask = pc.and_(pc.equal(clips.column("status"), "accepted"), pc.is_valid(clips.column("clip_path")))
    return clips.filter(mask)


def missing_captions(clips: pa.Table, layout: Layout, cfg: CaptionConfig, have: set[str] | None = None) -> pa.Table:
    """The clips a run captions that the store does not hold yet."""
    todo = to_caption(clips)
    have = set(stored(layout, cfg).column("clip_id").to_pylist()) if have is None else have
    return todo.filter(pc.invert(pc.is_in(todo.column("clip_id"), pa.array(sorted(have), pa.string()))))


def caption_missing(clips: pa.Table, layout: Layout, cfg: CaptionConfig, runner: Runner) -> dict:
    """Caption the accepted clips the store lacks, block by block. -> counts for the log/bench."""
    have = set(stored(layout, cfg).column("clip_id").to_pylist())
    todo = missing_captions(clips, layout, cfg, have)
    d = caption_dir(layout, cfg)
    start = len(list(d.glob("part-*.parquet"))) if d.exists() else 0
    cols = [c for c in todo.column_names if c in CaptionClips.reads + CaptionClips.timing or c.startswith("frames")]
    gen_tokens = done = errors = 0
    for n, i in enumerate(range(0, todo.num_rows, cfg.block_size)):
        block = todo.slice(i, cfg.block_size).select(cols)
        out = runner([CaptionClips(cfg, str(layout.root))], block).select(OUTPUT_SCHEMA.names).cast(OUTPUT_SCHEMA)
        write_table_atomic(out, d / f"part-{start + n:06d}.parquet")
        gen_tokens += pc.sum(out.column(GEN_TOKENS)).as_py() or 0
        done += out.num_rows
        errors += out.num_rows - out.column("caption_error").null_count
        log.debug("captions: block %d, %d clips (%d/%d)", start + n, out.num_rows, done, todo.num_rows)
    return {"already": len(have), "captioned": done, "errors": errors, "generated_tokens": gen_tokens}


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
