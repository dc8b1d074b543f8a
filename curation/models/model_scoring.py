"""Which model-scoring stages a run has (flows/stages.py registers them as clip stages of
the scoring stream), and the metadata that names their models in the manifest."""

from __future__ import annotations

import logging
from curation.core.config import RunConfig
from curation.models.score_clip import TINY_MODEL, ScoreWithClip
from curation.models.score_text import ScoreText
from curation.core.stage import Stage

log = logging.getLogger(__name__)

TINY_WARNING = "models: profile tiny: CLIP and aesthetic head are random-initialised and UNTRAINED; aesthetic_*, zs_* and embeddings are MEANINGLESS"


def model_stages(cfg: RunConfig) -> list[Stage]:
    """The clip-level model stages a config enables, in run order."""
    stages: list[Stage] = []
    if cfg.models.enabled:
        stages.append(ScoreWithClip(cfg.models))
    if cfg.models.ocr:
        stages.append(ScoreText(cfg.models))
    return stages


def model_metadata(cfg: RunConfig) -> dict[bytes, bytes]:
    """Parquet metadata naming the models (and, for tiny, saying loudly that they mean nothing)."""
    m = cfg.models
    meta = {b"videomill.models": f"clip={m.clip} pretrained={m.clip_pretrained} aesthetic_head={m.aesthetic_head}".encode()}
    if m.enabled and m.clip == TINY_MODEL:
        meta[b"videomill.warning"] = TINY_WARNING.encode()
    return meta


def embedding_model(cfg: RunConfig) -> str:
    """The name of the model that makes a run's embeddings (a probe records it)."""
    m = cfg.models
    return m.clip if m.clip == TINY_MODEL else f"{m.clip}/{m.clip_pretrained}"
