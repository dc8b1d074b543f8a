"""Run a chain of stages in this process: tests, debugging, and `runtime.executor = "local"`."""

from __future__ import annotations

from typing import Sequence

import pyarrow as pa

from curation.schema import check_chain
from curation.stage import Stage


def run_local(stages: Sequence[Stage], table: pa.Table) -> pa.Table:
    check_chain(stages, table.column_names)
    for stage in stages:
        stage.setup()
        parts = [stage(table.slice(i, stage.batch_size)) for i in range(0, table.num_rows, stage.batch_size)]
        table = pa.concat_tables(parts) if parts else stage(table.slice(0, 0))
    return table
