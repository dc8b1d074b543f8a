"""Where a run keeps its outputs, and atomic reads/writes of its Parquet manifest.

OUT/
  config.resolved.json        the run's configuration after profile, file and flags
  clips/<clip_id>.mp4|.jpg    extracted accepted clips
  manifest/sources/part-*.parquet  one row per input; a part is written once its partition
                                   is fully scored, so the part *is* the completion marker
  manifest/scores/part-*.parquet   scored clips of that partition, before any decision
  manifest/clips/clips.parquet     scores + decision + clip paths (rewritten by each run)

Every file is written to a dot-prefixed temporary name and renamed into place; readers (and
pyarrow.dataset, which skips names starting with `.` or `_`) never see a partial file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from curation.schema import METADATA_KEY, SCHEMA_VERSION


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
    if not directory.exists() or not any(directory.glob("*.parquet")):
        return schema.empty_table() if schema is not None else pa.table({})
    table = pads.dataset(directory, format="parquet", schema=schema).to_table()
    version = (pq.read_schema(next(directory.glob("*.parquet"))).metadata or {}).get(METADATA_KEY)
    if version is not None and int(version) > SCHEMA_VERSION:
        raise ValueError(f"{directory} was written by a newer videomill (schema {int(version)} > {SCHEMA_VERSION})")
    return table


def partition_id(sources: list[str]) -> str:
    return hashlib.sha1("\n".join(sorted(sources)).encode()).hexdigest()[:16]


def fingerprint(section: dict) -> str:
    return hashlib.sha1(json.dumps(section, sort_keys=True, default=str).encode()).hexdigest()[:12]
