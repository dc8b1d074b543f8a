"""The VLM judge: its answer format, the constrained answer on the real loading path (tiny
Qwen2.5-VL, UNTRAINED: its answers are noise, only the machinery is checked), and the stage's
rules with a scripted backend: who is asked, who is captioned, what is stored."""

from __future__ import annotations

import dataclasses
import json
import math

import pyarrow as pa
import pytest

from captioning import judge as J
from captioning.backends import Reply, Request, Sampling
from captioning.caption_clips import JUDGED_OUT, CaptionClips, judge_key
from captioning.judge import JUDGE_QUESTIONS
from curation.core.config import load_config
from curation.core.schema import judge_column
from tests.captioning.conftest import clip_table
from tests.captioning.test_caption_clips import LONG, WordCount

KEYS = ("over_edited", "slideshow", "synthetic")


def judge_cfg(**questions):
    """The tiny profile with the judge on, asking KEYS (threshold per name in `questions`)."""
    qs = [{"name": k, "threshold": questions.get(k, 0.5)} for k in KEYS]
    return load_config(profile="tiny", overrides={"judge": {"enabled": True, "questions": qs}})


def test_parse_takes_the_answer_and_refuses_anything_else():
    keys = list(KEYS)
    assert J.parse(J.answer_text({"over_edited": "yes", "slideshow": "no", "synthetic": "no"}), keys) == \
        {"over_edited": True, "slideshow": False, "synthetic": False}
    fenced = '<think>hm</think>```json\n{"over_edited": "Yes ", "slideshow": false, "synthetic": "NO"}\n```'
    assert J.parse(fenced, keys) == {"over_edited": True, "slideshow": False, "synthetic": False}
    for bad, why in [("The video is fine.", "no JSON object"), ('{"over_edited": "yes"}', "keys"),
                     ('{"over_edited": "yes", "slideshow": "no", "synthetic": "maybe"}', "neither yes nor no"),
                     ('{over_edited: yes}', "not valid JSON")]:
        with pytest.raises(J.Malformed, match=why):
            J.parse(bad, keys)


def test_p_yes_from_a_servers_top_logprobs_else_the_answer():
    raw = '{"over_edited": "yes", "slideshow": "no"}'
    at = raw.index("yes")
    steps = [J.Step(at, (('"', 0.0),)), J.Step(at + 3, (("yes", math.log(0.6)), ("no", math.log(0.2)), ("maybe", math.log(0.2))))]
    got = J.probabilities(raw, {"over_edited": True, "slideshow": False}, steps)
    assert got["over_edited"] == pytest.approx(0.75) and got["slideshow"] == 0.0  # no step covers it: the answer
    assert J.probabilities(raw, {"over_edited": True, "slideshow": False}, None) == {"over_edited": 1.0, "slideshow": 0.0}


def test_the_schema_asks_vllm_for_every_key_in_order_with_a_yes_no_enum():
    from captioning.backends import OpenAIBackend

    s = Sampling(max_new_tokens=8, temperature=0.0, top_p=1.0, repetition_penalty=1.0, seed=0)
    kw = dict(system="", base_url="http://127.0.0.1:1/v1", api_key_env="X", max_in_flight=1, timeout_s=1.0, max_retries=0,
              frames_as="images", extra_body={})
    req = Request("p", "text", answer=KEYS, logprobs=5)
    vllm = OpenAIBackend("m", None, server="vllm", **kw).request(req, s)
    schema = vllm["response_format"]["json_schema"]["schema"]
    assert list(schema["properties"]) == list(KEYS) and schema["required"] == list(KEYS)
    assert all(p["enum"] == ["yes", "no"] for p in schema["properties"].values())
    assert vllm["logprobs"] is True and vllm["top_logprobs"] == 5
    # transformers serve ignores response_format (with a warning): not sent, parse-and-retry covers it
    assert "response_format" not in OpenAIBackend("m", None, server="transformers", **kw).request(req, s)


def _tokenizers(tiny_vlm, tmp_path):
    from transformers import AutoProcessor, AutoTokenizer

    from tests.conformance.tiny_models import build_tiny_text_llm

    return {"tiny VLM (metaspace BPE)": AutoProcessor.from_pretrained(tiny_vlm).tokenizer,
            "byte-level BPE (Qwen, GPT-2 style)": AutoTokenizer.from_pretrained(build_tiny_text_llm(tmp_path / "llm"))}


def test_the_answer_program_forces_the_template_tokens_as_the_whole_answer_tokenizes(tiny_vlm, tmp_path):
    """Each template piece is tokenized on its own; with a pre-tokenizer that splits punctuation
    from words that is exactly how the whole answer tokenizes, so the forced tokens are the
    model's own tokenization of it."""
    keys = tuple(JUDGE_QUESTIONS)
    for name, tok in _tokenizers(tiny_vlm, tmp_path).items():
        program = J.AnswerProgram.build(keys, tok, eos=tok.eos_token_id)
        for pattern in ("yes", "no", "mixed"):
            values = {k: (pattern if pattern != "mixed" else ("yes" if i % 3 else "no")) for i, k in enumerate(keys)}
            cur, ids = program.cursor(), []
            while (allowed := cur.allowed()) != (program.eos,):
                t = allowed[0] if len(allowed) == 1 else program.fork[0 if values[keys[cur.key]] == "yes" else 1]
                ids.append(t)
                cur.advance(t)
            text = J.answer_text(values)
            assert ids == tok(text, add_special_tokens=False)["input_ids"], (name, pattern)
            assert len(ids) + 1 <= program.max_tokens


def test_a_tokenizer_that_cannot_write_the_answer_is_refused_in_one_line():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())  # as the tiny VLM's v2: no braces, quotes or colons in its alphabet
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.train_from_iterator(["a dog runs yes no over edited"], trainers.BpeTrainer(vocab_size=60, show_progress=False))
    with pytest.raises(J.TemplateError, match="cannot write the judge's answer"):
        J.AnswerProgram.build(KEYS, PreTrainedTokenizerFast(tokenizer_object=raw), eos=0)


@pytest.fixture(scope="module")
def tiny_stage(clips_root, tiny_vlm):
    cfg = judge_cfg()
    stage = CaptionClips(cfg.caption, str(clips_root), cfg.judge)
    stage.setup()
    return stage


def test_the_untrained_tiny_vlm_answers_in_valid_json_only_when_constrained(tiny_stage, clips_root):
    """The measurement behind constraining (captioning/judge.py): the random model never writes
    the JSON, even asked twice; constrained, every answer is valid and P(yes) lies in (0, 1)."""
    free = CaptionClips(tiny_stage.cfg, str(clips_root), tiny_stage.judge)
    free.backend, free.count = tiny_stage.backend, tiny_stage.count
    real = tiny_stage.backend.generate
    free.backend = type("Unconstrained", (), {"generate": lambda self, reqs, s: real([dataclasses.replace(r, answer=()) for r in reqs], s)})()
    out = free(clip_table()).to_pylist()
    assert all(r["judge_error"].startswith("judge answer unusable twice") for r in out)
    assert all(r["caption"] is not None or r["caption_error"] for r in out)  # unjudged clips are still captioned
    out = tiny_stage(clip_table()).to_pylist()
    for r in out:
        assert r["judge_error"] is None and r["judge_key"] == judge_key(tiny_stage.cfg, tiny_stage.judge)
        assert all(0.0 < r[judge_column(k)] < 1.0 for k in KEYS)
        assert r[judge_column("lecture")] is None  # not asked


def test_constrained_p_yes_is_the_models_own_probability_at_the_answer(tiny_stage, clips_root):
    """P(yes) read while generating equals P("yes") / (P("yes") + P("no")) of a separate forward
    pass of the model over the prompt and the answer up to that value."""
    import torch

    from captioning.frames import read_clip

    be = tiny_stage.backend
    media = read_clip(clips_root / "clips" / "v0.mp4", 2.0, 4, 112 * 112)
    req = Request(J.prompt({k: JUDGE_QUESTIONS[k] for k in KEYS}), "video", media, answer=KEYS)
    s = Sampling(max_new_tokens=64, temperature=0.0, top_p=1.0, repetition_penalty=1.0, seed=0)
    (rep,) = be.generate([req], s)
    assert set(json.loads(rep.text)) == set(KEYS)
    tok = be.processor.tokenizer
    program = J.AnswerProgram.build(KEYS, tok, tok.convert_tokens_to_ids("<|im_end|>"))
    answers = J.parse(rep.text, list(KEYS))
    prefix: list[int] = []
    for i, k in enumerate(KEYS):
        prefix += list(program.lead[i])
        inputs, n = be.inputs([req]), len(prefix)
        # the answer so far after the prompt: token ids, attention, and text token types (0)
        feed = {**inputs, "input_ids": torch.cat([inputs["input_ids"], torch.tensor([prefix])], dim=1)}
        for key in ("attention_mask", "mm_token_type_ids"):
            if key in inputs:
                feed[key] = torch.cat([inputs[key], torch.full((1, n), int(key == "attention_mask"))], dim=1)
        with torch.inference_mode():
            logits = be.model(**feed).logits[0, -1].float()
        want = 1 / (1 + math.exp(float(logits[program.fork[1]] - logits[program.fork[0]])))
        assert rep.yes_prob[k] == pytest.approx(want, abs=1e-5), k
        prefix += [program.fork[0 if answers[k] else 1], *program.tails[0 if answers[k] else 1]]


class ScriptedJudge(CaptionClips):
    """The model as a function of the request: judge requests (they carry `answer`) get
    `judge(request, attempt)`, captions a fixed long caption; a word-count tokenizer."""

    def __init__(self, cfg, root, judge_reply):
        super().__init__(cfg.caption, root, cfg.judge)
        self.judge_reply, self.asked, self.captioned = judge_reply, [], []

    def setup(self):
        stage = self

        class Backend:
            def generate(self, reqs, sampling):
                out = []
                for r in reqs:
                    if r.answer:
                        stage.asked.append(r)
                        out.append(stage.judge_reply(r, sampling.temperature > 0))
                    else:
                        stage.captioned.append(r)
                        out.append(Reply(LONG, tokens=30))
                return out

        self.backend, self.count = Backend(), WordCount()


def answer(**yes):
    return lambda r, retry: Reply(J.answer_text({k: "yes" if yes.get(k) else "no" for k in r.answer}), tokens=10)


def test_a_tag_that_fires_means_no_caption_and_a_kept_tag_does_not(clips_root):
    cfg = judge_cfg()
    stage = ScriptedJudge(cfg, str(clips_root), answer(slideshow=True))
    stage.setup()
    r = stage(clip_table(n_videos=1, image=False)).to_pylist()[0]
    assert r["caption"] is None and r["caption_key"] is None  # nothing for the caption store
    assert r["caption_error"] == f"{JUDGED_OUT} (vlm_slideshow)"
    assert (r["vlm_slideshow"], r["vlm_over_edited"], r["judge_key"]) == (1.0, 0.0, stage.judge_key)
    assert not stage.captioned
    kept = dataclasses.replace(cfg, judge=dataclasses.replace(cfg.judge, keep=("slideshow",)))
    stage = ScriptedJudge(kept, str(clips_root), answer(slideshow=True))
    stage.setup()
    r = stage(clip_table(n_videos=1, image=False)).to_pylist()[0]
    assert r["caption"] == LONG and r["vlm_slideshow"] == 1.0


def test_a_malformed_answer_is_asked_again_then_the_clip_is_captioned_unjudged(clips_root):
    def reply(r, retry):
        return Reply("Sure! Here is my answer: yes, no, no", tokens=9)

    stage = ScriptedJudge(judge_cfg(), str(clips_root), reply)
    stage.setup()
    r = stage(clip_table(n_videos=1, image=False)).to_pylist()[0]
    assert len(stage.asked) == 2 and r["judge_error"].startswith("judge answer unusable twice: no JSON object")
    assert r[judge_column("over_edited")] is None and r["caption"] == LONG
    # the retry samples; a valid second answer is taken
    stage = ScriptedJudge(judge_cfg(), str(clips_root), lambda r, retry: answer()(r, retry) if retry else reply(r, retry))
    stage.setup()
    r = stage(clip_table(n_videos=1, image=False)).to_pylist()[0]
    assert len(stage.asked) == 2 and r["judge_error"] is None and r["vlm_slideshow"] == 0.0


def test_stored_answers_are_used_and_a_stored_caption_is_not_made_again(clips_root):
    cfg = judge_cfg()
    rows = clip_table(n_videos=2, image=False)
    carried = rows.append_column("caption_key", pa.array([None, CaptionClips(cfg.caption, "").key]))
    for k in KEYS:  # v0 judged before (a loose threshold would have let it through); v1 too
        carried = carried.append_column(judge_column(k), pa.array([0.7 if k == "over_edited" else 0.1, 0.1]))
    carried = carried.append_column("judge_key", pa.array(["old", "old"]))
    stage = ScriptedJudge(cfg, str(clips_root), answer())
    stage.setup()
    out = stage(carried).to_pylist()
    assert not stage.asked and not stage.captioned  # v0: its stored answers reject it; v1: captioned already
    assert out[0]["caption_error"] == f"{JUDGED_OUT} (vlm_over_edited)" and out[1]["caption_error"] is None
    assert all(r["judge_key"] is None and r["caption_key"] is None for r in out)  # nothing new to store
    loose = judge_cfg(over_edited=0.9)
    stage = ScriptedJudge(loose, str(clips_root), answer())
    stage.setup()
    out = stage(carried).to_pylist()
    assert not stage.asked and len(stage.captioned) == 1 and out[0]["caption"] == LONG  # captioned now, not asked


def test_windows_each_get_a_caption_and_the_judge_takes_the_largest_answer(tmp_path):
    from curation.corpora.synthetic import moving, write_video

    (tmp_path / "clips").mkdir()
    write_video(tmp_path / "clips" / "v0.mp4", moving(60, (64, 48), seed=1), 24)  # 60 frames: windows of 24, 24, 12
    cfg = judge_cfg()
    cfg = dataclasses.replace(cfg, caption=dataclasses.replace(cfg.caption, policy="windows", window_frames=24))
    seen = []

    def reply(r, retry):
        seen.append(r.media.start_frame)
        return answer(synthetic=r.media.start_frame == 24)(r, retry)

    stage = ScriptedJudge(cfg, str(tmp_path), reply)
    stage.setup()
    r = stage(pa.table({"clip_id": ["v0"], "clip_path": ["clips/v0.mp4"], "media_type": ["video"]})).to_pylist()[0]
    assert seen == [0, 24, 48] and r["vlm_synthetic"] == 1.0 and r["vlm_slideshow"] == 0.0
    assert r["caption_error"] == f"{JUDGED_OUT} (vlm_synthetic)"
    stage = ScriptedJudge(dataclasses.replace(cfg, judge=dataclasses.replace(cfg.judge, keep=("synthetic",))), str(tmp_path), reply)
    stage.setup()
    r = stage(pa.table({"clip_id": ["v0"], "clip_path": ["clips/v0.mp4"], "media_type": ["video"]})).to_pylist()[0]
    assert [w["start_s"] for w in r["caption_windows"]] == [0.0, 1.0, 2.0]
    assert [w["end_s"] for w in r["caption_windows"]] == [1.0, 2.0, 2.5]
    assert (r["caption_start_s"], r["caption_end_s"], r["caption"]) == (0.0, 1.0, LONG)
    assert [len(q.media.frames) for q in stage.captioned] == [2, 2, 1]  # 2 fps within each window


def test_judged_out_clips_get_no_caption_and_a_looser_threshold_captions_them_without_asking(clips_root, tiny_vlm, tmp_path):
    import shutil

    from captioning.store import caption_dir, caption_missing, judge_dir, stored, stored_judge
    from curation.core.manifest import Layout
    from curation.core.schema import clip_schema
    from flows.run_local import stream_table_local

    out = tmp_path / "out"
    shutil.copytree(clips_root, out)
    layout = Layout.at(out)
    rows = [{**r, "status": "accepted"} for r in clip_table().to_pylist()]
    clips = pa.Table.from_pylist(rows, schema=clip_schema())
    strict = judge_cfg(over_edited=0.01)  # the random model's P(yes) is above it on every clip
    got = caption_missing(clips, layout, strict.caption, stream_table_local, strict.judge)
    assert (got["judged"], got["captioned"]) == (4, 0) and not caption_dir(layout, strict.caption).exists()
    answers = stored_judge(layout, strict.caption, strict.judge)
    assert answers.num_rows == 4 and answers.column("vlm_over_edited").null_count == 0
    parts = {p: p.stat().st_mtime_ns for p in judge_dir(layout, strict.caption, strict.judge).glob("*.parquet")}
    loose = judge_cfg(over_edited=0.99)  # re-tuned: same judge key, the stored answers now let every clip through
    assert judge_dir(layout, loose.caption, loose.judge) == judge_dir(layout, strict.caption, strict.judge)
    got = caption_missing(clips, layout, loose.caption, stream_table_local, loose.judge)
    assert (got["judged"], got["captioned"], got["already"]) == (0, 4, 0)
    assert {p: p.stat().st_mtime_ns for p in judge_dir(layout, loose.caption, loose.judge).glob("*.parquet")} == parts
    assert sorted(stored(layout, loose.caption).column("clip_id").to_pylist()) == sorted(r["clip_id"] for r in rows)
    again = caption_missing(clips, layout, loose.caption, stream_table_local, loose.judge)
    assert (again["judged"], again["captioned"], again["already"], again["generated_tokens"]) == (0, 0, 4, 0)
