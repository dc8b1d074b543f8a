"""Every score the analysis writes stays in its documented range on the mixed corpus."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from curation.analysis.analyze import SplitAndScore, group_sources
from curation.core.config import load_config
from curation.media.probe import ProbeSources
from curation.core.schema import NEG_TAGS, neg_column


@pytest.fixture(scope="module")
def analyzed(corpus) -> dict[str, dict]:
    root, expect = corpus
    cfg = load_config()
    probed = ProbeSources()(pa.table({"source": [str(root / name) for name in sorted(expect)]}))
    stage = SplitAndScore(cfg)
    stage.setup()
    return {r["source"].rsplit("/", 1)[-1]: r for r in group_sources(stage(probed))}


def _clips(analyzed):
    clips = [c for r in analyzed.values() for c in r["clips"]]
    assert len(clips) >= 6  # five good videos and a photo at least
    return clips


def test_tag_scores_are_floats_in_unit_interval(analyzed):
    for c in _clips(analyzed):
        for tag in NEG_TAGS:
            v = c[neg_column(tag)]
            assert isinstance(v, float) and math.isfinite(v) and 0.0 <= v <= 1.0, (c["clip_id"], tag, v)


def test_motion_scores_are_non_negative(analyzed):
    for c in _clips(analyzed):
        if c["media_type"] == "image":
            assert c["motion_score"] is None and c["motion_min_patch"] is None
            continue
        for col in ("motion_score", "motion_min_patch"):
            v = c[col]
            assert isinstance(v, float) and math.isfinite(v) and v >= 0.0, (c["clip_id"], col, v)
        assert c["motion_min_patch"] <= c["motion_score"] + 1e-9
        coh = c["motion_coherence"]
        assert coh is None or 0.0 <= coh <= 1.0


def test_good_videos_carry_no_negative_tag(analyzed, corpus):
    """The corpus's good videos are plain moving textures: no tag may reach its threshold."""
    _, expect = corpus
    thresholds = load_config().decide.tag_thresholds
    for name, want in expect.items():
        if want["status"] != "ok" or want.get("media_type") == "image":
            continue
        for c in analyzed[name]["clips"]:
            fired = {t: round(c[neg_column(t)], 3) for t in NEG_TAGS if c[neg_column(t)] >= thresholds[t]}
            assert not fired, (name, fired)
