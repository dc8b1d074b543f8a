"""Calibration arithmetic and label parsing on hand-made tables (no video): the confusion,
precision/recall, the threshold for a target precision, and the label rules users rely on."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from curation.decisions.calibrate import calibrate, format_table, match_labels, read_labels, threshold_for_precision
from curation.core.config import load_config
from curation.decisions.decide import decide
from curation.core.schema import NEG_TAGS, neg_column

CFG = load_config()


def _clips(rows: list[dict]) -> pa.Table:
    """Scored clips with every tag at 0 unless given, then decided with the default config."""
    out = []
    for i, r in enumerate(rows):
        row = {
            "clip_id": f"c{i}", "source": f"/data/{r.get('source', 'a.mp4')}", "start_s": r.get("start_s", 0.0),
            "end_s": r.get("end_s", 4.0), "error": None, "motion_score": r.get("motion_score", 0.1),
        }
        for t in NEG_TAGS:
            row[neg_column(t)] = r.get(t, 0.0)
        out.append(row)
    decided, _ = decide(pa.Table.from_pylist(out), CFG.decide)
    return decided


def _labels(tmp_path, text: str):
    p = tmp_path / "labels.csv"
    p.write_text(text)
    return read_labels(p, set(NEG_TAGS) | {"motion_too_low", "motion_too_high"})


def _row(result: dict, name: str) -> dict:
    return next(r for r in result["rows"] if r["name"] == name)


def test_confusion_precision_recall(tmp_path):
    # low_quality: fires (>= 0.5) on a, b, c; the labels say a, b, d are low quality.
    table = _clips([
        {"source": "a.mp4", "low_quality": 0.9},
        {"source": "b.mp4", "low_quality": 0.6},
        {"source": "c.mp4", "low_quality": 0.55},
        {"source": "d.mp4", "low_quality": 0.3},
        {"source": "e.mp4", "low_quality": 0.1},
    ])
    labels = _labels(tmp_path, (
        "source,verdict,must_fire,reason\n"
        "a.mp4,reject,low_quality,blurry\n"
        "b.mp4,reject,low_quality,tiny\n"
        "c.mp4,accept,,sharp enough\n"
        "d.mp4,reject,low_quality,blocky\n"
        "e.mp4,accept,,fine\n"
    ))
    res = calibrate(table, labels, CFG, target_precision=0.9)
    lq = _row(res, "low_quality")
    assert (lq["tp"], lq["fp"], lq["fn"], lq["tn"]) == (2, 1, 1, 1)
    assert lq["precision"] == pytest.approx(2 / 3)
    assert lq["recall"] == pytest.approx(2 / 3)
    # Precision >= 0.9 needs the threshold above c's 0.55: 0.6 keeps a and b (recall 2/3).
    assert lq["threshold_for_target"] == pytest.approx(0.6)
    assert lq["recall_at_target"] == pytest.approx(2 / 3)
    assert res["verdicts"]["accept->rejected"] == 1 and res["verdicts"]["reject->accepted"] == 1
    assert res["fire_rate_on_good"]["low_quality"] == pytest.approx(0.5)
    # Other tags are judged on the accepted clips only (the reject rows say nothing of them).
    assert _row(res, "lecture")["tn"] == 2 and _row(res, "lecture")["tp"] == 0
    text = format_table(res)
    assert "low_quality" in text and "0.67" in text and "miss c2" in text


def test_threshold_for_precision_sweeps_scores():
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.2])
    y = np.array([True, False, True, True, False])
    assert threshold_for_precision(s, y, 0.75) == (pytest.approx(0.6), pytest.approx(1.0))  # 3 of 4
    assert threshold_for_precision(s, y, 1.0) == (pytest.approx(0.9), pytest.approx(1 / 3))
    assert threshold_for_precision(s, np.zeros(5, bool), 0.9) == (None, None)
    # A min-rule rejects below its bound: the bound sits just above the positives' values.
    t, rec = threshold_for_precision(np.array([0.001, 0.002, 0.05, 0.1]), np.array([True, True, False, False]), 0.9, fire_below=True)
    assert 0.002 < t < 0.0021 and rec == 1.0


def test_rule_rows_use_reject_reasons(tmp_path):
    table = _clips([{"source": "still.mp4", "motion_score": 0.001}, {"source": "pan.mp4", "motion_score": 0.2}])
    labels = _labels(tmp_path, "source,verdict,must_fire\nstill.mp4,reject,motion_too_low\npan.mp4,accept,\n")
    row = _row(calibrate(table, labels, CFG), "motion_too_low")
    assert (row["tp"], row["fp"], row["fn"], row["tn"]) == (1, 0, 0, 1)
    assert row["threshold"] == "< 0.005"


def test_most_specific_label_wins(tmp_path):
    table = _clips([
        {"source": "v.mp4", "start_s": 0.0, "end_s": 4.0},
        {"source": "v.mp4", "start_s": 4.0, "end_s": 8.0},
        {"source": "v.mp4", "start_s": 8.0, "end_s": 12.0},
    ])
    labels = _labels(tmp_path, (
        "source,start_s,end_s,clip_id,verdict,must_fire\n"
        "v.mp4,,,,accept,\n"
        "v.mp4,3,9,,reject,incoherent_motion\n"
        ",,,c2,reject,noisy_screen\n"
    ))
    got = [lb.must_fire for lb in match_labels(table.to_pylist(), labels)]
    assert got == [frozenset(), frozenset({"incoherent_motion"}), frozenset({"noisy_screen"})]


def test_spans_in_frames(tmp_path):
    rows = [{"source": "v.mp4", "start_s": 0.0, "end_s": 2.0}, {"source": "v.mp4", "start_s": 2.0, "end_s": 4.0}]
    table = _clips(rows).append_column("start_frame", pa.array([0, 50])).append_column("end_frame", pa.array([50, 100]))
    labels = _labels(tmp_path, "source,start_frame,end_frame,verdict,must_fire\nv.mp4,,,accept,\nv.mp4,40,100,reject,low_quality\n")
    got = [lb.verdict for lb in match_labels(table.to_pylist(), labels)]
    assert got == ["accept", "reject"]  # clip 0's middle frame (24.5) is before 40


@pytest.mark.parametrize(
    "text,needle",
    [
        ("source,verdict\na.mp4,maybe\n", "labels.csv:2: verdict"),
        ("source,verdict,must_fire\na.mp4,reject,blurry\n", "unknown tag or rule"),
        ("source,verdict,must_fire\na.mp4,accept,low_quality\n", "accepted clip cannot"),
        ("source,start_s,end_s,verdict\na.mp4,5,2,reject\n", "span end"),
        ("source,start_s,start_frame,verdict\na.mp4,5,2,reject\n", "not both"),
        ("clip,verdict\na,accept\n", "header"),
        ("# a comment\nsource,verdict\n# another\na.mp4,nope\n", "labels.csv:4"),
    ],
)
def test_bad_labels_name_the_line(tmp_path, text, needle):
    with pytest.raises(ValueError, match=needle):
        _labels(tmp_path, text)


def test_unlabelled_and_unmatched_are_reported(tmp_path):
    table = _clips([{"source": "a.mp4"}, {"source": "b.mp4"}])
    labels = _labels(tmp_path, "source,verdict\na.mp4,accept\nmissing.mp4,reject\n")
    res = calibrate(table, labels, CFG)
    assert res["labelled"] == 1 and res["unlabelled"] == 1
    assert res["labels_without_clips"] == ["line 3: missing.mp4 (reject)"]
    assert res["verdicts"]["reject->no_clips"] == 1
