"""Where SplitAndScore spends its time beyond decode, per clip, part by part.

    python bench/chain_breakdown.py VIDEO [VIDEO ...] [--profile cpu|tiny] [--repeat R]

Companion to bench/cpu_stages.py (which says *whether* the chain is decode-bound): each part
of the current code runs on its own over one clip, best of --repeat, wall and CPU seconds
(all threads). The decode-side parts are differences between passes of `iter_frames` that
ask for more each time; the scorer parts run on the samples one full pass collected.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

import av  # noqa: E402
import cv2  # noqa: E402
import pyarrow as pa  # noqa: E402

from curation.analysis.analyze import SplitAndScore  # noqa: E402
from curation.core.config import PROFILES, load_config  # noqa: E402
from curation.media.decode import iter_frames  # noqa: E402
from curation.media.probe import ProbeSources, probe_source  # noqa: E402
from curation.analysis.score_motion import MotionScorer  # noqa: E402
from curation.analysis.split_scenes import ShotDetector  # noqa: E402
from curation.analysis.tag_negatives import measure_frame  # noqa: E402

_NEVER = 1e-6  # a sample rate so low that only the first frame is sampled


def load() -> str:
    return "load avg " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def best(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(wall, cpu) seconds of the fastest of `repeat` runs."""
    runs = []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0, time.process_time() - c0))
    return min(runs)


def breakdown(uri: str, profile: str, repeat: int) -> None:
    cfg = load_config(profile=profile, overrides={"decode": {"threads": os.cpu_count() or 1}})  # all cores, as before
    stage = SplitAndScore(cfg, frames=False)  # a run without model stages samples no model frames
    stage.setup()  # cv2.setNumThreads(1), as in a run
    probed = ProbeSources(cfg)(pa.table({"source": [uri]}))

    def frames(motion_fps: float, tags_fps: float) -> list:
        return list(
            iter_frames(
                uri,
                thumb_width=cfg.decode.cut_thumb_width,
                work_short_side=cfg.decode.work_short_side,
                motion_fps=motion_fps,
                tags_short_side=cfg.tags.short_side,
                tags_fps=tags_fps,
                threads=cfg.decode.threads,
            )
        )

    def raw() -> None:
        with av.open(uri) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            for _ in c.decode(s):
                pass

    full = frames(cfg.motion.sample_fps, cfg.tags.sample_fps)
    grays = [(f.t, f.gray) for f in full if f.gray is not None]
    rgbs = [f.rgb for f in full if f.rgb is not None]
    motion = MotionScorer(cfg.motion)

    def cuts() -> None:
        d = ShotDetector(cfg.split)
        for f in full:
            d.push(f.index, f.thumb)
        d.finish()

    # Scored per window as the stage does (windows of at most max_clip_s).
    span = cfg.split.max_clip_s
    windows: dict[int, list] = {}
    for t, g in grays:
        windows.setdefault(int((t - grays[0][0]) // span), []).append((t, g))

    def score_motion() -> None:
        for w in windows.values():
            motion.score([g for _, g in w], [t for t, _ in w])

    m = {
        "raw decode (PyAV AUTO, no conversion)": best(raw, repeat),
        "iter_frames, thumbnails only": best(lambda: frames(_NEVER, _NEVER), repeat),
        "iter_frames + motion greys": best(lambda: frames(cfg.motion.sample_fps, _NEVER), repeat),
        "iter_frames + motion greys + tag RGB": best(lambda: frames(cfg.motion.sample_fps, cfg.tags.sample_fps), repeat),
        "probe_source": best(lambda: probe_source(uri), repeat),
        "cut detector": best(cuts, repeat),
        "motion scores": best(score_motion, repeat),
        "tag measures (measure_frame)": best(lambda: [measure_frame(x) for x in rgbs], repeat),
        "SplitAndScore, whole stage": best(lambda: stage(probed), repeat),
    }
    raw_w, raw_c = m["raw decode (PyAV AUTO, no conversion)"]
    steps = list(m)
    parts = {
        "thumbnails + per-frame loop": (m[steps[1]], m[steps[0]]),
        f"{len(grays)} grey reformats": (m[steps[2]], m[steps[1]]),
        f"{len(rgbs)} RGB reformats": (m[steps[3]], m[steps[2]]),
    }
    n = len(full)
    with av.open(uri) as c:
        cc = c.streams.video[0].codec_context
        size = f"{cc.width}x{cc.height}"
    print(f"{Path(uri).name}: {size}, {n} frames, {len(grays)} motion samples {grays[0][1].shape[::-1]}, "
          f"{len(rgbs)} tag samples {rgbs[0].shape[1::-1]}; profile {profile}; best of {repeat}")
    print(f"  {'part':<44} {'wall ms':>8} {'cpu ms':>8} {'% of decode':>11}")

    def row(name: str, w: float, c: float) -> None:
        print(f"  {name:<44} {w * 1e3:8.1f} {c * 1e3:8.1f} {100 * w / raw_w:10.0f}%")

    row("raw decode (PyAV AUTO, no conversion)", raw_w, raw_c)
    for name, ((w1, c1), (w0, c0)) in parts.items():
        row("  + " + name, w1 - w0, c1 - c0)
    extra_w = extra_c = 0.0
    for name in ("probe_source", "cut detector", "motion scores", "tag measures (measure_frame)"):
        w, c = m[name]
        extra_w, extra_c = extra_w + w, extra_c + c
        row("  + " + name, w, c)
    dec_w, dec_c = m[steps[3]]
    row("sum: full iter_frames + scorers + probe", dec_w + extra_w, dec_c + extra_c)
    w, c = m["SplitAndScore, whole stage"]
    row("SplitAndScore, whole stage (no probe)", w, c)
    pw, _ = m["probe_source"]
    print(f"  chain/decode ratio for this clip: {raw_w / (w + pw):.2f} (wall), {raw_c / (c + m['probe_source'][1]):.2f} (cpu)")
    print()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("videos", nargs="+")
    ap.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    SplitAndScore(load_config(profile=args.profile)).setup()
    print(f"cv2.getNumThreads() after SplitAndScore.setup(): {cv2.getNumThreads()}; {load()}")
    for uri in args.videos:
        breakdown(uri, args.profile, args.repeat)
    print(load())
    return 0


if __name__ == "__main__":
    sys.exit(main())
