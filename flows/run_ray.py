"""Run a chain of stages on Ray Data.

Why one module: it is the only file that knows Ray Data. The actor and task adapters, the live
counts, the blocks, the retries and dropped blocks, the streaming pipeline and the session are
one executor; the stages and the flows stay free of Ray because all of it is here.

Each stage becomes one `map_batches` operator named after the stage class, so the Ray
dashboard reads as the pipeline. Stateful stages (models) run on an actor pool sized from the
cluster (GPUs / the stage's `num_gpus`, or CPUs / `num_cpus`) and load once per actor in
`setup()`; stateless ones run as tasks. `stream_ray` builds the whole scoring run as ONE
streaming pipeline (sources -> probe -> split -> clip stages -> manifest parts): Ray Data's
streaming executor keeps every stage busy across part boundaries and provides the
backpressure; there is no scheduler of ours.

Fault isolation: stages turn any exception on one item into its error row themselves
(curation.core.stage.item_error). A worker that *dies* on an item (segfault, os._exit, OOM kill)
is retried `max_retries` times by Ray; then its block is dropped (`max_errored_blocks`) and
the flow, finding those sources missing from the manifest, retries them one per block and
finally writes them as `worker_died` error rows (flows/bookkeeping.py).
"""

from __future__ import annotations

import functools
import math
import os
import sys
import threading
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import pyarrow as pa
import ray

from curation.core.schema import check_chain
from curation.core.stage import Stage
from flows.logs import run_logger
from flows.progress import Live
from flows.run_local import apply_clip_stage


class _StageActor:
    """Actor-pool adapter: builds the stage once per actor, then serves batches. `count` (the
    step's last stage only) reports each output batch for the progress line; `setups`: a
    `_Setups` actor told of each setup as it starts (the caption stream counts its model loads
    with it: a load is paid from its start, also by an actor the pool ends before it is ready)."""

    def __init__(self, stage: Stage, count: "_RemoteCount | None" = None, setups: "ray.actor.ActorHandle | None" = None):
        self.stage, self.count = stage, count
        if setups is not None:
            ray.get(setups.add.remote(type(stage).__name__))
        self.stage.setup()

    def apply(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = self.apply(batch)
        if self.count is not None:
            self.count(out)
        return out


@ray.remote(num_cpus=0)
class _Setups:
    """How many times each stateful stage was set up (its model loaded) in one pipeline."""

    def __init__(self):
        self.n: dict[str, int] = {}

    def add(self, name: str) -> None:
        self.n[name] = self.n.get(name, 0) + 1

    def get(self) -> dict[str, int]:
        return self.n


class _ClipStageActor(_StageActor):
    def apply(self, batch: pa.Table) -> pa.Table:
        return apply_clip_stage(self.stage, batch)


def _actor_class(stage: Stage, clip: bool = False) -> type:
    return type(type(stage).__name__, (_ClipStageActor if clip else _StageActor,), {})


def _task_fn(stage: Stage, count: "_RemoteCount | None" = None):
    ready = []

    def fn(batch: pa.Table) -> pa.Table:
        if not ready:  # once per worker process that unpickles this function
            stage.setup()
            ready.append(True)
        out = stage(batch)
        if count is not None:
            count(out)
        return out

    fn.__name__ = fn.__qualname__ = type(stage).__name__
    return fn


@ray.remote(num_cpus=0)
class _Counter:
    """Where the workers' progress counts gather until the driver takes them."""

    def __init__(self):
        self.counts = [0, 0, 0]

    def add(self, *counts: int) -> None:
        self.counts = [a + b for a, b in zip(self.counts, counts)]

    def take(self) -> list[int]:
        out, self.counts = self.counts, [0, 0, 0]
        return out


class _RemoteCount:
    """Called by a worker on a stage's output batch: its counts go to the `_Counter` actor
    (fire and forget: a lost count costs a progress line its precision, nothing else)."""

    def __init__(self, count: Callable[[pa.Table], tuple[int, int, int]], counter: "ray.actor.ActorHandle"):
        self.count, self.counter = count, counter

    def __call__(self, batch: pa.Table) -> None:
        counts = self.count(batch)
        if any(counts):
            self.counter.add.remote(*counts)


@contextmanager
def _live_counts(live: Live | None, every_s: float = 1.0) -> Iterator[_RemoteCount | None]:
    """For the workers: a `_RemoteCount` feeding a counter actor; here: a thread moving what
    the actor gathered into `live.add` every `every_s` seconds, and once more at the end."""
    if live is None:
        yield None
        return
    counter = _Counter.remote()
    stop = threading.Event()

    def move() -> None:
        live.add(*ray.get(counter.take.remote()))

    def poll() -> None:
        while not stop.wait(every_s):
            move()

    thread = threading.Thread(target=poll, name="progress-counts", daemon=True)
    thread.start()
    try:
        yield _RemoteCount(live.count, counter)
    finally:
        stop.set()
        thread.join()
        move()
        ray.kill(counter)


def run_ray(stages: Sequence[Stage], table: pa.Table, max_retries: int = 2, live: Live | None = None) -> pa.Table:
    """`stages` over the rows of `table` on the cluster (extraction: a row per source;
    captioning: a row per clip), a few rows per task; the output rows, in no set order.
    `live` sees each output batch of the last stage, as it is done.

    A block whose worker died `max_retries` + 1 times (segfault, OOM kill) is dropped, not
    fatal: its rows are missing from the output and the caller accounts for them (e.g.
    flows/curate.py join_extraction: `worker_died`)."""
    check_chain(stages, table.column_names)
    if table.num_rows == 0:
        return run_empty(stages, table)
    # Blocks of a few rows: enough to keep every CPU busy, so one slow row (a long source to
    # extract) holds up few others.
    # The read asks for the first stage's CPUs when it fuses into it (a task stage); before an
    # actor pool it is a small task of its own.
    first = stages[0]
    read_cpus = 0.25 if first.stateful else first.num_cpus
    with _dropping_dead_blocks(), _live_counts(live) as count:  # (a Dataset copies the DataContext when it is made)
        ds = blocks_of(table, sources_per_block(table.num_rows), max_retries, num_cpus=read_cpus)
        for i, stage in enumerate(stages):
            # The first task stage takes the read's whole block, so Ray fuses the two.
            whole = i == 0 and not stage.stateful
            ds = _add_stage(ds, stage, clip=False, max_retries=max_retries, batch_size=None if whole else stage.batch_size,
                            count=count if i == len(stages) - 1 else None)
        tables = [t for t in ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0) if t.num_rows]
    return pa.concat_tables(tables) if tables else run_empty(stages, table)


@contextmanager
def _dropping_dead_blocks():
    """Within: a block whose tasks died every retry is dropped instead of failing the run."""
    ctx = ray.data.DataContext.get_current()
    old = ctx.max_errored_blocks
    ctx.max_errored_blocks = -1
    try:
        yield
    finally:
        ctx.max_errored_blocks = old


class TableBlocks(ray.data.Datasource):
    """A table already in the object store, read as blocks of `k` rows: one read task per
    block, each slicing its rows out of the one shared copy where it runs.

    Why not `ray.data.from_arrow([slices])`: Ray keeps every small object in its owner's
    memory, so the driver held each input block for the whole run, ~47 KB a block (measured:
    +1.2 GiB of driver RSS for 25,000 blocks of 8 sources; ~6 GB at 1M sources). A read task
    holds only (object ref, offset), and being a read it fuses with the first stage's tasks."""

    def __init__(self, ref: "ray.ObjectRef", num_rows: int, schema: pa.Schema, k: int):
        self.ref, self.num_rows, self.schema, self.k = ref, num_rows, schema, k

    def get_name(self) -> str:
        return "Blocks"

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list:
        from ray.data.block import BlockMetadata
        from ray.data.datasource import ReadTask

        tasks = []
        for start in range(0, self.num_rows, self.k):
            rows = min(self.k, self.num_rows - start)
            meta = BlockMetadata(num_rows=rows, size_bytes=None, exec_stats=None, input_files=None)
            tasks.append(ReadTask(functools.partial(_slice_rows, self.ref, start, rows), meta, schema=self.schema,
                                  per_task_row_limit=per_task_row_limit))
        return tasks


def _slice_rows(ref: "ray.ObjectRef", start: int, rows: int) -> list[pa.Table]:
    return [ray.get(ref).slice(start, rows)]  # zero-copy from the object store


def blocks_of(table: pa.Table, k: int, max_retries: int = 2, num_cpus: float = 1.0) -> "ray.data.Dataset":
    """`table` as a Dataset of `k`-row blocks (TableBlocks). The read asks for what the first
    stage asks (`num_cpus`, `max_retries`), so Ray fuses it into that stage's tasks."""
    n_blocks = math.ceil(table.num_rows / k)
    source = TableBlocks(ray.put(table), table.num_rows, table.schema, k)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ray.data.read_datasource(source, override_num_blocks=n_blocks, num_cpus=num_cpus,
                                        ray_remote_args={"max_retries": max_retries})


def _add_stage(ds, stage: Stage, clip: bool, max_retries: int, batch_size: int | None, num_cpus: float | None = None,
               count: _RemoteCount | None = None, setups: "ray.actor.ActorHandle | None" = None):
    """One stage as a map_batches operator; `batch_size` None: whole blocks; `count` reports
    each output batch (progress); `setups` counts the actors' setups (model loads)."""
    num_cpus = stage.num_cpus if num_cpus is None else num_cpus
    common: dict = dict(batch_format="pyarrow", batch_size=batch_size, num_cpus=num_cpus)
    if stage.num_gpus:
        common["num_gpus"] = stage.num_gpus
    if stage.stateful or clip:
        # Model stages: a pool of actors, each loading its model once for the whole run.
        n = pool_size(stage)
        # GPUs (or a set number of actors): hold them all for the run; CPU models: scale between 1 and n with the work.
        fixed = stage.num_gpus or getattr(stage, "actors", None)
        pool = ray.data.ActorPoolStrategy(size=n) if fixed else ray.data.ActorPoolStrategy(min_size=1, max_size=n)
        return ds.map_batches(_actor_class(stage, clip), fn_constructor_args=(stage, count, setups), compute=pool, **common)
    return _with_retries(ds, _task_fn(stage, count), max_retries, **common)


def _with_retries(ds, fn, max_retries: int, **kwargs):
    """map_batches with a bounded task retry count. Ray Data retries tasks forever by default
    (max_retries=-1): an item that kills its worker would never end the run. Ray 2.60 has no
    named parameter for it, only the deprecated ray_remote_args pass-through."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(fn, max_retries=max_retries, **kwargs)


def stream_ray(
    sources: list[str],
    source_stages: Sequence[Stage],
    clip_stages: Sequence[Stage],
    write: Callable[[pa.Table], pa.Table],
    rows_per_part: int,
    sources_per_block: int | None = None,
    max_retries: int = 2,
    live: Live | None = None,
    live_models: Live | None = None,
) -> Iterator[pa.Table]:
    """The scoring run as one streaming Ray Data pipeline; yields each written part's counts.

    sources: URIs still to score. Input blocks hold `sources_per_block` sources (default:
    enough blocks to keep every CPU busy, at most 8 sources each); the writer closes a part
    every `rows_per_part` clip rows. Blocks whose worker died `max_retries` + 1 times are
    dropped, not fatal: their sources are simply missing from the manifest afterwards."""
    check_chain([*source_stages, *clip_stages], ["source"])
    if not sources:
        return
    # A dead item's block is dropped; the flow accounts for it. `live` hears from the analysis
    # as each source is done, `live_models` from the last model stage (in batches of its size).
    with _dropping_dead_blocks(), _live_counts(live) as count, _live_counts(live_models) as count_models:
        yield from _stream(sources, source_stages, clip_stages, write, rows_per_part, sources_per_block, max_retries,
                           count, count_models)


def sources_per_block(n: int) -> int:
    """Sources per input block: enough blocks to keep every CPU busy (4 per CPU), at most 8
    sources each, so a slow source delays few others and a dead worker loses few."""
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return max(1, min(8, math.ceil(n / (4 * cpus))))


def _stream(sources, source_stages, clip_stages, write, rows_per_part, k, max_retries, count=None,
            count_models=None) -> Iterator[pa.Table]:
    k = k or sources_per_block(len(sources))
    first = source_stages[0] if source_stages else None
    ds = blocks_of(pa.table({"source": pa.array(sources, pa.string())}), k, max_retries, num_cpus=first.num_cpus if first else 1.0)
    # Whole blocks through the source stages (no batch size between them), so Ray fuses the
    # read, the source stages and, without clip stages, the writer into ONE task per block of
    # k sources: a dead worker loses only that block, and no tiny operator of its own takes
    # CPU slots from scoring (a separate read operator measured 1.6x the scoring wall time).
    # The last source stage and the last clip stage report each batch they finish (progress).
    for i, stage in enumerate(source_stages):
        ds = _add_stage(ds, stage, clip=False, max_retries=max_retries, batch_size=None,
                        count=count if i == len(source_stages) - 1 else None)
    cpus = ray.cluster_resources().get("CPU", 1.0)
    for i, stage in enumerate(clip_stages):
        ds = _add_stage(ds, stage, clip=True, max_retries=max_retries, batch_size=stage.batch_size,
                        num_cpus=actor_cpus(stage, clip_stages, cpus), count=count_models if i == len(clip_stages) - 1 else None)

    last = (*source_stages, *clip_stages)[-1]
    fused = not (last.stateful or clip_stages)

    def write_part(batch: pa.Table) -> pa.Table:
        if not fused:  # Ray hands the writer batches of rows_per_part rows
            return write(batch)
        # Fused: this task's whole block, cut into parts of rows_per_part clip rows here.
        return pa.concat_tables([write(batch.slice(i, rows_per_part)) for i in range(0, max(batch.num_rows, 1), rows_per_part)])

    write_part.__name__ = write_part.__qualname__ = "WriteParts"
    # Fused, the writer asks for what the last stage had: the worker that scored a block
    # writes its parts. After an actor-pool stage it runs as its own small tasks.
    ds = _with_retries(ds, write_part, max_retries, batch_format="pyarrow", batch_size=None if fused else rows_per_part,
                       num_cpus=last.num_cpus if fused else 0.25)
    yield from ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0)


def stream_table(
    stages: Sequence[Stage], table: pa.Table, write: Callable[[pa.Table], pa.Table], rows_per_part: int,
    max_retries: int = 2, rows_per_block: int | None = None, setups: dict | None = None,
) -> Iterator[pa.Table]:
    """`stages` over the rows of `table` as ONE streaming pipeline ending in `write`, called
    on every `rows_per_part` rows as they come out (a part, the unit of resume); yields what it
    returns. The caption stream (flows/captions.py): sources -> extraction and frame preparation
    (tasks on CPU workers, fused) -> the caption actor pool, created once for the run, each
    actor loading its model once -> the writer. Blocks whose worker died `max_retries` + 1 times
    are dropped, not fatal: their rows are missing from what is yielded. A stateful stage adds
    its columns to the rows it is given (`apply_clip_stage`); a task stage returns its rows.
    `setups`, when given, gets {stage name: times set up} (model loads) once the stream ends."""
    check_chain(stages, table.column_names)
    if not table.num_rows:
        return
    counter = _Setups.remote()
    with _dropping_dead_blocks():
        first = stages[0]
        k = rows_per_block or sources_per_block(table.num_rows)
        ds = blocks_of(table, k, max_retries, num_cpus=0.25 if first.stateful else first.num_cpus)
        cpus = ray.cluster_resources().get("CPU", 1.0)
        models = [s for s in stages if s.stateful]
        for i, stage in enumerate(stages):
            whole = not stage.stateful  # task stages take whole blocks, so Ray fuses them with the read
            # A model stage keeps its rows and adds its columns to them (apply_clip_stage).
            ds = _add_stage(ds, stage, clip=stage.stateful, max_retries=max_retries, batch_size=None if whole else stage.batch_size,
                            num_cpus=actor_cpus(stage, models, cpus) if stage.stateful else None, setups=counter)
        def write_part(batch: pa.Table) -> pa.Table:
            return write(batch)

        write_part.__name__ = write_part.__qualname__ = "WriteParts"
        ds = _with_retries(ds, write_part, max_retries, batch_format="pyarrow", batch_size=rows_per_part, num_cpus=0.25)
        yield from ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0)
    if setups is not None:
        setups.update(ray.get(counter.get.remote()))
    ray.kill(counter)


def map_tasks(fn: Callable, items: Sequence, num_cpus: float = 1.0) -> list:
    """[fn(x) for x in items] as Ray tasks spread over the cluster (e.g. one shard each);
    results in order. Plain tasks, not Ray Data: each item is one independent file."""
    def call(x):  # ray.remote takes a function or a class, not any callable (a partial)
        return fn(x)

    remote = ray.remote(num_cpus=num_cpus, max_retries=2)(call)
    return ray.get([remote.remote(x) for x in items])


def run_empty(stages: Sequence[Stage], table: pa.Table) -> pa.Table:
    for stage in stages:
        table = stage(table.slice(0, 0))
    return table


# CPU the streaming pipeline keeps free of model actors: one source task and the writer.
_TASK_CPUS = 1.0 + 0.25


def actor_cpus(stage: Stage, clip_stages: Sequence[Stage], cluster_cpus: float) -> float:
    """CPUs one actor of a CPU model stage reserves in Ray's accounting.

    Every actor pool keeps at least one actor alive for the whole run. On a small cluster
    (a 2-core laptop, CI) two CPU model pools reserving a whole CPU each leave nothing for the
    source tasks that feed them, and the stream deadlocks (seen: ScoreWithClip + ScoreText on
    2 CPUs). So the pools' minimum actors together reserve at most what is left after one
    source task and the writer; on a real cluster this is the stage's own `num_cpus`. GPU
    stages keep their declared CPUs: their bound is the GPU."""
    if stage.num_gpus:
        return stage.num_cpus
    cpu_pools = sum(getattr(s, "actors", None) or 1 for s in clip_stages if not s.num_gpus)  # a set pool holds all its actors
    share = max(0.05, (cluster_cpus - _TASK_CPUS) / max(cpu_pools, 1))
    return min(stage.num_cpus, share)


def pool_size(stage: Stage, resources: dict | None = None) -> int:
    """Actors for a model stage: the cluster's GPUs / the stage's `num_gpus` (fractional
    allowed: 0.25 puts four actors on a GPU), or CPUs / `num_cpus` for a CPU model; >= 1."""
    if getattr(stage, "actors", None):  # set in the stage's config (caption.actors)
        return stage.actors
    res = resources if resources is not None else ray.cluster_resources()
    if stage.num_gpus:
        return max(1, int(res.get("GPU", 0) / stage.num_gpus + 1e-9))
    return max(1, int(res.get("CPU", 1) / max(stage.num_cpus, 1e-3) + 1e-9))


@ray.remote(num_cpus=0, max_restarts=1)
class _NeverRuns:
    def __init__(self, arg):
        pass


def _spend_actor_restart_warning() -> None:
    """Ray Data hands every actor of a pool its operator's state as object refs, and Ray core
    logs an ERROR, once per process, for any actor with restarts and a ref argument
    ("... has constructor arguments in the object store and max_restarts > 0", Ray issue
    57733). It does not apply here (Ray Data holds those refs for the operator's whole life)
    and would be the one ERROR line of every run, so it is spent here, with stderr pointed at
    /dev/null for the one synchronous call that logs it: an actor that is never scheduled."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        actor = _NeverRuns.options(resources={"videomill_never": 1}).remote(ray.put(None))
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    ray.kill(actor)


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
    _spend_actor_restart_warning()
    url = getattr(ctx, "dashboard_url", None) or None
    if url:
        url = url if url.startswith("http") else f"http://{url}"
        run_logger().info("Ray dashboard: %s (sign in with the token `ray get-auth-token` prints)", url)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield url
    finally:
        ray.shutdown()
