"""The global steps between scoring and decide, over the whole run's stored embeddings.

* near-duplicate removal (curation/decisions/dedup.py) -> ``dup_of``, ``dup_sim``;
* the tag probe (curation/models/tag_probe.py, ``[probe] path``) -> ``probe_tags``, ``probe_scores``.

Both read OUT/manifest/embeddings (curation/models/embeddings.py), never frames, so `videomill
decide` reruns them in seconds: changing the dedup threshold or the probe needs no re-scoring.
Clips without an embedding (errors, models disabled) get nulls.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from curation.core.config import RunConfig
from curation.decisions.dedup import duplicate_groups, find_duplicates
from curation.models.embeddings import read_embeddings
from curation.core.manifest import Layout
from curation.core.schema import GLOBAL_COLUMNS

log = logging.getLogger(__name__)


def add_global_scores(layout: Layout, scored: pa.Table, cfg: RunConfig) -> tuple[pa.Table, dict]:
    """`scored` with the GLOBAL_COLUMNS filled; also a summary (duplicate groups, probe)."""
    table = scored.drop_columns([c for c in GLOBAL_COLUMNS if c in scored.column_names])
    n = table.num_rows
    ids_all = table.column("clip_id").to_pylist()
    ok = ~np.asarray(table.column("error").is_valid(), bool)
    ids, emb, model = read_embeddings(layout, [c for c, good in zip(ids_all, ok) if good])
    where = {c: i for i, c in enumerate(ids_all)}
    rows = np.array([where[c] for c in ids], np.int64)
    info: dict = {"embeddings": len(ids), "embedding_model": model}

    verdict: list = [None] * n
    dup_of: list = [None] * n
    dup_sim = np.full(n, np.nan)
    if cfg.dedup.enabled and len(ids):
        aest = _floats(table, "aesthetic_score")[rows]
        length = (_floats(table, "end_s") - _floats(table, "start_s"))[rows]
        res = find_duplicates(ids, emb, aest, length, cfg.dedup)
        for r, d, s in zip(rows, res.dup_of, res.dup_sim):
            dup_of[r], dup_sim[r], verdict[r] = d, s, ("kept" if d is None else "duplicate")
        groups = duplicate_groups(ids, res.dup_of)
        info["duplicates"] = {"threshold": cfg.dedup.threshold, "clusters": res.clusters,
                              "rejected": sum(len(v) for v in groups.values()), "groups": groups}
        log.info("dedup: %d of %d clips duplicate %d kept clips (cosine >= %s, %d clusters)",
                 info["duplicates"]["rejected"], len(ids), len(groups), cfg.dedup.threshold, res.clusters)
    table = table.append_column("dedup", pa.array(verdict, pa.string()))
    table = table.append_column("dup_of", pa.array(dup_of, pa.string()))
    table = table.append_column("dup_sim", pa.array(dup_sim, pa.float64(), mask=np.isnan(dup_sim)))

    probe_tags: list = [None] * n
    probe_scores: list = [None] * n
    if cfg.probe.path:
        from curation.models.tag_probe import load_probe

        probe = load_probe(cfg.probe.path)
        if probe.model and model and probe.model != model:
            raise ValueError(f"probe.path: {cfg.probe.path} was trained on {probe.model} embeddings; this run's are {model}")
        if len(ids):
            p = probe.predict(emb)
            for r, row in zip(rows, p):
                probe_scores[r] = [(t, float(v)) for t, v in zip(probe.tags, row)]
                probe_tags[r] = [t for t, v in zip(probe.tags, row) if v >= probe.threshold]
        info["probe"] = {"path": str(cfg.probe.path), "tags": probe.tags, "model": probe.model, "metrics": probe.metrics}
    table = table.append_column("probe_tags", pa.array(probe_tags, pa.list_(pa.string())))
    table = table.append_column("probe_scores", pa.array(probe_scores, pa.map_(pa.string(), pa.float64())))
    return table, info


def _floats(table: pa.Table, column: str) -> np.ndarray:
    if column not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return np.asarray(table.column(column).to_numpy(zero_copy_only=False), np.float64)
