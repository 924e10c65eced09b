"""openrs_nb.rewards: every reward on hand-worked cases, TRL's calling convention, and the registry."""

from __future__ import annotations

import logging
import math

import pytest

from openrs_nb import rewards
from openrs_nb.rewards import (
    REWARDS,
    accuracy_reward,
    authors_accuracy_reward,
    build_reward_funcs,
    cosine_scaled,
    format_reward,
    get_cosine_scaled_reward,
    get_repetition_penalty_reward,
    language_reward,
    tag_count_reward,
)

STRICT_OK = "<think>\n12 + 35 = 47\n</think>\n<answer>\\boxed{47}</answer>"


def conv(*texts):
    """TRL's conversational completions."""
    return [[{"role": "assistant", "content": t}] for t in texts]


def trl_kwargs(n, solution, **columns):
    """What GRPOTrainer passes besides completions (trl 1.16 `_calculate_rewards`)."""
    prompt = [{"role": "system", "content": "Think, then answer in \\boxed{}."},
              {"role": "user", "content": "What is 12 + 35?"}]
    metrics = {}
    kw = dict(
        prompts=[prompt] * n,
        completion_ids=[[1, 2, 3]] * n,
        trainer_state=object(),
        log_extra=lambda *a, **k: None,
        log_metric=lambda name, value: metrics.setdefault(name, []).append(value),
        solution=solution,
        problem=["What is 12 + 35?"] * n,
        answer=["47"] * n,
        source=["demo"] * n,
        level=[1] * n,
        **columns,
    )
    return kw, metrics


# --------------------------------------------------------------------------------------------------
# format
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("12 + 35 = 47\n</think>\n\\boxed{47}", 1.0),  # the prompt already opened <think>
        ("reasoning\n</think>\nmore\n</think>\n\\boxed{47}", 0.0),  # two closings
        ("no closing tag \\boxed{47}", 0.0),
        ("reasoning</think>\\boxed{47}", 0.0),  # the authors' rule wants the newlines
        ("", 0.0),
    ],
)
def test_format_prefilled_think(text, expected):
    assert format_reward([text], format_mode="prefilled_think") == [expected]


@pytest.mark.parametrize(
    "text, expected",
    [
        (STRICT_OK, 1.0),
        ("  \n" + STRICT_OK + "\n\n", 1.0),  # surrounding whitespace is stripped
        ("<think>a\nb</think><answer>\n47\n</answer>", 1.0),  # DOTALL, no space needed between
        ("Sure! " + STRICT_OK, 0.0),  # text before <think>
        (STRICT_OK + " Done.", 0.0),  # text after </answer>
        ("<think>x</think>", 0.0),  # no answer
        ("<answer>47</answer><think>x</think>", 0.0),  # wrong order
        ("<think>x</think><think>y</think><answer>47</answer>", 0.0),  # a tag twice
        ("<think>x <answer>1</answer></think><answer>47</answer>", 0.0),
    ],
)
def test_format_strict(text, expected):
    assert format_reward([text], format_mode="strict") == [expected]


def test_format_accepts_conversational_and_plain_and_bad_mode():
    assert format_reward(conv(STRICT_OK, "nope"), format_mode="strict") == [1.0, 0.0]
    assert format_reward([STRICT_OK, None], format_mode="strict") == [1.0, 0.0]  # None -> ""
    with pytest.raises(ValueError, match="prefilled_think"):
        format_reward([STRICT_OK], format_mode="loose")


# --------------------------------------------------------------------------------------------------
# accuracy
# --------------------------------------------------------------------------------------------------
def test_accuracy_hand_worked_with_trl_kwargs():
    completions = conv("... so \\boxed{47}", "\\boxed{46}", "no box", "\\boxed{\\frac{94}{2}}")
    kw, metrics = trl_kwargs(4, ["12 + 35 = \\boxed{47}"] * 4)
    assert accuracy_reward(completions, **kw) == [1.0, 0.0, 0.0, 1.0]
    assert metrics == {"rewards/accuracy_reward/unparseable_gold": [0.0]}


def test_accuracy_unparseable_gold_scores_zero_and_is_counted(caplog):
    before = rewards.UNPARSEABLE_GOLD["accuracy_reward"]
    kw, metrics = trl_kwargs(4, ["", None, "\\boxed{}", "47"])
    with caplog.at_level(logging.WARNING, logger="openrs_nb.rewards"):
        out = accuracy_reward(conv("\\boxed{47}", "\\boxed{47}", "\\boxed{47}", "\\boxed{47}"), **kw)
    assert out == [0.0, 0.0, 0.0, 1.0]
    assert rewards.UNPARSEABLE_GOLD["accuracy_reward"] - before == 3
    assert metrics["rewards/accuracy_reward/unparseable_gold"] == [3.0]
    lines = [r.getMessage() for r in caplog.records if "could not be parsed" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("accuracy_reward: 3 of 4 gold answers")


def test_authors_accuracy_reward_hands_out_free_reward():
    """The hole this project closes: gold without LaTeX markup does not parse in the authors' code."""
    wrong = ["\\boxed{5}"]
    assert authors_accuracy_reward(wrong, ["204"]) == [1.0]  # bare answer: free reward
    assert authors_accuracy_reward(wrong, [""]) == [1.0]
    assert authors_accuracy_reward(wrong, ["$204$"]) == [0.0]  # with markup it grades
    assert accuracy_reward(wrong, solution=["204"]) == [0.0]
    assert accuracy_reward(["\\boxed{204}"], solution=["204"]) == [1.0]


def test_accuracy_malformed_inputs():
    assert accuracy_reward([None, "", "\\boxed{47}"], solution=[47, 47, 47]) == [0.0, 0.0, 1.0]
    before = rewards.UNPARSEABLE_GOLD["accuracy_reward"]
    # a malformed row (a list, a bool) scores 0.0 and is counted instead of stopping training
    assert accuracy_reward(["\\boxed{5}"] * 3, solution=[["5"], True, "5"]) == [0.0, 0.0, 1.0]
    assert rewards.UNPARSEABLE_GOLD["accuracy_reward"] - before == 2
    with pytest.raises(ValueError, match="solution"):
        accuracy_reward(["\\boxed{1}"])
    with pytest.raises(ValueError, match="pair up"):
        accuracy_reward(["\\boxed{1}", "\\boxed{2}"], solution=["1"])
    with pytest.raises(ValueError, match="completions is None"):
        accuracy_reward(None, solution=[])


# --------------------------------------------------------------------------------------------------
# cosine
# --------------------------------------------------------------------------------------------------
def test_cosine_reproduces_open_r1_test():
    """open-r1's test_cosine_scaled_reward (huggingface/open-r1 @250ab46, tests/test_rewards.py); its
    "20 chars" case is the unpadded 22-char string (padding to a width below the length adds nothing)."""
    reward = get_cosine_scaled_reward(-1.0, -0.5, 0.5, 1.0, max_len=100)
    gold = "\\frac{63}{400}"
    right, wrong = "\\boxed{\\frac{63}{400}}", "\\boxed{\\frac{64}{400}}"
    cases = [(right, 20, 0.943), (right, 80, 0.547), (wrong, 20, -0.942), (wrong, 80, -0.547)]
    for text, width, expected in cases:
        padded = f"{text:<{width}}"
        assert len(padded) == max(22, width)
        (value,) = reward([padded], solution=[gold])
        assert value == pytest.approx(expected, abs=0.006)



def test_cosine_wrong_answer_conventions():
    # Defaults = the authors' script values (0.0, -0.5): a longer wrong answer is penalised MORE.
    assert cosine_scaled(0, False) > cosine_scaled(500, False) > cosine_scaled(1000, False) == pytest.approx(-0.5)
    # The paper's text and the function defaults of open-r1 / the authors' rewards.py (-1.0, -0.5): LESS.
    text = dict(min_value_wrong=-1.0, max_value_wrong=-0.5)
    assert cosine_scaled(0, False, **text) == pytest.approx(-1.0)
    assert cosine_scaled(0, False, **text) < cosine_scaled(500, False, **text) < cosine_scaled(1000, False, **text)
    assert cosine_scaled(1000, False, **text) == pytest.approx(-0.5)
    # correct answers are the same under both
    assert cosine_scaled(300, True, **text) == cosine_scaled(300, True)


def test_free_reward_changes_no_advantage():
    """An unusable gold pays the whole group the same (authors 1.0, ours 0.0): Eq. 3 gives equal advantages."""
    from openrs_nb.grpo import group_advantages

    texts = ["ok\n</think>\n\\boxed{5}", "no format \\boxed{6}", "ok\n</think>\n\\boxed{7}", "\\boxed{5}"]
    golds = [""] * 4
    fmt = format_reward(texts)
    assert len(set(fmt)) == 2  # the format reward still differs inside the group
    theirs = [f + 2 * a for f, a in zip(fmt, authors_accuracy_reward(texts, golds))]
    ours = [f + 2 * a for f, a in zip(fmt, accuracy_reward(texts, solution=golds))]
    assert theirs == [f + 2.0 for f in fmt] and ours == fmt
    assert group_advantages(theirs, 4).tolist() == pytest.approx(group_advantages(ours, 4).tolist(), abs=1e-6)

def test_cosine_hand_worked_defaults():
    # p = 0 -> cos = 1 -> correct max (1.0), wrong min_wrong (0.0); p = 0.5 -> cos = 0 -> midpoints
    assert cosine_scaled(0, True) == pytest.approx(1.0)
    assert cosine_scaled(0, False) == pytest.approx(0.0)
    assert cosine_scaled(500, True) == pytest.approx(0.75)
    assert cosine_scaled(500, False) == pytest.approx(-0.25)
    assert cosine_scaled(1000, True) == pytest.approx(0.5)
    assert cosine_scaled(1000, False) == pytest.approx(-0.5)


def test_cosine_clamps_where_the_authors_cycle():
    for length in (1000, 1500, 2000, 10_000):
        assert cosine_scaled(length, True) == pytest.approx(0.5)
        assert cosine_scaled(length, False) == pytest.approx(-0.5)
    # the authors' curve: at 2 x max_len the cosine is back at its start
    assert cosine_scaled(2000, True, clamp=False) == pytest.approx(1.0)
    assert cosine_scaled(2000, False, clamp=False) == pytest.approx(0.0)
    assert cosine_scaled(1500, True, clamp=False) == pytest.approx(0.75)


def test_cosine_reward_lengths_tokens_and_bad_gold():
    chars = get_cosine_scaled_reward(max_len=100)
    text = "\\boxed{47}" + " " * 40  # 50 characters -> p = 0.5
    kw, _ = trl_kwargs(2, ["47", None])
    assert chars(conv(text, text), **kw) == pytest.approx([0.75, 0.0])  # unparseable gold -> 0.0
    tokens = get_cosine_scaled_reward(max_len=6, length_unit="tokens")
    kw, _ = trl_kwargs(1, ["47"])  # 3 completion ids -> p = 0.5
    assert tokens(conv("\\boxed{46}"), **kw) == pytest.approx([-0.25])
    with pytest.raises(ValueError, match="completion_ids"):
        tokens(["\\boxed{47}"], solution=["47"])
    with pytest.raises(ValueError, match="length_unit"):
        get_cosine_scaled_reward(length_unit="words")
    with pytest.raises(ValueError, match="max_len"):
        get_cosine_scaled_reward(max_len=0)


# --------------------------------------------------------------------------------------------------
# tag_count, repetition, language
# --------------------------------------------------------------------------------------------------
def test_tag_count():
    assert tag_count_reward([STRICT_OK], format_mode="strict") == [1.0]
    assert tag_count_reward(["<think>x</think> 47"], format_mode="strict") == [0.5]
    assert tag_count_reward(["<think><think>x</think><answer>"], format_mode="strict") == [0.5]
    # prefilled: </think>, <answer>, </answer> a third each
    assert tag_count_reward(["x\n</think>\n<answer>47</answer>"]) == pytest.approx([1.0])
    assert tag_count_reward(["x\n</think>\n47"]) == pytest.approx([1 / 3])
    assert tag_count_reward([""]) == [0.0]


def test_repetition_penalty():
    reward = get_repetition_penalty_reward(ngram_size=3, max_penalty=-1.0)
    # words a b c a b c: 3-grams abc, bca, cab, abc -> 3 unique of 4 -> -(1 - 3/4)
    assert reward(["a b c a b c"]) == pytest.approx([-0.25])
    assert reward(["A b C a B c"]) == pytest.approx([-0.25])  # lower-cased
    assert reward(["one two three four"]) == [0.0]
    assert reward(["too short"]) == [0.0]
    assert reward(["x " * 100]) == pytest.approx([-(1 - 1 / 98)])
    with pytest.raises(ValueError, match="max_penalty"):
        get_repetition_penalty_reward(max_penalty=0.5)


def test_language_reward():
    english = [[{"role": "system", "content": "系统"}, {"role": "user", "content": "What is 12 + 35?"}]]
    chinese = [[{"role": "user", "content": "十二加三十五是多少?"}]]
    # "Hello 世界": 5 Latin letters, 2 CJK letters
    assert language_reward(["Hello 世界"], prompts=english) == pytest.approx([5 / 7])
    assert language_reward(["Hello 世界"], prompts=chinese) == pytest.approx([2 / 7])
    assert language_reward(conv("The sum is \\boxed{47}."), prompts=english) == [1.0]
    assert language_reward(["47 + 1"], prompts=english) == [0.0]  # no letters at all
    assert language_reward(["Привет world"]) == pytest.approx([5 / 11])  # no prompts: Latin
    assert language_reward(["Let θ = π, so ℝ holds 𝑥"], prompts=english) == [1.0]  # notation is left out
    assert language_reward(["θ = π"], prompts=english) == [0.0]  # ... so no letters remain
    greek = [[{"role": "user", "content": "Πόσο κάνει 12 + 35;"}]]
    assert language_reward(["Είναι 47, ok"], prompts=greek) == pytest.approx([5 / 7])  # Greek as language


# --------------------------------------------------------------------------------------------------
# Registry and TRL names
# --------------------------------------------------------------------------------------------------
def test_registry_names_and_trl_call():
    names = ["format", "accuracy", "cosine", "tag_count", "repetition", "language"]
    assert set(REWARDS) == set(names)
    funcs = build_reward_funcs(names, format_mode="strict", cosine_max_len=100)
    assert [f.__name__ for f in funcs] == [f"{n}_reward" for n in names]
    kw, _ = trl_kwargs(2, ["12 + 35 = \\boxed{47}"] * 2)
    completions = conv(STRICT_OK, "我不知道")
    out = {f.__name__: f(completions=completions, **kw) for f in funcs}
    assert out["format_reward"] == [1.0, 0.0]
    assert out["accuracy_reward"] == [1.0, 0.0]
    # 57 characters at max_len 100: 0.5 + 0.25 (1 + cos(0.57 pi)); the wrong, short one: ~0
    assert out["cosine_reward"][0] == pytest.approx(0.5 + 0.25 * (1 + math.cos(len(STRICT_OK) / 100 * math.pi)))
    assert out["tag_count_reward"] == [1.0, 0.0]
    assert out["language_reward"] == [1.0, 0.0]
    assert all(len(v) == 2 and all(isinstance(x, float) for x in v) for v in out.values())


def test_build_reward_funcs_options_and_errors():
    (fmt,) = build_reward_funcs(["format"])  # default: the authors' prefilled-think rule
    assert fmt(["x\n</think>\n\\boxed{1}", "<think>x</think><answer>1</answer>"]) == [1.0, 0.0]
    (cos,) = build_reward_funcs("cosine", cosine_max_len=20)
    assert cos(["\\boxed{47}" + " " * 30], solution=["47"]) == pytest.approx([0.5])  # past max_len: clamped
    with pytest.raises(ValueError, match="choose from"):
        build_reward_funcs(["format", "speed"])
    with pytest.raises(ValueError, match="format_mode"):
        build_reward_funcs(["format"], format_mode="xml")
    with pytest.raises(ValueError, match="cosine_max_len"):
        build_reward_funcs(["cosine"], cosine_max_len=0)


def test_config_validates_against_registry():
    from openrs_nb.config import load_experiment

    cfg = load_experiment(3, "demo")
    funcs = build_reward_funcs(cfg.reward_funcs, format_mode=cfg.format_mode, cosine_max_len=cfg.cosine_max_len)
    assert [f.__name__ for f in funcs] == ["format_reward", "cosine_reward"]
    with pytest.raises(ValueError, match="unknown reward"):
        load_experiment(3, "demo", reward_funcs=["format", "nope"])
