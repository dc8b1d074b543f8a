"""Fixtures of the open_clip conformance tests (imported by them; not a conftest.py, which
tests/conformance shares with the captioning conformance tests): real photographs and tiny
local open_clip models.

* photos: scikit-image's camera photographs (skimage.data, offline) at their own sizes and
  aspects, plus a portrait, a 16:9 crop, the analysis pass's short side 336 and an upscale;
* local_clip: an open_clip ``local-dir:`` model folder (open_clip_config.json + safetensors),
  tiny and random, with a chosen image tower (open_clip's own ViT, or a timm ViT as SigLIP
  uses), preprocess config and ``logit_scale``: what ScoreWithClip loads offline through
  open_clip's own factory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}
TOWERS = {
    "native": {"embed_dim": 64, "quick_gelu": True, "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32}},
    # timm image tower, as open_clip's SigLIP configs (custom text tower, logit_bias)
    "timm": {"embed_dim": 64, "init_logit_bias": -10, "custom_text": True,
             "vision_cfg": {"image_size": 224, "timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False, "timm_pool": "avg", "timm_proj": "linear"}},
}


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real RGB uint8 photographs, name -> (H, W, 3), non-square, of several sizes."""
    import cv2
    from skimage import data

    coffee, chelsea, rocket = data.coffee(), data.chelsea(), data.rocket()  # 400x600, 300x451, 427x640
    return {
        "coffee_400x600": coffee,
        "chelsea_300x451": chelsea,
        "rocket_427x640": rocket,
        "coffee_portrait_600x400": np.ascontiguousarray(np.rot90(coffee)),
        "rocket_16x9_360x640": np.ascontiguousarray(rocket[30:390]),
        "coffee_336x504": cv2.resize(coffee, (504, 336), interpolation=cv2.INTER_AREA),
        "chelsea_upscale_150x226": cv2.resize(chelsea, (226, 150), interpolation=cv2.INTER_AREA),
    }


@pytest.fixture(scope="session")
def local_clip(tmp_path_factory):
    """make(tower, preprocess_cfg, logit_scale) -> 'local-dir:PATH' of a tiny random open_clip model."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    made: dict[tuple, str] = {}

    def make(tower: str = "native", preprocess_cfg: dict | None = None, logit_scale: float = math.log(100)) -> str:
        key = (tower, json.dumps(preprocess_cfg, sort_keys=True), logit_scale)
        if key not in made:
            d = Path(tmp_path_factory.mktemp(f"open_clip_{tower}"))
            cfg = {"model_cfg": {**TOWERS[tower], "text_cfg": TINY_TEXT}, "preprocess_cfg": preprocess_cfg or {}}
            (d / "open_clip_config.json").write_text(json.dumps(cfg))
            torch.manual_seed(0)
            model = open_clip.create_model(f"local-dir:{d}")  # fp32, random (no weights in the folder yet)
            with torch.no_grad():
                model.logit_scale.fill_(logit_scale)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "open_clip_model.safetensors"))
            made[key] = f"local-dir:{d}"
        return made[key]

    return make
