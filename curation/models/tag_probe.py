"""A trainable tag probe on clip embeddings: the CogVideoX tag classifiers, done cheaply.

CogVideoX trained video classifiers for its negative tags on ~20k labelled clips. Here a
multi-label probe (logistic regression, or one hidden layer, on z-scored embeddings) learns tags from the CLIP clip
embeddings a run already stored (OUT/manifest/embeddings), so training takes seconds and a
re-decide applies it without touching a frame.

``videomill tags train LABELS.csv --manifest OUT --out PROBE``: LABELS.csv has rows
``clip_id,tag,label`` (label 0/1; a clip may carry labels for some tags only: the loss masks
the others). A seeded random ``holdout`` share of the labelled clips is held out; the probe
trains on the rest (Adam, binary cross-entropy, weight decay) and reports per-tag
precision and recall on the held-out clips at the probe's threshold (0.5).

The PROBE file is safetensors: the weights, and in its metadata the tags, threshold, the
embedding model it was trained on (a run with another model refuses it) and the held-out
figures (the report shows them).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    """A trained tag probe (`videomill tags train`) applied to the clip embeddings before decide."""

    path: str | None = None  # PROBE file from `videomill tags train`; None: no probe


THRESHOLD = 0.5


@dataclass
class Probe:
    tags: list[str]
    weights: dict  # name -> torch tensor
    hidden: int
    threshold: float
    model: str | None
    metrics: dict

    def predict(self, emb: np.ndarray) -> np.ndarray:
        """(N, D) embeddings -> (N, T) probabilities."""
        import torch

        net = _net(emb.shape[1] if len(emb) else self.weights[next(iter(self.weights))].shape[-1], len(self.tags), self.hidden)
        net.load_state_dict(self.weights)
        with torch.no_grad():
            return torch.sigmoid(net(torch.from_numpy(np.asarray(emb, np.float32)))).numpy()


def _net(dim: int, tags: int, hidden: int):
    import torch
    from torch import nn

    class Standardize(nn.Module):
        # CLIP embeddings of one domain sit in a narrow cone (cosines ~0.8-0.99): z-scoring
        # each dimension on the training rows (the usual linear-probe preprocessing) lets the
        # probe see the differences. Buffers, so they travel in the state dict.
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.zeros(dim))
            self.register_buffer("std", torch.ones(dim))

        def forward(self, x):
            return (x - self.mean) / self.std

    if hidden:
        return nn.Sequential(Standardize(), nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, tags))
    return nn.Sequential(Standardize(), nn.Linear(dim, tags))


def read_labels(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """(clip ids, tags, (clips, tags) float labels with NaN where unlabelled) from a CSV of
    ``clip_id,tag,label`` rows (a header row is optional). Raises ValueError on a bad row."""
    rows: list[tuple[str, str, float]] = []
    with open(path, newline="") as f:
        for n, rec in enumerate(csv.reader(f), 1):
            if not rec or rec[0].startswith("#") or (n == 1 and rec[:3] == ["clip_id", "tag", "label"]):
                continue
            if len(rec) != 3 or rec[2].strip() not in ("0", "1"):
                raise ValueError(f"{path}:{n}: expected clip_id,tag,label with label 0 or 1, got {rec}")
            rows.append((rec[0].strip(), rec[1].strip(), float(rec[2])))
    if not rows:
        raise ValueError(f"{path}: no labels")
    clips = sorted({r[0] for r in rows})
    tags = sorted({r[1] for r in rows})
    ci, ti = {c: i for i, c in enumerate(clips)}, {t: i for i, t in enumerate(tags)}
    y = np.full((len(clips), len(tags)), np.nan, np.float32)
    for c, t, v in rows:
        y[ci[c], ti[t]] = v
    return clips, tags, y


def train_probe(
    emb: np.ndarray, y: np.ndarray, tags: list[str], *, hidden: int = 0, holdout: float = 0.25, seed: int = 0,
    epochs: int = 300, lr: float = 1e-2, weight_decay: float = 1e-2, model: str | None = None,
) -> Probe:
    """Fit on a seeded (1 - holdout) share of the rows, measure on the rest.

    emb: (N, D) float embeddings; y: (N, T) labels in {0, 1, NaN}. Returns the probe with
    ``metrics[tag] = {precision, recall, support, train_n, test_n}`` on the held-out rows."""
    import torch

    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be within (0, 1), got {holdout}")
    n = len(emb)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_test = max(1, int(round(n * holdout)))
    test, train = perm[:n_test], perm[n_test:]
    if len(train) == 0:
        raise ValueError(f"{n} labelled clips leave nothing to train on after holding out {n_test}")
    torch.manual_seed(seed)
    net = _net(emb.shape[1], len(tags), hidden)
    x = torch.from_numpy(np.asarray(emb[train], np.float32))
    net[0].mean.copy_(x.mean(0))
    net[0].std.copy_(x.std(0).clamp(min=1e-6))
    t = torch.from_numpy(np.nan_to_num(y[train], nan=0.0))
    mask = torch.from_numpy(~np.isnan(y[train])).float()
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
    for _ in range(epochs):  # full batch: thousands of 768-d rows fit in memory many times over
        opt.zero_grad()
        loss = (loss_fn(net(x), t) * mask).sum() / mask.sum().clamp(min=1)
        loss.backward()
        opt.step()
    probe = Probe(tags, {k: v.detach().clone() for k, v in net.state_dict().items()}, hidden, THRESHOLD, model, {})
    pred = probe.predict(emb[test]) >= THRESHOLD
    for j, tag in enumerate(tags):
        have = ~np.isnan(y[test, j])
        truth, guess = y[test, j][have] == 1, pred[:, j][have]
        tp, fp, fn = int((truth & guess).sum()), int((~truth & guess).sum()), int((truth & ~guess).sum())
        probe.metrics[tag] = {
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
            "support": int(truth.sum()),
            "test_n": int(have.sum()),
            "train_n": int((~np.isnan(y[train, j])).sum()),
        }
    return probe


def save_probe(probe: Probe, path: str | Path) -> None:
    """Write PROBE (safetensors) atomically."""
    from safetensors.torch import save_file

    meta = {"tags": json.dumps(probe.tags), "hidden": str(probe.hidden), "threshold": str(probe.threshold),
            "model": probe.model or "", "metrics": json.dumps(probe.metrics), "format": "videomill.tag_probe.v1"}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    save_file({k: v.contiguous() for k, v in probe.weights.items()}, str(tmp), metadata=meta)
    tmp.replace(p)


def load_probe(path: str | Path) -> Probe:
    """Read PROBE; ValueError (one line) when missing or not a probe file."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"probe.path: {p} does not exist (train one with `videomill tags train`)")
    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "videomill.tag_probe.v1":
            raise ValueError(f"probe.path: {p} is not a videomill tag probe")
        weights = {k: f.get_tensor(k) for k in f.keys()}
    return Probe(json.loads(meta["tags"]), weights, int(meta["hidden"]), float(meta["threshold"]), meta["model"] or None,
                 json.loads(meta["metrics"]))


def format_metrics(probe: Probe) -> str:
    """The held-out figures as a small table, one tag a line."""
    def f(v):
        return "  -  " if v is None else f"{v:.3f}"

    lines = [f"{'tag':24s} precision recall  support test_n train_n"]
    for tag, m in probe.metrics.items():
        lines.append(f"{tag:24s} {f(m['precision']):>9s} {f(m['recall']):>6s} {m['support']:8d} {m['test_n']:6d} {m['train_n']:7d}")
    return "\n".join(lines)
