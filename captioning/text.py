"""Caption text: cleaning, quality gates, the token budget, duplicate detection.

Pure functions on strings, so every rule is tested without a model. The gates:

* ``empty``: nothing left after cleaning (or fewer than `MIN_WORDS` words).
* ``refusal``: the model declined ("I'm sorry, I can't ...", "As an AI ...").
* ``repetition``: a generation loop, which video VLMs are known to fall into: the share of
  distinct word 3-grams below `MIN_DISTINCT_3GRAMS` (Welleck et al. 2019's repetition measure,
  "Neural Text Generation with Unlikelihood Training", sec. 5), or one sentence said 3+ times.
* ``boilerplate_stripped``: a stock opening ("The video shows", "In this clip, ...") removed;
  not a failure, CogVideoX's captions start with the subject.
* ``duplicate``: the same normalised text on `min_clips` or more clips of a run (a known failure
  of LLM refinement steps); flagged across the dataset, not per clip.

The budget is counted in tokens of the trainer's text encoder tokenizer; an over-long caption is
shortened by the LLM first, and only then cut at the last sentence boundary that fits (flagged
``cut_at_sentence``), never inside a sentence.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Callable, Iterable

FAILING = ("empty", "refusal", "repetition")  # gates that trigger the one retry
MIN_WORDS = 2
MIN_DISTINCT_3GRAMS = 0.5  # share of distinct word 3-grams; natural captions score > 0.9

_BOILERPLATE = re.compile(
    r"^\s*(?:"
    r"(?:in|throughout)\s+(?:this|the)\s+(?:video|clip|footage|scene|image|frame)s?\s*[,:]?\s*"
    r"|(?:this|the)\s+(?:video|clip|footage|scene|image|frame|sequence)s?\s+"
    r"(?:shows|depicts|features|captures|presents|displays|showcases|is\s+showing|begins\s+with)\s*(?:that\s+)?"
    r"|(?:here\s+is|here's)\s+(?:a|the)\s+(?:detailed\s+)?(?:description|caption)[^:]*:\s*"
    r")",
    re.IGNORECASE,
)
_REFUSAL = re.compile(
    r"^\s*(?:i'?\s*a?m\s+sorry|sorry,|i\s+(?:can(?:no|')t|am\s+unable|'m\s+unable)|as\s+an\s+ai\b|"
    r"unfortunately,?\s+i\b|i\s+do\s+not\s+(?:see|have)|there\s+is\s+no\s+(?:video|image))",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_WORD = re.compile(r"[\w'-]+", re.UNICODE)


def clean(text: str | None) -> tuple[str, list[str]]:
    """Normalise whitespace, drop wrapping quotes, strip a stock opening. -> (text, flags)."""
    flags: list[str] = []
    t = " ".join((text or "").split()).strip().strip('"').strip()
    stripped = _BOILERPLATE.sub("", t, count=1)
    if stripped != t:
        flags.append("boilerplate_stripped")
        t = stripped[:1].upper() + stripped[1:]
    return t, flags


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def is_repetitive(text: str) -> bool:
    """True for a generation loop: few distinct word 3-grams, or one sentence said 3+ times."""
    w = words(text)
    grams = list(zip(w, w[1:], w[2:]))
    if len(grams) >= 8 and len(set(grams)) / len(grams) < MIN_DISTINCT_3GRAMS:
        return True
    said = Counter(" ".join(words(s)) for s in sentences(text) if words(s))
    return any(n >= 3 for n in said.values())


def gates(text: str) -> list[str]:
    """The failing gates of a cleaned caption (see FAILING); empty list when it passes."""
    if len(words(text)) < MIN_WORDS:
        return ["empty"]
    fired = []
    if _REFUSAL.search(text):
        fired.append("refusal")
    if is_repetitive(text):
        fired.append("repetition")
    return fired


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def first_sentence(text: str) -> str:
    s = sentences(text)
    return s[0] if s else text


def drop_unfinished(text: str) -> str:
    """Drop a trailing unfinished sentence (a generation that hit its token limit), when at
    least one finished sentence comes before it; otherwise the text as it is."""
    if re.search(r"[.!?][\"')\]]*\s*$", text):
        return text
    parts = sentences(text)
    return " ".join(parts[:-1]) if len(parts) > 1 else text


def cut_to_budget(text: str, count: Callable[[str], int], max_tokens: int) -> str | None:
    """The longest prefix of whole sentences within `max_tokens`; None when even the first
    sentence is over (the caller reports it: no cut inside a sentence)."""
    parts = sentences(text)
    for n in range(len(parts), 0, -1):
        cand = " ".join(parts[:n])
        if count(cand) <= max_tokens:
            return cand
    return None


def normalise(text: str) -> str:
    """Lower case, words only: what counts as "the same caption" across clips."""
    return " ".join(words(text))


def duplicates(texts: Iterable[str | None], min_clips: int) -> set[str]:
    """Normalised caption texts that appear on `min_clips` or more clips."""
    counts = Counter(normalise(t) for t in texts if t)
    return {t for t, n in counts.items() if n >= min_clips and t}
