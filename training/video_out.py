"""Write sample videos (validation, benchmarks) as H.264 MP4 with PyAV, atomically."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 8, crf: int = 18) -> Path:
    """`frames`: (F, H, W, 3) uint8 RGB. Odd sizes are cropped by one pixel (H.264 needs even)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f, h, w, _ = frames.shape
    h2, w2 = h - h % 2, w - w % 2
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with av.open(str(tmp), mode="w", format="mp4") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w2, h2, "yuv420p"
        s.options = {"crf": str(crf)}
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:h2, :w2]), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    os.replace(tmp, path)
    return path
