"""Where captions are generated: transformers in this process, or an OpenAI-compatible server.

Why one module: the two backends are one interface (`Request` in, `Reply` out, failures as
replies) under one caption key, so a caption must not depend on which of them made it. What
keeps them equal (the request, the sampling settings, the chat messages, the answer constraint
of the judge) sits beside both, and a difference between them shows when they are read side by
side.

Both take a list of `Request`s and return one `Reply` each, in order; a failed model call is a
`Reply` with `error` set (the clip gets `caption_error`), never an exception that loses the batch.

* `TransformersBackend`: `AutoProcessor` + `AutoModelForImageTextToText` (the model's own chat
  template), batched `generate` with left padding; bf16 + SDPA on GPU, fp32 on CPU. A text-only
  `summary_model` loads with `AutoModelForCausalLM`.
* `OpenAIBackend`: the `openai` library's async client against vLLM, SGLang or `transformers
  serve`; up to `max_in_flight` requests at once (an asyncio semaphore), the client's own
  retries with exponential backoff (connection errors, 408/409/429/5xx). Frames go as base64
  JPEG images, or as one base64 MP4 at the sample rate (`frames_as = "video"`, for vLLM).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from captioning.frames import Sampled
from captioning.judge import Step, schema
from captioning.tiny import TINY, ensure_tiny_vlm
from curation.core.config_loader import check_positive, merge_dicts
from curation.models.hub import MissingModel, Model, hf_model

__all__ = ["MissingModel", "OpenAIBackend", "Reply", "Request", "Sampling", "TransformersBackend", "resolve_model"]

log = logging.getLogger("videomill")


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
        check_positive(self, "max_in_flight", "timeout_s")
        if self.frames_as not in ("images", "video"):
            raise ValueError(f"caption.openai.frames_as must be 'images' or 'video', got {self.frames_as!r}")
        if self.server not in ("vllm", "transformers"):
            raise ValueError(f"caption.openai.server must be 'vllm' or 'transformers', got {self.server!r}")
        if self.max_retries < 0:
            raise ValueError("caption.openai.max_retries must be >= 0")


@dataclass(frozen=True)
class Sampling:
    """How a caption is sampled; both backends send all of it (the caption key hashes it)."""

    max_new_tokens: int
    temperature: float
    top_p: float
    repetition_penalty: float
    seed: int


@dataclass
class Request:
    """One generation. kind: "video" (the sampled frames as one video, with their timing),
    "images" (each frame an image), "text". `media` carries the frames and the clip timing
    (captioning/frames.py `Sampled`)."""

    prompt: str
    kind: str
    media: Sampled | None = None
    text_model: bool = False  # fusion/shortening: the summary LLM when one is configured
    # The VLM judge (captioning/judge.py): the keys of a yes/no JSON answer, which the backend
    # constrains generation to where it can (transformers: always; vLLM: guided decoding).
    answer: tuple[str, ...] = ()
    logprobs: int = 0  # > 0: the reply carries this many candidates per generated token (Reply.steps)

    @property
    def frames(self) -> np.ndarray | None:
        return self.media.frames if self.media is not None else None


@dataclass
class Reply:
    text: str | None
    tokens: int = 0  # generated tokens
    hit_limit: bool = False  # stopped at max_new_tokens, not at end-of-sequence
    error: str | None = None
    steps: list[Step] | None = None  # per generated token: its end offset in `text` and top candidates
    yes_prob: dict[str, float] | None = None  # a constrained answer: P(yes) per key, read where the model chose


# Captions need no chat-template reasoning mode (Qwen3-style `enable_thinking`); templates
# without the variable ignore it. Reasoning text that leaks anyway is stripped by the gates.
TEMPLATE_KWARGS = {"enable_thinking": False}


def resolve_model(name: str, key: str = "caption.model", tokenizer_only: bool = False) -> str:
    """A local folder for `name`: "tiny" is built on first use, a folder is itself, a hub id is
    fetched into the Hugging Face cache on first use (MissingModel offline, in one line)."""
    if name == TINY:
        return ensure_tiny_vlm()
    return hf_model(key, name, tokenizer_only).fetch()


def _messages(req: Request, system: str | None) -> list[dict]:
    content: list[dict] = []
    if req.kind == "video":
        content.append({"type": "video", "video": req.frames})
    elif req.kind == "images":
        content += [{"type": "image", "image": f} for f in req.frames]
    content.append({"type": "text", "text": req.prompt})
    msgs = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    return msgs + [{"role": "user", "content": content}]


class TransformersBackend:
    def __init__(self, model: str, summary_model: str | None, *, system: str, batch_size: int, device: str, dtype: str):
        self.model_name, self.summary_name = model, summary_model
        self.system, self.batch_size, self.device, self.dtype_name = system, batch_size, device, dtype

    def setup(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

        gpu = self.device.startswith("cuda")
        dtype = {"auto": torch.bfloat16 if gpu else torch.float32, "bf16": torch.bfloat16,
                 "fp16": torch.float16, "fp32": torch.float32}[self.dtype_name]
        kw = dict(dtype=dtype, attn_implementation="sdpa")
        path = resolve_model(self.model_name)
        self.processor = AutoProcessor.from_pretrained(path)
        self.processor.tokenizer.padding_side = "left"  # decoder-only batched generation
        self.model = AutoModelForImageTextToText.from_pretrained(path, **kw).to(self.device).eval()
        self.text_processor, self.text_model = self.processor, self.model
        if self.summary_name and self.summary_name != self.model_name:
            spath = resolve_model(self.summary_name, "caption.summary_model")
            self.text_processor = AutoTokenizer.from_pretrained(spath, padding_side="left")
            self.text_model = AutoModelForCausalLM.from_pretrained(spath, **kw).to(self.device).eval()

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Reply]:
        replies: list[Reply | None] = [None] * len(requests)
        # One processor call needs one kind of input: batch video, image and text requests apart.
        groups: dict[tuple[str, bool], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.kind, r.text_model), []).append(i)
        for (kind, text_model), idx in groups.items():
            for j in range(0, len(idx), self.batch_size):
                part = idx[j : j + self.batch_size]
                try:
                    out = self._generate([requests[i] for i in part], text_model, sampling)
                except Exception as e:  # noqa: BLE001 - a failed model call becomes caption_error rows
                    log.warning("caption generation failed for %d requests: %s: %s", len(part), type(e).__name__, e)
                    out = [Reply(None, error=f"model call failed: {type(e).__name__}: {e}")] * len(part)
                for i, rep in zip(part, out):
                    replies[i] = rep
        return replies  # type: ignore[return-value]

    def inputs(self, reqs: list[Request], text_model: bool = False):
        """The model inputs of a batch of requests of one kind: the processor's (or the summary
        tokenizer's) own chat template and preprocessing, left-padded, as tensors.

        Video requests hand over each clip's own ``VideoMetadata`` (frame rate, frame indices,
        frame count, duration): transformers 5 takes the timing only from there (its ``fps=``
        keyword is ignored for pre-sampled frames, and a missing metadata falls back to 24 fps,
        which would tell Qwen2.5-VL ``second_per_grid_ts`` = 2/24 s for every clip and SmolVLM2
        "a 0:00:00 video")."""
        from transformers.video_utils import VideoMetadata

        proc = self.text_processor if text_model else self.processor
        convs = [_messages(r, self.system) for r in reqs]
        template = getattr(proc, "chat_template", None) or ""
        # Only the variables the template reads: a processor takes any other keyword as its own.
        common = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
                      **{k: v for k, v in TEMPLATE_KWARGS.items() if k in template})
        if proc is not self.processor:  # a plain tokenizer: string contents, padding is its own argument
            convs = [[{"role": m["role"], "content": m["content"][-1]["text"]} for m in c] for c in convs]
            return proc.apply_chat_template(convs, padding=True, **common)
        kwargs: dict = {"padding": True}
        if reqs[0].kind == "video":  # frames already sampled at the caption rate: no resampling, their own timing
            kwargs.update(do_sample_frames=False, video_metadata=[VideoMetadata(**r.media.metadata()) for r in reqs])
            if hasattr(getattr(proc, "video_processor", None), "cap_pixels_per_frame"):
                kwargs["cap_pixels_per_frame"] = True  # Qwen2-VL family: the reference's (qwen-vl-utils) pixel budget
        return proc.apply_chat_template(convs, processor_kwargs=kwargs, **common)

    def _generate(self, reqs: list[Request], text_model: bool, s: Sampling) -> list[Reply]:
        import torch

        proc, model = (self.text_processor, self.text_model) if text_model else (self.processor, self.model)
        inputs = self.inputs(reqs, text_model).to(model.device)
        torch.manual_seed(s.seed)
        gen = dict(max_new_tokens=s.max_new_tokens, repetition_penalty=s.repetition_penalty)
        gen |= dict(do_sample=True, temperature=s.temperature, top_p=s.top_p) if s.temperature > 0 else dict(do_sample=False)
        tok = proc.tokenizer if hasattr(proc, "tokenizer") else proc
        eos = model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
        constraint = None
        if reqs[0].answer:
            if any(r.answer != reqs[0].answer for r in reqs):
                raise ValueError("one generation batch holds judge answers with different keys")
            program = self._program(reqs[0].answer, tok, min(eos))
            constraint = _AnswerConstraint(program, len(reqs))
            # Greedy and exactly as long as the template: the answer is the model's choice at each
            # value; min_new_tokens 0 in case the model's generation config forces longer output.
            gen = dict(max_new_tokens=program.max_tokens, min_new_tokens=0, do_sample=False, repetition_penalty=1.0,
                       logits_processor=_processors([constraint]))
        with torch.inference_mode():
            out = model.generate(**inputs, **gen)
        new = out[:, inputs["input_ids"].shape[1] :].cpu()
        pad = model.generation_config.pad_token_id
        replies = []
        for b, row in enumerate(new.tolist()):
            ended = next((j for j, t in enumerate(row) if t in eos), None)
            n = ended if ended is not None else sum(t != pad for t in row)
            rep = Reply(tok.decode(row[:n], skip_special_tokens=True), tokens=n, hit_limit=ended is None)
            if constraint is not None:
                rep.yes_prob = constraint.yes_prob[b]
            replies.append(rep)
        return replies

    def _program(self, keys: tuple[str, ...], tok, eos: int):
        from captioning.judge import AnswerProgram

        cache = self.__dict__.setdefault("_programs", {})
        if (keys, id(tok)) not in cache:
            cache[keys, id(tok)] = AnswerProgram.build(keys, tok, eos)
        return cache[keys, id(tok)]


def _processors(items: list):
    from transformers import LogitsProcessorList

    return LogitsProcessorList(items)


class _AnswerConstraint:
    """A logits processor running one `AnswerProgram` cursor per batch row: every token outside
    the cursor's allowed ones is masked, and at each fork P(yes) is read from the scores it
    receives. With the judge's sampling (greedy, no repetition penalty) transformers adds no
    processor before it, so those scores are the model's logits (tests/captioning checks P(yes)
    against a forward pass of the model on the same prefix)."""

    def __init__(self, program, batch: int):
        self.cursors = [program.cursor() for _ in range(batch)]
        self.yes_prob: list[dict[str, float]] = [{} for _ in range(batch)]
        self.started = False

    def __call__(self, input_ids, scores):
        import torch

        from captioning.judge import p_yes

        if self.started:  # the token each row generated since the last call
            for c, t in zip(self.cursors, input_ids[:, -1].tolist()):
                c.advance(t)
        self.started = True
        mask = torch.full_like(scores, float("-inf"))
        for b, c in enumerate(self.cursors):
            allowed = c.allowed()
            if c.at_fork:
                y, n = scores[b, allowed[0]].float().item(), scores[b, allowed[1]].float().item()
                self.yes_prob[b][c.program.keys[c.key]] = p_yes(y, n)
            mask[b, list(allowed)] = 0.0
        return scores + mask


def jpeg_b64(frame: np.ndarray, quality: int = 90) -> str:
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return base64.b64encode(buf.tobytes()).decode()


def mp4_b64(frames: np.ndarray, fps: float) -> str:
    """Frames (K, H, W, 3) as a base64 H.264 MP4 at `fps` (even sizes, yuv420p)."""
    import av
    from fractions import Fraction

    h, w = frames.shape[1] - frames.shape[1] % 2, frames.shape[2] - frames.shape[2] % 2
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as c:
        s = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f[:h, :w]), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return base64.b64encode(buf.getvalue()).decode()


class OpenAIBackend:
    """Requests to an OpenAI-compatible chat-completions server (vLLM, SGLang, `transformers serve`).

    The sampling is the transformers backend's (`Sampling`, the same caption key): what the
    OpenAI schema lacks goes the way `server` takes it (vLLM: ``repetition_penalty`` and
    ``mm_processor_kwargs`` as extra fields; transformers serve: a ``generation_config`` JSON).
    A video goes as one MP4 whose frame rate is the sampling rate, so the server's video loader
    reads the clip's timing from the container (vLLM: frame rate and count, all frames taken
    with ``--media-io-kwargs '{"video": {"num_frames": -1}}'``, no resampling:
    ``do_sample_frames = false``). As images, each frame follows a "Frame at T s:" line."""

    def __init__(self, model: str, summary_model: str | None, *, system: str, base_url: str, api_key_env: str,
                 max_in_flight: int, timeout_s: float, max_retries: int, frames_as: str, extra_body: dict,
                 server: str = "vllm"):
        self.model, self.summary_model, self.system = model, summary_model or model, system
        self.base_url, self.api_key_env = base_url, api_key_env
        self.max_in_flight, self.timeout_s, self.max_retries = max_in_flight, timeout_s, max_retries
        self.frames_as, self.extra_body, self.server = frames_as, dict(extra_body), server

    @classmethod
    def from_config(cls, cfg, system: str) -> "OpenAIBackend":
        """The backend of a CaptionConfig (its `openai` section)."""
        o = cfg.openai
        return cls(o.served_model or cfg.model, cfg.summary_model, system=system, base_url=o.base_url,
                   api_key_env=o.api_key_env, max_in_flight=o.max_in_flight, timeout_s=o.timeout_s,
                   max_retries=o.max_retries, frames_as=o.frames_as, extra_body=o.extra_body, server=o.server)

    def setup(self) -> None:
        self.api_key = os.environ.get(self.api_key_env) or "EMPTY"

    def check(self) -> None:
        """Fail fast (one line) when no server answers at base_url."""
        from openai import APIError, OpenAI

        try:
            OpenAI(base_url=self.base_url, api_key=os.environ.get(self.api_key_env) or "EMPTY",
                   timeout=10.0, max_retries=1).models.list()
        except APIError as e:  # connection refused, timeout, or an HTTP error status
            raise MissingModel(f"caption.openai.base_url {self.base_url}: no OpenAI-compatible server answers "
                               f"({type(e).__name__}: {e})") from None

    def content(self, r: Request) -> list[dict] | str:
        """The user message's content parts for one request."""
        if r.kind == "text":
            return r.prompt
        if r.kind == "video" and self.frames_as == "video":
            mp4 = mp4_b64(r.frames, r.media.rate)
            media = [{"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{mp4}"}}]
        elif len(r.frames) > 1:  # a clip as images: say when each frame was taken
            media = []
            for t, f in zip(r.media.times_s, r.frames):
                media += [{"type": "text", "text": f"Frame at {t:.1f} s:"},
                          {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{jpeg_b64(f)}"}}]
        else:
            media = [{"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{jpeg_b64(r.frames[0])}"}}]
        return media + [{"type": "text", "text": r.prompt}]

    def body(self, r: Request, s: Sampling) -> dict:
        """The extra request fields: the sampling the OpenAI schema lacks, in `server`'s dialect,
        then `extra_body` over them."""
        out: dict = {}
        if self.server == "vllm":
            out["repetition_penalty"] = s.repetition_penalty
            if r.kind == "video" and self.frames_as == "video":
                out["mm_processor_kwargs"] = {"do_sample_frames": False}
        else:  # transformers serve: generate() arguments as a JSON string
            out["generation_config"] = json.dumps({"repetition_penalty": s.repetition_penalty})
        return merge_dicts(out, self.extra_body)

    def request(self, r: Request, s: Sampling) -> dict:
        """The chat-completions call's arguments for one request. A judge answer (`r.answer`)
        asks vLLM for its JSON schema (guided decoding: every answer valid, the yes/no enum the
        only choice); `transformers serve` ignores `response_format` (with a warning), so it is
        not sent there and the judge's parse-and-retry covers it."""
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        msgs.append({"role": "user", "content": self.content(r)})
        out = dict(model=self.summary_model if r.text_model else self.model, messages=msgs, max_tokens=s.max_new_tokens,
                   temperature=s.temperature, top_p=s.top_p, seed=s.seed, extra_body=self.body(r, s))
        if r.logprobs:
            out |= {"logprobs": True, "top_logprobs": r.logprobs}
        if r.answer and self.server == "vllm":
            out["response_format"] = {"type": "json_schema", "json_schema": {"name": "judge", "schema": schema(r.answer), "strict": True}}
        return out

    async def _one(self, client, sem: asyncio.Semaphore, r: Request, s: Sampling) -> Reply:
        from openai import APIError

        async with sem:
            try:
                resp = await client.chat.completions.create(**self.request(r, s))
            except (APIError, ValueError) as e:  # after the client's retries (or a frame that will not encode): caption_error
                return Reply(None, error=f"model call failed: {type(e).__name__}: {e}")
            choice = resp.choices[0]
            tokens = resp.usage.completion_tokens if resp.usage else 0
            rep = Reply(choice.message.content or "", tokens=tokens, hit_limit=choice.finish_reason == "length")
            if r.logprobs and choice.logprobs and choice.logprobs.content:  # servers without logprobs: none
                end, rep.steps = 0, []
                for t in choice.logprobs.content:
                    end += len(t.token)
                    top = {c.token: c.logprob for c in (t.top_logprobs or [])} | {t.token: t.logprob}
                    rep.steps.append(Step(end, tuple(top.items())))
            return rep

    async def _all(self, requests: list[Request], s: Sampling) -> list[Reply]:
        from openai import AsyncOpenAI

        sem = asyncio.Semaphore(self.max_in_flight)
        async with AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout_s,
                               max_retries=self.max_retries) as client:
            return list(await asyncio.gather(*(self._one(client, sem, r, s) for r in requests)))

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Reply]:
        return asyncio.run(self._all(requests, sampling)) if requests else []


def caption_models(cfg) -> list[Model]:
    """The models a caption config (CaptionConfig) loads in this process: the VLM and the summary
    LLM (transformers backend; a server holds its own), and the budget tokenizer (its tokenizer
    files only). "tiny" is built offline and is not listed."""
    names = [("caption.budget_tokenizer", cfg.budget_tokenizer, True)]
    if cfg.backend == "transformers":
        names += [("caption.model", cfg.model, False), ("caption.summary_model", cfg.summary_model, False)]
    return [hf_model(key, name, tok) for key, name, tok in names if name and name != TINY]


def check_server(cfg) -> None:
    """MissingModel (one line) when the openai backend's server does not answer."""
    if cfg.backend != "openai":
        return
    OpenAIBackend.from_config(cfg, system="").check()
