"""What `videomill train` shows while it runs: the workers' start, every log_every-th step from
step 1, a line while nothing comes. (RUN/events.jsonl and RUN/steps.jsonl as rank 0 writes them.)"""

from __future__ import annotations

import json

from curation.core.config_loader import build_config
from training.config import TrainConfig


def cfg(out, log_every: int = 1, max_steps: int = 4) -> TrainConfig:
    return build_config(TrainConfig, {
        "data": {"shards": str(out), "buckets": [{"width": 64, "height": 32, "frames": 9, "media": "video", "batch_size": 1}],
                 "fps": 8.0, "frame_multiple": 8},
        "model": {"pretrained": "tiny", "variant": "t2v", "version": "1.0"},
        "run": {"out": str(out), "max_steps": max_steps, "log_every": log_every},
    }, "")


def write(path, *records):
    with open(path, "a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def test_events_then_every_step_from_step_one(tmp_path):
    from flows.train import Progress

    shown: list[str] = []
    p = Progress(cfg(tmp_path), shown.append, wait_every_s=3600)
    write(tmp_path / "events.jsonl", {"time": 1.0, "event": "2 worker(s) up on cpu; loading the models (tiny)"})
    p.poll()
    assert shown == ["workers: 2 worker(s) up on cpu; loading the models (tiny)"]
    write(tmp_path / "steps.jsonl", {"step": 1, "loss": 1.5, "samples": 2, "time": 10.0})
    p.poll()
    assert shown[-1] == "step 1/4  loss 1.5  ? samples/s  ETA ?"
    write(tmp_path / "steps.jsonl", {"step": 2, "loss": 1.25, "samples": 2, "time": 11.0},
          {"step": 3, "loss": 1.0, "samples": 2, "time": 12.0})
    p.poll()
    assert shown[-2:] == ["step 2/4  loss 1.25  2 samples/s  ETA 00:00:02", "step 3/4  loss 1  2 samples/s  ETA 00:00:01"]


def test_log_every_counts_from_step_one(tmp_path):
    from flows.train import Progress

    shown: list[str] = []
    p = Progress(cfg(tmp_path, log_every=2, max_steps=5), shown.append, wait_every_s=3600)
    write(tmp_path / "steps.jsonl", *({"step": s, "loss": 1.0, "samples": 1, "time": float(s)} for s in range(1, 6)))
    p.poll()
    assert [line.split()[1] for line in shown] == ["1/5", "2/5", "4/5", "5/5"]


def test_a_line_while_the_workers_start(tmp_path):
    from flows.train import Progress

    shown: list[str] = []
    p = Progress(cfg(tmp_path), shown.append, wait_every_s=0.0)
    p.poll()
    assert shown and shown[0].startswith("waiting for the workers (") and "1 worker process(es)" in shown[0]


def test_earlier_runs_lines_are_not_shown(tmp_path):
    from flows.train import Progress

    write(tmp_path / "events.jsonl", {"time": 1.0, "event": "old run"})
    write(tmp_path / "steps.jsonl", {"step": 4, "loss": 1.0, "samples": 1, "time": 1.0})
    shown: list[str] = []
    Progress(cfg(tmp_path), shown.append, wait_every_s=3600).poll()
    assert shown == []
