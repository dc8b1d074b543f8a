"""Run configuration: one file per run, mapped onto each stage's frozen ``Config``.

Each section's Config lives beside the stage that reads it; this module composes them into
``RunConfig`` and keeps the profiles, the precedence and the resolved config:

    [decode]   curation/media/decode.py            DecodeConfig
    [split]    curation/analysis/split_scenes.py   SplitConfig
    [motion]   curation/analysis/score_motion.py   MotionConfig
    [tags]     curation/analysis/tag_negatives.py  TagsConfig
    [frames]   curation/core/frames.py             FramesConfig
    [models]   curation/models/score_clip.py       ModelsConfig (CLIP and OCR scoring)
    [dedup]    curation/decisions/dedup.py         DedupConfig
    [probe]    curation/models/tag_probe.py        ProbeConfig
    [decide]   curation/decisions/decide.py        DecideConfig, Rule, TagSignal
    [extract]  curation/outputs/extract_clips.py   ExtractConfig
    [shard]    curation/outputs/write_shards.py    ShardConfig
    [caption]  captioning/caption_clips.py         CaptionConfig ([caption.openai]: captioning/backends.py)
    [judge]    captioning/judge.py                 JudgeConfig, JudgeQuestion
    [runtime]  below                               RuntimeConfig: how the run executes (flows/ reads it)

Precedence, lowest first: dataclass defaults < profile (``tiny`` | ``cpu`` | ``gpu``) < config
file (TOML, YAML or JSON) < command-line flags. Unknown keys fail at load time with the dotted
path of the key (curation/core/config_loader.py); the resolved config is written next to the
outputs by the flow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captioning.caption_clips import CaptionConfig
from captioning.judge import JudgeConfig
from curation.analysis.score_motion import MotionConfig
from curation.analysis.split_scenes import SplitConfig
from curation.analysis.tag_negatives import TagsConfig
from curation.core.config_loader import build_config, check_positive, merge_dicts, read_config_file
from curation.core.frames import FramesConfig
from curation.decisions.decide import DecideConfig
from curation.decisions.dedup import DedupConfig
from curation.media.decode import DecodeConfig
from curation.models.score_clip import TINY_MODEL, ModelsConfig
from curation.models.tag_probe import ProbeConfig
from curation.outputs.extract_clips import ExtractConfig
from curation.outputs.write_shards import ShardConfig


# How the run executes, not what a stage does: flows/ reads it (curate, run_ray, run_local), and
# curation imports nothing from flows/, so it stays with the composition.
@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    partition_size: int = 64  # clip rows per manifest part: the unit of resume (flows/run_ray.py streams every source in one pipeline)
    executor: str = "ray"  # "ray": stages on Ray Data; "local": in this process (debugging)
    task_timeout_s: int = 6 * 3600  # a Prefect task (the scoring stream, or a global step) past this fails and is retried
    ray_address: str | None = None  # None: RAY_ADDRESS, else start a local Ray
    num_cpus: int | None = None  # local Ray only; None: all cores
    dashboard: bool = True

    def __post_init__(self) -> None:
        check_positive(self, "partition_size", "task_timeout_s")
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
