"""The openai backend against a real OpenAI-compatible server: `transformers serve` (from the
transformers[serving] extra) serving the tiny VLM from its local folder on 127.0.0.1. THE TINY
VLM IS UNTRAINED: only the machinery is checked."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from captioning.backends import OpenAIBackend, Request, Sampling, check_server, mp4_b64
from captioning.frames import Sampled
from captioning.caption_clips import CaptionClips
from flows.run_local import run_local
from tests.captioning.conftest import clip_table
from tests.captioning.test_caption_clips import check_rows, tiny_cfg

pytestmark = pytest.mark.slow


def served_cfg(url: str, tiny_vlm: str, **kw):
    base = tiny_cfg()
    return dataclasses.replace(base, backend="openai", openai=dataclasses.replace(
        base.openai, base_url=url, served_model=tiny_vlm, max_in_flight=4, timeout_s=60.0, server="transformers",
        frames_as="images"), **kw)  # transformers serve 5.25 loads a video's audio track too: frames go as images


@pytest.mark.parametrize("mode", ["video", "frames+summary"])
def test_served_tiny_vlm_captions_every_clip_or_says_why(mode, openai_server, tiny_vlm, clips_root):
    cfg = served_cfg(openai_server, tiny_vlm, mode=mode)
    check_server(cfg)  # the start-up check passes: the server answers
    out = run_local([CaptionClips(cfg, str(clips_root))], clip_table(missing=True))
    check_rows(out, cfg)
    rows = {r["clip_id"]: r for r in out.to_pylist()}
    assert "file not found" in rows["gone"]["caption_error"]
    assert sum(r["caption"] is not None for r in rows.values()) >= 2, [(r["caption_error"], r["caption_flags"]) for r in rows.values()]
    assert all(r["caption_gen_tokens"] > 0 for k, r in rows.items() if k != "gone")


def test_many_requests_in_flight_come_back_in_order(openai_server, tiny_vlm):
    b = OpenAIBackend(tiny_vlm, None, system="", base_url=openai_server, api_key_env="UNSET_KEY", max_in_flight=8,
                      timeout_s=60.0, max_retries=2, frames_as="images", extra_body={}, server="transformers")
    b.setup()
    frames = np.random.default_rng(0).integers(0, 255, (2, 56, 56, 3), np.uint8)
    media = Sampled(frames, (0, 12), 24.0, 24)
    reqs = [Request(f"Describe frame set {i}.", "images" if i % 2 else "text", media if i % 2 else None) for i in range(12)]
    replies = b.generate(reqs, Sampling(max_new_tokens=8, temperature=0.0, top_p=1.0, repetition_penalty=1.0, seed=0))
    assert len(replies) == 12 and all(r.error is None and r.tokens > 0 for r in replies), replies
    assert all(r.tokens <= 8 for r in replies)


def test_video_payload_is_a_playable_mp4():
    import base64
    import io

    import av

    frames = np.random.default_rng(1).integers(0, 255, (5, 48, 64, 3), np.uint8)
    data = base64.b64decode(mp4_b64(frames, 2.0))
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        got = list(c.decode(s))
        assert (len(got), got[0].width, got[0].height) == (5, 64, 48)
        assert float(s.average_rate) == pytest.approx(2.0)
