
import pytest

from curation.core.config import load_config
from curation.decisions.decide import decide
from curation.core.schema import NEG_TAGS, neg_column, scored_clip_schema, to_table


def table(rows):
    base = {neg_column(t): 0.0 for t in NEG_TAGS}
    return to_table([{**base, **r} for r in rows], scored_clip_schema())


def cfg(**decide):
    return load_config(overrides={"decide": decide}).decide


def test_tags_fire_and_reject_unless_kept():
    t = table([{"clip_id": "a", "motion_score": 0.1, "neg_lecture": 0.9}, {"clip_id": "b", "motion_score": 0.1, "neg_lecture": 0.2}])
    out, _ = decide(t, cfg())
    assert out.column("neg_tags").to_pylist() == [["lecture"], []]
    assert out.column("status").to_pylist() == ["rejected", "accepted"]
    assert out.column("reject_reasons").to_pylist() == [["neg:lecture"], []]
    kept, _ = decide(t, cfg(keep_tags=["lecture"]))
    assert kept.column("neg_tags").to_pylist() == [["lecture"], []]
    assert kept.column("status").to_pylist() == ["accepted", "accepted"]


def test_absolute_rules_and_every_reason_kept():
    t = table([{"clip_id": c, "motion_score": m, "neg_text_dominated": x} for c, m, x in [("a", 0.0, 0.9), ("b", 0.2, 0.0), ("c", 3.0, 0.0)]])
    out, _ = decide(t, cfg())
    assert out.column("reject_reasons").to_pylist() == [["neg:text_dominated", "motion_too_low"], [], ["motion_too_high"]]


def test_percentile_rules_resolve_on_this_run():
    t = table([{"clip_id": str(i), "motion_score": float(i)} for i in range(1, 101)])
    out, resolved = decide(t, cfg(rules=[{"column": "motion_score", "min_pct": 20, "max_pct": 90, "name": "band"}]))
    assert resolved[0].min == pytest.approx(20.8) and resolved[0].max == pytest.approx(90.1)
    assert out.column("status").to_pylist().count("accepted") == 70


def test_nulls_pass_unless_drop_null_and_errors_stay_errors():
    t = table([{"clip_id": "img", "motion_score": None}, {"clip_id": "bad", "motion_score": 0.1, "error": "boom"}])
    out, _ = decide(t, cfg())
    assert out.column("status").to_pylist() == ["accepted", "error"]
    out, _ = decide(t, cfg(rules=[{"column": "motion_score", "min": 0.01, "drop_null": True}]))
    assert out.column("status").to_pylist() == ["rejected", "error"]
    assert out.column("reject_reasons").to_pylist() == [["motion_score"], []]


def test_percentiles_ignore_errored_clips():
    rows = [{"clip_id": str(i), "motion_score": float(i)} for i in range(10)]
    rows.append({"clip_id": "e", "motion_score": 1000.0, "error": "x"})
    _, resolved = decide(table(rows), cfg(rules=[{"column": "motion_score", "max_pct": 100}]))
    assert resolved[0].max == 9.0


def test_unknown_rule_column_is_an_error():
    with pytest.raises(ValueError, match="not in the manifest"):
        decide(table([{"clip_id": "a"}]), cfg(rules=[{"column": "beauty"}]))


def test_empty_table():
    out, _ = decide(table([]), cfg())
    assert out.num_rows == 0 and "status" in out.column_names


def test_vlm_judged_tags_fire_at_their_threshold_and_applying_them_later_gives_the_same_verdicts():
    from curation.decisions.decide import apply_judge

    judge = load_config(overrides={"judge": {"enabled": True, "keep": ["fast_zoom"], "questions": [
        {"name": "slideshow", "threshold": 0.6}, {"name": "fast_zoom", "threshold": 0.5}]}}).judge
    rows = [{"clip_id": "a", "motion_score": 0.1, "vlm_slideshow": 0.7}, {"clip_id": "b", "motion_score": 0.1, "vlm_slideshow": 0.5},
            {"clip_id": "c", "motion_score": 0.1, "vlm_fast_zoom": 0.9}, {"clip_id": "d", "motion_score": 0.1},  # d: not judged, passes
            {"clip_id": "e", "motion_score": 0.0, "vlm_slideshow": 0.9}, {"clip_id": "f", "motion_score": 0.1, "error": "x", "vlm_slideshow": 1.0}]
    from curation.core.schema import clip_schema

    t = to_table([{**{neg_column(x): 0.0 for x in NEG_TAGS}, **r} for r in rows], clip_schema())
    once, _ = decide(t, cfg(), judge)
    assert once.column("status").to_pylist() == ["rejected", "accepted", "accepted", "accepted", "rejected", "error"]
    assert once.column("reject_reasons").to_pylist() == [["vlm_slideshow"], [], [], [], ["motion_too_low", "vlm_slideshow"], []]
    assert once.column("neg_tags").to_pylist()[2] == ["vlm_fast_zoom"]  # kept: tagged, not rejected
    vlm = ["vlm_slideshow", "vlm_fast_zoom"]
    first, _ = decide(t.drop_columns(vlm), cfg(), judge)  # before the judge has answered
    later = apply_judge(first.append_column(vlm[0], t.column(vlm[0])).append_column(vlm[1], t.column(vlm[1])), judge)
    for c in ("status", "neg_tags", "reject_reasons"):
        assert later.column(c).to_pylist() == once.column(c).to_pylist(), c
    assert apply_judge(later, judge).column("reject_reasons").to_pylist() == once.column("reject_reasons").to_pylist()  # idempotent
    off = load_config().judge
    assert decide(t, cfg(), off)[0].column("status").to_pylist()[0] == "accepted"  # judge off: vlm_* ignored
