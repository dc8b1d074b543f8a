"""Run stages in this process: tests, debugging, and `runtime.executor = "local"`."""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from curation.core.schema import check_chain
from curation.core.stage import Stage
from flows.progress import Live


def run_local(stages: Sequence[Stage], table: pa.Table, live: Live | None = None) -> pa.Table:
    """`stages` over `table` in this process; `live` sees each output batch of the last stage."""
    check_chain(stages, table.column_names)
    for n, stage in enumerate(stages):
        stage.setup()
        parts = []
        for i in range(0, table.num_rows, stage.batch_size):
            parts.append(stage(table.slice(i, stage.batch_size)))
            if live is not None and n == len(stages) - 1:
                live(parts[-1])
        table = pa.concat_tables(parts) if parts else stage(table.slice(0, 0))
    return table


def apply_clip_stage(stage: Stage, batch: pa.Table) -> pa.Table:
    """Run a clip stage on the real clips of `batch` and attach its `writes` columns.

    Rows with a null `clip_id` (a source that gave no clip, carrying only its `source_row`)
    skip the stage and get nulls. The stage sees every column of its rows; whatever else it
    returns is ignored, so a stage can never drop or reorder the rows it was given."""
    mask = pc.is_valid(batch.column("clip_id"))
    n_real = pc.sum(mask).as_py() or 0
    sub = batch if n_real == batch.num_rows else batch.filter(mask)
    out = stage(sub) if n_real else None
    if out is not None and out.num_rows != sub.num_rows:
        raise RuntimeError(f"clip stage {type(stage).__name__} returned {out.num_rows} rows for {sub.num_rows}")
    for col in stage.writes:
        if out is None:
            arr = pa.nulls(batch.num_rows, pa.null())
        elif n_real == batch.num_rows:
            arr = out.column(col)
        else:  # scatter the stage's values back to the real clips' positions
            vals = out.column(col).combine_chunks()
            pos = pc.subtract(pc.cumulative_sum(pc.cast(mask, pa.int64())), 1)
            arr = pc.if_else(mask, pc.take(vals, pc.max_element_wise(pos, 0)), pa.scalar(None, vals.type))
        if col in batch.column_names:
            batch = batch.set_column(batch.schema.get_field_index(col), col, arr)
        else:
            batch = batch.append_column(col, arr)
    return batch


def sources_per_block(n: int) -> int:
    return 1


def stream_local(
    sources: list[str], source_stages: Sequence[Stage], clip_stages: Sequence[Stage], write: Callable[[pa.Table], pa.Table],
    rows_per_part: int, live: Live | None = None, live_models: Live | None = None, **_: object,
) -> Iterator[pa.Table]:
    """The scoring stream in this process: the same stages and writer as on Ray, one source
    at a time, a part every `rows_per_part` clip rows. Yields each part's counts; `live` sees
    each source's rows once analysed, `live_models` once through the clip stages."""
    for s in (*source_stages, *clip_stages):
        s.setup()
    pending: list[pa.Table] = []
    n = 0
    for uri in sources:
        t = pa.table({"source": [uri]})
        for s in source_stages:
            t = s(t)
        if live is not None:
            live(t)
        for s in clip_stages:
            t = apply_clip_stage(s, t)
        if live_models is not None and clip_stages:
            live_models(t)
        pending.append(t)
        n += t.num_rows
        if n >= rows_per_part:
            yield write(pa.concat_tables(pending, promote_options="default"))
            pending, n = [], 0
    if pending:
        yield write(pa.concat_tables(pending, promote_options="default"))


def stream_table_local(
    stages: Sequence[Stage], table: pa.Table, write: Callable[[pa.Table], pa.Table], rows_per_part: int,
    setups: dict | None = None, **_: object,
) -> Iterator[pa.Table]:
    """`stream_table` (flows/run_ray.py) in this process: every stage set up once, rows pushed
    through as soon as a stage has a full batch (a source at a time into the first), a part
    written every `rows_per_part` rows; yields what `write` returns for each. As there, a
    stateful (model) stage adds its columns to its rows (`apply_clip_stage`), and `setups` gets
    {stage name: times set up}."""
    check_chain(stages, table.column_names)
    if not table.num_rows:
        return
    for s in stages:
        s.setup()
        if s.stateful and setups is not None:
            setups[type(s).__name__] = setups.get(type(s).__name__, 0) + 1
    sizes = [s.batch_size for s in stages] + [rows_per_part]
    waiting: list[list[pa.Table]] = [[] for _ in sizes]  # rows before stage i (the last: the writer)

    def drain(final: bool) -> Iterator[pa.Table]:
        for i, size in enumerate(sizes):
            while (n := sum(t.num_rows for t in waiting[i])) >= size or (final and n):
                rows = pa.concat_tables(waiting[i], promote_options="default")
                take, rest = rows.slice(0, size), rows.slice(size)
                waiting[i] = [rest] if rest.num_rows else []
                if i < len(stages):
                    s = stages[i]
                    waiting[i + 1].append(apply_clip_stage(s, take) if s.stateful else s(take))
                else:
                    yield write(take)

    for start in range(0, table.num_rows, sizes[0]):
        waiting[0].append(table.slice(start, sizes[0]))
        yield from drain(final=False)
    yield from drain(final=True)
