"""Each heuristic negative tag fires on a synthetic case made to have its flaw, and stays
below its threshold on a natural-looking moving clip."""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
import pytest

from curation.corpora import synthetic
from curation.core.config import load_config
from curation.core.schema import NEG_TAGS, neg_column
from curation.analysis.tag_negatives import FrameJumps

CFG = load_config()  # the cpu profile's defaults: thresholds and tag settings under test
THRESHOLDS = CFG.decide.tag_thresholds
SIZE = (480, 270)  # short side 270: above low_res_short_side, so low_res does not decide low_quality
N = 75  # 3 s at 25 fps


def blurred_letterboxed(n: int, size: tuple[int, int], bar_frac: float = 0.2, sigma: float = 4.0) -> Iterator[np.ndarray]:
    """A blurry picture inside sharp-edged black bars."""
    h = size[1]
    bar = int(h * bar_frac)
    for frame in synthetic.letterboxed(n, size, bar_frac, seed=6):
        frame[bar : h - bar] = cv2.GaussianBlur(frame[bar : h - bar], (0, 0), sigma)
        yield frame


# tag -> (case name, frames factory, config overrides). Each case has the tag's flaw and
# otherwise looks like the natural clip: same size and frame rate, moving where it can.
FIRE_CASES = {
    "over_edited": [
        # Jump cuts every 8 frames inside one static shot: walkers teleport by 15 frames of
        # their walk, too little for a shot boundary (the split cuts at jumps of 20-30 frames:
        # those are edits it finds), enough for the jumps measure.
        ("jump_cuts", lambda: synthetic.jump_cuts(150, SIZE, every=8, skip=15, seed=1), None),
    ],
    "incoherent_motion": [("teleporting_blobs", lambda: synthetic.incoherent(N, SIZE, seed=2), None)],
    "low_quality": [
        ("blurred", lambda: synthetic.blurred(N, SIZE, sigma=4.0, seed=3), None),
        ("low_res_160x90", lambda: synthetic.moving(N, (160, 90), (1.0, 0.0), seed=3), None),
        ("letterboxed", lambda: synthetic.letterboxed(N, SIZE, bar_frac=0.2, seed=3), None),
        ("blurred_letterboxed", lambda: blurred_letterboxed(N, SIZE), None),
    ],
    "lecture": [("slide", lambda: synthetic.text_slide(N, SIZE, seed=4), None)],
    "text_dominated": [("slide", lambda: synthetic.text_slide(N, SIZE, seed=4), None)],
    "noisy_screen": [("filmed_screen", lambda: synthetic.noisy_screen(N, SIZE, seed=5), None)],
}


@pytest.fixture(scope="module")
def score_case(make_video, analyze):
    cache: dict[str, dict] = {}

    def run(name, frames, overrides=None) -> dict:
        if name not in cache:
            cache[name] = analyze(make_video(f"tag_{name}", frames()), overrides)
        return cache[name]

    return run


@pytest.fixture(scope="module")
def natural(score_case) -> dict:
    row = score_case("natural", lambda: synthetic.moving(N, SIZE, (3.0, 1.0), seed=8))
    assert len(row["clips"]) == 1
    return row["clips"][0]


def test_all_tags_have_cases():
    assert set(FIRE_CASES) == set(NEG_TAGS)


@pytest.mark.parametrize(
    "tag,name,frames,overrides",
    [(t, *c) for t, cases in FIRE_CASES.items() for c in cases],
    ids=[f"{t}-{c[0]}" for t, cases in FIRE_CASES.items() for c in cases],
)
def test_tag_fires_on_its_case(score_case, tag, name, frames, overrides):
    row = score_case(name, frames, overrides)
    assert row["clips"], f"{name}: no clips"
    scores = [c[neg_column(tag)] for c in row["clips"]]
    assert min(scores) >= THRESHOLDS[tag], scores


@pytest.mark.parametrize("tag", NEG_TAGS)
def test_tag_quiet_on_natural_motion(natural, tag):
    assert natural[neg_column(tag)] < THRESHOLDS[tag]


def test_low_quality_fires_for_the_right_reason(score_case, natural):
    """Each low_quality case trips the measure it was made for, not another one."""
    cases = {c[0]: c for c in FIRE_CASES["low_quality"]}

    def clip(name: str) -> dict:
        return score_case(*cases[name])["clips"][0]

    assert natural["sharpness"] >= CFG.tags.sharp_ref
    assert clip("blurred")["sharpness"] < CFG.tags.sharp_ref / 2
    # Inside bars: the bars' edges must not make a blurry picture look sharp.
    assert clip("blurred_letterboxed")["sharpness"] < CFG.tags.sharp_ref / 2
    assert clip("letterboxed")["sharpness"] >= CFG.tags.sharp_ref
    assert clip("letterboxed")["border_frac"] == pytest.approx(0.4, abs=0.03)
    assert natural["border_frac"] == 0.0
    assert clip("low_res_160x90")["sharpness"] >= CFG.tags.sharp_ref


def test_subtitle_line_is_not_text_dominated(score_case, natural):
    row = score_case("subtitled", lambda: synthetic.subtitled(N, SIZE, (3.0, 1.0), seed=8))
    (clip,) = row["clips"]
    assert clip["text_area"] > 0.01  # the line is found...
    assert clip[neg_column("text_dominated")] < THRESHOLDS["text_dominated"]  # ...but is not dominant
    assert natural["text_area"] < 0.005


def test_over_edited_describes_the_clip_not_the_source(score_case, natural):
    """A source cut every second yields one-shot clips: none of them is over-edited, however
    high the source's cut rate. Editing inside a clip (jump cuts) is."""
    row = score_case(
        "cut_every_second",
        lambda: synthetic.with_cuts(150, SIZE, range(25, 150, 25), speed=2.0, seed=1),
        {"split": {"min_clip_s": 0.5}},  # small clips so the 1 s shots are scored
    )
    assert row["cut_rate_per_min"] == pytest.approx(5 / 6 * 60)  # 5 cuts in 6 s
    assert len(row["clips"]) == 6
    assert all(c[neg_column("over_edited")] == 0.0 for c in row["clips"])
    (name, frames, overrides), = FIRE_CASES["over_edited"]
    (jumpy,) = score_case(name, frames, overrides)["clips"]
    assert jumpy[neg_column("over_edited")] >= THRESHOLDS["over_edited"]
    assert natural[neg_column("over_edited")] == 0.0


def test_low_quality_fires_on_a_low_frame_rate(make_video, analyze, natural):
    """A 3 fps source cannot teach motion: low_quality fires on frame rate alone."""
    row = analyze(make_video("tag_3fps", synthetic.moving(12, SIZE, (24.0, 8.0), seed=8), fps=3.0))
    (clip,) = row["clips"]
    assert clip["fps"] == pytest.approx(3.0, rel=0.05)
    assert clip["sharpness"] >= CFG.tags.sharp_ref and clip["border_frac"] == 0.0
    assert clip[neg_column("low_quality")] >= THRESHOLDS["low_quality"]
    assert natural[neg_column("low_quality")] < THRESHOLDS["low_quality"]


def _thumbs(kind: str, n: int = 40) -> list[np.ndarray]:
    """64x36 Y/U/V thumbnails of a texture drifting 1 px/frame, with one event at frame 20."""
    base = synthetic.texture(36, 200, 3)
    out = []
    for i in range(n):
        x = i
        if kind == "jump" and i >= 20:
            x += 60  # the shot jumps ahead and goes on from there
        if kind == "onset":
            x = 0 if i < 20 else 6 * (i - 20)  # still, then moving fast
        t = np.ascontiguousarray(base[:, x : x + 64]).copy()
        if kind == "flash" and i == 20:
            t = np.clip(t.astype(np.int16) + 60, 0, 255).astype(np.uint8)
        out.append(t)
    return out


@pytest.mark.parametrize("kind,want", [("steady", (0, 0)), ("jump", (1, 0)), ("flash", (0, 1)), ("onset", (0, 0))])
def test_frame_jumps_tell_cuts_flashes_and_motion_apart(kind, want):
    jumps = FrameJumps()
    for t in _thumbs(kind):
        jumps.update(t)
    assert jumps.count(0, 40) == want
    # The jump at a window's first frame is the cut it starts at: not counted.
    assert jumps.count(20, 40)[0] == 0


def test_frame_jumps_prune_keeps_what_count_needs():
    full, pruned = FrameJumps(), FrameJumps()
    for i, t in enumerate(_thumbs("jump")):
        full.update(t)
        pruned.update(t)
        if i == 15:
            pruned.prune(10)
    assert pruned.count(10, 40) == full.count(10, 40) == (1, 0)
    with pytest.raises(ValueError, match="pruned"):
        pruned.count(2, 40)


def test_frame_measures_count_what_their_definitions_say():
    """The colour count is the number of 16-level RGB bins (v >> 4) covering 95% of every
    other pixel, whichever way the samples are gathered (even sides: OpenCV; odd: numpy);
    the text area is the same whichever labelling algorithm finds the components."""
    from curation.analysis.tag_negatives import measure_frame, text_area
    from tests.curation.real_images import natural_frames

    def colours(rgb):
        q = (rgb[::2, ::2] >> 4).astype(np.int64)
        counts = np.sort(np.bincount((q[..., 0] << 8 | q[..., 1] << 4 | q[..., 2]).ravel(), minlength=4096))[::-1]
        return int(np.searchsorted(np.cumsum(counts), 0.95 * counts.sum()) + 1)

    for rgb in natural_frames(3, size=(270, 360)):
        for crop in (rgb, rgb[:269, :359], rgb[:270, :359]):
            crop = np.ascontiguousarray(crop)
            assert measure_frame(crop).colours == colours(crop)
    page = np.full((270, 480), 235, np.uint8)
    for k in range(8):  # eight lines of "text"
        cv2.putText(page, "videomill text line %d" % k, (10, 30 + 30 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 20, 2)
    h, w = page.shape
    grad = cv2.morphologyEx(page, cv2.MORPH_GRADIENT, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    _, bw = cv2.threshold(grad, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    closed = cv2.morphologyEx(bw, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (max(3, w // 40), 1)))
    _, _, stats, _ = cv2.connectedComponentsWithStats(closed, connectivity=8)  # OpenCV's default algorithm
    bw_, bh, px = (stats[1:, i].astype(np.int64) for i in (cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT, cv2.CC_STAT_AREA))
    line = (bh >= 4) & (bh <= h * 0.15) & (bw_ >= 2.5 * bh) & (bw_ >= w * 0.05) & (px >= 0.45 * bw_ * bh)
    assert line.sum() >= 8
    assert text_area(page) == min(1.0, float((bw_ * bh)[line].sum()) / float(h * w)) > 0.2
