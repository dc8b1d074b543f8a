"""Captioning throughput beside the frame preparation it needs, on the same clips.

    python bench/captioning.py [--profile tiny|cpu|gpu] [--backend transformers|openai] [--mode video|frames+summary]
                               [--clips N] [--base-url URL] [--arch tiny|qwen2.5-vl-7b] [--device cpu|cuda]

On N generated clips (2 s, 25 fps, 480x270 H.264, what extraction writes at training size) it times:

  (a) frames from the clip file: PyAV decode of OUT/clips/<id>.mp4 at the caption policy
      (~2 fps, capped count and pixels): what `frame_source = "clip"` costs per clip;
  (b) frames from the pipeline: the analysis pass's frames (curation/frames.py, 2 fps at 336 px
      short side) packed into Arrow and resampled by the caption stage: what `"pipeline"` costs
      here (the decode itself is paid once by the analysis pass), and the bytes a row carries;
  (c) captioning: the CaptionClips stage (gates, budget, retries included) with the chosen
      profile and backend: clips/s and generated tokens/s.

The baseline is (a); the last line is `caption/frame-prep ratio` = (c) clips/s / (a) clips/s:
far below 1 means the model, not frame preparation, bounds captioning.

`--arch qwen2.5-vl-7b` swaps the profile's model for a random-initialised Qwen2.5-VL-7B-shaped
model built in memory (the gpu profile's architecture; no download) and forces every caption
to `max_new_tokens` tokens, so tokens/s is the architecture's, not the weights'. GPU figures
need a GPU: `python bench/captioning.py --profile gpu --arch qwen2.5-vl-7b --device cuda --clips 64`.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import tempfile
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from captioning.caption_clips import GEN_TOKENS, CaptionClips  # noqa: E402
from captioning.frames import pick, read_clip  # noqa: E402
from curation import synthetic  # noqa: E402
from curation.config import load_config  # noqa: E402
from curation.frames import frame_fields, pack_frames, unpack_frames  # noqa: E402

FPS, SIZE, SECONDS = 25.0, (480, 270), 2.0


def make_clips(root: Path, n: int) -> pa.Table:
    (root / "clips").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        frames = synthetic.moving(int(FPS * SECONDS), SIZE, (2.0 + i % 3, 1.0), seed=i)
        synthetic.write_video(root / "clips" / f"c{i:04d}.mp4", frames, FPS)
    return pa.table({"clip_id": [f"c{i:04d}" for i in range(n)], "clip_path": [f"clips/c{i:04d}.mp4" for i in range(n)],
                     "media_type": ["video"] * n})


def pipeline_table(root: Path, table: pa.Table, fps: float = 2.0, short_side: int = 336) -> pa.Table:
    """The clips as the analysis pass hands them over: frames at 2 fps, 336 px short side."""
    rows = []
    for cid, path in zip(table.column("clip_id").to_pylist(), table.column("clip_path").to_pylist()):
        m = read_clip(root / path, fps, 16, short_side * short_side * 16 // 9)
        rows.append({"clip_id": cid, "start_s": 0.0, "fps": m.source_fps, "num_frames": m.total_frames,
                     **pack_frames(m.frames, m.times_s)})
    timing = [pa.field("start_s", pa.float64()), pa.field("fps", pa.float64()), pa.field("num_frames", pa.int64())]
    return pa.Table.from_pylist(rows, schema=pa.schema([pa.field("clip_id", pa.string()), *timing, *frame_fields()]))


def seven_b_model(device: str):
    """A random-initialised model with Qwen2.5-VL-7B-Instruct's shapes (its config.json)."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           fullatt_block_indexes=[7, 15, 23, 31], window_size=112, tokens_per_second=2),
    )
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="tiny", choices=["tiny", "cpu", "gpu"])
    ap.add_argument("--backend", default="transformers", choices=["transformers", "openai"])
    ap.add_argument("--mode", default="video", choices=["video", "frames+summary"])
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--base-url", default=None, help="openai backend: the server (e.g. http://127.0.0.1:8000/v1)")
    ap.add_argument("--served-model", default=None)
    ap.add_argument("--arch", default=None, choices=["qwen2.5-vl-7b"], help="random-initialised model of this shape")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cap = load_config(profile=args.profile).caption
    cap = dataclasses.replace(cap, mode=args.mode, backend=args.backend,
                              num_gpus=1.0 if args.device.startswith("cuda") else 0.0)
    if args.base_url:
        cap = dataclasses.replace(cap, openai=dataclasses.replace(cap.openai, base_url=args.base_url,
                                                                  served_model=args.served_model))
    if args.arch:  # the processor and tokenizer of the tiny build; the model replaced below
        cap = dataclasses.replace(cap, model="tiny", budget_tokenizer="tiny")
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"device {args.device}; profile {args.profile}, backend {args.backend}, mode {args.mode}, "
          f"model {args.arch or cap.model}")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        table = make_clips(root, args.clips)

        t0 = time.perf_counter()
        for p in table.column("clip_path").to_pylist():
            read_clip(root / p, cap.fps, cap.max_frames, cap.max_pixels)
        t_clip = time.perf_counter() - t0
        print(f"frames from clip file: {args.clips} clips in {t_clip:.2f}s -> {args.clips / t_clip:.1f} clips/s")

        piped = pipeline_table(root, table)
        t0 = time.perf_counter()
        for i in range(piped.num_rows):
            frames, times = unpack_frames(piped, i)
            pick(frames, times, start_s=0.0, source_fps=piped.column("fps")[i].as_py(),
                 total_frames=piped.column("num_frames")[i].as_py(), fps=cap.fps, max_frames=cap.max_frames,
                 max_pixels=cap.max_pixels)
        t_pipe = time.perf_counter() - t0
        per_clip = piped.column("frames").nbytes / piped.num_rows
        print(f"frames from pipeline (resample only; decode paid by analysis): {args.clips / t_pipe:.1f} clips/s, "
              f"{per_clip / 1e6:.2f} MB of frames carried per clip row")

        stage = CaptionClips(cap, str(root))
        stage.setup()
        if args.arch:
            proc = stage.backend.processor
            for p in (proc.image_processor, proc.video_processor):  # the real model's pixel budget per frame
                p.max_pixels, p.size = cap.max_pixels, {"shortest_edge": 56 * 56, "longest_edge": cap.max_pixels}
            stage.backend.model = stage.backend.text_model = seven_b_model(args.device)
            gen = stage.backend.model.generation_config
            gen.min_new_tokens = cap.max_new_tokens  # random weights: force full-length captions
            gen.eos_token_id, gen.pad_token_id = proc.tokenizer.eos_token_id, proc.tokenizer.pad_token_id
        warm = stage(table.slice(0, 1))  # first call: lazy init, kernels
        t0 = time.perf_counter()
        out = pa.concat_tables([stage(table.slice(i, cap.batch_size)) for i in range(0, table.num_rows, cap.batch_size)])
        t_cap = time.perf_counter() - t0
        tokens = int(np.sum(out.column(GEN_TOKENS).to_numpy()))
        errors = out.num_rows - out.column("caption_error").null_count
        print(f"captioning: {args.clips} clips in {t_cap:.2f}s -> {args.clips / t_cap:.3f} clips/s, "
              f"{tokens / t_cap:.1f} generated tokens/s ({tokens} tokens, {errors} caption errors; warm-up {warm.num_rows} clip)")
    print(f"caption/frame-prep ratio: {(args.clips / t_cap) / (args.clips / t_clip):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
