"""Shared fixtures: one Ray session, one Prefect test server, one generated corpus.

Starting Ray (~9 s) or a Prefect server (~5-20 s) per test would dominate the suite, so each
is started once per session and only by the tests that ask for it.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile

import pytest

# Tests never read or write the user's Prefect profile (a PREFECT_API_URL set there for a
# production server would send the suite's runs to it); subprocesses inherit this too.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="videomill-test-prefect-")
os.environ.pop("PREFECT_API_URL", None)

# Tests never reach a model hub: a model missing from the caches is an error, never a download.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


@pytest.fixture(autouse=True)
def logging_streams_outlive_the_test():
    """A logging handler made during a test keeps the sys.stderr of that moment: Prefect's
    console handler, made when Prefect is first imported (in-process CLI tests import it under
    capsys), then writes to a stream pytest has closed, and every later test that logs through
    Prefect fails or prints '--- Logging error ---', depending on which test ran first. After
    each test, handlers left on a closed stream are pointed at the current sys.stderr."""
    yield
    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger))]
    for handler in {h for lg in loggers for h in lg.handlers}:
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
            handler.stream = sys.stderr  # (setStream would flush the closed one first)
            if hasattr(handler, "console"):  # Prefect's handler prints through a rich Console
                handler.console.file = sys.stderr


@pytest.fixture(scope="session")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """The mixed folder of good and bad inputs, with what a run must find for each file."""
    from curation.corpora.synthetic import make_corpus

    root = tmp_path_factory.mktemp("corpus")
    expect = make_corpus(root, seconds=3.0)
    return root, expect


@pytest.fixture(scope="session")
def realset(tmp_path_factory) -> Path:
    """The real-footage development set (bench/realset.py), built once per session.

    Skips, loudly, only when its sources are truly absent (Debian's opencv-doc, scikit-image);
    .ci/run installs them and sets VIDEOMILL_REQUIRE_REALSET=1, which turns a skip into a failure."""
    import os

    from bench.realset import RealsetMissing, build

    try:
        return build(tmp_path_factory.mktemp("realset"))
    except RealsetMissing as e:
        if os.environ.get("VIDEOMILL_REQUIRE_REALSET") == "1":
            raise
        pytest.skip(f"REAL-FOOTAGE TESTS SKIPPED: {e}")


# The hostile-corpus tally (tests/flows/test_hostile.py fills it); its one line is the last
# thing the suite prints, so CI logs end with it.
HOSTILE_TALLY = pytest.StashKey[dict]()


@pytest.fixture(scope="session")
def hostile_tally(request) -> dict:
    return request.config.stash.setdefault(HOSTILE_TALLY, {})


def pytest_unconfigure(config):
    tally = config.stash.get(HOSTILE_TALLY, None)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if tally and reporter is not None:
        reporter.write_line(
            f"hostile corpus: {tally['kinds']} kinds of hostile input tried, {tally['inputs']} inputs, "
            f"crashes {tally['crashes']}, items lost {tally['lost']}, duplicates {tally['duplicates']}"
        )
