"""Curation pipeline (openrs_nb.data): each step on hand-made rows, then on the real sample data."""

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest
from datasets import Dataset, concatenate_datasets, load_from_disk

from openrs_nb import data


# -------------------------------------------------------------------------------------------------
# Helpers
# -------------------------------------------------------------------------------------------------
def rows(*problems, solution="The final answer is $\\boxed{1}$.", answer="1", source="test"):
    return Dataset.from_list([dict(problem=p, solution=solution, answer=answer, source=source, level=1)
                              for p in problems])


def shared_root() -> Path:
    root = data.shared_data_dir()
    if root is None or not (root / "benchmarks").is_dir() or not (root / "train_sample").is_dir():
        pytest.skip("shared reference data not found (set OPENRS_SHARED_DATA or put it at ../shared/data)")
    return root


# -------------------------------------------------------------------------------------------------
# The demo generator (training relies on it: its outputs must not change)
# -------------------------------------------------------------------------------------------------
def test_demo_dataset_is_pinned_and_its_answers_are_right():
    ds = data.make_demo_dataset(5, seed=0)
    assert ds["problem"] == ["What is 6 + 47?", "What is 69 - 13?", "What is 5 \\times 9 + 10?",
                             "Chloe has 23 marbles and buys 27 more. How many marbles does Chloe have now?",
                             "Dev has 7 boxes with 10 books in each box and gives away 5 books. "
                             "How many books are left?"]
    assert ds["answer"] == ["53", "56", "55", "50", "65"]
    assert data.make_demo_dataset(3, seed=0, split="test")["problem"] == [
        "What is 95 + 69?", "What is 21 - 18?", "What is 2 \\times 2 + 18?"]
    # Level 1: the format the training demo's format-priming step relies on, with correct sums.
    for r in data.make_demo_dataset(50, seed=3, levels=(1,)):
        a, b = map(int, re.fullmatch(r"What is (\d+) \+ (\d+)\?", r["problem"]).groups())
        steps, last = r["solution"].rsplit("\n", 1)
        assert steps == f"{a} + {b} = {a + b}." and last == f"The final answer is $\\boxed{{{a + b}}}$."
        assert r["answer"] == str(a + b) and r["level"] == 1


def test_demo_splits_never_share_a_problem_and_are_deterministic():
    train = data.make_demo_dataset(300, seed=1)["problem"]
    test = data.make_demo_dataset(100, seed=1, split="test")["problem"]
    assert not set(train) & set(test)
    assert data.make_demo_dataset(300, seed=1)["problem"] == train
    assert data.make_demo_dataset(300, seed=2)["problem"] != train
    with pytest.raises(ValueError, match="split='dev' is not valid"):
        data.make_demo_dataset(3, split="dev")


def test_demo_pool_noise_is_removed_by_the_step_named_for_it_and_nothing_else():
    pool = data.make_demo_pool(60, seed=4)
    kinds = Counter(s.split("/")[1] for s in pool["source"])
    assert all(kinds[k] >= 1 for k in data.DEMO_NOISE)
    kept, removed = data.filter_boxed(pool, return_removed=True)
    steps = {"boxed": removed}
    kept, steps["quality"] = data.quality_filter(kept)
    kept, steps["dedup"] = data.deduplicate(kept)
    kept, steps["decontaminate"] = data.decontaminate(kept, data.demo_benchmark_problems())
    for step, gone in steps.items():
        expected = {f"demo/{k}" for k, s in data.DEMO_NOISE_STEP.items() if s == step}
        assert set(gone["source"]) == expected, step
    assert all(s.startswith("demo/level") for s in kept["source"])
    assert len(kept) == sum(v for k, v in kinds.items() if k.startswith("level"))


# -------------------------------------------------------------------------------------------------
# Step 1: load (Hub paths mocked: nothing can be downloaded here)
# -------------------------------------------------------------------------------------------------
def test_hub_sources_map_onto_one_schema(monkeypatch):
    import datasets

    tables = {
        "simplescaling/data_ablation_full59K": [dict(question="Find $x$ if $x+1=3$.", solution="So $\\boxed{2}$.",
                                                     cot_type="math", source_type="AI-MO/NuminaMath-CoT/aops_forum",
                                                     metadata="{}", cot=None, thinking_trajectories=["..."],
                                                     attempt="2")],
        "agentica-org/DeepScaleR-Preview-Dataset": [dict(problem="What is $2+2$?", answer="4",
                                                         solution="$2+2=\\boxed{4}$")],
        "knoveleng/open-rs": [dict(problem="P", solution="\\boxed{\\frac{1}{2}}", answer="\\frac{1}{2}",
                                   level="Level 3")],
    }
    calls = []

    def fake_load_dataset(repo, split=None, **kw):
        calls.append((repo, split))
        return Dataset.from_list(tables[repo])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    s1 = data.load_source("s1")
    assert calls[-1] == ("simplescaling/data_ablation_full59K", "train")
    assert s1.column_names == list(data.COLUMNS)
    assert s1[0] == dict(problem="Find $x$ if $x+1=3$.", solution="So $\\boxed{2}$.", answer="2",
                         source="s1/AI-MO/NuminaMath-CoT/aops_forum", level=None)
    ds = data.load_source("deepscaler")
    assert ds[0] == dict(problem="What is $2+2$?", solution="$2+2=\\boxed{4}$", answer="4", source="deepscaler",
                         level=None)
    rs = data.load_source("open-rs")
    assert rs[0]["level"] == 3 and rs[0]["answer"] == "\\frac{1}{2}"


def test_hub_failure_says_what_to_do(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(OSError, match="hf download agentica-org/DeepScaleR-Preview-Dataset"):
        data.load_source("deepscaler")
    with pytest.raises(ValueError, match="not a file and not a Hub id"):
        data.load_source("no such thing")


def test_local_jsonl_without_solution_gets_a_boxed_answer(tmp_path):
    path = tmp_path / "math.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        dict(problem="What is 1+1?", answer="2", difficulty=2.0, type="Algebra"),
        dict(problem="Broken row", answer=None, difficulty=3.0, type="Algebra"),
    ]))
    ds = data.load_source(str(path))
    assert ds[0] == dict(problem="What is 1+1?", solution="The final answer is $\\boxed{2}$.", answer="2",
                         source="math", level=2)
    assert ds[1]["solution"] == "" and ds[1]["answer"] == ""
    assert data.filter_boxed(ds)["problem"] == ["What is 1+1?"]


# -------------------------------------------------------------------------------------------------
# Step 2: math-only
# -------------------------------------------------------------------------------------------------
def test_filter_boxed_keeps_balanced_nested_boxes_only():
    sols = {
        "nested": "So $x = \\boxed{\\frac{1}{\\sqrt{2}}}$.",
        "fbox": "Hence \\fbox{7}.",
        "no box": "The answer is 7.",
        "unclosed": "Thus \\boxed{\\frac{1}{2}",
        "empty": "Thus $\\boxed{}$.",
        "last wins": "First \\boxed{3}, then \\boxed{4}",
    }
    ds = Dataset.from_list([dict(problem=k, solution=v, answer="", source="t", level=1) for k, v in sols.items()])
    kept, removed = data.filter_boxed(ds, return_removed=True)
    assert kept["problem"] == ["nested", "fbox", "last wins"]
    assert dict(zip(removed["problem"], removed["reason"])) == {
        "no box": "no_boxed", "unclosed": "unbalanced_boxed", "empty": "empty_boxed"}
    assert data.filter_boxed(ds)["problem"] == kept["problem"]  # the plain form returns the kept rows


# -------------------------------------------------------------------------------------------------
# Step 3: difficulty filter, with a fake generator (the cache and resume logic, no model needed)
# -------------------------------------------------------------------------------------------------
class FakeModel:
    name_or_path = "fake-filter-model"


def fake_generate(calls, fail_on_call=None):
    """Solves 'What is a + b?' in the first (a mod (n+1)) samples, answers 0 in the others."""
    def generate(model, prompts, *, n=1, **kw):
        calls.append(len(prompts))
        if fail_on_call is not None and len(calls) == fail_on_call:
            raise RuntimeError("simulated crash")
        out = []
        for p in prompts:
            a, b = map(int, re.search(r"What is (\d+) \+ (\d+)\?", p[-1]["content"]).groups())
            solved = a % (n + 1)
            out.append([{"text": f"The final answer is $\\boxed{{{a + b if s < solved else 0}}}$.",
                         "num_tokens": 9, "truncated": False} for s in range(n)])
        return out
    return generate


def test_difficulty_filter_measures_solve_rates_and_drops_easy_problems(monkeypatch):
    import openrs_nb.generation as gen

    calls = []
    monkeypatch.setattr(gen, "generate", fake_generate(calls))
    ds = rows("What is 4 + 1?", "What is 2 + 5?", "What is 1 + 1?", "What is 3 + 3?", "What is 5 + 9?")
    ds = ds.map(lambda r: {"answer": str(sum(map(int, re.findall(r"\d+", r["problem"]))))})
    kept, removed = data.difficulty_filter(ds, FakeModel(), k=4, max_solve_rate=0.5, backend="transformers",
                                           progress=False)
    # a mod 5 of 4, 2, 1, 3, 5 -> 4, 2, 1, 3, 0 solved samples of 4.
    rates = dict(zip([*kept["problem"], *removed["problem"]], [*kept["solve_rate"], *removed["solve_rate"]]))
    assert rates == {"What is 4 + 1?": 1.0, "What is 2 + 5?": 0.5, "What is 1 + 1?": 0.25, "What is 3 + 3?": 0.75,
                     "What is 5 + 9?": 0.0}
    assert sorted(removed["problem"]) == ["What is 3 + 3?", "What is 4 + 1?"]
    assert set(removed["reason"]) == {"too_easy"}
    with pytest.raises(ValueError, match="max_solve_rate"):
        data.difficulty_filter(ds, FakeModel(), max_solve_rate=1.5)


def test_a_crashed_filter_resumes_from_its_cache(monkeypatch, tmp_path):
    import openrs_nb.generation as gen

    cache = tmp_path / "cache.jsonl"
    ds = rows(*[f"What is {a} + 1?" for a in range(1, 7)])
    ds = ds.map(lambda r: {"answer": str(int(re.search(r"\d+", r["problem"]).group()) + 1)})
    calls = []
    monkeypatch.setattr(gen, "generate", fake_generate(calls, fail_on_call=2))
    with pytest.raises(RuntimeError, match="simulated crash"):
        data.difficulty_filter(ds, FakeModel(), k=3, cache_path=cache, chunk_size=2, backend="transformers",
                               progress=False)
    lines = [json.loads(x) for x in cache.read_text().splitlines()]
    assert len(lines) == 2 * 3  # the first chunk (2 problems x 3 samples) survived the crash
    assert {(r["model"], r["sample"]) for r in lines} == {("fake-filter-model", s) for s in range(3)}
    assert {r["problem"] for r in lines} == {data.problem_hash(p) for p in ds["problem"][:2]}

    calls.clear()
    monkeypatch.setattr(gen, "generate", fake_generate(calls))
    kept, removed = data.difficulty_filter(ds, FakeModel(), k=3, cache_path=cache, chunk_size=2,
                                           backend="transformers", progress=False)
    assert calls == [2, 2]  # only the 4 problems that were missing
    assert len(cache.read_text().splitlines()) == 6 * 3
    calls.clear()
    again = data.difficulty_filter(ds, FakeModel(), k=3, cache_path=cache, backend="transformers", progress=False)
    assert calls == [] and again[0]["solve_rate"] == kept["solve_rate"]
    # Other generation settings are a different cache entry, not a stale hit.
    data.difficulty_filter(ds, FakeModel(), k=3, cache_path=cache, max_new_tokens=7, backend="transformers",
                           progress=False)
    assert calls == [6]


@pytest.mark.slow
def test_difficulty_filter_runs_the_demo_model_on_cpu(tmp_path):
    ds = data.make_demo_dataset(2, seed=0, levels=(1,))
    kept, removed = data.difficulty_filter(ds, "demo", k=2, max_new_tokens=4, cache_path=tmp_path / "c.jsonl",
                                           backend="transformers", progress=False)
    assert len(kept) + len(removed) == 2
    assert all(r in (0.0, 0.5, 1.0) for r in [*kept["solve_rate"], *removed["solve_rate"]])
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == 4


# -------------------------------------------------------------------------------------------------
# Step 4: quality
# -------------------------------------------------------------------------------------------------
def test_quality_rules_on_hand_made_rows():
    cases = {
        "(a) What is 3 + 4? (b) What is 5 \\times 6?": "multi_part",
        "Find $x$.\n(i) Compute the sum of the roots.\n(ii) Find their product.": "multi_part",
        "Is 91 prime? Is 97 prime?": "several_questions",
        "Prove that $\\sqrt{2}$ is irrational.": "proof",
        "What is $f(a) + f(b)$ if $f(x) = x$, $a = 1$ and $b = 2$?": None,  # f(a), f(b) are not labels
        "Which is largest? $\\textbf{(A)}\\ 1 \\qquad \\textbf{(B)}\\ 2$": None,  # upper-case answer choices
        # Labelled conditions followed by one question (common in AIME) are one question.
        "Find the largest integer $n$ satisfying:\n(i) $n^2$ is a difference of two consecutive cubes;\n"
        "(ii) $2n + 79$ is a perfect square.": None,
        'Steve asks, "Can you tell me $a$?" Jon says, "Is it $2$?" Find $a$.': None,  # questions in quotes
        "In what year will the census show that the count is below $10\\%$?": None,  # not a proof
    }
    ds = rows(*cases)
    kept, removed = data.quality_filter(ds)
    assert dict(zip(removed["problem"], removed["reason"])) == {p: r for p, r in cases.items() if r}
    assert kept["problem"] == [p for p, r in cases.items() if r is None]
    no_answer = rows("What is 1 + 1?", answer="  ")
    assert data.quality_filter(no_answer)[1]["reason"] == ["missing_answer"]
    with pytest.raises(ValueError, match="unknown quality rule"):
        data.quality_filter(ds, rules=["spelling"])


def test_judge_verdicts_are_parsed_strictly():
    assert data.parse_verdict("VERDICT: GOOD") == "good"
    assert data.parse_verdict("It asks one thing.\n**VERDICT: BAD**.") == "bad"
    assert data.parse_verdict("VERDICT: GOOD\nVERDICT: BAD") is None  # contradicts itself
    assert data.parse_verdict("VERDICT: GOOD\nbecause it is fine") is None  # verdict must be the last line
    assert data.parse_verdict("The verdict: good") is None
    assert data.parse_verdict("VERDICT: MAYBE") is None
    assert data.parse_verdict("") is None and data.parse_verdict(None) is None


def test_judge_filter_drops_bad_and_handles_unparsed_as_told(monkeypatch):
    import openrs_nb.generation as gen

    replies = {"p1": "VERDICT: GOOD", "p2": "VERDICT: BAD", "p3": "I think it is fine."}
    seen = []

    def fake(model, prompts, *, n=1, temperature=None, **kw):
        seen.append(temperature)
        return [[{"text": replies[re.search(r"Problem:\n(p\d)", p[0]["content"]).group(1)], "num_tokens": 3,
                  "truncated": False}] for p in prompts]

    monkeypatch.setattr(gen, "generate", fake)
    ds = rows("p1", "p2", "p3")
    kept, removed = data.judge_filter(ds, FakeModel(), backend="transformers", progress=False)
    assert kept["problem"] == ["p1", "p3"] and kept["judge_verdict"] == ["good", "unparsed"]
    assert removed["problem"] == ["p2"] and removed["reason"] == ["judge_bad"]
    kept, removed = data.judge_filter(ds, FakeModel(), on_unparsed="drop", backend="transformers", progress=False)
    assert kept["problem"] == ["p1"] and removed["reason"] == ["judge_bad", "judge_unparsed"]
    assert set(seen) == {0.0}  # greedy
    with pytest.raises(ValueError, match="on_unparsed"):
        data.judge_filter(ds, FakeModel(), on_unparsed="maybe")


# -------------------------------------------------------------------------------------------------
# Step 5: dedup and decontamination
# -------------------------------------------------------------------------------------------------
def test_deduplicate_exact_and_normalised_but_not_different_operators():
    ds = rows("What is $12 + 7$?", "What is $12 + 7$?", "what  is $12+7$ ?", "What is $12 - 7$?",
              "What is $1{,}000 + 1$?", "What is $1000+1$?")
    kept, removed = data.deduplicate(ds)
    assert kept["problem"] == ["What is $12 + 7$?", "What is $12 - 7$?", "What is $1{,}000 + 1$?"]
    assert removed["reason"] == ["exact_duplicate", "near_duplicate", "near_duplicate"]
    assert removed["duplicate_of"] == ["What is $12 + 7$?", "What is $12 + 7$?", "What is $1{,}000 + 1$?"]


BOILER = ", where $m$ and $n$ are relatively prime positive integers. Find $m+n$."
BENCH = [
    "Let $x$ and $y$ be real numbers such that $x^2 + y^2 = 1$ and $x + y = \\frac{7}{5}$. The value of $xy$ "
    "can be written as $\\frac{m}{n}$" + BOILER,
    "A fair coin is tossed $10$ times. The probability that heads never occur on consecutive tosses is "
    "$\\frac{m}{n}$" + BOILER,
    "Find the number of ordered pairs $(a,b)$ of positive integers with $a + b = 1000$ such that neither "
    "$a$ nor $b$ has a zero digit.",
    "What is $2+3$?",
]
ONLY_BOILERPLATE = [
    "A bag holds $4$ red and $6$ blue marbles. Two marbles are drawn at random without replacement. The "
    "probability that both are red is $\\frac{m}{n}$" + BOILER,
    "The sum of the squares of the two roots of $x^2 - 5x + 3 = 0$ can be written as $\\frac{m}{n}$" + BOILER,
]


def test_decontaminate_flags_planted_copies_with_formatting_edits():
    b0 = BENCH[0]
    planted = [
        b0,  # verbatim
        "  " + b0.replace(" ", "  ") + "\n",  # doubled spaces, surrounding whitespace
        b0.replace("\\frac{7}{5}$.", "\\frac{7}{5}.$").replace("$\\frac{m}{n}$,", "$\\frac{m}{n},$"),  # $x$, -> $x,$
        b0.replace("x^2 + y^2 = 1", "x^2\\,+\\,y^2\\;=\\;1").replace("\\frac", "\\dfrac"),  # LaTeX spacing
        "Solve this: " + BENCH[2] + " Show your work.",  # embedded in a longer text
        "What is $2 + 3$ ?",  # a short problem: matched whole
    ]
    ds = rows(*ONLY_BOILERPLATE, *planted, "What is $2-3$?")
    kept, removed = data.decontaminate(ds, BENCH, benchmark_names=["b0", "b1", "b2", "b3"])
    assert removed["problem"] == planted
    assert removed["benchmark"] == ["b0", "b0", "b0", "b0", "b2", "b3"]
    assert removed["benchmark_problem"][0] == b0 and all(o == 1.0 for o in removed["overlap"])
    assert kept["problem"] == [*ONLY_BOILERPLATE, "What is $2-3$?"]


def test_naive_ngram_matching_flags_boilerplate_and_the_default_does_not():
    ds = rows(*ONLY_BOILERPLATE)
    naive = data.decontaminate(ds, BENCH, min_overlap=0, benchmark_df=None, train_df=None)[1]
    assert naive["problem"] == ONLY_BOILERPLATE  # each shares a 13-gram of the m/n boilerplate
    assert len(data.decontaminate(ds, BENCH)[1]) == 0
    # Without the boilerplate discount, the overlap ratio alone also keeps them: they cover a small part.
    found = data.overlaps(ONLY_BOILERPLATE, BENCH)
    assert all(o.item in (0, 1) and 0 < o.raw_overlap < 0.5 for o in found)
    # The phrase recurs in two benchmark problems, so its n-grams are boilerplate: shared, but discounted.
    common = data.boilerplate_ngrams(BENCH, benchmark_df=2, train_df=None)
    assert "where m and n are relatively prime positive integers find m + n" in " ".join(sorted(common))
    for o in data.overlaps(ONLY_BOILERPLATE, BENCH, boilerplate=common):
        assert o.shared_boilerplate >= 1 and o.overlap < 0.5 and not data.is_contaminated(o)


def test_text_tokens_ignore_formatting_but_keep_operators():
    assert (data.text_tokens("Find $x,$ if  $x\\,=\\,\\dfrac{1}{2}$.")
            == data.text_tokens("find $x$, if $x = \\frac{1}{2}.$"))
    assert data.text_tokens("$1 + 2 + \\cdots + 9$") == data.text_tokens("$1+2+\\dots+9$") == \
        ["1", "+", "2", "+", "dots", "+", "9"]
    assert data.text_tokens("12 + 7") != data.text_tokens("12 - 7")
    assert data.ngrams(["a", "b"], 13) == {"a b"} and len(data.ngrams(list("abcdefghijklmn"), 13)) == 2


# -------------------------------------------------------------------------------------------------
# Steps 6 and 7: mix and save
# -------------------------------------------------------------------------------------------------
def test_mix_is_seeded_sized_and_skips_problems_drawn_before():
    a = data.make_demo_dataset(30, seed=1)
    b = concatenate_datasets([a.select(range(10)), data.make_demo_dataset(30, seed=2)])  # 10 shared with a
    sizes = {"a": 25, "b": 20}
    m1 = data.mix({"a": a, "b": b}, sizes, seed=7)
    assert len(m1) == 45 and Counter(m1["subset"]) == {"a": 25, "b": 20}
    assert len({data.normalize_text(p) for p in m1["problem"]}) == 45
    assert m1["problem"] == data.mix({"a": a, "b": b}, sizes, seed=7)["problem"]
    assert m1["problem"] != data.mix({"a": a, "b": b}, sizes, seed=8)["problem"]
    assert m1.column_names == [*data.COLUMNS, "subset"]
    with pytest.raises(ValueError, match="has only 30 usable rows"):
        data.mix({"a": a}, {"a": 31}, seed=0)
    with pytest.raises(ValueError, match="sources has only"):
        data.mix({"a": a}, {"c": 1}, seed=0)
    assert data.scale_mix(data.PAPER_MIX, {"open-s1": 30, "open-deepscaler": 12, "deepscaler-easy": 5}) == \
        {"open-s1": 12, "open-deepscaler": 12, "deepscaler-easy": 4}
    assert data.scale_mix(data.PAPER_MIX, {"open-s1": 30, "open-deepscaler": 12, "deepscaler-easy": 0}) == \
        {"open-s1": 12, "open-deepscaler": 12, "deepscaler-easy": 0}
    assert Counter(data.mix({"a": a, "b": b}, {"a": 3, "b": 0}, seed=0)["subset"]) == {"a": 3}


def test_save_curated_writes_a_loadable_folder_with_a_card(tmp_path):
    from openrs_nb.models import load_tokenizer

    ds = data.mix({"x": data.make_demo_dataset(6, seed=0)}, {"x": 6}, seed=0)
    ds = concatenate_datasets([ds, Dataset.from_list([dict(problem="word " * 400, solution="\\boxed{1}", answer="1",
                                                           source="long", level=1, subset="x")]).cast(ds.features)])
    steps = {"demo": [data.StepReport("loaded", 10, 10), data.StepReport("boxed", 10, 7, {"no_boxed": 3})]}
    out = data.save_curated(ds, tmp_path / "data", card=dict(seed=0, steps=steps, sources={"x": "demo"}),
                            system_prompt="Think.", tokenizer=load_tokenizer("demo"), max_prompt_length=64)
    back = load_from_disk(str(out))
    assert len(back) == 6 and "word" not in " ".join(back["problem"])  # the 400-word prompt was dropped
    assert back[0]["prompt"][0] == {"role": "system", "content": "Think."}
    card = (out / "README.md").read_text()
    assert "| boxed | 10 | 7 | no_boxed: 3 |" in card and "| rows | 6 |" in card and "| seed | 0 |" in card
    assert json.loads((out / "curation.json").read_text())["steps"]["demo"][1]["removed"] == {"no_boxed": 3}


# -------------------------------------------------------------------------------------------------
# Real data: ../shared/data (skipped when absent)
# -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real():
    root = shared_root()
    aime = data.load_source(str(root / "train_sample" / "deepscaler_aime.jsonl"))
    math = data.load_source(str(root / "train_sample" / "deepscaler_math.jsonl"))
    return dict(aime=aime, math=math, bench=data.benchmark_problems(root / "benchmarks"))


def test_real_boxed_filter_and_rules(real):
    kept, removed = data.filter_boxed(real["aime"], return_removed=True)
    assert len(kept) == 973 and removed["reason"] == ["no_boxed", "no_boxed"]
    assert all("boxed" not in s for s in removed["solution"])
    # math.json has answers but no solutions: solutions are built from them, except for 2 null and 2 empty ones.
    assert sum(a == "" for a in real["math"]["answer"]) == 4
    assert all(s == f"The final answer is $\\boxed{{{a}}}$." for s, a in zip(real["math"]["solution"][:50],
                                                                          real["math"]["answer"][:50]))
    _, q_removed = data.quality_filter(concatenate_datasets([real["aime"], real["math"]]))
    # The rules are strict on contest text: besides the 4 rows without an answer, one hit in 8,449 rows
    # (a question restated as "That is, in how many ways …?").
    assert Counter(q_removed["reason"]) == {"missing_answer": 4, "several_questions": 1}


def test_real_dedup_finds_near_duplicates(real):
    kept, removed = data.deduplicate(real["math"])
    assert len(removed) >= 5 and set(removed["reason"]) == {"near_duplicate"}
    for p, d in zip(removed["problem"], removed["duplicate_of"]):
        assert p != d and data.normalize_text(p) == data.normalize_text(d)


def test_real_decontamination_tells_boilerplate_from_copies(real):
    aime, bench = real["aime"], real["bench"]
    naive = data.decontaminate(aime, bench["aime24"], min_overlap=0, benchmark_df=None, train_df=None)[1]
    assert 150 <= len(naive) <= 200  # measured 180 (about 160 with words only, no operator tokens)
    assert sum("relatively prime positive integers" in p for p in naive["problem"]) >= 40
    assert len(data.decontaminate(aime, bench["aime24"])[1]) == 0

    names = [n for n, v in bench.items() for _ in v]
    probs = [p for v in bench.values() for p in v]
    both = concatenate_datasets([aime, real["math"]])
    removed = data.decontaminate(both, probs, benchmark_names=names)[1]
    copies = [(p, b) for p, b, o in zip(removed["problem"], removed["benchmark"], removed["overlap"]) if o == 1.0]
    # Seven rows are benchmark problems after normalisation (the raw strings differ: "$,"/",$", \cdots/\dots, …).
    assert len(copies) == 7 and Counter(b for _, b in copies) == {"math500": 6, "olympiadbench": 1}
    assert any(p.startswith("Let $f(x)=|x-p|+|x-15|+|x-p-15|$") for p, _ in copies)
    assert 7 <= len(removed) <= 25  # measured 18: the copies plus same-setup siblings


def test_real_planted_benchmark_problems_are_all_caught(real):
    aime, bench = real["aime"], real["bench"]
    rng = random.Random(0)
    planted = []
    for name, probs in bench.items():
        for p in (probs if name == "aime24" else rng.sample(probs, 10)):
            edited = p.replace("$,", ",$").replace("$.", ".$").replace(" = ", " \\,=\\, ").replace(" ", "  ")
            planted += [p, edited, data.perturb_text(p, seed=len(planted))]
    names = [n for n, v in bench.items() for _ in v]
    probs = [p for v in bench.values() for p in v]
    base = set(data.decontaminate(aime, probs)[1]["problem"])
    ds = concatenate_datasets([aime, rows(*planted, source="planted")])
    kept, removed = data.decontaminate(ds, probs, benchmark_names=names)
    caught = [p for p, s in zip(removed["problem"], removed["source"]) if s == "planted"]
    assert len(caught) == len(planted) == 3 * (30 + 40)  # recall 1.0
    assert {p for p, s in zip(removed["problem"], removed["source"]) if s != "planted"} == base
