"""Hostile inputs: media shaped like those in public bug reports of video tools.

Why one module: it is one table. Each maker is a row (a bug report's file and what a correct run
must find for it) and `make_hostile_corpus` lists them all with their expectations; split, a
file and the expectation that checks it would live apart.

Each maker writes one small file (or folder) with PyAV alone (no ffmpeg CLI needed) and
returns what a correct run must find for it. `make_hostile_corpus` writes them all into one
folder, with good files beside them, for the reliability tests (tests/flows/test_hostile.py).
Sizes and frame counts are kept small so the whole corpus builds in seconds.
"""

from __future__ import annotations

import os
import struct
import zlib
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import av
import cv2
import numpy as np

from curation.corpora.synthetic import moving, texture, write_audio_only, write_video

SIZE = (320, 240)
FAST = {"preset": "ultrafast"}


def encode(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float = 25.0,
    *,
    fmt: str | None = None,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    audio_s: float = 0.0,
    audio_codec: str = "aac",
    cover_art: bool = False,
    colour: dict | None = None,
    sar: Fraction | None = None,
    rotation: int = 0,
) -> Path:
    """Encode RGB frames with any codec/container PyAV has; optional silent audio of
    `audio_s` seconds, a video stream marked as cover art, colour metadata, a sample aspect
    ratio, a display rotation."""
    path = Path(path)
    frames = list(frames)
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], pix_fmt
        s.options = dict(FAST if options is None and codec == "libx264" else options or {})
        for k, v in (colour or {}).items():
            setattr(s.codec_context, k, v)
        if sar is not None:
            s.codec_context.sample_aspect_ratio = sar
        if rotation:
            s.set_display_rotation(rotation)
        if cover_art:
            s.disposition = av.stream.Disposition.attached_pic
        a = None
        if audio_s:
            a = c.add_stream(audio_codec, rate=48000)
            a.layout = "stereo"
        rng = (colour or {}).get("color_range")
        for f in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            if pix_fmt != "rgb24":
                vf = vf.reformat(format=pix_fmt, dst_color_range=rng, dst_colorspace=(colour or {}).get("colorspace"))
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
        if a is not None:
            _mux_silence(c, a, audio_s)
    return path


def _mux_silence(c, a, seconds: float) -> None:
    """Encode `seconds` of 48 kHz stereo silence on audio stream `a` of container `c`."""
    fs = a.codec_context.frame_size or 1024
    for start in range(0, int(48000 * seconds), fs):
        af = av.AudioFrame.from_ndarray(np.zeros((2, fs), np.float32), format="fltp", layout="stereo")
        af.sample_rate, af.pts = 48000, start
        for p in a.encode(af):
            c.mux(p)
    for p in a.encode():
        c.mux(p)


def fade(a: Iterable[np.ndarray], b: Iterable[np.ndarray], n_a: int, n_t: int, n_b: int, through_black: bool) -> list[np.ndarray]:
    """n_a frames of shot a, n_t transition frames, n_b frames of shot b: a dissolve (a and b
    mixed) or a fade out to black and in from black."""
    fa, fb = list(a), list(b)
    out = fa[:n_a]
    for k in range(n_t):
        x = (k + 1) / (n_t + 1)
        A, B = fa[n_a + k].astype(np.float32), fb[k].astype(np.float32)
        if through_black:
            mix = A * max(0.0, 1 - 2 * x) if x < 0.5 else B * min(1.0, 2 * x - 1)
        else:
            mix = A * (1 - x) + B * x
        out.append(np.clip(mix, 0, 255).astype(np.uint8))
    return out + fb[n_t : n_t + n_b]


def shots(lengths: list[int], size: tuple[int, int] = SIZE, seed: int = 0) -> list[np.ndarray]:
    """Consecutive moving shots of the given lengths, each a new texture (hard cuts between)."""
    out: list[np.ndarray] = []
    for k, n in enumerate(lengths):
        out += list(moving(n, size, (2.0, 0.0) if k % 2 == 0 else (0.0, 2.0), seed=seed * 100 + k + 1))
    return out


# ---- the table, one maker per row (each returns {file: expectation}) -------------


def row1_joined_ts(d: Path) -> dict:
    a = encode(d / "_a.ts", moving(75, SIZE, seed=1), fmt="mpegts")
    b = encode(d / "_b.ts", moving(75, SIZE, (0.0, 2.0), seed=2), fmt="mpegts")
    (d / "joined.ts").write_bytes(a.read_bytes() + b.read_bytes())
    a.unlink(), b.unlink()
    return {"joined.ts": {"status": "ok", "duration_s": 6.0, "fps": 25.0, "vfr": False, "clips": [(0, 75), (75, 150)]}}


def row2_long_audio(d: Path) -> dict:
    encode(d / "long_audio.mkv", moving(75, SIZE, seed=3), audio_s=8.0)
    encode(d / "long_audio.webm", moving(75, SIZE, seed=3), codec="libvpx-vp9", audio_s=8.0, audio_codec="libopus",
           options={"deadline": "realtime", "cpu-used": "8"})
    want = {"status": "ok", "duration_s": 3.0, "num_frames": 75, "clips": [(0, 75)]}
    return {"long_audio.mkv": want, "long_audio.webm": want}


def row3_raw_h264(d: Path) -> dict:
    p = encode(d / "raw.h264", moving(120, SIZE, seed=4), 30, fmt="h264")
    (d / "raw_h264_named.mp4").write_bytes(p.read_bytes())
    want = {"status": "ok", "fps": 30.0, "duration_s": 4.0, "clips": [(0, 120)]}
    return {"raw.h264": want, "raw_h264_named.mp4": want}


def row4_huge_jpeg(d: Path, side: int = 13400) -> dict:
    """A JPEG header claiming side x side (the pixels are a tiny real JPEG's, so the file
    stays small; what is refused is the size the header declares)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(texture(16, 16, 1)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    i = data.index(b"\xff\xc0")  # baseline SOF0: length(2) precision(1) height(2) width(2)
    data[i + 5 : i + 9] = struct.pack(">HH", side, side)
    (d / "huge.jpg").write_bytes(bytes(data))
    return {"huge.jpg": {"status": "error", "error_code": "too_large", "error_contains": "image too large"}}


def row5_size_change(d: Path) -> dict:
    """MKV whose frame size changes mid-stream (two encodes, packets copied into one stream)."""
    a = encode(d / "_a.h264", moving(75, SIZE, seed=5), fmt="h264")
    b = encode(d / "_b.h264", moving(75, (480, 270), (0.0, 2.0), seed=6), fmt="h264")
    with av.open(str(d / "_a.h264")) as ia, av.open(str(d / "_b.h264")) as ib, av.open(str(d / "size_change.mkv"), "w") as o:
        src = ia.streams.video[0]
        s = o.add_stream_from_template(src)
        s.time_base = Fraction(1, 1000)
        k = 0
        for inp in (ia, ib):
            for p in inp.demux(inp.streams.video[0]):
                if p.size == 0:
                    continue
                p.stream = s
                p.time_base = Fraction(1, 1000)
                p.pts = p.dts = k * 40
                p.duration = 40
                k += 1
                o.mux(p)
    a.unlink(), b.unlink()
    return {"size_change.mkv": {"status": "ok", "clips": [(0, 75), (75, 150)], "clip_sizes": [(320, 240), (480, 270)]}}


def row6_mid_gop_ts(d: Path) -> dict:
    p = encode(d / "_full.ts", moving(125, SIZE, seed=7), fmt="mpegts", options={"preset": "ultrafast", "g": "25"})
    data = p.read_bytes()
    skip = (len(data) // 188) // 5 * 188  # `dd bs=188 skip=N/5`: the first fifth of the packets
    (d / "mid_gop.ts").write_bytes(data[skip:])
    p.unlink()
    # 125 frames, a keyframe every 25: decoding starts at the first keyframe after the cut.
    return {"mid_gop.ts": {"status": "ok", "min_frames": 50, "min_clips": 1}}


def row7_cover_art(d: Path) -> dict:
    with av.open(str(d / "song_with_cover.mp4"), "w") as c:
        a = c.add_stream("aac", rate=48000)
        a.layout = "stereo"
        v = c.add_stream("mjpeg", rate=1)
        v.width, v.height, v.pix_fmt = 64, 64, "yuvj420p"
        v.disposition = av.stream.Disposition.attached_pic
        for p in v.encode(av.VideoFrame.from_ndarray(texture(64, 64, 2), format="rgb24").reformat(format="yuvj420p")):
            c.mux(p)
        for p in v.encode():
            c.mux(p)
        _mux_silence(c, a, 6.0)
    return {"song_with_cover.mp4": {"status": "error", "error_code": "no_video", "error_contains": "no video stream (only cover art)"}}


def row8_transitions(d: Path) -> dict:
    a, b = moving(80, SIZE, (2.0, 0.0), seed=8), moving(90, SIZE, (0.0, 2.0), seed=9)
    encode(d / "dissolve.mp4", fade(a, b, 60, 20, 70, through_black=False))
    a, b = moving(80, SIZE, (2.0, 0.0), seed=10), moving(90, SIZE, (0.0, 2.0), seed=11)
    encode(d / "fade_black.mp4", fade(a, b, 60, 20, 70, through_black=True))
    # The transition's frames and a margin around them (split.gradual_margin) go into no clip.
    want = {"status": "ok", "clips_within": [(0, 60), (80, 150)], "lose_at_most": 6}
    return {"dissolve.mp4": want, "fade_black.mp4": want}


def row9_short_shots(d: Path) -> dict:
    encode(d / "stub_start.mp4", shots([3, 97], seed=12))
    encode(d / "insert.mp4", shots([75, 5, 95], seed=13))
    return {"stub_start.mp4": {"status": "ok", "clips": [(3, 100)]}, "insert.mp4": {"status": "ok", "clips": [(0, 75), (80, 175)]}}


# ---- issue 18 (round 3): media kinds from public bug reports -------------------------------


def copy_cut(src: Path, dst: Path, start_s: float, duration_s: float) -> Path:
    """What `ffmpeg -ss START -i SRC -t DURATION -c copy DST` writes (checked byte for byte
    against FFmpeg 7's edit list and frames): packets from the keyframe before START, times
    shifted so START is 0 (the keyframe and the frames up to START go negative, and the MP4
    muxer writes an edit list that hides them), copied in decode order until the first whose
    *decode* time reaches DURATION, so the last B-frames are cut and the reference frames
    after them stay: the stream ends in a frame or two after a gap."""
    with av.open(str(src)) as i, av.open(str(dst), "w") as o:
        vs = i.streams.video[0]
        s = o.add_stream_from_template(vs)
        tb = vs.time_base
        packets = [p for p in i.demux(vs) if p.size]
        start, end = int(round(start_s / tb)), int(round(duration_s / tb))
        key = max(p.pts for p in packets if p.is_keyframe and p.pts <= start)
        first = next(k for k, p in enumerate(packets) if p.is_keyframe and p.pts == key)
        for p in packets[first:]:
            if p.dts - start >= end:
                break
            p.stream = s
            p.pts, p.dts = p.pts - start, p.dts - start
            o.mux(p)
    return dst


def row_copy_cut(d: Path) -> dict:
    """A stream-copy cut starting at a non-keyframe, 2 s of a 25 fps H.264 with B-frames."""
    # Three B-frames in every group, a B-pyramid (x264's default, fixed rather than adaptive).
    opts = {"preset": "veryfast", "g": "50", "bf": "3", "x264-params": "b-adapt=0"}
    src = encode(d / "_long.mp4", moving(150, SIZE, seed=34), options=opts)
    copy_cut(src, d / "copy_cut.mp4", 2.5, 2.0)
    src.unlink()
    # 1.92, 1.96, 2.04, 2.12: the two frames after the gaps are left out.
    return {"copy_cut.mp4": {"status": "ok", "fps": 25.0, "vfr": False, "num_frames": 50, "duration_s": 2.0, "clips": [(0, 50)]}}


def timed_pan(times: Iterable[float], size: tuple[int, int], speed: float, seed: int) -> Iterator[np.ndarray]:
    """A texture panning at `speed` px/s with a disc crossing it, each frame drawn at its own
    time: the picture moves with the clock, whatever the frame rate."""
    w, h = size
    base = texture(h, w, seed)
    for t in times:
        m = np.float32([[1, 0, speed * t], [0, 1, 0]])
        frame = cv2.warpAffine(base, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
        cv2.circle(frame, (int((w * 0.7 - speed * t * 0.5) % w), h // 2), max(4, h // 8), (230, 60, 40), -1)
        yield frame


def row_vfr_drop(d: Path) -> dict:
    """Phone footage whose rate drops from 30 to 15 fps mid-shot (low light), and a 0.4 s
    recording gap inside a 30 fps shot: each is one shot."""
    size = (480, 270)
    times = [k / 30 for k in range(75)] + [2.5 + k / 15 for k in range(37)]
    write_video(d / "vfr_drop.mp4", timed_pan(times, size, 120.0, 50), 30, frame_times=times, options=FAST)
    gap = [k / 30 for k in range(90)] + [3.4 + k / 30 for k in range(90)]
    write_video(d / "recording_gap.mp4", timed_pan(gap, size, 60.0, 51), 30, frame_times=gap, options=FAST)
    return VFR_EXPECT


def row_images_and_turned_text(d: Path) -> dict:
    """A 16-bit greyscale PNG and an 8-bit greyscale photograph (scikit-image's camera), a
    cut-out whose transparent third hides black, and a slide filmed sideways (text turned 90
    degrees, 2 s of video)."""
    from PIL import Image, ImageDraw, ImageFont
    from skimage import data

    camera = data.camera()
    Image.fromarray(camera.astype(np.uint16) * 257).save(d / "grey16.png")
    Image.fromarray(camera).save(d / "grey_photo.png")
    rgba = np.dstack([texture(240, 320, 37), np.full((240, 320), 255, np.uint8)])
    rgba[:, :110] = 0
    Image.fromarray(rgba, "RGBA").save(d / "cutout.png")
    rng = np.random.default_rng(2)
    words = "the quick brown fox jumps over a lazy dog while data flows through every stage".split()
    im = Image.new("RGB", (600, 336), (245, 245, 240))
    draw = ImageDraw.Draw(im)
    draw.text((20, 14), "Results and method", font=ImageFont.load_default(size=34), fill=(20, 40, 120))
    for y in range(70, 336 - 30, 36):
        draw.text((24, y), "- " + " ".join(rng.choice(words, 5)), font=ImageFont.load_default(size=24), fill=(25, 25, 25))
    sideways = np.ascontiguousarray(np.rot90(np.asarray(im), 1))
    encode(d / "sideways_slide.mp4", [sideways] * 50)
    photo = {"status": "ok", "not_tags": ["lecture", "low_quality"]}
    return {"grey16.png": photo, "grey_photo.png": photo, "cutout.png": {"status": "ok", "not_tags": ["low_quality"]},
            "sideways_slide.mp4": {"status": "ok", "tags": ["text_dominated"]}}


VFR_EXPECT = {"vfr_drop.mp4": {"status": "ok", "vfr": True, "clips": [(0, 112)]},
              "recording_gap.mp4": {"status": "ok", "clips": [(0, 180)]}}


# ---- the hostile corpus ------------------------------------------------------------------


def _png_header(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _mp4_moov_at_end(d: Path) -> Path:
    return encode(d / "moov_at_end.mp4", moving(60, SIZE, seed=20))  # PyAV's mp4 muxer writes moov last


def make_hostile_corpus(root: str | Path) -> tuple[dict[str, dict], dict[str, str]]:
    """Every hostile kind in one folder `root/in` plus good files; returns
    ({input path relative to root/in: expectation}, {kind: input path}). An expectation has
    `status` ("ok"/"error"), optionally `error_code`, `error_contains`, `clips`, `min_clips`,
    `clip_sizes` (each clip's (width, height) in the manifest), `fps`, `vfr`, `tags` (negative
    tags one of its clips must carry), `not_tags` (that none of its clips may carry).
    Inputs the folder walk cannot list (a symlink loop, an unreadable folder) are included
    as folders whose files must still be found exactly once."""
    root = Path(root)
    d = root / "in"
    d.mkdir(parents=True, exist_ok=True)
    expect: dict[str, dict] = {}
    kinds: dict[str, str] = {}

    def add(kind: str, found: dict) -> None:
        expect.update(found)
        kinds[kind] = next(iter(found))

    # good files the hostile ones sit beside
    write_video(d / "good.mp4", moving(75, SIZE, seed=30), 25, options=FAST)
    expect["good.mp4"] = {"status": "ok", "clips": [(0, 75)]}
    add("timestamps restart (joined MPEG-TS)", row1_joined_ts(d))
    add("audio longer than video", row2_long_audio(d))
    add("raw H.264 without timestamps", row3_raw_h264(d))
    add("image header too large", row4_huge_jpeg(d))
    add("frame size changes mid-stream", row5_size_change(d))
    add("MPEG-TS starting mid-GOP", row6_mid_gop_ts(d))
    add("stream-copy cut from a non-keyframe (edit list, trailing frames after a gap)", row_copy_cut(d))
    for kind, (name, want) in zip(("16-bit greyscale PNG", "greyscale photograph", "transparent PNG (black underneath)",
                                   "text turned 90 degrees (a screen filmed sideways)"), row_images_and_turned_text(d).items()):
        add(kind, {name: want})
    add("cover art only", row7_cover_art(d))
    for kind, (name, want) in zip(("frame rate drops mid-shot (30 to 15 fps)", "recording gap inside a shot (0.4 s)"),
                                  row_vfr_drop(d).items()):
        add(kind, {name: want})

    (d / "zero.mp4").write_bytes(b"")
    add("zero-byte", {"zero.mp4": {"status": "error", "error_code": "empty"}})
    full = (d / "good.mp4").read_bytes()
    moov = full.index(b"moov") - 4
    (d / "no_moov.mp4").write_bytes(full[:moov])
    add("truncated MP4 (moov missing)", {"no_moov.mp4": {"status": "error", "error_code": "truncated", "error_contains": "'moov'"}})
    # cut mid-mdat of a file whose moov is at its start: the index promises 4 s, the data stops
    with av.open(str(d / "_fs.mp4"), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt, s.options = SIZE[0], SIZE[1], "yuv420p", FAST
        for f in moving(100, SIZE, seed=21):
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = (d / "_fs.mp4").read_bytes()
    (d / "_fs.mp4").unlink()
    (d / "cut_mid_mdat.mp4").write_bytes(data[: len(data) // 2])
    add("truncated MP4 (cut mid-mdat)", {"cut_mid_mdat.mp4": {"status": "error", "error_code": "truncated"}})
    _mp4_moov_at_end(d)
    add("moov at the end", {"moov_at_end.mp4": {"status": "ok", "clips": [(0, 60)]}})
    (d / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    add("random bytes named .mp4", {"random.mp4": {"status": "error", "error_code": "not_media"}})
    (d / "text.mkv").write_text("not a video, just some words\n" * 50)
    add("text named .mkv", {"text.mkv": {"status": "error", "error_code": "not_media"}})
    write_audio_only(d / "audio_only.m4a", seconds=1.0)
    (d / "audio_only.mp4").write_bytes((d / "audio_only.m4a").read_bytes())
    (d / "audio_only.m4a").unlink()
    add("audio only", {"audio_only.mp4": {"status": "error", "error_code": "no_video"}})
    encode(d / "single_frame.mp4", moving(1, SIZE, seed=22))
    add("single frame", {"single_frame.mp4": {"status": "ok", "clips": []}})
    encode(d / "too_short.mp4", moving(20, SIZE, seed=23))
    add("shorter than the minimum clip", {"too_short.mp4": {"status": "ok", "clips": []}})
    times = np.cumsum(np.r_[0, np.where(np.arange(74) % 3 == 0, 0.06, 0.03)]).tolist()
    write_video(d / "vfr.mkv", moving(75, SIZE, seed=24), 25, frame_times=times, options=FAST)
    add("variable frame rate", {"vfr.mkv": {"status": "ok", "vfr": True, "min_clips": 1}})
    for r in (90, 180, 270):
        encode(d / f"rot{r}.mp4", moving(60, SIZE, seed=25), rotation=r)
        w, h = (SIZE[1], SIZE[0]) if r % 180 else SIZE
        add(f"rotation {r}", {f"rot{r}.mp4": {"status": "ok", "width": w, "height": h, "rotation": r, "clips": [(0, 60)]}})
    encode(d / "odd_size.mp4", moving(60, (321, 241), seed=26), pix_fmt="yuv444p", options={"preset": "ultrafast"})
    add("odd frame size", {"odd_size.mp4": {"status": "ok", "width": 321, "height": 241, "clips": [(0, 60)]}})
    encode(d / "one_px.mkv", [np.full((1, 1, 3), 128, np.uint8)] * 10, codec="ffv1", pix_fmt="yuv444p", options={})
    add("1 px frame", {"one_px.mkv": {"status": "error", "error_code": "too_small"}})
    strip = texture(10, 2400, 33)
    encode(d / "strip.mp4", [np.ascontiguousarray(np.roll(strip, 3 * k, axis=1)) for k in range(60)])
    add("2400x10 strip (too small for optical flow)", {"strip.mp4": {"status": "error", "error_code": "too_small",
                                                                     "error_contains": "too small to score"}})
    ramp = np.broadcast_to(np.linspace(0, 255, 7680, dtype=np.float32).astype(np.uint8)[None, :, None], (4320, 7680, 3))
    encode(d / "eight_k.mp4", [ramp] * 2, codec="mpeg4", options={"qscale": "31"})
    add("8K frame size", {"eight_k.mp4": {"status": "ok", "width": 7680, "height": 4320, "clips": []}})
    (d / "bomb.png").write_bytes(_png_header(100_000, 100_000))
    add("header needing tens of GB (image)", {"bomb.png": {"status": "error", "error_code": "too_large"}})
    # An AVI of raw video whose header claims 16000x16000: one frame is 384 MB of YUV (768 MB
    # as RGB), times the frames in flight in a threaded decoder and the prefetch queue: tens
    # of GB. Refused from the header by [decode] max_pixels, never decoded.
    p = encode(d / "_raw.avi", [np.zeros((16, 16, 3), np.uint8)] * 3, codec="rawvideo", pix_fmt="yuv420p", options={})
    data = bytearray(p.read_bytes())
    p.unlink()
    for tag, off in ((b"avih", 8 + 32), (b"strf", 8 + 4)):  # dwWidth/dwHeight; biWidth/biHeight
        i = data.index(tag) + off
        data[i : i + 8] = struct.pack("<ii", 16000, 16000)
    (d / "bomb.avi").write_bytes(bytes(data))
    add("header needing tens of GB (video)", {"bomb.avi": {"status": "error", "error_code": "too_large"}})
    codecs = {
        "MPEG-4 part 2": ("mpeg4.avi", "mpeg4", "yuv420p", {"qscale": "4"}),
        "VP9": ("vp9.webm", "libvpx-vp9", "yuv420p", {"deadline": "realtime", "cpu-used": "8"}),
        "MJPEG": ("mjpeg.avi", "mjpeg", "yuvj420p", {}),
        "ProRes": ("prores.mov", "prores_ks", "yuv422p10le", {"profile": "0"}),
        "FFV1": ("ffv1.mkv", "ffv1", "yuv420p", {}),
        "HEVC 10-bit": ("hevc10.mkv", "libx265", "yuv420p10le", {"preset": "ultrafast", "x265-params": "log-level=none"}),
    }
    for kind, (name, codec, pix, opts) in codecs.items():
        encode(d / name, moving(60, (160, 120), seed=27), codec=codec, pix_fmt=pix, options=opts)
        add(f"codec {kind}", {name: {"status": "ok", "clips": [(0, 60)]}})
    # A codec this build cannot decode: an AVI whose FourCC names no known codec.
    mj = encode(d / "_mj.avi", moving(30, (160, 120), seed=28), codec="mjpeg", pix_fmt="yuvj420p", options={})
    (d / "unknown_codec.avi").write_bytes(mj.read_bytes().replace(b"MJPG", b"QQQ9"))
    mj.unlink()
    add("codec the build cannot decode", {"unknown_codec.avi": {"status": "error", "error_code": "unsupported_codec"}})
    # corrupt frames mid-stream: garbage over some frames' data (an I-frame-only stream, so
    # the rest decodes)
    p = encode(d / "_corrupt.avi", moving(75, SIZE, seed=29), codec="mjpeg", pix_fmt="yuvj420p", options={})
    data = bytearray(p.read_bytes())
    p.unlink()
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    rng = np.random.default_rng(1)
    for k in (30, 31, 32):
        i = starts[k] + 400
        data[i : i + 2000] = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
    (d / "corrupt_frames.avi").write_bytes(bytes(data))
    add("corrupt frames mid-stream", {"corrupt_frames.avi": {"status": "ok", "min_clips": 1}})
    # a container over-reporting its frame count: AVI header says 10x the frames it has
    p = encode(d / "_count.avi", moving(60, (160, 120), seed=31), codec="mpeg4", options={"qscale": "4"})
    data = bytearray(p.read_bytes())
    p.unlink()
    i = data.index(b"avih") + 8 + 16  # dwTotalFrames
    (n,) = struct.unpack("<I", data[i : i + 4])
    data[i : i + 4] = struct.pack("<I", n * 10)
    j = data.index(b"strh") + 8 + 32  # the stream header's dwLength
    (n,) = struct.unpack("<I", data[j : j + 4])
    data[j : j + 4] = struct.pack("<I", n * 10)
    (d / "overcount.avi").write_bytes(bytes(data))
    add("container over-reports its frame count", {"overcount.avi": {"status": "error", "error_code": "truncated"}})
    # names
    for kind, name in (("name with spaces", "with spaces.mp4"), ("unicode name", "vidéo_日本.mp4"),
                       ("quotes in the name", "it's \"quoted\".mp4"), ("leading dash", "-rf.mp4"),
                       ("name starting with @", "@beach.mp4")):
        (d / name).write_bytes((d / "good.mp4").read_bytes())
        add(kind, {name: {"status": "ok", "clips": [(0, 75)]}})
    os.link(d / "good.mp4", d / "good_hardlink.mp4")
    add("the same file under two names", {"good_hardlink.mp4": {"status": "ok", "clips": [(0, 75)]}})
    # folders: a symlink loop, and an unreadable folder beside a readable one
    (d / "loop").mkdir()
    encode(d / "loop" / "inside.mp4", moving(60, SIZE, seed=32))
    os.symlink("..", d / "loop" / "parent")
    add("symlink loop", {"loop/inside.mp4": {"status": "ok", "clips": [(0, 60)]}})
    (d / "locked").mkdir()
    (d / "locked" / "hidden.mp4").write_bytes((d / "good.mp4").read_bytes())
    os.chmod(d / "locked", 0)
    kinds["unreadable folder"] = "locked"
    if os.geteuid() == 0:  # root reads any folder: its file is then an ordinary input
        expect["locked/hidden.mp4"] = {"status": "ok", "clips": [(0, 75)]}
    return expect, kinds
