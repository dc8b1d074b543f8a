"""Load the models of the model-scoring stage: an open_clip image/text encoder and an
aesthetic head, from a hub id or a local path, or built tiny and random offline.

* CLIP: ``open_clip.create_model`` (github.com/mlfoundations/open_clip). OpenAI's CLIP
  weights were trained with QuickGELU (x * sigmoid(1.702 x)); open_clip only *warns* when an
  architecture without it gets those weights, and the embeddings come out wrong. So when the
  pretrained tag says ``quick_gelu`` we force it (``resolve_clip``), whatever name was given.
* Aesthetic head: the LAION improved aesthetic predictor
  (github.com/christophschuhmann/improved-aesthetic-predictor, "sac+logos+ava1-l14-linearMSE"):
  an MLP 768 -> 1024 -> 128 -> 64 -> 16 -> 1 with dropouts and *no* activations, on the
  L2-normalised ViT-L/14 image embedding; or the older LAION linear head
  (github.com/LAION-AI/aesthetic-predictor, ``sa_0_4_vit_b_32_linear.pth``: 512 -> 1 for
  ViT-B/32). Scores on the ~1-10 scale of the AVA/SAC ratings they were fitted to. Weights
  load from ``.pth`` (``torch.load(weights_only=True)``) or ``.safetensors``.
* ``tiny``: a small open_clip ``CLIP`` built from a custom config with embedding width 768, so
  the real head (and its state-dict keys) runs on it; random weights, seeded. Its scores are
  meaningless and everything downstream says so.

A model that cannot be found raises ``ModelNotFound`` with one line naming it and how to
supply it, before any work starts (``check_models``); never a hub traceback, never a fallback.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation.models.score_clip import TINY_MODEL, ModelsConfig
from curation.models.hub import MissingModel, Model

log = logging.getLogger(__name__)

TINY_SEED = 0
RANDOM = "random"  # models.clip_pretrained: the architecture at random weights (benchmarks), said loudly
# The tiny CLIP: real open_clip CLIP class, custom small towers, 768-d embedding (ViT-L/14's).
TINY_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 768,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
# State-dict keys of the improved aesthetic predictor (its nn.Sequential is `layers`).
MLP_HEAD_KEYS = tuple(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))


class ModelNotFound(RuntimeError):
    """A configured model is not where the config says; the message is one line."""


OPEN_CLIP_FILES = ("open_clip_config.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class ClipSpec:
    """What `create_model` is called with, resolved from the config (no weights touched)."""

    name: str
    pretrained: str | None  # tag, local file, or None (tiny / hf-hub)
    force_quick_gelu: bool
    tiny: bool


def resolve_clip(cfg: ModelsConfig) -> ClipSpec:
    """The architecture and weights a config asks for; QuickGELU forced when the weights need it."""
    if cfg.clip == TINY_MODEL:
        return ClipSpec(TINY_MODEL, None, True, True)
    if cfg.clip.startswith(("hf-hub:", "local-dir:")):
        return ClipSpec(cfg.clip, None, False, False)  # their own config carries quick_gelu
    import open_clip

    name = cfg.clip.replace("/", "-")
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise ModelNotFound(f"models.clip: {cfg.clip!r} is not an open_clip architecture (see open_clip.list_models())")
    tag_cfg = open_clip.get_pretrained_cfg(name, cfg.clip_pretrained) if cfg.clip_pretrained else {}
    needs_quick = bool(tag_cfg.get("quick_gelu")) or cfg.clip_pretrained == "openai"
    return ClipSpec(name, cfg.clip_pretrained or None, needs_quick and not model_cfg.get("quick_gelu", False), False)


# The LAION aesthetic heads by file name: GitHub files at a pinned commit, checked by sha256
# (fetched on first use into torch.hub's checkpoint folder, curation/models/hub.py).
_LAION = "https://github.com/LAION-AI/aesthetic-predictor/raw/6d122adad522ab246644d9dc1c6d7a3810ee255f/"
_IMPROVED = "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/6934dd81792f086e613a121dbce43082cb8be85e/"
KNOWN_HEADS: dict[str, tuple[str, str]] = {
    "sa_0_4_vit_b_32_linear.pth": (_LAION + "sa_0_4_vit_b_32_linear.pth", "c7b14cead230694acc7b9447974d3cad78003c72da032e402a303b6c2429e85f"),
    "sa_0_4_vit_b_16_linear.pth": (_LAION + "sa_0_4_vit_b_16_linear.pth", "8ad3923d7ecf019df20ecd2ab5542a3075fbba0278d239c0371345f3d7fcbde0"),
    "sa_0_4_vit_l_14_linear.pth": (_LAION + "sa_0_4_vit_l_14_linear.pth", "2cd4e60f4f24ae3bcd57b847b13c1f3ba27edc28cc1a7f9ce74ee9f421243cba"),
    "sac+logos+ava1-l14-linearMSE.pth": (_IMPROVED + "sac%2Blogos%2Bava1-l14-linearMSE.pth",
                                         "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"),
    "ava+logos-l14-linearMSE.pth": (_IMPROVED + "ava%2Blogos-l14-linearMSE.pth",
                                    "390a3aafaf3b37d57148f9b22f30556de38343064b7d915acfa80d3812b4c9ff"),
}


def clip_model(cfg: ModelsConfig) -> Model | None:
    """Where the CLIP weights come from (curation/models/hub.py); None for tiny or random weights.

    An open_clip tag is the file open_clip itself downloads for it (its ``hf_hub`` entry:
    ``open_clip_model.safetensors`` first, as open_clip prefers, then the ``.bin``; or its URL);
    ``hf-hub:org/repo`` the repo's open_clip files; a local file or folder is used as it is.
    Raises ModelNotFound for a tag the architecture does not have."""
    spec = resolve_clip(cfg)
    if spec.tiny or cfg.clip_pretrained == RANDOM:
        return None
    import open_clip

    if spec.name.startswith("local-dir:"):
        return Model("models.clip", spec.name.split(":", 1)[1], "local")
    if spec.name.startswith("hf-hub:"):
        return Model("models.clip", spec.name, "hf", repo=spec.name.split(":", 1)[1], allow=OPEN_CLIP_FILES)
    tag_cfg = open_clip.get_pretrained_cfg(spec.name, spec.pretrained or "") if spec.pretrained else {}
    if tag_cfg.get("hf_hub"):
        repo, filename = tag_cfg["hf_hub"].rstrip("/"), None
        if not tag_cfg["hf_hub"].endswith("/"):
            repo, filename = os.path.split(tag_cfg["hf_hub"])
        files = (filename,) if filename else ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
        return Model("models.clip", f"{cfg.clip}/{cfg.clip_pretrained}", "hf-file", repo=repo, files=files)
    if tag_cfg.get("url"):
        url = tag_cfg["url"]
        return Model("models.clip", f"{cfg.clip}/{cfg.clip_pretrained}", "url", url=url, filename=os.path.basename(url))
    if spec.pretrained and (Path(spec.pretrained).expanduser().is_file() or os.sep in spec.pretrained):
        return Model("models.clip_pretrained", str(Path(spec.pretrained).expanduser()), "local")
    raise ModelNotFound(
        f"models.clip_pretrained: {spec.pretrained!r} is neither an open_clip tag of {spec.name} "
        f"({', '.join(open_clip.list_pretrained_tags_by_model(spec.name)) or 'none'}) nor an existing file"
    )


def head_model(cfg: ModelsConfig) -> Model | None:
    """Where the aesthetic head comes from; None for tiny or no head. Raises ModelNotFound for a
    name that is neither a known LAION head, a URL, ``hf-hub:org/repo/file`` nor a file."""
    ref = cfg.aesthetic_head
    if not ref or ref == TINY_MODEL:
        return None
    if ref.startswith("hf-hub:"):
        repo, _, filename = ref.split(":", 1)[1].rpartition("/")
        return Model("models.aesthetic_head", ref, "hf-file", repo=repo, files=(filename,))
    if ref in KNOWN_HEADS:
        url, sha = KNOWN_HEADS[ref]
        return Model("models.aesthetic_head", ref, "url", url=url, sha256=sha, filename=ref)
    if ref.startswith(("https://", "http://")):
        return Model("models.aesthetic_head", ref, "url", url=ref, filename=os.path.basename(ref.split("?")[0]))
    if Path(ref).expanduser().is_file():
        return Model("models.aesthetic_head", str(Path(ref).expanduser()), "local")
    raise ModelNotFound(
        f"models.aesthetic_head: {ref!r} is not a file, and not a known LAION head ({', '.join(KNOWN_HEADS)}), a URL "
        "or hf-hub:org/repo/file; set it to \"\" for no aesthetic score"
    )


def models(cfg: ModelsConfig) -> list[Model]:
    """Every model the model-scoring stage loads (empty when it is off or tiny)."""
    if not cfg.enabled:
        return []
    return [m for m in (clip_model(cfg), head_model(cfg)) if m is not None]


def _fetch(m: Model | None) -> str | None:
    if m is None:
        return None
    try:
        return m.fetch()
    except MissingModel as e:
        raise ModelNotFound(str(e)) from None


def clip_checkpoint(cfg: ModelsConfig) -> str | None:
    """Local path of the CLIP weights, fetched on first use; None for tiny or random weights.
    Raises ModelNotFound (one line) when they cannot be had."""
    return _fetch(clip_model(cfg))


def head_file(cfg: ModelsConfig) -> str | None:
    """Local path of the aesthetic head, fetched on first use; None for tiny or no head."""
    return _fetch(head_model(cfg))


def check_models(cfg: ModelsConfig) -> None:
    """Fail at start-up (ModelNotFound, one line) when a configured model cannot be found."""
    for m in models(cfg):
        _fetch(m)


def device_and_precision(cfg: ModelsConfig) -> tuple[str, str]:
    """The torch device and the open_clip precision the stage runs CLIP in: ``auto`` device is
    cuda when available, else cpu; ``auto`` precision bf16 on a GPU, fp32 on the CPU."""
    import torch

    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.startswith("cuda") else "fp32")
    return device, precision


def tag_preprocess(cfg: ModelsConfig) -> dict[str, Any]:
    """The image preprocessing keys of the configured open_clip tag (mean, std, interpolation,
    resize_mode, ...: ``open_clip.get_pretrained_cfg``, no download); {} when
    ``clip_pretrained`` is no tag of the model (a file, ``random``) or for tiny/hf-hub/local-dir.

    open_clip's ``create_model(name, pretrained=tag)`` merges these over ``PreprocessCfg``'s
    defaults (OpenAI mean/std, bicubic, shortest side) only when it resolves the tag itself;
    given the downloaded file instead, it keeps the defaults, which are wrong for 58 of its 196
    tags (SigLIP: mean/std 0.5 and squash; laion2b ViT-L-14: mean/std 0.5; DFN ViT-H: squash).
    ``size`` is left out: open_clip takes it from the built model's ``visual.image_size``."""
    spec = resolve_clip(cfg)
    if spec.tiny or not spec.pretrained or spec.name.startswith(("hf-hub:", "local-dir:")):
        return {}
    import open_clip
    from open_clip.transform import merge_preprocess_dict

    tag_cfg = open_clip.get_pretrained_cfg(spec.name, spec.pretrained)
    return {k: v for k, v in merge_preprocess_dict({}, tag_cfg).items() if k != "size"}


def build_clip(cfg: ModelsConfig, load_weights: bool = True) -> Any:
    """The open_clip model for `cfg`, eval mode, on its device in its precision
    (``device_and_precision``). `load_weights=False` builds the architecture at random weights
    (tests, benchmarks); tiny is always random and seeded.

    Built by ``open_clip.create_model``, so open_clip's own semantics hold: fp16/bf16 cast the
    linear, conv and attention weights and keep LayerNorm (``LayerNormFp32``), the embeddings
    and ``logit_scale`` in fp32 (OpenAI's mixed precision; factory.py
    ``_set_model_device_and_precision``; for a timm image tower open_clip casts all but
    LayerNorm, and ``logit_scale`` is put back in fp32 here); ``model.visual.preprocess_cfg`` is what
    ``create_model_and_transforms(name, pretrained=tag)`` would preprocess with, also when
    the weights come from a local file or a cache path (``tag_preprocess``)."""
    import open_clip
    import torch

    spec = resolve_clip(cfg)
    device, precision = device_and_precision(cfg)
    common: dict[str, Any] = {"precision": precision, "device": device, "force_preprocess_cfg": tag_preprocess(cfg)}
    if spec.tiny:
        torch.manual_seed(TINY_SEED)
        # open_clip's factory on a custom config: model kwargs replace the base config's towers.
        model = open_clip.create_model("ViT-B-32", pretrained=None, **common, **TINY_CLIP_CFG)
        return model.eval()
    if not load_weights or cfg.clip_pretrained == RANDOM:
        if cfg.clip_pretrained == RANDOM:
            log.warning("models: %s at RANDOM weights (clip_pretrained=random): scores are meaningless", spec.name)
        model = open_clip.create_model(spec.name, pretrained=None, force_quick_gelu=spec.force_quick_gelu, load_weights=False, **common)
        return _fp32_logit_scale(model, None).eval()
    path = clip_checkpoint(cfg)
    if spec.name.startswith(("hf-hub:", "local-dir:")):
        model = open_clip.create_model(spec.name, **common)
        if spec.name.startswith("local-dir:"):
            path = spec.name.split(":", 1)[1]
    else:
        path = spec.pretrained if Path(spec.pretrained or "").is_file() else path
        model = open_clip.create_model(spec.name, pretrained=path, force_quick_gelu=spec.force_quick_gelu, **common)
    return _fp32_logit_scale(model, path).eval()


def _fp32_logit_scale(model: Any, checkpoint: str | None) -> Any:
    """`model` with ``logit_scale`` (and SigLIP's ``logit_bias``) in fp32, holding the
    checkpoint's fp32 values.

    open_clip's fp16/bf16 (OpenAI's recipe, ``convert_weights_to_lp``) leaves them fp32 for
    its own towers, but casts a model with a timm image tower (SigLIP, ...) whole
    (``model.to(dtype)``) before loading the weights into it, so the temperature would be the
    bf16 rounding of the checkpoint's (log 100 -> 98.86). They are read back from the file
    (one tensor each: safetensors or a memory-mapped torch zip)."""
    import torch

    low = [n for n in ("logit_scale", "logit_bias") if isinstance(getattr(model, n, None), torch.nn.Parameter) and getattr(model, n).dtype != torch.float32]
    if not low:
        return model
    if checkpoint and Path(checkpoint).is_dir():  # local-dir or a hub snapshot: the file open_clip loads from it
        import open_clip

        checkpoint = open_clip.factory._find_checkpoint_in_dir(Path(checkpoint))
    saved: dict[str, Any] = {}
    if checkpoint and str(checkpoint).endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(str(checkpoint), framework="pt") as f:
            saved = {n: f.get_tensor(n) for n in low if n in f.keys()}
    elif checkpoint and Path(checkpoint).suffix not in (".npz", ".npy"):  # big_vision .npz: open_clip converts those itself
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        state = state.get("state_dict", state)
        saved = {n: state.get(n, state.get(f"module.{n}")) for n in low}
    for n in low:
        p = getattr(model, n)
        value = saved.get(n)
        if value is None:  # random weights, or a checkpoint without it: the value as built
            if checkpoint:
                log.warning("models: %s not found in %s; kept open_clip's %s copy", n, checkpoint, p.dtype)
            value = p.data
        p.data = value.detach().reshape(p.shape).to(device=p.device, dtype=torch.float32)
    return model


def tokenizer(cfg: ModelsConfig) -> Any:
    """open_clip's tokenizer for the model (the BPE vocabulary ships in the open_clip wheel)."""
    import open_clip

    spec = resolve_clip(cfg)
    return open_clip.get_tokenizer("ViT-B-32" if spec.tiny else spec.name)


def uses_quick_gelu(model: Any) -> bool:
    """Whether the image tower's MLPs use QuickGELU (what OpenAI weights need)."""
    from open_clip.transformer import QuickGELU

    return any(isinstance(m, QuickGELU) for m in model.visual.modules())


def build_head(embed_dim: int, kind: str = "mlp") -> Any:
    """An untrained aesthetic head with the published layout and state-dict keys.

    kind "mlp": the improved aesthetic predictor (keys ``MLP_HEAD_KEYS``); "linear": LAION's
    first predictor, one ``nn.Linear(embed_dim, 1)`` (keys ``weight``, ``bias``)."""
    from torch import nn

    if kind == "linear":
        return nn.Linear(embed_dim, 1)

    class AestheticMLP(nn.Module):
        # Mirrors the published class: no activations between the linears (it was fitted so).
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(
                nn.Linear(embed_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
            )

        def forward(self, x):  # (N, embed_dim) L2-normalised -> (N, 1)
            return self.layers(x)

    return AestheticMLP()


def load_head_state(path: str | os.PathLike) -> dict:
    """The state dict of a head file: ``.safetensors``, or ``.pth``/``.pt``/``.bin`` through
    ``torch.load(weights_only=True)`` (never unpickles code)."""
    import torch

    p = str(path)
    if p.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(p)
    state = torch.load(p, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_head(cfg: ModelsConfig, embed_dim: int) -> Any | None:
    """The aesthetic head for an embedding of `embed_dim`, eval mode; None when not configured.

    Raises ModelNotFound (missing file) or ValueError (keys or widths that do not fit)."""
    import torch

    if not cfg.aesthetic_head:
        return None
    if cfg.aesthetic_head == TINY_MODEL:
        torch.manual_seed(TINY_SEED + 1)
        return build_head(embed_dim).eval()
    path = head_file(cfg)
    state = load_head_state(path)
    keys = set(state)
    if keys == set(MLP_HEAD_KEYS):
        head = build_head(state["layers.0.weight"].shape[1], "mlp")
    elif keys == {"weight", "bias"}:
        head = build_head(state["weight"].shape[1], "linear")
    else:
        raise ValueError(f"models.aesthetic_head {path}: not a LAION aesthetic head (keys {sorted(keys)[:6]}...)")
    in_dim = head.layers[0].in_features if hasattr(head, "layers") else head.in_features
    if in_dim != embed_dim:
        raise ValueError(f"models.aesthetic_head {path} takes {in_dim}-d embeddings; models.clip {cfg.clip!r} gives {embed_dim}-d")
    head.load_state_dict({k: v.float() for k, v in state.items()})
    return head.eval()
