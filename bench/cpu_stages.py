"""How close the CPU stage chain runs to raw decode speed, and how it compares with the usual motion filter.

    python bench/cpu_stages.py [FOLDER] [--profile cpu|tiny] [--seconds N] [--repeat R]
    python -m bench.cpu_stages ...

On the same clips (FOLDER, or a generated mixed 270p/360p/720p H.264 set) it times:

  (a) raw decode: PyAV, every frame, threaded, no pixel conversion: the floor for any
      pass that looks at every frame;
  (b) decord sequential decode (informational: why curation/media/decode.py uses PyAV);
  (c) the CPU stage chain in this process: ProbeSources then SplitAndScore, the whole
      analysis pass (split, motion, tags, and the model-stage frames the profile samples);
  (d) a Data-Juicer-style motion filter: seek every 0.5 s, Farneback at full size;
  (e) the floor under (c): ProbeSources and the chain's own decode pass (curation/media/decode.py
      `iter_frames`) with the thumbnails every cut detector needs and nothing scored or
      sampled. No chain that looks at every frame runs faster; its ratio per clip says how
      much of (c)'s gap to (a) is analysis and how much is opening, probing and per-frame
      bookkeeping (a 2.3 fps source decodes in 5 ms: there the fixed costs are the gap).

Each clip's time is the best of --repeat runs (--dj-repeat for the slow baseline); the
methods take turns on each clip, so a busy machine slows them alike. CPU seconds (all threads) are printed beside
wall time: on a shared machine they move less than wall time does. The last two lines are
the figures the project states targets for: `chain/decode ratio` (>= 0.85: the chain is
decode-bound) and `speedup vs seek+farneback motion` (>= 10).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

import av  # noqa: E402
import cv2  # noqa: E402
import decord  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from av.video.reformatter import VideoReformatter  # noqa: E402

from curation.corpora import synthetic  # noqa: E402
from curation.analysis.analyze import SplitAndScore, group_sources  # noqa: E402
from curation.core.config import PROFILES, load_config  # noqa: E402
from curation.media.decode import iter_frames  # noqa: E402
from curation.media.inputs import expand_inputs, is_image  # noqa: E402
from curation.media.probe import ProbeSources  # noqa: E402

# SplitAndScore.setup() sets this (parallelism comes from running sources side by side);
# the Data-Juicer baseline gets the same setting so neither side gets more OpenCV threads.
# (cv2.VideoCapture's FFmpeg decoder picks its own thread count either way.)
CV2_THREADS = 1

FPS = 25.0


# ---------------------------------------------------------------------------- corpus

def default_corpus(root: Path, seconds: float) -> list[str]:
    """Mixed sizes, some with hard cuts; libx264 defaults (GOP 250, scene-cut keyframes)."""
    n = int(round(FPS * seconds))
    cuts = [n // 4, n * 5 // 8]  # two cuts: three shots
    specs: list[tuple[str, Callable[[], object]]] = [
        ("a_270p_pan.mp4", lambda: synthetic.moving(n, (480, 270), (3.0, 0.0), seed=11)),
        ("b_270p_cuts.mp4", lambda: synthetic.with_cuts(n, (480, 270), cuts, speed=2.0, seed=12)),
        ("c_360p_pan.mp4", lambda: synthetic.moving(n, (640, 360), (2.0, 1.0), seed=13)),
        ("d_360p_cuts.mp4", lambda: synthetic.with_cuts(n, (640, 360), cuts, speed=3.0, seed=14)),
        ("e_360p_slow.mp4", lambda: synthetic.moving(n, (640, 360), (0.5, 0.0), seed=15)),
        ("f_720p_pan.mp4", lambda: synthetic.moving(n, (1280, 720), (4.0, 0.0), seed=16)),
        ("g_720p_cuts.mp4", lambda: synthetic.with_cuts(n, (1280, 720), cuts, speed=4.0, seed=17)),
    ]
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, frames in specs:
        p = root / name
        if not p.exists():  # --keep reuses a set made earlier
            tmp = p.with_name(p.stem + ".part.mp4")
            synthetic.write_video(tmp, frames(), FPS)
            tmp.rename(p)
        paths.append(str(p.resolve()))
    return paths


# ---------------------------------------------------------------------------- the methods
# Each takes a path and returns the number of frames it decoded (source frames for the chain).

def pyav_decode(uri: str) -> int:
    """(a) Every frame, FFmpeg's own threading, nothing converted."""
    with av.open(uri) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        return sum(1 for _ in c.decode(s))


def pyav_decode_rgb(uri: str) -> int:
    """(a') As (a) plus an RGB ndarray per frame: decord's unit of work (it always converts).

    One VideoReformatter for the whole pass: `frame.to_ndarray(format=...)` builds a fresh
    swscale context (and its thread pool) on every call, which costs more than the conversion.
    """
    rgb = VideoReformatter()
    with av.open(uri) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        n = 0
        for f in c.decode(s):
            rgb.reformat(f, format="rgb24").to_ndarray()
            n += 1
    return n


def decord_decode(uri: str) -> int:
    """(b) decord in order, one frame at a time (it hands back RGB; it cannot skip the conversion)."""
    vr = decord.VideoReader(uri, ctx=decord.cpu(0), num_threads=0)
    n = len(vr)
    for _ in range(n):
        vr.next()
    return n


class Chain:
    """(c) ProbeSources then SplitAndScore in this process, one source per batch (as on Ray)."""

    def __init__(self, profile: str):
        # One source at a time on the whole machine, like (a): FFmpeg gets every core. (In a
        # run, [decode] threads = 0 ties them to the stage's num_cpus, as Ray reserves them.)
        self.cfg = load_config(profile=profile, overrides={"decode": {"threads": os.cpu_count() or 1}})
        self.probe = ProbeSources(self.cfg)
        # The whole analysis pass: the split, motion, tags and the model-stage frames the
        # profile's model stages read (frames=True, what a run with model stages does).
        self.split = SplitAndScore(self.cfg, frames=True)
        self.split.setup()
        self.best: dict[str, dict] = {}  # per source: facts from its fastest run

    def __call__(self, uri: str) -> int:
        t0 = time.perf_counter()
        probed = self.probe(pa.table({"source": [uri]}))
        t1 = time.perf_counter()
        (row,) = group_sources(self.split(probed))
        t2 = time.perf_counter()
        if row["status"] != "ok":
            raise RuntimeError(f"{uri}: chain reported {row['status']}: {row.get('error')}")
        if t2 - t0 < self.best.get(uri, {}).get("total_s", float("inf")):
            self.best[uri] = {"total_s": t2 - t0, "probe_s": t1 - t0, "clips": len(row["clips"]), "shots": row["num_shots"]}
        return int(row["num_frames"])


class Floor:
    """(e) ProbeSources, then the decode pass with thumbnails only: what (c) pays before it
    scores anything (the samplers take the first frame only: their rate is never reached)."""

    def __init__(self, chain: Chain):
        self.cfg, self.probe = chain.cfg, chain.probe

    def __call__(self, uri: str) -> int:
        self.probe(pa.table({"source": [uri]}))
        never = 1e-9  # samples per second: the first frame only
        return sum(1 for _ in iter_frames(uri, thumb_width=self.cfg.decode.cut_thumb_width, work_short_side=self.cfg.decode.work_short_side,
                                          motion_fps=never, tags_short_side=self.cfg.tags.short_side, tags_fps=never,
                                          threads=self.cfg.decode.threads))


# Data-Juicer's VideoMotionScoreFilter defaults (data_juicer/ops/filter/video_motion_score_filter.py:
# `_default_kwargs`, sampling_fps=2, size=None i.e. full resolution). It reads frames by seeking:
# after each flow it calls cap.set(CAP_PROP_POS_FRAMES, next_index) then cap.read(), so every
# sample pays a seek back to the keyframe before it and a decode forward from there.
DJ_FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
DJ_SAMPLING_FPS = 2.0


def dj_motion(uri: str) -> int:
    """(d) Data-Juicer-style mean Farneback magnitude; returns the number of frames it read."""
    cap = cv2.VideoCapture(uri)
    try:
        if not cap.isOpened():
            raise RuntimeError(f"OpenCV cannot open {uri}")
        fps = cap.get(cv2.CAP_PROP_FPS)
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        step = max(min(round(fps / min(DJ_SAMPLING_FPS, fps)), total - 1), 1)
        prev, index, reads, scores = None, 0, 0, []
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            reads += 1
            gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
            if prev is not None:
                flow = cv2.calcOpticalFlowFarneback(prev, gray, None, **DJ_FARNEBACK)
                mag, _ = cv2.cartToPolar(flow[..., 0], flow[..., 1])
                scores.append(float(np.mean(mag)))
            prev = gray
            index += step
            cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        if not scores:
            raise RuntimeError(f"{uri}: no motion score (read {reads} frames)")
        return reads
    finally:
        cap.release()


# ---------------------------------------------------------------------------- timing

@dataclass
class Timing:
    """Per clip: best wall seconds, CPU seconds of that run (all threads), frames reported."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)

    def record(self, i: int, fn: Callable[[str], int], uri: str) -> None:
        c0, t0 = time.process_time(), time.perf_counter()
        n = fn(uri)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if i == len(self.wall):  # first run on clip i
            self.wall.append(wall)
            self.cpu.append(cpu)
            self.frames.append(n)
        elif wall < self.wall[i]:
            self.wall[i], self.cpu[i], self.frames[i] = wall, cpu, n

    @property
    def total(self) -> float:
        return sum(self.wall)

    @property
    def total_cpu(self) -> float:
        return sum(self.cpu)


def measure(methods: dict[str, tuple[Callable[[str], int], int]], uris: list[str]) -> dict[str, Timing]:
    """Per clip, the best of each method's runs (`methods`: name -> (fn, runs)). Within a round
    every method runs on a clip before the next clip, so load that comes and goes on a shared
    machine falls on all of them alike."""
    out = {k: Timing() for k in methods}
    for r in range(max(n for _, n in methods.values())):
        for i, uri in enumerate(uris):
            for k, (fn, runs) in methods.items():
                if r < runs:
                    out[k].record(i, fn, uri)
    return out


# ---------------------------------------------------------------------------- reporting

def describe_machine() -> list[str]:
    model = platform.processor() or "?"
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                model = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ff = av.library_versions.get("libavcodec")
    return [
        f"machine: {platform.platform()}; {model}; cpu_count={os.cpu_count()} usable={usable}; {load()}",
        f"python {platform.python_version()}; PyAV {av.__version__} (libavcodec {'.'.join(map(str, ff)) if ff else '?'}); "
        f"opencv {cv2.__version__}; decord {decord.__version__}; numpy {np.__version__}",
        f"OpenCV threads: cv2.setNumThreads({CV2_THREADS}) for both the chain (SplitAndScore.setup sets it) and the "
        f"Data-Juicer baseline; video decoding uses FFmpeg's own threads in every method",
    ]


def load() -> str:
    try:
        return "load avg " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "load avg ?"


def clip_info(uri: str) -> str:
    with av.open(uri) as c:
        cc = c.streams.video[0].codec_context
        return f"{cc.name} {cc.width}x{cc.height}"


def print_report(uris: list[str], t: dict[str, Timing], chain: Chain) -> None:
    frames = t["decode"].frames
    for k in ("rgb", "decord", "chain", "floor"):
        if t[k].frames != frames:
            print(f"note: {k} counted {sum(t[k].frames)} frames where PyAV decoded {sum(frames)}")
    w = max(len(Path(u).name) for u in uris)
    head = (
        f"{'clip':<{w}}  {'video':<16} {'frames':>6}  {'decode':>7} {'+rgb':>7} {'decord':>7} {'chain':>7} {'ratio':>5} {'floor':>5} "
        f"{'shots':>5} {'clips':>5}  {'DJ s':>6} {'speedup':>7}"
    )
    print("per clip: frames/s (source frames decoded per wall second); ratio = chain/decode; floor = (e)/decode, the most any "
          "chain could reach; DJ s = Data-Juicer-style seconds")
    print(head)
    print("-" * len(head))
    for i, u in enumerate(uris):
        n, fps = frames[i], {k: frames[i] / t[k].wall[i] for k in ("decode", "rgb", "decord", "chain", "floor")}
        ex = chain.best[u]
        print(
            f"{Path(u).name:<{w}}  {clip_info(u):<16} {n:>6}  {fps['decode']:>7.0f} {fps['rgb']:>7.0f} {fps['decord']:>7.0f} "
            f"{fps['chain']:>7.0f} {fps['chain'] / fps['decode']:>5.2f} {fps['floor'] / fps['decode']:>5.2f} {ex['shots']:>5} {ex['clips']:>5}  "
            f"{t['dj'].wall[i]:>6.2f} {t['dj'].wall[i] / t['chain'].wall[i]:>7.1f}"
        )
    print()
    total = sum(frames)
    fps = {k: total / t[k].total for k in t}
    probe_s = sum(chain.best[u]["probe_s"] for u in uris)

    def line(label: str, k: str, extra: str = "") -> str:
        rate = f"{fps[k]:7.0f} frames/s" if k != "dj" else f"{sum(t[k].frames):4d} frames read "
        return f"  {label:<55} {t[k].total:7.2f} s  {rate}  cpu {t[k].total_cpu:6.2f} s{extra}"

    print(f"totals over {len(uris)} clips, {total} frames (wall: best of runs per clip; cpu: all threads of that run):")
    print(line("(a)  raw decode: PyAV, thread_type=AUTO, no conversion", "decode"))
    print(line("(a') PyAV decode + rgb24 (one VideoReformatter)", "rgb"))
    print(line("(b)  decord VideoReader, vr.next() in order (RGB)", "decord", "  (informational)"))
    print(line("(c)  chain: ProbeSources + SplitAndScore", "chain", f"  (probe {probe_s:.2f} s wall)"))
    print(line("(d)  Data-Juicer-style: seek every 0.5 s + Farneback", "dj"))
    print(line("(e)  floor: probe + decode pass, thumbnails only", "floor"))
    print(
        f"decord vs PyAV, both producing RGB: {fps['decord'] / fps['rgb']:.2f}x "
        f"({'PyAV' if fps['rgb'] >= fps['decord'] else 'decord'} faster); "
        f"decord (RGB) vs raw PyAV decode: {fps['decord'] / fps['decode']:.2f}x "
        f"({'PyAV' if fps['decode'] >= fps['decord'] else 'decord'} faster)"
    )
    print(
        f"cpu-seconds view: chain/decode ratio {t['decode'].total_cpu / t['chain'].total_cpu:.3f}, "
        f"speedup {t['dj'].total_cpu / t['chain'].total_cpu:.2f}; {load()}"
    )
    print(f"floor/decode ratio (the most a chain could reach): {fps['floor'] / fps['decode']:.3f}")
    print(f"chain/decode ratio: {fps['chain'] / fps['decode']:.3f}")
    print(f"speedup vs seek+farneback motion: {t['dj'].total / t['chain'].total:.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", nargs="?", help="videos to measure (default: a generated mixed set)")
    ap.add_argument("--profile", default="cpu", choices=sorted(PROFILES), help="run config profile for the chain")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each generated clip (default 10)")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs for (a)-(c) (default 3)")
    ap.add_argument("--dj-repeat", type=int, default=1, help="best of this many runs for the slow baseline (d) (default 1)")
    ap.add_argument("--keep", metavar="DIR", help="generate the default set into DIR and keep it (reused when present)")
    args = ap.parse_args(argv)
    if args.repeat < 1 or args.dj_repeat < 1:
        ap.error("--repeat and --dj-repeat must be >= 1")

    cv2.setNumThreads(CV2_THREADS)
    tmp = None
    try:
        if args.folder:
            uris = [u for u in expand_inputs([args.folder]) if not is_image(u)]
            if not uris:
                ap.error(f"no videos under {args.folder}")
            corpus = f"{len(uris)} videos under {args.folder}"
        else:
            root = Path(args.keep) if args.keep else Path(tmp := tempfile.mkdtemp(prefix="videomill_bench_"))
            t0 = time.perf_counter()
            uris = default_corpus(root, args.seconds)
            corpus = f"{len(uris)} x {args.seconds:g} s H.264 clips (libx264 defaults) in {root}, made in {time.perf_counter() - t0:.1f} s"

        for ln in describe_machine():
            print(ln)
        print(f"corpus: {corpus}")
        print(f"chain profile: {args.profile}; best of {args.repeat} per clip ((d): best of {args.dj_repeat})")
        print()

        chain = Chain(args.profile)
        methods = {
            "decode": (pyav_decode, args.repeat),
            "rgb": (pyav_decode_rgb, args.repeat),
            "decord": (decord_decode, args.repeat),
            "chain": (chain, args.repeat),
            "dj": (dj_motion, args.dj_repeat),
            "floor": (Floor(chain), args.repeat),
        }
        for k in ("decode", "rgb", "decord", "chain", "floor"):  # warm-up: first-call costs (lazy imports) are not per clip
            methods[k][0](uris[0])
        chain.best.clear()
        timings = measure(methods, uris)
        print_report(uris, timings, chain)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
