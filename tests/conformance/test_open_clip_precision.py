"""Conformance: CLIP in fp16/bf16 is open_clip's own mixed precision, with the checkpoint's
zero-shot temperature.

Reference: ``open_clip.create_model(name, precision=...)`` (OpenAI's recipe,
factory.py ``_set_model_device_and_precision``: linear/conv/attention weights in low
precision, LayerNorm as ``LayerNormFp32`` with fp32 weights). Ours: ``build_clip`` and
``ScoreWithClip.setup``. One deliberate difference: for a timm image tower (SigLIP) open_clip
casts the whole model, ``logit_scale`` included, before loading the weights; we keep
``logit_scale``/``logit_bias`` fp32 with the checkpoint's values, as its own towers do.
(open_clip leaves a timm tower's own LayerNorms in bf16/fp16: only its ``LayerNormFp32``, the
text tower's, go back to fp32. We follow it there.)
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach a hub

open_clip = pytest.importorskip("open_clip")
import torch  # noqa: E402
from open_clip.transformer import LayerNormFp32  # noqa: E402

from clip_fixtures import local_clip, photos  # noqa: E402, F401 (fixtures)
from curation.models import clip_models as cm  # noqa: E402
from curation.core.config import load_config  # noqa: E402
from curation.models.score_clip import ScoreWithClip  # noqa: E402

SCALARS = ("logit_scale", "logit_bias")


def dtypes(model) -> dict[str, torch.dtype]:
    return {n: p.dtype for n, p in model.named_parameters()}


def layer_norms(model) -> list[torch.nn.LayerNorm]:
    return [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name", ["ViT-B-32-quickgelu", "ViT-B-16-SigLIP"])
def test_low_precision_is_open_clips_own(name, precision):
    cfg = dataclasses.replace(load_config(profile="cpu").models, clip=name, clip_pretrained="random", device="meta", precision=precision)
    low = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.device("meta"):
        ours = cm.build_clip(cfg)
        ref = open_clip.create_model(name, pretrained=None, precision=precision, device="meta")
    got, want = dtypes(ours), dtypes(ref)
    assert {n: d for n, d in got.items() if n not in SCALARS} == {n: d for n, d in want.items() if n not in SCALARS}
    assert all(got[n] == torch.float32 for n in SCALARS if n in got)
    # open_clip's own towers: every LayerNorm is LayerNormFp32 with fp32 weights.
    native = [ours.text if hasattr(ours, "text") else ours] + ([] if name.endswith("SigLIP") else [ours.visual])
    for tower in native:
        lns = layer_norms(tower)
        assert lns and all(type(ln) is LayerNormFp32 and ln.weight.dtype == ln.bias.dtype == torch.float32 for ln in lns)
    linears = [m for m in ours.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.dtype == low for m in linears)


@pytest.mark.parametrize("tower", ["native", "timm"])
def test_zero_shot_temperature_is_the_checkpoints_under_bf16(local_clip, tower, photos):
    """logit_scale = log(100) in the checkpoint: the stage's temperature is its fp32 exp(),
    100.0000076 (a bf16 cast first would give 98.86, which open_clip's own bf16 does for a
    timm tower)."""
    name = local_clip(tower, None, math.log(100))
    base = dataclasses.replace(load_config(profile="tiny").models, clip=name, clip_pretrained="", aesthetic_head="", device="cpu")
    fp32_exp = float(torch.tensor(math.log(100), dtype=torch.float32).exp())
    bf16_exp = float(torch.tensor(math.log(100)).to(torch.bfloat16).float().exp())
    assert abs(fp32_exp - 100.0) < 1e-5 and abs(bf16_exp - 98.86) < 0.01
    stage = ScoreWithClip(dataclasses.replace(base, precision="bf16"))
    stage.setup()
    assert stage.dtype == torch.bfloat16
    assert stage.logit_scale == fp32_exp
    assert stage.model.logit_scale.dtype == torch.float32
    reference = open_clip.create_model(name, precision="bf16")
    if tower == "timm":  # open_clip's own bf16 rounds it; that is what we undo
        assert float(reference.logit_scale.detach().float().exp()) == bf16_exp
        assert stage.model.logit_bias.dtype == torch.float32 and float(stage.model.logit_bias.detach()) == -10.0
    assert {n: d for n, d in dtypes(stage.model).items() if n not in SCALARS} == {n: d for n, d in dtypes(reference).items() if n not in SCALARS}
    assert all(ln.weight.dtype == torch.float32 for ln in layer_norms(stage.model) if isinstance(ln, LayerNormFp32))
    # The bf16 forward runs on real photographs and stays close to the fp32 one.
    full = ScoreWithClip(dataclasses.replace(base, precision="fp32"))
    full.setup()
    assert full.logit_scale == fp32_exp
    frames = list(photos.values())
    e16, e32 = stage.encode(frames), full.encode(frames)
    assert np.isfinite(e16).all() and e16.shape == e32.shape == (len(frames), 64)
    np.testing.assert_allclose(np.linalg.norm(e16, axis=1), 1.0, atol=1e-2)
    assert (e16 * e32).sum(1).min() > 0.98  # cosine of bf16 to fp32 embeddings (random tiny towers)
