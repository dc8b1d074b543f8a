"""The dataset report on a real run: its numbers against the manifest, and its HTML in Chromium.

One small run (a few 2.4 s videos, a still, a slide, a photo and two broken files) is curated
once per module through the real flow; every test reads that OUT (or a copy it may change).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from curation.core.manifest import Layout
from curation.outputs.report import NOT_SCORES, TINY_WARNING, build_report, load_run, write_report
from curation.outputs.report_tables import PER_SHEET
from curation.corpora.synthetic import moving, static, text_slide, texture, write_video

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report_inputs(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("report_in")
    n, size = 60, (480, 270)  # 2.4 s at 25 fps: one clip each (min_clip_s is 2 s); smaller is low_quality
    write_video(src / "pan.mp4", moving(n, size, (3.0, 0.0), seed=1), 25)
    write_video(src / "tilt.mp4", moving(72, size, (0.0, 2.0), seed=2), 30)
    write_video(src / "still.mp4", static(n, size, seed=3), 25)
    write_video(src / "slide.mp4", text_slide(n, size), 25)  # lecture / text tags fire
    cv2.imwrite(str(src / "photo.jpg"), cv2.cvtColor(texture(270, 480, 4), cv2.COLOR_RGB2BGR))
    (src / "empty.mp4").write_bytes(b"")
    (src / "notes.mp4").write_text("not a video\n" * 20)
    return src


@pytest.fixture(scope="module")
def run_out(report_inputs, tmp_path_factory, prefect_server) -> Path:
    from flows.curate import curate

    src = report_inputs
    out = tmp_path_factory.mktemp("report_out")
    curate(inputs=[str(src)], out=str(out), profile="tiny", executor="local")
    write_report(out)
    return out


@pytest.fixture(scope="module")
def cpu_run_out(report_inputs, tmp_path_factory, prefect_server) -> Path:
    """The same inputs on the cpu profile with CLIP and captions off (what runs offline on a
    fresh clone): OCR, motion and the heuristics, nothing else."""
    from flows.curate import curate

    cfg = tmp_path_factory.mktemp("cpu_cfg") / "cpu.toml"
    cfg.write_text("[models]\nenabled = false\n[caption]\nenabled = false\n")
    out = tmp_path_factory.mktemp("report_cpu_out")
    curate(inputs=[str(report_inputs)], out=str(out), config=str(cfg), executor="local")
    return out


def _manifest(out: Path) -> tuple[list[dict], list[dict]]:
    sources = pads.dataset(out / "manifest" / "sources").to_table().to_pylist()
    clips = pads.dataset(out / "manifest" / "clips").to_table().to_pylist()
    return sources, clips


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-5 * max(1.0, abs(b))  # the report keeps 6 significant digits


def test_report_json_matches_the_manifest(run_out):
    report = json.loads((run_out / "report.json").read_text())
    sources, clips = _manifest(run_out)
    f = report["funnel"]
    status = Counter(s["status"] for s in sources)
    verdict = Counter(c["status"] for c in clips)
    assert f["inputs"] == len(sources) == 7
    assert (f["sources_ok"], f["sources_failed"]) == (status["ok"], status["error"]) == (5, 2)
    assert f["sources_ok"] + f["sources_failed"] == f["inputs"]
    assert f["clips"] == len(clips)
    assert (f["accepted"], f["rejected"], f["clip_errors"]) == (verdict["accepted"], verdict["rejected"], verdict["error"])
    assert f["accepted"] + f["rejected"] + f["clip_errors"] == f["clips"]
    # Optional columns (0 while no stage writes them yet).
    assert f["captioned"] == sum(c.get("caption") is not None for c in clips)
    assert f["sharded"] == sum(c.get("shard") is not None for c in clips)
    assert report["sources_failed_by_reason"] == dict(Counter(s["error"] for s in sources if s["status"] == "error"))
    assert report["rejected_by_reason"] == dict(Counter(r for c in clips for r in c["reject_reasons"]))
    assert report["tags_fired"] == dict(Counter(t for c in clips for t in c["neg_tags"]))
    assert report["rejected_by_reason"].get("motion_too_low", 0) >= 1  # the still
    assert f["accepted"] >= 2  # the pan and the tilt
    # The flow's own funnel (summary.json) agrees.
    summary = json.loads((run_out / "summary.json").read_text())
    assert (summary["inputs"], summary["accepted"], summary["rejected"]) == (f["inputs"], f["accepted"], f["rejected"])
    assert summary["rejected_by_reason"] == report["rejected_by_reason"]


def test_report_summarises_every_float_column(run_out):
    report = json.loads((run_out / "report.json").read_text())
    table = pads.dataset(run_out / "manifest" / "clips").to_table()
    floats = [f.name for f in table.schema if pa.types.is_floating(f.type) and f.name not in NOT_SCORES]
    assert set(report["columns"]) == set(floats) and "neg_lecture" in floats and "sharpness" in floats
    for col in floats:
        v = np.array([x for x in table.column(col).to_pylist() if x is not None], np.float64)
        s = report["columns"][col]
        assert s["count"] == v.size and s["nulls"] == table.num_rows - v.size, col
        if v.size:
            for key, want in (("mean", v.mean()), ("p50", np.median(v)), ("p95", np.percentile(v, 95)), ("max", v.max())):
                assert _close(s[key], want), (col, key, s[key], want)
    th = report["thresholds"]
    assert [t["at"] for t in th["neg_lecture"]] == [0.5]
    assert {t["name"]: (t["min"], t["max"]) for t in th["motion_score"]} == {
        "motion_too_low": (0.005, None),
        "motion_too_high": (None, 1.5),
    }
    ok_videos = [s for s in _manifest(run_out)[0] if s["status"] == "ok" and s["duration_s"]]
    assert report["distributions"]["sources"]["duration_s"]["count"] == len(ok_videos)


def test_percentile_rules_resolve_on_the_run(run_out):
    layout = Layout.at(run_out)
    sources, clips, scored, cfg = load_run(layout)
    cfg["decide"]["rules"] = [
        {"column": "motion_score", "name": "motion_bottom_half", "min_pct": 50},
        {"column": "made_up_score", "name": "ugly", "min": 4.5},  # a column no stage writes
    ]
    report = build_report(layout, sources, clips, scored, cfg)
    v = [c["motion_score"] for c in clips.to_pylist() if c["error"] is None and c["motion_score"] is not None]
    (rule,) = report["thresholds"]["motion_score"]
    assert rule["name"] == "motion_bottom_half" and _close(rule["min"], float(np.percentile(v, 50)))
    (ugly,) = report["thresholds"]["made_up_score"]
    assert ugly["min"] == 4.5 and "not in manifest" in ugly["rule"]


def test_later_columns_are_picked_up(run_out, tmp_path):
    """caption, shard, bucket and aesthetic_score columns plus a shard index, as later stages add them."""
    out = tmp_path / "out"
    shutil.copytree(run_out, out)
    path = out / "manifest" / "clips" / "clips.parquet"
    table = pq.read_table(path)
    n = table.num_rows
    captions = [None if i % 3 == 0 else "a red disc drifts " * (i + 1) for i in range(n)]
    shards = [f"shards/{i % 2:05d}.tar" if i % 2 == 0 else None for i in range(n)]
    buckets = [f"{480 if i % 2 else 720}x480_f49" for i in range(n)]
    added = {"caption": captions, "shard": shards, "bucket": buckets, "aesthetic_score": [float(i) for i in range(n)]}
    for name, values in added.items():  # the shard writer may already have added bucket/shard (null)
        arr, i = pa.array(values), table.schema.get_field_index(name)
        table = table.set_column(i, name, arr) if i >= 0 else table.append_column(name, arr)
    pq.write_table(table, path)
    (out / "shards").mkdir(exist_ok=True)
    index = {"shards": [{"path": "shards/a/shard-000000.tar", "samples": 3}], "totals": {"shards": 1, "samples": 3}, "unsharded": {"x": "no clip file"}}
    (out / "shards" / "index.json").write_text(json.dumps(index))
    report = write_report(out)
    assert report["funnel"]["captioned"] == sum(c is not None for c in captions)
    assert report["funnel"]["sharded"] == sum(s is not None for s in shards)
    assert report["captions"]["present"] and report["captions"]["length_words"]["count"] == report["funnel"]["captioned"]
    assert report["shards"]["index_entries"] == 1 and report["shards"]["distinct_shards"] == 1
    assert report["shards"]["index_totals"] == index["totals"] and report["shards"]["unsharded_by_reason"] == {"no clip file": 1}
    assert sum(report["shards"]["by_bucket"].values()) == n
    assert "aesthetic_score" in report["columns"]
    ranked = report["ranked"]
    assert ranked["column"] == "aesthetic_score" and ranked["note"] is None
    assert [e["value"] for e in ranked["top"]] == sorted((e["value"] for e in ranked["top"]), reverse=True)
    assert ranked["top"][0]["value"] == n - 1
    html = (out / "report.html").read_text()
    assert 'alt="caption length"' in html and "No captions in this manifest" not in html


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_html_is_self_contained(run_out):
    html = (run_out / "report.html").read_text()
    report = json.loads((run_out / "report.json").read_text())
    parser = _Tags()
    parser.feed(html)
    imgs = [a["src"] for t, a in parser.tags if t == "img"]
    assert len(imgs) >= len(report["columns"]) + 1
    assert all(src.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for src in imgs)
    for tag, attrs in parser.tags:
        assert tag not in ("script", "link", "iframe"), tag
        for key in ("src", "href"):
            assert not (attrs.get(key) or "").startswith(("http://", "https://", "//")), (tag, attrs)
    assert report["warning"] == TINY_WARNING and 'id="warning"' in html and "random-initialised and untrained" in html
    # Every clip on a contact sheet has its thumbnail, not a "no thumbnail" note.
    for sheet in report["contact_sheets"]:
        assert len(sheet["clips"]) == min(sheet["fired"], PER_SHEET)
    assert sum(s["fired"] for s in report["contact_sheets"]) >= 1
    assert "no thumbnail" not in html


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium not installed (apt-get install chromium); .ci/run installs it")
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
    ]  # fmt: skip
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=180)


def test_html_renders_in_chromium(run_out, tmp_path):
    report = json.loads((run_out / "report.json").read_text())
    url = (run_out / "report.html").as_uri()
    shot = tmp_path / "report.png"
    r = _chromium([f"--screenshot={shot}", "--window-size=1280,4000", url], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    # Chromium logs each console message (errors, uncaught exceptions) as an INFO:CONSOLE line;
    # the page has no script, so any console line is a problem.
    console = [line for line in r.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, 4000)
        assert np.asarray(im.convert("L")).std() > 10  # not a blank page
    dom = _chromium(["--dump-dom", url], tmp_path)
    assert dom.returncode == 0, dom.stderr[-3000:]
    parser = _Tags()
    parser.feed(dom.stdout)
    assert any(t == "table" and a.get("id") == "funnel-table" for t, a in parser.tags)
    for k, v in report["funnel"].items():  # the numbers the browser shows are report.json's
        assert f'<tr><td>{k}</td><td class="n">{v}</td></tr>' in dom.stdout, (k, v)


def test_report_of_a_run_without_clip_or_captions_says_what_it_did_not_do(cpu_run_out):
    """No all-null statistics, no empty plots, no empty contact sheets: one line per stage left
    out, naming its setting; pictures of the accepted clips all the same; a readable config."""
    report = json.loads((cpu_run_out / "report.json").read_text())
    html = (cpu_run_out / "report.html").read_text()
    empty = [c for c, st in report["columns"].items() if not st["count"]]
    assert "aesthetic_score" in empty and "dup_sim" in empty
    for col in empty:
        assert f"<th>{col}</th>" not in html and f'alt="histogram of {col}"' not in html, col
    assert {g["reason"] for g in report["not_computed"]} == {"[models] enabled = false", "no embeddings to compare: [models] enabled = false",
                                                             "[caption] enabled = false (the judge asks the caption model)"}
    assert "Not computed: aesthetic_score, aesthetic_min, aesthetic_p10" in html
    gallery = html[html.index('id="accepted"'):html.index('id="scores"')]
    assert gallery.count("data:image/jpeg;base64,") == report["funnel"]["accepted"] >= 2
    assert "not computed in this run ([models] enabled = false)" in html  # top/bottom by aesthetic: one line
    assert "Not looked for (no embeddings to compare: [models] enabled = false)" in html  # near-duplicates
    assert "Captioning off ([caption] enabled = false)" in html and "No captions in this manifest" not in html
    assert html.index('id="run"') < html.index('id="funnel"')  # what ran comes first
    assert "<pre>" not in html and '<details id="configuration">' in html
    changed = {(r["section"], r["key"]) for r in report["config_rows"] if r["changed"]}
    assert changed == {("models", "enabled"), ("caption", "enabled"), ("runtime", "executor")}  # the file's, and executor="local"
