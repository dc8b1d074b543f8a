"""Real images for the model-scoring tests: photographs and rendered text slides.

* natural: the photographs scikit-image ships (skimage.data: astronaut, coffee, chelsea,
  rocket, ...; real camera images, offline), cropped and flipped into 16:9 frames;
* text: slides and documents rendered with PIL in the DejaVu fonts matplotlib ships, with
  varied layouts, sizes and colours (lecture slides, pages of text, title cards).
Labels are certain by construction: `text` frames are dominated by text, `natural` ones have none.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "cat", "colorwheel")
WORDS = ("model", "video", "data", "training", "diffusion", "the", "and", "results", "figure", "loss", "scale",
         "attention", "frame", "lecture", "theorem", "proof", "network", "gradient", "batch", "method")


def _fonts() -> list[str]:
    import matplotlib

    d = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return [str(d / f) for f in ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf")]


def natural_frames(n: int, size: tuple[int, int] = (336, 600), seed: int = 0) -> list[np.ndarray]:
    """n RGB uint8 frames (H, W) cut from scikit-image's photographs."""
    import cv2
    from skimage import data

    rng = np.random.default_rng(seed)
    photos = []
    for name in PHOTOS:
        img = getattr(data, name)()
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        photos.append(np.ascontiguousarray(img[..., :3]).astype(np.uint8))
    h, w = size
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        ih, iw = img.shape[:2]
        s = rng.uniform(0.6, 1.0)
        ch, cw = int(min(ih, iw * h / w) * s), int(min(iw, ih * w / h) * s)
        y, x = rng.integers(0, ih - ch + 1), rng.integers(0, iw - cw + 1)
        crop = img[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=cv2.INTER_AREA))
    return out


def text_frames(n: int, size: tuple[int, int] = (336, 600), seed: int = 0) -> list[np.ndarray]:
    """n RGB uint8 frames (H, W) of rendered text: slides, pages, title cards."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    fonts = _fonts()
    h, w = size
    out = []
    for i in range(n):
        bg = tuple(int(v) for v in (rng.integers(200, 256, 3) if i % 3 else rng.integers(0, 60, 3)))
        fg = tuple(255 - v for v in bg)
        im = Image.new("RGB", (w, h), bg)
        d = ImageDraw.Draw(im)
        px = int(rng.integers(18, 34))
        font = ImageFont.truetype(fonts[i % len(fonts)], px)
        y = int(rng.integers(8, 30))
        if i % 4 == 0:  # a title
            big = ImageFont.truetype(fonts[(i + 1) % len(fonts)], px + 14)
            d.text((20, y), " ".join(rng.choice(WORDS, 3)).title(), fill=fg, font=big)
            y += px + 28
        while y < h - px - 8:
            bullet = "- " if i % 2 else ""
            d.text((20 + (14 if bullet else 0), y), bullet + " ".join(rng.choice(WORDS, int(rng.integers(4, 8)))), fill=fg, font=font)
            y += int(px * rng.uniform(1.3, 1.7))
        out.append(np.asarray(im))
    return out
