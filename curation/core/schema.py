"""The manifest schema: every column, its Arrow type and its meaning, in one place.

Two tables make the manifest:

* ``sources``: exactly one row per input file, whatever happened to it.
* ``clips``: one row per clip cut from a source, every score kept next to the verdict.

Stages declare which columns they read and write (``Stage.reads`` / ``Stage.writes``);
``check_chain`` verifies that a list of stages can run in order before any work starts.
Later stages (aesthetic, captions, shards) add their columns here, in this file, and bump
``SCHEMA_VERSION`` when a column changes meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import pyarrow as pa

SCHEMA_VERSION = 1
METADATA_KEY = b"videomill.schema_version"


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    doc: str


def _cols(*cols: Column) -> dict[str, Column]:
    return {c.name: c for c in cols}


SOURCE_COLUMNS = _cols(
    Column("source", pa.string(), "Input URI or path, as expanded from the command line."),
    Column("source_id", pa.string(), "Stable hash of `source` (16 hex digits); prefix of its clip ids."),
    Column("media_type", pa.string(), "`video` or `image` (unknown when unreadable)."),
    Column("status", pa.string(), "`ok` | `error`."),
    Column("error", pa.string(), "Why the source failed, in words a person understands; null when ok."),
    Column(
        "error_code",
        pa.string(),
        "Short machine code grouping `error` in the report; null when ok. Media codes (curation/media/container.py, "
        "decode.py): `empty`, `not_found`, `unreadable`, `not_a_file`, `not_media`, `no_video` (none, or only "
        "cover art), `no_size`, `unsupported_codec`, `too_large` (over [decode] max_pixels), `too_small` (under [decode] min_side), `undecodable`, "
        "`decode`, `truncated`, `timeout` (decoder stalled); `extract` for a failed clip extraction; "
        "`worker_died`, `exception` from the pipeline's fault isolation.",
    ),
    Column(
        "error_detail",
        pa.string(),
        "For an unexpected failure: the exception's traceback (last frames, at most 4000 characters); "
        "for a worker that died: what was tried. Null otherwise.",
    ),
    Column("size_bytes", pa.int64(), "File size in bytes."),
    Column("container", pa.string(), "Container format as named by FFmpeg (e.g. `mov,mp4,m4a,3gp`)."),
    Column("codec", pa.string(), "Video codec name (e.g. `h264`)."),
    Column("duration_s", pa.float64(), "Duration in seconds (decoded, falling back to the container's)."),
    Column("fps", pa.float64(), "Average frame rate: decoded frames / decoded duration."),
    Column("vfr", pa.bool_(), "True when frame intervals vary by more than 10% (variable frame rate)."),
    Column("width", pa.int32(), "Display width in pixels, after rotation."),
    Column("height", pa.int32(), "Display height in pixels, after rotation."),
    Column("rotation", pa.int32(), "Display rotation in degrees from the container (0, 90, 180, 270)."),
    Column("bit_rate", pa.int64(), "Container bit rate in bits/s (null when unknown)."),
    Column("has_audio", pa.bool_(), "Whether the file has an audio stream."),
    Column("num_frames", pa.int64(), "Frames decoded."),
    Column("num_shots", pa.int32(), "Shots found by cut detection."),
    Column("cut_rate_per_min", pa.float64(), "Detected cuts per minute of source."),
    Column("num_clips", pa.int32(), "Clips cut from this source (0 on error)."),
)

# Heuristic negative tags (the CogVideoX six). Each is a score in [0, 1]; the
# decision step compares it with that tag's threshold.
NEG_TAGS: tuple[str, ...] = (
    "over_edited",
    "incoherent_motion",
    "low_quality",
    "lecture",
    "text_dominated",
    "noisy_screen",
)


def neg_column(tag: str) -> str:
    return f"neg_{tag}"


CLIP_COLUMNS = _cols(
    Column("clip_id", pa.string(), "`<source_id>_<first frame>_<end frame>`: stable across reruns, tar-safe."),
    Column("clip_path", pa.string(), "Extracted clip file (null unless accepted and extracted)."),
    Column("source", pa.string(), "The source this clip was cut from."),
    Column("media_type", pa.string(), "`video` or `image`."),
    Column("start_frame", pa.int64(), "First frame index in the source (inclusive)."),
    Column("end_frame", pa.int64(), "Frame index where the clip ends (exclusive)."),
    Column("start_s", pa.float64(), "Presentation time of the first frame."),
    Column("end_s", pa.float64(), "Presentation time just after the last frame."),
    Column("num_frames", pa.int64(), "Frames in the clip at the source frame rate."),
    Column("fps", pa.float64(), "Source average frame rate over the clip."),
    Column("width", pa.int32(), "Display width of the source."),
    Column("height", pa.int32(), "Display height of the source."),
    Column(
        "motion_score",
        pa.float64(),
        "Mean optical-flow magnitude / working short side / frame gap in s: the fraction of the "
        "frame's short side the content moves per second. ~0 for a static clip.",
    ),
    Column(
        "motion_min_patch",
        pa.float64(),
        "Smallest per-patch (4x4 grid) motion score: near 0 when part of the frame is static.",
    ),
    Column(
        "motion_coherence",
        pa.float64(),
        "In [0,1]: the share of the change between sampled frames that optical flow explains, "
        "1 - unexplained / max(changed, 0.25 x frame) in pixels (curation/analysis/score_motion.py); ~1 for "
        "rigid and natural motion, low for dissolves, snow and chaos. Null when under 0.5% of pixels changed.",
    ),
    Column(
        "sharpness",
        pa.float64(),
        "Median over tag frames of the 99th percentile of |Laplacian| (capped at 255) of the luma "
        "at the tags short side, inside any black bars.",
    ),
    Column("bits_per_pixel", pa.float64(), "Source bit rate / (width x height x fps); null when unknown."),
    Column("border_frac", pa.float64(), "Fraction of the frame covered by black borders (letterbox/pillarbox)."),
    Column("text_area", pa.float64(), "Median fraction of the frame covered by text-like regions."),
    *(
        Column(neg_column(t), pa.float64(), f"Negative tag score for `{t}` in [0,1] (see curation/analysis/tag_negatives.py).")
        for t in NEG_TAGS
    ),
    Column("neg_tags", pa.list_(pa.string()), "Negative tags whose score reached their threshold."),
    Column("status", pa.string(), "`accepted` | `rejected` | `error`."),
    Column("reject_reasons", pa.list_(pa.string()), "Every rule the clip failed (empty when accepted)."),
    Column("error", pa.string(), "Why scoring or extraction failed; null otherwise."),
    Column("error_code", pa.string(), "Short machine code grouping `error` (see the sources table); null otherwise."),
    Column("error_detail", pa.string(), "Traceback or detail of an unexpected failure (see the sources table); null otherwise."),
    Column(
        "bucket",
        pa.string(),
        "Training bucket (curation/core/buckets.py): `<W>x<H>_f<frames>` for video, `image_<W>x<H>` for "
        "images. Null unless accepted and bucketed (see `unsharded` in OUT/shards/index.json).",
    ),
    Column(
        "shard",
        pa.string(),
        "WebDataset tar holding the clip, relative to OUT (`shards/<bucket>/shard-NNNNNN.tar`); "
        "its key there is `clip_id`. Null when the clip is not in a shard.",
    ),
)

# Caption columns (captioning/caption_clips.py), filled after extraction on accepted clips.
CAPTION_COLUMNS = _cols(
    Column("caption", pa.string(), "Dense caption of the clip (subject, motion, scene, lighting, camera), within the "
           "token budget; null when not captioned (not accepted, or `caption_error`)."),
    Column("caption_short", pa.string(), "One-sentence caption: the short clip caption of `frames+summary`, the "
           "first sentence of the dense caption in `video` mode."),
    Column("caption_model", pa.string(), "Model id(s) that wrote the caption: `vlm` and, when different, `+llm`."),
    Column("caption_prompt_version", pa.string(), "Version of the prompt templates (captioning/prompts.py)."),
    Column("caption_sampling", pa.string(), "JSON: mode, sampling and frame policy the caption was made with."),
    Column("caption_key", pa.string(), "Hash of model, prompt version, sampling and frame policy: the resume key."),
    Column("caption_tokens", pa.int32(), "Length of `caption` in budget-tokenizer tokens (T5 for CogVideoX), "
           "special tokens included, as the trainer tokenizes it."),
    Column("caption_flags", pa.list_(pa.string()), "Repairs made and quality gates that fired: hit_token_limit, "
           "reasoning_stripped, template_stripped, markdown_repaired, boilerplate_stripped, repetition, refusal, "
           "language, empty, shortened, cut_at_sentence, retried, duplicate."),
    Column("caption_error", pa.string(), "Why the clip has no caption (model call failed, gates failed twice, "
           "over budget); null otherwise."),
    Column("caption_start_s", pa.float64(), "Where the frames `caption` describes begin, in seconds from the clip's "
           "first frame: 0 for `caption.policy = spread` (the whole clip), the first window's start for `windows`; "
           "null for an image or no caption."),
    Column("caption_end_s", pa.float64(), "Where the frames `caption` describes end (seconds from the clip's first frame)."),
    Column("caption_windows", pa.list_(pa.struct([("start_s", pa.float64()), ("end_s", pa.float64()), ("caption", pa.string())])),
           "`caption.policy = windows`: one caption per window of the clip (Cosmos-Curate's 256 frames; a remainder "
           "of at least half a window is its own window), with its span in seconds; `caption` is the first. Null for `spread`."),
)
CLIP_COLUMNS.update(CAPTION_COLUMNS)

# Model scores (issue 10: curation/models/score_clip.py, curation/models/score_text.py), and the columns
# of the global steps between scoring and decide (curation/decisions/dedup.py, curation/models/tag_probe.py).
ZS_TAGS: tuple[str, ...] = ("low_quality", "lecture", "text_dominated", "noisy_screen")  # = score_clip.ZS_TAGS
CLIP_COLUMNS.update(
    _cols(
        Column("aesthetic_score", pa.float64(), "Mean over the clip's scored frames of the LAION aesthetic head on the CLIP image embedding (~1-10; curation/models/score_clip.py)."),
        Column("aesthetic_min", pa.float64(), "Minimum per-frame aesthetic score (Cosmos-Curate filters on this at 1 fps)."),
        Column("aesthetic_p10", pa.float64(), "10th percentile of the per-frame aesthetic scores."),
        *(
            Column(f"zs_{t}", pa.float64(), f"CLIP zero-shot score for `{t}` in [0,1]: softmax mass on its positive prompts, mean over frames.")
            for t in ZS_TAGS
        ),
        Column("model_frames", pa.int32(), "Frames the CLIP stage scored (~1 fps of the carried frames, capped)."),
        Column("ocr_text_area", pa.float64(), "Median fraction of the frame covered by text the PP-OCRv4 detector finds and reads (curation/models/score_text.py)."),
        Column("ocr_text_area_max", pa.float64(), "Largest per-frame OCR text-area fraction."),
        Column("dedup", pa.string(), "Near-duplicate verdict: `kept` | `duplicate`; null when the clip has no embedding (error, models off)."),
        Column("dup_of", pa.string(), "Near-duplicate removal: the kept clip this one duplicates (null when kept or unscored; curation/decisions/dedup.py)."),
        Column("dup_sim", pa.float64(), "Cosine similarity of the clip embedding to its nearest better-ranked clip (null: none, or no embedding)."),
        Column("probe_tags", pa.list_(pa.string()), "Tags the trained tag probe (`[probe] path`) puts on the clip; null without a probe."),
        Column("probe_scores", pa.map_(pa.string(), pa.float64()), "The tag probe's probability per tag; null without a probe."),
    )
)
# VLM-judged tags (captioning/judge.py): the caption model's answer to one yes/no question per
# tag, on clips the cheap filters accepted. The names are fixed here (the schema is code); the
# questions' wording and thresholds are configuration ([judge], captioning/judge.py JudgeConfig).
JUDGE_TAGS: tuple[str, ...] = (
    # CogVideoX's six negative tags, asked of the VLM
    "over_edited", "incoherent_motion", "low_quality", "lecture", "text_dominated", "noisy_screen",
    # Cosmos-Curate's artefact criteria
    "slideshow", "synthetic", "visual_filter", "post_production_text", "video_in_video", "photographic_artifacts",
    "distorted_view", "low_resolution", "blurred_region", "abrupt_camera_motion", "fast_zoom", "unnatural_speed",
)


def judge_column(tag: str) -> str:
    return f"vlm_{tag}"


JUDGE_COLUMNS = _cols(
    *(Column(judge_column(t), pa.float64(), f"VLM-judged `{t}` in [0,1]: P(yes) / (P(yes) + P(no)) at the answer's "
             "position (1/0 from the answer where the backend gives no probabilities; with `caption.policy = windows`, "
             "the largest over the clip's windows); null when not judged.") for t in JUDGE_TAGS),
    Column("judge_error", pa.string(), "Why a judged clip has no VLM tag scores (malformed answer twice, model call failed); null otherwise."),
    Column("judge_key", pa.string(), "Hash of the judge's model, questions, answer format and frame policy: its resume key "
           "(OUT/judge/<judge_key>/; thresholds are not in it); null when not judged."),
)
CLIP_COLUMNS.update(JUDGE_COLUMNS)

# Columns the global steps before decide own (recomputed from the stored embeddings, never re-scored).
GLOBAL_COLUMNS = ("dedup", "dup_of", "dup_sim", "probe_tags", "probe_scores")

# Columns the decision step owns; scoring leaves them out.
DECISION_COLUMNS = ("neg_tags", "status", "reject_reasons", "clip_path")
# Columns the shard writer owns (curation/outputs/write_shards.py); scoring leaves them out too.
SHARD_COLUMNS = ("bucket", "shard")
SCORE_COLUMNS = tuple(c for c in CLIP_COLUMNS
                      if c not in DECISION_COLUMNS + SHARD_COLUMNS + tuple(CAPTION_COLUMNS) + tuple(JUDGE_COLUMNS) + GLOBAL_COLUMNS)


def _schema(columns: dict[str, Column], names: Iterable[str]) -> pa.Schema:
    fields = [pa.field(n, columns[n].type) for n in names]
    return pa.schema(fields, metadata={METADATA_KEY: str(SCHEMA_VERSION).encode()})


def source_schema() -> pa.Schema:
    return _schema(SOURCE_COLUMNS, SOURCE_COLUMNS)


def scored_clip_schema() -> pa.Schema:
    return _schema(CLIP_COLUMNS, SCORE_COLUMNS)


def clip_schema() -> pa.Schema:
    return _schema(CLIP_COLUMNS, CLIP_COLUMNS)


def to_table(rows: Sequence[dict], schema: pa.Schema) -> pa.Table:
    """Build a table with exactly `schema`'s columns; missing keys become nulls, extra keys fail."""
    names = set(schema.names)
    for row in rows:
        extra = set(row) - names
        if extra:
            raise ValueError(f"row has columns not in the schema: {sorted(extra)}")
    return pa.Table.from_pylist([{n: r.get(n) for n in schema.names} for r in rows], schema=schema)


def check_chain(stages: Sequence[object], available: Iterable[str]) -> list[str]:
    """Check that each stage's `reads` are produced by the input or an earlier stage.

    Returns the final column list; raises ValueError naming the stage and missing columns.
    """
    have = list(available)
    for stage in stages:
        missing = [c for c in getattr(stage, "reads", ()) if c not in have]
        if missing:
            raise ValueError(f"stage {type(stage).__name__} reads {missing}, which no earlier stage writes")
        have += [c for c in getattr(stage, "writes", ()) if c not in have]
    return have


SOURCE_ROW = "source_row"


def analyzed_clip_schema() -> pa.Schema:
    """Clip rows as the analysis stage emits them, before any decision.

    The scored clip columns, the transient frame columns (curation/core/frames.py) and
    `source_row`: the source's own `sources` row as a struct, set on exactly one row per
    source (its first clip). A source with no clip (an error, or too short) is one row with a
    null `clip_id` that carries only its `source_row`. The manifest writer splits the two
    apart; neither `source_row` nor the frames are written with the clips.
    """
    from curation.core.frames import frame_fields

    fields = [*scored_clip_schema(), *frame_fields(), pa.field(SOURCE_ROW, pa.struct(list(source_schema())))]
    return pa.schema(fields, metadata={METADATA_KEY: str(SCHEMA_VERSION).encode()})
