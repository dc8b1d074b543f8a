"""One logger for flow code: Prefect's run logger inside a flow or task run (so lines reach
the run's logs in the UI), the plain `videomill` logger elsewhere (tests, helpers).

Prefect is imported when a logger is asked for, not with this module: Ray's actor processes
import flows/run_ray.py (the actor adapters live there), which imports this module:
unpickling an adapter in a fresh interpreter took 5.9 s with Prefect, 3.2 s without."""

from __future__ import annotations

import logging


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("videomill")
