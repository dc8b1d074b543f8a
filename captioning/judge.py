"""VLM-judged tags: the captioning model answers yes/no questions about each clip.

CogVideoX tagged its six negative tags with a trained video-LLM (Video-LLaMA); Cosmos-Curate
asks a VLM yes/no questions about artefacts (slideshow, synthetic video, visual filter,
post-production text, video-in-video, ...) and reads a JSON answer. Here the model already
loaded to caption asks all configured questions in one generation and answers with one JSON
object, ``{"<name>": "yes"|"no", ...}`` in the questions' order; each answer becomes a score
per question, ``vlm_<name>`` in [0, 1]: P(yes) = P("yes") / (P("yes") + P("no")) at the
answer's position, or 1/0 where the backend gives no probabilities.

How each backend makes the answer valid and reads P(yes):

* transformers: the generation is constrained to the answer's template (`AnswerProgram`, run
  by captioning/backends.py as a logits processor): the template's own tokens are forced and
  only the first tokens of "yes" and "no" are allowed at each value, so every answer is valid
  JSON, and P(yes) is read from the model's scores at that step (its own probability at that
  position, given the answers before it). Why constrain: a random-initialised model never
  writes the JSON (measured on the tiny VLM: 0 of 8 clips after parse-and-retry, 8 of 8
  constrained), and a trained one still wraps it in prose or fences now and then; the template
  costs no retries and no parsing doubt, and the answer is the model's choice between yes and
  no, not whether it managed the syntax.
* openai (vLLM): the request carries a JSON schema with a yes/no enum per question
  (`response_format` json_schema, vLLM's guided decoding), and P(yes) comes from the answer
  token's ``top_logprobs`` (`probabilities`). A server that ignores the schema (`transformers
  serve` does, with a warning) gets parse-and-retry: a malformed reply is asked once more with
  other sampling, and on a second failure the clip's scores stay null with `judge_error` saying
  why (never a guess).

No repetition penalty for the judge: a JSON of yes/no answers repeats its tokens by design,
and a penalty would push later answers away from the words the earlier ones used. Decide fires
``vlm_<name>`` at the question's threshold (curation/decisions/decide.py), like every other tag.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from captioning import text as T
from curation.core.config_loader import check_positive
from curation.core.schema import JUDGE_TAGS


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
    """VLM-judged tags (this module): the caption model answers yes/no questions about
    every clip the cheap filters accepted, before captioning it; decide fires `vlm_<name>` at the
    question's threshold and rejects unless the tag is in `keep`. Off whenever captioning is
    (RunConfig turns it off)."""

    enabled: bool = False
    questions: tuple[JudgeQuestion, ...] = field(default_factory=_default_questions)
    keep: tuple[str, ...] = ()  # judged tags that tag a clip without rejecting it
    # The JSON answer's length limit where a server writes it unconstrained (the transformers
    # backend writes exactly the template: `template` below).
    max_new_tokens: int = 400
    logprobs: int = 5  # openai backend: candidates per answer token read for P(yes); 0: the answer as 1/0

    def __post_init__(self) -> None:
        check_positive(self, "max_new_tokens")
        if self.enabled and not self.questions:
            raise ValueError("judge.questions: the judge is on but asks nothing")
        names = [q.name for q in self.questions]
        if len(set(names)) != len(names):
            raise ValueError("judge.questions: a tag is asked twice")
        if bad := set(self.keep) - set(names):
            raise ValueError(f"judge.keep: {sorted(bad)} are not asked (judge.questions)")
        if self.logprobs < 0:
            raise ValueError("judge.logprobs must be >= 0")


# What an answer depends on beyond the config (the judge key hashes it): 1: the prompt and
# answer format of this module.
JUDGE_VERSION = 1
_YES, _NO = ("yes", "true"), ("no", "false")


def prompt(questions: dict[str, str]) -> str:
    """One prompt asking every question, answered as one JSON object."""
    listing = "\n".join(f"- {k}: {q}" for k, q in questions.items())
    example = answer_text({k: "yes" if i % 2 else "no" for i, k in enumerate(questions)})
    return ("Answer each question about this video with yes or no.\n\n" + listing +
            "\n\nReply with only a JSON object with exactly these keys, in this order, each value \"yes\" or \"no\", "
            f"for example:\n{example}")


def answer_text(values: dict[str, str]) -> str:
    """The canonical answer: ``{"a": "yes", "b": "no"}``."""
    return "{" + ", ".join(f'"{k}": "{v}"' for k, v in values.items()) + "}"


def template(keys: tuple[str, ...]) -> list[str]:
    """The answer's fixed text around its values: len(keys) + 1 pieces."""
    return ['{"' + keys[0] + '": "'] + [f'", "{k}": "' for k in keys[1:]] + ['"}']


def schema(keys: tuple[str, ...]) -> dict:
    """The answer as a JSON schema (vLLM guided decoding: properties in order, all required)."""
    return {"type": "object", "properties": {k: {"type": "string", "enum": ["yes", "no"]} for k in keys},
            "required": list(keys), "additionalProperties": False}


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
    fence around it is fine). Values: "yes"/"no" (any case, spaces around) or JSON booleans."""
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


# ---- the constrained answer (transformers backend)
class TemplateError(ValueError):
    """The tokenizer cannot write the answer's template (it loses characters of it)."""


@dataclass(frozen=True)
class AnswerProgram:
    """The answer as token ids: what is forced and where the model chooses.

    Per key: `lead[i]` is forced (the template piece before value i, plus what "yes" and "no"
    share in their tokens), then one token chosen from `fork` = (first token of yes, of no)
    where they differ, then that word's remaining tokens (`tails`); after the last value,
    `lead[-1]` (the closing piece), then end-of-sequence. Each piece is tokenized on its own:
    exact wherever the pre-tokenizer splits punctuation from words (Qwen's, GPT-2's, the tiny
    VLM's), which `build` checks by decoding every piece back."""

    keys: tuple[str, ...]
    lead: tuple[tuple[int, ...], ...]
    fork: tuple[int, int]
    tails: tuple[tuple[int, ...], tuple[int, ...]]
    eos: int

    @classmethod
    def build(cls, keys: tuple[str, ...], tokenizer, eos: int) -> "AnswerProgram":
        def ids(text: str) -> list[int]:
            got = tokenizer(text, add_special_tokens=False)["input_ids"]
            if tokenizer.decode(got, skip_special_tokens=False) != text:
                raise TemplateError(f"the caption model's tokenizer cannot write the judge's answer: {text!r} comes back "
                                    f"as {tokenizer.decode(got)!r}")
            return got

        yes, no = ids("yes"), ids("no")
        d = next(i for i in range(min(len(yes), len(no)) + 1) if i == len(yes) or i == len(no) or yes[i] != no[i])
        if d == len(yes) or d == len(no):
            raise TemplateError("the tokenizer writes 'yes' and 'no' with one a prefix of the other")
        shared = tuple(yes[:d])
        pieces = [tuple(ids(p)) for p in template(keys)]
        lead = tuple(p + shared for p in pieces[:-1]) + (pieces[-1],)
        return cls(keys, lead, (yes[d], no[d]), (tuple(yes[d + 1 :]), tuple(no[d + 1 :])), eos)

    @property
    def max_tokens(self) -> int:
        """The longest answer in tokens, end-of-sequence included."""
        return sum(map(len, self.lead)) + len(self.keys) * (1 + max(map(len, self.tails))) + 1

    def cursor(self) -> "Cursor":
        return Cursor(self)


@dataclass
class Cursor:
    """Where one generation is in its `AnswerProgram`: `allowed()` the next tokens, `advance`
    with the token generated. `forks` records the step of each choice."""

    program: AnswerProgram
    step: int = 0
    key: int = 0  # the next value to choose
    pending: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pending = list(self.program.lead[0])

    @property
    def at_fork(self) -> bool:
        return not self.pending and self.key < len(self.program.keys)

    def allowed(self) -> tuple[int, ...]:
        if self.pending:
            return (self.pending[0],)
        return self.program.fork if self.key < len(self.program.keys) else (self.program.eos,)

    def advance(self, token: int) -> None:
        p = self.program
        if self.pending:
            self.pending.pop(0)
        elif self.key < len(p.keys):
            yes = token == p.fork[0]
            self.key += 1
            self.pending = [*p.tails[0 if yes else 1], *p.lead[self.key]]
        self.step += 1


def p_yes(score_yes: float, score_no: float) -> float:
    """P(yes) / (P(yes) + P(no)) from the two tokens' scores (logits or log-probabilities)."""
    return 1.0 / (1.0 + math.exp(min(700.0, score_no - score_yes)))
