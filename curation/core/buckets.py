"""Training buckets: which (resolution, frame count) a clip is trained at.

A video diffusion trainer batches clips of one shape, so the shards are grouped by bucket
and the trainer reads one bucket per batch. A bucket is a resolution from the table below
(CogVideoX 1.0 trains at 720x480 and 49 frames; the 1.5 models at 16:9 sizes up to 1360x768
and 81 frames) plus, for video, a frame count.

Assignment, in this order:

1. **Aspect**: the resolutions whose aspect ratio is nearest the clip's in log space (so 2:1
   and 1:2 are equally far from 1:1). Resolutions within `ASPECT_TOL` of the nearest count as
   the same aspect (1024x576 and 1360x768 are both 16:9 to 0.4%).
2. **Size** among those: the largest resolution that needs no upscaling, else the smallest
   (upscaling less is better than upscaling more).
3. **Frames** (video only): the largest frame bucket <= the clip's frame count, so every clip
   of bucket `_f49` has at least 49 frames and the trainer never pads. A clip shorter than the
   smallest frame bucket gets no bucket (the shard writer leaves it out and says why).

Images go to the image resolutions (`media = "image"`) by the same aspect and size rules.
Names are filesystem-safe: `720x480_f49`, `image_1024x576`. This module is pure Python so
the trainer can import it without the curation stack.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

# Log-aspect distance under which two resolutions count as the same aspect (about 2%).
ASPECT_TOL = 0.02

# The VAE downsamples 8x and the transformer patches 2x2, so sizes are multiples of 16;
# it compresses time 4x after the first frame, so frame counts are 4k+1.
SIZE_MULTIPLE = 16
MEDIA = ("video", "image")


@dataclass(frozen=True, kw_only=True)
class Resolution:
    width: int
    height: int
    media: str = "video"  # "video" | "image": which clips may use this resolution

    def __post_init__(self) -> None:
        for f in ("width", "height"):
            v = getattr(self, f)
            if not isinstance(v, int) or v <= 0 or v % SIZE_MULTIPLE:
                raise ValueError(f"shard.resolutions: {f} must be a positive multiple of {SIZE_MULTIPLE}, got {v!r}")
        if self.media not in MEDIA:
            raise ValueError(f"shard.resolutions: media must be one of {MEDIA}, got {self.media!r}")

    @property
    def log_aspect(self) -> float:
        return math.log(self.width / self.height)


DEFAULT_RESOLUTIONS: tuple[Resolution, ...] = (
    Resolution(width=720, height=480),  # CogVideoX 1.0 (3:2)
    Resolution(width=480, height=720),  # its portrait transpose
    Resolution(width=1024, height=576),  # 16:9
    Resolution(width=1360, height=768),  # 16:9, CogVideoX 1.5's largest
    Resolution(width=1024, height=576, media="image"),
)
# 8N+1 counts: 49 is CogVideoX 1.0's clip length, 81 the 1.5 models'; 17 and 33 keep the
# 2-6 s clips the splitter makes at 8.5-24 fps.
DEFAULT_FRAME_BUCKETS: tuple[int, ...] = (17, 33, 49, 81)


def check_frame_buckets(frames: Sequence[int]) -> tuple[int, ...]:
    """Sorted frame buckets; each must be 4k+1 (the VAE's temporal compression)."""
    out = tuple(sorted(set(frames)))
    for n in out:
        if not isinstance(n, int) or n < 1 or (n - 1) % 4:
            raise ValueError(f"shard.frame_buckets: {n!r} is not a frame count of the form 4k+1")
    return out


def bucket_name(res: Resolution, frames: int | None) -> str:
    if res.media == "image":
        return f"image_{res.width}x{res.height}"
    return f"{res.width}x{res.height}_f{frames}"


_NAME = re.compile(r"(?:(image)_)?(\d+)x(\d+)(?:_f(\d+))?\Z")


def parse_bucket(name: str) -> tuple[Resolution, int | None]:
    """The inverse of `bucket_name`: (resolution, frames or None for images)."""
    m = _NAME.match(name)
    if m is None or bool(m.group(1)) == bool(m.group(4)):
        raise ValueError(f"not a bucket name: {name!r}")
    media = "image" if m.group(1) else "video"
    res = Resolution(width=int(m.group(2)), height=int(m.group(3)), media=media)
    return res, int(m.group(4)) if m.group(4) else None


def choose_resolution(width: int, height: int, resolutions: Sequence[Resolution]) -> Resolution | None:
    """Nearest aspect first, then the largest size needing no upscaling (else the smallest)."""
    if not resolutions or not width or not height:
        return None
    aspect = math.log(width / height)
    nearest = min(abs(r.log_aspect - aspect) for r in resolutions)
    same = [r for r in resolutions if abs(r.log_aspect - aspect) <= nearest + ASPECT_TOL]
    fits = [r for r in same if r.width <= width and r.height <= height]
    # (area, width, height) keys make ties between equal areas deterministic.
    if fits:
        return max(fits, key=lambda r: (r.width * r.height, r.width, r.height))
    return min(same, key=lambda r: (r.width * r.height, r.width, r.height))


def choose_frames(num_frames: int, frame_buckets: Sequence[int]) -> int | None:
    """The largest frame bucket the clip can fill; None when it is shorter than all of them."""
    fitting = [n for n in frame_buckets if n <= num_frames]
    return max(fitting) if fitting else None


def assign_bucket(
    media_type: str, width: int, height: int, num_frames: int | None, resolutions: Sequence[Resolution], frame_buckets: Sequence[int]
) -> tuple[str | None, str | None]:
    """(bucket name, None) or (None, reason the clip has no bucket)."""
    media = "image" if media_type == "image" else "video"
    res = choose_resolution(width, height, [r for r in resolutions if r.media == media])
    if res is None:
        return None, f"no {media} resolution in shard.resolutions" if width and height else "unknown size"
    if media == "image":
        return bucket_name(res, None), None
    frames = choose_frames(num_frames or 0, frame_buckets)
    if frames is None:
        return None, f"{num_frames} frames, fewer than the smallest frame bucket ({min(frame_buckets)})"
    return bucket_name(res, frames), None
