"""`videomill train`: the trainer under Ray Train (TorchTrainer), and as a Prefect flow.

Each Ray Train worker runs training.loop.train; Ray Train starts the process group (gloo on
CPU, NCCL on GPU) and restarts the whole group from the newest checkpoint when a worker dies
(`distributed.max_failures`). The same loop runs under torchrun: `python -m training.loop`.

The driver checks what it can before any worker starts (`preflight`: shards or cache, model,
what the model fits; seconds, one line on failure), shows rank 0's progress from
RUN/steps.jsonl while the workers run, and ends with a summary (`summarize`).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import ray
from prefect import flow
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from curation.core.config_loader import build_config
from flows.logs import run_logger
from flows.run_ray import ray_session
from training.config import TrainConfig, check_model_fit, config_dict, load_train_config


class PreflightError(ValueError):
    """A training run that cannot start: the message is one line for the user."""


def preflight(cfg: TrainConfig) -> TrainConfig:
    """Check, in the driver, that the data and the model exist and fit, before any worker
    starts. Returns CFG with a tiny model built (once, not racing in every worker) and its path
    filled in. Raises PreflightError with one line."""
    from training.models import TINY, resolve_pretrained

    d = cfg.data
    if d.cache_dir:
        if not (Path(d.cache_dir) / "index.json").is_file():
            raise PreflightError(f"data.cache_dir: no index.json in {d.cache_dir} "
                                 "(fill it with `videomill train precompute CONFIG`)")
    else:
        from training.data.loader import read_shard_index

        try:
            _, entries = read_shard_index(d.shards)
        except FileNotFoundError as e:
            raise PreflightError(str(e)) from None
        if not entries:
            raise PreflightError(f"data.shards: {d.shards} lists no shards")
    from training.data.loader import check_captions

    try:  # T2V: refuse mostly uncaptioned data here, not in every worker a minute later
        check_captions(d, cfg.model.variant)
    except (ValueError, FileNotFoundError) as e:
        raise PreflightError(str(e)) from None
    m = cfg.model
    if m.pretrained == TINY:
        cfg = replace(cfg, model=replace(m, pretrained=resolve_pretrained(m)))
        transformer_config = Path(cfg.model.pretrained) / "transformer" / "config.json"
    elif Path(m.pretrained).is_absolute():  # load_train_config made local paths absolute
        if not (Path(m.pretrained) / "model_index.json").is_file():
            raise PreflightError(f"model.pretrained: {m.pretrained} is not a diffusers pipeline directory "
                                 "(no model_index.json)")
        transformer_config = Path(m.pretrained) / "transformer" / "config.json"
    else:  # a hub id: two small files from the hub (or its cache when HF_HUB_OFFLINE is set)
        from huggingface_hub import hf_hub_download

        try:
            hf_hub_download(m.pretrained, "model_index.json", revision=m.revision)
            transformer_config = Path(hf_hub_download(m.pretrained, "transformer/config.json", revision=m.revision))
        except Exception as e:  # noqa: BLE001 - any hub failure means the same to the user
            raise PreflightError(f"model.pretrained: cannot find {m.pretrained!r} "
                                 f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    try:
        check_model_fit(cfg, json.loads(transformer_config.read_text()))
    except ValueError as e:
        raise PreflightError(str(e)) from None
    return cfg


def _read_steps(path: Path, offset: int) -> tuple[list[dict], int]:
    """Complete JSON lines of PATH after byte OFFSET, and the offset after them."""
    if not path.exists():
        return [], offset
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    return [json.loads(x) for x in data[:end].splitlines() if x.strip()], offset + end


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class Progress:
    """Follows RUN/events.jsonl and RUN/steps.jsonl (rank 0 writes both) and shows what the
    run is doing: each event while the workers start (models loading, the first batch), a
    line every `wait_every_s` seconds while nothing new comes before the first step, then the
    progress line of every run.log_every-th step from step 1: step, loss, samples/s, ETA."""

    def __init__(self, cfg: TrainConfig, show: Callable[[str], None] = _stderr, wait_every_s: float = 15.0):
        from training.loop import EVENTS

        self.path = Path(cfg.run.out) / "steps.jsonl"
        self.events = Path(cfg.run.out) / EVENTS
        # Earlier runs' lines are not ours.
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self.event_offset = self.events.stat().st_size if self.events.exists() else 0
        self.cfg, self.show = cfg, show
        self.first: dict | None = None
        self.window: list[dict] = []
        self.t0 = self.last_said = time.monotonic()
        self.wait_every_s = wait_every_s

    def poll(self) -> None:
        from training.loop import progress_line

        events, self.event_offset = _read_steps(self.events, self.event_offset)
        for e in events:
            self._say(f"workers: {e['event']}")
        recs, self.offset = _read_steps(self.path, self.offset)
        if not recs and self.first is None and time.monotonic() - self.last_said >= self.wait_every_s:
            self._say(f"waiting for the workers ({time.monotonic() - self.t0:.0f} s; Ray Train starts "
                      f"{self.cfg.distributed.num_workers} worker process(es), then each loads the models)")
        for r in recs:
            if self.first is None or r["step"] <= self.first["step"]:  # start, or a restart replaying steps
                self.first, self.window = r, [r]
                if r["step"] % self.cfg.run.log_every == 0 or r["step"] in (1, self.cfg.run.max_steps):
                    self._say(progress_line(r["step"], self.cfg.run.max_steps, r["loss"], float("nan"), None))
                continue
            self.window.append(r)
            if r["step"] % self.cfg.run.log_every and r["step"] != self.cfg.run.max_steps:
                continue
            span = r["time"] - self.window[0]["time"]
            rate = sum(x["samples"] for x in self.window[1:]) / span if span > 0 else float("nan")
            per_step = (r["time"] - self.first["time"]) / (r["step"] - self.first["step"])
            self._say(progress_line(r["step"], self.cfg.run.max_steps, r["loss"], rate,
                                    per_step * (self.cfg.run.max_steps - r["step"])))
            self.window = [r]

    def _say(self, line: str) -> None:
        self.last_said = time.monotonic()
        self.show(line)


def summarize(cfg: TrainConfig) -> dict:
    """What a finished run left: steps, last loss, the newest checkpoint, TensorBoard logs."""
    from training.checkpoint import latest_checkpoint

    out = Path(cfg.run.out)
    last: dict = {}
    recs, _ = _read_steps(out / "steps.jsonl", 0)
    for r in recs:  # the last record of the highest step (a restart replays steps)
        if not last or r["step"] >= last["step"]:
            last = r
    latest = latest_checkpoint(out / "checkpoints")
    return {"steps": last.get("step", 0), "last_loss": last.get("loss"), "max_steps": cfg.run.max_steps,
            "skipped": last.get("skipped", {}),
            "checkpoint": str(latest) if latest else None, "checkpoints": str(out / "checkpoints"),
            "tensorboard": str(out / "tensorboard"), "steps_log": str(out / "steps.jsonl"), "run": str(out)}


def summary_lines(summary: dict) -> list[str]:
    loss = summary["last_loss"]
    return [
        f"trained {summary['steps']}/{summary['max_steps']} steps; last loss {loss:.4g}" if loss is not None
        else f"trained {summary['steps']}/{summary['max_steps']} steps",
        "samples skipped: " + (", ".join(f"{k} {v}" for k, v in sorted(summary["skipped"].items())) or "none"),
        f"checkpoints: {summary['checkpoints']} (latest: {summary['checkpoint'] or 'none'})",
        f"TensorBoard: tensorboard --logdir {summary['tensorboard']}",
        f"per-step log: {summary['steps_log']}",
    ]


def _worker(config: dict) -> None:
    """One Ray Train worker. `crash_once_at` is fault injection: the first attempt raises after
    that many steps (a marker file remembers it), to exercise restart-and-resume."""
    from training.loop import train

    cfg = build_config(TrainConfig, config["train"], "")
    crash_at = config.get("crash_once_at")
    marker = Path(cfg.run.out) / ".injected-crash"
    if crash_at and not marker.exists():
        train(cfg, report=ray.train.report, stop_after=crash_at)
        if ray.train.get_context().get_world_rank() == 0:
            marker.touch()
        raise RuntimeError(f"injected failure after {crash_at} steps")
    train(cfg, report=ray.train.report)


def fit(cfg: TrainConfig, *, crash_once_at: int | None = None,
        show: Callable[[str], None] | None = _stderr) -> dict:
    """Run the trainer on Ray Train (the caller holds a Ray session) after `preflight`, showing
    progress with SHOW (None: quiet). Returns the last metrics Ray Train reported."""
    cfg = preflight(cfg)
    d = cfg.distributed
    use_gpu = d.gpus_per_worker > 0
    resources = {"CPU": 1, **({"GPU": d.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"train": config_dict(cfg), "crash_once_at": crash_once_at},
        scaling_config=ScalingConfig(num_workers=d.num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name="train",
            storage_path=str(Path(cfg.run.out).resolve() / "ray"),
            failure_config=FailureConfig(max_failures=d.max_failures),
        ),
    )
    if show is None:
        return dict(trainer.fit().metrics or {})
    progress = Progress(cfg, show)
    warn_if_untrained(cfg, show)
    show(f"starting {d.num_workers} Ray Train worker(s) ({'GPU' if use_gpu else 'CPU'}); progress every "
         f"{cfg.run.log_every} step(s) of {cfg.run.max_steps}, run directory {cfg.run.out}")
    done: dict = {}

    def run() -> None:
        try:
            done["result"] = trainer.fit()
        except BaseException as e:  # re-raised in the caller's thread below
            done["error"] = e

    worker = threading.Thread(target=run, name="ray-train-fit", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(timeout=1.0)
        progress.poll()
    progress.poll()
    if "error" in done:
        raise done["error"]
    return dict(done["result"].metrics or {})


def warn_if_untrained(cfg: TrainConfig, show: Callable[[str], None]) -> None:
    """Tiny models say so on the console, once (the workers' own warnings stay in Ray's logs)."""
    from curation.core.stage import warn_once
    from training.models import TINY_MARKER, tiny_warning

    if (Path(cfg.model.pretrained) / TINY_MARKER).exists():
        warn_once(tiny_warning(cfg.model.pretrained), lambda m: show(f"WARNING: {m}"))


def with_overrides(cfg: TrainConfig, num_workers: int | None, gpus_per_worker: float | None) -> TrainConfig:
    d = cfg.distributed
    return replace(cfg, distributed=replace(
        d,
        num_workers=num_workers if num_workers is not None else d.num_workers,
        gpus_per_worker=gpus_per_worker if gpus_per_worker is not None else d.gpus_per_worker,
    ))


@flow(name="train", log_prints=True)
def train_flow(config: str, num_workers: int | None = None, gpus_per_worker: float | None = None,
               ray_address: str | None = None) -> dict:
    """Train CogVideoX on videomill shards with Ray Train, per CONFIG (see training/config.py);
    relative paths in CONFIG are relative to the current directory. Returns `summarize`'s dict."""
    cfg = preflight(with_overrides(load_train_config(config), num_workers, gpus_per_worker))
    log = run_logger()
    log.info("training %s (%s, %s) with %d workers", cfg.model.pretrained, cfg.model.variant, cfg.model.version,
             cfg.distributed.num_workers)
    cpus = max(2, cfg.distributed.num_workers + 1)
    with ray_session(ray_address or cfg.distributed.ray_address, num_cpus=None if ray_address else max(cpus, os.cpu_count() or 1)):
        fit(cfg)
    summary = summarize(cfg)
    for line in summary_lines(summary):
        log.info("%s", line)
    return summary
