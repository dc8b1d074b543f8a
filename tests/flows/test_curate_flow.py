"""The curation flow end to end on the mixed corpus: Prefect (test server) + Ray Data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import av
import pyarrow.dataset as pads
import pytest

from curation.core.manifest import Layout
from flows.curate import ConfigError, curate, redecide

pytestmark = pytest.mark.slow


def _sources(out: Path) -> list[dict]:
    return pads.dataset(out / "manifest" / "sources").to_table().to_pylist()


def _clips(out: Path) -> list[dict]:
    return pads.dataset(out / "manifest" / "clips").to_table().sort_by("clip_id").to_pylist()


@pytest.fixture(scope="module")
def curated(corpus, tmp_path_factory, ray_local, prefect_server):
    root, expect = corpus
    out = tmp_path_factory.mktemp("out")
    summary = curate(inputs=[str(root)], out=str(out), profile="tiny")
    return root, expect, out, summary


def test_one_source_row_per_input_with_reasons(curated):
    root, expect, out, summary = curated
    rows = {Path(r["source"]).name: r for r in _sources(out)}
    assert sorted(rows) == sorted(expect)
    for name, want in expect.items():
        row = rows[name]
        assert row["status"] == want["status"], (name, row["error"])
        if want["status"] == "error":
            assert want["error_contains"] in row["error"], (name, row["error"])
            assert row["num_clips"] == 0
        else:
            assert row["error"] is None
            assert (row["width"], row["height"]) == (want["width"], want["height"]), name
            assert row["num_clips"] >= 1, name
            for key in ("vfr", "rotation", "media_type"):
                if key in want:
                    assert row[key] == want[key], (name, key)
    assert summary["inputs"] == len(expect)
    assert summary["sources_failed"] == sum(w["status"] == "error" for w in expect.values())


def test_every_good_video_has_clips_on_disk(curated):
    root, expect, out, _ = curated
    clips = _clips(out)
    by_source = {}
    for c in clips:
        by_source.setdefault(Path(c["source"]).name, []).append(c)
    for name, want in expect.items():
        if want["status"] != "ok":
            continue
        accepted = [c for c in by_source[name] if c["status"] == "accepted"]
        assert accepted, f"{name}: no accepted clip ({[c['reject_reasons'] for c in by_source[name]]})"
        for c in accepted:
            path = out / c["clip_path"]
            assert path.exists() and not path.name.startswith(".")
            if c["media_type"] == "video":
                with av.open(str(path)) as container:
                    s = container.streams.video[0]
                    frames = list(container.decode(s))
                assert s.codec_context.name == "h264"
                assert len(frames) == c["num_frames"]
                # Display orientation is baked into the pixels: the rotated source comes out portrait.
                assert (frames[0].width, frames[0].height) == (c["width"], c["height"])


def test_manifest_keeps_every_score(curated):
    _, _, out, _ = curated
    clips = _clips(out)
    for c in clips:
        for col in ("neg_over_edited", "neg_incoherent_motion", "neg_low_quality", "neg_lecture", "neg_text_dominated", "neg_noisy_screen"):
            assert 0.0 <= c[col] <= 1.0, (col, c[col])
        if c["media_type"] == "video":
            assert c["motion_score"] > 0
    resolved = json.loads((out / "config.resolved.json").read_text())
    assert resolved["profile"] == "tiny"


def test_rerun_resumes_and_gives_the_same_manifest(curated):
    root, _, out, _ = curated
    layout = Layout.at(out)
    before_sources, before_clips = _sources(out), _clips(out)
    before_funnel = json.loads((out / "report.json").read_text())["funnel"]
    parts = {p: p.stat().st_mtime_ns for p in layout.sources.glob("*.parquet")}
    # Lose one extracted clip: the rerun must put it back and rescore nothing.
    victim = out / before_clips[0]["clip_path"]
    victim.unlink()
    curate(inputs=[str(root)], out=str(out), profile="tiny")
    assert {p: p.stat().st_mtime_ns for p in layout.sources.glob("*.parquet")} == parts
    assert victim.exists()
    assert _sources(out) == before_sources
    assert _clips(out) == before_clips
    funnel = json.loads((out / "report.json").read_text())["funnel"]
    assert funnel == before_funnel and funnel["sources_failed"] == 4  # counts stay true after a resume


def test_redecide_with_percentiles_rescores_nothing(curated, tmp_path):
    _, _, out, _ = curated
    layout = Layout.at(out)
    scores = {p: p.stat().st_mtime_ns for p in layout.scores.glob("*.parquet")}
    cfg = tmp_path / "pct.toml"
    cfg.write_text('[[decide.rules]]\ncolumn = "motion_score"\nname = "motion_bottom_half"\nmin_pct = 50\n')
    defaults = tmp_path / "defaults.toml"  # the default rules, to put back (OUT now remembers the new ones)
    defaults.write_text('[[decide.rules]]\ncolumn = "motion_score"\nname = "motion_too_low"\nmin = 0.005\n'
                        '[[decide.rules]]\ncolumn = "motion_score"\nname = "motion_too_high"\nmax = 1.5\n')
    try:
        # No --profile: decide starts from the settings OUT was made with (tiny), the file on top.
        summary = redecide(out=str(out), config=str(cfg))
        clips = _clips(out)
        videos = [c for c in clips if c["media_type"] == "video"]
        low = [c for c in videos if "motion_bottom_half" in c["reject_reasons"]]
        assert 0 < len(low) < len(videos)
        assert summary["rejected_by_reason"]["motion_bottom_half"] == len(low)
        assert {p: p.stat().st_mtime_ns for p in layout.scores.glob("*.parquet")} == scores
        assert _clip_files(out) == _accepted_files(clips)  # the newly rejected clips' files are gone
        assert json.loads((out / "config.resolved.json").read_text())["profile"] == "tiny"
    finally:
        redecide(out=str(out), config=str(defaults))  # restore the default verdicts for other tests
    assert _clip_files(out) == _accepted_files(_clips(out))  # and extracted again once accepted again


def _clip_files(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "clips").iterdir() if not p.name.startswith("."))


def _accepted_files(clips: list[dict]) -> list[str]:
    return sorted(Path(c["clip_path"]).name for c in clips if c["status"] == "accepted")


def test_changed_scoring_settings_refuse_to_mix(curated, tmp_path):
    root, _, out, _ = curated
    cfg = tmp_path / "other.toml"
    cfg.write_text("[split]\nmin_clip_s = 1.0\n")
    with pytest.raises(ConfigError, match="different"):
        curate(inputs=[str(root)], out=str(out), config=str(cfg), profile="tiny")


def test_cli_exit_codes(corpus, tmp_path):
    """The console script: bad configuration is exit 2 with one line, a run with bad inputs is 0."""
    import subprocess
    import sys

    root, _ = corpus
    bad = tmp_path / "bad.toml"
    bad.write_text("[split]\nmin_clip = 1\n")
    cmd = [sys.executable, "-m", "flows.cli", "run", str(root), "--out", str(tmp_path / "o")]
    r = subprocess.run([*cmd, "--config", str(bad)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "videomill: configuration error: unknown config key: split.min_clip (did you mean split.min_clip_s?)"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    r = subprocess.run([*cmd, "--profile", "tiny", "--executor", "local"], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout[r.stdout.index("{") :])
    assert summary["sources_failed"] == 4 and summary["accepted"] >= 6


def test_run_summary_artifact_has_the_funnel(curated):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    _, _, _, summary = curated
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["videomill-run-summary"])), sort=ArtifactSort.CREATED_DESC
        )
    assert arts, "no summary artifact"
    md = arts[0].data  # the newest: later tests re-decide the same OUT
    assert f"| sources_failed | {summary['sources_failed']} |" in md
    assert f"| accepted | {summary['accepted']} |" in md


def test_run_writes_shards_and_report(curated):
    import webdataset as wds

    _, _, out, summary = curated
    clips = _clips(out)
    accepted = {c["clip_id"] for c in clips if c["status"] == "accepted"}
    index = json.loads((out / "shards" / "index.json").read_text())
    urls = [str(out / s["path"]) for s in index["shards"]]  # paths are relative to OUT
    keys = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False)]
    assert sorted(keys) == sorted(accepted)
    assert {c["clip_id"] for c in clips if c["shard"]} == accepted
    assert summary["sharded"] == len(accepted)
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.html").exists() and summary["report"].endswith("report.html")
    assert report["funnel"]["accepted"] == len(accepted)
