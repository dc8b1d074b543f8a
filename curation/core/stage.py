"""What a pipeline stage is.

A stage is a plain class: a cheap, picklable constructor taking its config, `setup()` for
expensive state (models, codecs), and `__call__(batch) -> batch` over `pyarrow.Table`
batches. Stages know nothing about where they run: `flows/run_local.py` runs them in this
process, `flows/run_ray.py` on Ray Data (an actor pool when `stateful` is set). They declare
the columns they read and write so a chain is checked before it starts.
"""

from __future__ import annotations

import logging
from typing import Callable, ClassVar

import pyarrow as pa

_WARNED: set[str] = set()


def warn_once(message: str, say: Callable[[str], None] | None = None) -> None:
    """Log `message` as a warning once per process, however many stages or steps want it said:
    the flow says a run's warnings in the driver (console and Prefect logs), and a stage that
    says the same in its setup then stays quiet when it runs in that same process (local
    executor); Ray workers still write it to their own logs."""
    if message not in _WARNED:
        _WARNED.add(message)
        (say or logging.getLogger("videomill").warning)(message)


class Stage:
    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()
    # Holds state worth keeping between batches (a model): run it on an actor pool.
    stateful: ClassVar[bool] = False
    # Resources one instance needs.
    num_cpus: ClassVar[float] = 1.0
    num_gpus: ClassVar[float] = 0.0
    batch_size: ClassVar[int] = 1

    @property
    def threads(self) -> int:
        """Threads for the native code the stage drives (FFmpeg decode, x264 encode): its
        `num_cpus`, rounded, at least 1, so Ray's CPU accounting matches what runs."""
        return max(1, int(round(self.num_cpus)))

    def setup(self) -> None:
        """Load what is expensive; called once per process before the first batch."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        raise NotImplementedError


def item_error(e: BaseException, default_code: str = "exception") -> dict:
    """The error fields of one item's row (schema: `error`, `error_code`, `error_detail`).

    Per-item fault isolation: a stage catches *any* exception raised while working on one
    source or clip and turns it into that item's error row with this, so one bad input
    never fails its batch. A `MediaError` (an expected problem with the file) keeps its
    message and code; anything else is named by type and message, grouped under
    `default_code`, and keeps its traceback as the detail for whoever debugs it.
    """
    import traceback

    from curation.media.container import MediaError

    if isinstance(e, MediaError):
        return {"error": str(e), "error_code": e.code, "error_detail": None}
    detail = "".join(traceback.format_exception(type(e), e, e.__traceback__, limit=-8))
    return {"error": f"{type(e).__name__}: {e}", "error_code": default_code, "error_detail": detail[-4000:]}
