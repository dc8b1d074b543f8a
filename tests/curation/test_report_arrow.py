"""The report's figures are computed in Arrow (curation/outputs/report_tables.py), so a run of
millions of clips never turns its manifest into Python rows: they must equal the plain-Python
counts."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.core.config import load_config
from curation.outputs.report_tables import MAX_GROUPS, PER_SHEET, captions, count_list_values, duplicates, ranked, summarize, value_counts


def clips_table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    tags = [["lecture"], [], None, ["lecture", "text_dominated"], ["low_quality"]]
    return pa.table({
        "clip_id": [f"c{i:05d}" for i in range(n)],
        "source": [f"/in/s{i // 3}.mp4" for i in range(n)],
        "status": rng.choice(["accepted", "rejected", "error"], n).tolist(),
        "reject_reasons": [tags[i % len(tags)] for i in range(n)],
        "aesthetic_score": [None if i % 11 == 0 else float(v) for i, v in enumerate(rng.integers(0, 4, n))],
        "bucket": [None if i % 7 == 0 else f"{(480, 720)[i % 2]}x480_f49" for i in range(n)],
    })


def test_value_counts_match_python_counts_most_common_first():
    t = clips_table(500)
    expected = Counter(b for b in t.column("bucket").to_pylist() if b is not None)
    got = value_counts(t.column("bucket"))
    assert got == expected and list(got.values()) == sorted(got.values(), reverse=True)
    with_null = value_counts(t.column("bucket"), null_as="(none)")
    assert with_null["(none)"] == t.column("bucket").null_count
    assert value_counts(pa.array([], pa.string())) == Counter()


def test_list_value_counts_match_python_counts():
    t = clips_table(500)
    expected = Counter(x for xs in t.column("reject_reasons").to_pylist() for x in xs or ())
    assert count_list_values(t, "reject_reasons") == dict(expected)
    assert count_list_values(t.slice(0, 0), "reject_reasons") == {}


def test_ranked_ends_are_disjoint_even_when_every_score_ties():
    # Heavy ties (4 distinct values over 500 clips): top and bottom must never share a clip,
    # each end is in order, and each holds what PER_SHEET and the scored clips allow.
    for n in (1, 2, 7, 500):
        t = clips_table(n)
        scored = t.filter(pc.and_(pc.not_equal(t.column("status"), "error"), pc.is_valid(t.column("aesthetic_score"))))
        m, values = scored.num_rows, scored.column("aesthetic_score").to_pylist()
        r = ranked(t)
        top, bottom = [e["clip_id"] for e in r["top"]], [e["clip_id"] for e in r["bottom"]]
        assert len(top) == min(PER_SHEET, (m + 1) // 2) and len(bottom) == min(PER_SHEET, m - len(top)), (n, m)
        assert not set(top) & set(bottom), n
        top_v, bottom_v = [e["value"] for e in r["top"]], [e["value"] for e in r["bottom"]]
        assert top_v == sorted(top_v, reverse=True) and bottom_v == sorted(bottom_v)
        if top:
            assert top_v[0] == max(values)
        if bottom:
            assert bottom_v[0] == min(values)


def with_captions_and_twins(n: int, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    t = clips_table(n, seed)
    words = ["a", "red", "car", "drives", "  past", "é\u00a0x", "\tthe", "city"]
    caption = [None if i % 5 == 0 else " ".join(rng.choice(words, rng.integers(0, 12))) for i in range(n)]
    error = [None if i % 5 else ("refusal: empty reply" if i % 3 else "timeout: 30 s, résumé") for i in range(n)]
    ids = t.column("clip_id").to_pylist()
    dup_of = [None if i % 4 else ("" if i % 8 == 0 else ids[rng.integers(0, n // 10 + 1)]) for i in range(n)]
    cols = {
        "caption": caption, "caption_error": error,
        "caption_tokens": [None if c is None else float(len(c)) for c in caption],
        "caption_flags": [None if c is None else (["repetition"] if i % 6 == 1 else []) for i, c in enumerate(caption)],
        "caption_model": [None if c is None else ("m1" if i % 2 else ("" if i % 7 == 0 else "m2")) for i, c in enumerate(caption)],
        "caption_prompt_version": [None if c is None else "v1" for c in caption],
        "dup_of": dup_of, "dup_sim": [None if d is None else 0.97 for d in dup_of],
        "dedup": [None if i % 9 == 0 else ("rejected" if dup_of[i] else "kept") for i in range(n)],
    }
    for name, values in cols.items():
        t = t.append_column(name, pa.array(values))
    return t


def captions_reference(clips: pa.Table) -> dict:
    """The caption section as plain Python over every row (what the report did before)."""
    rows = [r for r in clips.to_pylist() if r.get("caption") is not None]
    texts = [r["caption"] for r in rows]
    errors = [e for e in clips.column("caption_error").to_pylist() if e is not None]
    step = max(1, len(rows) // PER_SHEET)
    return {
        "count": len(texts),
        "length_words": summarize(np.array([len(t.split()) for t in texts], np.float64)),
        "length_chars": summarize(np.array([len(t) for t in texts], np.float64)),
        "errors": len(errors),
        "errors_by_reason": dict(Counter(e.split(":")[0][:80] for e in errors).most_common()),
        "models": dict(Counter(r["caption_model"] for r in rows if r.get("caption_model")).most_common()),
        "prompt_versions": dict(Counter(r["caption_prompt_version"] for r in rows if r.get("caption_prompt_version"))),
        "samples": [r["clip_id"] for r in sorted(rows, key=lambda r: r["clip_id"])[::step][:PER_SHEET]],
    }


def test_caption_section_matches_plain_python():
    for n in (0, 3, 400):
        t = with_captions_and_twins(n)
        got, want = captions(t), captions_reference(t)
        assert got["present"] and got["count"] == want["count"]
        for key in ("length_words", "length_chars", "errors", "errors_by_reason", "models", "prompt_versions"):
            assert got[key] == want[key], (n, key)
        assert [s["clip_id"] for s in got["samples"]] == want["samples"]
    assert captions(clips_table(5)) == {"present": False, "count": 0, "off": None}


def test_duplicate_groups_match_plain_python():
    t = with_captions_and_twins(400)
    rows = t.to_pylist()
    groups: dict[str, list[str]] = {}
    for r in rows:
        if r["dup_of"]:
            groups.setdefault(r["dup_of"], []).append(r["clip_id"])
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:MAX_GROUPS]
    cfg = load_config(profile="tiny")
    got = duplicates(t, cfg)
    assert got["rejected"] == sum(map(len, groups.values())) and got["groups_total"] == len(groups)
    assert got["judged"] == sum(r["dedup"] is not None for r in rows)
    assert [(g["kept"], g["size"]) for g in got["groups"]] == [(k, 1 + len(v)) for k, v in ordered]
    for g, (kept, dups) in zip(got["groups"], ordered):
        assert [e["clip_id"] for e in g["clips"]] == [kept] + sorted(dups)[: PER_SHEET - 1]
    assert duplicates(clips_table(5), cfg)["present"] is False


# What the report says about stages a run left out: one line naming the setting, never an
# empty table, an empty plot or an empty contact sheet.

def _off_cfg():
    return load_config(profile="cpu", overrides={"models": {"enabled": False}, "caption": {"enabled": False}})


def test_columns_a_disabled_stage_never_filled_are_named_with_the_setting():
    from curation.outputs.report import not_computed

    t = clips_table(20).append_column("zs_lecture", pa.nulls(20, pa.float64())).append_column("dup_sim", pa.nulls(20, pa.float64()))
    t = t.append_column("motion_score", pa.nulls(20, pa.float64()))
    t = t.set_column(t.schema.get_field_index("aesthetic_score"), "aesthetic_score", pa.nulls(20, pa.float64()))
    groups = not_computed(_off_cfg(), t, ["aesthetic_score", "zs_lecture", "dup_sim", "motion_score"])
    assert groups == [
        {"reason": "[models] enabled = false", "columns": ["aesthetic_score", "zs_lecture"]},
        {"reason": "no embeddings to compare: [models] enabled = false", "columns": ["dup_sim"]},
        {"reason": "no values in this run", "columns": ["motion_score"]},  # its stage ran: say so, do not blame a setting
    ]
    assert not_computed(load_config(profile="cpu"), clips_table(20), ["aesthetic_score"]) == []


def test_sections_of_disabled_stages_collapse_to_one_line():
    from curation.outputs.report import stages_run
    from curation.outputs.report_tables import off

    cfg, t = _off_cfg(), clips_table(30)
    assert ranked(t, off(cfg).get("aesthetic")) == {
        "column": "aesthetic_score", "note": "not computed in this run ([models] enabled = false)", "top": [], "bottom": []}
    assert duplicates(t, cfg)["off"] == "no embeddings to compare: [models] enabled = false"
    assert captions(t, cfg) == {"present": False, "count": 0, "off": "[caption] enabled = false"}
    no_dedup = load_config(profile="cpu", overrides={"dedup": {"enabled": False}})
    assert duplicates(t, no_dedup)["off"] == "[dedup] enabled = false"
    rows = {r["stage"]: r for r in stages_run(cfg, t)}
    assert rows["captions"] == {"stage": "captions", "on": False, "detail": "off ([caption] enabled = false)"}
    assert not rows["CLIP: aesthetic, zero-shot tags, embeddings"]["on"] and rows["OCR text score"]["on"]


def test_gallery_shows_accepted_clips_spread_over_the_run_whatever_models_ran():
    from curation.outputs.report_tables import GALLERY, gallery

    t = clips_table(300).set_column(4, "aesthetic_score", pa.nulls(300, pa.float64()))
    t = t.append_column("motion_score", pa.array(np.linspace(0, 1, 300)))
    g = gallery(t)
    accepted = [r for r in t.to_pylist() if r["status"] == "accepted"]
    assert g["accepted"] == len(accepted) and len(g["clips"]) == GALLERY
    assert {e["status"] for e in g["clips"]} == {"accepted"} and {e["column"] for e in g["clips"]} == {"motion_score"}
    assert len({e["source"] for e in g["clips"]}) >= GALLERY // 2  # spread, not the first source's clips
    assert gallery(t.filter(pc.equal(t.column("status"), "error"))) == {"accepted": 0, "clips": []}


def test_config_rows_mark_what_differs_from_the_profile():
    import json

    from curation.core.config import to_dict
    from curation.outputs.report import config_rows

    rows = config_rows(json.loads(json.dumps(to_dict(_off_cfg()), default=str)))
    changed = {(r["section"], r["key"]) for r in rows if r["changed"]}
    assert changed == {("models", "enabled"), ("caption", "enabled")}
    assert rows[0]["section"] == "decode"  # RunConfig's order, not the JSON's alphabetical one
    rules = next(r for r in rows if (r["section"], r["key"]) == ("decide", "rules"))
    assert rules["value"].startswith('[{"column": "motion_score"')
