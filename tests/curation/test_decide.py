
import pytest

from curation.config import load_config
from curation.decide import decide
from curation.schema import NEG_TAGS, neg_column, scored_clip_schema, to_table


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
