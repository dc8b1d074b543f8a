"""Conformance: the real LAION ViT-B/32 aesthetic head, loaded by ``load_head``, scores LAION's
rating embeddings as the reference computation does.

Reference: the LAION-AI/aesthetic-predictor notebook (``asthetics_predictor.ipynb``): a
``torch.nn.Linear(512, 1)`` loaded from ``sa_0_4_vit_b_32_linear.pth``, applied to the image
embedding divided by its L2 norm. Data: tests/data/laion_aesthetic (vendored, MIT; README.md
there gives source, commit and checksums).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from curation.models import clip_models as cm  # noqa: E402
from curation.core.config import load_config  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "laion_aesthetic"
HEAD = DATA / "sa_0_4_vit_b_32_linear.pth"
HEAD_SHA256 = "c7b14cead230694acc7b9447974d3cad78003c72da032e402a303b6c2429e85f"


def rating_embeddings() -> np.ndarray:
    """(10, 512) float32: LAION's embedding for aesthetic rating 0..9, in order."""
    return np.concatenate([np.load(DATA / "vit_b_32_embeddings" / f"rating{i}.npy") for i in range(10)]).astype(np.float32)


def test_vendored_head_is_laions_file():
    assert hashlib.sha256(HEAD.read_bytes()).hexdigest() == HEAD_SHA256


def test_load_head_scores_the_rating_embeddings_as_laions_linear_head():
    cfg = dataclasses.replace(load_config(profile="cpu").models, aesthetic_head=str(HEAD))
    head = cm.load_head(cfg, 512)
    assert isinstance(head, torch.nn.Linear) and not head.training

    reference = torch.nn.Linear(512, 1)
    reference.load_state_dict(torch.load(HEAD, map_location="cpu", weights_only=True))
    reference.eval()
    emb = torch.from_numpy(rating_embeddings())
    assert emb.shape == (10, 512)
    emb = emb / emb.norm(dim=-1, keepdim=True)  # the notebook's normalisation (they come normalised)
    with torch.no_grad():
        ours, ref = head(emb).squeeze(1), reference(emb).squeeze(1)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)

    # The scores increase with the rating, strictly and by about one point per step
    # (measured -1.47, 0.27, 1.99, 3.61, 5.09, 6.39, 7.67, 8.92, 9.92, 11.01: steps 1.00-1.74).
    steps = np.diff(ours.numpy())
    assert (steps > 0.9).all() and (steps < 2.0).all(), ours
    assert ours[0] < 0 and ours[-1] > 10
