"""Where captions are generated: transformers in this process, or an OpenAI-compatible server.

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
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioning.tiny import TINY, ensure_tiny_vlm

log = logging.getLogger("videomill")


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float
    top_p: float
    repetition_penalty: float
    seed: int


@dataclass
class Request:
    prompt: str
    kind: str  # "video" (frames as one video), "images" (each frame an image), "text"
    frames: np.ndarray | None = None  # (K, H, W, 3) uint8 RGB
    fps: float = 2.0
    text_model: bool = False  # fusion/shortening: the summary LLM when one is configured


@dataclass
class Reply:
    text: str | None
    tokens: int = 0  # generated tokens
    hit_limit: bool = False  # stopped at max_new_tokens, not at end-of-sequence
    error: str | None = None


class MissingModel(ValueError):
    """A configured model is neither a local folder nor in the Hugging Face cache."""


def resolve_model(name: str) -> str:
    """A local folder for `name`: "tiny" is built on first use, a folder is itself, a hub id
    must already be in the Hugging Face cache (runs never download; one line says how)."""
    if name == TINY:
        return ensure_tiny_vlm()
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    from huggingface_hub import snapshot_download

    # OSError: not in the cache (LocalEntryNotFoundError); ValueError: not a valid repo id either
    # (HFValidationError), e.g. a local path that does not exist.
    try:
        return snapshot_download(name, local_files_only=True)
    except (OSError, ValueError):
        raise MissingModel(
            f"model {name!r} is not a local folder and not in the Hugging Face cache: fetch it first "
            f"(`hf download {name}`) or give a local path; `[caption] enabled = false` skips captioning"
        ) from None


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
            spath = resolve_model(self.summary_name)
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
                    out = self._generate([requests[i] for i in part], kind, text_model, sampling)
                except Exception as e:  # noqa: BLE001 - a failed model call becomes caption_error rows
                    log.warning("caption generation failed for %d requests: %s: %s", len(part), type(e).__name__, e)
                    out = [Reply(None, error=f"model call failed: {type(e).__name__}: {e}")] * len(part)
                for i, rep in zip(part, out):
                    replies[i] = rep
        return replies  # type: ignore[return-value]

    def _generate(self, reqs: list[Request], kind: str, text_model: bool, s: Sampling) -> list[Reply]:
        import torch

        proc, model = (self.text_processor, self.text_model) if text_model else (self.processor, self.model)
        convs = [_messages(r, self.system) for r in reqs]
        if proc is not self.processor:  # a plain tokenizer: string contents
            convs = [[{"role": m["role"], "content": m["content"][-1]["text"]} for m in c] for c in convs]
        kwargs: dict = {"padding": True}
        if kind == "video":  # frames are already sampled at the caption rate: tell the processor
            kwargs.update(do_sample_frames=False, fps=reqs[0].fps)
        inputs = proc.apply_chat_template(convs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                          return_tensors="pt", processor_kwargs=kwargs)
        inputs = inputs.to(model.device)
        torch.manual_seed(s.seed)
        gen = dict(max_new_tokens=s.max_new_tokens, repetition_penalty=s.repetition_penalty)
        gen |= dict(do_sample=True, temperature=s.temperature, top_p=s.top_p) if s.temperature > 0 else dict(do_sample=False)
        with torch.inference_mode():
            out = model.generate(**inputs, **gen)
        new = out[:, inputs["input_ids"].shape[1] :].cpu()
        tok = proc.tokenizer if hasattr(proc, "tokenizer") else proc
        eos = model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
        pad = model.generation_config.pad_token_id
        replies = []
        for row in new.tolist():
            ended = next((k for k, t in enumerate(row) if t in eos), None)
            n = ended if ended is not None else sum(t != pad for t in row)
            replies.append(Reply(tok.decode(row[:n], skip_special_tokens=True), tokens=n, hit_limit=ended is None))
        return replies


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
    def __init__(self, model: str, summary_model: str | None, *, system: str, base_url: str, api_key_env: str,
                 max_in_flight: int, timeout_s: float, max_retries: int, frames_as: str, extra_body: dict):
        self.model, self.summary_model, self.system = model, summary_model or model, system
        self.base_url, self.api_key_env = base_url, api_key_env
        self.max_in_flight, self.timeout_s, self.max_retries = max_in_flight, timeout_s, max_retries
        self.frames_as, self.extra_body = frames_as, dict(extra_body)

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

    def _content(self, r: Request) -> list[dict] | str:
        if r.kind == "text":
            return r.prompt
        if r.kind == "video" and self.frames_as == "video":
            media = [{"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{mp4_b64(r.frames, r.fps)}"}}]
        else:
            media = [{"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{jpeg_b64(f)}"}} for f in r.frames]
        return media + [{"type": "text", "text": r.prompt}]

    async def _one(self, client, sem: asyncio.Semaphore, r: Request, s: Sampling) -> Reply:
        from openai import APIError

        async with sem:
            try:
                msgs = [{"role": "system", "content": self.system}] if self.system else []
                msgs.append({"role": "user", "content": self._content(r)})
                resp = await client.chat.completions.create(
                    model=self.summary_model if r.text_model else self.model, messages=msgs,
                    max_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, seed=s.seed,
                    extra_body=self.extra_body or None,
                )
            except (APIError, ValueError) as e:  # after the client's retries (or a frame that will not encode): caption_error
                return Reply(None, error=f"model call failed: {type(e).__name__}: {e}")
            choice = resp.choices[0]
            tokens = resp.usage.completion_tokens if resp.usage else 0
            return Reply(choice.message.content or "", tokens=tokens, hit_limit=choice.finish_reason == "length")

    async def _all(self, requests: list[Request], s: Sampling) -> list[Reply]:
        from openai import AsyncOpenAI

        sem = asyncio.Semaphore(self.max_in_flight)
        async with AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout_s,
                               max_retries=self.max_retries) as client:
            return list(await asyncio.gather(*(self._one(client, sem, r, s) for r in requests)))

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Reply]:
        return asyncio.run(self._all(requests, sampling)) if requests else []


def check_models(cfg) -> None:
    """Raise MissingModel (one line) unless every model `cfg` (a CaptionConfig) needs is there:
    local folders or Hugging Face cache entries for the transformers backend and the budget
    tokenizer, an answering server for the openai backend."""
    resolve_model(cfg.budget_tokenizer)
    if cfg.backend == "openai":
        o = cfg.openai
        OpenAIBackend(o.served_model or cfg.model, cfg.summary_model, system="", base_url=o.base_url,
                      api_key_env=o.api_key_env, max_in_flight=1, timeout_s=o.timeout_s, max_retries=0,
                      frames_as=o.frames_as, extra_body=o.extra_body).check()
        return
    for name in (cfg.model, cfg.summary_model):
        if name:
            resolve_model(name)
