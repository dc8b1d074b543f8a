"""A tiny random-initialised Qwen2.5-VL for tests and demos. IT IS UNTRAINED: its captions are noise.

`ensure_tiny_vlm()` builds it once into a cache folder in the Hugging Face layout (config,
safetensors, processor with a chat template, a BPE tokenizer trained offline by the
`tokenizers` library in milliseconds) and returns the folder; the real loading path
(`AutoProcessor` + `AutoModelForImageTextToText`) and any server (`transformers serve PATH`)
then load it like any checkpoint. Nothing touches a model hub.

Shape: 2 text layers of width 64 (4 heads, 2 KV heads), a 2-block vision tower of width 64,
patch 14 with 2x2 merge, a ~360-token vocabulary. It generates on a 4-frame 112 px video in
well under a second on one CPU core.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from curation.core.stage import warn_once

log = logging.getLogger("videomill")

TINY = "tiny"
# bump when the build changes: a new cache folder (2: tokens_per_second = 2, as Qwen2.5-VL-7B; 3: the
# tokenizer writes the VLM judge's JSON answers, see `_build_tokenizer`)
TINY_VERSION = 3
MARKER = "videomill_tiny.json"  # written last: its presence means the folder is complete
WARNING = "caption model 'tiny' is a random-initialised Qwen2.5-VL, UNTRAINED: its captions are noise"

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# Qwen2-VL's chat template, reduced to what captioning sends (text, image, video parts).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Caption-like words, so the random model's output is made of word pieces a person can read.
_CORPUS = (
    "A woman in a red coat walks along a busy city street at dusk. The camera tracks her from the side. "
    "A dog runs across a green field under a bright blue sky, and the camera pans slowly to the right. "
    "Close-up of hands kneading dough on a wooden table in warm indoor light. "
    "Waves roll onto a sandy beach at sunset; a static wide shot with soft golden light. "
    "A car drives down a mountain road between tall pine trees, filmed from a drone above."
)


def _judge_corpus() -> str:
    """A VLM judge's answer (captioning/judge.py) in the corpus: the tokenizer then has the JSON
    characters ({ } " : _ ,), the tag names and yes/no. Without them its BPE (no byte fallback)
    dropped every brace, quote and colon: the tiny model could not write the answer at all."""
    from curation.core.schema import JUDGE_TAGS

    return "{" + ", ".join(f'"{t}": "{"yes" if i % 2 else "no"}"' for i, t in enumerate(JUDGE_TAGS)) + "}"


def default_cache() -> Path:
    return Path(os.environ.get("VIDEOMILL_CACHE", Path.home() / ".cache" / "videomill"))


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Punctuation is its own token (as in Qwen's and GPT-2's byte-level pre-tokenizers), and no
    # leading "▁" is added to a text: the judge's JSON template then tokenizes piece by piece
    # exactly as in one piece (captioning/judge.py `AnswerProgram`).
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(prepend_scheme="never"),
                                                 pre_tokenizers.Punctuation("isolated")])
    tok.decoder = decoders.Metaspace(prepend_scheme="never")
    corpus = [_CORPUS] * 4 + [_judge_corpus()] * 2
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=480, special_tokens=SPECIAL, show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   extra_special_tokens=SPECIAL[1:2] + SPECIAL[3:],  # skipped when decoding
                                   chat_template=CHAT_TEMPLATE, padding_side="left")


def build_tiny_vlm(out: str | Path, seed: int = 0) -> Path:
    """Write the tiny untrained Qwen2.5-VL (model, processor, tokenizer) to `out`; marker last."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    out = Path(out)
    tok = _build_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL}
    pixels = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 16}  # at most 16 merged patches per frame
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tok,
                                    video_processor=Qwen2VLVideoProcessor(**pixels), chat_template=CHAT_TEMPLATE)
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096,
            # mrope_section splits head_dim/2 = 8 rotary pairs over (time, height, width)
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64,
                           fullatt_block_indexes=[1], window_size=112, tokens_per_second=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / MARKER).write_text(json.dumps({"warning": WARNING, "version": TINY_VERSION, "seed": seed}, indent=2))
    return out


def ensure_tiny_vlm(cache: str | Path | None = None) -> str:
    """The tiny VLM's folder, built on first use (a temporary folder renamed into place, so
    concurrent builders and crashes never leave a half-written model that looks complete)."""
    root = Path(cache) if cache else default_cache()
    path = root / f"caption-tiny-v{TINY_VERSION}"
    if not (path / MARKER).exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{path.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        build_tiny_vlm(tmp)
        try:
            os.rename(tmp, path)
        except OSError:  # another process finished first (or a stale incomplete folder is there)
            if not (path / MARKER).exists():
                shutil.rmtree(path, ignore_errors=True)
                os.rename(tmp, path)
            shutil.rmtree(tmp, ignore_errors=True)
    warn_once(WARNING, log.warning)
    return str(path)


def is_tiny(path: str) -> bool:
    return path == TINY or (Path(path) / MARKER).exists()
