"""Model scoring with CLIP: one image-encoder forward per sampled frame feeds three things.

* **Aesthetic score**: the LAION aesthetic head on the L2-normalised image embedding
  (curation/models/clip_models.py), per frame; per clip the mean, the minimum and the 10th
  percentile over its frames (Cosmos-Curate filters on the minimum at 1 fps, Open-Sora on the
  mean of 3 frames). ~1-10 scale.
* **Zero-shot tags** ``zs_<tag>``: for each negative tag a few positive and negative prompts,
  encoded once in ``setup()``. Per frame, softmax over all of the tag's prompts of
  ``logit_scale * cosine`` (CLIP's own zero-shot classifier, Radford et al. 2021, with the
  model's learned temperature); the score is the probability mass on the positive prompts,
  averaged over the clip's frames: in [0, 1], 0.5 = undecided between the prompt sets.
* **Embedding**: the mean of the clip's frame embeddings, L2-normalised, fp16, as the
  ``embedding`` column (``fixed_size_list<halffloat>``). The flow moves it into the side
  file ``OUT/manifest/embeddings/`` keyed by ``clip_id`` (dedup and the tag probe read it
  there; a re-decide never recomputes it) and it is never part of the clip manifest.

Frames come from the clip row (curation/core/frames.py): of the carried frames, ~``sample_fps``
per second, at most ``max_frames``. Frames of several clips, of any sizes, are batched into
forwards of ``frames_per_forward``. Preprocessing is open_clip's transform for the model's tag
(``model.visual.preprocess_cfg``: resize mode, interpolation, size, mean/std), done on each
batch in torch where the frames are instead of per image in PIL (curation/models/preprocess_clip.py).
The model runs in open_clip's own precision handling (curation/models/clip_models.py build_clip).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from curation.core.config_loader import check_positive
from curation.core.frames import FRAMES, FRAMES_SHAPE, FRAMES_T, unpack_frames
from curation.core import schema
from curation.core.stage import Stage


TINY_MODEL = "tiny"  # [models] clip / aesthetic_head: random-initialised, built offline, untrained


@dataclass(frozen=True, kw_only=True)
class ModelsConfig:
    """Model scoring (ScoreWithClip below, ScoreText in curation/models/score_text.py): one CLIP
    forward per sampled frame feeds the aesthetic score, the zero-shot tags and the clip embedding.

    ``clip`` is an open_clip architecture (``open_clip.list_models()``), ``hf-hub:org/repo``,
    or ``tiny``; ``clip_pretrained`` an open_clip tag (``openai``) or a local checkpoint file.
    ``aesthetic_head`` is a local ``.pth``/``.safetensors`` file, ``hf-hub:org/repo/file``,
    ``tiny``, or empty (no aesthetic score). A model that cannot be found stops the run at
    start-up (curation/models/clip_models.py: ModelNotFound)."""

    # CLIP scoring (aesthetic, zero-shot tags, embeddings -> dedup and the tag probe), in every
    # profile; the weights are fetched on first use (curation/models/hub.py). The cpu profile's cost,
    # measured on a 2-core VM (bench/RESULTS.md, "CLIP on the cpu profile"): ViT-B/32 ~110 ms
    # of one core per 224 px frame against ~0.14-0.25 s to decode and analyse a clip of the
    # opencv-doc videos, and seconds per clip for its SmolVLM2 captions. At 1 fps x 8 frames
    # analysis + CLIP + OCR ran at 0.08 of the analysis pass's clip rate, at 0.5 fps x 2 frames
    # (the cpu profile, below) at 0.37: small beside captioning, so the default run keeps the
    # aesthetic score, the zero-shot tags and dedup.
    enabled: bool = True
    # cpu: ViT-B/32 with OpenAI weights (88M-param image tower, 151M in all; ~4.4 GFLOPs per
    # 224 px frame) and the LAION linear head for ViT-B/32 (sa_0_4_vit_b_32_linear.pth).
    clip: str = "ViT-B-32-quickgelu"
    clip_pretrained: str = "openai"
    aesthetic_head: str = "sa_0_4_vit_b_32_linear.pth"
    device: str = "auto"  # auto: cuda when available, else cpu
    precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU; or fp32 | fp16 | bf16
    frames_per_forward: int = 64  # frames batched across clips into one forward
    clips_per_batch: int = 16  # rows the stage takes per call
    num_gpus: float = 0.0  # per actor (fractional shares a GPU)
    sample_fps: float = 1.0  # of the clip's carried frames, score ~this many per second
    max_frames: int = 8  # ...at most this many per clip
    ocr: bool = True  # the OCR text score (rapidocr-onnxruntime, PP-OCRv4; weights in the wheel): every profile
    ocr_frames: int = 2  # frames per clip the detector reads (evenly spaced)
    ocr_side: int = 336  # the detector sees frames scaled to this short side

    def __post_init__(self) -> None:
        check_positive(self, "frames_per_forward", "clips_per_batch", "sample_fps", "max_frames", "ocr_frames", "ocr_side")
        if self.num_gpus < 0:
            raise ValueError(f"models.num_gpus must be >= 0, got {self.num_gpus}")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ValueError(f"models.precision must be auto, fp32, fp16 or bf16, got {self.precision!r}")
        if not self.clip:
            raise ValueError("models.clip must name an open_clip model, hf-hub:org/repo, or 'tiny'")


log = logging.getLogger(__name__)

EMBEDDING = "embedding"
# Prompts per negative tag: (positives, negatives). Tags a single frame cannot show
# (over_edited: cut rate; incoherent_motion: motion) have none.
ZERO_SHOT_PROMPTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "low_quality": (
        ("a blurry, low quality photo", "a pixelated, heavily compressed video frame", "an out of focus, noisy image"),
        ("a sharp, high quality photo", "a crisp, well exposed video frame", "a detailed, in focus image"),
    ),
    "lecture": (
        ("a screenshot of a lecture presentation slide", "a person giving a lecture in front of a whiteboard", "a slide with bullet points"),
        ("a photo of a natural scene", "a cinematic film still", "a photo of people outdoors"),
    ),
    "text_dominated": (
        ("an image full of text", "a page of written text", "a screenshot of a document", "large subtitles covering the frame"),
        ("a photo with no text", "a photo of a landscape", "a photo of an animal", "a photo of a street"),
    ),
    "noisy_screen": (
        ("TV static noise", "a screen of random noise", "a glitched, corrupted video frame"),
        ("a clean photo", "a clear video frame of a scene", "a photo of an object"),
    ),
}
ZS_TAGS: tuple[str, ...] = tuple(ZERO_SHOT_PROMPTS)
assert ZS_TAGS == schema.ZS_TAGS, "curation/core/schema.py lists the zero-shot columns"


def zs_column(tag: str) -> str:
    return f"zs_{tag}"


AESTHETIC_COLUMNS = ("aesthetic_score", "aesthetic_min", "aesthetic_p10")
SCORE_COLUMNS = (*AESTHETIC_COLUMNS, *(zs_column(t) for t in ZS_TAGS), "model_frames")


def pick_frames(times_s: list[float], fps: float, cap: int) -> list[int]:
    """Indices of the carried frames to score: greedily one per 1/fps seconds, then at most
    `cap` evenly spread; always at least the first frame."""
    picked: list[int] = []
    for i, t in enumerate(times_s):
        if not picked or t - times_s[picked[-1]] >= 1.0 / fps - 1e-6:
            picked.append(i)
    if len(picked) > cap:
        picked = [picked[int(j)] for j in np.linspace(0, len(picked) - 1, cap).round()]
    return picked


def embedding_type(dim: int) -> pa.DataType:
    return pa.list_(pa.float16(), dim)


class ScoreWithClip(Stage):
    """Aesthetic score, zero-shot tag scores and the clip embedding from one CLIP pass."""

    reads = ("clip_id", FRAMES, FRAMES_SHAPE, FRAMES_T)
    writes = (*SCORE_COLUMNS, EMBEDDING)
    stateful: ClassVar[bool] = True

    def __init__(self, cfg: ModelsConfig):
        self.cfg = cfg
        # Instance values shadow the class defaults: the runners read them per stage.
        self.batch_size = cfg.clips_per_batch
        self.num_gpus = cfg.num_gpus
        self.model = None

    def setup(self) -> None:
        import open_clip
        import torch

        from curation.models.clip_models import build_clip, device_and_precision, load_head, tokenizer

        if self.model is not None:
            return
        cfg = self.cfg
        dev, prec = device_and_precision(cfg)
        self.device = torch.device(dev)
        # open_clip's input dtype for its precision (bf16/fp16 images into bf16/fp16 weights).
        self.dtype = open_clip.get_input_dtype(prec) or torch.float32
        model = build_clip(cfg)  # on the device, in open_clip's precision handling
        self.pp = dict(model.visual.preprocess_cfg)  # open_clip's transform for the model and tag
        self.size = self.pp["size"]
        self.model = model
        with torch.no_grad():
            tok = tokenizer(cfg)
            self.text = {}
            for tag, (pos, neg) in ZERO_SHOT_PROMPTS.items():
                t = self.model.encode_text(tok(list(pos) + list(neg)).to(self.device), normalize=True).float()
                self.text[tag] = (t, len(pos))
            self.embed_dim = int(t.shape[1])
            # The checkpoint's temperature: open_clip keeps logit_scale in fp32 under fp16/bf16
            # (a bf16 copy of log(100) would give 98.86); exp() taken in fp32.
            self.logit_scale = float(self.model.logit_scale.detach().float().exp()) if hasattr(self.model, "logit_scale") else 100.0
        head = load_head(cfg, self.embed_dim)
        self.head = head.to(self.device) if head is not None else None  # fp32: 1M params, cheap
        if cfg.clip == "tiny":
            from curation.models.model_scoring import TINY_WARNING
            from curation.core.stage import warn_once

            warn_once(TINY_WARNING, log.warning)

    def preprocess(self, frames: np.ndarray):
        """(N, H, W, 3) uint8 frames of one size -> (N, 3, h, w) model input in the model's
        input dtype: open_clip's transform for the model and tag (curation/models/preprocess_clip.py)."""
        import torch

        from curation.models.preprocess_clip import preprocess_frames

        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        return preprocess_frames(x, self.pp).to(self.dtype)

    def encode(self, frames: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """N uint8 RGB frames, (N, H, W, 3) or a sequence of (H_i, W_i, 3) of any sizes ->
        (N, D) float32 L2-normalised image embeddings, in order.

        Forwards of ``frames_per_forward`` frames whatever their source sizes: within a
        forward, the frames of each size are preprocessed together, then run as one batch."""
        import torch

        n, step = len(frames), self.cfg.frames_per_forward
        out = []
        with torch.no_grad():
            for i in range(0, n, step):
                chunk = frames[i : i + step]
                groups: dict[tuple, list[int]] = {}
                for j, f in enumerate(chunk):
                    groups.setdefault(f.shape, []).append(j)
                parts = [(idx, self.preprocess(np.stack([chunk[j] for j in idx]))) for idx in groups.values()]
                x = parts[0][1]
                if len(parts) > 1:
                    x = x.new_empty((len(chunk), *x.shape[1:]))
                    for idx, part in parts:
                        x[torch.tensor(idx, device=x.device)] = part
                out.append(self.model.encode_image(x, normalize=True).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    def frame_scores(self, emb: np.ndarray) -> dict[str, np.ndarray]:
        """Per-frame aesthetic and zero-shot scores of (N, D) normalised embeddings."""
        import torch

        e = torch.from_numpy(emb).to(self.device)
        out: dict[str, np.ndarray] = {}
        with torch.no_grad():
            if self.head is not None:
                out["aesthetic"] = self.head(e).squeeze(1).cpu().numpy()
            for tag, (t, n_pos) in self.text.items():
                p = torch.softmax(self.logit_scale * e @ t.T, dim=1)
                out[tag] = p[:, :n_pos].sum(1).cpu().numpy()
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        rows: list[int] = []
        owners: list[int] = []  # the row of each picked frame
        picked: list[np.ndarray] = []
        for i in range(n):
            got = unpack_frames(batch, i) if n else None
            if got is None:
                continue
            arr, times = got
            idx = pick_frames(times, self.cfg.sample_fps, self.cfg.max_frames)
            rows.append(i)
            owners += [i] * len(idx)
            picked += [arr[j] for j in idx]
        per_row: dict[int, list[np.ndarray]] = {}
        for i, e in zip(owners, self.encode(picked)):
            per_row.setdefault(i, []).append(e)
        cols: dict[str, list] = {c: [None] * n for c in SCORE_COLUMNS}
        dim = self.embed_dim or 0
        embeddings: list = [None] * n
        for i in rows:
            emb = np.stack(per_row[i])
            s = self.frame_scores(emb)
            if "aesthetic" in s:
                a = s["aesthetic"].astype(np.float64)
                cols["aesthetic_score"][i] = float(a.mean())
                cols["aesthetic_min"][i] = float(a.min())
                cols["aesthetic_p10"][i] = float(np.percentile(a, 10))
            for tag in ZS_TAGS:
                cols[zs_column(tag)][i] = float(s[tag].mean())
            cols["model_frames"][i] = len(emb)
            m = emb.mean(0)
            embeddings[i] = (m / max(np.linalg.norm(m), 1e-12)).astype(np.float16)
        for c in SCORE_COLUMNS:
            typ = pa.int32() if c == "model_frames" else pa.float64()
            batch = _set(batch, c, pa.array(cols[c], typ))
        flat = pa.array(np.concatenate([e if e is not None else np.zeros(dim, np.float16) for e in embeddings]) if n else np.zeros(0, np.float16))
        mask = pa.array([e is None for e in embeddings], pa.bool_())
        emb_arr = pa.FixedSizeListArray.from_arrays(flat, dim, mask=mask) if n else pa.array([], embedding_type(dim))
        return _set(batch, EMBEDDING, emb_arr)


def _set(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)
