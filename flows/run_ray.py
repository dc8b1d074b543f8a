"""Run a chain of stages on Ray Data.

Each stage becomes one `map_batches` operator named after the stage class, so the Ray
dashboard reads as the pipeline. Stateful stages (models) run on an autoscaling actor pool
and load once per actor in `setup()`; stateless ones run as tasks. Ray Data's streaming
executor provides the backpressure; there is no scheduler of ours.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Sequence

import pyarrow as pa
import ray

from curation.schema import check_chain
from flows.logs import run_logger
from curation.stage import Stage



class _StageActor:
    """Actor-pool adapter: builds the stage once per actor, then serves batches."""

    def __init__(self, stage: Stage):
        self.stage = stage
        self.stage.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)


def _actor_class(stage: Stage) -> type:
    return type(type(stage).__name__, (_StageActor,), {})


def _task_fn(stage: Stage):
    ready = []

    def fn(batch: pa.Table) -> pa.Table:
        if not ready:  # once per worker process that unpickles this function
            stage.setup()
            ready.append(True)
        return stage(batch)

    fn.__name__ = fn.__qualname__ = type(stage).__name__
    return fn


def run_ray(stages: Sequence[Stage], table: pa.Table) -> pa.Table:
    check_chain(stages, table.column_names)
    if table.num_rows == 0:
        return run_empty(stages, table)
    ds = ray.data.from_arrow(table).repartition(table.num_rows)
    for stage in stages:
        common = dict(batch_format="pyarrow", batch_size=stage.batch_size, num_cpus=stage.num_cpus)
        if stage.num_gpus:
            common["num_gpus"] = stage.num_gpus
        if stage.stateful:
            ds = ds.map_batches(_actor_class(stage), fn_constructor_args=(stage,), concurrency=(1, max_actors()), **common)
        else:
            ds = ds.map_batches(_task_fn(stage), **common)
    tables = [t for t in (ray.get(ref) for ref in ds.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(tables) if tables else run_empty(stages, table)


def run_empty(stages: Sequence[Stage], table: pa.Table) -> pa.Table:
    for stage in stages:
        table = stage(table.slice(0, 0))
    return table


def max_actors() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


@contextmanager
def ray_session(address: str | None, num_cpus: int | None = None, dashboard: bool = True) -> Iterator[str | None]:
    """Attach to `address` (or RAY_ADDRESS), or start a local Ray bound to 127.0.0.1.

    Yields the dashboard URL (None when unknown). Reuses an already-initialised Ray (tests
    share one session) and only shuts down what it started."""
    if ray.is_initialized():
        yield None
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    # "local": always a fresh instance, never a stale or unrelated `ray start` found on disk.
    kwargs: dict = {"address": address or "local", "log_to_driver": False, "configure_logging": False}
    if address is None:
        kwargs.update(num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1")

    ctx = ray.init(**kwargs)
    url = getattr(ctx, "dashboard_url", None) or None
    if url:
        url = url if url.startswith("http") else f"http://{url}"
        run_logger().info("Ray dashboard: %s (sign in with the token `ray get-auth-token` prints)", url)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield url
    finally:
        ray.shutdown()
