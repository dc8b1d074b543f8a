"""Model-stage throughput beside the decode rate on the same clips: is decode the bottleneck?

    python bench/model_stages.py [FOLDER] [--profile tiny|cpu|gpu] [--random-weights] [--sources N]
                                 [--sample-fps F] [--max-frames N] [--threads N] [--no-ocr]

FOLDER: a folder of videos, of any sizes (its files with a video extension, curation/media/inputs.py;
default: synthetic 640x360 pans made here), e.g. /usr/share/doc/opencv-doc/examples/data
(Debian's opencv-doc: 320x240 to 768x576). The frame supply is the real
analysis pass (ProbeSources + SplitAndScore with model frames on: one decode per source,
cuts, motion, tags, and the clip's RGB frames at 2 fps, short side 336, at most 16), timed as
"decode"; then, on the clips it produced,

* embedding stage: frames/s of one CLIP image forward per frame (ScoreWithClip.encode, the
  profile's architecture and precision; forwards of `frames_per_forward` frames of any sizes),
  on every supplied frame;
* the stage's need: the frames it scores at the profile's sampling (`sample_fps`,
  `max_frames` of the supplied ones), per second of decode;
* end to end: clips/s of analysis + ScoreWithClip + ScoreText (OCR), as the stream runs them.

It prints `embed/decode frame-rate ratio:` (above 1: the model consumes frames faster than
the analysis pass supplies them, so decode bounds the stage), `embed/need ratio at the
sampling:` (the same against the frames the stage actually scores) and
`end-to-end/decode clips ratio:`.
`--random-weights` builds the profile's architecture at random weights (no download): the
speed of a ViT-L/14 does not depend on its weights. On a GPU machine:

    python bench/model_stages.py --profile gpu --random-weights --sources 64
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.corpora import synthetic  # noqa: E402
from curation.analysis.analyze import SplitAndScore  # noqa: E402
from curation.core.config import load_config  # noqa: E402
from curation.core.frames import FRAMES_SHAPE, FRAMES_T, unpack_frames  # noqa: E402
from curation.media.inputs import VIDEO_EXTS  # noqa: E402
from curation.media.probe import ProbeSources  # noqa: E402
from curation.models.score_clip import ScoreWithClip, pick_frames  # noqa: E402
from curation.models.score_text import ScoreText  # noqa: E402
from flows.run_local import apply_clip_stage, run_local  # noqa: E402


def make_inputs(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"pan{i}.mp4"
        if not p.exists():
            synthetic.write_video(p, synthetic.moving(250, (640, 360), speed=(2.0 + i % 3, 0.5), seed=i), 25.0)
        out.append(p)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?")
    p.add_argument("--profile", default="tiny", choices=["tiny", "cpu", "gpu"])
    p.add_argument("--random-weights", action="store_true", help="the profile's architecture at random weights")
    p.add_argument("--sources", type=int, default=8, help="at most this many videos of FOLDER")
    p.add_argument("--no-ocr", action="store_true")
    p.add_argument("--sample-fps", type=float, help="models.sample_fps (default: the profile's)")
    p.add_argument("--max-frames", type=int, help="models.max_frames (default: the profile's)")
    p.add_argument("--threads", type=int, help="torch threads of the model stages (default: torch's)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    cfg = load_config(profile=args.profile)
    models = cfg.models
    if args.random_weights and models.clip != "tiny":
        models = dataclasses.replace(models, clip_pretrained="random", aesthetic_head="tiny")
    for field in ("sample_fps", "max_frames"):
        if getattr(args, field) is not None:
            models = dataclasses.replace(models, **{field: getattr(args, field)})
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.folder) if args.folder else Path(tempfile.gettempdir()) / "videomill-bench-model"
    videos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTS) if args.folder else make_inputs(folder, 4)
    sources = pa.table({"source": [str(v) for v in videos[: args.sources]]})
    analysis = [ProbeSources(cfg), SplitAndScore(cfg, frames=True)]

    # 1. decode: the analysis pass that supplies the model frames (one decode per source).
    run_local(analysis, sources.slice(0, 1))  # warm-up (imports, codec init)
    t0 = time.perf_counter()
    framed = run_local(analysis, sources)
    t_decode = time.perf_counter() - t0
    framed = framed.filter(pa.compute.is_valid(framed.column("frames")))
    table = framed
    n_frames = sum(s[0] for s in framed.column(FRAMES_SHAPE).to_pylist() if s)
    n_picked = sum(len(pick_frames(t, models.sample_fps, models.max_frames)) for t in framed.column(FRAMES_T).to_pylist())
    sizes = sorted({tuple(s[1:3]) for s in framed.column(FRAMES_SHAPE).to_pylist() if s})

    clip = ScoreWithClip(models)
    t0 = time.perf_counter()
    clip.setup()
    t_setup = time.perf_counter() - t0
    ocr = None if args.no_ocr else ScoreText(models)
    if ocr:
        ocr.setup()

    # 2. the embedding stage alone: every decoded frame through the image tower (one warm-up
    # batch). The sources' frames differ in size: a list, as the stage's own batches are.
    frames = [f for i in range(framed.num_rows) for f in unpack_frames(framed, i)[0]]
    clip.encode(frames[: models.frames_per_forward])
    t0 = time.perf_counter()
    clip.encode(frames)
    if clip.device.type == "cuda":
        torch.cuda.synchronize()
    t_embed = time.perf_counter() - t0

    # 3. end to end on the same clips: analysis + CLIP stage (its own frame picks) + OCR.
    t0 = time.perf_counter()
    out = run_local(analysis, sources)
    for i in range(0, out.num_rows, models.clips_per_batch):
        part = apply_clip_stage(clip, out.slice(i, models.clips_per_batch))
        if ocr:
            apply_clip_stage(ocr, part)
    t_e2e = time.perf_counter() - t0

    dev = clip.device.type
    name = models.clip + ("" if models.clip == "tiny" else f" ({models.clip_pretrained})")
    if dev == "cuda":
        dev = f"cuda: {torch.cuda.get_device_name(0)}"
    size = "x".join(map(str, clip.size)) if isinstance(clip.size, (tuple, list)) else clip.size
    print(f"clips: {table.num_rows} from {sources.num_rows} videos; model frames supplied by the analysis pass: {n_frames} (HxW: {', '.join(f'{h}x{w}' for h, w in sizes)})")
    print(f"model: {name} on {dev} ({clip.dtype}, torch threads {torch.get_num_threads()}); setup {t_setup:.1f} s; frames_per_forward {models.frames_per_forward}")
    print(f"decode (analysis pass): {n_frames / t_decode:.1f} model frames/s, {table.num_rows / t_decode:.2f} clips/s")
    print(f"embedding stage: {len(frames) / t_embed:.1f} frames/s ({len(frames)} frames to {size} px)")
    print(f"stage need at sample_fps {models.sample_fps}, max_frames {models.max_frames}: {n_picked} frames, {n_picked / t_decode:.1f} frames/s at decode pace")
    print(f"end to end (decode + CLIP{'' if args.no_ocr else ' + OCR'}): {table.num_rows / t_e2e:.2f} clips/s")
    print(f"embed/decode frame-rate ratio: {(len(frames) / t_embed) / (n_frames / t_decode):.2f}")
    print(f"embed/need ratio at the sampling: {(len(frames) / t_embed) / (n_picked / t_decode):.2f}")
    print(f"end-to-end/decode clips ratio: {t_decode / t_e2e:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
