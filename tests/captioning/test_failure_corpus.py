"""Replies real VLMs are reported to write (tests/data/caption_failures.jsonl, one public report
per row) through the stage's own text path, `text.caption`: every failure is rejected, repaired
or flagged as its row says, never accepted silently; every good caption passes untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captioning import text as T
from captioning.prompts import get_prompts

CORPUS = Path(__file__).parents[1] / "data" / "caption_failures.jsonl"
ROWS = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
KINDS = {"reasoning", "template", "language", "repetition_other_script", "loop_at_limit", "markdown",
         "refusal_typographic", "repetition", "good"}


def test_corpus_rows_are_well_formed_and_cover_every_kind():
    assert len({r["id"] for r in ROWS}) == len(ROWS)
    for r in ROWS:
        assert r["kind"] in KINDS and r["expect"] in {"reject", "repair", "flag", "pass"}, r["id"]
        assert r["source"].startswith("https://"), r["id"]
        assert (r["expect"] == "pass") == (r["kind"] == "good"), r["id"]
        assert r["expect"] != "reject" or r.get("gates"), r["id"]
        assert r["expect"] not in ("repair", "flag") or r.get("flags"), r["id"]
    counts = {k: sum(r["kind"] == k for r in ROWS) for k in KINDS}
    assert all(n >= 3 for n in counts.values()), counts


@pytest.mark.parametrize("row", ROWS, ids=[r["id"] for r in ROWS])
def test_reply_gets_what_its_row_says(row):
    got = T.caption(row["reply"], hit_limit=row["hit_limit"], language=get_prompts().language)
    expect = row["expect"]
    if expect == "pass":
        assert got.fired == [] and got.flags == [], got
        assert got.text == " ".join(row["reply"].split())
        return
    assert got.fired or got.flags, f"accepted silently: {got}"
    for flag in row.get("flags", []):
        assert flag in got.flags, got
    if expect == "reject":
        for gate in row["gates"]:
            assert gate in got.fired, got
        return
    assert got.fired == [], got  # repair / flag: the caption that remains passes
    if "text" in row:
        assert got.text == row["text"]
    if "startswith" in row:
        assert got.text.startswith(row["startswith"]), got.text
    for gone in row.get("absent", []):
        assert gone not in got.text, got.text
