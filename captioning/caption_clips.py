"""Stage: dense captions for accepted clips, within the trainer's token budget.

Why one module: it is one stage, and most of it is the per-batch path of `CaptionClips` (frames,
drafts, judge, gates, retry, budget) over one batch's state (`_Clip`, `_Row`); the text rules,
prompts, frames and backends it calls already live in their own modules.

Per batch of clips:

1. frames (captioning/frames.py): the pipeline's decoded frames or the extracted clip file;
2. a draft per clip: `video` mode asks the VLM for one dense caption of the clip as a video;
   `frames+summary` (CogVideoX's chain) asks for a short clip caption and dense captions of
   K frames, then fuses them with the text LLM (or the same VLM in text mode);
3. repairs, cleaning and gates (captioning/text.py, `caption`: reasoning, chat-template text and
   markdown removed; empty, refusal, repetition, another language rejected); a clip failing a
   gate is drafted once more with different sampling (`retry_temperature`, another seed);
   failing again -> `caption_error`;
4. the budget: over `max_tokens` (counted with the trainer's tokenizer) -> one LLM shortening
   pass; still over -> cut at the last sentence boundary that fits (`cut_at_sentence`); no
   boundary fits -> `caption_error`. Every caption written is within the budget.

With `[judge]` on, step 2 is preceded by the VLM-judged tags (captioning/judge.py): the same
model, already loaded, answers the configured yes/no questions about the clip first, on the
same frames; a clip on which a tag fires (its threshold, not in `judge.keep`) is not captioned
(`caption_error` says so): decide will reject it, and its caption would be paid for nothing.

Long clips (`caption.policy`): `spread` sees the whole clip as one video (today's frames);
`windows` sees each window of it (captioning/frames.py `windows`) as its own video: one caption
per window (steps 2-4 per window; `caption` is the first, `caption_windows` all of them, each
with its span in seconds), and the judge asked per window, a tag's score the largest of them.

A row carries what is already stored for it (captioning/store.py): judge answers (`vlm_*`) are
used, not asked again; a `caption_key` equal to this stage's key means its caption is stored,
so the row is only judged. Output rows hold what this call made: `clip_id`, the caption columns
of curation/core/schema.py (`caption_key` null where no caption was made: stored already, or judged
out), the judge columns (`judge_key` null where nothing was asked), and `caption_gen_tokens`
(generated tokens, all calls, for throughput figures; not written to the manifest). `duplicate`
is flagged later, across the whole run, by captioning/store.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from captioning import judge as J
from captioning import text as T
from captioning.backends import CaptionOpenAIConfig, OpenAIBackend, Request, Sampling, TransformersBackend, resolve_model
from captioning.judge import JudgeConfig
from captioning.frames import Sampled, pick, pick_windows, read_windows
from captioning.prompts import PROMPT_VERSION, get_prompts
from captioning.tiny import TINY
from curation.core.config_loader import check_positive
from curation.core.frames import FRAMES, unpack_frames
from curation.core.manifest import fingerprint
from curation.media.container import MediaError
from curation.core.schema import CAPTION_COLUMNS, CLIP_COLUMNS, JUDGE_COLUMNS, JUDGE_TAGS, judge_column
from curation.core.stage import Stage


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
        check_positive(self, "max_tokens", "max_new_tokens", "fps", "max_frames", "max_pixels", "summary_frames",
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


# Per-row figures for throughput, never written to the manifest: generated tokens (all calls);
# on a batch's first row (0 elsewhere) the seconds the stage worked on the batch and the seconds
# it waited for it since its previous batch ended (the model idle between batches).
GEN_TOKENS, BUSY_S, WAIT_S = "caption_gen_tokens", "caption_busy_s", "caption_wait_s"
OUTPUT_SCHEMA = pa.schema([pa.field("clip_id", pa.string())]
                          + [pa.field(c, CLIP_COLUMNS[c].type) for c in (*CAPTION_COLUMNS, *JUDGE_COLUMNS)]
                          + [pa.field(GEN_TOKENS, pa.int64()), pa.field(BUSY_S, pa.float64()), pa.field(WAIT_S, pa.float64())])
TODO = "caption_todo"  # optional input: false -> the row is passed over (nothing to do, or its extraction failed)
FRAMES_FROM = "frames_from"  # optional input: "clip" -> the carried frames were decoded from the clip file
JUDGED_OUT = "not captioned: rejected by the VLM judge"  # caption_error prefix (captioning/store.py reads it)


# What a caption depends on beyond the config: how frames reach the model and which gates it
# passed. 2: each clip's own timing (per-video metadata, captioning/frames.py) and the gates of
# captioning/text.py for reasoning, template leaks, markdown, language and loops in any script.
# Captions made before (wrong timing, weaker gates) are not reused.
CAPTION_VERSION = 2


def settings(cfg: CaptionConfig) -> dict:
    """What a caption depends on: models, prompt version, sampling, frame policy, budget."""
    keys = ("mode", "model", "summary_model", "budget_tokenizer", "max_tokens", "max_new_tokens", "temperature", "top_p",
            "retry_temperature", "repetition_penalty", "seed", "frame_source", "fps", "max_frames", "max_pixels", "summary_frames")
    out = {"prompt_version": PROMPT_VERSION, "caption_version": CAPTION_VERSION, **{k: getattr(cfg, k) for k in keys}}
    return out | _windows(cfg)


def _windows(cfg: CaptionConfig) -> dict:
    # Only when on: under `spread` the keys are the ones captions were always made under (same key).
    return {"policy": cfg.policy, "window_frames": cfg.window_frames} if cfg.policy == "windows" else {}


def caption_key(cfg: CaptionConfig) -> str:
    """The resume key: a hash of `settings` (the backend is left out: same model, same captions)."""
    return fingerprint(settings(cfg))


def judge_settings(cfg: CaptionConfig, judge: JudgeConfig) -> dict:
    """What a judge answer depends on: the model, the frames it sees, the questions and how the
    answer is read -- not the thresholds (decide applies those), not the caption's sampling."""
    frames = ("model", "frame_source", "fps", "max_frames", "max_pixels", "retry_temperature", "top_p", "seed")
    return {"judge_version": J.JUDGE_VERSION, **{k: getattr(cfg, k) for k in frames}, **_windows(cfg),
            "questions": [[q.name, q.question] for q in judge.questions],
            "max_new_tokens": judge.max_new_tokens, "logprobs": judge.logprobs}


def judge_key(cfg: CaptionConfig, judge: JudgeConfig) -> str:
    """The judge's resume key (OUT/judge/<key>/): a hash of `judge_settings`."""
    return fingerprint(judge_settings(cfg, judge))


def model_label(cfg: CaptionConfig) -> str:
    return cfg.model if not cfg.summary_model or cfg.summary_model == cfg.model else f"{cfg.model}+{cfg.summary_model}"


def judged_out(vlm: dict[str, float] | None, judge: JudgeConfig) -> list[str]:
    """The judged tags that reject a clip with these answers (curation/decisions/decide.py applies the same)."""
    if not vlm:
        return []
    return [judge_column(q.name) for q in judge.questions
            if q.name not in judge.keep and vlm.get(q.name) is not None and vlm[q.name] >= q.threshold]


@dataclass
class _Clip:
    """One generation unit: a clip under `policy = spread`, one window of it under `windows`."""

    clip_id: str
    media: Sampled | None = None
    vlm: dict[str, float] | None = None  # the judge's answers on these frames: tag -> P(yes)
    judge_error: str | None = None
    text: str | None = None
    short: str | None = None
    flags: list[str] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)  # failing gates of `text` (captioning/text.py)
    error: str | None = None
    gen_tokens: int = 0


@dataclass
class _Row:
    """One input row: its units, what is asked of it, and the judge's verdict."""

    clip_id: str
    image: bool = False
    units: list[_Clip] = field(default_factory=list)
    error: str | None = None  # its frames could not be had
    ask_judge: bool = False  # no stored answers: ask the judge
    caption: bool = True  # no stored caption under this key: caption it
    vlm: dict[str, float] | None = None
    judge_error: str | None = None
    judged_out: list[str] = field(default_factory=list)


class BudgetCounter:
    """Token count of a caption as the trainer tokenizes it (special tokens included)."""

    def __init__(self, name: str):
        self.name = name

    def setup(self) -> None:
        from transformers import AutoTokenizer

        path = resolve_model(self.name, "caption.budget_tokenizer", tokenizer_only=True)
        sub = Path(path) / "tokenizer"  # a diffusers pipeline folder (CogVideoX) keeps T5's tokenizer there
        self.tok = AutoTokenizer.from_pretrained(str(sub) if sub.is_dir() else path)

    def __call__(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=True)["input_ids"])

    def view(self, text: str) -> tuple[int, int]:
        """(unknown, total) as this tokenizer sees `text`, for the language gate: T5's ``<unk>``
        ids among its ids; for a tokenizer without an unknown token, the characters its round
        trip loses among the text's characters (it drops what it cannot represent)."""
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        unk = self.tok.unk_token_id
        if unk is not None:
            return sum(i == unk for i in ids), len(ids)
        chars = [ch for ch in text if not ch.isspace()]
        kept = [ch for ch in self.tok.decode(ids, skip_special_tokens=True) if not ch.isspace()]
        return max(0, len(chars) - len(kept)), len(chars)


class CaptionClips(Stage):
    """Captions (and, with a `judge`, the VLM-judged tags) for accepted clips. Reads clip_id,
    clip_path, media_type (and the transient frames with the clip's start_s, fps and num_frames
    when present; `carried`: what the store holds for the row); root: OUT, which clip_path is
    relative to."""

    reads = ("clip_id", "clip_path", "media_type")
    timing = ("start_s", "fps", "num_frames")  # where pipeline frames sit in the clip
    carried = (TODO, FRAMES_FROM, "caption_key", "judge_key", *(judge_column(t) for t in JUDGE_TAGS))  # optional
    writes = tuple(CAPTION_COLUMNS) + tuple(JUDGE_COLUMNS) + (GEN_TOKENS, BUSY_S, WAIT_S)
    stateful = True

    def __init__(self, cfg: CaptionConfig, root: str, judge: JudgeConfig | None = None):
        self.cfg, self.root = cfg, root
        self.judge = judge if judge is not None and judge.enabled else None
        self.batch_size, self.actors = cfg.batch_size, cfg.actors
        self.num_gpus = cfg.num_gpus if cfg.backend == "transformers" else 0.0
        self.prompts = get_prompts(PROMPT_VERSION)
        self.key, self.sampling_json = caption_key(cfg), json.dumps(settings(cfg), sort_keys=True)
        self.judge_key = judge_key(cfg, self.judge) if self.judge else None

    def setup(self) -> None:
        c = self.cfg
        if c.backend == "transformers":
            device = "cuda" if self.num_gpus > 0 else "cpu"
            self.backend = TransformersBackend(c.model, c.summary_model, system=self.prompts.system,
                                               batch_size=c.batch_size, device=device, dtype=c.dtype)
        else:
            self.backend = OpenAIBackend.from_config(c, system=self.prompts.system)
        self.backend.setup()
        self.count = BudgetCounter(c.budget_tokenizer if c.budget_tokenizer != TINY else TINY)
        self.count.setup()
        self.idle_since = None

    # ---- sampling
    def _sampling(self, retry: bool, max_new_tokens: int | None = None) -> Sampling:
        c = self.cfg
        return Sampling(max_new_tokens=max_new_tokens or c.max_new_tokens, repetition_penalty=c.repetition_penalty,
                        temperature=c.retry_temperature if retry else c.temperature, top_p=c.top_p,
                        seed=c.seed + (1_000_003 if retry else 0))

    # ---- frames
    def _frames(self, batch: pa.Table, i: int, row: _Row) -> None:
        c = self.cfg
        win = c.window_frames if c.policy == "windows" else None
        path, media = (batch.column(k)[i].as_py() for k in ("clip_path", "media_type"))
        row.image = media == "image"
        try:
            # Carried frames: the analysis pass's ("pipeline"), or the clip file's (FRAMES_FROM, the
            # caption stream's frame preparation on CPU workers: captioning/prepare.py).
            carried = FRAMES in batch.column_names and (
                c.frame_source == "auto" or (c.frame_source == "clip") == (FRAMES_FROM in batch.column_names
                                                                           and batch.column(FRAMES_FROM)[i].as_py() == "clip"))
            got = unpack_frames(batch, i) if carried else None
            if got is not None and len(got[1]) and all(k in batch.column_names for k in self.timing):
                start, fps, n = (batch.column(k)[i].as_py() for k in self.timing)
                kw = dict(start_s=start or 0.0, source_fps=fps or 1.0, total_frames=n or 1, fps=c.fps,
                          max_frames=c.max_frames, max_pixels=c.max_pixels)
                seen = pick_windows(got[0], got[1], window_frames=win, **kw) if win else [pick(got[0], got[1], **kw)]
            elif c.frame_source == "pipeline":
                row.error = "no decoded frames (with start_s, fps, num_frames) on the row (caption.frame_source = 'pipeline')"
                return
            elif not path:
                row.error = "no clip file to caption"
                return
            else:
                seen = read_windows(Path(self.root) / path, c.fps, c.max_frames, c.max_pixels, win)
        except (MediaError, ValueError) as e:
            row.error = f"frames: {e}"
            return
        row.units = [_Clip(row.clip_id, m) for m in seen]

    # ---- drafting
    def _visual(self, clip: _Clip, prompt: str) -> Request:
        kind = "video" if len(clip.media.frames) > 1 else "images"  # an image (or 1-frame clip) goes as an image
        return Request(prompt, kind, clip.media)

    def _draft(self, clips: list[_Clip], retry: bool) -> None:
        """Set text/short/flags (or error) of each clip from one pass of the configured mode."""
        s, p = self._sampling(retry), self.prompts
        if self.cfg.mode == "video":
            for clip, rep in zip(clips, self.backend.generate([self._visual(c, p.dense) for c in clips], s)):
                self._take(clip, rep)
            return
        # frames+summary: short caption + K frame captions, then one fusion call
        reqs, spans = [], []
        for clip in clips:
            k = min(self.cfg.summary_frames, len(clip.media.frames))
            idx = np.unique(np.linspace(0, len(clip.media.frames) - 1, k).round().astype(int))
            spans.append((len(reqs), len(idx)))
            reqs.append(self._visual(clip, p.short))
            reqs += [Request(p.frame, "images", clip.media.subset([j])) for j in idx]
        reps = self.backend.generate(reqs, s)
        fuse, fusing = [], []
        for clip, (at, k) in zip(clips, spans):
            short, frames = reps[at], reps[at + 1 : at + 1 + k]
            clip.gen_tokens += sum(r.tokens for r in (short, *frames))
            failed = [r.error for r in (short, *frames) if r.error]
            if failed:
                clip.error = failed[0]
                continue
            clip.short = T.first_sentence(T.clean(T.drop_unfinished(short.text or ""))[0])
            listing = "\n".join(f"{n + 1}. {T.clean(r.text or '')[0]}" for n, r in enumerate(frames))
            fuse.append(Request(p.fuse.format(short=clip.short, frames=listing), "text", text_model=True))
            fusing.append(clip)
        for clip, rep in zip(fusing, self.backend.generate(fuse, s)):
            self._take(clip, rep)

    def _take(self, clip: _Clip, rep) -> None:
        clip.gen_tokens += rep.tokens
        if rep.error:
            clip.error = rep.error
            return
        if rep.hit_limit:
            clip.flags.append("hit_token_limit")
        got = T.caption(rep.text, hit_limit=rep.hit_limit, language=self.prompts.language, view=self.count.view)
        clip.text, clip.fired = got.text, got.fired
        clip.flags += got.flags

    # ---- the judge
    def _judge(self, units: list[_Clip]) -> None:
        """Set `vlm` (or `judge_error`) of each unit: one JSON answer to every question. A
        malformed answer (a server that ignores the schema) is asked once more with other
        sampling; the transformers backend's answers are valid by construction."""
        qs = {q.name: q.question for q in self.judge.questions}
        keys, prompt, c = tuple(qs), J.prompt(qs), self.cfg
        todo = units
        for attempt in range(2):
            if not todo:
                break
            # Greedy first (the most likely answer); the retry samples. No repetition penalty: a
            # JSON of yes/no answers repeats its tokens by design (captioning/judge.py).
            s = Sampling(max_new_tokens=self.judge.max_new_tokens, temperature=c.retry_temperature if attempt else 0.0,
                         top_p=c.top_p, repetition_penalty=1.0, seed=c.seed + attempt * 1_000_003)
            reqs = [replace(self._visual(u, prompt), answer=keys, logprobs=self.judge.logprobs) for u in todo]
            again = []
            for u, rep in zip(todo, self.backend.generate(reqs, s)):
                u.gen_tokens += rep.tokens
                try:
                    if rep.error:
                        raise J.Malformed(rep.error)
                    answers = J.parse(rep.text, list(keys))
                    u.vlm = dict(rep.yes_prob) if rep.yes_prob else J.probabilities(rep.text, answers, rep.steps)
                    u.judge_error = None
                except J.Malformed as e:
                    u.judge_error = f"judge answer unusable twice: {e}"
                    again.append(u)
            todo = again

    def _verdict(self, row: _Row) -> None:
        """The row's answers from its units' (the largest P(yes) per tag over its windows; an
        error in any window leaves the row unjudged, saying why) and the tags that reject it."""
        failed = [u.judge_error for u in row.units if u.vlm is None]
        if failed:
            row.judge_error = failed[0] if len(row.units) == 1 else f"a window: {failed[0]}"
        else:
            row.vlm = {k: max(u.vlm[k] for u in row.units) for k in row.units[0].vlm}
        row.judged_out = judged_out(row.vlm, self.judge)

    # ---- the stage
    def __call__(self, batch: pa.Table) -> pa.Table:
        began = time.monotonic()
        waited = began - self.idle_since if getattr(self, "idle_since", None) is not None else 0.0
        out = self._call(batch)
        self.idle_since = time.monotonic()
        n = out.num_rows
        for name, v in ((BUSY_S, self.idle_since - began), (WAIT_S, waited)):
            out = out.set_column(out.schema.get_field_index(name), name, pa.array([v] + [0.0] * (n - 1) if n else [], pa.float64()))
        return out

    def _call(self, batch: pa.Table) -> pa.Table:
        rows = [_Row(k) for k in batch.column("clip_id").to_pylist()]
        n = len(rows)
        col = lambda c: batch.column(c).to_pylist() if c in batch.column_names else [None] * n  # noqa: E731
        todo, stored_key, judged = col(TODO), col("caption_key"), col("judge_key")
        stored = self._stored_answers(batch)
        for i, row in enumerate(rows):
            if todo[i] is False:
                row.caption = False
                continue
            row.caption = stored_key[i] != self.key
            if self.judge is not None:
                row.vlm = stored[i]
                row.ask_judge = row.vlm is None and judged[i] is None
                row.judged_out = judged_out(row.vlm, self.judge)
            if row.caption and not row.judged_out or row.ask_judge:
                self._frames(batch, i, row)
        live = [r for r in rows if r.error is None]
        asking = [r for r in live if r.ask_judge]
        if asking:
            self._judge([u for r in asking for u in r.units])
            for r in asking:
                self._verdict(r)
        units = [u for r in live if r.caption and not r.judged_out for u in r.units]
        if units:
            self._draft(units, retry=False)
        failing = [c for c in units if c.error is None and c.fired]
        if failing:
            for c in failing:
                c.flags, c.fired = ["retried"], []
                c.text = c.short = None
            self._draft(failing, retry=True)
            for c in failing:
                if c.error is None and (fired := c.fired):
                    c.flags += fired
                    c.error = f"caption failed its quality gates twice ({', '.join(fired)})"
        self._budget([c for c in units if c.error is None])
        return self._rows(rows)

    def _stored_answers(self, batch: pa.Table) -> list[dict[str, float] | None]:
        """Per row, the judge answers it carries to every asked question (None: ask)."""
        n = batch.num_rows
        names = [q.name for q in self.judge.questions] if self.judge is not None else []
        cols = {k: batch.column(judge_column(k)).to_pylist() for k in names if judge_column(k) in batch.column_names}
        if not names or len(cols) < len(names):
            return [None] * n
        out = []
        for i in range(n):
            got = {k: cols[k][i] for k in names}
            out.append(got if all(v is not None for v in got.values()) else None)
        return out

    def _budget(self, clips: list[_Clip]) -> None:
        c, over = self.cfg, []
        for clip in clips:
            if self.count(clip.text) > c.max_tokens:
                over.append(clip)
        if over:
            words = max(8, int(c.max_tokens * 0.55))  # T5 averages ~1.3-1.6 tokens per English word
            reqs = [Request(self.prompts.shorten.format(words=words, caption=cl.text), "text", text_model=True) for cl in over]
            for clip, rep in zip(over, self.backend.generate(reqs, self._sampling(False))):
                clip.gen_tokens += rep.tokens
                clip.flags.append("shortened")
                if rep.error:
                    continue
                short = T.caption(rep.text, hit_limit=rep.hit_limit, language=self.prompts.language, view=self.count.view)
                if not short.fired and len(T.words(short.text)) < len(T.words(clip.text)):
                    clip.text = short.text
                    clip.flags += [f for f in short.flags if f not in clip.flags]
        for clip in over:
            if self.count(clip.text) > c.max_tokens:
                cut = T.cut_to_budget(clip.text, self.count, c.max_tokens)
                if cut is None:
                    clip.error = f"caption over the {c.max_tokens}-token budget after shortening, and no sentence boundary fits"
                else:
                    clip.text = cut
                    clip.flags.append("cut_at_sentence")

    def _rows(self, rows: list[_Row]) -> pa.Table:
        out = []
        for row in rows:
            rec = {"clip_id": row.clip_id, **self._caption_fields(row), GEN_TOKENS: sum(u.gen_tokens for u in row.units)}
            if row.ask_judge:
                rec |= {"judge_key": self.judge_key, "judge_error": row.error or row.judge_error,
                        **{judge_column(k): v for k, v in (row.vlm or {}).items()}}
            out.append(rec)
        return pa.Table.from_pylist(out, schema=OUTPUT_SCHEMA)

    def _caption_fields(self, row: _Row) -> dict:
        """The caption columns of a row: a caption or why not (with the key: the store keeps
        it), only the judge's reason (no key: nothing to store), or nothing (stored already)."""
        if not row.caption:
            return {}
        if row.judged_out and row.error is None:
            return {"caption_error": f"{JUDGED_OUT} ({', '.join(row.judged_out)})"}
        common = {"caption_model": model_label(self.cfg), "caption_prompt_version": PROMPT_VERSION,
                  "caption_sampling": self.sampling_json, "caption_key": self.key}
        units = row.units
        errors = [(k, u.error) for k, u in enumerate(units) if u.error is not None]
        if row.error or errors:
            why = row.error or (errors[0][1] if len(units) == 1 else f"window {errors[0][0] + 1} of {len(units)}: {errors[0][1]}")
            return common | {"caption_error": why, "caption_flags": [f for u in units for f in u.flags]}
        first = units[0]
        span = (None, None) if row.image else first.media.span_s
        windows = None
        if self.cfg.policy == "windows":
            windows = [{"start_s": None if row.image else u.media.span_s[0], "end_s": None if row.image else u.media.span_s[1],
                        "caption": u.text} for u in units]
        return common | {
            "caption": first.text, "caption_short": first.short or T.first_sentence(first.text),
            "caption_tokens": self.count(first.text), "caption_flags": list(dict.fromkeys(f for u in units for f in u.flags)),
            "caption_start_s": span[0], "caption_end_s": span[1], "caption_windows": windows,
        }
