"""`videomill calibrate` on a real run: the README's commands on part of the real-footage set."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
LABELS = ROOT / "tests" / "data" / "realset_labels.csv"
FILES = ("good_pan_building_crf23.mp4", "bad_still_photo.mp4", "bad_blurred.mp4")


def _videomill(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("videomill")
    return subprocess.run([str(exe), *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_run_then_calibrate_prints_the_table(realset, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in FILES:
        shutil.copyfile(realset / name, inputs / name)
    out = tmp_path / "out"
    # The cpu profile's tags and rules; re-captioning off (its models come from the hub).
    done = _videomill("run", str(inputs), "--out", str(out), "--executor", "local", "--config", str(ROOT / "bench" / "realset_run.toml"))
    assert done.returncode == 0, done.stderr[-3000:]

    done = _videomill("calibrate", str(out), "--labels", str(LABELS))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("name"))
    rows = {line.split()[0]: line.split() for line in lines[header + 2 :] if line and not line.startswith(("(", " ", "verdicts", "tags", "/"))}
    assert {"over_edited", "incoherent_motion", "low_quality", "lecture", "text_dominated", "noisy_screen", "motion_too_low"} <= set(rows)
    # Labels of sources outside this run are listed, not silently dropped.
    assert "label matched no clip" in done.stdout

    result = json.loads((out / "calibration.json").read_text())
    still = next(r for r in result["rows"] if r["name"] == "motion_too_low")
    assert still["tp"] == 1 and still["fp"] == 0  # the still photo, and none of the moving clips
    assert result["labelled"] == 3
    html = (out / "report.html").read_text()
    assert "Calibration against labelled clips" in html and "motion_too_low" in html


def test_calibrate_refuses_bad_labels(tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_text("source,verdict\na.mp4,maybe\n")
    out = tmp_path / "out"
    out.mkdir()
    done = _videomill("calibrate", str(out), "--labels", str(bad))
    assert done.returncode == 2 and "run `videomill run` first" in done.stderr
