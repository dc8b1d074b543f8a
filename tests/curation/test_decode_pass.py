"""The analysis pass's cheaper paths (curation/media/decode.py, curation/analysis/analyze.py,
curation/core/config.py `frames_plan`) must give what the plain paths give."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import av
import numpy as np
import pytest

from curation.media import decode
from curation.core.config import load_config
from curation.media.decode import ThumbReader, _Reorder, iter_frames, reorder_depth
from curation.analysis.score_motion import MotionScorer
from tests.curation.real_images import natural_frames

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")


def test_thumbnails_of_packed_rgb_frames_are_what_swscale_gives():
    """A codec that decodes to RGB (cinepak, PNG, QuickTime RLE): the thumbnail is converted
    from the strided samples (BT.601 limited range, as swscale writes yuv420p), not by
    converting the whole frame first (a fresh swscale context per frame cost 0.25 ms)."""
    for rgb in natural_frames(4, size=(240, 320)):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        got = ThumbReader(64)(frame).astype(int)
        want = ThumbReader(64)(frame.reformat(format="yuv420p")).astype(int)
        assert got.shape == want.shape == (60, 80, 3)
        d = np.abs(got - want)
        assert d[..., 0].max() <= 1  # luma: the same samples, rounding apart
        assert d[..., 1:].mean() < 1.0 and np.percentile(d[..., 1:], 99) <= 3  # chroma: a 2x2 mean vs swscale's filter
        bgr = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[..., ::-1]), format="bgr24")
        assert (ThumbReader(64)(bgr) == ThumbReader(64)(frame)).all()
        for fmt in ("rgba", "bgra", "argb", "abgr", "rgb0", "bgr0", "0rgb", "0bgr"):  # 4-byte pixels: the same within rounding
            assert np.abs(ThumbReader(64)(frame.reformat(format=fmt)).astype(int) - got).max() <= 1, fmt


def test_no_decoded_frame_is_held_without_b_frames():
    assert reorder_depth(0) == 0
    assert reorder_depth(1) == 4 and reorder_depth(2) == 6 and reorder_depth(9) == decode.REORDER_DEPTH
    r = _Reorder(0.04, lambda: 0)
    frames = [_Stamped(i, t) for i, t in enumerate([0.0, 0.04, 0.08])]
    out = [r.push(f) for f in frames]
    assert out == [[(f, f.time)] for f in frames]  # each frame out, with its own stamp, as it came in
    r = _Reorder(0.04, lambda: 2)  # with a delay: held two frames, stamps sorted
    frames = [_Stamped(i, t) for i, t in enumerate([0.0, 0.08, 0.04, 0.12])]
    out = [x for f in frames for x in r.push(f)] + r.flush()[0]
    assert [t for _, t in out] == [0.0, 0.04, 0.08, 0.12] and [f.tag for f, _ in out] == [0, 1, 2, 3]


class _Stamped:
    """Stands in for an av.VideoFrame in _Reorder (it reads `.time` only)."""

    def __init__(self, tag, time):
        self.tag, self.time = tag, time


@pytest.mark.skipif(not (OPENCV_DATA / "Megamind.avi").exists(), reason="needs Debian's opencv-doc (.ci/run installs it)")
def test_a_shallow_reorder_times_real_decode_order_stamps_as_the_deep_one_did():
    """Megamind.avi (MPEG-4 Part 2, packed B-frames in AVI: frames in display order stamped
    in decode order): the reorder sized from the decoder's delay (4 frames here) gives every
    frame the time the 16-frame reorder gave it."""
    def times(depth) -> list[float]:
        real = decode._Reorder
        decode._Reorder = lambda frame_s, _depth: real(frame_s, depth)
        try:
            with decode.open_container(str(OPENCV_DATA / "Megamind.avi")) as c:
                return [t for _, t in decode.decoded_frames(c)]
        finally:
            decode._Reorder = real

    with av.open(str(OPENCV_DATA / "Megamind.avi")) as c:
        assert reorder_depth(c.streams.video[0].codec_context.has_b_frames) == 4
    deep, shallow = times(lambda: decode.REORDER_DEPTH), times(lambda: 4)
    assert len(deep) == len(shallow) == 270 and deep == shallow
    assert all(b > a for a, b in zip(shallow, shallow[1:]))


def test_model_frames_follow_what_the_model_stages_read():
    """[frames] unset: the pass samples what its consumers read, at least one frame per
    shortest clip; set, it wins."""
    cpu = load_config(profile="cpu")
    assert cpu.frames_plan() == (0.5, 2)  # CLIP at 0.5 fps x 2, OCR 2 frames, a 2 s shortest clip
    gpu = load_config(profile="gpu")
    assert gpu.frames_plan() == (gpu.models.sample_fps, gpu.models.max_frames)
    off = load_config(profile="cpu", overrides={"models": {"enabled": False}, "split": {"min_clip_s": 4.0}})
    assert off.frames_plan() == (0.25, 1)
    piped = load_config(profile="cpu", overrides={"caption": {"frame_source": "pipeline", "fps": 2.0, "max_frames": 12}})
    assert piped.frames_plan() == (2.0, 12)
    assert load_config(profile="cpu", overrides={"frames": {"fps": 3.0, "max_frames": 5}}).frames_plan() == (3.0, 5)
    with pytest.raises(ValueError, match="frames.fps"):
        load_config(profile="cpu", overrides={"frames": {"fps": 0}})


def test_motion_pairs_combine_to_the_clip_score(make_video):
    """The pass scores one pair per motion sample as samples arrive and sums a window's
    pairs when it closes: the same scores as scoring the window's samples at once."""
    photo = natural_frames(1, size=(180, 320))[0]
    path = make_video("pairs", [np.roll(photo, 3 * k, axis=1) for k in range(10)])
    frames = [f for f in iter_frames(str(path), thumb_width=64, work_short_side=96, motion_fps=100.0, tags_short_side=96, tags_fps=1e-3)]
    grays, times = [f.gray for f in frames], [f.t for f in frames]
    m = MotionScorer(load_config(profile="cpu").motion)
    whole = m.score(grays, times)
    pairs = [m.pair(a, b, ta, tb) for a, b, ta, tb in zip(grays, grays[1:], times, times[1:])]
    # The same up to float rounding: OpenCV's threaded kernels (the stage runs with one thread,
    # this test with OpenCV's default) sum in whatever order their threads finish.
    assert dataclasses.astuple(m.combine(pairs)) == pytest.approx(dataclasses.astuple(whole), rel=1e-9)
    assert whole.motion_score > 0.05  # a pan of 3 px a frame
    assert m.combine([]).motion_score is None


def test_frames_handed_off_in_batches_arrive_in_order_and_before_an_error():
    """`run_ahead` hands items over `batch` at a time: every item arrives, in order, and the
    items before a failure arrive before it. A hung decoder still fails within the stall
    timeout; the frames it held unsent are lost with the source, which fails anyway (with
    `batch=1`, as extraction uses it, they arrive first)."""
    import threading
    import time

    from curation.media.container import MediaError

    assert list(decode.run_ahead(lambda: (x for x in range(40)), stall_timeout_s=5.0, batch=16)) == list(range(40))

    def breaks():
        yield from range(5)
        raise ValueError("corrupt packet")

    got = []
    with pytest.raises(ValueError, match="corrupt packet"):
        for x in decode.run_ahead(breaks, stall_timeout_s=5.0, batch=16):
            got.append(x)
    assert got == list(range(5))

    release = threading.Event()

    def hangs():
        yield from range(3)
        release.wait(30)
        yield 3

    try:
        for batch in (16, 1):
            got, t0 = [], time.monotonic()
            with pytest.raises(MediaError) as e:
                for x in decode.run_ahead(hangs, stall_timeout_s=1.0, batch=batch):
                    got.append(x)
            assert e.value.code == "timeout" and time.monotonic() - t0 < 10
        assert got == [0, 1, 2]
    finally:
        release.set()
