"""The shot benchmark's labels (tests/data/shots_labels.json) against the edits that make the
videos (bench/shotset.py), and the scoring rule bench/shots.py applies (PySceneDetect's)."""

from __future__ import annotations

from collections import Counter

import pytest

from bench import shotset
from bench.shots import Detection, score_video, windows
from curation.analysis.split_scenes import SplitConfig

LABELS = shotset.load_labels()["videos"]


def test_generated_labels_match_the_edit_plans():
    # bench/shotset.py --write-labels rewrites them; the build refuses a mismatch too.
    gen = shotset.generated_labels()
    for name, lab in gen.items():
        assert LABELS[name] == lab, name


def test_labels_are_well_formed():
    for name, v in LABELS.items():
        last = -1
        for t in v["transitions"]:
            assert t["type"] in shotset.HARD + shotset.GRADUAL, name
            assert (t["first"] == t["end"]) == (t["type"] in shotset.HARD), (name, t)
            assert last < t["first"] <= t["end"] < v["frames"], (name, t)
            last = t["end"]
        assert v["part"] in ("dev", "held") and v["kind"] in ("edited", "real", "negative")
        assert v["kind"] != "negative" or not v["transitions"]


def test_both_parts_hold_every_kind():
    kinds = Counter((v["part"], t["type"]) for v in LABELS.values() for t in v["transitions"])
    negs = Counter(v["part"] for v in LABELS.values() if v["kind"] == "negative")
    for part in ("dev", "held"):
        assert all(kinds[(part, k)] >= 4 for k in shotset.HARD + shotset.GRADUAL), kinds
        assert negs[part] >= 6


LAB = {"kind": "edited", "part": "dev", "frames": 300,
       "transitions": [{"type": "cut", "first": 50, "end": 50}, {"type": "dissolve", "first": 100, "end": 120},
                       {"type": "fade", "first": 200, "end": 230, "fade": [10, 10, 10]}]}


@pytest.mark.parametrize(
    "cuts,tp,fp,fn",
    [
        ([50, 120, 230], 3, 0, 0),  # each boundary where the next shot starts
        ([52, 99, 215], 3, 0, 0),  # +-2 frames for cuts; anywhere in [first - 1, end] for gradual
        ([53, 121, 231], 0, 3, 3),  # one frame outside each
        ([50, 105, 110, 230], 3, 1, 0),  # a second prediction inside a dissolve is a false alarm
        ([], 0, 0, 3),
    ],
)
def test_scoring_follows_pyscenedetects_rule(cuts, tp, fp, fn):
    s = score_video("x", LAB, Detection(cuts), [])
    o = s.overall
    assert (o.tp, o.fp, o.fn) == (tp, fp, fn)


def test_a_clip_holding_any_transition_frame_is_dirty():
    s = score_video("x", LAB, Detection([]), [(0, 50), (50, 100), (120, 200), (230, 300)])
    assert s.dirty_clips == 0
    for bad in [(0, 51), (49, 60), (60, 101), (119, 150), (150, 201), (229, 300)]:
        assert score_video("x", LAB, Detection([]), [bad]).dirty_clips == 1, bad


def test_peer_windows_leave_out_their_transition_frames():
    det = Detection([50, 120], drops=[(101, 120)])
    ws = windows(det, 300, 25.0, SplitConfig())
    assert ws == [(0, 50), (50, 101), (120, 300)]
