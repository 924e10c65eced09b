"""openrs_nb.grading: answer extraction, math-verify equivalence, time bound, safety, real benchmarks."""

from __future__ import annotations

import ast
import json
import os
import threading
import time
from pathlib import Path

import pytest

from openrs_nb import grading
from openrs_nb.grading import GradeResult, extract_answer, grade, grade_batch, grade_detailed

# Slack over `timeout` for noticing the timeout, killing the worker and answering: the grader promises
# a verdict within 1.5 s at timeout 0.5 s even on a shared machine (tens of ms when it is idle).
MARGIN = 1.0


def shared_benchmarks() -> Path:
    env = os.environ.get("OPENRS_SHARED_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return root / "benchmarks"


# --------------------------------------------------------------------------------------------------
# extract_answer
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("so the answer is \\boxed{47}.", "47"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("first \\boxed{3}, then \\boxed{5}", "5"),  # the last box
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\boxed{ {a}^{ {b} } }", "{a}^{ {b} }"),  # nested braces, outer spaces stripped
        ("\\boxed{3} and then \\boxed{\\frac{1", "3"),  # unclosed (truncated) last box is skipped
        ("\\fbox{12}", "12"),
        ("$\\boxed 7$", "7"),
        ("\\boxed{}", ""),
        ("no box here, 47", None),
        ("", None),
        (None, None),
        (47, None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_is_linear_on_many_open_boxes():
    t = time.perf_counter()
    assert extract_answer("\\boxed{" * 20_000) is None  # runs in the caller: must not be quadratic
    assert extract_answer("x" * 1_000_000 + "\\boxed{5}") == "5"
    assert time.perf_counter() - t < 1.0


# --------------------------------------------------------------------------------------------------
# Equivalence (math-verify) on hand-worked pairs
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "prediction, gold, expected",
    [
        ("12 + 35 = 47, so \\boxed{47}", "47", True),
        ("\\boxed{46}", "47", False),
        ("\\boxed{27}", "27.0", True),  # AMC23 stores answers as floats
        ("\\boxed{28}", "27.0", False),
        ("\\boxed{0.5}", "\\frac{1}{2}", True),
        ("\\boxed{\\frac{2}{4}}", "\\frac12", True),
        ("\\boxed{2\\sqrt{3}}", "\\sqrt{12}", True),
        ("\\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
        ("\\boxed{(3, \\pi)}", "\\left( 3, \\frac{\\pi}{2} \\right)", False),
        ("\\boxed{204}", "So the total is $\\boxed{204}$.", True),  # gold as a full solution
        ("\\boxed{3} is wrong; the answer is \\boxed{5}", "5", True),  # last box counts
        ("\\boxed{5} at first, but finally \\boxed{3}", "5", False),
        ("The final answer is $5$. I hope it is correct", "5", True),  # math-verify's anchored fallback
        ("I computed 5 somewhere in the middle", "5", False),  # a stray number is not an answer
        ("\\boxed{x = 5}", "5", True),
    ],
)
def test_grade_hand_worked(prediction, gold, expected):
    assert grade(prediction, gold) is expected


# The paper's metric (lighteval's extractive match as knoveleng/open-rs @2889c47 src/open_r1/evaluate.py
# configures it) against the training reward's rule, on cases worked by hand.
@pytest.mark.parametrize(
    "prediction, gold, rule, paper, reward",
    [
        # no box: the paper's metric reads the last expression, the reward's rule finds no answer
        ("46 + 96 = 142", "142", "paper_expr", True, False),
        ("We get 12. Then 13.", "12", "paper_expr", False, False),  # the last number, 13, is the answer read
        # lighteval's known issue: an unevaluated expression is evaluated, so restating the sum counts
        ("To solve 95 + 69 =", "164", "paper_expr", True, False),
        ("So \\boxed{142}.", "142", "paper_expr", True, True),  # a boxed answer: both
        ("\\boxed{4}, wait, maybe 5", "5", "paper_expr", False, False),  # a box outranks a later bare number
        ("\\boxed{025}", "25", "paper_expr", True, True),  # AIME answers as written
        ("\\boxed{27}", "27.0", "paper_expr", True, True),  # AMC23 stores floats
        # precision: the paper compares numbers to 5 decimals, math-verify's default is 6
        ("\\boxed{3.14159}", "\\boxed{\\pi}", "paper_latex", True, False),
        # MATH-500 / Minerva: the gold is the whole solution; the answer is its last box
        ("The answer is 1/2", "So $x = \\boxed{\\frac{1}{2}}$.", "paper_latex", True, True),
        # OlympiadBench multi-answer row (final_answer ['$69$,$84$']): a set, in any order, all of it
        ("\\boxed{69, 84}", "$69$,$84$", "paper_latex", True, True),
        ("\\boxed{84, 69}", "$69$,$84$", "paper_latex", True, True),
        ("\\boxed{84}", "$69$,$84$", "paper_latex", False, False),
    ],
)
def test_paper_metric_and_reward_rule_hand_worked(prediction, gold, rule, paper, reward):
    assert grade(prediction, gold, timeout=5, rule=rule) is paper
    # the reward's rule gets the gold as the data set's answer field holds it ("69,84", "\\pi")
    reward_gold = {"$69$,$84$": "69,84", "\\boxed{\\pi}": "\\pi"}.get(gold, gold)
    assert grade(prediction, reward_gold, timeout=5) is reward


def test_paper_metric_statuses_and_bad_rule():
    assert grade_detailed("46 + 96 = 142", "142", rule="paper_expr") == GradeResult(True, "correct", "142")
    assert grade_detailed("46 + 96 = 142", "142") == GradeResult(False, "no_answer", None)
    # a gold that math-verify cannot turn into sympy (Minerva's "np.arcsin(10/13)") is compared as a string
    assert grade("\\boxed{np.arcsin(10/13)}", "np.arcsin(10/13)", rule="paper_latex", timeout=5) is True
    assert grade("\\boxed{np.arcsin(5/13)}", "np.arcsin(10/13)", rule="paper_latex", timeout=5) is False
    with pytest.raises(ValueError, match="paper_latex"):
        grade("\\boxed{1}", "1", rule="paper")


def test_default_workers_follow_the_cpu_quota(monkeypatch):
    import openrs_nb.cpu

    monkeypatch.setattr(openrs_nb.cpu, "usable_cpus", lambda: 1)
    assert grading.default_num_workers() == 1
    monkeypatch.setattr(openrs_nb.cpu, "usable_cpus", lambda: 64)
    assert grading.default_num_workers() == grading.MAX_DEFAULT_WORKERS


def test_grade_detailed_statuses():
    assert grade_detailed("\\boxed{47}", "47") == GradeResult(True, "correct", "47")
    assert grade_detailed("\\boxed{46}", "47") == GradeResult(False, "wrong", "46")
    assert grade_detailed("no answer", "47") == GradeResult(False, "no_answer", None)
    assert grade_detailed("\\boxed{47}", None) == GradeResult(False, "bad_gold", "47")
    assert grade_detailed("\\boxed{47}", "\\boxed{}").status == "bad_gold"
    prose = "We add the two numbers and check the result carefully. " * 10  # a solution with no marked answer
    assert grade_detailed("\\boxed{47}", prose + "It is 47.").status == "bad_gold"


# --------------------------------------------------------------------------------------------------
# Malformed inputs: a defined value or a clear error
# --------------------------------------------------------------------------------------------------
def test_malformed_inputs_give_defined_values():
    assert grade(None, "5") is False
    assert grade("", "5") is False
    assert grade("   ", "5") is False
    assert grade("\\boxed{5}", None) is False
    assert grade("\\boxed{5}", "") is False
    assert grade("\\boxed{5}", "  ") is False
    assert grade("no box at all", "5") is False
    assert grade("\\boxed{5}", 5) is True  # numbers are fine as gold
    assert grade("\\boxed{27}", 27.0) is True


@pytest.mark.parametrize("gold", [True, ["5"], {"answer": "5"}, object()])
def test_non_string_gold_raises_type_error(gold):
    with pytest.raises(TypeError, match="gold must be"):
        grade("\\boxed{5}", gold)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(TypeError, match="prediction must be"):
        grade(["\\boxed{5}"], "5")
    with pytest.raises(ValueError, match="timeout"):
        grade("\\boxed{5}", "5", timeout=0)
    with pytest.raises(ValueError, match="timeout"):
        grade("\\boxed{5}", "5", timeout=None)
    with pytest.raises(ValueError, match="pair up"):
        grade_batch(["\\boxed{5}"], ["5", "6"])
    with pytest.raises(ValueError, match="num_workers"):
        grade_batch(["\\boxed{5}"], ["5"], num_workers=0)


# --------------------------------------------------------------------------------------------------
# Hard time bound
# --------------------------------------------------------------------------------------------------
PATHOLOGICAL = {
    "power tower": "\\boxed{10^{10^{10^{10}}}}",
    "100 kB of digits": "\\boxed{" + "7" * 100_000 + "}",
    "deep nesting": "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
    "nested fractions": "\\boxed{" + "\\frac{1}{" * 2000 + "2" + "}" * 2000 + "}",
}


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_completion_is_false_within_timeout(name):
    grading.clear_cache()
    t = time.perf_counter()
    assert grade(PATHOLOGICAL[name], "42", timeout=0.5) is False
    assert time.perf_counter() - t < 0.5 + MARGIN


def test_time_bound_holds_in_worker_thread():
    """math-verify's signal-based timeout fails outside the main thread; ours must not."""
    grading.clear_cache()
    out = {}

    def run():
        t = time.perf_counter()
        out["result"] = grade_detailed(PATHOLOGICAL["power tower"], "42", timeout=0.5)
        out["seconds"] = time.perf_counter() - t
        out["normal"] = grade("\\boxed{\\frac{3}{4}}", "0.75")  # the pool recovers after a kill

    th = threading.Thread(target=run)
    th.start()
    th.join(timeout=30)
    assert out["result"].status == "timeout" and out["result"].correct is False
    assert out["seconds"] < 0.5 + MARGIN
    assert out["normal"] is True


def test_grader_recovers_after_timeout_and_stays_fast():
    grading.clear_cache()
    assert grade_detailed(PATHOLOGICAL["power tower"], "7", timeout=0.5).status == "timeout"
    t = time.perf_counter()
    assert grade("\\boxed{12}", "12.0") is True
    assert time.perf_counter() - t < MARGIN  # the killed worker was replaced (or the other one answered)


def test_batch_mixes_pathological_and_normal_items():
    grading.clear_cache()
    preds = ["\\boxed{1}", PATHOLOGICAL["power tower"], "\\boxed{\\frac{1}{2}}", PATHOLOGICAL["deep nesting"],
             "\\boxed{4}"]
    golds = ["1", "42", "0.5", "42", "5"]
    t = time.perf_counter()
    out = grade_batch(preds, golds, timeout=0.5, num_workers=2, detailed=True)
    elapsed = time.perf_counter() - t
    assert [r.correct for r in out] == [True, False, True, False, False]
    assert out[1].status == "timeout" and out[3].status == "timeout"
    assert elapsed < 2 * 0.5 + 2 * MARGIN  # two slow items, at most one timeout after another per worker


def test_batch_keeps_order_and_dedupes():
    grading.clear_cache()
    preds = [f"\\boxed{{{i % 7}}}" for i in range(60)]
    golds = [str(i % 5) for i in range(60)]
    expected = [i % 7 == i % 5 for i in range(60)]
    assert grade_batch(preds, golds, num_workers=2) == expected
    out = grade_batch(preds, golds, detailed=True)  # second time: from the cache
    assert [r.correct for r in out] == expected
    assert all(isinstance(r, GradeResult) for r in out)
    assert grade_batch([], []) == []


# --------------------------------------------------------------------------------------------------
# Never executes code found in a completion
# --------------------------------------------------------------------------------------------------
def test_code_in_completions_is_never_executed(tmp_path):
    canary = tmp_path / "pwned"
    payloads = [
        f"__import__('os').system('touch {canary}')",
        f"exec(\"open('{canary}', 'w').write('x')\")",
        f"eval(\"__import__('os').system('touch {canary}')\")",
        f"(lambda: __import__('os').system('touch {canary}'))()",
        f"\\text{{__import__('os').system('touch {canary}')}}",
        f"__import__('subprocess').call(['touch', '{canary}'])",
    ]
    texts = []
    for p in payloads:
        texts += [f"\\boxed{{{p}}}", f"Final answer: {p}", f"The answer is ${p}$", p]
    grading.clear_cache()
    for t in texts:
        assert grade(t, "5") is False
        assert grade("\\boxed{5}", t) is False  # as gold, too
    grade_batch(texts, texts)
    assert not canary.exists()


# --------------------------------------------------------------------------------------------------
# Real benchmarks: gold graded against itself is True, a perturbed answer is False
# --------------------------------------------------------------------------------------------------
def benchmark_golds(name: str, rows: list[dict]) -> list[str]:
    if name in ("aime24", "amc23", "math500"):
        return [str(r["answer"]) for r in rows]
    if name == "minerva":
        return [extract_answer(r["solution"]) for r in rows]
    out = []
    for r in rows:  # olympiadbench: a list, or a string holding a Python-style list
        answers = r["final_answer"]
        if isinstance(answers, str):
            answers = ast.literal_eval(answers)
        out.append(", ".join(answers))
    return out


BENCHMARKS = ("aime24", "amc23", "math500", "minerva", "olympiadbench")


@pytest.fixture(scope="module")
def benchmark_rows():
    root = shared_benchmarks()
    if not root.is_dir():
        pytest.skip(f"shared benchmarks not found at {root} (set OPENRS_SHARED_DATA)")
    return {n: [json.loads(line) for line in (root / f"{n}.jsonl").open()] for n in BENCHMARKS}


def test_real_benchmarks_gold_is_graded_correct(benchmark_rows):
    preds, golds, names = [], [], []
    for name in BENCHMARKS:
        for gold in benchmark_golds(name, benchmark_rows[name]):
            assert gold, f"{name}: empty gold"
            preds.append("Putting everything together we get \\boxed{" + gold + "}")
            golds.append(gold)
            names.append(name)
    # MATH-500 gold also as its full solution text (the \boxed{} inside it)
    for row in benchmark_rows["math500"]:
        preds.append("so \\boxed{" + row["answer"] + "}")
        golds.append(row["solution"])
        names.append("math500 (solution)")
    grading.clear_cache()
    out = grade_batch(preds, golds, detailed=True, progress=False)
    for name in dict.fromkeys(names):
        idx = [i for i, n in enumerate(names) if n == name]
        misses = [(golds[i][:80], out[i].status) for i in idx if not out[i].correct]
        print(f"{name}: {len(idx) - len(misses)}/{len(idx)} graded correct; misses: {misses}")
        assert len(misses) <= 0.01 * len(idx), f"{name}: {len(misses)} misses: {misses}"


def test_real_benchmarks_perturbed_answer_is_wrong(benchmark_rows):
    """A sample of each benchmark with the answer changed ("{gold}+1") must grade False.

    A sample, because math-verify spends its time on *wrong* answers (it tries to simplify the
    difference): ~20 per benchmark keeps this test near 10 s on two cores.
    """
    preds, golds, names = [], [], []
    for name in BENCHMARKS:
        rows = benchmark_golds(name, benchmark_rows[name])
        for gold in rows[:: max(1, len(rows) // 20)]:
            preds.append("\\boxed{{" + gold + "}+1}")
            golds.append(gold)
            names.append(name)
    grading.clear_cache()
    out = grade_batch(preds, golds, detailed=True, progress=False)
    wrongly_true = [(names[i], golds[i]) for i, r in enumerate(out) if r.correct]
    assert not wrongly_true, wrongly_true
