"""The real-footage development set: real video and real photographs, with known defects.

Everything is built, deterministically, from footage installed by the system's packages, so
nothing but this script and the labels (tests/data/realset_labels.csv) is committed:

* Debian's `opencv-doc` example videos (/usr/share/doc/opencv-doc/examples/data): vtest.avi
  (a static-camera street scene, people walking, 768x576 at 10 fps, MS-MPEG4), Megamind.avi
  (an animated film trailer, four shots, MPEG-4 Part 2), Megamind_bugy.avi (the same trailer
  re-encoded with real decoding glitches: green blocks, smeared macroblocks) and tree.avi (a
  tree filmed at a real 2.3 frames per second, Cinepak). Those four are used as they are.
* Real photographs (scikit-image's data images and opencv-doc's example photos), moved with
  known pans, zooms and handheld shake, with sensor-like noise (shot noise + read noise) or
  film grain, and encoded through x264 at several qualities.
* Defects made from that real footage: fast cuts, jump cuts inside one shot, flash frames, macroblock
  glitches, cross-dissolve morphing, heavy blockiness (x264 at a starved bit rate), blur, a
  low-resolution copy, a 2.5 fps copy, real text (the Zen of Python) rendered with PIL over
  real photos, a lecture-like slide, and a photo filmed off a screen (moire, noise, flicker).

    python bench/realset.py OUT          # or: make realset (writes build/realset)

Each generated clip is ~4 s; the whole set builds in well under a minute on 2 cores and
needs ~4 MB. `videomill run OUT --out RUN && videomill calibrate RUN --labels
tests/data/realset_labels.csv` measures every tag against the labels.
"""

from __future__ import annotations

import argparse
import ast
import codecs
import importlib.util
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from curation.corpora.synthetic import write_video

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
RAW_VIDEOS = ("vtest.avi", "Megamind.avi", "Megamind_bugy.avi", "tree.avi")
SIZE = (480, 270)  # generated clips: 16:9, short side 270
FPS = 25.0
N = 100  # 4 s


class RealsetMissing(RuntimeError):
    pass


def skimage_data() -> Path:
    try:
        import skimage.data
    except ImportError as e:  # the dev extra installs it
        raise RealsetMissing("scikit-image is not installed (pip install -e '.[dev]')") from e
    return Path(skimage.data.__file__).parent


def check_sources() -> None:
    """Raise RealsetMissing naming what to install when a source is absent."""
    missing = [n for n in RAW_VIDEOS if not (OPENCV_DATA / n).is_file()]
    if missing:
        raise RealsetMissing(f"{', '.join(missing)} missing from {OPENCV_DATA}: apt-get install opencv-doc")
    skimage_data()


def photo(name: str) -> np.ndarray:
    """An RGB photograph from scikit-image's data or opencv-doc's examples."""
    p = skimage_data() / name
    if not p.is_file():
        p = OPENCV_DATA / name
    return np.asarray(Image.open(p).convert("RGB"))


def video_frames(name: str) -> tuple[list[np.ndarray], list[float]]:
    """Every frame of an opencv-doc video as RGB, with its presentation time (s)."""
    frames, times = [], []
    with av.open(str(OPENCV_DATA / name)) as c:
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24"))
            times.append(float(f.time))
    return frames, times


def resample(frames: list[np.ndarray], times: list[float], fps: float, start: float, seconds: float) -> list[np.ndarray]:
    """The frame showing at each tick of `fps` from `start` (repeats frames of a slower source)."""
    t = np.asarray(times)
    out = []
    for k in range(int(round(seconds * fps))):
        i = int(np.searchsorted(t, start + k / fps, side="right") - 1)
        out.append(frames[max(i, 0)])
    return out


def fit(img: np.ndarray, size: tuple[int, int] = SIZE) -> np.ndarray:
    """Scale to cover `size` and centre-crop."""
    w, h = size
    s = max(w / img.shape[1], h / img.shape[0])
    r = cv2.resize(img, (int(np.ceil(img.shape[1] * s)), int(np.ceil(img.shape[0] * s))), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
    y, x = (r.shape[0] - h) // 2, (r.shape[1] - w) // 2
    return np.ascontiguousarray(r[y : y + h, x : x + w])


def camera(img: np.ndarray, path: Callable[[float], tuple[float, float, float]], n: int = N, size: tuple[int, int] = SIZE) -> Iterator[np.ndarray]:
    """A virtual camera over a photograph: path(k) -> (centre x, centre y, zoom) in source px
    and a zoom factor (1: the window is `size` scaled to fit the photo's height at 1.25x)."""
    w, h = size
    base = min(img.shape[0] / (h * 1.25), img.shape[1] / (w * 1.25))  # source px per output px at zoom 1
    for k in range(n):
        cx, cy, zoom = path(k)
        s = base / zoom
        m = np.float32([[s, 0, cx - s * w / 2], [0, s, cy - s * h / 2]])
        yield cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)


def pan(img: np.ndarray, speed: float, zoom: float = 1.5, n: int = N) -> Callable[[float], tuple[float, float, float]]:
    """Horizontal pan across the photo at `speed` output short sides per second, centred."""
    h, w = img.shape[:2]
    base = min(h / (SIZE[1] * 1.25), w / (SIZE[0] * 1.25)) / zoom
    step = speed * SIZE[1] * base / FPS
    x0 = w / 2 - step * n / 2
    return lambda k: (x0 + step * k, h / 2, zoom)


def handheld(img: np.ndarray, seed: int, amp: float = 6.0, n: int = N) -> Callable[[float], tuple[float, float, float]]:
    """Handheld shake: a smoothed random walk of a few output px, a slow drift, slight zoom breathing."""
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.normal(0, 1, (n, 2)), axis=0)
    kernel = np.hanning(9) / np.hanning(9).sum()
    smooth = np.stack([np.convolve(walk[:, i], kernel, mode="same") for i in range(2)], axis=1)
    smooth *= amp / max(1e-6, np.abs(smooth).max())
    h, w = img.shape[:2]
    return lambda k: (w / 2 + smooth[k, 0] * 2 + 0.8 * k, h / 2 + smooth[k, 1] * 2, 1.0 + 0.01 * np.sin(k / 15))


def sensor_noise(frames: Iterator[np.ndarray], seed: int, read: float = 3.0, gain: float = 0.08) -> Iterator[np.ndarray]:
    """Shot noise (variance proportional to the signal) plus Gaussian read noise, per frame."""
    rng = np.random.default_rng(seed)
    for f in frames:
        x = f.astype(np.float32)
        noisy = x + rng.normal(0, 1, x.shape) * np.sqrt(gain * x + read * read)
        yield np.clip(noisy, 0, 255).astype(np.uint8)


def film_grain(frames: Iterator[np.ndarray], seed: int, sigma: float = 6.0) -> Iterator[np.ndarray]:
    """Monochrome grain, slightly clumped (blurred over ~1.5 px), new every frame."""
    rng = np.random.default_rng(seed)
    for f in frames:
        g = cv2.GaussianBlur(rng.normal(0, 1, f.shape[:2]).astype(np.float32), (0, 0), 0.7) * sigma * 1.8
        yield np.clip(f.astype(np.float32) + g[..., None], 0, 255).astype(np.uint8)


def _zen() -> list[str]:
    """The Zen of Python (real English text shipped with every Python), read from the source
    of the `this` module without importing it (importing prints it)."""
    tree = ast.parse(Path(importlib.util.find_spec("this").origin).read_text())
    rot13 = next(n.value.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "s")
    return codecs.decode(rot13, "rot13").splitlines()[2:]


ZEN = _zen()


def _font(px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=px)


def text_over(img: np.ndarray, lines: list[str], px: int, box: tuple[int, int, int, int] | None = None, colour=(255, 255, 255), shade: float = 0.45) -> np.ndarray:
    """Real text rendered with PIL over a (darkened) photograph."""
    pic = Image.fromarray((img.astype(np.float32) * shade).astype(np.uint8))
    d = ImageDraw.Draw(pic)
    x0, y0, x1, y1 = box or (int(0.05 * pic.width), int(0.06 * pic.height), pic.width, pic.height)
    y = y0
    for line in lines:
        if y + px > y1:
            break
        d.text((x0, y), line, font=_font(px), fill=colour)
        y += int(px * 1.35)
    return np.asarray(pic)


def slide() -> np.ndarray:
    """A lecture slide: flat background, title bar, bullet points of real text, a small photo."""
    w, h = SIZE
    pic = Image.new("RGB", (w, h), (245, 245, 240))
    d = ImageDraw.Draw(pic)
    d.rectangle((0, 0, w, 44), fill=(28, 60, 120))
    d.text((14, 10), "Lecture 4: The Zen of Python", font=_font(22), fill=(255, 255, 255))
    y = 60
    for line in ZEN[:8]:
        d.text((18, y), "- " + line[:44], font=_font(14), fill=(25, 25, 25))
        y += 24
    thumb = Image.fromarray(photo("chelsea.png")).resize((110, 74))
    pic.paste(thumb, (w - 124, h - 90))
    return np.asarray(pic)


def noisy_screen(seed: int) -> Iterator[np.ndarray]:
    """A photograph filmed off a monitor: pixel-grid moire, strong sensor noise, refresh flicker."""
    rng = np.random.default_rng(seed)
    base = fit(photo("home.jpg")).astype(np.float32)
    yy, xx = np.mgrid[0 : SIZE[1], 0 : SIZE[0]].astype(np.float32)
    for k in range(N):
        moire = 22 * np.sin(0.9 * xx + 0.35 * yy + 0.4 * k) * np.sin(0.3 * yy - 0.2 * xx)
        flick = 16 * np.sin(k * 2.1) + rng.normal(0, 5)
        f = base * 0.8 + moire[..., None] + flick + rng.normal(0, 14, base.shape)
        yield np.clip(f, 0, 255).astype(np.uint8)


def fast_cuts(street: list[np.ndarray], mega: list[np.ndarray]) -> Iterator[np.ndarray]:
    """Cuts every 6 frames (0.24 s) between real shots: the street, the trailer, photo pans."""
    shots = [
        [fit(f) for f in street[::2]],
        [fit(f) for f in mega[20:]],
        list(camera(photo("building.jpg"), pan(photo("building.jpg"), 0.2))),
        list(camera(photo("leuvenA.jpg"), pan(photo("leuvenA.jpg"), -0.2))),
    ]
    for k in range(N):
        shot = shots[(k // 6) % len(shots)]
        yield shot[k % len(shot)]


def jump_cuts(frames: list[np.ndarray], every: int = 8, skip: int = 40) -> Iterator[np.ndarray]:
    """Jump cuts: the same static camera, `skip` frames of time dropped every `every` frames.
    Background and colours stay, so a shot-cut detector sees no cut; people teleport."""
    k = 0
    for j in range(N):
        yield frames[k]
        k += 1 + (skip if j % every == every - 1 else 0)


def flashes(frames: Iterator[np.ndarray], every: int = 11, gain: int = 35) -> Iterator[np.ndarray]:
    """A one-frame flash every `every` frames (photographers' flashes, strobe lighting): the
    picture brightens by `gain` grey levels, below what a shot-cut detector takes for a cut."""
    for k, f in enumerate(frames):
        yield np.clip(f.astype(np.int16) + gain, 0, 255).astype(np.uint8) if k % every == 5 else f


def glitches(frames: list[np.ndarray], seed: int) -> Iterator[np.ndarray]:
    """Decoder-style corruption: on two frames in every 16, a band of 16x16 macroblocks is
    smeared from stale data or painted codec green, as a lost slice decodes."""
    rng = np.random.default_rng(seed)
    for k, f in enumerate(frames):
        if k % 16 in (7, 8):
            f = f.copy()
            h, w = f.shape[:2]
            y0 = int(rng.integers(0, h // 2)) // 16 * 16
            for by in range(y0, min(h, y0 + 96), 16):
                for bx in range(0, w, 16):
                    if rng.random() < 0.7:
                        src = frames[max(0, k - 12)][by : by + 16, bx : bx + 16]
                        f[by : by + 16, bx : bx + 16] = (0, 135, 0) if rng.random() < 0.4 else np.roll(src, 5, axis=1)
        yield f


def morph(names: list[str], hold: int = 0, fade: int = 25) -> Iterator[np.ndarray]:
    """Unrelated photographs dissolving into one another without pause: content that changes
    without moving (the 'morphing' of generated or heavily effected video). With pauses
    (`hold`) the dissolves are shot transitions and a gradual-cut detector drops them."""
    imgs = [fit(photo(n)).astype(np.float32) for n in names]
    k = 0
    i = 0
    while k < N:
        a, b = imgs[i % len(imgs)], imgs[(i + 1) % len(imgs)]
        for j in range(hold + fade):
            if k >= N:
                break
            t = max(0.0, (j - hold) / fade)
            yield (a * (1 - t) + b * t).astype(np.uint8)
            k += 1
        i += 1


def build(out: str | Path, *, force: bool = False) -> Path:
    """Write the set into `out` (kept when it is already complete, unless `force`)."""
    check_sources()
    out = Path(out)
    marker = out / ".complete"
    if marker.is_file() and not force:
        return out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in RAW_VIDEOS:  # the real videos as they are
        shutil.copyfile(OPENCV_DATA / name, out / name)
    street, street_t = video_frames("vtest.avi")
    mega, mega_t = video_frames("Megamind.avi")
    street25 = resample(street, street_t, FPS, 10.0, 4.0)  # 10 fps source shown at 25 fps
    x264 = lambda crf, **o: {"crf": str(crf), "preset": "medium", **o}  # noqa: E731

    def enc(name: str, frames, fps: float = FPS, **opts) -> None:
        write_video(out / name, frames, fps, options=opts or x264(23))

    # Good footage: camera moves over real photographs, real people walking, real animation.
    building, leuven, starry = photo("building.jpg"), photo("leuvenA.jpg"), photo("starry_night.jpg")
    motor, hubble, astro = photo("motorcycle_left.png"), photo("hubble_deep_field.jpg"), photo("astronaut.png")
    enc("good_pan_building_crf23.mp4", camera(building, pan(building, 0.15)))
    enc("good_pan_motorcycle_fast_crf28.mp4", camera(motor, pan(motor, 0.5, zoom=2.2)), **x264(28))
    h, w = astro.shape[:2]
    enc("good_zoom_astronaut.mp4", camera(astro, lambda k: (w / 2, h / 2, 1.0 + 0.5 * k / N)))
    enc("good_handheld_leuven_sensor_noise.mp4", sensor_noise(camera(leuven, handheld(leuven, 3)), 4), **x264(26))
    enc("good_pan_starry_grain_crf35.mp4", film_grain(camera(starry, pan(starry, 0.12)), 5), **x264(35))
    enc("good_pan_building_heavy_grain_crf20.mp4", film_grain(camera(building, pan(building, -0.1)), 6, sigma=9.0), **x264(20))
    enc("good_tilt_hubble_crf30.mp4", camera(hubble, lambda k: (hubble.shape[1] / 2, hubble.shape[0] * (0.35 + 0.3 * k / N), 1.0)), **x264(30))
    enc("good_street_640x480_crf30.mp4", (cv2.resize(f, (640, 480), interpolation=cv2.INTER_AREA) for f in street[100:160]), 10.0, **x264(30))
    street_pan = lambda: (f[40 + k // 2 : 40 + k // 2 + 432, 20 + k * 2 : 20 + k * 2 + 576] for k, f in enumerate(street25))  # noqa: E731
    enc("good_street_camera_pan.mp4", (cv2.resize(f, SIZE, interpolation=cv2.INTER_AREA) for f in street_pan()), **x264(26))
    enc("good_trailer_h264_crf26.mp4", (cv2.resize(f, (480, 352), interpolation=cv2.INTER_AREA) for f in resample(mega, mega_t, 23.976, 0.6, 3.4)), 23.976, **x264(26))

    # Defects, each made from real footage.
    enc("bad_fast_cuts.mp4", fast_cuts(street25, mega))
    street_all = [fit(f) for f in street]
    enc("bad_jump_cuts_street.mp4", jump_cuts(street_all, every=8, skip=30), 10.0)
    enc("bad_flashes.mp4", flashes(camera(building, pan(building, 0.15))))
    enc("bad_glitches.mp4", glitches([fit(f) for f in street25], 7))
    enc("bad_morphing.mp4", morph(["coffee.png", "rocket.jpg", "chelsea.png", "fruits.jpg", "astronaut.png"]))
    enc("bad_blocky_starved.mp4", camera(motor, pan(motor, 0.3)), **{"b": "25k", "maxrate": "25k", "bufsize": "50k", "preset": "medium"})
    enc("bad_blurred.mp4", (cv2.GaussianBlur(f, (0, 0), 3.5) for f in camera(leuven, pan(leuven, 0.15))))
    enc("bad_lowres_160x120.mp4", (cv2.resize(f, (160, 120), interpolation=cv2.INTER_AREA) for f in street[200:240]), 10.0)
    enc("bad_2p5fps_street.mp4", (fit(f) for f in street[300:400:4]), 2.5)
    zen_bg = fit(photo("coffee.png"))
    enc("bad_text_over_photo.mp4", (text_over(zen_bg, ZEN[:12], 17) for _ in range(N)))
    slide_img = slide()
    enc("bad_lecture_slide.mp4", (slide_img for _ in range(N)))
    enc("bad_noisy_screen.mp4", noisy_screen(9), **x264(23))
    still = fit(photo("rocket.jpg"))
    enc("bad_still_photo.mp4", (still for _ in range(N)))

    # A second batch: other photographs, seeds, strengths and codec settings. It was first run
    # as a held-out check of the thresholds chosen on the clips above (two misses there led
    # to two changes, see bench/RESULTS.md), so it is development data now, not held out.
    aero, leuven_b, graf, baboon = photo("aero3.jpg"), photo("leuvenB.jpg"), photo("graf3.png"), photo("baboon.jpg")
    enc("good2_pan_aero_crf32.mp4", camera(aero, pan(aero, 0.2)), **x264(32))
    enc("good2_pan_leuvenB_fast.mp4", camera(leuven_b, pan(leuven_b, -0.4, zoom=2.0)), **x264(26))
    enc("good2_handheld_graffiti_noise.mp4", sensor_noise(camera(graf, handheld(graf, 11, amp=9)), 12, read=5.0), **x264(24))
    enc("good2_zoom_baboon_grain.mp4", film_grain(camera(baboon, lambda k: (256, 256, 1.0 + 0.6 * k / N)), 13, sigma=7.0), **x264(22))
    enc("good2_street_late_crf26.mp4", (cv2.resize(f, (480, 360), interpolation=cv2.INTER_AREA) for f in street[600:660]), 10.0, **x264(26))
    enc("good2_trailer_last_shot_crf30.mp4", (cv2.resize(f, (480, 352), interpolation=cv2.INTER_AREA) for f in resample(mega, mega_t, 23.976, 8.5, 2.7)), 23.976, **x264(30))
    enc("bad2_blur2p5_aero.mp4", (cv2.GaussianBlur(f, (0, 0), 2.5) for f in camera(aero, pan(aero, 0.2))))
    enc("bad2_glitches_trailer.mp4", glitches([fit(f) for f in resample(mega, mega_t, FPS, 0.6, 3.4)], 21))
    enc("bad2_jump_cuts_street.mp4", jump_cuts([fit(f) for f in street[300:]], every=6, skip=20), 10.0)
    enc("bad2_3fps_slow_pan.mp4", camera(aero, pan(aero, 0.02, n=30), n=30), 3.0)
    enc("bad2_starved_leuvenB.mp4", camera(leuven_b, pan(leuven_b, 0.3, zoom=2.0)), **{"b": "30k", "maxrate": "30k", "bufsize": "60k", "preset": "medium"})
    enc("bad2_lowres_trailer_176x128.mp4", (cv2.resize(f, (176, 128), interpolation=cv2.INTER_AREA) for f in resample(mega, mega_t, 23.976, 0.6, 3.4)), 23.976)
    enc("bad2_text_over_fruits.mp4", (text_over(fit(photo("fruits.jpg")), ZEN[5:16], 18) for _ in range(N)))
    marker.write_text("ok\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", default="build/realset")
    p.add_argument("--force", action="store_true", help="rebuild even if OUT is complete")
    args = p.parse_args(argv)
    try:
        out = build(args.out, force=args.force)
    except RealsetMissing as e:
        print(f"realset: {e}", file=sys.stderr)
        return 2
    files = sorted(f for f in out.iterdir() if f.is_file() and not f.name.startswith("."))
    print(f"{len(files)} videos in {out}, {sum(f.stat().st_size for f in files) / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
