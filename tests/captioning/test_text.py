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
