"""What the caption models receive, checked against the transformers processors themselves.

The reference for every clip is transformers' own video loader (`load_video`, PyAV backend)
reading the same clip file at the frame indices our sampling chose, handed with its full
`VideoMetadata` to the real processor class. Our path (captioning/frames.py `read_clip` ->
captioning/backends.py `TransformersBackend.inputs`) must give the same tensors. transformers 5
takes a video's timing only from that metadata (the `fps=` keyword is ignored for frames given
as arrays, and missing metadata falls back to 24 fps): when the library changes that contract
again, these tests are what fails.

THE TINY MODELS ARE UNTRAINED (random weights, real classes): only inputs are checked here.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from captioning.backends import Request, Sampling, TransformersBackend
from captioning.frames import read_clip, sample_times
from tests.conformance.conftest import CLIPS

QWEN_FPS, QWEN_MAX_FRAMES = 2.0, 4  # the batch of the issue: a 2 s clip at 2 fps, a 10 s clip at 0.4 fps


def backend(path: str) -> TransformersBackend:
    b = TransformersBackend(path, None, system="", batch_size=8, device="cpu", dtype="fp32")
    b.setup()
    return b


def reference(processor, path, indices: list[int], prompt: str = "Describe this video."):
    """The library's own inputs: transformers' PyAV loader at `indices`, full metadata."""
    from transformers.video_utils import load_video

    video, meta = load_video(str(path), backend="pyav", sample_indices_fn=lambda metadata, **kw: np.asarray(indices))
    conv = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    return video, meta, text


def test_sampled_timing_is_what_the_library_reads_from_the_clip_file(clip_files):
    from transformers.video_utils import load_video

    for name, (seconds, fps) in CLIPS.items():
        got = read_clip(clip_files[name], QWEN_FPS, QWEN_MAX_FRAMES, 10**6)
        frames, meta = load_video(str(clip_files[name]), backend="pyav",
                                  sample_indices_fn=lambda metadata, **kw: np.asarray(got.frame_indices))
        assert (got.source_fps, got.total_frames) == (meta.fps, meta.total_num_frames) == (fps, round(seconds * fps))
        assert got.duration_s == pytest.approx(meta.duration)
        assert np.array_equal(got.frames, frames)  # the same pixels at the same indices
        # the indices are the frames showing at the policy's sample times
        want = sample_times(seconds, QWEN_FPS, QWEN_MAX_FRAMES)
        assert np.all(np.abs(got.times_s - want) <= 1.0 / fps + 1e-9)
        assert got.rate == pytest.approx(len(want) / seconds)


def test_qwen25vl_gets_each_clips_own_timing_in_one_batch(clip_files, tiny_qwen):
    b = backend(tiny_qwen)
    media = [read_clip(clip_files[k], QWEN_FPS, QWEN_MAX_FRAMES, 10**6) for k in ("a2s", "b10s")]
    assert [m.rate for m in media] == pytest.approx([2.0, 0.4])
    ours = b.inputs([Request("Describe this video.", "video", m) for m in media])
    patch = b.processor.video_processor.temporal_patch_size
    # second_per_grid_ts = temporal_patch_size / the clip's sampling rate: 1.0 s and 5.0 s (not 2/24 for both)
    assert ours["second_per_grid_ts"].tolist() == pytest.approx([patch / 2.0, patch / 0.4])
    # ... and exactly what the processor makes from the library's own loader with full metadata
    refs = [reference(b.processor, clip_files[k], list(m.frame_indices)) for k, m in zip(("a2s", "b10s"), media)]
    want = b.processor(text=[r[2] for r in refs], videos=[r[0] for r in refs], video_metadata=[r[1] for r in refs],
                       do_sample_frames=False, padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
        assert torch.equal(ours[key], want[key]), key


def temporal_positions(model, inputs) -> list[list[int]]:
    """Distinct temporal rope positions of each row's video tokens (Qwen2.5-VL get_rope_index)."""
    pos, _ = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                        video_grid_thw=inputs["video_grid_thw"],
                                        second_per_grid_ts=inputs["second_per_grid_ts"], attention_mask=inputs["attention_mask"])
    video = inputs["mm_token_type_ids"] == 2
    return [sorted(set(pos[0, i][video[i]].tolist())) for i in range(len(video))]


def test_a_16_frame_clip_at_2fps_gets_8_temporal_positions_one_second_apart(clip_files, tiny_qwen):
    b = backend(tiny_qwen)
    m = read_clip(clip_files["c8s"], 2.0, 16, 10**6)  # 8 s at 2 fps: 16 frames, 8 temporal patches
    assert len(m.frame_indices) == 16 and m.rate == pytest.approx(2.0)
    inputs = b.inputs([Request("Describe this video.", "video", m)])
    tps = b.model.config.vision_config.tokens_per_second
    assert tps == 2  # Qwen2.5-VL-7B's value
    (t,) = temporal_positions(b.model, inputs)
    assert len(t) == 8 and np.diff(t).tolist() == [tps * 1.0] * 7  # one temporal patch = 1 s = 2 positions
    # Sensitivity: the same frames without metadata (what transformers 5 does with `fps=`) collapse time.
    blind = b.processor.apply_chat_template(
        [[{"role": "user", "content": [{"type": "video", "video": m.frames}, {"type": "text", "text": "Describe."}]}]],
        add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"do_sample_frames": False, "fps": 2.0})
    assert len(temporal_positions(b.model, blind)[0]) == 2


def test_the_caption_stage_hands_each_clip_its_timing_at_the_model_call(clip_files, tiny_qwen, monkeypatch):
    """A batch of clips of different lengths through the CaptionClips stage: a hook on the
    model's generate sees each clip's own second_per_grid_ts."""
    import pyarrow as pa

    from captioning.caption_clips import CaptionClips
    from curation.core.config import load_config

    cfg = dataclasses.replace(load_config(profile="tiny").caption, fps=QWEN_FPS, max_frames=QWEN_MAX_FRAMES,
                              frame_source="clip", max_new_tokens=4)
    root = clip_files["a2s"].parent
    stage = CaptionClips(cfg, str(root))
    stage.setup()
    seen, generate = [], stage.backend.model.generate

    def hook(**kw):
        seen.append((kw["second_per_grid_ts"].tolist(), kw["video_grid_thw"][:, 0].tolist()))
        return generate(**kw)

    monkeypatch.setattr(stage.backend.model, "generate", hook)
    names = ["a2s", "b10s", "d5s"]
    out = stage(pa.table({"clip_id": names, "clip_path": [f"{n}.mp4" for n in names], "media_type": ["video"] * 3}))
    assert out.num_rows == 3
    # first call: the draft of the three clips, batched; rates 2.0, 0.4, 0.8 frames/s -> 1, 5, 2.5 s per patch
    assert seen[0][0] == pytest.approx([1.0, 5.0, 2.5]) and seen[0][1] == [2, 2, 2]


def test_smolvlm_default_captioner_loads_offline_and_its_prompt_has_the_clips_real_timing(clip_files, tiny_smolvlm):
    from transformers import SmolVLMProcessor

    b = backend(tiny_smolvlm)  # AutoProcessor + AutoModelForImageTextToText, as for the real SmolVLM2
    assert isinstance(b.processor, SmolVLMProcessor)  # its module imports num2words: installed by `make env`
    m = read_clip(clip_files["d5s"], 2.0, 16, 10**6)  # 5 s at 25 fps, 10 frames
    ours = b.inputs([Request("Describe this video.", "video", m)])
    text = b.processor.tokenizer.decode(ours["input_ids"][0])
    assert "following series of ten frames from a 0:00:05 [H:MM:SS] video" in text
    stamps = [f"Frame from 00:{int(t):02d}:" for t in m.times_s]  # SmolVLM writes mm:ss of each frame
    lines = [line for line in text.split("\n") if line.startswith("Frame from")]
    assert [line[: len(stamps[0])] for line in lines] == stamps and stamps[-1] == "Frame from 00:04:"
    video, meta, prompt = reference(b.processor, clip_files["d5s"], list(m.frame_indices))
    want = b.processor(text=[prompt], videos=[video], video_metadata=[meta], do_sample_frames=False, padding=True,
                       return_tensors="pt")
    assert torch.equal(ours["input_ids"], want["input_ids"]) and torch.equal(ours["pixel_values"], want["pixel_values"])
    reply = b.generate([Request("Describe this video.", "video", m)], Sampling(4, 0.0, 1.0, 1.0, 0))
    assert reply[0].error is None and reply[0].tokens > 0
