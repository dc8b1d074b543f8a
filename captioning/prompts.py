"""Caption prompt templates, versioned: every caption records the version it was made with.

Change a template's words -> add a new version (never edit a released one): the version is
part of the caption resume key (captioning/store.py), so a new version re-captions and an
old manifest still says which words produced its captions.

The dense prompt follows what CogVideoX asked of CogVLM2-Caption (subject, motion, scene,
lighting, camera; one paragraph, no preamble); `frames+summary` is their earlier chain: a
short clip caption plus dense captions of K frames, fused by an LLM (CogVideoX paper,
arXiv:2408.06072, section 3.2).
"""

from __future__ import annotations

from dataclasses import dataclass

PROMPT_VERSION = "v1"


@dataclass(frozen=True)
class Prompts:
    system: str
    dense: str  # video mode: the clip -> one dense caption
    short: str  # frames+summary: the clip -> one sentence
    frame: str  # frames+summary: one frame -> a dense description
    fuse: str  # frames+summary: short + frame captions -> one caption ({short}, {frames})
    shorten: str  # a caption over the token budget -> a shorter one ({caption}, {words})
    language: str = "en"  # what the templates ask captions in: the ``language`` gate (captioning/text.py) checks it


_V1 = Prompts(
    system="You are a precise video captioner writing training captions for a text-to-video model.",
    dense=(
        "Describe this video in one detailed paragraph for a text-to-video model. Cover the main "
        "subject and its appearance, what moves and how, the scene and background, the lighting "
        "and colours, and the camera (angle, framing, movement). State only what is visible. "
        "Start directly with the subject; do not begin with 'The video shows' or similar."
    ),
    short="Describe this video in one short sentence: who or what, doing what, where.",
    frame=(
        "Describe this frame in detail: subjects and their appearance, positions, the setting, "
        "lighting and colours, and the camera's framing. State only what is visible."
    ),
    fuse=(
        "Here is a one-sentence summary of a video clip and detailed descriptions of frames "
        "sampled from it in order.\n\nSummary: {short}\n\nFrames:\n{frames}\n\n"
        "Write one paragraph describing the whole clip for a text-to-video model: the subject, "
        "its motion across the frames, the scene, the lighting and the camera. Describe only what "
        "the descriptions agree on, as one continuous shot. Start directly with the subject."
    ),
    shorten=(
        "Rewrite this video caption in at most {words} words. Keep the subject, the motion, the "
        "scene, the lighting and the camera; drop repetition and minor details. Reply with the "
        "caption only.\n\nCaption: {caption}"
    ),
)

PROMPTS: dict[str, Prompts] = {"v1": _V1}


def get_prompts(version: str = PROMPT_VERSION) -> Prompts:
    """The templates of `version`; ValueError naming the known versions otherwise."""
    try:
        return PROMPTS[version]
    except KeyError:
        raise ValueError(f"unknown caption prompt version {version!r}; known: {sorted(PROMPTS)}") from None
