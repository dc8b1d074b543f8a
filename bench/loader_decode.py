"""The trainer loader's frame access: decord `get_batch` against PyAV, speed and correctness.

    python bench/loader_decode.py [CLIP ...] [--repeat R] [--size 720x480] [--keep DIR]

The pattern is the loader's (training/data/shard_source.py): a training clip of a few seconds, in
memory (a shard member), of which a bucket takes F frames at the bucket fps from a seeded
start -- 49 frames at 8 fps (CogVideoX 1.0) when the clip is long enough, else 17; and 33
frames at 16 fps (1.5-style rates) -- a sparse, evenly spaced set, each resized to cover
--size and centre-cropped.

  (a) PyAV: training.data.video_io.decode_video, the loader's path: one sequential decode that stops
      after the last frame needed, nearest frame by timestamp, swscale only the picked frames.
  (b) decord 0.6: VideoReader on the bytes, frame indices nearest the times by decord's own
      frame timestamps, `get_batch(indices)`, then the same cover-resize (OpenCV: area when
      shrinking, bicubic when enlarging) and crop.

Correctness: synthetic clips show their frame number as bars (curation.corpora.synthetic.counter_frames),
so each method's frames are checked against the frame nearest each time by the clip's real
timestamps (constant 24/25/30 fps, and one clip with irregular timestamps). Real clips (--real
or arguments; default the OpenCV sample videos of Debian's opencv-doc when present, re-encoded
to H.264 like curation's clips) have no counter: there decord's frames are compared with the
frames PyAV decodes at the same timestamps (mean absolute difference > 3 levels = wrong frame).
decord runs in a child process with a timeout, because its get_batch is known to deadlock.

Prints per clip and pattern the best-of-R seconds of each, ratio = decord / PyAV (> 1: PyAV
faster), and the wrong-frame counts; the last line is the figure.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import platform
import random
import shutil
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

import av  # noqa: E402
import cv2  # noqa: E402
import decord  # noqa: E402
import numpy as np  # noqa: E402

from curation.corpora.synthetic import COUNTER_BITS, counter_frames, write_video  # noqa: E402
from training.data.video_io import cover_size, crop_origin, decode_video, frame_times, time_slack  # noqa: E402

OPENCV_SAMPLES = Path("/usr/share/doc/opencv-doc/examples/data")
PATTERNS = ((49, 8.0), (17, 8.0), (33, 16.0))  # (frames, fps); 49@8 falls back to 17@8 on short clips
DECORD_TIMEOUT_S = 120


# ---------------------------------------------------------------------------- clips


def synthetic_clips(root: Path) -> dict[str, Path]:
    """Counter clips the size of training clips: constant rate, and irregular timestamps. 3:2,
    the default bucket's aspect, so cover-and-crop is a pure scale and keeps every counter bar."""
    rng = np.random.default_rng(0)
    out = {}
    for name, size, fps, n in [("cfr24_1080x720", (1080, 720), 24.0, 150), ("cfr25_720x480", (720, 480), 25.0, 150),
                               ("cfr30_1080x720", (1080, 720), 30.0, 180)]:
        out[name] = write_video(root / f"{name}.mp4", counter_frames(n, size), fps, options={"preset": "veryfast"})
    # Irregular timestamps (screen recordings, phone footage): durations 20-55 ms, one 0.4 s gap.
    durations = rng.uniform(0.020, 0.055, 160)
    durations[80] = 0.4
    times = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    out["vfr_720x480"] = write_video(root / "vfr_720x480.mp4", counter_frames(160, (720, 480)), 30.0,
                                     frame_times=times.tolist(), options={"preset": "veryfast"})
    return out


def real_clips(root: Path, sources: list[Path], seconds: float = 6.0) -> dict[str, Path]:
    """The first `seconds` of each source re-encoded to H.264 mp4 at its own size and rate, as
    curation writes clips (libx264, yuv420p)."""
    out = {}
    for src in sources:
        frames, fps = [], 25.0
        with av.open(str(src)) as c:
            vs = c.streams.video[0]
            fps = float(vs.average_rate or vs.guessed_rate or 25)
            for f in c.decode(vs):
                frames.append(f.to_ndarray(format="rgb24"))
                if len(frames) >= seconds * fps:
                    break
        h, w = frames[0].shape[:2]
        frames = [f[: h - h % 2, : w - w % 2] for f in frames]
        out[f"real_{src.stem}"] = write_video(root / f"real_{src.stem}.mp4", frames, fps, options={"preset": "veryfast"})
    return out


def timestamps(data: bytes) -> list[float]:
    """Every frame's presentation time (s) from the first frame, in display order."""
    with av.open(io.BytesIO(data)) as c:
        ts = sorted(float(f.time) for f in c.decode(c.streams.video[0]))
    return [t - ts[0] for t in ts]


def nearest(ts: list[float], times: list[float]) -> list[int]:
    """Index of the frame nearest each time; ties to the earlier frame (video_io's rule)."""
    arr = np.asarray(ts)
    out = []
    for t in times:
        i = int(np.searchsorted(arr, t))
        if i >= len(arr):
            out.append(len(arr) - 1)
        elif i > 0 and t - arr[i - 1] <= arr[i] - t:
            out.append(i - 1)
        else:
            out.append(i)
    return out


def read_counter(rgb: np.ndarray) -> int:
    w = rgb.shape[1]
    return sum(1 << b for b in range(COUNTER_BITS) if rgb[:, b * w // COUNTER_BITS + w // (2 * COUNTER_BITS)].mean() > 128)


def pattern_times(ts: list[float], frames: int, fps: float, seed: int) -> list[float] | None:
    duration = ts[-1] + (ts[-1] - ts[-2] if len(ts) > 1 else 0.04)
    slack = time_slack(duration, len(ts) / duration, frames, fps)
    if slack is None:
        return None
    return frame_times(frames, fps, random.Random(seed).uniform(0.0, slack))


# ---------------------------------------------------------------------------- the two methods


def pyav_frames(data: bytes, times: list[float], width: int, height: int) -> np.ndarray:
    return decode_video(data, width=width, height=height, times=times)


def decord_frames(data: bytes, times: list[float], width: int, height: int, native: bool = False) -> tuple[np.ndarray, list[int]]:
    """decord's frames nearest `times` (by its own timestamps), cover-resized and cropped; with
    native, the frames at their own size (for comparing with PyAV's)."""
    vr = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
    stamps = vr.get_frame_timestamp(range(len(vr)))[:, 0]
    idx = nearest((stamps - stamps[0]).tolist(), times)
    batch = vr.get_batch(idx).asnumpy()
    if native:
        return batch, idx
    h, w = batch.shape[1:3]
    sw, sh = cover_size(w, h, width, height)
    x0, y0 = crop_origin(sw, sh, width, height)
    interp = cv2.INTER_AREA if sw <= w else cv2.INTER_CUBIC  # as video_io: area down, bicubic up
    return np.stack([cv2.resize(f, (sw, sh), interpolation=interp)[y0 : y0 + height, x0 : x0 + width]
                     for f in batch]), idx


def pyav_native(data: bytes, idx: list[int]) -> np.ndarray:
    """The frames with these display-order indices, by PyAV at their own size (the reference)."""
    want, out = set(idx), {}
    with av.open(io.BytesIO(data)) as c:
        frames = sorted(((float(f.time), f.to_ndarray(format="rgb24")) for f in c.decode(c.streams.video[0])),
                        key=lambda x: x[0])
    for i in want:
        out[i] = frames[i][1]
    return np.stack([out[i] for i in idx])


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def decord_job(data: bytes, times: list[float], width: int, height: int, repeat: int, real: bool) -> dict:
    """In the child: decord's best time, its frames (counter values or native) and indices."""
    secs = best_of(lambda: decord_frames(data, times, width, height), repeat)
    frames, idx = decord_frames(data, times, width, height)
    native = decord_frames(data, times, width, height, native=True)[0] if real else None
    return {"s": secs, "counters": [read_counter(f) for f in frames], "idx": idx, "native": native}


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("clips", nargs="*", type=Path, help="real clips (default: the opencv-doc samples, if installed)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--size", default="720x480", help="bucket WxH")
    p.add_argument("--keep", type=Path, help="keep the generated clips here")
    args = p.parse_args(argv)
    width, height = map(int, args.size.split("x"))
    root = args.keep or Path(tempfile.mkdtemp(prefix="loader_decode_"))
    root.mkdir(parents=True, exist_ok=True)
    real_src = args.clips or sorted(q for q in OPENCV_SAMPLES.glob("*.avi") if "bugy" not in q.name)
    clips = {**synthetic_clips(root), **real_clips(root, real_src)}
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}, PyAV {av.__version__}, "
          f"decord {decord.__version__}, OpenCV {cv2.__version__}; bucket {width}x{height}, best of {args.repeat}")
    print(f"{'clip':<26}{'pattern':>9}{'pyav s':>9}{'decord s':>10}{'ratio':>7}  wrong frames (pyav / decord)")
    tot = {"pyav": 0.0, "decord": 0.0}
    wrong = {"pyav": 0, "decord": 0}
    checked = hung = 0
    pool = cf.ProcessPoolExecutor(1)
    try:
        for name, path in clips.items():
            data = path.read_bytes()
            ts = timestamps(data)
            real = name.startswith("real_")
            done: set[tuple[int, float]] = set()
            for k, (frames, fps) in enumerate(PATTERNS):
                if (frames, fps) == (17, 8.0) and (49, 8.0) in done:
                    continue  # 17 @ 8 fps only where 49 did not fit
                times = pattern_times(ts, frames, fps, seed=k)
                if times is None:
                    continue
                done.add((frames, fps))
                expect = nearest(ts, times)
                pa_s = best_of(lambda: pyav_frames(data, times, width, height), args.repeat)
                pa = pyav_frames(data, times, width, height)
                try:
                    d = pool.submit(decord_job, data, times, width, height, args.repeat, real).result(timeout=DECORD_TIMEOUT_S)
                except cf.TimeoutError:
                    hung += 1
                    print(f"{name:<26}{frames:>4}@{fps:<4g}{pa_s:>9.3f}      hung (> {DECORD_TIMEOUT_S} s)")
                    pool.shutdown(wait=False, cancel_futures=True)
                    for proc in list(pool._processes.values()):  # the hung child only
                        proc.kill()
                    pool = cf.ProcessPoolExecutor(1)
                    continue
                if real:  # no counter: decord's frames against PyAV's frames at the same timestamps
                    ref = pyav_native(data, expect)
                    bad_d = int(sum(np.abs(a.astype(int) - b.astype(int)).mean() > 3 for a, b in zip(d["native"], ref)))
                    bad_p = 0  # PyAV is the reference here; its synthetic figures show it exact
                else:
                    bad_p = sum(read_counter(f) != e for f, e in zip(pa, expect))
                    bad_d = sum(c != e for c, e in zip(d["counters"], expect))
                wrong["pyav"] += bad_p
                wrong["decord"] += bad_d
                checked += frames
                tot["pyav"] += pa_s
                tot["decord"] += d["s"]
                print(f"{name:<26}{frames:>4}@{fps:<4g}{pa_s:>9.3f}{d['s']:>10.3f}{d['s'] / pa_s:>7.2f}  {bad_p} / {bad_d}")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"frames checked {checked}: wrong pyav {wrong['pyav']}, decord {wrong['decord']}; decord hung {hung} time(s)")
    print(f"loader decode: pyav {tot['pyav']:.3f} s, decord get_batch {tot['decord']:.3f} s, "
          f"ratio decord/pyav = {tot['decord'] / tot['pyav']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
