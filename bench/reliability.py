"""What the reliability work costs the decode pass, as ratios against baselines in the same run.

    python bench/reliability.py [--seconds N] [--repeat R]

  (a) decode: PyAV `container.decode` of every frame (the baseline) vs
      `curation.media.decode.decoded_frames` (packet-by-packet with corrupt packets skipped, the
      reorder buffer and the timeline): ratio of frames/s, 1.0 = free;
  (b) shot detection per frame on the decode pass's thumbnails: hard cuts only (the detector
      before gradual transitions, reconstructed by disabling them) vs hard cuts + gradual
      transitions (dissolves: mix fit and texture dip; fades): microseconds per frame and the ratio.
Each figure is the best CPU time (all threads) of --repeat runs; methods take turns.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

import av  # noqa: E402

from curation.core.config import load_config  # noqa: E402
from curation.media.decode import decoded_frames, iter_frames  # noqa: E402
from curation.corpora.hostile import fade  # noqa: E402
from curation.analysis.split_scenes import ShotDetector  # noqa: E402
from curation.corpora.synthetic import moving, with_cuts, write_video  # noqa: E402


def best(fn, repeat: int) -> float:
    """Best CPU seconds of this process (all threads) over `repeat` calls: on a shared
    machine CPU time moves far less than wall time."""
    out = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        out.append(time.process_time() - t0)
    return min(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n = int(25 * args.seconds)
    d = Path(tempfile.mkdtemp(prefix="videomill_bench_rel_"))
    clip = write_video(d / "cuts_640x360.mp4", with_cuts(n, (640, 360), cuts=[n // 3, 2 * n // 3]), 25)
    frames_a, frames_b = moving(n // 2 + 20, (640, 360), seed=1), moving(n // 2, (640, 360), (0.0, 2.0), seed=2)
    dissolve = write_video(d / "dissolve_640x360.mp4", fade(frames_a, frames_b, n // 2, 20, n // 2 - 20, False), 25)

    def raw() -> None:
        with av.open(str(clip)) as c:
            c.streams.video[0].thread_type = "AUTO"
            for _ in c.decode(c.streams.video[0]):
                pass

    def ours() -> None:
        with av.open(str(clip)) as c:
            for _ in decoded_frames(c):
                pass

    t_raw, t_ours = float("inf"), float("inf")
    for _ in range(args.repeat):
        t_raw, t_ours = min(t_raw, best(raw, 1)), min(t_ours, best(ours, 1))
    cfg = load_config()
    for path in (clip, dissolve):
        thumbs = [f.thumb for f in iter_frames(str(path), thumb_width=cfg.decode.cut_thumb_width, work_short_side=64,
                                                motion_fps=0.1, tags_short_side=64, tags_fps=0.1)]

        def detect(gradual: bool) -> None:
            det = ShotDetector(cfg.split)
            if not gradual:  # hard cuts only: the dissolve and fade tests switched off
                det._test_dissolve = det._test_fade = lambda final=False: None
            for i, th in enumerate(thumbs):
                det.push(i, th)
            det.finish()

        t_cut = t_both = float("inf")
        for _ in range(args.repeat):
            t_cut, t_both = min(t_cut, best(lambda: detect(False), 1)), min(t_both, best(lambda: detect(True), 1))
        k = len(thumbs)
        print(f"(b) {path.name}: hard cuts {t_cut / k * 1e6:.0f} cpu-us/frame, + gradual {t_both / k * 1e6:.0f} cpu-us/frame; "
              f"ratio {t_cut / t_both:.2f}")
    print(f"(a) {clip.name}, {n} frames: container.decode {n / t_raw:.0f} frames/cpu-s, decoded_frames {n / t_ours:.0f} frames/cpu-s")
    print(f"decoded_frames/raw decode ratio: {t_raw / t_ours:.2f}")


if __name__ == "__main__":
    main()
