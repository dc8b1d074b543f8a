"""The VLM judge and the caption stream inside `videomill run` on Ray: a tiny-profile run with
`[judge] enabled = true`, `videomill decide` re-tuning a judge threshold without asking again,
and the caption actors loading the model once each for a run of many blocks. THE TINY VLM IS
RANDOM-INITIALISED AND UNTRAINED: its P(yes) is ~0.44 on every clip, so thresholds below and
above it stand for "the judge says yes" and "no"; only the machinery is checked."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pyarrow.dataset as pads
import pytest

from curation.corpora import synthetic
from tests.captioning.test_caption_flow import check_captions, clips, shard_texts

pytestmark = pytest.mark.slow

JUDGE = """profile = "tiny"
[judge]
enabled = true
[[judge.questions]]
name = "over_edited"
threshold = {over_edited}
[[judge.questions]]
name = "slideshow"
threshold = 0.99
"""


@pytest.fixture(scope="module")
def judged(tmp_path_factory, ray_local, prefect_server):
    """`videomill run --profile tiny` with the judge on, its over_edited threshold under the
    tiny model's P(yes): the judge rejects every clip."""
    from flows.curate import curate

    root = tmp_path_factory.mktemp("judge_in")
    synthetic.write_video(root / "wide.mp4", synthetic.moving(75, (480, 270), (3.0, 0.0), seed=1), 25)
    synthetic.write_video(root / "square.mp4", synthetic.moving(75, (360, 270), (2.0, 1.0), seed=3), 25)
    cv2.imwrite(str(root / "photo.jpg"), synthetic.texture(288, 512, 11))
    out = tmp_path_factory.mktemp("judge_out")
    config = out.parent / f"{out.name}.toml"
    config.write_text(JUDGE.format(over_edited=0.2))
    summary = curate(inputs=[str(root)], out=str(out), config=str(config))
    return root, out, summary


def test_the_judge_fills_its_columns_and_decide_rejects_on_them_by_name(judged):
    _, out, summary = judged
    rows = clips(out)
    assert len(rows) == 3 and summary["rejected_by_reason"] == {"vlm_over_edited": 3}
    for c in rows:
        assert c["status"] == "rejected" and c["reject_reasons"] == ["vlm_over_edited"], c
        assert "vlm_over_edited" in c["neg_tags"] and 0.2 <= c["vlm_over_edited"] < 0.99 and c["vlm_slideshow"] is not None
        assert c["vlm_lecture"] is None and c["judge_error"] is None and c["judge_key"]  # not asked; asked and answered
        assert c["caption"] is None and c["clip_path"] is None
    assert not list((out / "clips").iterdir())  # the clips the judge rejected left OUT/clips
    assert not (out / "captions").exists()  # and none was captioned
    report = json.loads((out / "report.json").read_text())
    assert report["tags_fired"]["vlm_over_edited"] == 3 and report["rejected_by_reason"] == {"vlm_over_edited": 3}
    assert [t["name"] for t in report["thresholds"]["vlm_over_edited"]] == ["vlm_over_edited"]
    sheet = next(s for s in report["contact_sheets"] if s["tag"] == "vlm_over_edited")
    assert sheet["fired"] == 3 and sheet["threshold"] == 0.2
    assert "vlm_over_edited" in (out / "report.html").read_text()


def test_calibrate_scores_a_judged_tag_like_the_others(judged):
    from curation.decisions.calibrate import calibrate_run

    _, out, _ = judged
    labels = out.parent / "judge_labels.csv"
    labels.write_text("source,start_s,end_s,clip_id,verdict,must_fire,must_not_fire,reason\n"
                      "wide.mp4,,,,reject,vlm_over_edited,,edited\nsquare.mp4,,,,accept,,,fine\n")
    rows = {r["name"]: r for r in calibrate_run(out, labels)["rows"]}
    assert (rows["vlm_over_edited"]["tp"], rows["vlm_over_edited"]["fp"]) == (1, 1)


def test_decide_with_a_looser_threshold_captions_them_without_asking_again(judged):
    from flows.curate import redecide

    _, out, _ = judged
    answers = {c["clip_id"]: c["vlm_over_edited"] for c in clips(out)}
    parts = {p: p.stat().st_mtime_ns for p in (out / "judge").rglob("*.parquet")}
    config = out.parent / f"{out.name}-loose.toml"
    config.write_text(JUDGE.format(over_edited=0.9))
    summary = redecide(str(out), config=str(config))
    assert summary["accepted"] == 3 and summary["rejected_by_reason"] == {}
    assert {p: p.stat().st_mtime_ns for p in (out / "judge").rglob("*.parquet")} == parts  # not asked again
    rows = check_captions(out)
    assert {c["clip_id"]: c["vlm_over_edited"] for c in rows} == answers
    assert all(c["caption"] is not None or c["caption_error"] for c in rows)
    assert set(shard_texts(out)) == set(answers)
    assert sorted(p.stem for p in (out / "clips").iterdir()) == sorted(answers)


def test_a_run_of_many_blocks_loads_the_model_once_per_actor(judged, tmp_path):
    """The judged run's 3 clips taken as accepted, captioned in blocks (parts) of 1 and batches
    of 1 on 2 caption actors: 2 loads, not one per block (the caption stream's actor pool
    lives for the whole run)."""
    import dataclasses
    import shutil

    import pyarrow as pa

    from curation.core.config import load_config
    from curation.core.manifest import Layout
    from flows.captions import extract_and_caption

    _, judged_out, _ = judged
    out = tmp_path / "out"
    shutil.copytree(judged_out, out)
    shutil.rmtree(out / "captions", ignore_errors=True)  # (the looser-threshold test captioned them)
    decided = pads.dataset(out / "manifest" / "clips").to_table()
    decided = decided.set_column(decided.schema.get_field_index("status"), "status", pa.array(["accepted"] * decided.num_rows))
    assert decided.num_rows == 3
    tiny = load_config(profile="tiny")
    cfg = dataclasses.replace(tiny, caption=dataclasses.replace(tiny.caption, actors=2, batch_size=1, block_size=1))
    extracted, counts = extract_and_caption(decided, Layout.at(out), cfg)
    assert extracted.num_rows == 3 and extracted.column("error").null_count == 3
    assert counts["captioned"] == 3 and counts["model_loads"] == 2, counts
    assert len(list(Path(out, "captions").rglob("part-*.parquet"))) == 3  # a part per block of 1, as blocks completed
