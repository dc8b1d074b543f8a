"""Where a run keeps its outputs, and atomic reads/writes of its Parquet manifest.

OUT/
  config.resolved.json        the run's configuration after profile, file and flags
  clips/<clip_id>.mp4|.jpg    extracted accepted clips
  manifest/scores/part-X.parquet   scored clips of one batch of the scoring stream, before any decision
  manifest/sources/part-X.parquet  the `sources` rows whose head travelled in that batch; written
                                   after its scores twin, it is the part's completion marker
  manifest/clips/clips.parquet     scores + decision + clip paths (rewritten by each run)

Every file is written to a dot-prefixed temporary name and renamed into place; readers (and
pyarrow.dataset, which skips names starting with `.` or `_`) never see a partial file. A scores
part without its sources twin (a crash between the two renames) is never read.

The resume unit is the part: the scoring stream (flows/run_ray.py) ends in `WriteParts`, one
part per batch of clip rows. A source is *complete* when its one `sources` row and exactly
`num_clips` distinct clip rows sit in committed parts; `settle` removes every row of any other
source (a crash can split a source's clips over a written and an unwritten part), so a rerun
scores exactly the incomplete sources again and never duplicates a clip.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.core.frames import drop_transient
from curation.core.schema import METADATA_KEY, SCHEMA_VERSION, SOURCE_ROW, scored_clip_schema, source_schema


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def at(cls, out: str | Path) -> "Layout":
        return cls(Path(out).expanduser().resolve())

    @property
    def clips(self) -> Path:
        return self.root / "clips"

    @property
    def sources(self) -> Path:
        return self.root / "manifest" / "sources"

    @property
    def scores(self) -> Path:
        return self.root / "manifest" / "scores"

    @property
    def clip_manifest(self) -> Path:
        return self.root / "manifest" / "clips"

    @property
    def fingerprint_file(self) -> Path:
        return self.root / "manifest" / "scoring.fingerprint"

    @property
    def resolved_config(self) -> Path:
        return self.root / "config.resolved.json"

    def make(self) -> None:
        for d in (self.clips, self.sources, self.scores, self.clip_manifest):
            d.mkdir(parents=True, exist_ok=True)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def write_table_atomic(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(table.schema.metadata or {})
    meta[METADATA_KEY] = str(SCHEMA_VERSION).encode()
    tmp = _tmp(path)
    pq.write_table(table.replace_schema_metadata(meta), tmp)
    os.replace(tmp, path)


def read_dataset(directory: Path, schema: pa.Schema | None = None) -> pa.Table:
    """Read a manifest directory; an absent or empty one gives an empty table."""
    import pyarrow.dataset as pads  # here, not at the top: it imports pandas (seconds), and the CLI's checks import this module

    if not directory.exists() or not any(directory.glob("*.parquet")):
        return schema.empty_table() if schema is not None else pa.table({})
    table = pads.dataset(directory, format="parquet", schema=schema).to_table()
    version = (pq.read_schema(next(directory.glob("*.parquet"))).metadata or {}).get(METADATA_KEY)
    if version is not None and int(version) > SCHEMA_VERSION:
        raise ValueError(f"{directory} was written by a newer videomill (schema {int(version)} > {SCHEMA_VERSION})")
    return table


def partition_id(sources: list[str]) -> str:
    return hashlib.sha1("\n".join(sorted(sources)).encode()).hexdigest()[:16]


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns, in order: absent ones null, extra ones dropped."""
    cols = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def lookup(keys: pa.ChunkedArray | pa.Array, table: pa.Table, key: str) -> pa.Table:
    """`table`'s other columns for each of `keys`, in the keys' order: a left join in Arrow
    (no per-row Python objects); null where a key has no row. `table`'s keys must be unique.
    (Acero joins no list columns and does not keep order, so it joins the keys and a row
    number, then sorts back.)"""
    left = pa.table({key: keys, "_row": pa.array(range(len(keys)), pa.int64())})
    hit = left.join(table, key, join_type="left outer").sort_by("_row")
    if hit.num_rows != len(keys):
        raise ValueError(f"lookup: {key} is not unique in the looked-up table")
    return hit.drop_columns([key, "_row"])


def split_rows(batch: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Clip rows of the scoring stream -> (sources rows, scored clip rows), as written."""
    heads = batch.column(SOURCE_ROW).combine_chunks() if batch.num_rows else pa.array([], batch.schema.field(SOURCE_ROW).type)
    heads = heads.filter(heads.is_valid())
    sources = conform(pa.Table.from_struct_array(heads), source_schema()) if len(heads) else source_schema().empty_table()
    clips = drop_transient(batch.filter(pc.is_valid(batch.column("clip_id"))))
    return sources, conform(clips, scored_clip_schema())


# Clip-stage outputs kept beside the scores, not in them: column -> folder under OUT/manifest,
# one file per part (same name), `clip_id` + the column for rows that have it
# (curation/models/embeddings.py reads them).
SIDE_COLUMNS = {"embedding": "embeddings"}


def write_part(layout: Layout, batch: pa.Table) -> dict:
    """Write one batch of the scoring stream as a part: scores first, then its marker.

    The name is a hash of the rows' keys, so a retried task rewrites the same part instead of
    adding a duplicate. Returns counts for the progress line."""
    sources, clips = split_rows(batch)
    if not sources.num_rows and not clips.num_rows:
        return {"part": None, "sources": 0, "clips": 0, "errors": 0}
    keys = sorted(sources.column("source").to_pylist()) + sorted(clips.column("clip_id").to_pylist())
    name = f"part-{hashlib.sha1(chr(10).join(keys).encode()).hexdigest()[:20]}.parquet"
    for col, folder in SIDE_COLUMNS.items():  # before the scores: the marker commits them all
        if col in batch.column_names:
            side = batch.select(["clip_id", col]).filter(pc.is_valid(batch.column(col)))
            if side.num_rows:
                write_table_atomic(side, layout.root / "manifest" / folder / name)
    write_table_atomic(clips, layout.scores / name)
    write_table_atomic(sources, layout.sources / name)
    errors = pc.sum(pc.equal(sources.column("status"), "error")).as_py() or 0
    return {"part": name, "sources": sources.num_rows, "clips": clips.num_rows, "errors": errors}


class WriteParts:
    """The scoring stream's last operator: each batch of clip rows becomes one manifest part.

    A plain callable (curation/ imports no Ray); flows/run_ray.py runs it as the final
    `map_batches` so each part's counts stream back to the driver for the progress line
    (a Ray `Datasink` would report only when the whole write is over)."""

    def __init__(self, out: str | Path):
        self.out = str(out)

    def __call__(self, batch: pa.Table) -> pa.Table:
        stats = write_part(Layout.at(self.out), batch)
        return pa.Table.from_pylist([stats], schema=PART_STATS)


PART_STATS = pa.schema([("part", pa.string()), ("sources", pa.int64()), ("clips", pa.int64()), ("errors", pa.int64())])


def committed_parts(layout: Layout) -> list[str]:
    """Names of the parts whose marker (the sources twin) and scores file both exist."""
    marks = {p.name for p in layout.sources.glob("part-*.parquet")} if layout.sources.exists() else set()
    return sorted(n for n in marks if (layout.scores / n).exists())


def _read_each(directory: Path, names: list[str], schema: pa.Schema, columns: list[str] | None) -> list[pa.Table]:
    """Each named part as a table with `schema` (absent columns null), file by file on a few
    threads. Not one pyarrow.dataset scan: over thousands of small parts it holds every
    file's Parquet metadata at once, and the driver's RSS kept it (measured on 1,200 parts of 64 clip rows:
    +180 MiB for the scan, +94 MiB this way, about what the rows themselves take)."""
    def one(name: str) -> pa.Table:
        return pq.read_table(directory / name, schema=schema, columns=columns, use_threads=False)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(one, names))


def read_parts(directory: Path, names: list[str], schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    """The named parts of a manifest directory as one table (empty when there are none)."""
    if not names:
        t = schema.empty_table()
        return t.select(columns) if columns else t
    return pa.concat_tables(_read_each(directory, names, schema, columns))


def read_scores(layout: Layout) -> pa.Table:
    """Every scored clip of the committed parts: what `decide` reads."""
    return read_parts(layout.scores, committed_parts(layout), scored_clip_schema())


def read_sources(layout: Layout) -> pa.Table:
    return read_parts(layout.sources, committed_parts(layout), source_schema())


def _keys(directory: Path, names: list[str], schema: pa.Schema, columns: list[str]) -> pa.Table:
    """`columns` of the named parts plus `part` (each row's part name)."""
    tables = _read_each(directory, names, schema, columns)
    return pa.concat_tables([t.append_column("part", pa.array([n] * t.num_rows, pa.string())) for n, t in zip(names, tables)])


def settle(layout: Layout) -> set[str]:
    """Make the manifest hold only complete sources; return them.

    Deletes scores parts without a marker and markers without scores; a source whose rows are
    not exactly one `sources` row plus `num_clips` distinct clip rows (a crash split it, or a
    retried batch duplicated it) loses all its rows, parts rewritten atomically (scores
    first), so the next pass scores it again. Reads only the key columns."""
    if not layout.sources.exists():
        return set()
    for p in layout.scores.glob("part-*.parquet"):
        if not (layout.sources / p.name).exists():
            p.unlink()
    for p in layout.sources.glob("part-*.parquet"):
        if not (layout.scores / p.name).exists():
            p.unlink()
    names = committed_parts(layout)
    if not names:
        return set()
    srcs = _keys(layout.sources, names, source_schema(), ["source", "num_clips"])
    clips = _keys(layout.scores, names, scored_clip_schema(), ["source", "clip_id"])
    heads = srcs.group_by("source").aggregate([("num_clips", "max"), ("source", "count")])
    counts = clips.group_by("source").aggregate([("clip_id", "count"), ("clip_id", "count_distinct")])
    j = heads.join(counts, "source", join_type="full outer")
    want = pc.fill_null(j.column("num_clips_max"), 0)
    n_clips = pc.fill_null(j.column("clip_id_count"), 0)
    ok = pc.and_(
        pc.and_(pc.equal(pc.fill_null(j.column("source_count"), 0), 1), pc.equal(n_clips, want)),
        pc.equal(pc.fill_null(j.column("clip_id_count_distinct"), 0), n_clips),
    )
    complete = set(j.filter(ok).column("source").to_pylist())
    bad = pa.array(sorted(set(j.column("source").to_pylist()) - complete), pa.string())
    if len(bad):
        touched = set(srcs.filter(pc.is_in(srcs.column("source"), bad)).column("part").to_pylist())
        touched |= set(clips.filter(pc.is_in(clips.column("source"), bad)).column("part").to_pylist())
        for n in sorted(touched):
            for d in (layout.scores, layout.sources):  # scores first: the marker goes last
                t = pq.read_table(d / n)
                keep = t.filter(pc.invert(pc.is_in(t.column("source"), bad)))
                write_table_atomic(keep, d / n)
    return complete


def fingerprint(section: dict) -> str:
    return hashlib.sha1(json.dumps(section, sort_keys=True, default=str).encode()).hexdigest()[:12]
