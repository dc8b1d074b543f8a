"""First contact: every configuration-type mistake is one line on stderr, exit 2, no traceback,
in seconds, before Prefect or Ray start (the console script, as a user types it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curation.core.config import load_config, to_dict
from flows.preflight import ConfigError, config_for_out, prefect_api_url

REPO = Path(__file__).resolve().parents[2]
# Seconds a refusal may take: imports and the check itself, on a loaded 2-core CI machine
# (measured 2.7-5.5 s there; Prefect's import alone takes ~10 s, Ray's start ~10 s more).
FAST_S = 20.0


def videomill(*args: str, env_extra: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, **(env_extra or {})}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=REPO,
                       env=env, timeout=120)
    return p, time.monotonic() - t0


def refused(p: subprocess.CompletedProcess, seconds: float) -> str:
    """The one stderr line of a refusal, after checking it is one: exit 2, fast, no traceback,
    nothing started."""
    assert p.returncode == 2, p.stderr[-3000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert "Starting temporary server" not in p.stderr and "Ray" not in p.stderr  # neither Prefect nor Ray started
    assert seconds < FAST_S, seconds
    assert lines[0].startswith("videomill: ")
    return lines[0]


@pytest.fixture
def media(tmp_path) -> Path:
    from curation.corpora import synthetic

    d = tmp_path / "in"
    d.mkdir()
    synthetic.write_video(d / "a.mp4", synthetic.moving(10, (64, 48), (1.0, 0.0), seed=1), 10)
    return d


def test_out_is_a_file(media, tmp_path):
    (tmp_path / "out.txt").write_text("notes")
    line = refused(*videomill("run", str(media), "--out", str(tmp_path / "out.txt"), "--profile", "tiny"))
    assert line == f"videomill: configuration error: --out {tmp_path / 'out.txt'} is a file, not a folder"


def test_mistyped_input_path(media, tmp_path):
    line = refused(*videomill("run", str(tmp_path / "inputs"), "--out", str(tmp_path / "out"), "--profile", "tiny"))
    assert line == f"videomill: configuration error: input not found: {tmp_path / 'inputs'}"
    assert not (tmp_path / "out").exists()


def test_unknown_key_gets_a_suggestion(media, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[split]\nmin_clip_sec = 1.5\n")
    line = refused(*videomill("run", str(media), "--out", str(tmp_path / "out"), "--config", str(cfg)))
    assert line == "videomill: configuration error: unknown config key: split.min_clip_sec (did you mean split.min_clip_s?)"


def test_bad_value_names_the_field(media, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("split:\n  min_clip_s: two\n")
    line = refused(*videomill("run", str(media), "--out", str(tmp_path / "out"), "--config", str(cfg)))
    assert line == "videomill: configuration error: split.min_clip_s must be a number, got 'two'"


def test_unparsable_config_file_names_the_file(media, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[split\nmin_clip_s = 1\n")
    line = refused(*videomill("run", str(media), "--out", str(tmp_path / "out"), "--config", str(cfg)))
    assert line.startswith(f"videomill: configuration error: config file {cfg}: ")


def test_folder_without_media(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("no video here")
    line = refused(*videomill("run", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--profile", "tiny"))
    assert line.startswith(f"videomill: configuration error: no media files in {tmp_path / 'in'}")


def test_out_inside_an_input_folder(media):
    line = refused(*videomill("run", str(media), "--out", str(media / "out"), "--profile", "tiny"))
    assert "is inside the input folder" in line


def test_prefect_api_url_that_does_not_answer(media, tmp_path):
    """Production step 2 done with `prefect config set`, then the server stopped."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    (home / "profiles.toml").write_text('active = "ephemeral"\n[profiles.ephemeral]\nPREFECT_API_URL = "http://127.0.0.1:9/api"\n')
    env = {"PREFECT_HOME": str(home)}
    line = refused(*videomill("run", str(media), "--out", str(tmp_path / "out"), "--profile", "tiny", env_extra=env))
    assert "PREFECT_API_URL=http://127.0.0.1:9/api (set in Prefect profile 'ephemeral'" in line
    assert "`prefect config unset PREFECT_API_URL`" in line
    line = refused(*videomill("run", str(media), "--out", str(tmp_path / "out"), "--profile", "tiny",
                              env_extra={"PREFECT_API_URL": "http://127.0.0.1:9/api"}))
    assert "(set in the environment)" in line and "`unset PREFECT_API_URL`" in line


def test_prefect_api_url_lookup_order(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    assert prefect_api_url() == (None, "")
    (tmp_path / "profiles.toml").write_text('active = "prod"\n[profiles.prod]\nPREFECT_API_URL = "http://h:4200/api"\n')
    assert prefect_api_url()[0] == "http://h:4200/api"
    monkeypatch.setenv("PREFECT_API_URL", "http://env:4200/api")
    assert prefect_api_url() == ("http://env:4200/api", "the environment")


@pytest.mark.parametrize("cmd", ["decide", "shard", "report"])
def test_steps_on_a_folder_that_is_no_run(cmd, tmp_path):
    line = refused(*videomill(cmd, str(tmp_path / "nothing")))
    assert line.endswith(f"{tmp_path / 'nothing'}: no such folder (make it with `videomill run INPUT --out {tmp_path / 'nothing'}`)")
    (tmp_path / "empty").mkdir()
    line = refused(*videomill(cmd, str(tmp_path / "empty")))
    assert line.endswith(f"{tmp_path / 'empty'} has no manifest; run `videomill run INPUT --out {tmp_path / 'empty'}` first")


def fake_run(out: Path, **overrides) -> dict:
    """An OUT as `videomill run` leaves it, as far as the config goes."""
    (out / "manifest" / "sources").mkdir(parents=True)
    resolved = to_dict(load_config(profile="tiny", overrides=overrides))
    (out / "config.resolved.json").write_text(json.dumps(resolved))
    return resolved


def test_decide_starts_from_the_settings_out_was_made_with(tmp_path):
    fake_run(tmp_path / "out", caption={"enabled": False}, shard={"max_samples_per_shard": 7})
    rules = tmp_path / "D.toml"
    rules.write_text('[[decide.rules]]\ncolumn = "motion_score"\nname = "still"\nmin = 0.01\n')
    _, cfg = config_for_out(str(tmp_path / "out"), str(rules), None)
    assert cfg.profile == "tiny" and cfg.caption.enabled is False and cfg.shard.max_samples_per_shard == 7
    assert [r.name for r in cfg.decide.rules] == ["still"]
    assert cfg.models.clip == "tiny"  # not the default profile's models
    # --profile applies on top of OUT's settings, then the file on top of that.
    _, cfg = config_for_out(str(tmp_path / "out"), str(rules), "gpu")
    assert cfg.profile == "gpu" and cfg.models.clip == "ViT-L-14-quickgelu" and cfg.caption.enabled is False
    assert [r.name for r in cfg.decide.rules] == ["still"]


def test_decide_refuses_a_scoring_change_before_any_work(tmp_path):
    from flows.preflight import scoring_fingerprint

    fake_run(tmp_path / "out")
    _, cfg = config_for_out(str(tmp_path / "out"), None, None)
    (tmp_path / "out" / "manifest" / "scoring.fingerprint").write_text(scoring_fingerprint(cfg) + "\n")
    other = tmp_path / "split.toml"
    other.write_text("[split]\nmin_clip_s = 1.0\n")
    line = refused(*videomill("decide", str(tmp_path / "out"), "--config", str(other)))
    assert "holds scores made with different scoring settings" in line and "--rescore" in line


def test_config_error_class_is_the_flows_one():
    from flows.curate import ConfigError as FlowConfigError

    assert FlowConfigError is ConfigError


@pytest.mark.slow
def test_a_tiny_run_on_ray_says_each_warning_once_and_no_error(tmp_path):
    """The console of a whole run: progress on the timer, each UNTRAINED warning once, no ERROR
    line (Ray core logs one for every Ray Data actor pool unless spent, flows/run_ray.py), and
    the report named last."""
    from curation.corpora import synthetic

    (tmp_path / "in").mkdir()
    for i in range(3):
        synthetic.write_video(tmp_path / "in" / f"v{i}.mp4", synthetic.moving(60, (480, 270), (3.0, 1.0), seed=i), 25)
    p = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                        "--profile", "tiny"], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    err = p.stderr
    assert "core_worker.cc" not in err and " ERROR " not in err and "Traceback" not in err, err[-4000:]
    assert err.count("UNTRAINED") == 2, err  # CLIP and the caption model, once each
    assert "scoring: 3/3 sources (0 failed), 3 clips" in err, err[-4000:]
    assert "extraction and captioning: 3/3 clips (0 failed)" in err, err[-4000:]
    assert f"report: {tmp_path / 'out' / 'report.html'}" in err.strip().splitlines()[-2:]  # (then Prefect's "Stopping ...")
    assert "Loaded built-in ViT-B-32 model config" not in err  # open_clip's INFO chatter on the root logger
