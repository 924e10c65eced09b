"""openrs_nb.plots on small synthetic training and evaluation outputs (the schemas 04/05 write)."""

import json
import math
import os
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

from openrs_nb import plots

PAPER = Path(os.environ.get("OPENRS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PAPER = PAPER.parent / "paper" / "open-rs-paper.txt"


def write_jsonl(path, rows, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return path


def write_run(d, exp=2, steps=4, beta=0.04, profile="demo"):
    """A training output dir as 04_train writes it, with exp 3 logging cosine instead of accuracy."""
    d.mkdir(parents=True)
    main = "cosine" if exp == 3 else "accuracy"
    rows = []
    for s in range(1, steps + 1):
        row = {"step": s, "reward": 1.0 + 0.1 * s, f"rewards/{main}_reward/mean": 0.1 * s,
               "rewards/format_reward/mean": 0.5, "completions/mean_length": 40.0 + s, "step_time": 2.0}
        if beta > 0:
            row["kl"] = 0.01 * s
        rows.append(row)
    write_jsonl(d / "metrics.jsonl", rows)
    (d / "run.json").write_text(json.dumps({"exp": exp, "profile": profile, "beta": beta,
                                            "reward_funcs": ["format", main], "reward_weights": [1.0, 2.0]}))
    write_jsonl(d / "completions.jsonl", [
        {"step": 1, "prompt": "What is 2+3?", "completion": "<think>2+3=5</think> \\boxed{5}", "advantage": 0.5,
         "rewards": {"format_reward": 1.0, f"{main}_reward": 1.0}},
        {"step": 2, "prompt": "What is 2+3?", "completion": "答案是 \\boxed{5}", "advantage": -0.5,
         "rewards": {"format_reward": 0.0, f"{main}_reward": 1.0}},
    ])
    return d


# ------------------------------------------------------------------------------------------------ reading
def test_read_metrics_skips_truncated_last_line_with_warning(tmp_path):
    path = write_jsonl(tmp_path / "metrics.jsonl", [{"step": 1, "reward": 0.5}, {"step": 2, "reward": 0.7}],
                       tail='{"step": 3, "rew')
    with pytest.warns(RuntimeWarning, match="line 3"):
        rows = plots.read_metrics(path)
    assert rows == [{"step": 1, "reward": 0.5}, {"step": 2, "reward": 0.7}]


def test_read_metrics_accepts_a_dir_and_blank_lines_without_warning(tmp_path):
    write_jsonl(tmp_path / "metrics.jsonl", [{"step": 1}], tail='\n{"step": 2}')  # last line whole, no newline
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plots.read_metrics(tmp_path) == [{"step": 1}, {"step": 2}]


def test_read_metrics_corrupt_middle_line_names_its_number(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, oops\n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        plots.read_metrics(path)


def test_read_metrics_rejects_non_objects_and_missing_files(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match="line 2 holds a list"):
        plots.read_metrics(path)
    with pytest.raises(FileNotFoundError):
        plots.read_metrics(tmp_path / "nope.jsonl")


def test_read_results_checks_keys(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps([{"model": "m", "step": None, "benchmark": "demo"}]))
    with pytest.raises(ValueError, match="pass@1"):
        plots.read_results(tmp_path)


def test_load_run_reads_config_and_labels(tmp_path):
    a = plots.load_run(write_run(tmp_path / "a" / "train", exp=1))
    b = plots.load_run(write_run(tmp_path / "b" / "train", exp=1))
    assert a.label == "exp 1 (demo)" and len(a.metrics) == 4 and a.summary == {}
    plots.unique_labels([a, b])
    assert a.label == "exp 1 (demo) · a/train" and b.label == "exp 1 (demo) · b/train"
    with pytest.raises(FileNotFoundError, match="04_train"):
        plots.load_run(tmp_path / "missing")


# ------------------------------------------------------------------------------------------------ series
def test_metric_series_skips_gaps_and_keeps_last_duplicate():
    rows = [{"step": 2, "kl": 0.2}, {"step": 1, "kl": 0.1}, {"step": 3, "kl": None}, {"step": 4},
            {"step": 5, "kl": float("nan")}, {"kl": 9.0}, {"step": 2, "kl": 0.25}]
    steps, values = plots.metric_series(rows, "kl")
    assert steps.tolist() == [1, 2] and values.tolist() == [0.1, 0.25]
    assert plots.metric_series(rows, "absent")[0].size == 0


def test_smooth_is_a_trailing_mean():
    assert plots.smooth([1, 2, 3, 4], 2).tolist() == [1.0, 1.5, 2.5, 3.5]
    assert plots.smooth([1, 2, 3, 4], 3).tolist() == [1.0, 1.5, 2.0, 3.0]
    assert plots.smooth([1, 5], 1).tolist() == [1.0, 5.0]
    assert plots.smooth([2, 4], 10).tolist() == [2.0, 3.0]
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="window"):
            plots.smooth([1], bad)


# ------------------------------------------------------------------------------------------------ figures
def test_training_curves_overlay_runs_and_tolerate_missing_keys(tmp_path):
    exp1 = plots.load_run(write_run(tmp_path / "e1", exp=1))
    exp3 = plots.load_run(write_run(tmp_path / "e3", exp=3, beta=0.0, steps=3))
    fig, plotted, missing = plots.plot_training_curves([exp1, exp3])
    assert plotted == list(plots.TRAINING_PANELS) and missing == []
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    kl = panels["KL to the reference model"]
    assert [ln.get_label() for ln in kl.get_lines()] == ["exp 1 (demo)"]  # exp 3 ran with beta = 0
    np.testing.assert_allclose(kl.get_lines()[0].get_ydata(), [0.01, 0.02, 0.03, 0.04])
    cos = panels["cosine reward (exp 3)"]
    assert [ln.get_label() for ln in cos.get_lines()] == ["exp 3 (demo)"]
    assert kl.get_xlabel() == "optimizer step" and "tokens" in panels["completion length"].get_ylabel()
    plt.close(fig)

    fig, plotted, missing = plots.plot_training_curves([exp3], smooth_window=2)
    assert "kl" in missing and "rewards/accuracy_reward/mean" in missing and "kl" not in plotted
    length = next(ax for ax in fig.axes if ax.get_title() == "completion length")
    raw, smoothed = length.get_lines()
    np.testing.assert_allclose(raw.get_ydata(), [41, 42, 43])
    np.testing.assert_allclose(smoothed.get_ydata(), [41, 41.5, 42.5])
    plt.close(fig)
    with pytest.raises(ValueError, match="none of"):
        plots.plot_training_curves([exp3], keys=["kl"])


def test_save_figure_has_white_background(tmp_path):
    fig, _, _ = plots.plot_training_curves([plots.load_run(write_run(tmp_path / "r"))], keys=["reward"])
    png = plots.save_figure(fig, tmp_path / "figures" / "06_x.png")
    plt.close(fig)
    img = matplotlib.image.imread(png)
    np.testing.assert_allclose(img[0, 0, :3], 1.0)


RESULTS = [
    {"model": "demo", "step": None, "benchmark": "demo", "n_problems": 10, "n_samples": 2, "pass@1": 0.2,
     "se": 0.05, "ci_low": 0.1, "ci_high": 0.3},
    {"model": "runs/demo/train/checkpoint-10", "step": 10, "benchmark": "demo", "n_problems": 10, "n_samples": 2,
     "pass@1": 0.4, "se": 0.1, "ci_low": 0.25, "ci_high": 0.6},
    {"model": "runs/demo/train/checkpoint-20", "step": 20, "benchmark": "demo", "n_problems": 10, "n_samples": 2,
     "pass@1": 0.5, "se": 0.1},  # no bootstrap interval: ±1.96 SE
]


def test_checkpoint_run_folds_checkpoints_into_their_run():
    assert plots.checkpoint_run("runs/demo/train/checkpoint-10") == "runs/demo/train"
    assert plots.checkpoint_run("C:\\r\\checkpoint-7\\") == "C:\\r"
    assert plots.checkpoint_run("demo") == "demo"
    assert plots.checkpoint_run("org/checkpoint-model") == "org/checkpoint-model"


def test_accuracy_vs_step_draws_checkpoints_and_dashed_baseline():
    base, ckpt = plots.split_baseline(RESULTS)
    assert [r["model"] for r in base] == ["demo"] and [r["step"] for r in ckpt] == [10, 20]
    fig = plots.plot_accuracy_vs_step(RESULTS)
    ax = fig.axes[0]
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(20.0)
    curve = next(ln for ln in ax.get_lines() if ln.get_linestyle() == "-")
    assert curve.get_xdata().tolist() == [10, 20]
    np.testing.assert_allclose(curve.get_ydata(), [40.0, 50.0])
    assert ax.get_ylabel() == "pass@1 (%)"
    plt.close(fig)
    with pytest.raises(ValueError, match="not in results"):
        plots.plot_accuracy_vs_step(RESULTS, benchmarks=["aime24"])
    with pytest.raises(ValueError, match="baseline_model"):
        plots.split_baseline(RESULTS, baseline_model="nope")


def test_accuracy_vs_step_draws_each_runs_primed_start_in_its_colour():
    rows = [{"model": f"x/exp{e}/train/checkpoint-10", "step": 10, "benchmark": "demo", "pass@1": 0.3 + 0.1 * e,
             "se": 0.05} for e in (1, 2)]
    rows += [{"model": f"x/exp{e}/train/format-priming", "step": None, "benchmark": "demo", "pass@1": 0.1 * e,
              "se": 0.05} for e in (1, 2)]
    assert plots.baseline_run("x/exp1/train/format-priming") == "x/exp1/train" and plots.baseline_run("demo") is None
    fig = plots.plot_accuracy_vs_step(rows)
    ax = fig.axes[0]
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 2
    for line, e in zip(sorted(dashed, key=lambda line: line.get_ydata()[0]), (1, 2)):
        assert line.get_ydata()[0] == pytest.approx(10.0 * e)
        assert line.get_color() == plots.COLORS[e - 1] and f"exp{e}/train" in line.get_label()
    plt.close(fig)


def test_training_curves_shade_the_length_spread(tmp_path):
    d = write_run(tmp_path / "r")
    rows = [{**json.loads(line), "completions/min_length": 10.0, "completions/max_length": 60.0}
            for line in (d / "metrics.jsonl").read_text().splitlines()]
    write_jsonl(d / "metrics.jsonl", rows)
    fig, plotted, _ = plots.plot_training_curves([plots.load_run(d)], keys=["completions/mean_length", "reward"])
    length, reward = fig.axes[:2]
    assert "min–max" in length.get_title() and "min–max" not in reward.get_title()
    (band,) = length.collections
    ys = np.concatenate([p.vertices[:, 1] for p in band.get_paths()])
    assert ys.min() == pytest.approx(10.0) and ys.max() == pytest.approx(60.0)
    plt.close(fig)


def test_interval_prefers_bootstrap_then_se():
    assert plots._interval(RESULTS[1]) == (0.25, 0.6)
    lo, hi = plots._interval(RESULTS[2])
    assert lo == pytest.approx(0.5 - 0.196) and hi == pytest.approx(0.5 + 0.196)


def test_results_table_averages_and_combines_se():
    results = [{"model": "m", "step": None, "benchmark": "math500", "pass@1": 0.5, "se": 0.1, "n_samples": 4},
               {"model": "m", "step": None, "benchmark": "aime24", "pass@1": 0.3, "se": 0.1, "n_samples": 4}]
    (row,) = plots.results_table(results)
    assert list(row)[:4] == ["model", "step", "aime24", "math500"]  # the paper's column order
    assert row["aime24"] == pytest.approx((30.0, 10.0)) and row["math500"] == pytest.approx((50.0, 10.0))
    assert row["Avg."][0] == pytest.approx(40.0) and row["Avg."][1] == pytest.approx(math.sqrt(200) / 2)
    rows = plots.results_table(RESULTS)
    assert [r["step"] for r in rows] == [None, 10, 20] and "Avg." not in rows[0]
    text = plots.markdown_table(rows, ["model", "step", "demo"])
    assert "| demo | – | 20.0 ± 5.0 |" in text
    fig = plots.plot_results(RESULTS)
    assert len(fig.axes[0].patches) == 3
    plt.close(fig)


def test_markdown_table_cells():
    text = plots.markdown_table([{"a": None, "b": (1.234, 0.5), "c": 42000, "d": "x|y", "e": 0.4375}], digits=2)
    assert text.splitlines()[2] == "| – | 1.23 ± 0.50 | 42,000 | x\\|y | 0.44 |"
    assert plots.markdown_table([]) == "(no rows)"


# ------------------------------------------------------------------------------------------------ paper Table 1
def test_paper_table1_average_is_the_mean_of_the_five():
    for row in plots.PAPER_TABLE1:
        if row["avg"] is not None:
            # within 0.1: DeepScaleR 56.94 is printed 57.0 (averaged before rounding, presumably)
            assert sum(row["scores"]) / 5 == pytest.approx(row["avg"], abs=0.1), row["model"]


def test_paper_table1_matches_the_paper_text():
    if not PAPER.is_file():
        pytest.skip(f"paper text not found at {PAPER} (set OPENRS_SHARED_DATA)")
    lines = set(PAPER.read_text().splitlines())
    for row in plots.PAPER_TABLE1:
        cells = [f"{v:.1f}" if v is not None else "–" for v in (*row["scores"], row["avg"])]
        assert "\t".join([row["model"], *cells]) in lines, row["model"]


def test_binomial_se_and_paper_gains():
    # N - 1 convention, as openrs_nb.evaluate.standard_error: sqrt(.467 * .533 / 29) = 9.26 points
    assert plots.binomial_se(0.467, 30) == pytest.approx(0.09264, abs=1e-5)
    outcomes = np.array([1.0] * 14 + [0.0] * 16)  # 14 of 30 right: the SE of the mean of the 0/1 outcomes
    assert plots.binomial_se(14 / 30, 30) == pytest.approx(outcomes.std(ddof=1) / np.sqrt(30))
    with pytest.raises(ValueError):
        plots.binomial_se(1.5, 30)
    rows = plots.paper_table1_with_se()
    assert len(rows) == 4 * 5
    gains = {(g["model"], g["benchmark"]): g for g in plots.paper_gains_vs_base()}
    amc = gains[("Open-RS2 (50 steps)", "AMC23")]
    # 80.0 vs 62.9 on 40 problems: se = sqrt(.8*.2/39 + .629*.371/39) = 10.04 points, z = 1.70
    assert amc["gain"] == pytest.approx(17.1) and amc["se"] == pytest.approx(10.043, abs=1e-3)
    assert amc["z"] == pytest.approx(1.703, abs=1e-3) and not amc["clear"]
    # the base row's SE unknown: with none, only Open-RS2's own SE sqrt(.8*.2/39) = 6.41 is left, z = 2.67
    exact = {(g["model"], g["benchmark"]): g for g in plots.paper_gains_vs_base(base_se=False)}
    amc0 = exact[("Open-RS2 (50 steps)", "AMC23")]
    assert amc0["se"] == pytest.approx(6.405, abs=1e-3) and amc0["z"] == pytest.approx(2.670, abs=1e-3)
    assert amc0["clear"]
    assert all(abs(exact[k]["z"]) >= abs(g["z"]) for k, g in gains.items())  # a smaller SE, a larger |z|
    oly = gains[("Open-RS1 (100 steps)", "OlympiadBench")]  # 52.4 vs 43.3 on 675 problems: z = 3.36
    assert oly["z"] == pytest.approx(3.36, abs=0.01) and oly["clear"]
    fig = plots.plot_paper_table1()
    assert len(fig.axes[0].patches) == 20
    plt.close(fig)
    with pytest.raises(ValueError, match="not in the paper"):
        plots.paper_table1_with_se(["GPT-9"])


# ------------------------------------------------------------------------------------------------ language drift
def test_script_counts_use_the_reward_scripts_but_skip_notation():
    assert plots.script_counts("Hé 你ひД") == {"LATIN": 2, "CJK": 2, "CYRILLIC": 1}
    assert plots.script_counts("π θ 𝑥 ℝ ℓ 5 + ª") == {}  # notation and non-letters never count


def test_off_script_share_hand_counted():
    assert plots.off_script_letters("Hello 你好!") == (2, 7)
    assert plots.off_script_letters("area = πr^2") == (0, 5)
    assert plots.off_script_letters("你好 ok", script="CJK") == (2, 4)
    assert plots.off_script_letters("123 + 4") == (0, 0)


def test_language_drift_pools_letters_per_step_and_uses_the_prompt_script():
    records = [{"step": 1, "prompt": "Add", "completion": "abc"},
               {"step": 1, "prompt": "Add", "completion": "你好"},
               {"step": 2, "prompt": "Add", "completion": "12"},
               {"step": 2, "prompt": "计算", "completion": "ok"}]  # a Chinese prompt answered in English
    rows = plots.language_drift(records)
    assert [r["group"] for r in rows] == [1, 2]
    assert rows[0]["off_script_share"] == pytest.approx(2 / 5)
    assert rows[0]["completions"] == 2 and rows[0]["completions_off_script"] == 1
    assert rows[1]["off_script_share"] == 1.0 and rows[1]["letters"] == 2
    assert plots.language_drift(records[2:3])[0]["off_script_share"] is None  # no letters at all
    chat = [{"step": 1, "prompt": [{"role": "user", "content": "Add"}],
             "completion": [{"role": "assistant", "content": "Привет"}]}]
    assert plots.language_drift(chat)[0]["off_script_share"] == 1.0


def test_eval_language_drift_groups_checkpoints_into_runs(tmp_path):
    records = [{"model": "demo", "step": None, "completion": "abcd"},
               {"model": "r/train/checkpoint-10", "step": 10, "completion": "ab你好"},
               {"model": "r/train/checkpoint-5", "step": 5, "completion": "ab"}]
    drift = plots.eval_language_drift(records)
    assert set(drift) == {"demo", "r/train"}
    assert [(r["group"], r["off_script_share"]) for r in drift["r/train"]] == [(5, 0.0), (10, 0.5)]
    run = plots.load_run(write_run(tmp_path / "t"))
    train = {run.label: plots.language_drift(plots.iter_jsonl(run.completions_path))}
    assert [r["off_script_share"] for r in train[run.label]] == [0.0, 3 / 8]  # 答案是 vs b-o-x-e-d
    fig = plots.plot_language_drift(train, drift)
    left, right = fig.axes
    np.testing.assert_allclose(left.get_lines()[0].get_ydata(), [0.0, 37.5])
    assert sorted(ln.get_xdata().tolist()[0] for ln in right.get_lines()) == [0, 5]  # base drawn at step 0
    plt.close(fig)


def test_short_name_and_cost_plot():
    assert plots.short_name("runs/demo/train") == "demo/train" and plots.short_name("demo") == "demo"
    assert plots.short_name("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B") == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    points = [{"label": "Open-RS", "samples": 42_000, "cost": 42.0, "source": "paper"},
              {"label": "rStar", "samples": 58_352_000, "cost": None, "source": "paper"},
              {"label": "ours", "samples": 3_600, "cost": 1.5, "source": "measured"}]
    fig = plots.plot_cost_vs_samples(points)
    ax = fig.axes[0]
    offsets = [tuple(c.get_offsets()[0]) for c in ax.collections]
    assert offsets == [(42_000, 42.0), (3_600, 1.5)]  # the unpriced point is left out
    assert ax.get_xscale() == "log" and "stars" in ax.get_title()
    plt.close(fig)
    with pytest.raises(ValueError, match="no point"):
        plots.plot_cost_vs_samples(points[1:2])


def test_accuracy_vs_step_wraps_many_benchmarks_into_rows():
    results = [{"model": "base", "step": None, "benchmark": b, "pass@1": 0.5, "se": 0.1}
               for b in ("aime24", "amc23", "math500", "minerva", "olympiadbench")]
    fig = plots.plot_accuracy_vs_step(results)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(fig.axes) == 6 and [ax.get_title() for ax in visible] == [
        "AIME24", "MATH-500", "AMC23", "Minerva", "OlympiadBench"]  # the paper's column order
    plt.close(fig)
