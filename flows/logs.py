"""One logger for flow code: Prefect's run logger inside a flow or task run (so lines reach
the run's logs in the UI), the plain `videomill` logger elsewhere (tests, helpers)."""

from __future__ import annotations

import logging

from prefect import get_run_logger
from prefect.exceptions import MissingContextError


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("videomill")
