"""Caption text: repairs, cleaning, quality gates, the token budget, duplicate detection.

Why one module: it holds every rule a caption passes, in the order `caption` applies them;
the repairs, gates and budget share the word, sentence and script helpers, and the failure
corpus below tests them as one path.

Pure functions on strings, so every rule is tested without a model; tests/data/caption_failures.jsonl
holds replies real VLMs are reported to write, each with the public report it comes from. The
stage's path from a reply to a caption is `caption(raw, hit_limit=..., language=...)`: repairs and
cleaning, the gates, then the unfinished tail of a reply that hit its token limit dropped.

Repairs (`repair`, run by `clean`): what a serving stack or a chat habit wraps around a caption,
removed, each recorded as a flag. The caption that remains still has to pass the gates.

* ``reasoning_stripped``: a reasoning block (``<think>...</think>``); an unclosed ``<think>`` at
  the start (the generation ran out inside it); a dangling ``</think>`` (the template put the
  opening tag in the prompt: only what follows is the answer); a reply that opens as an untagged
  monologue ("Okay, the user wants ..."). A reply that is nothing but reasoning is left empty.
* ``template_stripped``: chat-template text: a role label or special token at the very start
  (``<|im_start|>assistant``, ``assistant\\n``, ``ASSISTANT:``), a prompt echoed before the answer,
  an end-of-turn token and anything after it, a new turn the model started ("\\nHuman: ...").
* ``markdown_repaired``: headings and intro lines dropped, bullets and numbered items turned into
  sentences, ``**Label:**`` lead-ins dropped before a sentence (kept as "label: ..." before a
  fragment, so "Camera: static" keeps its word), emphasis markers removed.
* ``boilerplate_stripped``: a stock opening ("The video shows", "In this clip, ...") removed;
  CogVideoX's captions start with the subject.

Gates (`gates`), the failing ones (`FAILING`) trigger the stage's one retry:

* ``empty``: fewer than `MIN_WORDS` words left.
* ``refusal``: the model declined ("I'm sorry, I can't ...", "As an AI ..."), matched after
  typographic quotes are folded to ASCII (models write "I’m", U+2019).
* ``repetition``: a generation loop, which video VLMs are known to fall into: the share of
  distinct 3-grams below `MIN_DISTINCT_NGRAMS` (Welleck et al. 2019's repetition measure,
  "Neural Text Generation with Unlikelihood Training", sec. 5) over words, or over characters
  for text written without spaces (Chinese, Japanese); one sentence said 3+ times, sentences
  split on ``. ! ?`` and ``。！？``; and, for a reply that hit its token limit, a tail that repeats
  one phrase (`loops_at_end`): the loop was cut mid-way, and dropping the unfinished sentence
  must not turn it into a passing caption.
* ``language``: the caption is not in the prompt's language, judged by the script of its
  letters (`in_language`): for English at least `MIN_SCRIPT_SHARE` of the letters are Latin, so
  a proper noun or a quoted sign in another script still passes. A caller holding the budget
  tokenizer can pass its view too (`unknown_share`): T5's vocabulary maps most CJK to ``<unk>``.

``duplicate`` (the same normalised text on `min_clips` or more clips of a run, a known failure of
LLM refinement steps) is flagged across the dataset, not per clip.

The budget is counted in tokens of the trainer's text encoder tokenizer; an over-long caption is
shortened by the LLM first, and only then cut at the last sentence boundary that fits (flagged
``cut_at_sentence``), never inside a sentence. A count is only honest for text the tokenizer can
represent: the language gate rejects text in another script before the budget is counted (a
byte-less tokenizer counts a Chinese caption as one token).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Callable, Iterable, NamedTuple

FAILING = ("empty", "refusal", "repetition", "language")  # gates that trigger the one retry
MIN_WORDS = 2
MIN_DISTINCT_NGRAMS = 0.5  # share of distinct 3-grams (words) or 4-grams (characters); natural captions > 0.9
MIN_DISTINCT_3GRAMS = MIN_DISTINCT_NGRAMS  # the name before character n-grams were added
MIN_LOOP_CHARS = 32  # a tail repeating one phrase over at least this many characters is a loop
MIN_SCRIPT_SHARE = 0.8  # share of letters in the prompt language's script
MAX_UNKNOWN_SHARE = 0.1  # share of budget-tokenizer tokens that are unknown (<unk>)

# The script(s) a caption in each language is written in (first word of the letters' Unicode names).
SCRIPTS: dict[str, tuple[str, ...]] = {
    "en": ("LATIN",), "de": ("LATIN",), "fr": ("LATIN",), "es": ("LATIN",), "it": ("LATIN",), "pt": ("LATIN",),
    "zh": ("CJK",), "ja": ("CJK", "HIRAGANA", "KATAKANA"), "ko": ("HANGUL", "CJK"), "ru": ("CYRILLIC",),
}
_UNSPACED = {"CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN"}  # no spaces between words


# ---- folding: how words are compared
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201b": "'", "\u2032": "'", "\u02bc": "'", "\u00b4": "'",
                         "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"'})


def fold(text: str) -> str:
    """Compatibility forms to plain ones (NFKC: full-width ``！`` -> ``!``) and typographic
    quotes to ASCII: what words are compared on, never what a caption is stored as."""
    return unicodedata.normalize("NFKC", text).translate(_QUOTES)


def _script(ch: str) -> str:
    return unicodedata.name(ch, "?").split(" ", 1)[0]


# ---- repairs
_THINK_BLOCK = re.compile(r"<(think|thinking|reasoning)>.*?</\1\s*>", re.S | re.I)
_THINK_OPEN = re.compile(r"<(?:think|thinking|reasoning)>", re.I)
_THINK_CLOSE = re.compile(r"</(?:think|thinking|reasoning)\s*>", re.I)
# An untagged monologue: a conversational opener, then the model talking about itself or the user.
_MONOLOGUE_OPENER = re.compile(r"^\s*(?:okay|ok|alright|all right|hmm+|well|so|let me|let's|first,? i)\b[ ,.:]", re.I)
_MONOLOGUE = re.compile(r"\b(?:the user|i need to|i should|i'll|i will|let me|i'm (?:looking|going|trying|seeing)|"
                        r"i think|i see|i notice|i have to)\b", re.I)

_ROLE_PREFIX = re.compile(
    r"^\s*(?:<\|im_start\|>\s*assistant|<\|assistant\|>|<\|start_header_id\|>\s*assistant\s*<\|end_header_id\|>"
    r"|<start_of_turn>\s*model\b|\[/INST\]|<\|im_start\|>|<s>|(?:assistant|gpt)\s*:|assistant[ \t]*\n)\s*",
    re.I,
)
_ECHO_START = re.compile(r"^\s*(?:<\|im_start\|>\s*)?(?:system|user)\s*\n|^\s*(?:USER|Human)\s*:|^\s*(?:<s>\s*)?\[INST\]")
_ECHO_ANSWER = re.compile(r"(?:\n|^)\s*(?:<\|im_start\|>\s*)?assistant[ \t]*\n|(?:ASSISTANT|Assistant)\s*:|\[/INST\]")
_END_TOKEN = re.compile(r"<\|im_end\|>|<\|endoftext\|>|<\|eot_id\|>|<\|end\|>|<end_of_turn>|</s>|<｜end▁of▁sentence｜>")
_NEW_TURN = re.compile(r"\n\s*(?:(?:Human|User|USER|Assistant|ASSISTANT)\s*:|user\s*\n|system\s*\n)|<\|im_start\|>")

_HEADING = re.compile(r"^\s*#{1,6}\s")
_RULE = re.compile(r"^\s*(?:-{3,}|\*{3,}|_{3,})\s*$")
_ITEM = re.compile(r"^\s*(?:[-*+•‣◦▪–]|\d{1,2}[.)])\s+")
_BOLD_LABEL = re.compile(r"^(?:\*\*|__)([^*_:\n]{1,40}?)(?::\s*(?:\*\*|__)|(?:\*\*|__)\s*:)\s*(.*)$")
_PLAIN_LABEL = re.compile(r"^([A-Z][A-Za-z/&' -]{0,30}?)\s*:\s+(.+)$")
_LEAD_IN = re.compile(r"^\s*(?:(?:final|dense|detailed|video|short)\s+)?(?:caption|description)\s*:\s*", re.I)
_EMPHASIS = (
    (re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1"), r"\2"),
    (re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])"), r"\1"),
    (re.compile(r"(?<![\w_])_(?=\S)([^_\n]+?)(?<=\S)_(?![\w_])"), r"\1"),
    (re.compile(r"`([^`\n]+)`"), r"\1"),
    (re.compile(r"\*\*|__"), ""),
)
# A value that opens like a sentence's subject: the label before it says nothing the value does not.
_SENTENCE_START = re.compile(r"^(?:a|an|the|this|that|these|those|his|her|their|its|one|two|three|four|several|many|"
                             r"some|she|he|they|it|there|we|in|on|at|as)\b", re.I)
_ENDS_SENTENCE = re.compile(r"[.!?。！？][\"')\]”’」』]*$")


def _reasoning(text: str) -> str:
    t = _THINK_BLOCK.sub(" ", text)
    closes = list(_THINK_CLOSE.finditer(t))
    if closes:  # the opening tag was in the prompt: the answer is what follows the last closing tag
        t = t[closes[-1].end():]
    opened = _THINK_OPEN.search(t)
    if opened:  # unclosed: everything from it is reasoning (the generation stopped inside it)
        t = t[: opened.start()]
    if _MONOLOGUE_OPENER.match(t) and _MONOLOGUE.search(" ".join(sentences(" ".join(t.split()))[:2])):
        t = ""  # an untagged monologue with no closing tag: no answer was reached
    return t


def _template(text: str) -> str:
    t = text
    if _ECHO_START.match(t):  # the prompt echoed before the answer: keep what follows the last answer label
        answers = list(_ECHO_ANSWER.finditer(t))
        if answers:
            t = t[answers[-1].end():]
    parts = [p for p in _END_TOKEN.split(t) if p.strip()]
    t = parts[0] if parts else ""  # the model should have stopped at the first end-of-turn token
    while m := _ROLE_PREFIX.match(t):  # every alternative consumes at least one character
        t = t[m.end():]
    turn = _NEW_TURN.search(t)  # a turn the model went on to write itself
    return t[: turn.start()] if turn else t


def _prose(label: str, value: str) -> str:
    if not value:
        return ""
    if _SENTENCE_START.match(value):
        return value[:1].upper() + value[1:]
    if value[1:2].islower():  # "Static, eye level" -> "static, eye level"; "NYC" stays
        value = value[:1].lower() + value[1:]
    return f"{label.strip()}: {value}"


def _markdown(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    structured = len(lines) > 1 and any(_HEADING.match(ln) or _ITEM.match(ln) or _BOLD_LABEL.match(ln.strip())
                                        for ln in lines)
    out = []
    for i, line in enumerate(lines):
        if _HEADING.match(line) or _RULE.match(line):
            continue
        item = _ITEM.match(line)
        s = line[item.end():] if item else line.strip()
        bold, plain = _BOLD_LABEL.match(s), _PLAIN_LABEL.match(s) if structured else None
        if bold or (plain and len(plain.group(1).split()) <= 4):
            label, value = (bold or plain).groups()
            s = _prose(_unemphasise(label), _unemphasise(value).strip())
        else:
            s = _LEAD_IN.sub("", _unemphasise(s)).strip() if i == 0 else _unemphasise(s).strip()
        if structured and s.endswith(":") and len(s.split()) <= 10:
            continue  # an intro line ("Here is a description of the video:") before the items
        if s and (item or structured) and not _ENDS_SENTENCE.search(s):
            s += "."
        if s and (item or structured):
            s = s[:1].upper() + s[1:]
        if s:
            out.append(s)
    return " ".join(out)


def _unemphasise(s: str) -> str:
    for pattern, repl in _EMPHASIS:
        s = pattern.sub(repl, s)
    return s


def repair(raw: str | None) -> tuple[str, list[str]]:
    """Undo what wraps a caption in a reply: reasoning, chat-template text, markdown.
    -> (text on one line, flags: ``reasoning_stripped``, ``template_stripped``, ``markdown_repaired``)."""
    t, flags = raw or "", []
    for flag, step in (("template_stripped", _template), ("reasoning_stripped", _reasoning),
                       ("template_stripped", _template), ("markdown_repaired", _markdown)):
        out = step(t)
        if " ".join(out.split()) != " ".join(t.split()) and flag not in flags:
            flags.append(flag)
        t = out
    return " ".join(t.split()), flags


# ---- cleaning
_BOILERPLATE = re.compile(
    r"^\s*(?:"
    r"(?:in|throughout)\s+(?:this|the)\s+(?:video|clip|footage|scene|image|frame)s?\s*[,:]?\s*"
    r"|(?:this|the)\s+(?:video|clip|footage|scene|image|frame|sequence)s?\s+"
    r"(?:shows|depicts|features|captures|presents|displays|showcases|is\s+showing|begins\s+with)\s*(?:that\s+)?"
    r"|(?:(?:sure|okay|ok|certainly|of\s+course|absolutely)[,!.]?\s+)?(?:here\s+is|here's)\s+(?:a|the)\s+(?:detailed\s+)?(?:description|caption)[^:]*:\s*"
    r")",
    re.IGNORECASE,
)


def clean(text: str | None) -> tuple[str, list[str]]:
    """Repair (see `repair`), normalise whitespace, drop wrapping quotes, strip a stock opening.
    -> (text, flags)."""
    t, flags = repair(text)
    t = t.strip().strip('"').strip()
    stripped = _BOILERPLATE.sub("", t, count=1)
    if stripped != t:
        flags.append("boilerplate_stripped")
        t = stripped[:1].upper() + stripped[1:]
    return t, flags


# ---- gates
_REFUSAL = re.compile(
    r"^\s*(?:i'?\s*a?m\s+sorry|sorry,|apologies|i\s+apologi[sz]e|i\s+(?:can(?:no|')t|can\s+not)"
    r"|(?:as\s+)?i(?:'m|\s+am)\s+(?:unable|not\s+(?:able|allowed|permitted))|as\s+an\s+ai\b|unfortunately,?\s+i\b"
    r"|i\s+do(?:\s+not|n't)\s+(?:see|have)|there(?:\s+is|'s)\s+no\s+(?:video|image)|no\s+(?:video|image)\s+(?:was|has\s+been)\s+provided"
    r"|please\s+(?:provide|upload|share)\s+(?:me\s+with\s+)?(?:the|an?|your)\s+(?:video|image|clip|frames?)"
    r"|对不起|抱歉|很抱歉|我无法|我不能)",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]”’])\s+"
                           r"|(?<=[。！？])(?![”’」』)）])\s*|(?<=[。！？][”’」』)）])\s*")
_WORD = re.compile(r"[\w'-]+", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased words, typographic apostrophes folded (a run of CJK characters counts as one)."""
    return [w.lower() for w in _WORD.findall(fold(text))]


def sentences(text: str) -> list[str]:
    """Sentences, split after ``. ! ?`` (then a space) and after ``。！？``."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s and s.strip()]


def _letters(text: str) -> list[str]:
    return [c for c in text if c.isalpha()]


def _unspaced(text: str) -> bool:
    """Mostly written without spaces between words (Chinese, Japanese, Thai)."""
    letters = _letters(text)
    return bool(letters) and sum(_script(c) in _UNSPACED for c in letters) / len(letters) > 0.5


def _units(text: str, unspaced: bool) -> list[str]:
    """What n-grams are made of: words, or characters for text written without spaces."""
    return [c for c in fold(text).lower() if c.isalnum()] if unspaced else words(text)


def is_repetitive(text: str) -> bool:
    """True for a generation loop: few distinct 3-grams of words (4-grams of characters for text
    without spaces), or one sentence said 3+ times, in any script."""
    unspaced = _unspaced(text)
    u, n, min_grams = _units(text, unspaced), (4 if unspaced else 3), (16 if unspaced else 8)
    grams = list(zip(*(u[i:] for i in range(n))))
    if len(grams) >= min_grams and len(set(grams)) / len(grams) < MIN_DISTINCT_NGRAMS:
        return True
    said = Counter(" ".join(_units(s, unspaced)) for s in sentences(text))
    return any(k >= 3 for key, k in said.items() if len(key) > 1)


def loops_at_end(text: str) -> bool:
    """True when the text ends inside a loop: its tail (folded, spaces collapsed) is one phrase
    said twice and begun a third time, over `MIN_LOOP_CHARS`+ characters. Meant for a reply that
    hit its token limit: that is where a loop gets cut, and natural text does not say a phrase
    twice in a row just where the limit falls."""
    s = " ".join(fold(text).lower().split())[-2000:]
    n = len(s)
    for p in range(1, n // 2 + 1):
        if s[-1] != s[-1 - p]:
            continue
        i = n - 1 - p
        while i >= 0 and s[i] == s[i + p]:
            i -= 1
        span = n - 1 - i  # s[i+1:] repeats with period p
        if span >= max(2 * p + min(p, 8), MIN_LOOP_CHARS):  # two copies and a third begun
            return True
    return False


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.search(fold(text)))


def script_share(text: str, language: str = "en") -> float | None:
    """Share of the letters written in `language`'s script (`SCRIPTS`); None without letters."""
    try:
        scripts = SCRIPTS[language]
    except KeyError:
        raise ValueError(f"no script known for caption language {language!r}; known: {sorted(SCRIPTS)}") from None
    letters = _letters(text)
    return sum(_script(c) in scripts for c in letters) / len(letters) if letters else None


def in_language(text: str, language: str = "en") -> bool:
    """The script test of the ``language`` gate: letters mostly (`MIN_SCRIPT_SHARE`) in the
    language's script. A Latin-script language is not told from another (French passes "en")."""
    share = script_share(text, language)
    return share is None or share >= MIN_SCRIPT_SHARE


def unknown_share(unknown: int, tokens: int) -> float:
    """The budget tokenizer's view of the ``language`` gate: the share of a caption's tokens that
    are unknown to it (T5: ``<unk>`` ids; a byte-less tokenizer: characters it dropped)."""
    return unknown / tokens if tokens > 0 else 0.0


def gates(text: str, *, hit_limit: bool = False, language: str = "en", unknown: int = 0, tokens: int = 0) -> list[str]:
    """The failing gates of a cleaned caption (see FAILING); empty list when it passes.
    `hit_limit`: the reply stopped at its token limit (a loop cut there is caught by its tail);
    `unknown` of `tokens`: the budget tokenizer's unknown tokens, when the caller counted them."""
    if len(words(text)) < MIN_WORDS:
        return ["empty"]
    fired = []
    if is_refusal(text):
        fired.append("refusal")
    if is_repetitive(text) or (hit_limit and loops_at_end(text)):
        fired.append("repetition")
    if not in_language(text, language) or unknown_share(unknown, tokens) > MAX_UNKNOWN_SHARE:
        fired.append("language")
    return fired


class Caption(NamedTuple):
    text: str
    flags: list[str]  # repairs made (see `repair`, `clean`)
    fired: list[str]  # failing gates (see `gates`); empty when the caption passes


def caption(raw: str | None, *, hit_limit: bool = False, language: str = "en",
            view: Callable[[str], tuple[int, int]] | None = None) -> Caption:
    """The stage's path from one reply to a caption: clean (with the repairs), the gates on the
    whole text, then, for a reply that hit its token limit and passed, the unfinished last
    sentence dropped (after the gates, so a loop cut there is still seen). `view`: the budget
    tokenizer's (unknown, total) count of a text (captioning/caption_clips.py BudgetCounter)."""
    text, flags = clean(raw)
    unknown, tokens = view(text) if view is not None and text else (0, 0)
    fired = gates(text, hit_limit=hit_limit, language=language, unknown=unknown, tokens=tokens)
    if hit_limit and not fired:
        text = drop_unfinished(text)
    return Caption(text, flags, fired)


# ---- sentences and the budget
def first_sentence(text: str) -> str:
    s = sentences(text)
    return s[0] if s else text


def drop_unfinished(text: str) -> str:
    """Drop a trailing unfinished sentence (a generation that hit its token limit), when at
    least one finished sentence comes before it; otherwise the text as it is."""
    if _ENDS_SENTENCE.search(text.rstrip()):
        return text
    parts = sentences(text)
    return (" " if not _unspaced(text) else "").join(parts[:-1]) if len(parts) > 1 else text


def cut_to_budget(text: str, count: Callable[[str], int], max_tokens: int) -> str | None:
    """The longest prefix of whole sentences within `max_tokens`; None when even the first
    sentence is over (the caller reports it: no cut inside a sentence)."""
    parts = sentences(text)
    for n in range(len(parts), 0, -1):
        cand = " ".join(parts[:n])
        if count(cand) <= max_tokens:
            return cand
    return None


# ---- duplicates
def normalise(text: str) -> str:
    """Lower case, words only: what counts as "the same caption" across clips."""
    return " ".join(words(text))


def duplicates(texts: Iterable[str | None], min_clips: int) -> set[str]:
    """Normalised caption texts that appear on `min_clips` or more clips."""
    counts = Counter(normalise(t) for t in texts if t)
    return {t for t, n in counts.items() if n >= min_clips and t}
