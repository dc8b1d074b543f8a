"""Progress lines on a timer for the long steps: scoring, extraction, captioning.

A `Progress` prints `scoring: 12/32 sources (1 failed), 48 clips, 3.10 clips/s, ETA 25 s`
through the run logger (the CLI's stderr and the Prefect run's logs) every 5 s for the first
minute, then every 30 s, while its step runs, and once at the end, whatever the step's own
granularity (a manifest part holds 64 clip rows: a small run writes one, at the very end).

The counts come from the stages as they finish batches: a runner given a `Live` calls its
`count` on each output batch of the step's last stage, where that stage runs (a Ray worker or
this process), and hands the numbers to `add` here (flows/run_ray.py carries them back from
the workers through a small actor). Counts of a batch Ray retried are counted again, so the
step sets the true totals from its outputs at the end (`Progress.set`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from curation.core.schema import SOURCE_ROW

Counts = tuple[int, int, int]  # (done, clips, failed)
EVERY_S = 5.0  # a line this often during a step's first minute...
LATER_EVERY_S = 30.0  # ...then this often (a 6-hour run's logs stay readable)


@dataclass(frozen=True)
class Live:
    """What a runner reports as batches finish: `count(batch) -> (done, clips, failed)` runs
    where the stage runs (so it must pickle: a module-level function); `add` runs here."""

    count: Callable[[pa.Table], Counts]
    add: Callable[[int, int, int], None]

    def __call__(self, batch: pa.Table) -> None:
        self.add(*self.count(batch))


def _valid(batch: pa.Table, column: str) -> int:
    return int(pc.sum(pc.is_valid(batch.column(column))).as_py() or 0) if column in batch.column_names else 0


def count_scored(batch: pa.Table) -> Counts:
    """Scoring stream rows: sources (each one's row carries its `source_row`), clips, failed sources."""
    if SOURCE_ROW not in batch.column_names or not batch.num_rows:
        return 0, _valid(batch, "clip_id"), 0
    heads = batch.column(SOURCE_ROW).combine_chunks()
    heads = heads.filter(heads.is_valid())
    failed = int(pc.sum(pc.equal(heads.field("status"), "error")).as_py() or 0) if len(heads) else 0
    return len(heads), _valid(batch, "clip_id"), failed


def count_model_scored(batch: pa.Table) -> Counts:
    """Clip rows out of the last model stage: (0, clips, 0)."""
    return 0, _valid(batch, "clip_id"), 0


def count_extracted(batch: pa.Table) -> Counts:
    """Extraction results (a row per clip): clips done, files written, failed."""
    return batch.num_rows, _valid(batch, "clip_path"), _valid(batch, "error")


def count_captioned(batch: pa.Table) -> Counts:
    """Caption rows: clips done, captioned, with a caption_error."""
    errors = _valid(batch, "caption_error")
    return batch.num_rows, batch.num_rows - errors, errors


class Progress:
    """One step's progress line: `done`/`total` `unit` (failed), clips, clips/s, ETA.

    Use as a context manager: a thread emits the line on the timer while the step runs, and the
    final line is emitted on exit (a step with nothing to do says nothing). `add` may be
    called from any thread."""

    def __init__(self, label: str, total: int, log: logging.Logger | logging.LoggerAdapter, *, unit: str = "sources",
                 done: int = 0, clips: int = 0, failed: int = 0, every_s: float | None = None,
                 later_every_s: float | None = None, model_stages: bool = False):
        self.label, self.total, self.unit, self.log = label, total, unit, log
        self.done, self.clips, self.failed = done, clips, failed
        self.start_done, self.start_clips = done, clips
        # Scoring with model stages: clips through them, counted apart (they come in batches).
        self.model_stages, self.scored = model_stages, clips
        self.every_s = EVERY_S if every_s is None else every_s
        self.later_every_s = LATER_EVERY_S if later_every_s is None else later_every_s
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, done: int = 0, clips: int = 0, failed: int = 0) -> None:
        with self._lock:
            self.done += done
            self.clips += clips
            self.failed += failed

    def add_scored(self, done: int = 0, clips: int = 0, failed: int = 0) -> None:
        with self._lock:
            self.scored += clips

    def set(self, done: int, clips: int, failed: int) -> None:
        """The true totals (from the step's outputs), for the final line."""
        with self._lock:
            self.done, self.clips, self.failed, self.scored = done, clips, failed, clips

    def line(self) -> str:
        with self._lock:
            done, clips, failed, scored = self.done, self.clips, self.failed, self.scored
        dt = max(time.monotonic() - self.t0, 1e-9)
        rate = (done - self.start_done) / dt
        left = self.total - done
        eta = 0.0 if left <= 0 else (left / rate if rate > 0 else None)
        counts = f", {clips} clips" if self.unit != "clips" else ""
        if self.model_stages:
            counts += f" ({scored} through the model stages)"
            backlog, model_rate = clips - scored, (scored - self.start_clips) / dt
            if backlog > 0 and eta is not None:  # analysis done before the model stages are
                eta = max(eta, backlog / model_rate) if model_rate > 0 else None
        shown = "?" if eta is None else f"{eta:.0f} s"
        # Before the first batch is done: workers starting, models loading (tens of seconds on Ray).
        waiting = " (waiting for the first results)" if done < self.total and (done, clips) == (self.start_done, self.start_clips) else ""
        return (f"{self.label}: {done}/{self.total} {self.unit} ({failed} failed){counts}, "
                f"{(clips - self.start_clips) / dt:.2f} clips/s, ETA {shown}{waiting}")

    def emit(self) -> None:
        self.log.info("%s", self.line())

    def _tick(self) -> None:
        while not self._stop.wait(self.every_s if time.monotonic() - self.t0 < 60 else self.later_every_s):
            self.emit()

    def __enter__(self) -> "Progress":
        if not self.total:  # nothing to do: nothing to say
            return self
        self._thread = threading.Thread(target=self._tick, name=f"progress-{self.label}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc_type is None and self.total:
            self.emit()
