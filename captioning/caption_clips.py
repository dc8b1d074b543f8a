"""Stage: dense captions for accepted clips, within the trainer's token budget.

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
model answers the configured yes/no questions about each clip first; a clip on which a tag
fires (its threshold, not in `judge.keep`) is not captioned (`caption_error` says so): decide
will reject it, and its caption would be paid for nothing. Judge answers a row already carries
(`vlm_*` columns, from an earlier run) are not asked again.

Output rows: `clip_id` plus the caption and judge columns of curation/schema.py (`duplicate`
is flagged later, across the whole run, by captioning/store.py) and `caption_gen_tokens`
(generated tokens, all calls, for throughput figures; not written to the manifest).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from captioning import judge as J
from captioning import text as T
from captioning.backends import OpenAIBackend, Request, Sampling, TransformersBackend, resolve_model
from captioning.frames import Sampled, pick, read_clip
from captioning.prompts import PROMPT_VERSION, get_prompts
from captioning.tiny import TINY
from curation.config import CaptionConfig, JudgeConfig
from curation.frames import FRAMES, unpack_frames
from curation.manifest import fingerprint
from curation.media import MediaError
from curation.schema import CAPTION_COLUMNS, CLIP_COLUMNS, JUDGE_COLUMNS, JUDGE_TAGS, judge_column
from curation.stage import Stage

GEN_TOKENS = "caption_gen_tokens"
OUTPUT_SCHEMA = pa.schema([pa.field("clip_id", pa.string())]
                          + [pa.field(c, CLIP_COLUMNS[c].type) for c in (*CAPTION_COLUMNS, *JUDGE_COLUMNS)]
                          + [pa.field(GEN_TOKENS, pa.int64())])
JUDGED_OUT = "not captioned: rejected by the VLM judge"  # caption_error prefix (captioning/store.py reads it)


# What a caption depends on beyond the config: how frames reach the model and which gates it
# passed. 2: each clip's own timing (per-video metadata, captioning/frames.py) and the gates of
# captioning/text.py for reasoning, template leaks, markdown, language and loops in any script.
# Captions made before (wrong timing, weaker gates) are not reused.
CAPTION_VERSION = 2


def settings(cfg: CaptionConfig, judge: JudgeConfig | None = None) -> dict:
    """What a caption depends on: models, prompt version, sampling, frame policy, budget; with
    the judge on, its questions and answer settings (not its thresholds: decide applies those)."""
    keys = ("mode", "model", "summary_model", "budget_tokenizer", "max_tokens", "max_new_tokens", "temperature", "top_p",
            "retry_temperature", "repetition_penalty", "seed", "frame_source", "fps", "max_frames", "max_pixels", "summary_frames")
    out = {"prompt_version": PROMPT_VERSION, "caption_version": CAPTION_VERSION, **{k: getattr(cfg, k) for k in keys}}
    if judge is not None and judge.enabled:
        out["judge"] = {"questions": [[q.name, q.question] for q in judge.questions],
                        "max_new_tokens": judge.max_new_tokens, "logprobs": judge.logprobs}
    return out


def caption_key(cfg: CaptionConfig, judge: JudgeConfig | None = None) -> str:
    """The resume key: a hash of `settings` (the backend is left out: same model, same captions)."""
    return fingerprint(settings(cfg, judge))


def model_label(cfg: CaptionConfig) -> str:
    return cfg.model if not cfg.summary_model or cfg.summary_model == cfg.model else f"{cfg.model}+{cfg.summary_model}"


@dataclass
class _Clip:
    clip_id: str
    media: Sampled | None = None
    vlm: dict[str, float] | None = None  # judged tag -> P(yes)
    judge_error: str | None = None
    text: str | None = None
    short: str | None = None
    flags: list[str] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)  # failing gates of `text` (captioning/text.py)
    error: str | None = None
    gen_tokens: int = 0


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
    """Captions for accepted clips. Reads clip_id, clip_path, media_type (and the transient
    frames with the clip's start_s, fps and num_frames when present); root: OUT, which
    clip_path is relative to."""

    reads = ("clip_id", "clip_path", "media_type")
    timing = ("start_s", "fps", "num_frames")  # where pipeline frames sit in the clip
    writes = tuple(CAPTION_COLUMNS) + tuple(JUDGE_COLUMNS) + (GEN_TOKENS,)
    stateful = True

    def __init__(self, cfg: CaptionConfig, root: str, judge: JudgeConfig | None = None):
        self.cfg, self.root = cfg, root
        self.judge = judge if judge is not None and judge.enabled else None
        self.batch_size = cfg.batch_size
        self.num_gpus = cfg.num_gpus if cfg.backend == "transformers" else 0.0
        self.prompts = get_prompts(PROMPT_VERSION)
        self.key = caption_key(cfg, self.judge)
        self.sampling_json = json.dumps(settings(cfg, self.judge), sort_keys=True)

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

    # ---- sampling
    def _sampling(self, retry: bool, max_new_tokens: int | None = None) -> Sampling:
        c = self.cfg
        return Sampling(max_new_tokens=max_new_tokens or c.max_new_tokens, repetition_penalty=c.repetition_penalty,
                        temperature=c.retry_temperature if retry else c.temperature, top_p=c.top_p,
                        seed=c.seed + (1_000_003 if retry else 0))

    # ---- frames
    def _frames(self, batch: pa.Table, i: int, clip: _Clip) -> None:
        c = self.cfg
        row = {k: batch.column(k)[i].as_py() for k in ("clip_path", "media_type")}
        try:
            got = unpack_frames(batch, i) if c.frame_source != "clip" and FRAMES in batch.column_names else None
            if got is not None and len(got[1]) and all(k in batch.column_names for k in self.timing):
                start, fps, n = (batch.column(k)[i].as_py() for k in self.timing)
                clip.media = pick(got[0], got[1], start_s=start or 0.0, source_fps=fps or 1.0, total_frames=n or 1,
                                  fps=c.fps, max_frames=c.max_frames, max_pixels=c.max_pixels)
            elif c.frame_source == "pipeline":
                clip.error = "no decoded frames (with start_s, fps, num_frames) on the row (caption.frame_source = 'pipeline')"
            elif not row["clip_path"]:
                clip.error = "no clip file to caption"
            else:
                clip.media = read_clip(Path(self.root) / row["clip_path"], c.fps, c.max_frames, c.max_pixels)
        except (MediaError, ValueError) as e:
            clip.error = f"frames: {e}"

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
    def _judge(self, clips: list[_Clip], batch: pa.Table) -> None:
        """Set `vlm` (or `judge_error`) of each clip: one JSON answer to every question; a
        malformed answer is asked once more with other sampling. Answers the row already
        carries (vlm_* columns from the store) are kept, not asked again."""
        qs = {q.name: q.question for q in self.judge.questions}
        stored = {judge_column(k): batch.column(judge_column(k)).to_pylist() for k in qs if judge_column(k) in batch.column_names}
        row = {c.clip_id: i for i, c in enumerate(clips)}
        todo = []
        for c in clips:
            got = {k: stored[judge_column(k)][row[c.clip_id]] for k in qs if judge_column(k) in stored}
            if len(got) == len(qs) and all(v is not None for v in got.values()):
                c.vlm = got
            else:
                todo.append(c)
        prompt, c = J.prompt(qs), self.cfg
        for attempt in range(2):
            if not todo:
                break
            # Greedy first (the most likely answer); the retry samples. No repetition penalty: a
            # JSON of yes/no answers repeats its tokens by design, and a penalty would bend P(yes).
            s = Sampling(max_new_tokens=self.judge.max_new_tokens, temperature=c.retry_temperature if attempt else 0.0,
                         top_p=c.top_p, repetition_penalty=1.0, seed=c.seed + attempt * 1_000_003)
            reqs = [Request(prompt, self._visual(cl, prompt).kind, cl.media, logprobs=self.judge.logprobs) for cl in todo]
            again = []
            for cl, rep in zip(todo, self.backend.generate(reqs, s)):
                cl.gen_tokens += rep.tokens
                try:
                    if rep.error:
                        raise J.Malformed(rep.error)
                    cl.vlm, cl.judge_error = J.probabilities(rep.text, J.parse(rep.text, list(qs)), rep.steps), None
                except J.Malformed as e:
                    cl.judge_error = f"judge answer unusable twice: {e}" if attempt else None
                    again.append(cl)
            todo = again

    def _judged_out(self, clip: _Clip) -> list[str]:
        """The judged tags that reject this clip (decide applies the same thresholds)."""
        if not clip.vlm:
            return []
        return [judge_column(q.name) for q in self.judge.questions
                if q.name not in self.judge.keep and clip.vlm.get(q.name, 0.0) >= q.threshold]

    # ---- the stage
    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = batch.column("clip_id").to_pylist()
        clips = [_Clip(clip_id=k) for k in ids]
        for i, clip in enumerate(clips):
            self._frames(batch, i, clip)
        live = [c for c in clips if c.error is None]
        if self.judge is not None and live:
            self._judge(live, batch.filter(pa.array([c.error is None for c in clips])))
            for c in live:
                if fired := self._judged_out(c):
                    c.error = f"{JUDGED_OUT} ({', '.join(fired)})"
            live = [c for c in live if c.error is None]
        if live:
            self._draft(live, retry=False)
        failing = [c for c in live if c.error is None and c.fired]
        if failing:
            for c in failing:
                c.flags, c.fired = ["retried"], []
                c.text = c.short = None
            self._draft(failing, retry=True)
            for c in failing:
                if c.error is None and (fired := c.fired):
                    c.flags += fired
                    c.error = f"caption failed its quality gates twice ({', '.join(fired)})"
        self._budget([c for c in live if c.error is None])
        return self._rows(clips)

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

    def _rows(self, clips: list[_Clip]) -> pa.Table:
        rows = []
        for clip in clips:
            ok = clip.error is None
            text = clip.text if ok else None
            rows.append({
                "clip_id": clip.clip_id, "caption": text,
                "caption_short": (clip.short or T.first_sentence(text)) if ok else None,
                "caption_model": model_label(self.cfg), "caption_prompt_version": PROMPT_VERSION,
                "caption_sampling": self.sampling_json, "caption_key": self.key,
                "caption_tokens": self.count(text) if ok else None, "caption_flags": clip.flags,
                "caption_error": clip.error, GEN_TOKENS: clip.gen_tokens, "judge_error": clip.judge_error,
                **{judge_column(k): (clip.vlm or {}).get(k) for k in JUDGE_TAGS},
            })
        return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)
