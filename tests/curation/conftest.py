"""Fixtures for the CPU analysis tier: small synthetic videos and a one-call analysis."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from curation.analysis.analyze import SplitAndScore, group_sources
from curation.core.config import load_config
from curation.media.probe import ProbeSources
from curation.corpora.synthetic import write_video

FPS = 25.0


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def make_video(video_dir) -> Callable[[str, Iterable[np.ndarray]], Path]:
    """Encode frames once per session under `name` (names are the cache key).

    x264's `veryfast` preset halves the encoding that dominates these fixtures; every margin
    the tests check also holds with the default preset `make_corpus` uses (measured).
    """
    made: dict[str, Path] = {}

    def make(name: str, frames: Iterable[np.ndarray], fps: float = FPS) -> Path:
        if name not in made:
            made[name] = write_video(video_dir / f"{name}.mp4", frames, fps, options={"preset": "veryfast"})
        return made[name]

    return make


def analyze_source(path: str | Path, overrides: dict[str, Any] | None = None) -> dict:
    """Probe and analyze one source with the cpu profile (plus `overrides`): the source row,
    with its clip rows (scores and model-stage frames) under `clips`."""
    cfg = load_config(overrides=overrides)
    probed = ProbeSources()(pa.table({"source": [str(path)]}))
    stage = SplitAndScore(cfg)
    stage.setup()
    (row,) = group_sources(stage(probed))
    assert row["status"] == "ok", row["error"]
    return row


@pytest.fixture(scope="session")
def analyze() -> Callable[..., dict]:
    return analyze_source
