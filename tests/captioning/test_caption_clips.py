"""The caption stage on the real loading path (tiny Qwen2.5-VL through AutoProcessor +
AutoModelForImageTextToText), and its rules with a scripted backend beside it. THE TINY VLM
IS UNTRAINED: its captions are noise; only the machinery is checked."""

from __future__ import annotations

import dataclasses
import shutil

import pyarrow as pa
import pytest

from captioning.backends import Reply
from captioning.caption_clips import OUTPUT_SCHEMA, CaptionClips, model_label
from captioning.prompts import PROMPT_VERSION
from captioning.store import caption_dir, caption_missing, join_captions
from curation.core.config import load_config
from curation.core.manifest import Layout, write_table_atomic
from curation.core.schema import clip_schema
from flows.run_local import run_local, stream_table_local
from tests.captioning.conftest import clip_table


def tiny_cfg(**kw):
    return dataclasses.replace(load_config(profile="tiny").caption, **kw)


def check_rows(out: pa.Table, cfg) -> None:
    """Every clip has exactly one of caption / caption_error, and captions are within budget."""
    from captioning.caption_clips import BudgetCounter

    count = BudgetCounter(cfg.budget_tokenizer)
    count.setup()
    for r in out.to_pylist():
        assert (r["caption"] is None) != (r["caption_error"] is None), r
        if r["caption"] is not None:
            assert r["caption_tokens"] == count(r["caption"]) <= cfg.max_tokens, r
            assert r["caption_short"]
        assert r["caption_model"] == model_label(cfg) and r["caption_prompt_version"] == PROMPT_VERSION


@pytest.mark.parametrize("mode", ["video", "frames+summary"])
def test_tiny_vlm_captions_every_clip_or_says_why(mode, clips_root, tiny_vlm):
    cfg = tiny_cfg(mode=mode)
    out = run_local([CaptionClips(cfg, str(clips_root))], clip_table(missing=True))
    assert out.column("clip_id").to_pylist() == ["v0", "v1", "v2", "img", "gone"]
    check_rows(out, cfg)
    rows = {r["clip_id"]: r for r in out.to_pylist()}
    assert "file not found" in rows["gone"]["caption_error"]
    assert sum(r["caption"] is not None for r in rows.values()) >= 2  # noise, but text
    assert all(r["caption_gen_tokens"] > 0 for k, r in rows.items() if k != "gone")


def test_tiny_vlm_with_a_small_budget_stays_within_it(clips_root, tiny_vlm):
    cfg = tiny_cfg(max_tokens=6, max_new_tokens=32)
    out = run_local([CaptionClips(cfg, str(clips_root))], clip_table())
    check_rows(out, cfg)
    flags = [f for fs in out.column("caption_flags").to_pylist() for f in fs]
    assert "shortened" in flags  # the LLM pass ran on the real model


def test_a_failing_model_call_gives_caption_errors_not_a_crash(clips_root, tiny_vlm, monkeypatch):
    stage = CaptionClips(tiny_cfg(), str(clips_root))
    stage.setup()

    def boom(*a, **k):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(stage.backend.model, "generate", boom)
    out = stage(clip_table())
    assert out.num_rows == 4 and out.column("caption").null_count == 4
    assert all("model call failed: RuntimeError: CUDA out of memory" in e for e in out.column("caption_error").to_pylist())


def test_an_unreachable_server_gives_caption_errors_not_a_crash(clips_root):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tiny_cfg(backend="openai", openai=dataclasses.replace(
        tiny_cfg().openai, base_url=f"http://127.0.0.1:{port}/v1", max_retries=0, timeout_s=5.0))
    out = run_local([CaptionClips(cfg, str(clips_root))], clip_table())
    assert out.column("caption").null_count == 4
    assert all(e.startswith("model call failed: APIConnectionError") for e in out.column("caption_error").to_pylist())


class WordCount:
    """A word-count "tokenizer" that knows every word (no unknown tokens)."""

    def __call__(self, text: str) -> int:
        return len(text.split())

    def view(self, text: str) -> tuple[int, int]:
        return 0, len(text.split())


class Scripted(CaptionClips):
    """A test double of the model (beside the real-path tests above): replies from a function
    of the request, a word-count "tokenizer"."""

    def __init__(self, cfg, root, reply):
        super().__init__(cfg, root)
        self.reply, self.calls = reply, []

    def setup(self):
        stage = self

        class Backend:
            def generate(self, reqs, sampling):
                stage.calls += [(r, sampling) for r in reqs]
                return [stage.reply(r, sampling) for r in reqs]

        self.backend, self.count = Backend(), WordCount()


LONG = "A man in a grey coat walks a small dog along a wet street. Rain falls in the light of shop windows. The camera follows from behind at walking pace."


def run_scripted(reply, **kw):
    import tempfile

    from curation.corpora.synthetic import moving, write_video

    root = tempfile.mkdtemp()
    import pathlib

    (pathlib.Path(root) / "clips").mkdir()
    write_video(pathlib.Path(root) / "clips" / "v0.mp4", moving(24, (64, 48), seed=1), 24)
    stage = Scripted(tiny_cfg(**kw), root, reply)
    out = run_local([stage], clip_table(n_videos=1, image=False)).to_pylist()[0]
    shutil.rmtree(root)
    return out, stage


def test_over_budget_caption_gets_one_llm_shortening_pass():
    short = "A man walks a small dog along a wet street at night."
    out, stage = run_scripted(lambda r, s: Reply(short if r.prompt.startswith("Rewrite") else LONG), max_tokens=20)
    assert out["caption"] == short and out["caption_flags"] == ["shortened"] and out["caption_tokens"] == 12
    assert sum(r.prompt.startswith("Rewrite") for r, _ in stage.calls) == 1


def test_still_too_long_after_shortening_is_cut_at_a_sentence_boundary():
    out, _ = run_scripted(lambda r, s: Reply(LONG), max_tokens=22)
    assert out["caption"] == "A man in a grey coat walks a small dog along a wet street. Rain falls in the light of shop windows."
    assert out["caption_flags"] == ["shortened", "cut_at_sentence"] and out["caption_tokens"] == 22


def test_no_sentence_boundary_within_budget_is_a_caption_error():
    out, _ = run_scripted(lambda r, s: Reply(LONG), max_tokens=5)
    assert out["caption"] is None and "budget" in out["caption_error"]


def test_boilerplate_is_stripped_and_a_loop_retries_with_other_sampling():
    def reply(r, s):
        if s.temperature == 0.2:  # first pass: a loop
            return Reply("The video shows a dog. " + "the dog runs and runs and runs " * 5)
        return Reply("The video shows a brown dog running across a sunny park while the camera pans.")

    out, stage = run_scripted(reply)
    assert out["caption"] == "A brown dog running across a sunny park while the camera pans."
    assert out["caption_flags"] == ["retried", "boilerplate_stripped"]
    temps = [s.temperature for _, s in stage.calls]
    assert temps == [0.2, 0.8] and stage.calls[0][1].seed != stage.calls[1][1].seed


def test_failing_gates_twice_is_a_caption_error():
    out, stage = run_scripted(lambda r, s: Reply("I'm sorry, I can't help with that."))
    assert out["caption"] is None and "refusal" in out["caption_error"]
    assert out["caption_flags"] == ["retried", "refusal"] and len(stage.calls) == 2


def test_hitting_the_token_limit_is_flagged_and_the_unfinished_sentence_dropped():
    out, _ = run_scripted(lambda r, s: Reply("A dog runs on a beach. The camera pans to the", tokens=24, hit_limit=True))
    assert out["caption"] == "A dog runs on a beach." and out["caption_flags"] == ["hit_token_limit"]


def test_reasoning_and_template_text_are_repaired_and_flagged():
    raw = "<|im_start|>assistant\n<think>\nThe user wants a caption. A dog on grass.\n</think>\n\n" + LONG + "<|im_end|>"
    out, stage = run_scripted(lambda r, s: Reply(raw))
    assert out["caption"] == LONG and out["caption_flags"] == ["template_stripped", "reasoning_stripped"]
    assert len(stage.calls) == 1


def test_a_caption_in_another_language_is_retried_then_a_caption_error():
    zh = "一位穿着灰色外套的男子在雨中沿着潮湿的街道遛一只小狗，镜头从后面跟随。"
    out, stage = run_scripted(lambda r, s: Reply(zh))
    assert out["caption"] is None and "language" in out["caption_error"]
    assert out["caption_flags"] == ["retried", "language"] and len(stage.calls) == 2


def test_a_loop_cut_at_the_token_limit_retries_instead_of_passing_trimmed():
    def reply(r, s):
        if s.temperature == 0.2:
            return Reply("A dog runs on a beach. The dog runs and runs and runs and runs and runs and runs and ru", tokens=24, hit_limit=True)
        return Reply(LONG)

    out, stage = run_scripted(reply)
    assert out["caption"] == LONG and out["caption_flags"] == ["retried"] and len(stage.calls) == 2


def test_the_same_caption_on_many_clips_is_flagged_duplicate(tmp_path):
    cfg = tiny_cfg(duplicate_min_clips=3)
    layout = Layout.at(tmp_path)
    ids = [f"c{i}" for i in range(5)]
    texts = ["A dog runs.", "a dog runs", "A DOG RUNS!", "A cat sits.", "A bird flies."]
    rows = [{"clip_id": k, "caption": t, "caption_flags": [], "caption_model": "m"} for k, t in zip(ids, texts)]
    write_table_atomic(pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA), caption_dir(layout, cfg) / "part-000000.parquet")
    clips = pa.Table.from_pylist([{"clip_id": k, "status": "accepted", "clip_path": f"clips/{k}.mp4"} for k in ids]
                                 + [{"clip_id": "r", "status": "rejected"}], schema=clip_schema())
    joined = {r["clip_id"]: r for r in join_captions(clips, layout, cfg).to_pylist()}
    assert [joined[k]["caption_flags"] for k in ids] == [["duplicate"]] * 3 + [[], []]
    assert joined["r"]["caption"] is None


def test_resume_generates_nothing_and_a_new_config_recaptions(clips_root, tiny_vlm, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(clips_root, out)
    layout = Layout.at(out)
    rows = [{"clip_id": r["clip_id"], "clip_path": r["clip_path"], "media_type": r["media_type"], "status": "accepted"}
            for r in clip_table().to_pylist()]
    clips = pa.Table.from_pylist(rows, schema=clip_schema())
    cfg = tiny_cfg(block_size=3)
    first = caption_missing(clips, layout, cfg, stream_table_local)
    assert first["captioned"] == 4 and first["generated_tokens"] > 0 and first["model_loads"] == 1
    parts = {p: p.stat().st_mtime_ns for p in caption_dir(layout, cfg).glob("*.parquet")}
    assert len(parts) == 2  # written per block of 3
    again = caption_missing(clips, layout, cfg, stream_table_local)
    assert (again["already"], again["captioned"], again["generated_tokens"]) == (4, 0, 0)
    assert {p: p.stat().st_mtime_ns for p in caption_dir(layout, cfg).glob("*.parquet")} == parts
    joined = join_captions(clips, layout, cfg)
    assert joined.column("caption_key").to_pylist() == [caption_dir(layout, cfg).name] * 4
    other = dataclasses.replace(cfg, temperature=0.5)
    assert caption_missing(clips, layout, other, stream_table_local)["captioned"] == 4
    assert caption_dir(layout, other) != caption_dir(layout, cfg)


def test_frames_summary_with_a_separate_summary_llm_captions_every_clip(clips_root, tiny_vlm, tmp_path):
    """A text-only `summary_model` (AutoTokenizer + AutoModelForCausalLM: a plain tokenizer, no
    processor) fuses and shortens: batched, left-padded calls that must not fail."""
    from tests.conformance.tiny_models import build_tiny_text_llm

    llm = str(build_tiny_text_llm(tmp_path / "llm"))
    cfg = tiny_cfg(mode="frames+summary", summary_model=llm, max_tokens=8, max_new_tokens=24)
    stage = CaptionClips(cfg, str(clips_root))
    stage.setup()
    assert stage.backend.text_model is not stage.backend.model
    fused = []
    generate = stage.backend.text_model.generate
    stage.backend.text_model.generate = lambda **kw: fused.append(kw["input_ids"].shape[0]) or generate(**kw)
    out = stage(clip_table())
    assert max(fused) > 1  # batched text calls (the padding a plain tokenizer needs)
    # every clip reached the fused text's gates (the random LLM writes random bytes: the gates may reject them)
    assert all(e is None or "quality gates" in e for e in out.column("caption_error").to_pylist())
    check_rows(out, cfg)


def test_the_budget_tokenizers_view_counts_what_it_cannot_represent(tmp_path):
    """The language gate's tokenizer hook: T5-like tokenizers map unknown text to <unk>; a
    byte-less BPE (the tiny one) silently drops it, so the round trip's losses are counted."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from captioning.caption_clips import BudgetCounter

    tiny = BudgetCounter("tiny")
    tiny.setup()
    english, chinese = "A dog runs across a green field.", "一只狗在绿色的田野上奔跑。"
    assert tiny.view(english)[0] == 0 and tiny(chinese) <= 2  # 13 characters counted as ~1 token...
    assert tiny.view(chinese) == (13, 13)  # ...all of them lost in its round trip
    vocab = {"<unk>": 0, "a": 1, "dog": 2, "runs": 3}
    wl = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    t5like = BudgetCounter("unused")
    t5like.tok = PreTrainedTokenizerFast(tokenizer_object=wl, unk_token="<unk>")
    assert t5like.view("a dog runs 狗 跑") == (2, 5)
