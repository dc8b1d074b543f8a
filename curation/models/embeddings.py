"""The clip embeddings side file: OUT/manifest/embeddings/part-*.parquet.

Columns ``clip_id`` (string) and ``embedding`` (``fixed_size_list<halffloat>[D]``, the
L2-normalised mean CLIP image embedding of the clip, curation/models/score_clip.py). The scoring
stream's writer puts them there, one file per manifest part with the part's name
(curation/core/manifest.py ``SIDE_COLUMNS``), before the part commits; the global steps before
decide (near-duplicate removal, the tag probe) and `videomill tags train` read them: a
re-decide never recomputes an embedding. The model that made them is the run's
``[models]`` (config.resolved.json), so a probe trained on one model refuses another's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from curation.core.manifest import Layout, read_dataset, write_table_atomic
from curation.models.score_clip import EMBEDDING

MODEL_KEY = b"videomill.embedding_model"


def embeddings_dir(layout: Layout) -> Path:
    return layout.root / "manifest" / "embeddings"


def split_embeddings(table: pa.Table, model: str) -> tuple[pa.Table, pa.Table]:
    """(table without the embedding column, clip_id + embedding of the rows that have one)."""
    if EMBEDDING not in table.column_names:
        return table, pa.table({"clip_id": pa.array([], pa.string())})
    side = table.select(["clip_id", EMBEDDING]).filter(table.column(EMBEDDING).is_valid())
    side = side.replace_schema_metadata({MODEL_KEY: model.encode()})
    return table.drop_columns([EMBEDDING]), side


def write_embeddings(layout: Layout, side: pa.Table, part: str) -> None:
    """Write one part's embeddings atomically (``part``: the scores part's name, no suffix)."""
    if side.num_rows:
        write_table_atomic(side, embeddings_dir(layout) / f"{part}.parquet")


def read_embeddings(layout: Layout, clip_ids: list[str] | None = None) -> tuple[list[str], np.ndarray, str | None]:
    """(clip ids, (N, D) float32 embeddings, model name) of OUT; rows in `clip_ids` order when
    given (ids without an embedding are left out). Empty when no side file exists."""
    d = embeddings_dir(layout)
    table = read_dataset(d) if d.exists() else pa.table({})
    if table.num_rows == 0:
        return [], np.zeros((0, 0), np.float32), None
    meta = read_dataset_metadata(d) or _model_of_run(layout)
    ids = table.column("clip_id").to_pylist()
    col = table.column(EMBEDDING).combine_chunks()
    dim = col.type.list_size
    mat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(-1, dim)
    # A source re-scored after a crash may have left an older file holding its clips: same
    # scoring settings (the fingerprint guarantees it), so any copy will do; keep the last.
    last = {c: i for i, c in enumerate(ids)}
    if len(last) != len(ids):
        keep = sorted(last.values())
        ids, mat = [ids[i] for i in keep], mat[keep]
    if clip_ids is not None:
        where = {c: i for i, c in enumerate(ids)}
        keep = [where[c] for c in clip_ids if c in where]
        ids, mat = [ids[i] for i in keep], mat[keep]
    return ids, mat, meta


def _model_of_run(layout: Layout) -> str | None:
    import json

    if not layout.resolved_config.exists():
        return None
    m = json.loads(layout.resolved_config.read_text()).get("models") or {}
    clip = m.get("clip")
    return clip if clip in (None, "tiny") else f"{clip}/{m.get('clip_pretrained')}"


def read_dataset_metadata(d: Path) -> str | None:
    import pyarrow.parquet as pq

    for f in sorted(d.glob("*.parquet")):
        md = pq.read_schema(f).metadata or {}
        if MODEL_KEY in md:
            return md[MODEL_KEY].decode()
    return None
