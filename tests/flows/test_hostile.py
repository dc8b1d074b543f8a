"""The hostile corpus (curation/corpora/hostile.py: >= 25 kinds of broken, odd and hostile media)
through one real run of the console script, beside good files.

For every input: the run completes (exit 0), exactly one `sources` row, an error in plain
words with an `error_code` that groups in the report, good files unaffected; memory stays
bounded (size limits refuse bombs from their headers). The tally goes to the suite's last
line (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from curation.corpora.hostile import make_hostile_corpus

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CODES = {"empty", "not_found", "unreadable", "not_a_file", "not_media", "no_video", "no_size", "unsupported_codec",
         "too_large", "too_small", "undecodable", "decode", "truncated", "timeout", "extract"}
# What an error must never read like: an exception escaping from a library.
RAW = re.compile(r"Traceback|AssertionError|error: \(-\d+|Errno -?\d+\]|object has no attribute|NoneType|cv2\.error")
MAX_RSS_MB = 3000  # the whole run, 8K frames included; a decoded bomb would need ~10 GB


def cli_env(**extra: str) -> dict:
    """The console script's environment: this checkout, and the suite's Prefect server (a
    run then skips starting its own temporary server, ~20 s)."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PYTHONPATH": str(REPO), **extra}
    if PREFECT_API_URL.value():
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    return env


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory, prefect_server):
    root = tmp_path_factory.mktemp("hostile")
    expect, kinds = make_hostile_corpus(root)
    out = root / "out"
    # Captioning is off: what reaches it are the good clips, and its own crash-and-resume is
    # in test_crash_resume.py; the corpus is about media.
    config = root / "run.toml"
    config.write_text("[caption]\nenabled = false\n")
    cmd = [sys.executable, "-m", "flows.cli", "run", str(root / "in"), "--out", str(out), "--profile", "tiny", "--executor", "local",
           "--config", str(config)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=cli_env(), cwd=REPO)
    finally:
        os.chmod(root / "in" / "locked", 0o755)  # the unreadable folder, so pytest can clean up
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return root, expect, kinds, out, r, (peak_mb if peak_mb > before / 1024 else None)


def _rows(out: Path, kind: str) -> list[dict]:
    d = out / "manifest" / kind
    return pads.dataset(d).to_table().to_pylist() if d.exists() else []


def test_hostile_corpus_run_completes_with_one_row_per_input(hostile_run, hostile_tally):
    root, expect, kinds, out, r, _ = hostile_run
    sources = _rows(out, "sources")
    names = Counter(os.path.relpath(s["source"], root / "in") for s in sources)
    errors = [s for s in sources if s["status"] == "error"]
    hostile_tally.update(
        kinds=len(kinds),
        inputs=len(expect),
        crashes=int(r.returncode != 0) + sum(1 for s in errors if s["error_code"] not in CODES or RAW.search(s["error"] or "")),
        lost=len(set(expect) - set(names)),
        duplicates=sum(n - 1 for n in names.values()) + len(set(names) - set(expect)),
    )
    assert len(kinds) >= 25
    assert r.returncode == 0, r.stderr[-4000:]
    assert sorted(names) == sorted(expect) and set(names.values()) == {1}
    assert hostile_tally["crashes"] == 0, [(s["source"], s["error_code"], s["error"]) for s in errors]


@pytest.mark.parametrize("field", ["status", "error_code", "clips", "size", "clip_sizes", "rate", "tags"])
def test_each_input_gets_its_right_result(hostile_run, field):
    root, expect, _, out, _, _ = hostile_run
    rows = {os.path.relpath(s["source"], root / "in"): s for s in _rows(out, "sources")}
    spans: dict[str, list] = {}
    sizes: dict[str, list] = {}
    tags: dict[str, set] = {}
    for c in sorted(_rows(out, "clips"), key=lambda c: c["start_frame"]):
        tags.setdefault(os.path.relpath(c["source"], root / "in"), set()).update(c["neg_tags"] or ())
        spans.setdefault(os.path.relpath(c["source"], root / "in"), []).append((c["start_frame"], c["end_frame"]))
        sizes.setdefault(os.path.relpath(c["source"], root / "in"), []).append((c["width"], c["height"]))
    wrong = []
    for name, want in expect.items():
        row = rows[name]
        got_spans = sorted(spans.get(name, []))
        if field == "status" and row["status"] != want["status"]:
            wrong.append((name, row["status"], row["error"]))
        elif field == "error_code" and want["status"] == "error" and (
            row["error_code"] != want.get("error_code", row["error_code"]) or want.get("error_contains", "") not in row["error"]
        ):
            wrong.append((name, row["error_code"], row["error"]))
        elif field == "clips" and "clips" in want and got_spans != want["clips"]:
            wrong.append((name, got_spans, want["clips"]))
        elif field == "clips" and "clips_within" in want and not (
            len(got_spans) == len(want["clips_within"])
            and all(lo <= a < b <= hi and (hi - lo) - (b - a) <= want["lose_at_most"] for (a, b), (lo, hi) in zip(got_spans, want["clips_within"]))
        ):
            wrong.append((name, got_spans, want["clips_within"]))
        elif field == "clips" and "min_clips" in want and len(got_spans) < want["min_clips"]:
            wrong.append((name, got_spans))
        elif field == "size" and "width" in want and (row["width"], row["height"], row["rotation"] or 0) != (
            want["width"], want["height"], want.get("rotation", 0)
        ):
            wrong.append((name, row["width"], row["height"], row["rotation"]))
        elif field == "clip_sizes" and "clip_sizes" in want and sizes.get(name, []) != want["clip_sizes"]:
            wrong.append((name, sizes.get(name), want["clip_sizes"]))
        elif field == "rate" and ("fps" in want and row["fps"] != pytest.approx(want["fps"], abs=0.01) or
                                  "vfr" in want and row["vfr"] != want["vfr"]):
            wrong.append((name, row["fps"], row["vfr"], want.get("fps"), want.get("vfr")))
        elif field == "tags" and (set(want.get("tags", ())) - tags.get(name, set()) or set(want.get("not_tags", ())) & tags.get(name, set())):
            wrong.append((name, sorted(tags.get(name, ())), want.get("tags"), want.get("not_tags")))
    assert not wrong


def test_errors_are_plain_words_grouped_by_code_in_the_report(hostile_run):
    root, expect, _, out, _, _ = hostile_run
    sources = _rows(out, "sources")
    errors = [s for s in sources if s["status"] == "error"]
    assert errors and all(s["error"] and s["error_code"] in CODES and not RAW.search(s["error"]) for s in errors)
    report = json.loads((out / "report.json").read_text())
    assert report["sources_failed_by_code"] == dict(Counter(s["error_code"] for s in errors))
    assert sum(report["sources_failed_by_code"].values()) == report["funnel"]["sources_failed"]


def test_good_files_beside_hostile_ones_are_curated(hostile_run):
    """Accepted clips of the good inputs are on disk and in exactly one shard each."""
    root, expect, _, out, _, _ = hostile_run
    clips = _rows(out, "clips")
    ids = Counter(c["clip_id"] for c in clips)
    assert set(ids.values()) == {1}
    accepted = [c for c in clips if c["status"] == "accepted"]
    assert accepted
    for c in accepted:
        assert (out / c["clip_path"]).stat().st_size > 0
    index = json.loads((out / "shards" / "index.json").read_text())
    keys = Counter(k for s in index["shards"] for k in s["keys"])
    assert set(keys.values()) <= {1}
    assert set(keys) | set(index["unsharded"]) == {c["clip_id"] for c in accepted}


def test_memory_stays_bounded(hostile_run):
    *_, peak_mb = hostile_run
    if peak_mb is None:
        pytest.skip("an earlier child of this process used more memory; the peak is not this run's")
    assert peak_mb < MAX_RSS_MB, f"peak RSS {peak_mb:.0f} MB"
