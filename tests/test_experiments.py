"""The demo's three experiments: presets derived from the measured solve rates, and the insight evidence."""

import json
import math
from collections import Counter

import numpy as np
import pytest

from openrs_nb import experiments as ex
from openrs_nb import plots
from openrs_nb.config import ENGLISH_ONLY, load_experiment
from openrs_nb.train import load_train_dataset


# ------------------------------------------------------------------------------------------------ design
def test_committed_presets_are_the_committed_measurements_design():
    design = ex.design_from_rates({lv: r["rate"] for lv, r in ex.MEASURED.items()}, ex.LONGEST_BUDGET)
    assert design == ex.DESIGN
    for e in (1, 2, 3):
        cfg = load_experiment(e, "demo")
        assert cfg.demo_levels == design.levels(e) and cfg.max_completion_length == design.budgets[e]


def test_design_picks_hard_medium_easy_from_the_rates_and_skips_unsolved_levels():
    d = ex.design_from_rates({1: 0.6, 2: 0.3, 3: 0.0, 4: 0.1, 5: 0.01}, 64)
    assert (d.hard, d.medium, d.easy) == (4, 2, 1)  # 3 and 5 are never (or almost never) solved: no signal
    assert d.budgets == {1: 64, 2: 56, 3: 56}
    assert d.levels(1) == [4] and Counter(d.levels(2)) == {4: 3, 2: 3, 1: 1}
    with pytest.raises(ValueError, match="need 3 levels"):
        ex.design_from_rates({1: 0.5, 2: 0.0, 3: 0.0, 4: 0.01, 5: 0.3})
    with pytest.raises(ValueError, match="do not separate"):
        ex.design_from_rates({1: 0.2, 2: 0.2, 3: 0.2})


def test_each_experiments_demo_config_and_dataset_smoke_size():
    """What make experiments trains, built in smoke size: the 3:3:1 mix, the budgets, the rewards, the prompt."""
    from openrs_nb.models import load_tokenizer

    tok = load_tokenizer("demo")
    d = ex.DESIGN
    cfgs = {e: load_experiment(e, "demo", dataset_size=70) for e in (1, 2, 3)}
    levels = {e: Counter(load_train_dataset(cfg, tok)["level"]) for e, cfg in cfgs.items()}
    assert levels[1] == {d.hard: 70}
    assert levels[2] == levels[3] == {d.hard: 30, d.medium: 30, d.easy: 10}  # 3,000 : 3,000 : 1,000
    assert ex.SolveRate  # the rates are ordered as the names say
    r = ex.MEASURED
    assert r[d.hard]["rate"] < r[d.medium]["rate"] < r[d.easy]["rate"]
    assert cfgs[1].max_completion_length > cfgs[2].max_completion_length == cfgs[3].max_completion_length
    assert cfgs[2].max_completion_length == round(cfgs[1].max_completion_length * 3584 / 4096)
    assert cfgs[1].reward_funcs == cfgs[2].reward_funcs == ["format", "accuracy"]
    assert cfgs[3].reward_funcs == ["format", "cosine"] and cfgs[3].reward_weights == [1.0, 2.0]
    assert cfgs[3].system_prompt.endswith(ENGLISH_ONLY) and not cfgs[2].system_prompt.endswith(ENGLISH_ONLY)
    for e in (1, 2):  # everything else is the same demo preset
        a, b = cfgs[e].__dict__, cfgs[3].__dict__
        assert {k for k in a if a[k] != b[k]} <= {"exp", "demo_levels", "max_completion_length", "reward_funcs",
                                                  "system_prompt"}


def test_rates_table_and_load_rates(tmp_path):
    rates, where = ex.load_rates(tmp_path / "missing.json")
    assert "committed" in where and set(rates) == set(ex.MEASURED)
    doc = {"rates": {"1": {"level": 1, "rate": 0.5, "problems": 8, "samples": 8, "solved_any": 1.0, "se": 0.1}}}
    (tmp_path / ex.RATES_FILE).write_text(json.dumps(doc))
    rates, where = ex.load_rates(tmp_path / ex.RATES_FILE)
    assert rates[1].rate == 0.5 and "this machine" in where
    table = ex.rates_table(rates)
    assert "| 1 | What is" in table and "50.0% ± 10.0" in table


@pytest.fixture
def fake_measure(tmp_path, monkeypatch):
    """`measure` without priming or sampling: returns the keyword arguments measure_solve_rates received,
    which answers with the committed MEASURED rates."""
    seen = {}

    def fake_rates(model, **kw):
        seen.update(kw)
        return {lv: ex.SolveRate(lv, r["rate"], r["problems"], r["samples"], r["solved_any"], r["se"])
                for lv, r in ex.MEASURED.items()}

    monkeypatch.setattr(ex, "primed_model", lambda work, seed=42: tmp_path / "format-priming")
    monkeypatch.setattr(ex, "measure_solve_rates", fake_rates)
    monkeypatch.setenv("OPENRS_CACHE", str(tmp_path / "cache"))
    return seen


def test_measure_writes_the_rates_and_says_whether_they_give_the_committed_design(tmp_path, fake_measure, capsys):
    """The `measure` command's bookkeeping (the sampling itself is measure_solve_rates, run for MEASURED)."""
    ex.main(["measure", "--out", str(tmp_path / "out")])
    assert "same as the committed presets: True" in capsys.readouterr().out
    seen = fake_measure
    assert seen["max_new_tokens"] == ex.LONGEST_BUDGET and seen["k"] == ex.MEASURE_SETTINGS["k"]
    assert (seen["n_problems"], seen["seed"]) == (ex.MEASURE_SETTINGS["n_problems"], ex.MEASURE_SETTINGS["seed"])
    assert str(seen["cache_path"]).startswith(str(tmp_path / "cache"))
    rates, where = ex.load_rates(tmp_path / "out" / ex.RATES_FILE)
    assert {lv: r.rate for lv, r in rates.items()} == {lv: r["rate"] for lv, r in ex.MEASURED.items()}


def test_measure_repeats_the_committed_measurement_with_its_settings(tmp_path, fake_measure, capsys):
    ex.main(["measure", "--out", str(tmp_path / "out"), "--problems", "32", "--seed", "11"])
    assert (fake_measure["n_problems"], fake_measure["seed"]) == (32, 11)
    doc = json.loads((tmp_path / "out" / ex.RATES_FILE).read_text())
    assert (doc["settings"]["n_problems"], doc["settings"]["seed"]) == (32, 11)
    assert all(r["problems"] == 32 for r in ex.MEASURED.values())  # the committed one is that size
    with pytest.raises(SystemExit):
        ex.main(["measure", "--out", str(tmp_path / "out"), "--problems", "1"])
    assert "--problems must be at least 2" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ statistics
def test_welch_and_paired_against_hand_computation():
    a, b = [0.1, 0.2, 0.3, 0.2], [0.5, 0.4, 0.6]
    e = ex.welch(a, b)
    assert e.diff == pytest.approx(np.mean(b) - np.mean(a))
    assert e.se == pytest.approx(math.sqrt(np.var(a, ddof=1) / 4 + np.var(b, ddof=1) / 3))
    assert e.z == pytest.approx(e.diff / e.se)
    x = {"p1": 0.0, "p2": 0.5, "p3": 1.0}
    y = {"p1": 0.5, "p2": 0.5, "p3": 1.0, "p4": 0.0}  # p4 is scored only once: left out
    p = ex.paired(x, y)
    d = np.array([0.5, 0.0, 0.0])
    assert p.diff == pytest.approx(d.mean()) and p.se == pytest.approx(d.std(ddof=1) / math.sqrt(3))
    with pytest.raises(ValueError):
        ex.welch([1.0], [1.0, 2.0])
    assert ex.Effect(0.0, 0.0).z == 0.0 and ex.Effect(1.0, 0.0).z == math.inf
    first, last = ex.quarters(list(range(10)))
    assert list(first) == [0, 1] and list(last) == [8, 9]


def test_step_accuracy_reads_accuracy_or_cosine():
    rows = [{"step": 1, "rewards": {"accuracy_reward": 1.0}}, {"step": 1, "rewards": {"accuracy_reward": 0.0}},
            {"step": 2, "rewards": {"cosine_reward": 0.55}}, {"step": 2, "rewards": {"cosine_reward": -0.2}},
            {"step": 2, "rewards": {"cosine_reward": 0.0}}, {"step": 3, "rewards": {"format_reward": 1.0}}]
    assert ex.step_accuracy(rows) == {1: 0.5, 2: pytest.approx(1 / 3)}


def test_per_problem_accuracy():
    recs = [{"model": "m", "step": 10, "benchmark": "demo", "problem_id": "a", "correct": True},
            {"model": "m", "step": 10, "benchmark": "demo", "problem_id": "a", "correct": False},
            {"model": "m", "step": 20, "benchmark": "demo", "problem_id": "a", "correct": True}]
    assert ex.per_problem_accuracy(recs, "m", 10) == {"a": 0.5}


# ------------------------------------------------------------------------------------------------ insight table
def _fake_run(d, exp, acc, zero_std, length, clipped):
    d.mkdir(parents=True)
    main = "cosine" if exp == 3 else "accuracy"
    metrics, comps = [], []
    for s, (a, z, n, c) in enumerate(zip(acc, zero_std, length, clipped), start=1):
        metrics.append({"step": s, "frac_reward_zero_std": z, "completions/mean_length": n,
                        "completions/clipped_ratio": c})
        for i in range(4):  # 4 completions per step, round(4a) of them right
            right = i < round(4 * a)
            value = (0.8 if right else -0.1) if exp == 3 else float(right)
            comps.append({"step": s, "rewards": {f"{main}_reward": value}})
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (d / "completions.jsonl").write_text("".join(json.dumps(c) + "\n" for c in comps))
    (d / "run.json").write_text(json.dumps({"exp": exp, "profile": "demo"}))
    return plots.load_run(d)


def test_insight_rows_verdicts_follow_the_effects(tmp_path):
    rng = np.random.default_rng(0)
    steps = 16
    rising = np.repeat([0.0, 0.25, 0.5, 0.75], 4)  # training accuracy: a clear rise in every run

    def wobble(mean, sd):
        return list(mean + sd * rng.standard_normal(steps))

    runs = {1: _fake_run(tmp_path / "e1", 1, rising, wobble(0.8, 0.02), wobble(40, 1), np.zeros(steps)),
            2: _fake_run(tmp_path / "e2", 2, rising, wobble(0.4, 0.02), list(np.linspace(30, 50, steps)),
                         np.zeros(steps)),
            3: _fake_run(tmp_path / "e3", 3, rising, wobble(0.4, 0.02), wobble(40, 0.5), np.zeros(steps))}
    probs = [f"p{i}" for i in range(20)]
    start = {p: 0.25 for p in probs}
    evals = {e: {"start": start, "mid": {p: 0.5 for p in probs},
                 "final": {p: 0.25 + (0.5 if e == 2 else 0.25) * (i % 2) for i, p in enumerate(probs)}}
             for e in (1, 2, 3)}
    rows = {r["insight"]: r for r in ex.insight_rows(runs, evals)}
    assert rows[1]["parts"] == {"early gain in every run": True, "late fall under the limit": False}
    assert rows[1]["verdict"] == "partly"
    assert rows[2]["parts"]["more groups that teach (fewer zero-variance groups)"] is True
    assert rows[2]["parts"]["larger held-out gain"] is True and rows[2]["verdict"] == "yes"
    assert rows[3]["parts"] == {"steadier length than exp 2": True} and rows[3]["verdict"] == "yes"
    assert "z =" in rows[3]["ours"] and rows[3]["paper"].startswith("Fig 5")
    # no evidence at all: every verdict "no" except what the data shows
    flat = {e: _fake_run(tmp_path / f"f{e}", e, np.full(steps, 0.5), wobble(0.5, 0.02), wobble(40, 1), np.zeros(steps))
            for e in (1, 2, 3)}
    same = {e: {"start": start, "mid": start, "final": {p: 0.25 + 0.01 * (i % 3) for i, p in enumerate(probs)}}
            for e in (1, 2, 3)}
    assert [r["verdict"] for r in ex.insight_rows(flat, same)] == ["no", "no", "no"]


# ------------------------------------------------------------------------------------------------ 06 on three runs
def _synthetic_experiment(root, exp, rng, steps=8, save=4):
    """Files shaped exactly as 04 and 05 write them for one demo experiment (synthetic numbers, for the
    notebook's code path only): run.json from the real preset, metrics/completions per step, and an eval
    dir with the primed start and each checkpoint."""
    import dataclasses

    from openrs_nb import data
    from openrs_nb import evaluate as ev

    cfg = load_experiment(exp, "demo", max_steps=steps, save_steps=save, dataset_size=64)
    train = root / f"exp{exp}" / "train"
    train.mkdir(parents=True)
    (train / "run.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    rows = data.make_demo_dataset(64, seed=cfg.seed, split="train", levels=cfg.demo_levels)
    main = "cosine" if exp == 3 else "accuracy"
    metrics, comps = [], []
    for s in range(1, steps + 1):
        p_right = min(0.9, 0.1 + 0.08 * s)
        group = []
        for i in range(16):
            row = rows[(4 * s + i // 4) % len(rows)]
            right = bool(rng.random() < p_right)
            answer = row["answer"] if right else str(int(row["answer"]) + 1)
            text = f"<think>\n{row['problem']}\n</think>\n<answer>\\boxed{{{answer}}}</answer>"
            value = (0.9 if right else -0.1) if exp == 3 else float(right)
            group.append({"step": s, "prompt": row["problem"], "completion": text, "advantage": 0.0,
                          "rewards": {"format_reward": 1.0, f"{main}_reward": value}})
        comps += group
        acc = float(np.mean([g["rewards"][f"{main}_reward"] for g in group]))
        metrics.append({"step": s, "reward": 1.0 + 2 * acc, "rewards/format_reward/mean": 1.0,
                        f"rewards/{main}_reward/mean": acc, "completions/mean_length": 40 + rng.normal(0, 2),
                        "completions/min_length": 20.0, "completions/max_length": 60.0,
                        "completions/clipped_ratio": 0.1, "frac_reward_zero_std": 0.5 - 0.1 * (exp > 1),
                        "kl": 0.001 * s})
    (train / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (train / "completions.jsonl").write_text("".join(json.dumps(c) + "\n" for c in comps))
    models = [(str(train / "format-priming"), None, 0.2)] + [(str(train), s, 0.2 + 0.05 * s)
                                                               for s in range(save, steps + 1, save)]
    records = []
    for model, step, p in models:
        for q in range(12):
            for k in range(4):
                records.append({"model": model, "step": step, "benchmark": "demo", "problem_id": f"q{q}",
                                "sample_index": k, "correct": bool(rng.random() < p), "completion": "\\boxed{1}",
                                "num_tokens": 10, "truncated": False})
    eval_dir = root / f"exp{exp}" / "eval"
    eval_dir.mkdir()
    (eval_dir / "completions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (eval_dir / "results.json").write_text(json.dumps(ev.summarize_records(records)))
    return train, eval_dir


@pytest.mark.slow
def test_06_runs_the_insight_table_on_three_experiment_runs(tmp_path):
    """06 outside the smoke setting, on three runs shaped like make experiments' output: every cell runs,
    including the insight table and its by-hand checks (the numbers are synthetic: this tests the code)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    rng = np.random.default_rng(1)
    made = [_synthetic_experiment(tmp_path, e, rng) for e in (1, 2, 3)]
    params = json.dumps({"run_dir": str(tmp_path), "runs": [str(t) for t, _ in made],
                         "eval_dir": [str(v) for _, v in made]})
    out = tmp_path / "06.ipynb"
    nb = Path(__file__).resolve().parents[1] / "notebooks" / "06_results.ipynb"
    env = {**os.environ, "OPENRS_SMOKE": "0"}
    proc = subprocess.run([sys.executable, "-m", "papermill", "--cwd", str(nb.parent), str(nb), str(out),
                           "-y", params], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "The paper's insights, on our three CPU runs" in text and "insight rows recomputed by hand" in text
    assert (tmp_path / "figures" / "06_training_curves.png").stat().st_size > 10_000
