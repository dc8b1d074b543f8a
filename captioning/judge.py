"""VLM-judged tags: the captioning model answers yes/no questions about each clip.

CogVideoX tagged its six negative tags with a trained video-LLM (Video-LLaMA); Cosmos-Curate
asks a VLM yes/no questions about artefacts (slideshow, synthetic video, visual filter,
post-production text, video-in-video, ...) and reads a JSON answer. Here the model already
loaded to caption asks all configured questions in one generation and answers with one JSON
object; each answer becomes a score per question, ``vlm_<name>`` in [0, 1]:

* the probability of "yes" from the answer token's log-probabilities, when the backend gives
  them (transformers: the step's logits; vLLM/OpenAI: ``top_logprobs``): P(yes) / (P(yes) +
  P(no)) over the candidate tokens that read as yes/true and no/false at that position;
* else 1.0 for yes, 0.0 for no.

A reply that is not a JSON object with exactly the asked keys and yes/no values is malformed:
the clip is asked once more with other sampling, and on a second failure its scores stay null
with `judge_error` saying why (never a guess). Decide fires ``vlm_<name>`` at the question's
threshold (curation/decide.py), like every other tag.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from captioning import text as T

_YES, _NO = ("yes", "true"), ("no", "false")


def prompt(questions: dict[str, str]) -> str:
    """One prompt asking every question, answered as one JSON object."""
    listing = "\n".join(f"- {k}: {q}" for k, q in questions.items())
    keys = ", ".join(f'"{k}"' for k in questions)
    return ("Answer each question about this video with yes or no.\n\n" + listing +
            f"\n\nReply with only a JSON object with exactly these keys: {keys}; each value \"yes\" or \"no\".")


@dataclass(frozen=True)
class Step:
    """One generated token: `end` is the character offset in the reply text where it ends;
    `top` its candidates as (token text, log-probability), the chosen one included."""

    end: int
    top: tuple[tuple[str, float], ...]


class Malformed(ValueError):
    """The reply is not a JSON object with exactly the asked keys and yes/no values."""


def parse(raw: str | None, keys: list[str]) -> dict[str, bool]:
    """The yes/no answer per key of a reply. Raises Malformed (one line) otherwise.

    Repairs first what VLMs are known to wrap answers in (reasoning blocks, a chat-template
    prefix: captioning/text.py `repair`), then takes the first ``{...}`` object (a markdown code
    fence around it is fine). Values: "yes"/"no" (any case) or JSON booleans."""
    text = T.repair(raw or "")[0]
    m = re.search(r"\{.*?\}", text, re.S)
    if not m:
        raise Malformed(f"no JSON object in the reply ({_short(raw)})")
    try:
        obj = json.loads(m.group(0))
    except json.JSONDecodeError as e:
        raise Malformed(f"not valid JSON ({e.msg}): {_short(m.group(0))}") from None
    if not isinstance(obj, dict) or set(obj) != set(keys):
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise Malformed(f"keys {got} instead of {sorted(keys)}")
    out = {}
    for k in keys:
        v = obj[k]
        word = v if isinstance(v, bool) else str(v).strip().lower()
        if word is True or word in _YES:
            out[k] = True
        elif word is False or word in _NO:
            out[k] = False
        else:
            raise Malformed(f"{k}: {v!r} is neither yes nor no")
    return out


def _short(s: str | None, n: int = 80) -> str:
    s = " ".join((s or "").split())
    return s if len(s) <= n else s[: n - 3] + "..."


def _reads(token: str) -> str | None:
    t = token.strip().strip("\"'").lower()
    if any(t.startswith(w) for w in _YES) and t:
        return "yes"
    if any(t.startswith(w) for w in _NO) and t:
        return "no"
    return None


def probabilities(raw: str, answers: dict[str, bool], steps: list[Step] | None) -> dict[str, float]:
    """P(yes) per key: from the answer token's candidates where `steps` cover it (the reply's
    token log-probabilities), else 1.0/0.0 from the parsed answer."""
    out = {k: 1.0 if v else 0.0 for k, v in answers.items()}
    if not steps:
        return out
    for k in answers:
        m = re.search(r'"' + re.escape(k) + r'"\s*:\s*"?', raw)
        if not m:
            continue
        at = m.end()
        step = next((s for s in steps if s.end > at), None)
        if step is None:
            continue
        mass = {"yes": 0.0, "no": 0.0}
        for tok, lp in step.top:
            if (word := _reads(tok)) is not None:
                mass[word] += math.exp(lp)
        if mass["yes"] + mass["no"] > 0:
            out[k] = mass["yes"] / (mass["yes"] + mass["no"])
    return out
