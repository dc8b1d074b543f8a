"""Run configuration: one file per run, mapped onto each stage's frozen ``Config``.

Precedence, lowest first: dataclass defaults < profile (``tiny`` | ``cpu`` | ``gpu``) < config
file (TOML, YAML or JSON) < command-line flags. Unknown keys fail at load time with the dotted
path of the key; the resolved config is written next to the outputs by the flow.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from curation.core.buckets import DEFAULT_FRAME_BUCKETS, DEFAULT_RESOLUTIONS, Resolution, check_frame_buckets
from curation.core.schema import JUDGE_TAGS, NEG_TAGS, neg_column


@dataclass(frozen=True, kw_only=True)
class DecodeConfig:
    work_short_side: int = 128  # optical flow runs on grey frames at this short side
    cut_thumb_width: int = 64  # cut detection runs on thumbnails this wide
    threads: int = 0  # FFmpeg decode threads; 0: the stage's num_cpus (what Ray reserved for it)
    # Frames (and images) over this many pixels are refused from their header, before any
    # decoding: 100 Mpx holds 8K video (33 Mpx) and large photos, and bounds one decoded
    # RGB frame to 300 MB; a forged header claiming 60000x60000 would need ~10 GB a frame.
    max_pixels: int = 100_000_000
    # A decoder that yields no frame for this long fails its item (error_code "timeout").
    stall_timeout_s: float = 120.0
    # Frames (and images) with a shorter side than this are refused from their header
    # (error_code "too_small"): optical flow (OpenCV's DIS) needs its 8 px patch at its finest
    # pyramid scale, 1/4, so 32 px; a 2400x10 strip made it raise. Far below any training size.
    min_side: int = 32

    def __post_init__(self) -> None:
        _positive(self, "work_short_side", "cut_thumb_width", "max_pixels", "stall_timeout_s", "min_side")


@dataclass(frozen=True, kw_only=True)
class SplitConfig:
    """Shot boundaries (curation/analysis/split_scenes.py) and clip windows. Thresholds were chosen on
    the development part of the shot benchmark (bench/shotset.py, bench/shots.py); the
    held-back part was not used to set them."""

    # Hard cuts: a frame's change (mean |Y/U/V delta| of 3x3-smoothed thumbnails, 0-255) at
    # least this...
    cut_threshold: float = 5.0
    # ...standing this many times above every change within 3 frames either side (cuts on the
    # development part: 1.8-100x; no other frame there above 1.5x)...
    cut_isolation: float = 2.0
    # ...or this many when the structure changes at least cut_structure_strong (below: a cut
    # into fast dark motion measured 1.8x and 0.26; strong shake at most 1.5x)
    cut_isolation_strong: float = 1.6
    # ...with the luma structure changed (1 - rank correlation of 20x12 luma: cuts on the
    # development part measured 0.11-1.6, exposure steps 0.005-0.046, clipping included) by at
    # least this more than between the frames 2 either side (cuts: >= 0.089 more)...
    cut_structure: float = 0.075
    cut_structure_strong: float = 0.25
    # ...and the picture not back within 3 frames: a flash or glitch when the frame before is
    # within this fraction of the change of one of them (cuts measured >= 0.69).
    transient_return: float = 0.5
    min_clip_s: float = 2.0
    max_clip_s: float = 10.0  # longer shots are cut into windows of this length
    # Gradual transitions, on a 4x4 grid of block means (0-255) and the fine texture.
    gradual_change: float = 6.0  # rms grid change between the frames around a dissolve, at least
    gradual_fit: float = 0.25  # rms misfit of the linear mix / that change, at most (dissolves: <= 0.23)
    gradual_dip: float = 0.5  # the fine-texture dip, as a fraction of what mixing predicts (dissolves: 0.69-1.09)...
    # ...at most this (blur loses more texture than mixing; an encoder smooths mixed detail
    # more: synthetic dissolves measured up to 1.45)
    gradual_dip_max: float = 1.6
    # ...and following the mixing curve: rms texture misfit / the predicted dip's depth, at most
    # (dissolves on the development part: <= 0.21; spans of shake and of fades: >= 0.46)
    gradual_texture_fit: float = 0.35
    # Fades: the picture's energy (rms luma above black) dips below this fraction of both sides;
    # each fade frame is at least `fade_step` darker than the next outside frame.
    fade_dark: float = 0.3
    fade_step: float = 0.01
    # The two sides of a dip to dark with less structure change than this are one scene (a hand
    # over the lens): no boundary.
    fade_same_scene: float = 0.15
    # TransNetV2 beside the measurements above (curation/analysis/shot_model.py): "off", "transnetv2",
    # or "auto" (TransNetV2 on the gpu profile, off elsewhere: on CPU it costs ~10x the decode).
    # Its boundaries (frames scored above model_threshold) that ours do not cover are added
    # when our checks do not contradict them (flashes, a scene that comes back).
    model: str = "auto"
    model_threshold: float = 0.5
    # A cut the model finds and we do not must still stand this many times above the changes
    # around it (mid whip pan and mid crash zoom, where it fired on the development part: 1.0)
    model_cut_isolation: float = 1.3
    model_device: str = "auto"  # auto: cuda when there is one
    # GPU share of each analysis actor when the model runs on Ray GPUs (16 per GPU; each holds
    # a CUDA context, ~0.5 GB); 0: the model runs where the analysis task runs, without a GPU.
    model_gpus: float = 0.0625

    def model_for(self, profile: str) -> str:
        """The shot model a run with this profile uses."""
        return ("transnetv2" if profile == "gpu" else "off") if self.model == "auto" else self.model
    gradual_max_frames: int = 60  # longer spans are motion, not a transition
    # Frames dropped around a gradual transition beyond its estimated ends, as a fraction of
    # its length (at least 2): ends estimated a few frames off leave no mixed frame in a clip
    # (refined dissolve ends on the development part: within 3 frames of the labels).
    gradual_margin: float = 0.2

    def __post_init__(self) -> None:
        _positive(self, "cut_threshold", "cut_isolation", "cut_isolation_strong", "cut_structure", "cut_structure_strong", "transient_return", "min_clip_s",
                  "max_clip_s", "gradual_change", "gradual_fit", "gradual_dip", "gradual_dip_max", "gradual_texture_fit", "gradual_max_frames", "fade_dark",
                  "fade_step", "fade_same_scene", "model_cut_isolation")
        if self.gradual_margin < 0:
            raise ValueError("split.gradual_margin must be >= 0")
        if self.model not in ("auto", "off", "transnetv2"):
            raise ValueError(f"split.model must be 'auto', 'off' or 'transnetv2', got {self.model!r}")
        if not 0 < self.model_threshold < 1 or self.model_gpus < 0:
            raise ValueError("split.model_threshold must be within (0, 1) and split.model_gpus >= 0")
        if self.max_clip_s < self.min_clip_s:
            raise ValueError("split.max_clip_s must be >= split.min_clip_s")


@dataclass(frozen=True, kw_only=True)
class MotionConfig:
    # Flow between consecutive samples at this rate: the motion budget per second of video,
    # whatever the source's frame rate. Not lower: at 2/s a pan of 2.2 short sides/s moved
    # more than half the working frame between samples and read as 1.69 (0.76 of its speed;
    # 0.92-0.99 at 3/s, tests/curation/test_score_motion.py), so motion_too_high (1.5) would
    # hang on a thread; the real development set's tags held at 2/s but it has no fast pan.
    sample_fps: float = 3.0
    patch_grid: int = 4  # motion_min_patch over a grid x grid split
    dis_preset: str = "ultrafast"  # OpenCV DIS preset: ultrafast | fast | medium

    def __post_init__(self) -> None:
        _positive(self, "sample_fps", "patch_grid")
        if self.dis_preset not in ("ultrafast", "fast", "medium"):
            raise ValueError(f"motion.dis_preset must be ultrafast, fast or medium, got {self.dis_preset!r}")


@dataclass(frozen=True, kw_only=True)
class TagsConfig:
    sample_fps: float = 0.5  # frames per second the per-frame tag scorers look at (>= 1 per 2 s clip)
    short_side: int = 270  # tag frames are scaled to this short side (never upscaled)
    low_res_short_side: int = 240  # low_res reaches 0.5 at 3/4 of this short side, 1 at half
    min_bits_per_pixel: float = 0.03  # a moving clip below this is starved of bits (real 25 kbit/s pan: 0.009)
    # 99th percentile |Laplacian| of a crisp frame (blur score 0). Real good footage measured
    # 180-255; real photos under a 2.5 px Gaussian blur 32, 3.5 px 25 (60 let the 2.5 px pass).
    sharp_ref: float = 70.0
    min_fps: float = 8.0  # low_quality reaches 0.5 at 3/4 of this frame rate, 1 at half (a real 2.3 fps source: 1)
    over_edited_cuts_per_min: float = 12.0  # cuts inside a clip (jump cuts) per minute at which over_edited reaches 0.5

    def __post_init__(self) -> None:
        _positive(self, "sample_fps", "short_side", "low_res_short_side", "sharp_ref", "min_fps", "over_edited_cuts_per_min")


@dataclass(frozen=True, kw_only=True)
class FramesConfig:
    """RGB frames the analysis pass hands to model stages (curation/core/frames.py).

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
        _positive(self, "short_side")
        for k in ("fps", "max_frames"):
            if getattr(self, k) is not None and getattr(self, k) <= 0:
                raise ValueError(f"frames.{k} must be > 0 (or unset: what the model stages read), got {getattr(self, k)}")


TINY_MODEL = "tiny"  # [models] clip / aesthetic_head: random-initialised, built offline, untrained


@dataclass(frozen=True, kw_only=True)
class ModelsConfig:
    """Model scoring (curation/models/score_clip.py, curation/models/score_text.py): one CLIP forward per
    sampled frame feeds the aesthetic score, the zero-shot tags and the clip embedding.

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
        _positive(self, "frames_per_forward", "clips_per_batch", "sample_fps", "max_frames", "ocr_frames", "ocr_side")
        if self.num_gpus < 0:
            raise ValueError(f"models.num_gpus must be >= 0, got {self.num_gpus}")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ValueError(f"models.precision must be auto, fp32, fp16 or bf16, got {self.precision!r}")
        if not self.clip:
            raise ValueError("models.clip must name an open_clip model, hf-hub:org/repo, or 'tiny'")


@dataclass(frozen=True, kw_only=True)
class DedupConfig:
    """Near-duplicate removal over clip embeddings (curation/decisions/dedup.py), before decide."""

    enabled: bool = True
    # Cosine similarity at or above which two clips are duplicates (SemDeDup's 1 - eps;
    # the paper removes at eps 0.05-0.3 depending on how much it wants to drop).
    threshold: float = 0.95
    block: int = 4096  # rows per block of the similarity matrix (memory: block x N floats)
    kmeans_above: int = 1_000_000  # more clips than this: k-means first (faiss), compare within clusters
    clusters: int | None = None  # k for k-means; None: sqrt(clips)

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ValueError(f"dedup.threshold must be within (0, 1], got {self.threshold}")
        _positive(self, "block", "kmeans_above")


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    """A trained tag probe (`videomill tags train`) applied to the clip embeddings before decide."""

    path: str | None = None  # PROBE file from `videomill tags train`; None: no probe


@dataclass(frozen=True, kw_only=True)
class Rule:
    """Keep a clip only if `column` lies within [min, max].

    Bounds are absolute (`min`/`max`) or percentiles of this run's scored clips
    (`min_pct`/`max_pct`, 0-100), the "dynamic thresholds" CogVideoX tuned theirs with.
    A clip whose value is null passes a rule unless `drop_null` is set.
    """

    column: str
    name: str = ""
    min: float | None = None
    max: float | None = None
    min_pct: float | None = None
    max_pct: float | None = None
    drop_null: bool = False

    def __post_init__(self) -> None:
        if self.min is not None and self.min_pct is not None:
            raise ValueError(f"rule {self.column}: give min or min_pct, not both")
        if self.max is not None and self.max_pct is not None:
            raise ValueError(f"rule {self.column}: give max or max_pct, not both")
        for f in ("min_pct", "max_pct"):
            v = getattr(self, f)
            if v is not None and not 0 <= v <= 100:
                raise ValueError(f"rule {self.column}: {f} must be within 0-100, got {v}")
        if not self.name:
            object.__setattr__(self, "name", self.column)


@dataclass(frozen=True, kw_only=True)
class TagSignal:
    """A model signal for a negative tag: the tag also fires when `column` >= `at`.

    The combined rule (curation/decisions/decide.py): a tag fires when its heuristic score reaches its
    threshold OR any of its signals reaches its own; a null or absent signal never fires."""

    tag: str
    column: str
    at: float

    def __post_init__(self) -> None:
        if self.tag not in NEG_TAGS:
            raise ValueError(f"decide.tag_signals: unknown tag {self.tag!r}; known: {list(NEG_TAGS)}")


def _default_tag_signals() -> tuple[TagSignal, ...]:
    # OCR text area of a slide of text: 0.37-0.65 of the frame; natural photographs: 0
    # (tests/curation/test_score_text.py); a line of subtitles ~0.03-0.08 must not fire.
    # CLIP zero-shot scores (zs_*) are not a default signal: add them per run once measured.
    return (TagSignal(tag="text_dominated", column="ocr_text_area", at=0.2),)


def _default_tag_thresholds() -> dict[str, float]:
    return {t: 0.5 for t in NEG_TAGS}


def _default_rules() -> tuple[Rule, ...]:
    return (
        Rule(column="motion_score", name="motion_too_low", min=0.005),
        Rule(column="motion_score", name="motion_too_high", max=1.5),
    )


@dataclass(frozen=True, kw_only=True)
class DecideConfig:
    # A negative tag fires when its score >= threshold; a fired tag rejects the clip
    # unless the tag is listed in `keep_tags` (tagged, not dropped).
    tag_thresholds: dict[str, float] = field(default_factory=_default_tag_thresholds)
    keep_tags: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = field(default_factory=_default_rules)
    tag_signals: tuple[TagSignal, ...] = field(default_factory=_default_tag_signals)
    drop_duplicates: bool = True  # a near-duplicate (dup_of set, curation/decisions/dedup.py) is rejected
    keep_probe_tags: tuple[str, ...] = ()  # tag-probe tags that tag a clip without rejecting it

    def __post_init__(self) -> None:
        unknown = set(self.tag_thresholds) - set(NEG_TAGS)
        if unknown:
            raise ValueError(f"decide.tag_thresholds: unknown tags {sorted(unknown)}; known: {list(NEG_TAGS)}")
        object.__setattr__(self, "tag_thresholds", {**_default_tag_thresholds(), **self.tag_thresholds})
        bad = set(self.keep_tags) - set(NEG_TAGS)
        if bad:
            raise ValueError(f"decide.keep_tags: unknown tags {sorted(bad)}")
        tag_cols = {neg_column(t) for t in NEG_TAGS}
        for r in self.rules:
            if r.column in tag_cols:
                raise ValueError(f"decide.rules: use decide.tag_thresholds for {r.column}")


@dataclass(frozen=True, kw_only=True)
class ExtractConfig:
    target_fps: float | None = None  # None: keep the source frame rate
    short_side: int | None = None  # None: keep the source size
    crf: int = 18
    preset: str = "veryfast"

    def __post_init__(self) -> None:
        if self.short_side is not None and (self.short_side < 2 or self.short_side % 2):
            raise ValueError("extract.short_side must be an even number >= 2 (H.264 needs even sizes)")
        if not 0 <= self.crf <= 51:
            raise ValueError("extract.crf must be within 0-51")


@dataclass(frozen=True, kw_only=True)
class ShardConfig:
    """WebDataset shards of the accepted clips (curation/outputs/write_shards.py)."""

    # A shard closes before the sample that would pass either limit (None: no limit on
    # that axis); a single sample larger than max_bytes gets a shard of its own.
    max_samples_per_shard: int | None = 1000
    max_bytes_per_shard: int | None = 1 << 30  # 1 GiB: large sequential reads, few files
    bucketing: bool = True  # group shards by training bucket (curation/core/buckets.py)
    resolutions: tuple[Resolution, ...] = DEFAULT_RESOLUTIONS
    frame_buckets: tuple[int, ...] = DEFAULT_FRAME_BUCKETS
    shuffle_seed: int | None = None  # None: clips in clip_id order; else a seeded shuffle across shards

    def __post_init__(self) -> None:
        for f in ("max_samples_per_shard", "max_bytes_per_shard"):
            v = getattr(self, f)
            if v is not None and (not isinstance(v, int) or v <= 0):
                raise ValueError(f"shard.{f} must be a positive integer or null, got {v!r}")
        if self.max_samples_per_shard is None and self.max_bytes_per_shard is None:
            raise ValueError("shard.max_samples_per_shard and shard.max_bytes_per_shard: set at least one")
        object.__setattr__(self, "frame_buckets", check_frame_buckets(self.frame_buckets))
        if self.bucketing:
            if not any(r.media == "video" for r in self.resolutions):
                raise ValueError("shard.resolutions: bucketing needs at least one video resolution")
            if not self.frame_buckets:
                raise ValueError("shard.frame_buckets: bucketing needs at least one frame count")
        if len(set(self.resolutions)) != len(self.resolutions):
            raise ValueError("shard.resolutions: duplicate entries")
        if self.shuffle_seed is not None and not isinstance(self.shuffle_seed, int):
            raise ValueError(f"shard.shuffle_seed must be an integer or null, got {self.shuffle_seed!r}")


@dataclass(frozen=True, kw_only=True)
class CaptionOpenAIConfig:
    """The `openai` caption backend: any OpenAI-compatible chat-completions server."""

    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"  # read from this variable; "EMPTY" when unset (local servers)
    served_model: str | None = None  # the name the server knows the model by; None: caption.model
    max_in_flight: int = 64  # concurrent requests per stage actor
    timeout_s: float = 120.0
    max_retries: int = 4  # the openai client retries connection errors, 408/429/5xx with exponential backoff
    # "video": one base64 MP4 of the sampled frames at their sampling rate (the server reads the
    # clip's timing from the container); "images": one base64 JPEG per frame, each after a
    # "Frame at T s:" line (for servers that take no video).
    frames_as: str = "video"
    # How the server takes the sampling settings the OpenAI schema lacks (repetition_penalty, the
    # chat template's arguments, the video processor's): "vllm" (vLLM, SGLang: top-level extra
    # fields) or "transformers" (`transformers serve`: a `generation_config` JSON string).
    server: str = "vllm"
    extra_body: dict[str, Any] = field(default_factory=dict)  # merged over what `server` sends

    def __post_init__(self) -> None:
        _positive(self, "max_in_flight", "timeout_s")
        if self.frames_as not in ("images", "video"):
            raise ValueError(f"caption.openai.frames_as must be 'images' or 'video', got {self.frames_as!r}")
        if self.server not in ("vllm", "transformers"):
            raise ValueError(f"caption.openai.server must be 'vllm' or 'transformers', got {self.server!r}")
        if self.max_retries < 0:
            raise ValueError("caption.openai.max_retries must be >= 0")


@dataclass(frozen=True, kw_only=True)
class CaptionConfig:
    """Dense re-captioning of accepted clips (captioning/). Models: hub id, local path or "tiny"."""

    enabled: bool = True
    mode: str = "video"  # "video": the VLM sees the clip; "frames+summary": CogVideoX's chain
    backend: str = "transformers"  # "transformers" (in-process actor pool) | "openai" (a server)
    model: str = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"
    summary_model: str | None = None  # frames+summary fusion and shortening LLM; None: `model` in text mode
    budget_tokenizer: str = "THUDM/CogVideoX-2b"  # the trainer's T5 tokenizer (its `tokenizer` subfolder), or "tiny"
    max_tokens: int = 226  # every final caption fits this many budget-tokenizer tokens (CogVideoX's T5 length)
    max_new_tokens: int = 256  # generation limit of a dense caption
    temperature: float = 0.2
    top_p: float = 0.9
    retry_temperature: float = 0.8  # a failed gate retries once with this sampling
    repetition_penalty: float = 1.05
    seed: int = 0
    frame_source: str = "auto"  # "pipeline" (frames the analysis decoded), "clip" (the extracted file), "auto"
    fps: float = 2.0
    max_frames: int = 16
    max_pixels: int = 336 * 336  # per frame; larger frames are scaled down (video VLMs slow down or OOM)
    summary_frames: int = 4  # K frames captioned densely in frames+summary mode
    # How a long clip is seen. "spread": one caption from frames spread over the whole clip
    # (`fps`, at most `max_frames`). "windows" (Cosmos-Curate's captioning): the clip in windows of
    # `window_frames` frames, a remainder of at least half a window its own window (a shorter one
    # joins the last), each window sampled at `fps` (at most `max_frames`) and captioned on its own.
    policy: str = "spread"
    window_frames: int = 256
    duplicate_min_clips: int = 3  # the same caption text on this many clips is flagged `duplicate`
    block_size: int = 256  # clips captioned and written per block (the unit of resume)
    batch_size: int = 8  # clips per stage batch (and generation batch)
    num_gpus: float = 0.0  # per caption actor; > 0 runs bf16 + SDPA on the GPU
    actors: int | None = None  # caption actors (each loads the model once per run); None: GPUs / num_gpus, or CPUs
    dtype: str = "auto"  # "auto": bf16 on GPU, fp32 on CPU
    openai: CaptionOpenAIConfig = field(default_factory=CaptionOpenAIConfig)

    def __post_init__(self) -> None:
        _positive(self, "max_tokens", "max_new_tokens", "fps", "max_frames", "max_pixels", "summary_frames",
                  "duplicate_min_clips", "block_size", "batch_size")
        if self.mode not in ("video", "frames+summary"):
            raise ValueError(f"caption.mode must be 'video' or 'frames+summary', got {self.mode!r}")
        if self.backend not in ("transformers", "openai"):
            raise ValueError(f"caption.backend must be 'transformers' or 'openai', got {self.backend!r}")
        if self.actors is not None and (not isinstance(self.actors, int) or self.actors < 1):
            raise ValueError(f"caption.actors must be a positive integer or null, got {self.actors!r}")
        if self.policy not in ("spread", "windows"):
            raise ValueError(f"caption.policy must be 'spread' or 'windows', got {self.policy!r}")
        if self.window_frames < 2:
            raise ValueError(f"caption.window_frames must be >= 2, got {self.window_frames}")
        if self.frame_source not in ("auto", "pipeline", "clip"):
            raise ValueError(f"caption.frame_source must be auto, pipeline or clip, got {self.frame_source!r}")
        if self.dtype not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"caption.dtype must be auto, bf16, fp16 or fp32, got {self.dtype!r}")
        for f in ("temperature", "retry_temperature", "num_gpus"):
            if getattr(self, f) < 0:
                raise ValueError(f"caption.{f} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("caption.top_p must be within (0, 1]")
        if not self.model:
            raise ValueError("caption.model: give a hub id, a local path or 'tiny'")


# The questions of the VLM-judged tags (curation/core/schema.py JUDGE_TAGS): CogVideoX's six negative
# tags (arXiv:2408.06072, sec. 3.1, tagged there with Video-LLaMA) and Cosmos-Curate's artefact
# criteria (its VLM "video quality" yes/no questions).
JUDGE_QUESTIONS: dict[str, str] = {
    "over_edited": "Is the video heavily edited: jump cuts, transitions, special effects or graphic overlays?",
    "incoherent_motion": "Is the motion broken or incoherent: stutter, frozen frames, jumps, or objects that appear and vanish?",
    "low_quality": "Is the video low quality: blurry, pixelated, heavily compressed or badly exposed?",
    "lecture": "Is this a lecture or presentation: slides, a whiteboard, or a person talking in front of them?",
    "text_dominated": "Is the picture dominated by text: documents, large captions or on-screen text covering much of it?",
    "noisy_screen": "Is this a noisy or glitched screen: static, corrupted frames, or a filmed monitor?",
    "slideshow": "Is the video a slideshow of still images rather than continuous footage?",
    "synthetic": "Is the video synthetic: computer graphics, animation, a video game or a screen recording?",
    "visual_filter": "Has a strong visual filter or colour effect been applied to the footage?",
    "post_production_text": "Does the video contain text added in post-production: titles, subtitles, watermarks or logos?",
    "video_in_video": "Does the video show another video inside it: picture-in-picture, split screen, or a screen playing a video?",
    "photographic_artifacts": "Are there photographic artefacts: lens flare, dirt on the lens, banding or heavy noise?",
    "distorted_view": "Is the view distorted or rotated: fisheye, stretched, sideways or upside down?",
    "low_resolution": "Is the video low resolution or visibly upscaled?",
    "blurred_region": "Is part of the frame blurred or masked on purpose: faces, number plates, censoring?",
    "abrupt_camera_motion": "Does the camera move abruptly: strong shake, whip pans or sudden jerks?",
    "fast_zoom": "Does the camera zoom in or out quickly?",
    "unnatural_speed": "Does the video play at an unnatural speed: sped up, slowed down or time-lapse?",
}
assert tuple(JUDGE_QUESTIONS) == JUDGE_TAGS, "curation/core/schema.py lists the judged tags"


@dataclass(frozen=True, kw_only=True)
class JudgeQuestion:
    """One VLM-judged tag: `name` (one of curation/core/schema.py JUDGE_TAGS, its column `vlm_<name>`),
    the yes/no `question`, and the P(yes) at or above which the tag fires."""

    name: str
    question: str = ""  # empty: the default wording (JUDGE_QUESTIONS)
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.name not in JUDGE_TAGS:
            raise ValueError(f"judge.questions: unknown tag {self.name!r}; known: {list(JUDGE_TAGS)} "
                             "(a new tag is a new manifest column: add it to curation/core/schema.py JUDGE_TAGS)")
        if not self.question:
            object.__setattr__(self, "question", JUDGE_QUESTIONS[self.name])
        if not 0 < self.threshold <= 1:
            raise ValueError(f"judge.questions[{self.name}].threshold must be within (0, 1], got {self.threshold}")


def _default_questions() -> tuple[JudgeQuestion, ...]:
    return tuple(JudgeQuestion(name=n) for n in JUDGE_QUESTIONS)


@dataclass(frozen=True, kw_only=True)
class JudgeConfig:
    """VLM-judged tags (captioning/judge.py): the caption model answers yes/no questions about
    every clip the cheap filters accepted, before captioning it; decide fires `vlm_<name>` at the
    question's threshold and rejects unless the tag is in `keep`. Off whenever captioning is
    (RunConfig turns it off)."""

    enabled: bool = False
    questions: tuple[JudgeQuestion, ...] = field(default_factory=_default_questions)
    keep: tuple[str, ...] = ()  # judged tags that tag a clip without rejecting it
    # The JSON answer's length limit where a server writes it unconstrained (the transformers
    # backend writes exactly the template: captioning/judge.py).
    max_new_tokens: int = 400
    logprobs: int = 5  # openai backend: candidates per answer token read for P(yes); 0: the answer as 1/0

    def __post_init__(self) -> None:
        _positive(self, "max_new_tokens")
        if self.enabled and not self.questions:
            raise ValueError("judge.questions: the judge is on but asks nothing")
        names = [q.name for q in self.questions]
        if len(set(names)) != len(names):
            raise ValueError("judge.questions: a tag is asked twice")
        if bad := set(self.keep) - set(names):
            raise ValueError(f"judge.keep: {sorted(bad)} are not asked (judge.questions)")
        if self.logprobs < 0:
            raise ValueError("judge.logprobs must be >= 0")


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    partition_size: int = 64  # clip rows per manifest part: the unit of resume (flows/run_ray.py streams every source in one pipeline)
    executor: str = "ray"  # "ray": stages on Ray Data; "local": in this process (debugging)
    task_timeout_s: int = 6 * 3600  # a Prefect task (the scoring stream, or a global step) past this fails and is retried
    ray_address: str | None = None  # None: RAY_ADDRESS, else start a local Ray
    num_cpus: int | None = None  # local Ray only; None: all cores
    dashboard: bool = True

    def __post_init__(self) -> None:
        _positive(self, "partition_size", "task_timeout_s")
        if self.executor not in ("ray", "local"):
            raise ValueError(f"runtime.executor must be 'ray' or 'local', got {self.executor!r}")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    profile: str = "cpu"
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    tags: TagsConfig = field(default_factory=TagsConfig)
    frames: FramesConfig = field(default_factory=FramesConfig)
    decide: DecideConfig = field(default_factory=DecideConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        # The judge asks the caption model: with captioning off it is off too (the gpu profile
        # turns it on; `[caption] enabled = false` on its own must still be a valid run, and so
        # must `decide --profile gpu` on an OUT made without captions). The report says why.
        if self.judge.enabled and not self.caption.enabled:
            object.__setattr__(self, "judge", dataclasses.replace(self.judge, enabled=False))

    def frames_plan(self) -> tuple[float, int]:
        """(fps, max_frames) of the model-stage frames the analysis pass samples per clip:
        `[frames]` where set, else what the stages that read them take (FramesConfig)."""
        f, m = self.frames, self.models
        rates, caps = [1.0 / self.split.min_clip_s], [1]
        if m.enabled:
            rates.append(m.sample_fps)
            caps.append(m.max_frames)
            if m.ocr:
                caps.append(m.ocr_frames)
        if self.caption.enabled and self.caption.frame_source == "pipeline":
            rates.append(self.caption.fps)
            caps.append(self.caption.max_frames)
        return (f.fps if f.fps is not None else max(rates)), (f.max_frames if f.max_frames is not None else max(caps))


PROFILES: dict[str, dict[str, Any]] = {
    # Smallest working sizes: tests, demos, laptops.
    # (tiny keeps the split's 64 px thumbnails: its measures were tuned at that width; at 48 px a
    # 0.4 s pause in a pan no longer aligned and read as a cut)
    "tiny": {"decode": {"work_short_side": 96}, "motion": {"sample_fps": 3.0},
             # captioning/tiny.py: a random-initialised Qwen2.5-VL, UNTRAINED (captions are noise)
             "caption": {"model": "tiny", "budget_tokenizer": "tiny", "max_new_tokens": 24, "max_frames": 4,
                         "max_pixels": 112 * 112, "summary_frames": 2, "batch_size": 4}},
    # CPU model budget: 2 CLIP frames per clip (see ModelsConfig.enabled for the measurement).
    "cpu": {"models": {"sample_fps": 0.5, "max_frames": 2}},
    # GPU machines have many cores: larger partitions keep them busy. Captions: Qwen2.5-VL-7B
    # (video-native, time-aligned rope, Apache-2.0, served by vLLM) on one GPU per actor.
    "gpu": {"runtime": {"partition_size": 256},
            "caption": {"model": "Qwen/Qwen2.5-VL-7B-Instruct", "num_gpus": 1.0, "batch_size": 16},
            "judge": {"enabled": True}},
}

# Model scoring per profile. tiny: random-initialised models built offline (scores are
# meaningless; the manifest metadata, log and report say so). gpu: open_clip ViT-L/14 with
# OpenAI weights (QuickGELU, as OpenAI trained it) and the LAION improved aesthetic predictor
# (github.com/christophschuhmann/improved-aesthetic-predictor, sac+logos+ava1-l14-linearMSE.pth).
PROFILES["tiny"]["models"] = {"enabled": True, "clip": TINY_MODEL, "aesthetic_head": TINY_MODEL, "frames_per_forward": 16, "max_frames": 4}
# A random model embeds distinct synthetic clips up to 0.998 apart (measured): tiny removes
# only copies (identical frames give identical embeddings).
PROFILES["tiny"]["dedup"] = {"threshold": 0.9999}
PROFILES["gpu"]["models"] = {
    "enabled": True, "clip": "ViT-L-14-quickgelu", "clip_pretrained": "openai", "aesthetic_head": "sac+logos+ava1-l14-linearMSE.pth",
    "frames_per_forward": 256, "clips_per_batch": 64, "num_gpus": 0.5,
}

def _positive(obj: object, *names: str) -> None:
    for n in names:
        if getattr(obj, n) <= 0:
            raise ValueError(f"{type(obj).__name__}.{n} must be > 0, got {getattr(obj, n)}")


def _tuple_item(hint: Any) -> Any:
    """X for a `tuple[X, ...]` hint, else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        return args[0]
    return None


def _suggest(key: str, known: list[str], where: str = "") -> str:
    """' (did you mean WHERE.X?)' for a close misspelling of one of `known`, else ''."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f" (did you mean {where}{close[0]}?)" if close else ""


def _type_name(hint: Any) -> str:
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _check_type(hint: Any, value: Any, path: str) -> Any:
    """`value` as field type `hint` wants it, or ValueError naming the field: a string where a
    number belongs would otherwise fail deep inside a stage, or compare as a TypeError."""
    args = typing.get_args(hint)
    if type(None) in args:  # X | None
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if hint in (int, bool, str):
        if isinstance(value, hint) and (hint is bool or not isinstance(value, bool)):
            return value
        raise ValueError(f"{path} must be {_type_name(hint)}, got {value!r}")
    if hint is float:
        raise ValueError(f"{path} must be a number, got {value!r}")
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path} must be a list, got {value!r}")
        item = _tuple_item(hint)
        return tuple(_check_type(item, v, f"{path}[{i}]") for i, v in enumerate(value)) if item not in (None, Any) else tuple(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{path} must be a table, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _check_type(vt, v, f"{path}.{k}") for k, v in value.items()} if vt is not Any else value
    return value


def build_config(cls: type, data: dict[str, Any], path: str) -> Any:
    """Build dataclass `cls` from a plain dict, recursing into nested configs."""
    if not isinstance(data, dict):
        raise ValueError(f"{path or 'config'}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"{path}." if path else ""
        keys = ", ".join(where + k + _suggest(k, names, where) for k in unknown)
        raise ValueError(f"unknown config key{'s' if len(unknown) > 1 else ''}: {keys}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        sub = f"{path}.{name}" if path else name
        item = _tuple_item(hint)
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build_config(hint, value, sub)
        elif item is not None and dataclasses.is_dataclass(item):  # decide.rules, shard.resolutions
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{sub}: expected a list of tables, got {type(value).__name__}")
            kwargs[name] = tuple(build_config(item, v, f"{sub}[{i}]") for i, v in enumerate(value))
        else:
            kwargs[name] = _check_type(hint, value, sub)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field missing
        raise ValueError(f"{path or 'config'}: {e}") from None


def merge_dicts(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file as a dict; ValueError naming the file for what cannot be read or parsed."""
    p = Path(path)
    if p.suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ValueError(f"config file {p}: unsupported extension {p.suffix!r} (use .toml, .yaml or .json)")
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ValueError(f"config file {p}: not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {p}: cannot read it ({e})") from None
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(text)
        elif p.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text) or {}
    except (ValueError, yaml.YAMLError) as e:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"config file {p}: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {p}: expected a table of sections, got {type(data).__name__}")
    return data


def _profile(name: str) -> dict[str, Any]:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[name]


def load_config(
    path: str | Path | None = None, profile: str | None = None, overrides: dict[str, Any] | None = None
) -> RunConfig:
    data = read_config_file(path) if path else {}
    profile = profile or data.get("profile") or "cpu"
    merged = merge_dicts(merge_dicts(_profile(profile), data), overrides or {})
    merged["profile"] = profile
    return build_config(RunConfig, merged, "")


def load_config_over(
    base: dict[str, Any], path: str | Path | None = None, profile: str | None = None, overrides: dict[str, Any] | None = None
) -> RunConfig:
    """The config of a step on an existing run: `base` (its config.resolved.json) < `profile`
    (when given) < the file < `overrides`. What the file leaves out stays as the run had it,
    so `videomill decide OUT --config rules.toml` changes the rules and nothing else."""
    data = read_config_file(path) if path else {}
    merged = dict(base)
    name = profile or data.get("profile") or merged.get("profile") or "cpu"
    if profile:
        merged = merge_dicts(merged, _profile(profile))
    merged = merge_dicts(merge_dicts(merged, data), overrides or {})
    merged["profile"] = name
    return build_config(RunConfig, merged, "")


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any]) -> RunConfig:
    return build_config(RunConfig, data, "")
