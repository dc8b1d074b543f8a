"""A `tiny` run with model scoring, end to end (Prefect, in-process stages).

The tiny CLIP and aesthetic head are random and UNTRAINED: their values are meaningless. What
is checked is that every scored clip gets every model column and an embedding, that every
accepted clip has a dedup verdict, and that a video copied under two names ends as one
accepted clip and one duplicate naming its twin; then that a re-decide reuses the stored
embeddings (no model runs) and a probe applies without re-scoring.
"""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from curation.corpora import synthetic
from curation.models.embeddings import embeddings_dir, read_embeddings
from curation.core.manifest import Layout
from curation.core.schema import ZS_TAGS

pytestmark = pytest.mark.slow
os.environ["HF_HUB_OFFLINE"] = "1"

MODEL_COLUMNS = ("aesthetic_score", "aesthetic_min", "aesthetic_p10", *(f"zs_{t}" for t in ZS_TAGS), "ocr_text_area", "ocr_text_area_max")


@pytest.fixture(scope="module")
def model_run(tmp_path_factory, prefect_server):
    from flows.curate import curate

    root = tmp_path_factory.mktemp("model_in")
    synthetic.write_video(root / "pan.mp4", synthetic.moving(75, (480, 270), speed=(3.0, 0.0), seed=11), 25.0)
    shutil.copyfile(root / "pan.mp4", root / "pan_copy.mp4")  # the same video under another name
    synthetic.write_video(root / "other.mp4", synthetic.moving(75, (480, 270), speed=(0.0, 2.0), seed=12), 25.0)
    out = tmp_path_factory.mktemp("model_out")
    summary = curate(inputs=[str(root)], out=str(out), profile="tiny", executor="local")
    return root, out, summary


def _clips(out):
    return {r["clip_id"]: r for r in pads.dataset(out / "manifest" / "clips").to_table().to_pylist()}


def test_every_scored_clip_has_model_scores_and_an_embedding(model_run):
    _, out, _ = model_run
    clips = _clips(out)
    scored = [r for r in clips.values() if r["status"] != "error"]
    assert len(scored) >= 3
    for r in scored:
        for c in MODEL_COLUMNS:
            assert r[c] is not None, (r["clip_id"], c)
        assert r["model_frames"] >= 1
    ids, emb, model = read_embeddings(Layout.at(out), list(clips))
    assert sorted(ids) == sorted(r["clip_id"] for r in scored) and model == "tiny"
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=2e-3)
    assert "embedding" not in clips[ids[0]]  # the manifest itself never holds embeddings
    for r in clips.values():
        if r["status"] == "accepted":
            assert r["dedup"] == "kept", r["clip_id"]


def test_a_copied_video_is_rejected_as_duplicate_its_twin_in_dup_of(model_run):
    _, out, summary = model_run
    by_source = {}
    for r in _clips(out).values():
        by_source.setdefault(os.path.basename(r["source"]), []).append(r)
    (a,), (b,) = by_source["pan.mp4"], by_source["pan_copy.mp4"]
    kept, dup = (a, b) if a["dedup"] == "kept" else (b, a)
    assert kept["status"] == "accepted" and kept["dup_of"] is None, kept["reject_reasons"]
    assert dup["status"] == "rejected" and dup["dedup"] == "duplicate" and dup["dup_of"] == kept["clip_id"]
    assert dup["reject_reasons"] == ["duplicate"]  # one reason whatever the data; the twin is in dup_of
    assert dup["dup_sim"] >= 0.9999
    (other,) = by_source["other.mp4"]
    assert other["dedup"] == "kept" and other["status"] == "accepted", other["reject_reasons"]
    assert summary["rejected_by_reason"] == {"duplicate": 1}


def test_tiny_says_loudly_that_scores_are_meaningless(model_run):
    _, out, _ = model_run
    meta = pq.read_schema(next((out / "manifest" / "clips").glob("*.parquet"))).metadata
    assert b"MEANINGLESS" in meta[b"videomill.warning"]
    report = json.loads((out / "report.json").read_text())
    assert "meaningless" in report["warning"]


def test_redecide_reuses_embeddings_and_applies_a_probe(model_run, tmp_path, monkeypatch):
    from curation.models import score_clip
    from flows.cli import main
    from flows.curate import redecide

    _, out, _ = model_run
    clips = _clips(out)
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        for cid, r in clips.items():  # a probe tag for the vertical pan only
            w.writerow([cid, "vertical", int(os.path.basename(r["source"]) == "other.mp4")])
    probe = tmp_path / "probe.safetensors"
    assert main(["tags", "train", str(labels), "--manifest", str(out), "--out", str(probe), "--holdout", "0.34"]) == 0
    parts = sorted(p.stat().st_mtime_ns for p in embeddings_dir(Layout.at(out)).glob("*.parquet"))

    def no_model(self):
        raise AssertionError("re-decide must not load a model")

    monkeypatch.setattr(score_clip.ScoreWithClip, "setup", no_model)
    cfg = tmp_path / "probe.toml"
    cfg.write_text(f'[probe]\npath = "{probe}"\n[decide]\nkeep_probe_tags = ["vertical"]\n')
    summary = redecide(out=str(out), config=str(cfg), profile="tiny")
    assert summary["clips"] == len(clips)
    after = _clips(out)
    assert all(r["probe_scores"] is not None for r in after.values() if r["status"] != "error")
    assert sorted(p.stat().st_mtime_ns for p in embeddings_dir(Layout.at(out)).glob("*.parquet")) == parts
    back = tmp_path / "back.toml"  # OUT now remembers the probe: back to the run's own settings
    back.write_text('[probe]\npath = ""\n[decide]\nkeep_probe_tags = []\n')
    redecide(out=str(out), config=str(back))
