"""Captioning throughput against the engine alone, and beside the frame preparation it needs.

    python bench/captions.py [--profile tiny|cpu|gpu] [--backend transformers|openai] [--mode video|frames+summary]
                               [--clips N] [--base-url URL] [--arch tiny|qwen2.5-vl-7b] [--device cpu|cuda]
                               [--runner local|ray] [--actors A] [--judge]

On N generated clips (2 s, 25 fps, 480x270 H.264, what extraction writes at training size) it times:

  (a) frames from the clip file: PyAV decode of OUT/clips/<id>.mp4 at the caption policy
      (~2 fps, capped count and pixels): what `frame_source = "clip"` costs per clip;
  (b) frames from the pipeline: the analysis pass's frames (curation/core/frames.py, 2 fps at 336 px
      short side) packed into Arrow and resampled by the caption stage: what `"pipeline"` costs
      here (the decode itself is paid once by the analysis pass), and the bytes a row carries;
  (c) the engine alone: the same backend generating the caption step's first requests for the
      same clips (the dense prompt on each clip's frames; with --judge, the judge's answer
      first), in the same batches, frames decoded beforehand, nothing around it;
  (d) the caption step: the caption stream of a run (flows/captions.py without extraction:
      frame preparation -> the caption stage's actor(s) -> the part writer; gates, retries,
      budget) on the same clips, with `--runner ray` (an actor pool of `--actors`, as a run) or
      `local` (this process: frame preparation and generation take turns).

`caption/engine ratio` = (d) generated tokens/s per actor / (c) generated tokens/s: what each
caption actor keeps of what its engine does alone (goal >= 0.9; tokens, not clips, because the
step generates more per clip than the engine's one pass when gates retry). (d) is timed in its
steady state, from the caption stage's first batch to its last (its work and its waits between
batches); the start-up before (Ray, the actors, the model load, the first frames) and the drain
after are a cost per run, printed apart. `model loads per run` counts the caption stage's setups
in (d) (goal: one per actor). The idle time is the caption stage's wait between batches (on a
GPU: the GPU waiting for frames).

`--arch qwen2.5-vl-7b` swaps the profile's model for a random-initialised Qwen2.5-VL-7B-shaped
model built in memory (the gpu profile's architecture; no download) and forces every caption
to `max_new_tokens` tokens, so tokens/s is the architecture's, not the weights'. GPU figures
need a GPU: `python bench/captions.py --profile gpu --arch qwen2.5-vl-7b --device cuda --clips 64`.
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

import pyarrow as pa  # noqa: E402

from captioning import judge as J  # noqa: E402
from captioning.backends import Request, Sampling  # noqa: E402
from captioning.caption_clips import TODO, CaptionClips  # noqa: E402
from captioning.frames import pick, read_clip, read_windows  # noqa: E402
from captioning.prepare import PrepareFrames  # noqa: E402
from captioning.store import WriteParts, counts  # noqa: E402
from curation.corpora import synthetic  # noqa: E402
from curation.core.config import load_config  # noqa: E402
from curation.core.frames import frame_fields, pack_frames, unpack_frames  # noqa: E402

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


class BenchCaptionClips(CaptionClips):
    """The caption stage, with `--arch`'s model swapped in after the real setup (the tiny
    build's processor and tokenizer), and its load time kept."""

    def __init__(self, *a, arch: str | None = None, device: str = "cpu", **kw):
        super().__init__(*a, **kw)
        self.arch, self.device = arch, device

    def setup(self) -> None:
        t0 = time.perf_counter()
        super().setup()
        if self.arch:
            cap, proc = self.cfg, self.backend.processor
            for p in (proc.image_processor, proc.video_processor):  # the real model's pixel budget per frame
                p.max_pixels, p.size = cap.max_pixels, {"shortest_edge": 56 * 56, "longest_edge": cap.max_pixels}
            self.backend.model = self.backend.text_model = seven_b_model(self.device)
            gen = self.backend.model.generation_config
            gen.min_new_tokens = cap.max_new_tokens  # random weights: force full-length captions
            gen.eos_token_id, gen.pad_token_id = proc.tokenizer.eos_token_id, proc.tokenizer.pad_token_id
        self.load_s = time.perf_counter() - t0


def engine_requests(stage: CaptionClips, root: Path, table: pa.Table) -> list[Request]:
    """The step's first generation requests for each clip, frames decoded as the step decodes
    them: with the judge, its answer request; then the dense caption request."""
    cap, out = stage.cfg, []
    win = cap.window_frames if cap.policy == "windows" else None
    qs = {q.name: q.question for q in stage.judge.questions} if stage.judge else None
    for p in table.column("clip_path").to_pylist():
        for m in read_windows(root / p, cap.fps, cap.max_frames, cap.max_pixels, win):
            kind = "video" if len(m.frames) > 1 else "images"
            if qs:
                out.append(Request(J.prompt(qs), kind, m, answer=tuple(qs), logprobs=stage.judge.logprobs))
            out.append(Request(stage.prompts.dense, kind, m))
    return out


def run_engine(stage: CaptionClips, reqs: list[Request]) -> tuple[float, int]:
    """(seconds, generated tokens) of the backend alone on `reqs`, batch by batch, as the stage
    batches them (judge answers greedy and unpenalised, captions at the caption sampling)."""
    cap, b = stage.cfg, stage.cfg.batch_size
    judge_s = Sampling(max_new_tokens=stage.judge.max_new_tokens if stage.judge else 1, temperature=0.0, top_p=cap.top_p,
                       repetition_penalty=1.0, seed=cap.seed)
    groups = [[r for r in reqs if r.answer], [r for r in reqs if not r.answer]]
    stage.backend.generate(groups[1][:1], stage._sampling(False))  # warm-up: lazy init, kernels
    tokens, t0 = 0, time.perf_counter()
    for group, s in zip(groups, (judge_s, stage._sampling(False))):
        for i in range(0, len(group), b):
            tokens += sum(r.tokens for r in stage.backend.generate(group[i : i + b], s))
    return time.perf_counter() - t0, tokens


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
    ap.add_argument("--runner", default="ray", choices=["local", "ray"], help="the caption step on Ray (a run's) or in this process")
    ap.add_argument("--actors", type=int, default=1, help="--runner ray: caption actors")
    ap.add_argument("--judge", action="store_true", help="the VLM judge on (its answer before each caption)")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    run = load_config(profile=args.profile, overrides={"judge": {"enabled": args.judge}})
    cap, judge = run.caption, run.judge
    cap = dataclasses.replace(cap, mode=args.mode, backend=args.backend, actors=args.actors if args.runner == "ray" else None,
                              num_gpus=1.0 if args.device.startswith("cuda") else 0.0)
    if args.base_url:
        cap = dataclasses.replace(cap, openai=dataclasses.replace(cap.openai, base_url=args.base_url,
                                                                  served_model=args.served_model))
    if args.arch:  # the processor and tokenizer of the tiny build; the model replaced in BenchCaptionClips.setup
        cap = dataclasses.replace(cap, model="tiny", budget_tokenizer="tiny")
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"device {args.device}; profile {args.profile}, backend {args.backend}, mode {args.mode}, "
          f"model {args.arch or cap.model}, judge {'on' if args.judge else 'off'}, runner {args.runner}")

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

        def make_stage() -> BenchCaptionClips:
            return BenchCaptionClips(cap, str(root), judge, arch=args.arch, device=args.device)

        engine = make_stage()
        engine.setup()
        t_engine, engine_tokens = run_engine(engine, engine_requests(engine, root, table))
        load_s = engine.load_s
        del engine
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        print(f"engine alone: {args.clips} clips in {t_engine:.2f}s -> {args.clips / t_engine:.3f} clips/s, "
              f"{engine_tokens / t_engine:.1f} generated tokens/s ({engine_tokens} tokens; model load {load_s:.1f}s, not timed)")

        rows = table.append_column(TODO, pa.array([True] * table.num_rows))
        stages = [PrepareFrames(cap, str(root)), make_stage()]
        setups: dict = {}
        if args.runner == "ray":
            import ray

            from flows.run_ray import stream_table as stream

            ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
            ray.data.DataContext.get_current().enable_progress_bars = False
        else:
            from flows.run_local import stream_table_local as stream
        t0 = time.perf_counter()
        results = list(stream(stages, rows, WriteParts(str(root), cap, judge), cap.block_size, setups=setups))
        t_step = time.perf_counter() - t0
        c = counts(results, 0, setups)
        errors = sum(1 for t in results for e in t.column("error").to_pylist() if e)
        got = pa.concat_tables(results)
        tokens = c["generated_tokens"]
        # Steady state: from the caption stage's first batch to its last, per actor (its busy
        # time and its waits between batches); the rest of the wall is start-up (actors, model
        # load, the first frames) and drain, a cost per run, printed apart.
        actors = args.actors if args.runner == "ray" else 1
        steady = (c["busy_s"] + c["idle_s"]) / actors
        print(f"caption step: {got.num_rows} clips, {tokens} tokens ({c['captioned']} captioned, {c['judged']} judged, "
              f"{errors} errors) in {steady:.2f}s of steady state -> {got.num_rows / steady:.3f} clips/s, "
              f"{tokens / steady:.1f} generated tokens/s; wall {t_step:.2f}s ({t_step - steady:.2f}s start-up, model load, drain)")
        print(f"caption stage idle between batches: {c['idle_s']:.2f}s of {c['busy_s'] + c['idle_s']:.2f}s "
              f"({c['idle_s'] / max(c['busy_s'] + c['idle_s'], 1e-9):.1%}; the GPU waiting for frames, on a GPU)")
    print(f"caption/frame-prep ratio: {(got.num_rows / steady) / (args.clips / t_clip):.4f}")
    print(f"caption/engine ratio: {(tokens / steady / actors) / (engine_tokens / t_engine):.3f}")
    print(f"model loads per run: {c['model_loads']} (actors: {args.actors if args.runner == 'ray' else 1})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
