"""CLIP's image preprocessing for a batch of frames, in torch, with open_clip's semantics.

What a CLIP checkpoint expects is open_clip's inference transform for its tag
(``open_clip.image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)``,
open_clip/transform.py), applied to one PIL image at a time:

* ``resize_mode`` ``shortest`` (square size S): torchvision ``Resize(S)``: short side to S,
  long side ``int(S * long / short)`` (truncated), then ``CenterCrop``; non-square (h, w):
  open_clip's ``ResizeKeepRatio`` (sides ``round(side / min(H/h, W/w))``, always bicubic:
  open_clip does not pass the configured interpolation there), then ``CenterCrop``;
* ``longest``: ``ResizeKeepRatio(longest=1)`` (sides ``round(side / max(H/h, W/w))``), then
  ``CenterCropOrPad`` with ``fill_color`` (0-255) on the short side;
* ``squash``: ``Resize((h, w))``, aspect ratio not kept;
* crops start at ``int(round((side - out) / 2))`` (torchvision ``center_crop``), pads put
  ``(out - side) // 2`` before and the rest after (open_clip ``center_crop_or_pad``);
* ``interpolation`` bicubic or bilinear, antialiased (PIL resampling); ``ToTensor`` (/255);
  ``Normalize(mean, std)``.

Why not call that transform per frame: the frames are already a uint8 batch (on the GPU when
the stage runs there); PIL would take each one back to the host and through Python, one image
at a time on one core, which caps a GPU actor at the speed of one CPU core (here, one core:
3.5 ms per 336x600 frame through open_clip's PIL transform, 1.1 ms through this path on CPU).
So the same steps run on the whole batch where it is.

PIL resamples in two separable passes (libImaging/Resample.c), rounding to uint8 after each;
``F.interpolate(..., antialias=True)`` uses the same kernels (bicubic a=-0.5, support scaled
by the downscale factor) but in one float pass, which differs from PIL by up to 9 grey levels
where bicubic overshoot is clipped in between (12-20% of values off on photographs). Doing
the two passes in PIL's order with its rounding brings it to at most 2 levels on under 0.7%
of values (tests/conformance/test_open_clip_preprocess.py measures it).
"""

from __future__ import annotations

from typing import Any

# The fields of open_clip.transform.PreprocessCfg this module implements (the conformance
# test fails if open_clip adds one).
PREPROCESS_KEYS = ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")


def _pair(size: Any) -> tuple[int, int]:
    return (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) else (int(size), int(size))


def resized_size(h: int, w: int, cfg: dict[str, Any]) -> tuple[int, int]:
    """(height, width) in pixels the resize step of open_clip's transform makes of an h x w image.

    shortest/square: torchvision Resize's ``int(S * long / short)``; shortest/non-square and
    longest: open_clip ResizeKeepRatio's ``round(side / ratio)``; squash: the target size."""
    th, tw = _pair(cfg["size"])
    mode = cfg.get("resize_mode") or "shortest"
    if mode == "squash":
        return th, tw
    if mode == "shortest" and th == tw:
        if h <= w:
            return th, int(th * w / h)
        return int(th * h / w), th
    if mode not in ("shortest", "longest"):
        raise ValueError(f"resize_mode {mode!r} is not shortest, longest or squash")
    rh, rw = h / th, w / tw
    ratio = max(rh, rw) if mode == "longest" else min(rh, rw)
    return round(h / ratio), round(w / ratio)


def _pillow_vertical_first(h: int, w: int, size: tuple[int, int]) -> bool:
    """Whether PIL resizes h x w to `size` vertical pass first: since Pillow 13 (PR #9549,
    "if height is scaled down significantly more than width, resize vertically first") when the
    height shrinks by more than twice what the width shrinks (measured on Pillow 13.0: exact
    on 300 random shapes and on the ties); before, always horizontal first."""
    return _PILLOW_MAJOR >= 13 and size[0] < h and h - size[0] > 2 * (w - size[1])


def _pillow_major() -> int:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version("pillow").split(".")[0])
    except PackageNotFoundError:  # no PIL here: nothing to match, keep the newest order
        return 13


_PILLOW_MAJOR = _pillow_major()


def _resample(x, size: tuple[int, int], mode: str):
    """PIL's resize of an (N, 3, H, W) batch to `size` (h, w): two separable antialiased
    passes in PIL's order, each rounded half-up to a uint8 level and clipped, as PIL does; a
    pass whose side does not change is skipped (PIL skips it too).

    x: uint8 (CPU: torch's uint8 kernels round like PIL, and on channels-last frames run ~10x
    faster than float) or float32 levels 0-255 (CUDA has no uint8 antialiased kernels: float
    passes, each rounded back to a level)."""
    import torch
    import torch.nn.functional as F

    def one_pass(y, hw):
        if tuple(y.shape[-2:]) == hw:
            return y
        y = F.interpolate(y, size=hw, mode=mode, antialias=True, align_corners=False)
        if y.dtype == torch.uint8:
            return y
        return torch.floor(y.add_(0.5)).clamp_(0.0, 255.0)

    h, w = x.shape[-2:]
    if _pillow_vertical_first(h, w, size):
        return one_pass(one_pass(x, (size[0], w)), size)
    return one_pass(one_pass(x, (h, size[1])), size)


def _crop_or_pad(x, size: tuple[int, int], fill: int):
    """Centre crop to (h, w), padding first with level `fill` (0-255) where the image is
    smaller (open_clip center_crop_or_pad / torchvision center_crop offsets)."""
    import torch.nn.functional as F

    th, tw = size
    h, w = x.shape[-2:]
    if th > h or tw > w:
        pw, ph = max(tw - w, 0), max(th - h, 0)
        x = F.pad(x, (pw // 2, (pw + 1) // 2, ph // 2, (ph + 1) // 2), value=fill)
        h, w = x.shape[-2:]
    top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return x[..., top : top + th, left : left + tw]


def preprocess_frames(frames, cfg: dict[str, Any], *, uint8_kernels: bool | None = None):
    """CLIP input of a batch of same-sized frames, as open_clip's inference transform for `cfg`.

    frames: (N, H, W, 3) uint8 torch tensor (RGB, any device). cfg: an open_clip preprocess
    config (``model.visual.preprocess_cfg``: size int or (h, w), mean, std, interpolation,
    resize_mode, fill_color). Returns (N, 3, h, w) float32 on the frames' device, normalised
    ``(x / 255 - mean) / std``. `uint8_kernels`: resample in uint8 (default: on CPU; CUDA has
    no such kernels) or in float rounded to levels. Semantics and sources: the module docstring."""
    import torch

    if cfg.get("mode", "RGB") != "RGB":
        raise ValueError(f"preprocess mode {cfg['mode']!r}: only RGB is supported")
    size = _pair(cfg["size"])
    mode = cfg.get("resize_mode") or "shortest"
    # open_clip: 'bilinear' is bilinear, anything else ('bicubic', 'random') bicubic; its
    # non-square shortest resize (ResizeKeepRatio) is built without the interpolation: bicubic.
    interp = "bilinear" if cfg.get("interpolation") == "bilinear" and not (mode == "shortest" and size[0] != size[1]) else "bicubic"
    x = frames.permute(0, 3, 1, 2)  # channels-last in memory, as the frames come
    if not (x.device.type == "cpu" if uint8_kernels is None else uint8_kernels):
        x = x.float()
    x = _resample(x, resized_size(x.shape[-2], x.shape[-1], cfg), interp)
    if mode != "squash":  # torchvision's CenterCrop pads with 0; only `longest` pads with fill_color
        x = _crop_or_pad(x, size, int(cfg.get("fill_color") or 0) if mode == "longest" else 0)
    # ToTensor then Normalize, in their order, on the output pixels only
    mean, std = (v if isinstance(v, (tuple, list)) else (v,) * 3 for v in (cfg["mean"], cfg["std"]))  # open_clip: a scalar is per channel
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return x.float().div_(255.0).sub_(mean_t).div_(std_t)
