"""Crash and resume: the whole run's process group is SIGKILLed during scoring, extraction,
captioning and shard writing, each time rerun with the same OUT; the final OUT has every accepted clip
in exactly one shard, one manifest row per clip, no orphan row and no temporary file that
looks finished.

The kill is real (SIGKILL of the run's process group, from inside the run at a chosen
moment, so the test is deterministic); the injection wraps one function of the stage that
is running (the `_KILL` prelude below) and nothing else changes. The run uses
`--executor local` so the whole run is one process group (a local Ray's raylet and workers
start their own sessions, so a group kill would leave them running). A Ray worker dying on
one item is the pipeline's fault isolation (issue 9).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import av
import pyarrow.dataset as pads
import pytest

from curation.corpora.synthetic import with_cuts, write_video

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

# Runs the console script with one function wrapped to SIGKILL the process group on its
# Nth call: VIDEOMILL_KILL = "module:Class.method:N" (or "module:function:N").
_KILL = """
import importlib, os, runpy, signal, sys
mod, attr, n = os.environ["VIDEOMILL_KILL"].split(":")
owner = importlib.import_module(mod)
*path, name = attr.split(".")
for p in path:
    owner = getattr(owner, p)
real, calls = getattr(owner, name), [0]
def wrapped(*a, **k):
    calls[0] += 1
    if calls[0] == int(n):
        os.killpg(os.getpgid(0), signal.SIGKILL)
    return real(*a, **k)
setattr(owner, name, wrapped)
sys.argv = ["videomill", *sys.argv[1:]]
runpy.run_module("flows.cli", run_name="__main__")
"""

KILL_POINTS = [
    # during scoring: the 4th source (the first ones' manifest parts are complete)
    ("scoring", "curation.analysis.analyze:SplitAndScore.analyze:4"),
    # during extraction: as the 3rd clip file is being finished (its temporary is on disk)
    ("extraction", "curation.outputs.extract_clips:_ClipWriter.finish:3"),
    # during captioning: the 2nd batch of 4 clips (the 1st block's captions stored; extraction and
    # captioning are one stream, so the last source is not extracted yet)
    ("captioning", "captioning.caption_clips:CaptionClips.__call__:2"),
    # during shard writing: the 3rd tar member sample (the 1st shard done, the 2nd half written)
    ("shard writing", "webdataset:TarWriter.write:3"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("crash_in")
    for k in range(5):
        write_video(d / f"v{k}.mp4", with_cuts(110, (320, 240), cuts=[55], seed=k), 25, options={"preset": "ultrafast"})
    return d


def run(inputs: Path, out: Path, config: Path, kill: str | None = None) -> subprocess.CompletedProcess:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if PREFECT_API_URL.value():  # the suite's server: no temporary server per run
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    args = ["run", str(inputs), "--out", str(out), "--config", str(config), "--executor", "local"]
    if kill:
        env["VIDEOMILL_KILL"] = kill
        cmd = [sys.executable, "-c", _KILL, *args]
    else:
        cmd = [sys.executable, "-m", "flows.cli", *args]
    # its own session: the group kill takes the run, never pytest
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600, start_new_session=True)


def frames_in(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(c.streams.video[0]))


def test_killed_at_every_stage_then_rerun_gives_every_clip_once(inputs, tmp_path, prefect_server):
    config = tmp_path / "run.toml"
    config.write_text(
        'profile = "tiny"\n[runtime]\npartition_size = 2\n[shard]\nbucketing = false\nmax_samples_per_shard = 2\n'
        "[caption]\nblock_size = 4\n"
        # every clip accepted whatever the tag calibration: the test is about crashes
        '[decide]\nrules = []\nkeep_tags = ["over_edited", "incoherent_motion", "low_quality", "lecture", '
        '"text_dominated", "noisy_screen"]\n'
    )
    out = tmp_path / "out"
    for stage, kill in KILL_POINTS:
        r = run(inputs, out, config, kill)
        assert r.returncode == -signal.SIGKILL, (stage, r.returncode, r.stderr[-3000:])
        if stage == "scoring":  # the first sources' parts complete, the one being scored in none
            done = pads.dataset(out / "manifest" / "sources").to_table().column("source").to_pylist()
            assert 1 <= len(done) < 4 and not any(d.endswith("v3.mp4") for d in done), done
        if stage == "extraction":
            assert list((out / "clips").glob(".*.tmp-*")), "killed while a clip was being written"
        if stage == "captioning":  # the first block's captions stored, the second's not
            parts = list((out / "captions").rglob("part-*.parquet"))
            assert len(parts) == 1 and pads.dataset(parts[0]).count_rows() == 4, parts
            # one stream: captions were being made while the last source's clips were still to extract
            assert 4 <= len([p for p in (out / "clips").iterdir() if not p.name.startswith(".")]) < 10
        if stage == "shard writing":
            assert not (out / "shards" / "index.json").exists()
            assert list((out / "shards").rglob(".shard-*.tmp-*")), "killed while a tar was being written"
    r = run(inputs, out, config)
    assert r.returncode == 0, r.stderr[-3000:]

    sources = pads.dataset(out / "manifest" / "sources").to_table().to_pylist()
    clips = pads.dataset(out / "manifest" / "clips").to_table().to_pylist()
    assert sorted(Path(s["source"]).name for s in sources) == [f"v{k}.mp4" for k in range(5)]  # one row per input
    ids = Counter(c["clip_id"] for c in clips)
    assert set(ids.values()) == {1}  # one manifest row per clip
    assert {c["source"] for c in clips} <= {s["source"] for s in sources}  # no orphan rows
    assert len(clips) == sum(s["num_clips"] for s in sources) == 10
    scores = pads.dataset(out / "manifest" / "scores").to_table()
    assert sorted(scores.column("clip_id").to_pylist()) == sorted(ids)
    accepted = {c["clip_id"]: c for c in clips if c["status"] == "accepted"}
    assert len(accepted) == 10

    # every accepted clip in exactly one shard, as the manifest says, and its file complete
    in_tars: Counter = Counter()
    for tar in (out / "shards").rglob("*.tar"):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                key, ext = m.name.split(".", 1)
                if ext == "mp4":
                    in_tars[key] += 1
                    assert accepted[key]["shard"] == str(tar.relative_to(out))
    assert in_tars == Counter({k: 1 for k in accepted})
    # every accepted clip captioned once: one stored caption per clip, a KEY.txt in its shard
    stored = Counter(pads.dataset(out / "captions", format="parquet").to_table().column("clip_id").to_pylist())
    assert stored == Counter({k: 1 for k in accepted})
    with_txt = Counter()
    for tar in (out / "shards").rglob("*.tar"):
        with tarfile.open(tar) as t:
            with_txt.update(m.name.split(".", 1)[0] for m in t.getmembers() if m.name.endswith(".txt"))
    assert with_txt == Counter({k: 1 for k in accepted})
    for cid, c in accepted.items():
        assert frames_in(out / c["clip_path"]) == c["end_frame"] - c["start_frame"], cid

    # temporaries never look finished: every file with a final name is complete (above), and
    # what a crash left is dot-prefixed `.tmp-PID`, which no reader takes
    finished = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert not [p for p in finished if ".tmp" in p.name]
    for p in (out / "clips").iterdir():
        assert p.name.startswith(".") or p.stem in accepted
