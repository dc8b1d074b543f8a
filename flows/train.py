"""`videomill train`: the trainer under Ray Train (TorchTrainer), and as a Prefect flow.

Each Ray Train worker runs training.loop.train; Ray Train starts the process group (gloo on
CPU, NCCL on GPU) and restarts the whole group from the newest checkpoint when a worker dies
(`distributed.max_failures`). The same loop runs under torchrun: `python -m training.loop`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import ray
from prefect import flow
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from curation.config import build_config
from flows.logs import run_logger
from flows.run_ray import ray_session
from training.config import TrainConfig, load_train_config


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


def fit(cfg: TrainConfig, *, crash_once_at: int | None = None) -> dict:
    """Run the trainer on Ray Train (the caller holds a Ray session). Returns the last metrics."""
    if cfg.model.pretrained == "tiny":  # build the tiny models once, not racing in every worker
        from training.models import resolve_pretrained

        cfg = replace(cfg, model=replace(cfg.model, pretrained=resolve_pretrained(cfg.model)))
    d = cfg.distributed
    use_gpu = d.gpus_per_worker > 0
    resources = {"CPU": 1, **({"GPU": d.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"train": json.loads(json.dumps(asdict(cfg))), "crash_once_at": crash_once_at},
        scaling_config=ScalingConfig(num_workers=d.num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name="train",
            storage_path=str(Path(cfg.run.out).resolve() / "ray"),
            failure_config=FailureConfig(max_failures=d.max_failures),
        ),
    )
    result = trainer.fit()
    return dict(result.metrics or {})


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
    """Train CogVideoX on videomill shards with Ray Train, per CONFIG (see training/config.py)."""
    cfg = with_overrides(load_train_config(config), num_workers, gpus_per_worker)
    log = run_logger()
    log.info("training %s (%s, %s) with %d workers", cfg.model.pretrained, cfg.model.variant, cfg.model.version,
             cfg.distributed.num_workers)
    cpus = max(2, cfg.distributed.num_workers + 1)
    with ray_session(ray_address or cfg.distributed.ray_address, num_cpus=None if ray_address else max(cpus, os.cpu_count() or 1)):
        metrics = fit(cfg)
    log.info("done: %s", metrics)
    return metrics
