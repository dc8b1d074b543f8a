"""The caption tail of a run (flows/curate.py): from the decision to captioned clips.

1. `with_stored_judge`: the judge's stored answers (OUT/judge/<key>/) joined into the decision
   and applied, before extraction: a clip they reject is neither extracted nor asked again, and
   `videomill decide` re-tunes judge thresholds on them without asking the model.
2. `extract_and_caption`: ONE stream from accepted clips to captions (flows/run_ray.py
   `stream_table`, or its in-process twin): extraction and frame preparation as tasks on CPU
   workers, the caption stage on an actor pool created once for the run (each actor loads the
   model once), parts written as blocks complete (captioning/store.py `WriteParts`). The GPUs
   start on the first source's clips while the CPUs extract the next ones.
3. `finish_captions`: the judge's new answers applied (the clips they newly reject leave
   OUT/clips), the stored captions joined in.

Where the judge runs, and why there: on the clips the cheap filters (heuristics, OCR, CLIP,
dedup, the probe) accepted, inside the caption stage with the caption model already loaded,
before the clip's caption. One judged clip costs a VLM generation (prefill of its frames plus
the JSON answer, ~200 tokens for the 18 default questions) -- the price of a caption, hundreds
of times a CPU filter's -- so every clip a cheap filter rejects first is model time saved, and
a clip the judge rejects is not captioned at all. Its frames are the caption's, decoded once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from captioning.caption_clips import TODO, CaptionClips
from captioning.prepare import CARRY, STREAM_INPUT, ExtractForCaptions, PrepareFrames
from captioning.store import RESULT, WriteParts, counts, join_captions, plan, with_judge
from curation.core.config import RunConfig
from curation.decisions.decide import apply_judge
from curation.outputs.extract_clips import ExtractClips
from curation.core.manifest import Layout
from flows.logs import run_logger


def with_stored_judge(decided: pa.Table, layout: Layout, cfg: RunConfig) -> pa.Table:
    """The decision with the stored judge answers in it and applied (judge on)."""
    if not (cfg.caption.enabled and cfg.judge.enabled):
        return decided
    return apply_judge(with_judge(decided, layout, cfg.caption, cfg.judge), cfg.judge)


def stream_input(decided: pa.Table, layout: Layout, cfg: RunConfig) -> pa.Table:
    """STREAM_INPUT: per source, its accepted clips (EXTRACT_INPUT) and what the store holds
    for each (captioning/store.py `plan`)."""
    from flows.curate import extract_input

    per_source = extract_input(decided)
    acc = decided.filter(pc.equal(decided.column("status"), "accepted"))
    planned = plan(acc.select(["clip_id"]), layout, cfg.caption, cfg.judge)
    about = {r["clip_id"]: r for r in planned.select([f.name for f in CARRY]).to_pylist()}
    carry = [[about[c["clip_id"]] for c in clips] for clips in per_source.column("clips").to_pylist()]
    return per_source.append_column("carry", pa.array(carry, STREAM_INPUT.field("carry").type)).cast(STREAM_INPUT)


def extract_and_caption(decided: pa.Table, layout: Layout, cfg: RunConfig, max_retries: int = 2,
                        progress: Callable[[int, int, int], None] | None = None) -> tuple[pa.Table, dict]:
    """Extract the accepted clips and judge and caption them, in one stream. -> (the
    extraction's rows: clip_id, clip_path, error; the caption counts). `progress(done,
    captioned, failed)` hears of each part as it is written (flows/progress.py Progress.add)."""
    root = str(layout.root)
    rows = stream_input(decided, layout, cfg)
    todo = sum(c[TODO] for cs in rows.column("carry").to_pylist() for c in cs)
    total = sum(len(cs) for cs in rows.column("carry").to_pylist())
    run_logger().info("caption stream: %d accepted clips, %d to judge or caption", total, todo)
    extract = ExtractClips(cfg.extract, str(layout.clips), stall_timeout_s=cfg.decode.stall_timeout_s)
    stages = [ExtractForCaptions(extract)]
    if todo:  # else no caption actor is started (and no model loaded) for nothing
        stages += [PrepareFrames(cfg.caption, root), CaptionClips(cfg.caption, root, cfg.judge)]
    write = WriteParts(root, cfg.caption, cfg.judge)
    if cfg.runtime.executor == "local":
        from flows.run_local import stream_table_local as stream
    else:
        from flows.run_ray import stream_table as stream
    setups: dict = {}
    results = []
    for part in stream(stages, rows, write, cfg.caption.block_size, max_retries=max_retries, setups=setups):
        results.append(part)
        if progress is not None:
            failed = pc.sum(pc.is_valid(part.column("error"))).as_py() or 0
            progress(part.num_rows, (pc.sum(part.column("captioned")).as_py() or 0), failed)
    got = pa.concat_tables(results) if results else RESULT.empty_table()
    return got.select(["clip_id", "clip_path", "error"]), counts(results, total - todo, setups)


def finish_captions(clips: pa.Table, layout: Layout, cfg: RunConfig) -> pa.Table:
    """After the stream: the judge's answers applied (an accepted clip they reject becomes
    `rejected` and its file leaves OUT/clips), the stored captions joined in."""
    if cfg.judge.enabled:
        was = pc.fill_null(pc.equal(clips.column("status"), "accepted"), False)
        clips = apply_judge(with_judge(clips, layout, cfg.caption, cfg.judge), cfg.judge)
        out = pc.and_(was, pc.invert(pc.fill_null(pc.equal(clips.column("status"), "accepted"), False)))
        for path in clips.filter(out).column("clip_path").to_pylist():
            if path:
                (Path(layout.root) / path).unlink(missing_ok=True)
        if n := pc.sum(out).as_py():
            run_logger().info("judge: %d clips rejected by their VLM-judged tags (files removed from clips/)", n)
        i = clips.schema.get_field_index("clip_path")
        clips = clips.set_column(i, "clip_path", pc.if_else(out, pa.scalar(None, pa.string()), clips.column("clip_path")))
    return join_captions(clips, layout, cfg.caption)
