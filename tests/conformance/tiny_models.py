"""Tiny random-initialised models of the real classes, built offline for the conformance tests.
THEY ARE UNTRAINED: they pin what the real processors and model classes receive, never what a
trained model would write.

* `build_tiny_smolvlm`: the default captioner's classes (`SmolVLMProcessor`, its image and
  video processors, `SmolVLMForConditionalGeneration`), saved in the Hugging Face layout so
  `AutoProcessor` / `AutoModelForImageTextToText` load it as they load
  HuggingFaceTB/SmolVLM2-500M-Video-Instruct. The processor code is the library's; only the
  sizes are small (32 px frames, 4 image tokens per frame).
* `build_tiny_text_llm`: a text-only Qwen2 causal LM with a plain tokenizer and a chat
  template: what a separate `caption.summary_model` loads through `AutoTokenizer` +
  `AutoModelForCausalLM`.
"""

from __future__ import annotations

from pathlib import Path

SMOL_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
                "<global-img>", "<video>"] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
_CORPUS = ("You are provided the following series of frames from a video. Frame from 00:01 [H:MM:SS] "
           "User: Assistant: describe this clip; a dog runs across a field 0123456789. ") * 4


def _byte_bpe(special: list[str], vocab: int):
    """A byte-level BPE tokenizer (lossless decode: digits and timestamps survive)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator([_CORPUS] * 4, trainers.BpeTrainer(vocab_size=vocab, special_tokens=special,
                                                               initial_alphabet=alphabet, show_progress=False))
    return tok


def build_tiny_smolvlm(out: str | Path) -> Path:
    import torch
    from transformers import PreTrainedTokenizerFast, SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMProcessor
    from transformers.models.smolvlm.image_processing_smolvlm import SmolVLMImageProcessor
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    out = Path(out)
    tok = PreTrainedTokenizerFast(tokenizer_object=_byte_bpe(SMOL_SPECIAL, 512), eos_token="<end_of_utterance>",
                                  pad_token="<|endoftext|>", extra_special_tokens=SMOL_SPECIAL[1:], padding_side="left")
    side = {"longest_edge": 32}
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(do_image_splitting=False, max_image_size=side, size=side),
        video_processor=SmolVLMVideoProcessor(video_sampling={"fps": 1, "max_frames": 64, "video_size": side}, max_image_size=side),
        tokenizer=tok, image_seq_len=4)
    cfg = SmolVLMConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        scale_factor=2, image_token_id=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = SmolVLMForConditionalGeneration(cfg).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_text_llm(out: str | Path) -> Path:
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from captioning.tiny import CHAT_TEMPLATE, SPECIAL

    out = Path(out)
    tok = PreTrainedTokenizerFast(tokenizer_object=_byte_bpe(SPECIAL, 400), eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  chat_template=CHAT_TEMPLATE, padding_side="left")
    torch.manual_seed(1)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
