"""What a pipeline stage is.

A stage is a plain class: a cheap, picklable constructor taking its config, `setup()` for
expensive state (models, codecs), and `__call__(batch) -> batch` over `pyarrow.Table`
batches. Stages know nothing about where they run: `flows/run_local.py` runs them in this
process, `flows/run_ray.py` on Ray Data (an actor pool when `stateful` is set). They declare
the columns they read and write so a chain is checked before it starts.
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa


class Stage:
    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()
    # Holds state worth keeping between batches (a model): run it on an actor pool.
    stateful: ClassVar[bool] = False
    # Resources one instance needs.
    num_cpus: ClassVar[float] = 1.0
    num_gpus: ClassVar[float] = 0.0
    batch_size: ClassVar[int] = 1

    def setup(self) -> None:
        """Load what is expensive; called once per process before the first batch."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        raise NotImplementedError
