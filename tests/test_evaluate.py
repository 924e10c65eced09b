"""openrs_nb.evaluate: benchmark loaders, statistics (hand-computed values), the resumable cache,
data-parallel sharding, and the record format of both generation backends.

Generation runs on a tiny random Llama that shares the demo tokenizer (fast to load and sample);
the embedded model itself is exercised by notebooks/05_evaluate.ipynb.
"""

import json
import math
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from openrs_nb import evaluate as ev
from openrs_nb import models
from openrs_nb.cpu import has_fast_bf16

SHARED = Path(os.environ.get("OPENRS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
BENCH_DIR = SHARED / "benchmarks"
needs_data = pytest.mark.skipif(not BENCH_DIR.is_dir(), reason=f"shared benchmark data not found at {BENCH_DIR}")

SMALL = dict(n_problems=3, n_samples=2, max_new_tokens=4, progress=False)


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A training output dir with checkpoint-1 and checkpoint-2 of a tiny random Llama (demo tokenizer)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from openrs_nb.models import load_tokenizer

    tok = load_tokenizer("demo")
    run = tmp_path_factory.mktemp("fake_run")
    for step in (1, 2):
        torch.manual_seed(step)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                          tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        LlamaForCausalLM(cfg).save_pretrained(run / f"checkpoint-{step}")
        tok.save_pretrained(run / f"checkpoint-{step}")
    (run / "run.json").write_text(json.dumps({"exp": 3, "profile": "demo", "model_name_or_path": "demo"}))
    return run


def count_generated(monkeypatch):
    """Wrap generation.generate to count the completions it produces."""
    import openrs_nb.generation as generation

    counter = {"completions": 0, "calls": 0}
    real = generation.generate

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        counter["calls"] += 1
        counter["completions"] += sum(len(o) for o in out)
        return out

    monkeypatch.setattr(generation, "generate", counting)
    return counter


def rec(pid, j, correct, model="m", step=None, bench="b", tokens=10, truncated=False):
    return {"model": model, "step": step, "benchmark": bench, "problem_id": pid, "sample_index": j,
            "completion": "x", "num_tokens": tokens, "truncated": truncated, "correct": correct, "gold": "1",
            "prediction": None}


# ------------------------------------------------------------------------------------------------ benchmarks
@needs_data
def test_local_benchmarks_have_the_paper_counts_and_unique_ids():
    for name, size in (("aime24", 30), ("amc23", 40), ("math500", 500), ("minerva", 272), ("olympiadbench", 675)):
        items = ev.load_benchmark(name, BENCH_DIR)
        assert len(items) == size == ev.BENCHMARKS[name].size
        assert len({it["id"] for it in items}) == size
        assert all(it["problem"] and it["gold"] for it in items)


@needs_data
def test_gold_extraction_for_each_local_schema():
    aime = ev.load_benchmark("aime24", BENCH_DIR)
    assert aime[0]["gold"] == "204" and aime[0]["id"] == "60"
    assert aime[7]["gold"] == "025"  # kept as written; math-verify compares it as 25
    amc = ev.load_benchmark("amc23", BENCH_DIR / "amc23.jsonl")  # a file path works too
    assert [it["gold"] for it in amc[:4]] == ["27", "36", "45", "3159"]  # stored as floats 27.0, ...
    rows = [json.loads(line) for line in open(BENCH_DIR / "math500.jsonl")]
    math500 = ev.load_benchmark("math500", BENCH_DIR)
    assert [it["gold"] for it in math500] == [r["answer"] for r in rows]  # solution's \boxed{} == answer field
    assert math500[0]["gold"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    minerva = ev.load_benchmark("minerva", BENCH_DIR)
    assert [it["gold"] for it in minerva[:3]] == ["1.6", "4.5e33", "41.8"]  # last \boxed{} of the solution
    olymp = {it["id"]: it for it in ev.load_benchmark("olympiadbench", BENCH_DIR)}
    assert olymp["1606"]["gold"] == "2"  # final_answer ['2']
    multi = [json.loads(line) for line in open(BENCH_DIR / "olympiadbench.jsonl")]
    row = next(r for r in multi if r["final_answer"] == ["$69$,$84$"])
    assert olymp[str(row["id"])]["gold"] == "69,84"


def test_gold_answer_normalisation():
    assert ev.gold_answer(27.0) == "27"
    assert ev.gold_answer("27.0") == "27"
    assert ev.gold_answer(2.5) == "2.5"
    assert ev.gold_answer("025") == "025"
    assert ev.gold_answer("['2']") == "2"  # OlympiadBench on the Hub: a list in a string
    assert ev.gold_answer("['$(1,2)$', '$3$']") == "(1,2), 3"
    assert ev.gold_answer(["$\\frac{1}{2}$"]) == "\\frac{1}{2}"
    # a list in a string, with backslashes escaped (Python's repr) or raw: \f must not become a form feed
    assert ev.gold_answer(str(["$\\frac{1}{2}$", "x"])) == "\\frac{1}{2}, x"
    assert ev.gold_answer("['$\\frac{1}{2}$', 'x']") == "\\frac{1}{2}, x"
    assert ev.gold_answer("[not a list") == "[not a list"
    assert ev.gold_answer("So $x=1$ and \\boxed{1} then \\boxed{\\frac{a}{b}}.", from_solution=True) == "\\frac{a}{b}"
    with pytest.raises(ValueError, match="boxed"):
        ev.gold_answer("no box here", from_solution=True)


def test_hub_schemas_are_read_like_the_paper(monkeypatch):
    import datasets

    hub = {
        ("knoveleng/OlympiadBench", "train"): [{"question": "Q1", "answer": "['$\\frac{1}{2}$']"},
                                               {"question": "Q2", "answer": "['3']"}],
        ("HuggingFaceH4/MATH-500", "test"): [{"problem": "P", "solution": "so \\boxed{7}", "answer": "7",
                                              "unique_id": "test/x/1.json"}],
    }
    seen = []

    def fake_load_dataset(name, split):
        seen.append((name, split))
        return hub[(name, split)]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.warns(UserWarning, match="675"):
        olymp = ev.load_benchmark("olympiadbench")
    assert olymp == [{"id": "0", "problem": "Q1", "gold": "\\frac{1}{2}", "gold_raw": "$\\frac{1}{2}$"},
                     {"id": "1", "problem": "Q2", "gold": "3", "gold_raw": "3"}]
    with pytest.warns(UserWarning):
        assert ev.load_benchmark("math500") == [{"id": "test/x/1.json", "problem": "P", "gold": "7",
                                                 "gold_raw": "so \\boxed{7}"}]
    assert seen == [("knoveleng/OlympiadBench", "train"), ("HuggingFaceH4/MATH-500", "test")]

    def offline(name, split):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(OSError, match="benchmark_dir"):
        ev.load_benchmark("aime24")


def test_demo_benchmark_and_bad_names():
    items = ev.load_benchmark("demo", limit=5)
    assert len({it["id"] for it in items}) == 5
    assert items == ev.load_benchmark("demo", limit=8)[:5]  # ids stay valid when the set grows
    assert all(it["gold"].lstrip("-").isdigit() for it in items)
    easy = ev.load_benchmark("demo", limit=5, levels=[1])
    assert all(it["problem"].startswith("What is") and " + " in it["problem"] for it in easy)
    assert int(easy[0]["gold"]) == sum(int(x) for x in easy[0]["problem"][8:-1].split(" + "))
    ids = {}  # an id names a problem text, whatever the levels or limit: cached keys never mix problems
    for it in easy + items:
        assert ids.setdefault(it["problem"], it["id"]) == it["id"]
    assert len(set(ids.values())) == len(ids) > 5
    with pytest.raises(ValueError, match="aime24"):
        ev.load_benchmark("aime25")
    with pytest.raises(ValueError, match="limit"):
        ev.load_benchmark("demo", limit=0)


def test_prompt_is_the_papers_user_turn_without_system_prompt():
    (msg,) = ev.build_prompt("What is 1+1?")
    assert msg["role"] == "user"
    assert "Therefore, the final answer is: $\\boxed{ANSWER}$. I hope it is correct" in msg["content"]
    assert msg["content"].endswith("Think step by step before answering.\n\nWhat is 1+1?")
    sys_msg, _ = ev.build_prompt("p", system_prompt="Be brief.")
    assert sys_msg == {"role": "system", "content": "Be brief."}


# ------------------------------------------------------------------------------------------------ models
def test_resolve_models(tiny_run, tmp_path):
    label = ev._path_label(tiny_run)
    assert ev.resolve_models("demo") == [ev.ModelSpec("demo", None, "demo")]
    assert ev.resolve_models("knoveleng/Open-RS3") == [ev.ModelSpec("knoveleng/Open-RS3", None, "knoveleng/Open-RS3")]
    run = ev.resolve_models(str(tiny_run))
    assert [(m.label, m.step) for m in run] == [(label, 1), (label, 2)]
    assert [m.step for m in ev.resolve_models(tiny_run, steps=[2])] == [2]
    with pytest.raises(ValueError, match="step"):
        ev.resolve_models(tiny_run, steps=[50])
    # a checkpoint path is the same (label, step) as that checkpoint of the run: they share cache entries
    assert ev.resolve_models(tiny_run / "checkpoint-2") == [run[1]]
    assert [m.label for m in ev.resolve_models(["demo", str(tiny_run)])] == ["demo", label, label]
    with pytest.raises(FileNotFoundError):
        ev.resolve_models(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="checkpoint"):
        ev.resolve_models(tmp_path / "empty")
    with pytest.raises(ValueError, match="twice"):
        ev.resolve_models(["demo", "demo"])


# ------------------------------------------------------------------------------------------------ statistics
def test_pass_at_k_matches_the_binomial_formula():
    assert ev.pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert ev.pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert ev.pass_at_k(5, 2, 3) == pytest.approx(0.9)  # 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert ev.pass_at_k(5, 2, 4) == 1.0  # fewer than k wrong samples: some k-subset must hold a right one
    assert ev.pass_at_k(5, 0, 5) == 0.0
    assert ev.pass_at_k(200, 1, 100) == pytest.approx(0.5)  # C(199,100)/C(200,100) = 100/200
    for n, c, k in [(16, 3, 4), (64, 10, 8), (7, 6, 1)]:
        assert ev.pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))
    with pytest.raises(ValueError):
        ev.pass_at_k(4, 5, 1)


def test_standard_error_by_hand():
    assert ev.standard_error([1, 0, 0.5, 0.5]) == pytest.approx(math.sqrt(1 / 6) / 2)  # s² = 0.5/3
    # one sample on 30 problems, 9 right: sqrt(p(1-p)/(N-1)) = 8.5 points, the noise of an AIME24 score
    assert ev.standard_error([1] * 9 + [0] * 21) == pytest.approx(math.sqrt(0.3 * 0.7 / 29))
    assert ev.standard_error([0.5]) is None
    assert ev.one_sample_se(0.3, 30) == pytest.approx(ev.standard_error([1] * 9 + [0] * 21))
    assert ev.one_sample_se(14 / 30, 30) == pytest.approx(ev.standard_error([1] * 14 + [0] * 16))


def test_variance_components_by_hand():
    assert ev.variance_components([2, 2], [2, 0]) == (0.5, 0.0)  # p̂ = 1, 0: all the spread is between problems
    assert ev.variance_components([2, 2], [1, 1]) == (0.0, 0.5)  # p̂ = .5, .5: all of it is sampling noise
    n, c = [4, 4, 4], [4, 2, 1]  # p̂ = 1, .5, .25; w = 0, 4/12, 3/12
    between, within = ev.variance_components(n, c)
    assert within == pytest.approx((4 / 12 + 3 / 12) / 3)
    assert between == pytest.approx(np.var([1, 0.5, 0.25], ddof=1) - within / 4)
    # at k = n the predicted SE is the measured one
    assert math.sqrt((between + within / 4) / 3) == pytest.approx(ev.standard_error([1, 0.5, 0.25]))
    with pytest.raises(ValueError):
        ev.variance_components([1, 2], [1, 1])


def test_bootstrap_interval():
    assert ev.bootstrap_ci([0.25] * 10) == (0.25, 0.25)
    assert ev.bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)  # resampled means 0, .5, 1 with prob 1/4, 1/2, 1/4
    x = [1.0 if i % 4 == 0 else 0.0 for i in range(400)]  # p = 0.25
    lo, hi = ev.bootstrap_ci(x, n_resamples=4000, seed=1)
    half = 1.96 * math.sqrt(0.25 * 0.75 / 400)
    assert lo == pytest.approx(0.25 - half, abs=0.01) and hi == pytest.approx(0.25 + half, abs=0.01)
    assert ev.bootstrap_ci(x, seed=3) == ev.bootstrap_ci(x, seed=3)
    assert ev.bootstrap_ci(x, seed=3) != ev.bootstrap_ci(x, seed=4)


def test_summarize_by_hand():
    records = [rec("a", 0, True, tokens=10), rec("a", 1, False, tokens=20, truncated=True),
               rec("b", 0, True, tokens=30), rec("b", 1, True, tokens=40),
               rec("c", 0, False, tokens=50), rec("c", 1, False, tokens=60, truncated=True)]
    row = ev.summarize(records, seed=0)
    assert list(row) == ["model", "step", "benchmark", "n_problems", "n_samples", "pass@1", "se", "ci_low",
                         "ci_high", "pass@k", "mean_length", "truncation_rate"]
    assert (row["model"], row["step"], row["benchmark"], row["n_problems"], row["n_samples"]) == ("m", None, "b", 3, 2)
    assert row["pass@1"] == pytest.approx(0.5)  # per problem 1/2, 1, 0
    assert row["se"] == pytest.approx(0.5 / math.sqrt(3))  # s = 0.5
    assert row["pass@k"] == {"1": pytest.approx(0.5), "2": pytest.approx(2 / 3)}  # a and b have a right sample
    assert row["ci_low"] <= row["pass@1"] <= row["ci_high"]
    assert row["mean_length"] == 35 and row["truncation_rate"] == pytest.approx(1 / 3)
    single = ev.summarize_records(records, n_samples=1)[0]  # the paper's protocol: sample 0 only
    assert single["pass@1"] == pytest.approx(2 / 3) and single["n_samples"] == 1 and single["pass@k"].keys() == {"1"}
    assert ev.default_ks(8) == [1, 2, 4, 8] and ev.default_ks(6) == [1, 2, 4, 6]


def test_average_over_benchmarks_like_table1():
    results = [{"model": "m", "step": None, "benchmark": "x", "pass@1": 0.2, "se": 0.03},
               {"model": "m", "step": None, "benchmark": "y", "pass@1": 0.4, "se": 0.04},
               {"model": "n", "step": 5, "benchmark": "x", "pass@1": 0.9, "se": 0.01}]
    (avg,) = ev.average_over_benchmarks(results)  # n lacks y: no average for it
    assert avg["model"] == "m" and avg["pass@1"] == pytest.approx(0.3) and avg["se"] == pytest.approx(0.025)


# ------------------------------------------------------------------------------------------------ cache
def test_read_records_drops_and_repairs_a_truncated_last_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(rec("a", 0, True)) + "\n" + json.dumps(rec("a", 1, False))[:25])
    with pytest.warns(RuntimeWarning, match="line 2, an incomplete last line"):
        assert len(ev.read_records(path)) == 1
    assert len(path.read_text().splitlines()) == 2  # reading alone changes nothing
    with pytest.warns(RuntimeWarning):
        ev.read_records(path, repair=True)
    ev.append_records(path, [rec("b", 0, True)])
    assert [r["problem_id"] for r in ev.read_records(path)] == ["a", "b"]

    path.write_text(json.dumps(rec("a", 0, True)))  # complete record, newline lost
    ev.read_records(path, repair=True)
    ev.append_records(path, [rec("b", 0, True)])
    assert len(ev.read_records(path)) == 2

    path.write_text(json.dumps(rec("a", 0, True)) + "\n{broken\n" + json.dumps(rec("a", 0, True)) + "\n")
    with pytest.raises(ValueError, match=f"{path}: line 2 .* corrupt"):
        ev.read_records(path)


def test_shard_work_and_merge_parts(tmp_path):
    shards = ev.shard_work(list(range(7)), 3)
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert ev.shard_work([1, 2], 4) == [[1], [2]]
    with pytest.raises(ValueError):
        ev.shard_work([1], 0)

    ev.append_records(tmp_path / ev.COMPLETIONS_FILE, [rec("a", 0, True), rec("b", 0, True)])
    (tmp_path / ev.PARTS_DIR).mkdir()
    ev.append_records(tmp_path / ev.PARTS_DIR / "m-0.jsonl", [rec("b", 0, True), rec("c", 0, False)])
    part1 = tmp_path / ev.PARTS_DIR / "m-1.jsonl"
    part1.write_text(json.dumps(rec("d", 0, True)) + "\n" + json.dumps(rec("e", 0, True))[:20])  # crashed worker
    with pytest.warns(RuntimeWarning):
        assert ev.merge_parts(tmp_path) == 2
    assert [r["problem_id"] for r in ev.read_records(tmp_path / ev.COMPLETIONS_FILE)] == ["a", "b", "c", "d"]
    assert not list((tmp_path / ev.PARTS_DIR).glob("*.jsonl"))
    assert ev.merge_parts(tmp_path) == 0


# ------------------------------------------------------------------------------------------------ evaluate
@pytest.mark.slow
def test_evaluate_writes_the_contract_and_resumes_after_a_crash(tiny_run, tmp_path, monkeypatch):
    eval_dir = tmp_path / "eval"
    counter = count_generated(monkeypatch)
    rows = ev.evaluate(tiny_run / "checkpoint-2", "demo", eval_dir=eval_dir, **SMALL)
    assert counter["completions"] == 6
    records = ev.read_records(eval_dir / ev.COMPLETIONS_FILE)
    assert len(records) == 6 and all(list(r) == list(ev.RECORD_KEYS) for r in records)
    ids = [it["id"] for it in ev.load_benchmark("demo", limit=3)]
    assert {(r["problem_id"], r["sample_index"]) for r in records} == {(i, j) for i in ids for j in (0, 1)}
    assert all(r["step"] == 2 and isinstance(r["correct"], bool) and r["num_tokens"] <= 4 for r in records)
    assert json.loads((eval_dir / ev.RESULTS_FILE).read_text()) == rows
    (row,) = rows
    assert (row["step"], row["benchmark"], row["n_problems"], row["n_samples"]) == (2, "demo", 3, 2)
    manual = np.mean([np.mean([r["correct"] for r in records if r["problem_id"] == p]) for p in ids])
    assert row["pass@1"] == pytest.approx(manual)

    # crash: the last three records never made it, the one being written is cut in half
    lines = (eval_dir / ev.COMPLETIONS_FILE).read_text().splitlines(keepends=True)
    (eval_dir / ev.COMPLETIONS_FILE).write_text("".join(lines[:3]) + lines[3][:30])
    counter["completions"] = 0
    with pytest.warns(RuntimeWarning, match="incomplete last line"):
        ev.evaluate(tiny_run / "checkpoint-2", "demo", eval_dir=eval_dir, **SMALL)
    assert counter["completions"] == 3  # only what was lost
    after = ev.read_records(eval_dir / ev.COMPLETIONS_FILE)
    assert sorted(ev.record_key(r) for r in after) == sorted(ev.record_key(r) for r in records)
    assert after[:3] == records[:3]

    # a re-run with everything done generates nothing; more samples generate only the new indices
    counter["completions"] = 0
    ev.evaluate(tiny_run / "checkpoint-2", "demo", eval_dir=eval_dir, **SMALL)
    assert counter["completions"] == 0
    rows3 = ev.evaluate(tiny_run / "checkpoint-2", "demo", eval_dir=eval_dir, **{**SMALL, "n_samples": 3})
    assert counter["completions"] == 3 and rows3[0]["n_samples"] == 3


@pytest.mark.slow
def test_evaluate_a_training_run_in_one_call_and_discard_stale_completions(tiny_run, tmp_path, monkeypatch):
    eval_dir = tmp_path / "eval"
    rows = ev.evaluate(str(tiny_run), "demo", eval_dir=eval_dir, **SMALL)
    assert [(r["model"], r["step"]) for r in rows] == [(ev._path_label(tiny_run), 1), (ev._path_label(tiny_run), 2)]
    manifest = json.loads((eval_dir / ev.MANIFEST_FILE).read_text())
    assert set(manifest["entries"]) == {f"{ev._path_label(tiny_run)}@1", f"{ev._path_label(tiny_run)}@2"}

    counter = count_generated(monkeypatch)
    weights = tiny_run / "checkpoint-1" / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # checkpoint-1 was re-written
    ev.evaluate(str(tiny_run), "demo", eval_dir=eval_dir, **SMALL)
    assert counter["completions"] == 6  # checkpoint-1 redone, checkpoint-2 reused
    assert len(ev.read_records(eval_dir / "completions.stale.jsonl")) == 6
    assert len(ev.read_records(eval_dir / ev.COMPLETIONS_FILE)) == 12

    counter["completions"] = 0
    ev.evaluate(tiny_run / "checkpoint-2", "demo", eval_dir=eval_dir, **{**SMALL, "max_new_tokens": 3})
    assert counter["completions"] == 6  # other sampling settings: redone
    entry = json.loads((eval_dir / ev.MANIFEST_FILE).read_text())["entries"][f"{ev._path_label(tiny_run)}@2"]
    assert entry["settings"]["dtype"] == models.sampling_dtype()
    other = "float32" if models.sampling_dtype() == "bfloat16" else "bfloat16"
    counter["completions"] = 0
    ev.evaluate(tiny_run / "checkpoint-2", "demo", eval_dir=eval_dir, **{**SMALL, "max_new_tokens": 3, "dtype": other})
    assert counter["completions"] == 6  # weights in another dtype: redone
    results = json.loads((eval_dir / ev.RESULTS_FILE).read_text())
    assert sorted(r["step"] for r in results) == [1, 2]  # rows replaced per (model, step, benchmark), none lost


@pytest.mark.slow
def test_data_parallel_workers_shard_and_merge(tiny_run, tmp_path):
    """The multi-GPU path for real (one subprocess per 'GPU', here on CPU with transformers)."""
    eval_dir = tmp_path / "eval"
    rows = ev.evaluate(tiny_run / "checkpoint-1", "demo", eval_dir=eval_dir, num_workers=2, backend="transformers",
                       **SMALL)
    records = ev.read_records(eval_dir / ev.COMPLETIONS_FILE)
    expected = sorted((it["id"], j) for it in ev.load_benchmark("demo", limit=3) for j in (0, 1))
    assert sorted((r["problem_id"], r["sample_index"]) for r in records) == expected
    assert not list((eval_dir / ev.PARTS_DIR).iterdir())  # parts merged, job files and logs removed
    assert rows[0]["n_problems"] == 3 and rows[0]["n_samples"] == 2


class FakeVLLM:
    """Stands in for the vllm package: LLM(model, seed).generate(texts, SamplingParams) -> outputs."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.module = types.ModuleType("vllm")
        fake = self

        class SamplingParams:
            def __init__(self, **kw):
                self.__dict__.update(kw)

        class LLM:
            def __init__(self, model, seed):
                self.model = model

            def get_tokenizer(self):
                return fake.tokenizer

            def generate(self, texts, params):
                outs = []
                for i, _ in enumerate(texts):
                    o = [types.SimpleNamespace(text=f"so \\boxed{{{i + j}}}", token_ids=[1] * (3 + j),
                                               finish_reason="stop" if j else "length") for j in range(params.n)]
                    outs.append(types.SimpleNamespace(outputs=o))
                return outs

        self.module.LLM, self.module.SamplingParams = LLM, SamplingParams


@pytest.mark.slow
def test_both_backends_write_the_same_record_format(tiny_run, tmp_path, monkeypatch):
    from openrs_nb.models import load_tokenizer

    ckpt = tiny_run / "checkpoint-2"
    monkeypatch.setitem(sys.modules, "vllm", FakeVLLM(load_tokenizer(str(ckpt))).module)
    by_backend = {}
    for backend in ("transformers", "vllm"):
        # num_workers=0: in this process, where the fake vllm module is visible
        ev.evaluate(ckpt, "demo", eval_dir=tmp_path / backend, backend=backend, num_workers=0, **SMALL)
        by_backend[backend] = ev.read_records(tmp_path / backend / ev.COMPLETIONS_FILE)
    t, v = by_backend["transformers"], by_backend["vllm"]
    assert len(t) == len(v) == 6
    for a, b in zip(t, v):
        assert list(a) == list(b) == list(ev.RECORD_KEYS)
        assert {k: type(a[k]) for k in ("step", "completion", "num_tokens", "truncated", "correct", "gold")} == \
               {k: type(b[k]) for k in ("step", "completion", "num_tokens", "truncated", "correct", "gold")}
    assert [r["truncated"] for r in v[:2]] == [True, False]  # finish_reason "length" -> truncated
    assert [r["prediction"] for r in v if r["problem_id"] == v[0]["problem_id"]] == ["0", "1"]  # graded


def test_vllm_runs_in_worker_processes_by_default(tiny_run, tmp_path, monkeypatch):
    """vLLM engines hold their GPU memory until the process exits: each model gets a worker process."""
    calls = []
    monkeypatch.setattr(ev, "run_data_parallel", lambda spec, work, *a, **kw: calls.append((spec, len(work), kw)))
    monkeypatch.setattr(ev, "run_work", lambda *a, **kw: pytest.fail("vLLM must not run in the calling process"))
    import openrs_nb.config

    monkeypatch.setattr(openrs_nb.config, "cuda_gpu_count", lambda: 0)
    ev.evaluate(tiny_run, "demo", eval_dir=tmp_path, backend="vllm", **SMALL)
    assert [(c[0].step, c[1], c[2]["num_workers"]) for c in calls] == [(1, 3, 1), (2, 3, 1)]
    monkeypatch.setattr(openrs_nb.config, "cuda_gpu_count", lambda: 4)
    calls.clear()
    ev.evaluate(tiny_run / "checkpoint-2", "demo", eval_dir=tmp_path, backend="vllm", **SMALL)
    assert calls[0][2]["num_workers"] == 4


def test_sampling_model_is_loaded_in_the_dtype_asked_with_eager_attention_on_cpu(tiny_run):
    import torch

    for dtype in ("float32", "bfloat16"):
        model = models.load_sampling_model(str(tiny_run / "checkpoint-1"), dtype)
        assert model.dtype == getattr(torch, dtype)
        assert model.config._attn_implementation == ("sdpa" if torch.cuda.is_available() else "eager")
    expected = "bfloat16" if torch.cuda.is_available() or has_fast_bf16() else "float32"
    assert models.sampling_dtype() == expected


def test_evaluate_rejects_bad_arguments_before_work(tmp_path):
    with pytest.raises(ValueError, match="olympiadbench"):
        ev.evaluate("demo", "aime", eval_dir=tmp_path)
    with pytest.raises(ValueError, match="n_samples"):
        ev.evaluate("demo", "demo", eval_dir=tmp_path, n_samples=0)
    with pytest.raises(ValueError, match="backend"):
        ev.evaluate("demo", "demo", eval_dir=tmp_path, backend="tpu")
    with pytest.raises(ValueError, match="auto, float32, bfloat16"):
        ev.evaluate("demo", "demo", eval_dir=tmp_path, dtype="fp16")
    assert not (tmp_path / ev.COMPLETIONS_FILE).exists()


# ------------------------------------------------------------------------------------------------ crash safety
@pytest.mark.slow
def test_damaged_manifest_names_the_file_and_the_stale_move_survives_a_kill(tiny_run, tmp_path, monkeypatch):
    eval_dir = tmp_path / "eval"
    ckpt = tiny_run / "checkpoint-2"
    ev.evaluate(ckpt, "demo", eval_dir=eval_dir, **SMALL)
    manifest = eval_dir / ev.MANIFEST_FILE
    good = manifest.read_text()
    assert not list(eval_dir.glob(".*.tmp"))  # written through a temporary file, which is gone
    manifest.write_text(good[: len(good) // 2])  # a truncated manifest (the old non-atomic write)
    with pytest.raises(ValueError, match=f"{manifest} is not valid JSON"):
        ev.evaluate(ckpt, "demo", eval_dir=eval_dir, **SMALL)
    manifest.write_text(good)
    before = ev.read_records(eval_dir / ev.COMPLETIONS_FILE)

    # other settings: the old records are set aside; kill the process between the set-aside append and
    # the replacement of completions.jsonl, then run again
    import openrs_nb.evaluate as evaluate_module

    def killed(*a, **kw):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(evaluate_module, "write_text_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate(ckpt, "demo", eval_dir=eval_dir, **{**SMALL, "max_new_tokens": 3})
    monkeypatch.undo()
    ev.evaluate(ckpt, "demo", eval_dir=eval_dir, **{**SMALL, "max_new_tokens": 3})
    aside = ev.read_records(eval_dir / ev.STALE_FILE)
    assert sorted(map(ev.record_key, aside)) == sorted(map(ev.record_key, before))  # each record once
    assert all(r["settings"]["max_new_tokens"] == 4 and r["fingerprint"] and "sampled with" in r["set_aside_because"]
               for r in aside)
    now = ev.read_records(eval_dir / ev.COMPLETIONS_FILE)
    assert len(now) == 6 and all(r["num_tokens"] <= 3 for r in now)
    entry = json.loads(manifest.read_text())["entries"][f"{ev._path_label(tiny_run)}@2"]
    assert entry["settings"]["max_new_tokens"] == 3


# ------------------------------------------------------------------------------------------------ the paper's metric
def test_rule_for_each_benchmark():
    assert [ev.rule_for(b) for b in ev.PAPER_BENCHMARKS] == ["paper_expr", "paper_latex", "paper_expr",
                                                             "paper_latex", "paper_latex"]
    assert ev.rule_for("math500", "reward") == "reward"
    with pytest.raises(ValueError, match="reward"):
        ev.rule_for("math500", "lighteval")


@needs_data
def test_gold_raw_is_what_the_papers_metric_parsed():
    math500 = ev.load_benchmark("math500", BENCH_DIR, limit=3)
    rows = [json.loads(line) for line in open(BENCH_DIR / "math500.jsonl")][:3]
    assert [it["gold_raw"] for it in math500] == [r["solution"] for r in rows]  # the whole solution
    olymp = {it["gold"]: it for it in ev.load_benchmark("olympiadbench", BENCH_DIR)}
    assert olymp["69,84"]["gold_raw"] == "$69$,$84$"
    assert ev.load_benchmark("aime24", BENCH_DIR, limit=1)[0]["gold_raw"] == "204"
    assert ev.load_benchmark("amc23", BENCH_DIR, limit=1)[0]["gold_raw"] == "27"


def test_score_records_by_hand():
    records = [{**rec("a", 0, None, bench="aime24"), "completion": "46 + 96 = 142", "gold": "142", "gold_raw": "142"},
               {**rec("b", 0, None, bench="aime24"), "completion": "so \\boxed{142}", "gold": "142", "gold_raw": "142"},
               {**rec("c", 0, None, bench="math500"), "completion": "It is 3.14159", "gold": "\\pi",
                "gold_raw": "Hence $\\boxed{\\pi}$."}]
    ev.score_records(records, "paper")
    assert [(r["rule"], r["correct"], r["correct_reward"]) for r in records] == [
        ("paper_expr", True, False), ("paper_expr", True, True), ("paper_latex", True, False)]
    ev.score_records(records, "reward")
    assert [(r["rule"], r["correct"], r["correct_reward"]) for r in records] == [
        ("reward", False, False), ("reward", True, True), ("reward", False, False)]


# ------------------------------------------------------------------------------------------------ vLLM in chunks
class CountingVLLM(FakeVLLM):
    """FakeVLLM that counts engines and generate calls, answers without a box, and can crash."""

    def __init__(self, tokenizer, crash_on_call=None):
        super().__init__(tokenizer)
        self.engines, self.calls, self.crash_on_call = 0, [], crash_on_call
        fake, base = self, self.module.LLM

        class LLM(base):
            def __init__(self, model, seed):
                super().__init__(model, seed)
                fake.engines += 1

            def generate(self, texts, params):
                fake.calls.append(len(texts))
                if len(fake.calls) == fake.crash_on_call:
                    raise RuntimeError("CUDA error: the GPU fell over")
                outs = super().generate(texts, params)
                for out in outs:
                    for o in out.outputs:
                        o.text = o.text.replace("so \\boxed{", "the sum is ").rstrip("}")
                return outs

        self.module.LLM = LLM


@pytest.mark.slow
def test_vllm_evaluation_runs_in_chunks_and_resumes_after_a_crash(tiny_run, tmp_path, monkeypatch):
    import openrs_nb.generation as generation
    from openrs_nb.models import load_tokenizer

    ckpt = tiny_run / "checkpoint-2"
    monkeypatch.setattr(generation, "_VLLM_ENGINES", {})
    fake = CountingVLLM(load_tokenizer(str(ckpt)), crash_on_call=3)
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    monkeypatch.setattr(ev, "VLLM_CHUNK_COMPLETIONS", 4)  # 2 samples per problem: chunks of 2 prompts
    args = dict(eval_dir=tmp_path, backend="vllm", num_workers=0, n_problems=5, n_samples=2, progress=False)
    with pytest.raises(RuntimeError, match="GPU fell over"):
        ev.evaluate(ckpt, "demo", **args)
    assert fake.calls == [2, 2, 1] and fake.engines == 1  # one engine, reused across chunks
    assert len(ev.read_records(tmp_path / ev.COMPLETIONS_FILE)) == 8  # the two finished chunks were kept
    fake.crash_on_call = None
    rows = ev.evaluate(ckpt, "demo", **args)
    assert fake.calls[3:] == [1]  # only the lost problem is generated again
    records = ev.read_records(tmp_path / ev.COMPLETIONS_FILE)
    assert len(records) == 10 and len({ev.record_key(r) for r in records}) == 10
    # scored with the paper's metric: "the sum is 1" for gold 1 is right, although the reward's rule says no
    assert all(r["rule"] == "paper_expr" and r["correct_reward"] is False for r in records)
    assert all(r["correct"] == (r["prediction"] == r["gold"]) for r in records)
    assert rows[0]["metric"] == "paper"
    # the other metric re-scores the cache without generating anything
    calls = len(fake.calls)
    rows_reward = ev.evaluate(ckpt, "demo", **args, metric="reward")
    assert len(fake.calls) == calls and rows_reward[0]["pass@1"] == 0.0 and rows_reward[0]["metric"] == "reward"
    assert all(r["rule"] == "reward" for r in ev.read_records(tmp_path / ev.COMPLETIONS_FILE))


def test_curation_cache_runs_vllm_in_chunks_and_resumes(tmp_path, monkeypatch):
    """data.cached_generate (the difficulty and judge filters) on the vLLM backend, with the fake engine."""
    import openrs_nb.generation as generation
    from openrs_nb import data
    from openrs_nb.models import load_tokenizer

    monkeypatch.setattr(generation, "_VLLM_ENGINES", {})
    monkeypatch.setattr(generation, "VLLM_CHUNK_COMPLETIONS", 6)  # n=3: chunks of 2 prompts
    fake = CountingVLLM(load_tokenizer("demo"), crash_on_call=2)
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    problems = [f"What is {i} + 1?" for i in range(5)]
    prompts = [[{"role": "user", "content": p}] for p in problems]
    kw = dict(n=3, cache_path=tmp_path / "cache.jsonl", settings={"k": 3}, backend="vllm", progress=False)
    with pytest.raises(RuntimeError, match="GPU fell over"):
        data.cached_generate("demo", problems, prompts, **kw)
    assert fake.calls == [2, 2] and len((tmp_path / "cache.jsonl").read_text().splitlines()) == 6
    fake.crash_on_call = None
    out = data.cached_generate("demo", problems, prompts, **kw)
    assert fake.calls[2:] == [2, 1] and fake.engines == 1
    assert [len(o) for o in out] == [3] * 5


def test_curation_cache_on_transformers_samples_in_the_sampling_dtype_and_keys_it(tiny_run, tmp_path, monkeypatch):
    from openrs_nb import data

    loaded = []
    real = models.load_sampling_model
    monkeypatch.setattr(models, "load_sampling_model", lambda path, dtype: loaded.append(dtype) or real(path, dtype))
    path = str(tiny_run / "checkpoint-1")
    problems = ["What is 1 + 1?", "What is 2 + 2?"]
    prompts = [[{"role": "user", "content": p}] for p in problems]
    kw = dict(n=2, cache_path=tmp_path / "cache.jsonl", settings={"k": 2}, backend="transformers", progress=False,
              max_new_tokens=3)
    data.cached_generate(path, problems, prompts, **kw)
    assert loaded == [models.sampling_dtype()]
    key = data.model_key(path)
    assert len(data.read_cache(tmp_path / "cache.jsonl", key, {"k": 2, "dtype": models.sampling_dtype()})) == 4
    other = "float32" if models.sampling_dtype() == "bfloat16" else "bfloat16"
    assert data.read_cache(tmp_path / "cache.jsonl", key, {"k": 2, "dtype": other}) == {}
    data.cached_generate(path, problems, prompts, **kw)
    assert len(loaded) == 1  # all cached: nothing loaded, nothing generated
