"""Model scoring with CLIP: one image-encoder forward per sampled frame feeds three things.

* **Aesthetic score**: the LAION aesthetic head on the L2-normalised image embedding
  (curation/clip_models.py), per frame; per clip the mean, the minimum and the 10th
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

Frames come from the clip row (curation/frames.py): of the carried frames, ~``sample_fps``
per second, at most ``max_frames``. Frames of several clips are batched into forwards of
``frames_per_forward``. Preprocessing is open_clip's (shortest side to 224 bicubic, centre
crop, mean/std) done on the whole batch in torch instead of per image in PIL.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import pyarrow as pa

from curation.config import ModelsConfig
from curation.frames import FRAMES, FRAMES_SHAPE, FRAMES_T, unpack_frames
from curation import schema
from curation.stage import Stage

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
assert ZS_TAGS == schema.ZS_TAGS, "curation/schema.py lists the zero-shot columns"


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
        import torch

        from curation.clip_models import build_clip, load_head, tokenizer

        if self.model is not None:
            return
        cfg = self.cfg
        dev = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        prec = cfg.precision if cfg.precision != "auto" else ("bf16" if dev.startswith("cuda") else "fp32")
        self.device = torch.device(dev)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[prec]
        model = build_clip(cfg)
        pp = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = model.visual.image_size
        self.size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean = torch.tensor(pp.get("mean", (0.48145466, 0.4578275, 0.40821073)), device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(pp.get("std", (0.26862954, 0.26130258, 0.27577711)), device=self.device).view(1, 3, 1, 1)
        self.model = model.to(self.device, self.dtype)
        self.embed_dim = int(model.text_projection.shape[1]) if getattr(model, "text_projection", None) is not None else None
        with torch.no_grad():
            tok = tokenizer(cfg)
            self.text = {}
            for tag, (pos, neg) in ZERO_SHOT_PROMPTS.items():
                t = self.model.encode_text(tok(list(pos) + list(neg)).to(self.device), normalize=True).float()
                self.text[tag] = (t, len(pos))
            self.embed_dim = int(t.shape[1])
            self.logit_scale = float(self.model.logit_scale.exp()) if hasattr(self.model, "logit_scale") else 100.0
        head = load_head(cfg, self.embed_dim)
        self.head = head.to(self.device) if head is not None else None  # fp32: 1M params, cheap
        if cfg.clip == "tiny":
            log.warning("models: profile tiny: CLIP and aesthetic head are random-initialised and UNTRAINED; their scores are meaningless")

    def preprocess(self, frames: np.ndarray):
        """(N, H, W, 3) uint8 -> (N, 3, S, S) normalised, S the model's input size."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        h, w = x.shape[-2:]
        scale = self.size / min(h, w)
        nh, nw = max(self.size, round(h * scale)), max(self.size, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)
        top, left = (nh - self.size) // 2, (nw - self.size) // 2
        x = x[:, :, top : top + self.size, left : left + self.size]
        return ((x - self.mean) / self.std).to(self.dtype)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 frames of one size -> (N, D) float32 L2-normalised embeddings."""
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(frames), self.cfg.frames_per_forward):
                x = self.preprocess(np.ascontiguousarray(frames[i : i + self.cfg.frames_per_forward]))
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
        rows: list[tuple[int, list[int]]] = []
        groups: dict[tuple, list[tuple[int, np.ndarray]]] = {}  # frames of one size batch together
        for i in range(n):
            got = unpack_frames(batch, i) if n else None
            if got is None:
                continue
            arr, times = got
            idx = pick_frames(times, self.cfg.sample_fps, self.cfg.max_frames)
            rows.append((i, idx))
            groups.setdefault(arr.shape[1:], []).extend((i, arr[j]) for j in idx)
        per_row: dict[int, list[np.ndarray]] = {}
        for items in groups.values():
            emb = self.encode(np.stack([f for _, f in items]))
            for (i, _), e in zip(items, emb):
                per_row.setdefault(i, []).append(e)
        cols: dict[str, list] = {c: [None] * n for c in SCORE_COLUMNS}
        dim = self.embed_dim or 0
        embeddings: list = [None] * n
        for i, _ in rows:
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
