"""Fixtures for the captioning tests: short clips on disk, the tiny VLM, a real OpenAI-compatible
server (`transformers serve`) serving it. THE TINY VLM IS RANDOM-INITIALISED AND UNTRAINED: the
tests check the machinery (every clip gets a caption or a reason, budgets hold, resume works),
never what a trained model would write."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pyarrow as pa
import pytest

from curation.corpora import synthetic

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Torch on one thread: the tiny model is ~30x slower when two processes fight over 2 cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_vlm() -> str:
    from captioning.tiny import ensure_tiny_vlm

    return ensure_tiny_vlm()


@pytest.fixture(scope="session")
def clips_root(tmp_path_factory) -> Path:
    """OUT with three short video clips (24 fps, 2 s) and one image under OUT/clips."""
    root = tmp_path_factory.mktemp("caption_out")
    (root / "clips").mkdir()
    for i in range(3):
        synthetic.write_video(root / "clips" / f"v{i}.mp4", synthetic.moving(48, (160, 96), (2.0, 1.0), seed=i), 24)
    cv2.imwrite(str(root / "clips" / "img.jpg"), synthetic.texture(96, 160, 5))
    return root


def clip_table(n_videos: int = 3, image: bool = True, missing: bool = False) -> pa.Table:
    ids = [f"v{i}" for i in range(n_videos)] + (["img"] if image else []) + (["gone"] if missing else [])
    paths = [f"clips/v{i}.mp4" for i in range(n_videos)] + (["clips/img.jpg"] if image else []) + (["clips/gone.mp4"] if missing else [])
    media = ["video"] * n_videos + (["image"] if image else []) + (["video"] if missing else [])
    return pa.table({"clip_id": ids, "clip_path": paths, "media_type": media})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def openai_server(tiny_vlm):
    """`transformers serve` (transformers[serving]) on 127.0.0.1, a free port, the tiny VLM from
    its local folder. Yields the base URL; the server is terminated (then killed) at the end."""
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("the `transformers` CLI is missing: install the dev extra (transformers[serving])")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    log = open(Path(tiny_vlm).parent / f"serve-{port}.log", "w")
    proc = subprocess.Popen([exe, "serve", tiny_vlm, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                             "--dtype", "float32", "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        import httpx

        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {proc.returncode}; see {log.name}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not answer within 240 s; see {log.name}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
