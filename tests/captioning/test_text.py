"""Caption text rules without a model: cleaning, gates, the budget cut, duplicates."""

from __future__ import annotations

from captioning import text as T


def test_boilerplate_openings_are_stripped_and_flagged():
    for raw in ("The video shows a dog running on a beach.", "In this video, a dog runs on a beach.",
                "This clip depicts a dog running on a beach.", "  \"The footage captures a dog running.\" "):
        cleaned, flags = T.clean(raw)
        assert cleaned.startswith("A dog"), cleaned
        assert flags == ["boilerplate_stripped"]
    cleaned, flags = T.clean("A video editor sits at a desk.")  # "video" inside is not an opening
    assert cleaned == "A video editor sits at a desk." and flags == []


def test_gates_catch_loops_refusals_and_empty_output():
    assert T.gates("A red car drives along a coastal road at sunset while the camera follows from above.") == []
    loop = "A man walks down the street. " + "the man walks and walks and walks and walks " * 6
    assert "repetition" in T.gates(loop)
    assert "repetition" in T.gates("A cat sleeps. A cat sleeps. A cat sleeps. The room is dark.")
    assert "refusal" in T.gates("I'm sorry, but I can't describe this video.")
    assert "refusal" in T.gates("As an AI, I cannot see videos.")
    assert T.gates("") == ["empty"] and T.gates("  . ") == ["empty"]


def test_unfinished_tail_is_dropped_only_after_a_finished_sentence():
    assert T.drop_unfinished("A dog runs on the beach. The camera pans to the") == "A dog runs on the beach."
    assert T.drop_unfinished("A dog runs on the beach.") == "A dog runs on the beach."
    assert T.drop_unfinished("a dog runs on the") == "a dog runs on the"


def test_budget_cut_keeps_whole_sentences_or_gives_up():
    count = lambda s: len(s.split())  # noqa: E731 - a word-count tokenizer
    text = "One two three. Four five six seven. Eight nine."
    assert T.cut_to_budget(text, count, 8) == "One two three. Four five six seven."
    assert T.cut_to_budget(text, count, 3) == "One two three."
    assert T.cut_to_budget(text, count, 2) is None  # never a cut inside a sentence


def test_duplicates_are_found_across_clips_after_normalising():
    texts = ["A dog runs.", "a dog runs", "A DOG, runs!", "A cat sits.", None, "A cat sits."]
    assert T.duplicates(texts, min_clips=3) == {"a dog runs"}
    assert T.duplicates(texts, min_clips=2) == {"a dog runs", "a cat sits"}


# ---- repairs: what real VLM replies wrap around a caption (tests/data/caption_failures.jsonl has
# the reported replies; these pin each rule)

CAP = "A dog runs along a beach at sunset while the camera follows."


def test_reasoning_blocks_are_stripped_and_flagged():
    for raw in (f"<think>\nThe user wants a caption. I see a dog.\n</think>\n\n{CAP}",
                f"<think>\n\n</think>\n\n{CAP}",  # an empty block, as fine-tuned Qwen3-VL Instruct writes it
                f"The clip shows a dog. I should mention the camera.\n</think>\n\n{CAP}",  # <think> was in the prompt
                f"<THINKING>a dog</THINKING>{CAP}"):
        assert T.clean(raw) == (CAP, ["reasoning_stripped"]), raw
    # nothing but reasoning: cut inside an unclosed block, or an untagged monologue
    assert T.clean("<think>\nThe user wants a caption. Let me look at the frames. A dog is") == ("", ["reasoning_stripped"])
    assert T.clean("Okay, the user wants a caption. Let me look at the frames first.")[0] == ""
    assert T.gates(T.clean("<think>I see a dog running")[0]) == ["empty"]
    assert T.clean("A man stops to think, then walks on.") == ("A man stops to think, then walks on.", [])


def test_chat_template_text_is_stripped_and_flagged():
    for raw in (f"<|im_start|>assistant\n{CAP}<|im_end|>", f"assistant\n{CAP}", f"<|assistant|>\n{CAP}", f"ASSISTANT: {CAP}",
                f"{CAP}<|im_end|>\n<|endoftext|>", f"{CAP}\nHuman: Describe the next clip.\nAssistant: Sure",
                f"system\nYou are a helpful assistant.\nuser\nDescribe this video.\nassistant\n{CAP}",
                f"[INST] Describe this video. [/INST] {CAP}", f"{CAP}<|im_start|>user\nAnd this one?",
                f"<|im_start|> assistant{CAP}"):  # as `transformers serve` returned it for the tiny VLM (no newline in its vocabulary)
        assert T.clean(raw) == (CAP, ["template_stripped"]), raw
    assert T.clean("Assistant chefs plate desserts in a busy kitchen.") == ("Assistant chefs plate desserts in a busy kitchen.", [])


def test_markdown_becomes_prose_and_is_flagged():
    got = T.clean("### Video Description\n\n- A dog runs across a meadow\n- The camera tracks it at knee height\n\n"
                  "**Lighting:** Warm evening sun.\n**Camera:** Static, eye level.\n**Scene:** A city park in autumn.")
    assert got == ("A dog runs across a meadow. The camera tracks it at knee height. Lighting: warm evening sun. "
                   "Camera: static, eye level. A city park in autumn.", ["markdown_repaired"])
    assert T.clean("1. A chef slices onions.\n2. Her knife moves fast.") == ("A chef slices onions. Her knife moves fast.", ["markdown_repaired"])
    assert T.clean("A **red** car on a *coastal* road.") == ("A red car on a coastal road.", ["markdown_repaired"])
    assert T.clean("Caption: A red car on a coastal road.") == ("A red car on a coastal road.", ["markdown_repaired"])
    assert T.clean("Sure! Here is a detailed description of the video:\n\n- A red car drives.")[0] == "A red car drives."
    for good in ("A sign on the door reads: OPEN. A woman flips it.", "Close-up: a hand turns a key.",
                 "A line of text_overlay and a snake_case label appear."):
        assert T.clean(good) == (good, []), good


def test_refusals_with_typographic_apostrophes_are_caught():
    for raw in ("I’m sorry, but I can’t help with that.", "I’m unable to view videos.", "There’s no video attached.",
                "As I am not allowed to describe the individuals in the image you’ve provided, I can't assist.",
                "Please provide me with the image you would like me to describe.", "I cannot watch videos."):
        assert T.gates(raw) == ["refusal"], raw
    assert T.gates("Sorry-looking puppies huddle under a porch step in the rain.") == []
    assert T.words("The dog’s tail") == ["the", "dog's", "tail"]  # words compare with quotes folded
    assert T.duplicates(["The dog’s tail wags.", "The dog's tail wags."], min_clips=2) == {"the dog's tail wags"}


ZH = "一位穿着红色外套的女子在黄昏时分沿着潮湿的城市街道行走，镜头从侧面跟随她。街道两旁的商店橱窗发出温暖的灯光。"


def test_language_gate_judges_the_script_of_the_letters():
    assert T.gates(ZH) == ["language"]  # English prompts (Prompts.language = "en")
    assert T.gates("A man 在公园里跑步，一只狗跟在他后面。镜头从左向右平移。") == ["language"]
    assert T.gates("A neon sign reading 東京 flickers above a narrow alley while a cyclist rides past.") == []
    assert T.gates("A barista in a café in Zürich pours milk into a cup under soft light.") == []
    assert T.gates(ZH, language="zh") == []
    # the budget tokenizer's view: a caption mostly of <unk> tokens fires the same gate
    assert T.gates(CAP, unknown=6, tokens=20) == ["language"] and T.gates(CAP, unknown=1, tokens=20) == []
    assert T.unknown_share(3, 12) == 0.25 and T.unknown_share(0, 0) == 0.0
    try:
        T.gates(CAP, language="xx")
    except ValueError as e:
        assert "xx" in str(e)
    else:
        raise AssertionError("an unknown caption language must raise")


def test_language_gate_keeps_text_a_tokenizer_cannot_count_out_of_the_budget():
    byteless = lambda s: 1 + sum(c.isascii() and not c.isspace() for c in s) // 4  # noqa: E731 - drops non-ASCII like the tiny BPE
    assert byteless(ZH) == 1  # a whole Chinese caption "fits" any budget
    got = T.caption(ZH)
    assert got.fired == ["language"]  # rejected before the budget is counted


def test_repetition_is_found_in_text_without_spaces():
    loop = "一只猫在窗边的沙发上睡觉。" * 6
    assert T.gates(loop, language="zh") == ["repetition"]  # one sentence said 6 times
    assert T.sentences("一只猫在睡觉。一只狗在跑！“你好。”他说") == ["一只猫在睡觉。", "一只狗在跑！", "“你好。”", "他说"]
    progress = "".join(f"他说：“系统修复进度{n}%，请稍候。”她又说：“系统修复进度{n}%，请稍候。”" for n in range(5, 60, 5))
    assert T.gates(progress, language="zh") == ["repetition"]  # few distinct character 4-grams
    assert T.gates(ZH, language="zh") == []
    assert T.drop_unfinished("一只狗在海滩上奔跑。镜头向") == "一只狗在海滩上奔跑。"


def test_a_loop_cut_at_the_token_limit_is_rejected_not_trimmed():
    for raw in ("A dog runs on a beach. The dog chases a red ball on the sand. The dog chases a red ball on the sand. The dog cha",
                "A man waits at a bus stop. The timetable reads 1" + "0" * 50,
                "A woman walks down a hall. She walks and walks and walks and walks and walks and walks and wa"):
        got = T.caption(raw, hit_limit=True)
        assert got.fired == ["repetition"], raw
        assert T.loops_at_end(raw)
    # a caption cut at the limit without a loop: the unfinished sentence is dropped, it passes
    assert T.caption("A dog runs on a beach. The camera pans to the", hit_limit=True) == ("A dog runs on a beach.", [], [])
    assert not T.loops_at_end("Waves roll in, roll out and roll in again over the sand, and the")


def test_sentences_keep_closing_quotes():
    assert T.sentences('He reads "Stop." Then he waits. A car passes!') == ['He reads "Stop."', "Then he waits.", "A car passes!"]
