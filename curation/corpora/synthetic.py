"""Synthetic videos with known properties, for tests, the demo and the benchmarks.

Every generator yields RGB uint8 frames; `write_video` encodes them with PyAV. The content is
chosen so each property is known exactly: translation speed in px/frame, cut frame indices,
text coverage, noise level. `make_corpus` builds the mixed good/bad folder the end-to-end
tests and `make demo` run on.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import av
import cv2
import numpy as np

_WORDS = "the quick brown fox jumps over a lazy dog while data flows through every stage".split()


def texture(h: int, w: int, seed: int) -> np.ndarray:
    """A detailed, colourful random texture (blobs at several scales plus fine grain)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float32)
    for scale, amp in ((32, 110.0), (8, 60.0), (2, 30.0)):
        small = rng.random((max(2, h // scale), max(2, w // scale), 3), dtype=np.float32)
        img += cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) * amp
    tint = rng.random(3) * 80
    return np.clip(img - img.mean() + 110 + tint, 0, 255).astype(np.uint8)


def _shift(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)


def moving(n: int, size: tuple[int, int], speed: tuple[float, float] = (2.0, 0.0), seed: int = 0) -> Iterator[np.ndarray]:
    """A texture translating at `speed` px/frame, with a disc moving the other way."""
    w, h = size
    base = texture(h, w, seed)
    for i in range(n):
        frame = _shift(base, speed[0] * i, speed[1] * i)
        cx = int((w * 0.7 - speed[0] * i * 0.5) % w)
        cv2.circle(frame, (cx, h // 2), max(4, h // 8), (230, 60, 40), -1)
        yield frame


def with_cuts(n: int, size: tuple[int, int], cuts: Iterable[int], speed: float = 2.0, seed: int = 0) -> Iterator[np.ndarray]:
    """Moving shots with a hard cut (new texture, colour, direction) at each frame in `cuts`."""
    w, h = size
    bounds = [0, *sorted(cuts), n]
    for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
        direction = (speed, 0.0) if k % 2 == 0 else (0.0, speed)
        for frame in moving(b - a, (w, h), direction, seed=seed * 1000 + k + 1):
            yield frame


def jump_cuts(n: int, size: tuple[int, int], every: int = 8, skip: int = 30, walkers: int = 6, seed: int = 0) -> Iterator[np.ndarray]:
    """A static shot of discs walking across a still background, with `skip` frames of time
    cut out every `every` frames: the walkers teleport, the background never changes, so a
    shot-cut detector sees no cut (editing inside one shot)."""
    w, h = size
    rng = np.random.default_rng(seed)
    base = texture(h, w, seed)
    start = rng.random((walkers, 2)) * (w, h)
    vel = (rng.random((walkers, 2)) - 0.5) * 6.0  # px/frame
    r = max(4, h // 12)
    t = 0
    for i in range(n):
        frame = base.copy()
        for (x, y), (vx, vy) in zip(start, vel):
            cv2.circle(frame, (int((x + vx * t) % w), int((y + vy * t) % h)), r, (230, 60, 40), -1)
        yield frame
        t += 1 + (skip if i % every == every - 1 else 0)


def partly_static(
    n: int, size: tuple[int, int], speed: tuple[float, float] = (2.0, 0.0), static_frac: float = 0.5, seed: int = 0
) -> Iterator[np.ndarray]:
    """`moving` with its left `static_frac` of the width replaced by a still texture."""
    w, h = size
    still = texture(h, w, seed + 11)
    x = int(w * static_frac)
    for frame in moving(n, size, speed, seed):
        frame[:, :x] = still[:, :x]
        yield frame


def subtitled(n: int, size: tuple[int, int], speed: tuple[float, float] = (2.0, 0.0), seed: int = 0) -> Iterator[np.ndarray]:
    """`moving` with one line of subtitle (white, black outline) centred near the bottom: about
    6% of the height tall and at most 70% of the width wide, as broadcast subtitles are."""
    w, h = size
    text = "and that is how the data flows"
    font, thick = cv2.FONT_HERSHEY_SIMPLEX, max(1, round(h / 240))
    (tw, th), _ = cv2.getTextSize(text, font, 1.0, thick)
    scale = min(0.06 * h / th, 0.7 * w / tw)
    (tw, _), _ = cv2.getTextSize(text, font, scale, thick)
    org = ((w - tw) // 2, int(h * 0.92))
    for frame in moving(n, size, speed, seed):
        cv2.putText(frame, text, org, font, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
        cv2.putText(frame, text, org, font, scale, (255, 255, 255), thick, cv2.LINE_AA)
        yield frame


def static(n: int, size: tuple[int, int], seed: int = 0) -> Iterator[np.ndarray]:
    w, h = size
    base = texture(h, w, seed)
    for _ in range(n):
        yield base.copy()


def blurred(n: int, size: tuple[int, int], sigma: float = 4.0, seed: int = 0) -> Iterator[np.ndarray]:
    for frame in moving(n, size, (2.0, 1.0), seed):
        yield cv2.GaussianBlur(frame, (0, 0), sigma)


def letterboxed(n: int, size: tuple[int, int], bar_frac: float = 0.2, seed: int = 0) -> Iterator[np.ndarray]:
    w, h = size
    bar = int(h * bar_frac)
    for frame in moving(n, size, (2.0, 0.0), seed):
        frame[:bar] = 0
        frame[h - bar :] = 0
        yield frame


def text_slide(n: int, size: tuple[int, int], lines: int = 9, seed: int = 0) -> Iterator[np.ndarray]:
    """A static lecture slide: white page, a coloured title bar, lines of black text."""
    w, h = size
    rng = np.random.default_rng(seed)
    page = np.full((h, w, 3), 250, np.uint8)
    page[: h // 8] = (30, 70, 160)
    scale = h / 480
    cv2.putText(page, "Lecture 3: Data", (int(20 * scale), int(h / 8 * 0.7)), cv2.FONT_HERSHEY_SIMPLEX, 1.2 * scale, (255, 255, 255), max(1, int(2 * scale)), cv2.LINE_AA)
    for i in range(lines):
        y = int(h / 8 + (i + 1) * (h * 7 / 8) / (lines + 1))
        text = " ".join(rng.choice(_WORDS, 6))
        cv2.putText(page, text, (int(30 * scale), y), cv2.FONT_HERSHEY_SIMPLEX, 0.9 * scale, (20, 20, 20), max(1, int(2 * scale)), cv2.LINE_AA)
    for _ in range(n):
        yield page.copy()


def noisy_screen(n: int, size: tuple[int, int], sigma: float = 14.0, seed: int = 0) -> Iterator[np.ndarray]:
    """A filmed screen: static UI panels under per-frame sensor noise and brightness flicker."""
    w, h = size
    rng = np.random.default_rng(seed)
    screen = np.full((h, w, 3), 200, np.float32)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w * 3 // 4)), int(rng.integers(0, h * 3 // 4))
        screen[y0 : y0 + h // 5, x0 : x0 + w // 4] = rng.integers(40, 220, 3)
    for i in range(n):
        flicker = 18.0 * np.sin(i * 2.3)
        yield np.clip(screen + flicker + rng.normal(0, sigma, screen.shape), 0, 255).astype(np.uint8)


def incoherent(n: int, size: tuple[int, int], blobs: int = 40, seed: int = 0) -> Iterator[np.ndarray]:
    """Bright blobs that jump to new random places every frame over a static background."""
    w, h = size
    rng = np.random.default_rng(seed)
    base = (texture(h, w, seed + 7) // 3).astype(np.uint8)
    for _ in range(n):
        frame = base.copy()
        for _ in range(blobs):
            c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.circle(frame, c, int(rng.integers(h // 30 + 2, h // 10 + 3)), tuple(int(x) for x in rng.integers(120, 255, 3)), -1)
        yield frame


COUNTER_BITS = 8


def counter_frames(n: int, size: tuple[int, int] = (256, 144)) -> Iterator[np.ndarray]:
    """Frame i shows i in binary as COUNTER_BITS black/white bars (bit b in the b-th vertical
    band): survives H.264 compression and scaling, so tests can read which source frame
    they got."""
    w, h = size
    for i in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        for b in range(COUNTER_BITS):
            if i >> b & 1:
                f[:, b * w // COUNTER_BITS : (b + 1) * w // COUNTER_BITS] = 255
        yield f


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float = 25.0,
    codec: str = "libx264",
    *,
    pix_fmt: str = "yuv420p",
    rotation: int = 0,
    frame_times: Iterable[float] | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Encode RGB frames. `frame_times` (seconds) gives variable frame timing; `rotation`
    stores a display rotation (counter-clockwise degrees) without touching the pixels."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    times = iter(frame_times) if frame_times is not None else None
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as c:
        s = None
        for i, rgb in enumerate(frames):
            if s is None:
                s = c.add_stream(codec, rate=rate)
                s.width, s.height = rgb.shape[1], rgb.shape[0]
                s.pix_fmt = pix_fmt
                if options:
                    s.options = options
                if times is not None:
                    s.codec_context.time_base = Fraction(1, 1000)
                if rotation:
                    s.set_display_rotation(rotation)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if times is not None:
                frame.pts = int(round(next(times) * 1000))
                frame.time_base = Fraction(1, 1000)
            for packet in s.encode(frame):
                c.mux(packet)
        if s is None:
            raise ValueError("no frames to write")
        for packet in s.encode():
            c.mux(packet)
    return path


def write_audio_only(path: str | Path, seconds: float = 1.0) -> Path:
    path = Path(path)
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("aac", rate=44100)
        samples = int(44100 * seconds)
        t = np.arange(samples, dtype=np.float32) / 44100
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, samples, 1024):
            chunk = tone[start : start + 1024].reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate = 44100
            frame.pts = start
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def make_corpus(root: str | Path, seconds: float = 4.0) -> dict[str, dict]:
    """A folder of good and bad inputs; returns {file name: what a correct run must find}."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n = int(25 * seconds)
    expect: dict[str, dict] = {}

    def good(name: str, **props: object) -> None:
        expect[name] = {"status": "ok", **props}

    write_video(root / "h264_16x9.mp4", moving(n, (480, 270), (3.0, 0.0), seed=1), 25)
    good("h264_16x9.mp4", width=480, height=270)
    write_video(root / "mpeg4_4x3.avi", moving(int(24 * seconds), (360, 270), (0.0, 2.0), seed=2), 24, "mpeg4", options={"qscale": "3"})
    good("mpeg4_4x3.avi", width=360, height=270)
    write_video(root / "vp9.webm", moving(int(30 * seconds), (384, 288), (2.0, 2.0), seed=3), 30, "libvpx-vp9", options={"deadline": "realtime", "cpu-used": "8", "crf": "30", "b": "0"})
    good("vp9.webm", width=384, height=288)
    vfr_times = np.cumsum(np.r_[0, np.where(np.arange(n - 1) % 3 == 0, 0.06, 0.03)])
    write_video(root / "vfr.mkv", moving(n, (480, 270), (2.0, 1.0), seed=4), 25, frame_times=vfr_times.tolist())
    good("vfr.mkv", width=480, height=270, vfr=True)
    write_video(root / "rotated.mp4", moving(n, (480, 270), (2.0, 0.0), seed=5), 25, rotation=90)
    good("rotated.mp4", width=270, height=480, rotation=90)
    cv2.imwrite(str(root / "photo.jpg"), cv2.cvtColor(texture(288, 512, 6), cv2.COLOR_RGB2BGR))
    good("photo.jpg", width=512, height=288, media_type="image")

    (root / "empty.mp4").write_bytes(b"")
    expect["empty.mp4"] = {"status": "error", "error_contains": "empty"}
    data = (root / "h264_16x9.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    expect["truncated.mp4"] = {"status": "error", "error_contains": "truncated MP4"}
    (root / "notes.mp4").write_text("this is a text file, not a video\n" * 20)
    expect["notes.mp4"] = {"status": "error", "error_contains": "readable"}
    write_audio_only(root / "song.mp4", seconds=1.0)
    expect["song.mp4"] = {"status": "error", "error_contains": "no video stream"}
    return expect


def make_samples(root: str | Path, seconds: float = 4.0) -> dict[str, dict]:
    """The demo folder: the corpus plus one clip per negative tag and a multi-shot video."""
    root = Path(root)
    expect = make_corpus(root, seconds)
    n = int(25 * seconds)
    size = (480, 270)
    cases = {
        "shots_3.mp4": (with_cuts(3 * n, size, cuts=[n, 2 * n], seed=11), "three shots -> three clips"),
        "slide.mp4": (text_slide(n, size), "lecture / text-dominated, static"),
        "still.mp4": (static(n, size, seed=12), "static -> motion_too_low"),
        "noisy_screen.mp4": (noisy_screen(n, size), "noisy screen recording"),
        "blurred.mp4": (blurred(n, size), "blurry -> low_quality"),
        "jumpy.mp4": (incoherent(n, size), "incoherent motion"),
    }
    for name, (frames, note) in cases.items():
        write_video(root / name, frames, 25)
        expect[name] = {"status": "ok", "note": note}
    return expect
