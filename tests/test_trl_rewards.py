"""Our rewards (openrs_nb.rewards) against TRL 1.16's `trl.rewards` on the same completions.

Each case states what both return. Where they agree the case has no `why`; where they differ, `why`
says which choice is ours and where it comes from. If a TRL update changes its behaviour, the case fails
and the difference has to be looked at again.
"""

import math

import pytest

pytest.importorskip("math_verify")
from trl.rewards import accuracy_reward as trl_accuracy  # noqa: E402
from trl.rewards import get_cosine_scaled_reward as trl_cosine  # noqa: E402
from trl.rewards import think_format_reward as trl_think_format  # noqa: E402

from openrs_nb import rewards  # noqa: E402


def chat(text):
    return [{"role": "assistant", "content": text}]


# (id, completion, solution column, ours, TRL, why they differ or None)
ACCURACY = [
    ("boxed-right", "Add them.\n</think>\nThe answer is \\boxed{42}.", "The sum is $\\boxed{42}$.", 1.0, 1.0, None),
    ("boxed-wrong", "Add them.\n</think>\nThe answer is \\boxed{41}.", "The sum is $\\boxed{42}$.", 0.0, 0.0, None),
    ("equivalent-forms", "so \\boxed{0.5}", "$\\boxed{\\frac{1}{2}}$", 1.0, 1.0, None),
    ("bare-gold", "so \\boxed{7}", "7", 1.0, 1.0, None),
    ("inline-math", "the answer is $42$", "$\\boxed{42}$", 1.0, 1.0, None),
    ("units", "\\boxed{42 \\text{ cm}}", "$\\boxed{42}$", 1.0, 1.0, None),
    ("unordered-set", "\\boxed{1, 2}", "$\\boxed{2, 1}$", 1.0, 1.0, None),
    ("equivalent-radicals", "\\boxed{\\sqrt{2}/2}", "$\\boxed{\\frac{\\sqrt{2}}{2}}$", 1.0, 1.0, None),
    ("no-latex-anchored", "The answer is 42", "$\\boxed{42}$", 1.0, 0.0,
     "without a box, openrs_nb.grading falls back to math-verify's anchored phrases ('the answer is 42', "
     "ExprExtractionConfig(try_extract_without_anchor=False)); TRL parses LaTeX only"),
    ("two-boxes-last-right", "first \\boxed{41} then \\boxed{42}", "$\\boxed{42}$", 1.0, 0.0,
     "ours grades the last \\boxed{} (the final answer); math-verify, called on the whole text as TRL "
     "does, reads every box as one set {41, 42}, equal to neither"),
    ("two-boxes-first-right", "first \\boxed{42} then \\boxed{41}", "$\\boxed{42}$", 0.0, 0.0, None),
    ("unparseable-gold", "so \\boxed{3}", "The answer is \\boxed{}.", 0.0, None,
     "gold without an answer: TRL returns None (the trainer skips the reward), ours scores 0.0 and counts "
     "it in rewards.UNPARSEABLE_GOLD; the authors' code gave a free 1.0 (knoveleng/open-rs @2889c47 "
     "src/open_r1/rewards.py)"),
    ("empty-gold", "so \\boxed{3}", "", 0.0, None, "as unparseable-gold"),
    ("prose-gold", "so \\boxed{3}", "no answer here", 0.0, None,
     "a gold without a box is read by openrs_nb.grading as a bare answer (\\boxed{no answer here}, which "
     "math-verify parses as a product of symbols), so ours grades it wrong and does not count it as "
     "unparseable; TRL finds no math in it and returns None"),
]


def test_accuracy_reward_against_trl():
    completions = [chat(c) for _, c, _, _, _, _ in ACCURACY]
    solutions = [s for _, _, s, _, _, _ in ACCURACY]
    ours = rewards.accuracy_reward(completions, solution=solutions)
    theirs = trl_accuracy(completions, solutions)
    got = {case[0]: (o, t) for case, o, t in zip(ACCURACY, ours, theirs)}
    assert got == {cid: (o, t) for cid, _, _, o, t, _ in ACCURACY}
    for cid, _, _, o, t, why in ACCURACY:
        assert (o == t) == (why is None), f"{cid}: a difference needs a reason, an agreement none"


# (id, completion, ours "prefilled_think", ours "strict", TRL think_format_reward, why)
FORMAT = [
    ("think-then-answer", "<think>\nreasoning\n</think>\nThe answer is 3.", 1.0, 0.0, 1.0,
     "strict mode also wants <answer></answer>; TRL's think format does not"),
    ("prefilled-think", "reasoning\n</think>\nThe answer is 3.", 1.0, 0.0, 0.0,
     "DeepSeek-R1-Distill's chat template ends the prompt with '<think>\\n', so its completions never start "
     "with <think>: TRL's rule scores them all 0; the authors' rule (ours) counts '\\n</think>\\n'"),
    ("no-newlines", "<think>reasoning</think>The answer is 3.", 0.0, 0.0, 1.0,
     "the authors' rule (knoveleng/open-rs @2889c47 src/open_r1/rewards.py) needs '\\n</think>\\n' exactly"),
    ("two-closing-tags", "<think>\na\n</think>\nb\n</think>\n", 0.0, 0.0, 1.0,
     "ours wants exactly one closing tag; TRL's regex stops at the first"),
    ("two-opening-tags", "<think>\na\n<think>\nb\n</think>\nc", 1.0, 0.0, 0.0,
     "TRL refuses a second <think>; the prefilled rule only counts '\\n</think>\\n'"),
    ("strict-answer-tags", "<think>r</think>\n<answer>3</answer>", 0.0, 1.0, 1.0,
     "the prefilled rule needs a newline before </think>"),
    ("no-tags", "The answer is 3.", 0.0, 0.0, 0.0, None),
]


@pytest.mark.parametrize("cid, text, prefilled, strict, trl, why", FORMAT, ids=[c[0] for c in FORMAT])
def test_format_reward_against_trl(cid, text, prefilled, strict, trl, why):
    assert rewards.format_reward([chat(text)], format_mode="prefilled_think") == [prefilled]
    assert rewards.format_reward([chat(text)], format_mode="strict") == [strict]
    assert trl_think_format([chat(text)]) == [trl]
    assert (prefilled == strict == trl) == (why is None)


def test_cosine_reward_equals_trl_with_trls_settings():
    """With TRL's bounds and unit (tokens, clamped progress), both give the same numbers, past max_len too."""
    texts = ["\\boxed{42}", "\\boxed{41}"] * 5
    lengths = [1, 1, 50, 50, 100, 100, 150, 150, 400, 400]  # tokens; 150 and 400 are past max_len
    completions, ids, solutions = [chat(t) for t in texts], [[7] * n for n in lengths], ["$\\boxed{42}$"] * 10
    ours = rewards.get_cosine_scaled_reward(min_value_wrong=-1.0, max_value_wrong=-0.5, min_value_correct=0.5,
                                            max_value_correct=1.0, max_len=100, length_unit="tokens")
    theirs = trl_cosine(max_len=100)
    got, want = ours(completions, solution=solutions, completion_ids=ids), theirs(completions, solutions, ids)
    assert got == pytest.approx(want, abs=1e-12)
    assert want[2:4] == pytest.approx([0.75, -0.75])  # TRL's docstring example: half of max_len
    assert want[4:] == pytest.approx([0.5, -0.5] * 3)  # clamped: every length past max_len is max_len

    # Without the clamp (the authors' code), the schedule climbs back past max_len: 150 tokens = 50.
    cycling = rewards.get_cosine_scaled_reward(min_value_wrong=-1.0, max_value_wrong=-0.5, max_len=100,
                                               length_unit="tokens", clamp=False)
    assert cycling(completions, solution=solutions, completion_ids=ids)[6:8] == pytest.approx([0.75, -0.75])


def test_cosine_reward_defaults_differ_from_trl():
    """Our defaults are the authors' (knoveleng/open-rs @2889c47 src/open_r1/grpo.py GRPOScriptArguments):
    wrong answers from 0.0 (short) to -0.5 (long), length in characters; TRL's go from -1.0 (short) to
    -0.5 (long), length in tokens, and it has no default max_len. An empty gold: ours 0.0, TRL None."""
    ours = rewards.get_cosine_scaled_reward(max_len=100)
    theirs = trl_cosine(max_len=100)
    c = lambda length: math.cos(length / 100 * math.pi)  # noqa: E731  c = cos(p·π), p = length / max_len
    wrong, correct, solution = chat("\\boxed{41}"), chat("\\boxed{42}"), ["$\\boxed{42}$"]  # 10 characters
    # wrong: max_w + ½(min_w − max_w)(1 + c); ours (0.0, -0.5) over 10 characters, TRL (-1.0, -0.5) over 10 tokens
    assert ours([wrong], solution=solution) == pytest.approx([-0.5 + 0.5 * 0.5 * (1 + c(10))])  # -0.0122
    assert theirs([wrong], solution, [[7] * 10]) == pytest.approx([-0.5 - 0.5 * 0.5 * (1 + c(10))])  # -0.9878
    # correct: min_c + ½(max_c − min_c)(1 + c), same bounds; the unit alone: 10 characters vs 3 tokens
    assert ours([correct], solution=solution) == pytest.approx([0.5 + 0.25 * (1 + c(10))])  # 0.9878
    assert theirs([correct], solution, [[7] * 3]) == pytest.approx([0.5 + 0.25 * (1 + c(3))])  # 0.9989
    assert ours([correct], solution=[""]) == [0.0]
    assert theirs([correct], [""], [[7] * 3]) == [None]
