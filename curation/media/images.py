"""Read an image as what every consumer takes: an (H, W, 3) uint8 RGB array as displayed.

One function for all of them (analysis, the model-stage frames, the extracted JPEG that is
captioned, sharded and trained on, report thumbnails), so none can see another picture:

* orientation: the EXIF Orientation tag applied (a phone photo stored sideways);
* bit depth: 16-bit greyscale (PNG/TIFF, Pillow's ``I;16*`` modes and the 32-bit ``I`` mode it
  widens them to) scaled 0-65535 -> 0-255. Pillow's ``convert("RGB")`` clips those values at
  255 instead, so a 16-bit photograph came out pure white. Floating-point images (``F``) are
  taken as 0-1 when they lie within it, else as 0-255;
* alpha: transparent pixels composited over white (``BACKGROUND``), never their hidden RGB;
* grey, palette, CMYK, ...: Pillow's own conversion to RGB.
"""

from __future__ import annotations

import fsspec
import numpy as np
from PIL import Image, ImageOps

# Transparent areas are composited over white. Transparency in image collections is mostly
# cut-outs, logos, stickers and line art made to sit on a (white) page, and white is what a
# viewer showed them on; vLLM's image loader (rgba_to_rgb) composites on white by default,
# so a captioning VLM sees the same picture. Black, the hidden RGB of most transparent
# pixels, would hide dark content (black text on a transparent ground vanishes) and reads as
# letterbox bars to the border measure.
BACKGROUND = (255, 255, 255)

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def _to_uint8(a: np.ndarray, full_scale: float) -> np.ndarray:
    return np.clip(np.rint(a.astype(np.float64) * (255.0 / full_scale)), 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image) -> np.ndarray:
    """An opened Pillow image (any mode, orientation not yet applied) as (H, W, 3) uint8 RGB."""
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        grey = _to_uint8(np.asarray(img), 65535.0)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=-1))
    if mode == "F":
        a = np.nan_to_num(np.asarray(img, np.float32))
        grey = _to_uint8(a, 1.0 if a.size and a.min() >= 0.0 and a.max() <= 1.0 else 255.0)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=-1))
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        ground = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return np.asarray(Image.alpha_composite(ground, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def read_image(uri: str) -> np.ndarray:
    """The image at `uri` (local path or fsspec URL) as (H, W, 3) uint8 RGB, as displayed."""
    with fsspec.open(uri, "rb") as f:
        with Image.open(f) as img:
            return to_rgb(img)
