"""Near-duplicate removal over clip embeddings: a global step before decide.

SemDeDup (Abbas et al. 2023, "SemDeDup: Data-efficient learning at web-scale through semantic
deduplication"): rank the clips by quality (here aesthetic score, then length, then clip id
for a stable order); a clip whose cosine similarity to any better-ranked clip reaches
``threshold`` is a duplicate. Its ``dup_of`` names the kept clip it duplicates (following
the chain when its nearest better clip is itself a duplicate), so the reject reason names a
twin that survives.

Exact all-pairs search, blockwise: ``block`` rows of the similarity matrix at a time against
every better-ranked clip (memory ``block x N`` floats; torch on GPU when there is one, else
NumPy). Beyond ``kmeans_above`` clips that is too many pairs; like SemDeDup we cluster first,
k-means on the embeddings with faiss (``faiss.Kmeans``; a well-kept library rather than our
own k-means), and compare only within clusters. Near-duplicates sit close together, so they
land in one cluster with high probability; a pair split across clusters is missed (the
price SemDeDup measures as negligible at its scales).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from curation.core.config_loader import check_positive


@dataclass(frozen=True, kw_only=True)
class DedupConfig:
    """Near-duplicate removal over clip embeddings (this module), before decide."""

    enabled: bool = True
    # Cosine similarity at or above which two clips are duplicates (SemDeDup's 1 - eps;
    # the paper removes at eps 0.05-0.3 depending on how much it wants to drop).
    threshold: float = 0.95
    block: int = 4096  # rows per block of the similarity matrix (memory: block x N floats)
    kmeans_above: int = 1_000_000  # more clips than this: k-means first (faiss), compare within clusters
    clusters: int | None = None  # k for k-means; None: sqrt(clips)

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ValueError(f"dedup.threshold must be within (0, 1], got {self.threshold}")
        check_positive(self, "block", "kmeans_above")


@dataclass
class DedupResult:
    """Per input row: ``dup_of`` (kept twin's id or None) and ``dup_sim`` (cosine to the
    nearest better-ranked clip, NaN when it has none); ``clusters`` used (1: exact)."""

    dup_of: list[str | None]
    dup_sim: np.ndarray
    clusters: int


def rank(ids: list[str], aesthetic: np.ndarray, length_s: np.ndarray) -> np.ndarray:
    """Indices best first: higher aesthetic score, then longer, then clip id (NaN scores last)."""
    a = np.nan_to_num(np.asarray(aesthetic, np.float64), nan=-np.inf)
    ln = np.nan_to_num(np.asarray(length_s, np.float64), nan=-np.inf)
    return np.array(sorted(range(len(ids)), key=lambda i: (-a[i], -ln[i], ids[i])), dtype=np.int64)


def _nearest_better(emb: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """For rows of `emb` (already best first, L2-normalised): index and cosine of the most
    similar earlier row (-1, NaN for the first)."""
    n = len(emb)
    best = np.full(n, -1, np.int64)
    sim = np.full(n, np.nan, np.float64)
    try:
        import torch

        use_torch = torch.cuda.is_available()
    except ImportError:  # torch is a dependency; this keeps the module usable without it
        use_torch = False
    for s in range(1, n, block):
        e = min(n, s + block)
        if use_torch:
            a = torch.from_numpy(emb[:e]).cuda()
            m = (a[s:e] @ a.T).float()
            m = torch.where(torch.arange(e, device=m.device)[None, :] < torch.arange(s, e, device=m.device)[:, None], m, -2.0)
            v, i = m.max(1)
            sim[s:e], best[s:e] = v.cpu().numpy(), i.cpu().numpy()
        else:
            m = emb[s:e] @ emb[:e].T
            m[np.arange(e)[None, :] >= np.arange(s, e)[:, None]] = -2.0
            best[s:e] = m.argmax(1)
            sim[s:e] = m[np.arange(e - s), best[s:e]]
    return best, sim


def find_duplicates(ids: list[str], emb: np.ndarray, aesthetic: np.ndarray, length_s: np.ndarray, cfg: DedupConfig) -> DedupResult:
    """Duplicate verdicts for N clips; `emb` is (N, D), L2-normalised (fp16 or fp32)."""
    n = len(ids)
    dup_of: list[str | None] = [None] * n
    dup_sim = np.full(n, np.nan)
    if n == 0:
        return DedupResult(dup_of, dup_sim, 0)
    emb = np.ascontiguousarray(emb, np.float32)
    order = rank(ids, aesthetic, length_s)
    groups: list[np.ndarray]
    if n > cfg.kmeans_above:
        k = cfg.clusters or max(1, int(math.sqrt(n)))
        groups = _clusters(emb, k)
    else:
        groups = [np.arange(n)]
    parent = np.full(n, -1, np.int64)  # nearest better-ranked duplicate, by input index
    for g in groups:
        members = order[np.isin(order, g)]  # this cluster, best first
        best, sim = _nearest_better(emb[members], cfg.block)
        for j, (b, s) in enumerate(zip(best, sim)):
            i = members[j]
            dup_sim[i] = s
            if b >= 0 and s >= cfg.threshold:
                parent[i] = members[b]
    for i in range(n):  # follow the chain to the kept clip (better-ranked, so it terminates)
        if parent[i] >= 0:
            root = parent[i]
            while parent[root] >= 0:
                root = parent[root]
            dup_of[i] = ids[root]
    return DedupResult(dup_of, dup_sim, len(groups))


def _clusters(emb: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """Members of each of k spherical k-means clusters (faiss), empty clusters dropped."""
    import faiss

    km = faiss.Kmeans(emb.shape[1], k, niter=20, seed=seed, spherical=True, verbose=False)
    km.train(emb)
    _, assign = km.index.search(emb, 1)
    assign = assign[:, 0]
    return [np.flatnonzero(assign == c) for c in range(k) if (assign == c).any()]


def duplicate_groups(ids: list[str], dup_of: list[str | None]) -> dict[str, list[str]]:
    """Kept clip id -> the clips rejected as its duplicates (groups of 2+ only)."""
    out: dict[str, list[str]] = {}
    for i, d in zip(ids, dup_of):
        if d is not None:
            out.setdefault(d, []).append(i)
    return {k: sorted(v) for k, v in sorted(out.items())}
