"""What the openai backend sends a server, checked against how the servers read it.

* Sampling: the transformers backend's (`Sampling`, one caption key): repetition_penalty
  reaches vLLM as its own extra field and `transformers serve` inside `generation_config`
  (its request schema rejects unknown fields; vLLM defaults a missing one to 1.0).
* A video: one MP4 whose frame rate is the sampling rate. vLLM's video loader reads the
  container's frame rate and frame count (OpenCV `CAP_PROP_FPS`, `CAP_PROP_FRAME_COUNT`) and
  takes every frame (`--media-io-kwargs '{"video": {"num_frames": -1}}'`); given that
  metadata, the real Qwen2.5-VL processor must compute this clip's `second_per_grid_ts`.
"""

from __future__ import annotations

import base64
import json
import tempfile

import cv2
import numpy as np
import pytest

from captioning.backends import OpenAIBackend, Request, Sampling, mp4_b64
from captioning.frames import read_clip
from curation.core.config import load_config

SAMPLING = Sampling(max_new_tokens=64, temperature=0.2, top_p=0.9, repetition_penalty=1.05, seed=0)


def make(server="vllm", frames_as="video", extra_body=None) -> OpenAIBackend:
    return OpenAIBackend("m", None, system="", base_url="http://127.0.0.1:1/v1", api_key_env="X", max_in_flight=1,
                         timeout_s=1.0, max_retries=0, frames_as=frames_as, extra_body=extra_body or {}, server=server)


def test_video_is_the_default_for_servers_and_the_sampling_goes_in_each_servers_dialect(clip_files):
    assert load_config().caption.openai.frames_as == "video"
    m = read_clip(clip_files["a2s"], 2.0, 4, 10**6)
    vllm = make().body(Request("p", "video", m), SAMPLING)
    assert vllm["repetition_penalty"] == 1.05 and vllm["mm_processor_kwargs"] == {"do_sample_frames": False}
    serve = make("transformers").body(Request("p", "video", m), SAMPLING)
    assert json.loads(serve["generation_config"]) == {"repetition_penalty": 1.05} and "repetition_penalty" not in serve
    # a user's extra_body is merged over it, key by key
    mine = make(extra_body={"mm_processor_kwargs": {"max_pixels": 1000}, "top_k": 20}).body(Request("p", "video", m), SAMPLING)
    assert mine["mm_processor_kwargs"] == {"do_sample_frames": False, "max_pixels": 1000} and mine["top_k"] == 20


def test_the_mp4_tells_a_vllm_loader_the_clips_sampling_rate(clip_files, tiny_qwen):
    from transformers import AutoProcessor
    from transformers.video_utils import VideoMetadata

    processor = AutoProcessor.from_pretrained(tiny_qwen)
    for name, want in (("a2s", 1.0), ("b10s", 5.0)):
        m = read_clip(clip_files[name], 2.0, 4, 10**6)
        (part,) = [p for p in make().content(Request("p", "video", m)) if p["type"] == "video_url"]
        data = base64.b64decode(part["video_url"]["url"].split(",", 1)[1])
        with tempfile.NamedTemporaryFile(suffix=".mp4") as f:  # what vLLM's OpenCV loader reads
            f.write(data)
            f.flush()
            cap = cv2.VideoCapture(f.name)
            fps, count = cap.get(cv2.CAP_PROP_FPS), int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            frames = []
            while (ok := cap.read())[0]:
                frames.append(cv2.cvtColor(ok[1], cv2.COLOR_BGR2RGB))
        assert count == len(frames) == len(m.frame_indices) and fps == pytest.approx(m.rate, rel=1e-3)
        meta = VideoMetadata(total_num_frames=count, fps=fps, duration=count / fps, frames_indices=list(range(count)))
        out = processor(text=["<|vision_start|><|video_pad|><|vision_end|>p"], videos=[np.stack(frames)],
                        video_metadata=[meta], do_sample_frames=False, return_tensors="pt")
        assert out["second_per_grid_ts"].tolist() == pytest.approx([want], rel=1e-3)


def test_frames_sent_as_images_say_when_each_was_taken(clip_files):
    m = read_clip(clip_files["b10s"], 2.0, 4, 10**6)
    parts = make(frames_as="images").content(Request("Describe.", "video", m))
    texts = [p["text"] for p in parts if p["type"] == "text"]
    assert texts == [f"Frame at {t:.1f} s:" for t in m.times_s] + ["Describe."]
    assert [p["type"] for p in parts[:4]] == ["text", "image_url", "text", "image_url"]
    single = make(frames_as="images").content(Request("Describe.", "images", m.subset([0])))
    assert [p["type"] for p in single] == ["image_url", "text"]


def test_mp4_payload_is_exact_at_a_fractional_rate():
    frames = np.random.default_rng(0).integers(0, 255, (4, 48, 64, 3), np.uint8)
    data = base64.b64decode(mp4_b64(frames, 0.4))
    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(data)
        f.flush()
        cap = cv2.VideoCapture(f.name)
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(0.4) and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
