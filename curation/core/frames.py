"""The frames a clip carries to the model stages: decoded once, never written.

The analysis pass (curation/analysis/analyze.py) samples RGB frames of each clip at
``frames.fps`` (capped at ``frames.max_frames``; both default to what the model stages read,
``RunConfig.frames_plan``; scaled so the short side is ``frames.short_side``, never
upscaled) and puts them on the clip row. Model stages
(aesthetic/CLIP scoring, OCR, captioning) read them from there instead of decoding the
source again; they travel through Ray's object store and are dropped
(``drop_transient``) before a manifest part is written.

Columns (all transient, see ``TRANSIENT_COLUMNS``):

* ``frames``: ``binary``, the C-contiguous bytes of a ``uint8`` array of shape
  ``(K, H, W, 3)``, RGB. K >= 1 for a scored clip; null when the clip has none.
* ``frames_shape``: ``list<int32>`` of length 4, ``[K, H, W, 3]``.
* ``frames_t_s``: ``list<float64>`` of length K, presentation time of each frame in
  seconds from the start of the source.

Raw bytes rather than an Arrow tensor extension type: Parquet never sees these columns,
and raw bytes cross Ray's object store without conversion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa

from curation.core.config_loader import check_positive


@dataclass(frozen=True, kw_only=True)
class FramesConfig:
    """RGB frames the analysis pass hands to model stages (this module's columns).

    Each sampled frame costs a colour conversion and scaling in the analysis pass (~0.7 ms at
    336 px from SD video, as much as decoding it), so by default the pass samples what its
    consumers read and no more (RunConfig.frames_plan): the CLIP stage's `models.sample_fps`
    and `models.max_frames`, OCR's `models.ocr_frames`, and the caption stage's rate when it
    takes the pipeline's frames (`caption.frame_source = "pipeline"`); at least one frame per
    shortest clip (`1 / split.min_clip_s`), as the tag samples."""

    fps: float | None = None  # sampling rate; None: the consumers' (see above)
    max_frames: int | None = None  # cap per clip, evenly spread; None: the consumers' largest
    short_side: int = 336  # scaled to this short side, never upscaled; stages resize further

    def __post_init__(self) -> None:
        check_positive(self, "short_side")
        for k in ("fps", "max_frames"):
            if getattr(self, k) is not None and getattr(self, k) <= 0:
                raise ValueError(f"frames.{k} must be > 0 (or unset: what the model stages read), got {getattr(self, k)}")


FRAMES = "frames"
FRAMES_SHAPE = "frames_shape"
FRAMES_T = "frames_t_s"
TRANSIENT_COLUMNS: tuple[str, ...] = (FRAMES, FRAMES_SHAPE, FRAMES_T)


def frame_fields() -> list[pa.Field]:
    """The Arrow fields of the transient frame columns, to append to a clip-row schema."""
    return [
        pa.field(FRAMES, pa.binary()),
        pa.field(FRAMES_SHAPE, pa.list_(pa.int32())),
        pa.field(FRAMES_T, pa.list_(pa.float64())),
    ]


def pack_frames(frames: np.ndarray | Sequence[np.ndarray], times_s: Sequence[float]) -> dict:
    """Row values for one clip's frames.

    frames: (K, H, W, 3) uint8 RGB, or a sequence of K (H, W, 3) uint8 arrays of one size.
    times_s: K presentation times in seconds. Raises ValueError on a shape mismatch.
    """
    arr = np.ascontiguousarray(np.stack(frames) if not isinstance(frames, np.ndarray) else frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (K, H, W, 3), got {arr.dtype} {arr.shape}")
    if len(times_s) != arr.shape[0]:
        raise ValueError(f"{arr.shape[0]} frames but {len(times_s)} timestamps")
    return {FRAMES: arr.tobytes(), FRAMES_SHAPE: list(arr.shape), FRAMES_T: [float(t) for t in times_s]}


def unpack_frames(batch: pa.Table, i: int) -> tuple[np.ndarray, list[float]] | None:
    """Row ``i``'s frames as a read-only (K, H, W, 3) uint8 array and their times; None when absent."""
    raw = batch.column(FRAMES)[i]
    if not raw.is_valid:
        return None
    shape = tuple(batch.column(FRAMES_SHAPE)[i].as_py())
    arr = np.frombuffer(raw.as_buffer(), dtype=np.uint8).reshape(shape)
    return arr, batch.column(FRAMES_T)[i].as_py()


def drop_transient(table: pa.Table) -> pa.Table:
    """The table without the frame columns: what gets written."""
    present = [c for c in TRANSIENT_COLUMNS if c in table.column_names]
    return table.drop_columns(present) if present else table
