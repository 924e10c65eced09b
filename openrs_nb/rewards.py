"""The paper's reward functions (Section 2; the authors' code: knoveleng/open-rs @2889c47,
`src/open_r1/rewards.py`), in TRL's reward-function signature.

Every reward takes `completions` — TRL's conversational form `[{"role": "assistant", "content": str}]`
or plain strings — plus dataset columns by name (`solution`, …) and TRL's extras (`prompts`,
`completion_ids`, `trainer_state`), and returns one float per completion. Correctness is decided
by `openrs_nb.grading` (math-verify with a hard time bound), never here.

Two holes of the authors' code are closed: an unparseable gold answer scores 0.0 (theirs 1.0, a free
reward; the cases are counted in `UNPARSEABLE_GOLD` and logged once per batch), and the cosine
reward clamps its length progress to [0, 1] (theirs cycles back up past `max_len`). The free reward
goes to a whole group, so Eq. 3 gives it advantage 0 either way: it changes no gradient, only the
logged reward and accuracy.

Configs name rewards by their key in `REWARDS`; `build_reward_funcs(names, …)` turns the names into
the callables GRPOTrainer wants, each named f"{name}_reward" so TRL logs `rewards/<name>_reward/mean`.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable

from openrs_nb.grading import grade_batch

logger = logging.getLogger(__name__)

RewardFunc = Callable[..., list[float]]

FORMAT_MODES = ("prefilled_think", "strict")
LENGTH_UNITS = ("chars", "tokens")

# The authors' format rule for templates that end the prompt with "<think>\n" (DeepSeek-R1-Distill).
THINK_CLOSE = "\n</think>\n"
# The strict rule for templates that do not pre-fill: reasoning, then the answer, nothing around them.
STRICT_FORMAT_RE = re.compile(r"^<think>.*?</think>\s*<answer>.*?</answer>$", re.DOTALL)
STRICT_TAGS = ("<think>", "</think>", "<answer>", "</answer>")

# Gold answers that could not be parsed, over the life of this process (reward 0.0 each).
UNPARSEABLE_GOLD = Counter()


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------
def completion_text(completion) -> str:
    """The text of one completion: a string, a message dict, or a list of messages (contents joined)."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        content = completion.get("content")
        return content if isinstance(content, str) else ""
    if isinstance(completion, (list, tuple)):
        return "".join(completion_text(m) for m in completion)
    raise TypeError(f"a completion must be a str or chat messages, got {type(completion).__name__}")


def _texts(completions) -> list[str]:
    if completions is None:
        raise ValueError("completions is None; expected a list of completions")
    return [completion_text(c) for c in completions]


def _column(name: str, values, n: int) -> list:
    if values is None:
        raise ValueError(f"the reward needs the dataset column {name!r}, but it was not passed")
    if isinstance(values, (str, int, float)):
        values = [values] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{name!r} has {len(values)} values for {n} completions; they must pair up")
    return values


def _check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {', '.join(map(repr, choices))}")


# --------------------------------------------------------------------------------------------------
# Accuracy
# --------------------------------------------------------------------------------------------------
def _grade_all(texts: list[str], solution: list, reward_name: str, log_metric=None) -> list:
    """GradeResults for a batch; counts and logs unparseable gold answers once per batch.

    Under TRL the count also goes to the training logs as `rewards/<reward_name>/unparseable_gold`.
    """
    def usable(g):
        return g is None or (isinstance(g, (str, int, float)) and not isinstance(g, bool))

    odd = sorted({type(g).__name__ for g in solution if not usable(g)})
    if odd:  # one malformed row must not stop a training run: it is an unusable gold like any other
        logger.warning("%s: gold answers of type %s are not gradable; they count as unparseable", reward_name, odd)
    solution = [g if usable(g) else None for g in solution]
    results = grade_batch(texts, solution, detailed=True, progress=False)
    bad = sum(r.status == "bad_gold" for r in results)
    if callable(log_metric):
        log_metric(f"rewards/{reward_name}/unparseable_gold", float(bad))
    if bad:
        UNPARSEABLE_GOLD[reward_name] += bad
        logger.warning(
            "%s: %d of %d gold answers could not be parsed and score 0.0 (the authors' code gave 1.0); "
            "%d so far in this process",
            reward_name, bad, len(results), UNPARSEABLE_GOLD[reward_name],
        )
    return results


def accuracy_reward(completions, solution=None, log_metric=None, **kwargs) -> list[float]:
    """1.0 when the completion's last \\boxed{} answer equals the gold answer in `solution`, else 0.0.

    An unparseable gold answer scores 0.0 (not the authors' free 1.0) and is counted and logged.
    """
    texts = _texts(completions)
    solution = _column("solution", solution, len(texts))
    return [1.0 if r.correct else 0.0 for r in _grade_all(texts, solution, "accuracy_reward", log_metric)]


def authors_accuracy_reward(completions, solution, **kwargs) -> list[float]:
    """The authors' accuracy reward, reproduced for comparison only (not in REWARDS).

    Gold: math-verify's first LaTeX match of the solution; prediction: boxed first; and 1.0 whenever
    the gold does not parse — the free reward this project closes. Runs math-verify in this process
    with its signal timeouts, so call it from the main thread.
    """
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig, parse, verify

    pred_config = LatexExtractionConfig(
        normalization_config=NormalizationConfig(
            nits=False, malformed_operators=False, basic_latex=True, equations=True, boxed="all", units=True
        ),
        boxed_match_priority=0,
        try_extract_without_anchor=False,
    )
    # their config sets equations=True, which today's latex2sympy2 warns about on every call
    quiet = logging.getLogger("latex2sympy2_extended.math_normalization")
    level, rewards = quiet.level, []
    quiet.setLevel(logging.ERROR)
    try:
        for content, sol in zip(_texts(completions), solution):
            gold_parsed = parse(str(sol) if sol is not None else "", extraction_mode="first_match",
                                extraction_config=[LatexExtractionConfig()])
            if len(gold_parsed) != 0:
                answer_parsed = parse(content, extraction_config=[pred_config], extraction_mode="first_match")
                rewards.append(float(verify(answer_parsed, gold_parsed)))
            else:
                rewards.append(1.0)
    finally:
        quiet.setLevel(level)
    return rewards


# --------------------------------------------------------------------------------------------------
# Format
# --------------------------------------------------------------------------------------------------
def format_ok(text: str, format_mode: str = "prefilled_think") -> bool:
    """Does one completion text follow the format? (see `format_reward`)"""
    if format_mode == "prefilled_think":
        return text.count(THINK_CLOSE) == 1
    stripped = text.strip()
    return bool(STRICT_FORMAT_RE.match(stripped)) and all(stripped.count(t) == 1 for t in STRICT_TAGS)


def format_reward(completions, format_mode: str = "prefilled_think", **kwargs) -> list[float]:
    """1.0 for a well-formatted completion, else 0.0.

    "prefilled_think" (the authors' rule; the chat template already ends the prompt with "<think>\\n"):
    exactly one "\\n</think>\\n" in the completion. "strict" (templates that do not pre-fill): the
    stripped completion is `<think>…</think>` then `<answer>…</answer>`, each tag exactly once.
    """
    _check_choice("format_mode", format_mode, FORMAT_MODES)
    return [1.0 if format_ok(t, format_mode) else 0.0 for t in _texts(completions)]


def tag_count_reward(completions, format_mode: str = "prefilled_think", **kwargs) -> list[float]:
    """Partial format credit: an equal share for each expected tag that appears exactly once.

    Strict mode expects <think>, </think>, <answer>, </answer> (0.25 each); "prefilled_think" leaves out
    <think>, which the prompt already holds (1/3 each for the other three).
    """
    _check_choice("format_mode", format_mode, FORMAT_MODES)
    tags = STRICT_TAGS if format_mode == "strict" else STRICT_TAGS[1:]
    return [sum(t.count(tag) == 1 for tag in tags) / len(tags) for t in _texts(completions)]


# --------------------------------------------------------------------------------------------------
# Cosine (length-scaled correctness)
# --------------------------------------------------------------------------------------------------
def cosine_scaled(
    length: float,
    correct: bool,
    *,
    min_value_wrong: float = 0.0,
    max_value_wrong: float = -0.5,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
    max_len: int = 1000,
    clamp: bool = True,
) -> float:
    """The authors' cosine schedule for one completion of `length` units.

    With p = length / max_len (clamped to [0, 1] unless clamp=False, the authors' cycling curve) and
    c = cos(pπ): correct → min_c + ½(max_c − min_c)(1 + c); wrong → max_w + ½(min_w − max_w)(1 + c).
    """
    progress = length / max_len
    if clamp:
        progress = min(1.0, max(0.0, progress))
    cosine = math.cos(progress * math.pi)
    if correct:
        lo, hi = min_value_correct, max_value_correct
    else:  # short wrong answers get min_value_wrong, long ones max_value_wrong
        lo, hi = max_value_wrong, min_value_wrong
    return lo + 0.5 * (hi - lo) * (1.0 + cosine)


def get_cosine_scaled_reward(
    min_value_wrong: float = 0.0,
    max_value_wrong: float = -0.5,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
    max_len: int = 1000,
    length_unit: str = "chars",
    clamp: bool = True,
) -> RewardFunc:
    """The cosine reward (exp 3): correctness scaled by length — a short correct answer earns the most,
    and with these defaults a long wrong one loses the most.

    Defaults are the values the authors' runs used: `GRPOScriptArguments` in knoveleng/open-rs @2889c47
    `src/open_r1/grpo.py` (cosine_min_value_wrong 0.0, cosine_max_value_wrong -0.5, max_len 1000; exp 3
    passes `--cosine_max_len 3584`, README). Paper §2 says the opposite for wrong answers (longer ones
    penalised less); `min_value_wrong=-1.0, max_value_wrong=-0.5` (the defaults of the function in their
    `rewards.py`, and open-r1's unit test) does that. `length_unit` "chars" (theirs: `len(content)`) or
    "tokens" (TRL's `completion_ids`). Unparseable gold scores 0.0 and is counted (theirs: 1.0).
    """
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len <= 0:
        raise ValueError(f"max_len={max_len!r} must be a positive integer")
    _check_choice("length_unit", length_unit, LENGTH_UNITS)
    params = dict(
        min_value_wrong=min_value_wrong, max_value_wrong=max_value_wrong, min_value_correct=min_value_correct,
        max_value_correct=max_value_correct, max_len=max_len, clamp=clamp,
    )

    def cosine_scaled_reward(completions, solution=None, completion_ids=None, log_metric=None, **kwargs) -> list[float]:
        texts = _texts(completions)
        solution = _column("solution", solution, len(texts))
        if length_unit == "tokens":
            if completion_ids is None:
                raise ValueError("length_unit='tokens' needs completion_ids (TRL passes them); use 'chars'")
            lengths = [len(ids) for ids in _column("completion_ids", completion_ids, len(texts))]
        else:
            lengths = [len(t) for t in texts]
        results = _grade_all(texts, solution, "cosine_reward", log_metric)
        return [
            0.0 if r.status == "bad_gold" else cosine_scaled(n, r.correct, **params)
            for n, r in zip(lengths, results)
        ]

    cosine_scaled_reward.__name__ = "cosine_reward"
    return cosine_scaled_reward


# --------------------------------------------------------------------------------------------------
# Repetition and language
# --------------------------------------------------------------------------------------------------
def get_repetition_penalty_reward(ngram_size: int = 3, max_penalty: float = -1.0) -> RewardFunc:
    """Penalty max_penalty × (share of repeated word n-grams): 0.0 for no repeats, down to max_penalty.

    As in open-r1: words are lower-cased whitespace tokens; texts shorter than one n-gram score 0.0.
    """
    if isinstance(ngram_size, bool) or not isinstance(ngram_size, int) or ngram_size < 1:
        raise ValueError(f"ngram_size={ngram_size!r} must be a positive integer")
    if max_penalty > 0:
        raise ValueError(f"max_penalty={max_penalty!r} must be <= 0 (it is a penalty)")

    def repetition_penalty_reward(completions, **kwargs) -> list[float]:
        rewards = []
        for text in _texts(completions):
            words = text.lower().split()
            if len(words) < ngram_size:
                rewards.append(0.0)
                continue
            ngrams = [tuple(words[i : i + ngram_size]) for i in range(len(words) - ngram_size + 1)]
            rewards.append((1 - len(set(ngrams)) / len(ngrams)) * max_penalty + 0.0)  # + 0.0: no -0.0
        return rewards

    repetition_penalty_reward.__name__ = "repetition_reward"
    return repetition_penalty_reward


@functools.lru_cache(maxsize=65536)
def letter_script(ch: str) -> str | None:
    """Unicode script of a letter, from its name ('LATIN', 'CJK', 'CYRILLIC', …); None for non-letters."""
    if not unicodedata.category(ch).startswith("L"):
        return None
    name = unicodedata.name(ch, "")
    if name.startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL")):
        return "CJK"
    return name.split(" ", 1)[0] or None


def main_script(text: str, default: str = "LATIN") -> str:
    """The script most letters of `text` are written in (`default` when there are none)."""
    counts = Counter(s for s in map(letter_script, text) if s)
    return counts.most_common(1)[0][0] if counts else default


# Scripts `letter_script` reports for notation rather than language (π, 𝑥, ℝ, ℓ, ª): the language
# reward ignores these letters unless they are the prompt's own script.
NOTATION_SCRIPTS = frozenset({"GREEK", "COPTIC", "MATHEMATICAL", "DOUBLE-STRUCK", "SCRIPT", "BLACK-LETTER",
                              "PLANCK", "FEMININE", "MASCULINE"})
_ASCII_LETTERS = re.compile(r"[A-Za-z]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def script_counts(text: str, notation: bool = False) -> Counter:
    """Letters of `text` per script; notation letters (NOTATION_SCRIPTS) only when `notation`."""
    latin = len(_ASCII_LETTERS.findall(text))  # fast path: ASCII letters are all Latin
    counts = Counter({"LATIN": latin} if latin else {})
    counts.update(s for s in map(letter_script, _NON_ASCII.findall(text))
                  if s and (notation or s not in NOTATION_SCRIPTS))
    return counts


def script_share(text: str, script: str) -> float:
    """Share of the letters of `text` written in `script`, notation letters left out (see
    NOTATION_SCRIPTS) unless they are `script` itself; 0.0 when there are no letters."""
    counts = script_counts(text, notation=True)
    total = sum(n for s, n in counts.items() if s == script or s not in NOTATION_SCRIPTS)
    return counts[script] / total if total else 0.0


def _prompt_text(prompt) -> str:
    """The user's part of a prompt (chat messages) or the prompt itself (a string)."""
    if isinstance(prompt, (list, tuple)):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return "\n".join(u for u in users if isinstance(u, str)) or completion_text(prompt)
    return completion_text(prompt)


def language_reward(completions, prompts=None, **kwargs) -> list[float]:
    """Share of the completion's letters that are in the script of the prompt's user message.

    A cheap guard against the language drift the paper reports (Future Directions): an answer that
    slides from English into Chinese loses reward in proportion. Without prompts, Latin is assumed.
    Notation letters (π, θ, 𝑥, ℝ) are left out; a completion without letters scores 0.0.
    """
    texts = _texts(completions)
    if prompts is None:
        scripts = ["LATIN"] * len(texts)
    else:
        scripts = [main_script(_prompt_text(p)) for p in _column("prompts", prompts, len(texts))]
    return [script_share(t, s) for t, s in zip(texts, scripts)]


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------
def _named(func: RewardFunc, name: str, **bound) -> RewardFunc:
    """`func` with options bound, named f"{name}_reward" (TRL logs rewards/<__name__>/mean)."""

    @functools.wraps(func)
    def reward(completions, **kwargs):
        return func(completions, **bound, **kwargs)

    reward.__name__ = reward.__qualname__ = f"{name}_reward"
    return reward


# name -> factory(format_mode, cosine_max_len) -> reward function
REWARDS: dict[str, Callable[..., RewardFunc]] = {
    "format": lambda format_mode="prefilled_think", **_: _named(format_reward, "format", format_mode=format_mode),
    "accuracy": lambda **_: _named(accuracy_reward, "accuracy"),
    "cosine": lambda cosine_max_len=1000, **_: _named(get_cosine_scaled_reward(max_len=cosine_max_len), "cosine"),
    "tag_count": lambda format_mode="prefilled_think", **_: _named(tag_count_reward, "tag_count",
                                                                   format_mode=format_mode),
    "repetition": lambda **_: _named(get_repetition_penalty_reward(), "repetition"),
    "language": lambda **_: _named(language_reward, "language"),
}


def build_reward_funcs(names, *, format_mode: str = "prefilled_think", cosine_max_len: int = 1000) -> list[RewardFunc]:
    """The reward callables for GRPOTrainer, in the order of `names` (keys of REWARDS)."""
    if isinstance(names, str):
        names = [names]
    names = list(names)
    unknown = [n for n in names if n not in REWARDS]
    if unknown or not names:
        raise ValueError(f"unknown reward(s) {unknown or names}; choose from {', '.join(REWARDS)}")
    _check_choice("format_mode", format_mode, FORMAT_MODES)
    if isinstance(cosine_max_len, bool) or not isinstance(cosine_max_len, int) or cosine_max_len <= 0:
        raise ValueError(f"cosine_max_len={cosine_max_len!r} must be a positive integer")
    return [REWARDS[n](format_mode=format_mode, cosine_max_len=cosine_max_len) for n in names]
