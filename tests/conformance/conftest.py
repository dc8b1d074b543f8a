"""Conformance tests: what our code hands a model equals what its reference library produces.

Real processor and model classes (transformers, open_clip) at tiny sizes, built offline; clip
files of known length and frame rate. Nothing here reaches a model hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# (seconds, frames/s) of the clip files the timing tests caption together in one batch.
CLIPS = {"a2s": (2.0, 24.0), "b10s": (10.0, 24.0), "c8s": (8.0, 25.0), "d5s": (5.0, 25.0)}


@pytest.fixture(scope="session")
def clip_files(tmp_path_factory) -> dict[str, Path]:
    from curation.corpora import synthetic

    root = tmp_path_factory.mktemp("conformance_clips")
    out = {}
    for i, (name, (seconds, fps)) in enumerate(CLIPS.items()):
        out[name] = synthetic.write_video(root / f"{name}.mp4", synthetic.moving(int(seconds * fps), (64, 48), (1.0, 0.5), seed=i), fps)
    return out


@pytest.fixture(scope="session")
def tiny_smolvlm(tmp_path_factory) -> str:
    from tests.conformance.tiny_models import build_tiny_smolvlm

    return str(build_tiny_smolvlm(tmp_path_factory.mktemp("tiny_smolvlm")))


@pytest.fixture(scope="session")
def tiny_qwen() -> str:
    from captioning.tiny import ensure_tiny_vlm

    return ensure_tiny_vlm()
