"""Results as the paper shows them: training curves (Figures 3–5), accuracy per checkpoint (Figure 2),
Table 1 with error bars, and language drift, read from the files 04_train and 05_evaluate write.

Inputs (see the project conventions):
- a training output dir: `metrics.jsonl` (one row per logged step), `completions.jsonl` (logged
  completions), `run.json` (the config), optionally `summary.json` (end-of-training totals);
- an evaluation dir: `results.json` (one row per model, step, benchmark) and `completions.jsonl`.

Every reader tolerates what a crash leaves behind (a half-written last line) and every plot tolerates
keys a run did not log (`kl` when beta = 0, `rewards/cosine_reward/mean` outside experiment 3).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from openrs_nb.files import iter_jsonl, read_json, read_jsonl  # noqa: F401 (re-exported)
from openrs_nb.rewards import NOTATION_SCRIPTS, completion_text, main_script, script_counts  # noqa: F401 (re-exported)

METRICS_FILE = "metrics.jsonl"
COMPLETIONS_FILE = "completions.jsonl"
RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
RESULTS_FILE = "results.json"

# ------------------------------------------------------------------------------------------------
# The paper's numbers (quoted from the paper; label them as the paper's wherever they are shown)
# ------------------------------------------------------------------------------------------------
PAPER_BENCHMARKS = ("AIME24", "MATH-500", "AMC23", "Minerva", "OlympiadBench")
"""Column order of the paper's Table 1."""

BENCHMARK_SIZES = {"AIME24": 30, "MATH-500": 500, "AMC23": 40, "Minerva": 272, "OlympiadBench": 675}
"""Problems per benchmark (paper, Appendix C)."""

EVAL_NAMES = {"aime24": "AIME24", "math500": "MATH-500", "amc23": "AMC23", "minerva": "Minerva",
              "olympiadbench": "OlympiadBench"}
"""openrs_nb.evaluate's benchmark names -> the paper's column names."""

PAPER_TABLE1: list[dict[str, Any]] = [
    # model, group, AIME24, MATH-500, AMC23, Minerva, OlympiadBench, Avg. (zero-shot pass@1, %)
    dict(model="Llama-3.1-70B-Instruct", group="General Models",
         scores=(16.7, 64.6, 30.1, 35.3, 31.9), avg=35.7),
    dict(model="o1-preview", group="General Models", scores=(44.6, 85.5, None, None, None), avg=None),
    dict(model="Qwen-2.5-Math-7B-Instruct", group="7B Models", scores=(13.3, 79.8, 50.6, 34.6, 40.7), avg=43.8),
    dict(model="rStar-Math-7B", group="7B Models", scores=(26.7, 78.4, 47.5, None, 47.1), avg=None),
    dict(model="Eurus-2-7B-PRIME", group="7B Models", scores=(26.7, 79.2, 57.8, 38.6, 42.1), avg=48.9),
    dict(model="Qwen2.5-7B-SimpleRL", group="7B Models", scores=(26.7, 82.4, 62.5, 39.7, 43.3), avg=50.9),
    dict(model="DeepSeek-R1-Distill-Qwen-1.5B", group="1.5B Models", scores=(28.8, 82.8, 62.9, 26.5, 43.3),
         avg=48.9),
    dict(model="Still-3-1.5B-Preview", group="1.5B Models", scores=(32.5, 84.4, 66.7, 29.0, 45.4), avg=51.6),
    dict(model="DeepScaleR-1.5B-Preview", group="1.5B Models", scores=(43.1, 87.8, 73.6, 30.2, 50.0), avg=57.0),
    dict(model="Open-RS1 (100 steps)", group="Our Models", scores=(30.0, 83.8, 70.0, 29.0, 52.4), avg=53.0),
    dict(model="Open-RS2 (50 steps)", group="Our Models", scores=(30.0, 85.4, 80.0, 30.5, 52.4), avg=55.7),
    dict(model="Open-RS3 (50 steps)", group="Our Models", scores=(46.7, 84.4, 72.5, 26.8, 51.3), avg=56.3),
]
"""Table 1 of the paper verbatim (None where the paper prints a dash)."""
PAPER_BASE = "DeepSeek-R1-Distill-Qwen-1.5B"
PAPER_OURS = ("Open-RS1 (100 steps)", "Open-RS2 (50 steps)", "Open-RS3 (50 steps)")

# Panels of the training-curve figure: metrics.jsonl key -> (title, y label).
TRAINING_PANELS: dict[str, tuple[str, str]] = {
    "reward": ("total reward (weighted sum)", "mean reward per completion"),
    "rewards/accuracy_reward/mean": ("accuracy reward", "mean reward (0 = wrong, 1 = right)"),
    "rewards/cosine_reward/mean": ("cosine reward (exp 3)", "mean reward (−0.5 … 1)"),
    "rewards/format_reward/mean": ("format reward", "mean reward (0 … 1)"),
    "completions/mean_length": ("completion length", "mean length (tokens)"),
    "kl": ("KL to the reference model", "KL (nats per token)"),
}
# Further panels 06 draws for the experiments side by side (Figures 3–5 analogues).
EXTRA_PANELS: dict[str, tuple[str, str]] = {
    "accuracy": ("accuracy (graded from completions.jsonl)", "share of completions correct"),
    "completions/clipped_ratio": ("clipped at the completion budget", "share of completions truncated"),
    "frac_reward_zero_std": ("groups with zero reward variance", "share of groups (teach nothing)"),
    "reward_std": ("reward std over the step (all groups together)", "std of the total reward"),
}
BANDS: dict[str, tuple[str, str]] = {"completions/mean_length": ("completions/min_length", "completions/max_length")}
"""Panels drawn with a shaded band: key -> (lower key, upper key), e.g. the length's min–max spread."""

COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
"""Okabe–Ito colours: distinguishable with colour-blindness, on the white figure background."""


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------
def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a `metrics.jsonl` (a training output dir works too), one dict per logged step.

    A truncated last line, as a crash leaves it, is skipped with a warning.
    """
    path = Path(path)
    return read_jsonl(path / METRICS_FILE if path.is_dir() else path)


def read_results(path: str | Path) -> list[dict]:
    """The rows of an evaluation `results.json` (an evaluation dir works too), checked for the keys we use."""
    path = Path(path)
    path = path / RESULTS_FILE if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    rows = json.loads(path.read_text())
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path} should hold a JSON list of objects, one per (model, step, benchmark)")
    for i, r in enumerate(rows):
        missing = [k for k in ("model", "benchmark", "pass@1") if k not in r]
        if missing:
            raise ValueError(f"{path}: row {i} lacks {missing}; every row needs model, step, benchmark, pass@1")
    return rows


@dataclass
class TrainingRun:
    """One training output dir, read: its config, logged steps and logged completions."""

    path: Path
    label: str
    config: dict = field(default_factory=dict)
    """run.json ({} when absent)."""
    metrics: list[dict] = field(default_factory=list)
    """metrics.jsonl rows."""
    summary: dict = field(default_factory=dict)
    """summary.json, the trainer's end-of-training totals ({} when absent, e.g. a run still going)."""

    @property
    def completions_path(self) -> Path:
        return self.path / COMPLETIONS_FILE


def load_run(path: str | Path, label: str | None = None) -> TrainingRun:
    """Read a training output dir (04_train writes one); completions stay on disk (see `iter_jsonl`)."""
    path = Path(path)
    if not (path / METRICS_FILE).is_file():
        raise FileNotFoundError(f"{path / METRICS_FILE} not found: this is not a training output dir "
                                "(notebooks/04_train.ipynb writes one)")
    config = read_json(path / RUN_FILE) if (path / RUN_FILE).is_file() else {}
    summary = read_json(path / SUMMARY_FILE) if (path / SUMMARY_FILE).is_file() else {}
    return TrainingRun(path=path, label=label or run_label(config, path), config=config,
                       metrics=read_metrics(path), summary=summary)


def run_label(config: dict, path: Path) -> str:
    """'exp 3 (demo)' from run.json, else the folder name."""
    if "exp" in config:
        return f"exp {config['exp']} ({config.get('profile', '?')})"
    return Path(path).name


def unique_labels(runs: list[TrainingRun]) -> None:
    """Make labels distinct by adding the folder name where two runs share one (in place)."""
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
    for r in runs:
        if seen[r.label] > 1:
            r.label = f"{r.label} · {r.path.parent.name}/{r.path.name}"


# ------------------------------------------------------------------------------------------------
# Series and smoothing
# ------------------------------------------------------------------------------------------------
def metric_series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `key`, sorted by step; rows without the key, a step or a number are left out.

    When a step appears twice (a resumed run that re-logged it) the later row wins.
    """
    by_step: dict[int, float] = {}
    for r in rows:
        v, s = r.get(key), r.get("step")
        if s is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        by_step[int(s)] = float(v)
    steps = np.array(sorted(by_step), dtype=int)
    return steps, np.array([by_step[s] for s in steps], dtype=float)


def smooth(values, window: int = 1) -> np.ndarray:
    """Trailing moving average: point i is the mean of the last `window` values up to i (fewer at the start)."""
    if not isinstance(window, (int, np.integer)) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window={window!r} must be an integer >= 1 (1 = no smoothing)")
    x = np.asarray(values, dtype=float)
    if window == 1 or x.size == 0:
        return x.copy()
    c = np.cumsum(np.insert(x, 0, 0.0))
    i = np.arange(1, x.size + 1)
    lo = np.maximum(0, i - window)
    return (c[i] - c[lo]) / (i - lo)


def logged_keys(runs: list[TrainingRun]) -> set[str]:
    """Every metric key with at least one numeric value in any of the runs."""
    return {k for r in runs for row in r.metrics for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------
def _new_figure(nrows: int, ncols: int, width: float, height: float):
    """A figure on a white background with black text, whatever the notebook theme or style."""
    import matplotlib.pyplot as plt

    with plt.style.context("default"):
        fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, facecolor="white")
        for ax in axes.flat:
            ax.set_facecolor("white")
            ax.grid(True, alpha=0.3)
    return fig, axes


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Save as PNG with an opaque white background (readable in dark and light viewers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white", bbox_inches="tight")
    return path


def plot_training_curves(runs: list[TrainingRun], keys: Iterable[str] | None = None, smooth_window: int = 1,
                         ncols: int = 3, bands: dict[str, tuple[str, str]] | None = None):
    """Figures 3–5 analogue: one panel per metric, the runs overlaid, raw (faint) and smoothed.

    `keys` defaults to the TRAINING_PANELS keys that at least one run logged; a panel whose key a
    run lacks (e.g. `kl` with beta = 0) simply has no line for that run. `bands` (default BANDS):
    panels that also shade the range between two other logged keys (the completion length's min–max).
    Returns (figure, keys plotted, keys not logged by any run).
    """
    bands = BANDS if bands is None else bands
    if not runs:
        raise ValueError("no runs to plot: pass at least one TrainingRun (see load_run)")
    have = logged_keys(runs)
    wanted = list(keys) if keys is not None else list(TRAINING_PANELS)
    plotted = [k for k in wanted if k in have]
    missing = [k for k in wanted if k not in have]
    if not plotted:
        raise ValueError(f"none of {wanted} was logged by these runs; logged keys: {sorted(have)}")
    ncols = min(ncols, len(plotted))
    nrows = math.ceil(len(plotted) / ncols)
    fig, axes = _new_figure(nrows, ncols, 4.6 * ncols, 3.4 * nrows)
    handles = {}
    for ax, key in zip(axes.flat, plotted):
        title, ylabel = {**TRAINING_PANELS, **EXTRA_PANELS}.get(key, (key, key))
        banded = False
        for color, run in zip(_cycle(COLORS), runs):  # one colour per run in every panel
            steps, values = metric_series(run.metrics, key)
            if steps.size == 0:
                continue
            if key in bands:
                lo_steps, lo = metric_series(run.metrics, bands[key][0])
                hi_steps, hi = metric_series(run.metrics, bands[key][1])
                if lo.size and np.array_equal(lo_steps, hi_steps):
                    ax.fill_between(lo_steps, lo, hi, color=color, alpha=0.12, lw=0)
                    banded = True
            if smooth_window > 1:
                ax.plot(steps, values, color=color, alpha=0.25, lw=1)
            (handles[run.label],) = ax.plot(steps, smooth(values, smooth_window), color=color, lw=1.8,
                                            label=run.label, marker="o" if steps.size < 15 else None, ms=3)
        ax.set_title(title + (" (band: min–max)" if banded else ""))
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        _integer_steps(ax)
    for ax in list(axes.flat)[len(plotted):]:
        ax.set_visible(False)
    axes.flat[0].legend(handles=list(handles.values()), fontsize=8)
    note = f"smoothed: trailing mean of {smooth_window} steps (faint: raw)" if smooth_window > 1 else "raw values"
    fig.suptitle(f"Training curves per logged step — {note}", fontsize=10)
    fig.tight_layout()
    return fig, plotted, missing


def _integer_steps(ax) -> None:
    """Ticks at whole steps only (a run of 3 steps should not show step 1.5)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _cycle(items):
    while True:
        yield from items


def checkpoint_run(model: str) -> str:
    """The run a model name belongs to: '.../train/checkpoint-50' -> '.../train'; other names unchanged."""
    m = re.fullmatch(r"(.+)[/\\]checkpoint-\d+[/\\]?", str(model))
    return m.group(1) if m else str(model)


def baseline_run(model: str) -> str | None:
    """The training run whose starting point a model is: '.../train/format-priming' (the demo's primed
    start, 04_train) -> '.../train'; None for any other model."""
    m = re.fullmatch(r"(.+)[/\\]format-priming[/\\]?", str(model))
    return m.group(1) if m else None


def short_name(model: Any) -> str:
    """A legend-sized model name: the last two parts of a path ('demo/train'; three for a run's primed
    start, 'exp1/train/format-priming'), a Hub id or 'demo' as is."""
    parts = [p for p in re.split(r"[/\\]", str(model)) if p]
    keep = 3 if parts and parts[-1] == "format-priming" else 2
    return "/".join(parts[-keep:]) if parts else str(model)


def split_baseline(results: list[dict], baseline_model: str | None = None) -> tuple[list[dict], list[dict]]:
    """(baseline rows, checkpoint rows) of results.json.

    Baseline: rows of `baseline_model` if given, else rows whose step is None or 0 (the model before
    training). Checkpoint rows: the others with an integer step.
    """
    if baseline_model is not None:
        base = [r for r in results if r["model"] == baseline_model]
        if not base:
            raise ValueError(f"baseline_model={baseline_model!r} not in results; models: "
                             f"{sorted({r['model'] for r in results})}")
    else:
        base = [r for r in results if r.get("step") in (None, 0)]
    base_ids = {id(r) for r in base}
    ckpt = [r for r in results if id(r) not in base_ids and isinstance(r.get("step"), int)]
    return base, ckpt


def plot_accuracy_vs_step(results: list[dict], benchmarks: Iterable[str] | None = None,
                          baseline_model: str | None = None):
    """Figure 2 analogue: pass@1 (%) of each checkpoint against its training step, one panel per benchmark,
    with 95% intervals and the baseline (the model before training) as a dashed red line."""
    base, ckpt = split_baseline(results, baseline_model)
    names = list(benchmarks) if benchmarks is not None else sorted({r["benchmark"] for r in results}, key=_bench_order)
    unknown = sorted(set(names) - {r["benchmark"] for r in results})
    if unknown:
        raise ValueError(f"benchmark(s) {unknown} not in results; present: {sorted({r['benchmark'] for r in results})}")
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = _new_figure(nrows, ncols, 4.8 * ncols, 4.4 * nrows)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    for ax, bench in zip(axes.flat, names):
        runs = sorted({checkpoint_run(r["model"]) for r in ckpt if r["benchmark"] == bench})
        colors = dict(zip(runs, _cycle(COLORS)))
        for color, run in zip(_cycle(COLORS), runs):
            rows = sorted((r for r in ckpt if r["benchmark"] == bench and checkpoint_run(r["model"]) == run),
                          key=lambda r: r["step"])
            x = [r["step"] for r in rows]
            y = np.array([100 * r["pass@1"] for r in rows])
            lo, hi = zip(*(_interval(r) for r in rows))
            ax.errorbar(x, y, yerr=[y - 100 * np.array(lo), 100 * np.array(hi) - y], color=color, marker="o",
                        capsize=3, lw=1.6, label=f"checkpoints of {short_name(run)}")
        for r in (r for r in base if r["benchmark"] == bench):
            own = baseline_run(r["model"])  # a run's own primed start: dashed in the run's colour
            ax.axhline(100 * r["pass@1"], color=colors.get(own, "#C00000"), ls="--", lw=1.4,
                       label=f"start of {short_name(own)} (primed): {100 * r['pass@1']:.1f}%" if own in colors
                       else f"before training ({short_name(r['model'])}): {100 * r['pass@1']:.1f}%")
        ax.set_title(EVAL_NAMES.get(bench, bench))
        ax.set_xlabel("training step of the checkpoint")
        ax.set_ylabel("pass@1 (%)")
        ax.set_ylim(bottom=0)
        ax.set_xlim(left=0)  # training starts at step 0, where the dashed baseline is measured
        _integer_steps(ax)
        n_entries = len(ax.get_legend_handles_labels()[1])
        # below the panel: inside it, the legend hid points wherever the runs' curves were drawn
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncols=2 if n_entries > 3 else 1,
                  frameon=False)
    fig.suptitle("Accuracy per checkpoint (bars: 95% interval); dashed: before training", fontsize=10)
    fig.tight_layout()
    return fig


def _interval(row: dict) -> tuple[float, float]:
    """95% interval of a results row: its bootstrap interval, else ±1.96 SE, else none."""
    if row.get("ci_low") is not None and row.get("ci_high") is not None:
        return float(row["ci_low"]), float(row["ci_high"])
    se = row.get("se") or 0.0
    return row["pass@1"] - 1.96 * se, row["pass@1"] + 1.96 * se


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured with one sample on each of n problems, in the N − 1
    convention used everywhere here (openrs_nb.evaluate.standard_error): sqrt(p(1-p)/(n-1)), which is
    s/sqrt(n) with s the sample standard deviation of the n 0/1 outcomes."""
    if not 0 <= p <= 1 or n < 2:
        raise ValueError(f"need 0 <= p <= 1 and n >= 2, got p={p}, n={n}")
    return math.sqrt(p * (1 - p) / (n - 1))


def paper_table1_with_se(models: Iterable[str] = (PAPER_BASE, *PAPER_OURS)) -> list[dict]:
    """The paper's Table 1 scores for `models` with the standard error one sample per problem implies.

    Rows: {"model", "benchmark", "score" (%), "se" (points)}; scores the paper lacks are left out.
    """
    table = {row["model"]: row for row in PAPER_TABLE1}
    unknown = [m for m in models if m not in table]
    if unknown:
        raise ValueError(f"{unknown} not in the paper's Table 1; rows: {list(table)}")
    out = []
    for m in models:
        for bench, score in zip(PAPER_BENCHMARKS, table[m]["scores"]):
            if score is not None:
                out.append(dict(model=m, benchmark=bench, score=score,
                                se=100 * binomial_se(score / 100, BENCHMARK_SIZES[bench])))
    return out


def paper_gains_vs_base(z_threshold: float = 1.96, base_se: bool = True) -> list[dict]:
    """Each Open-RS score minus the base model's, with the gain's SE (unpaired) and whether it clears
    `z_threshold` standard errors.

    The Open-RS scores are one sample per problem (binomial SE). The base row is quoted from other papers
    (Table 1 caption) and is no one-sample score (28.8% of 30 problems is 8.64 problems), so its SE is
    unknown: `base_se=True` gives it a one-sample SE too (the largest it could plausibly be), `False`
    gives it none (an exactly known base) — the true z lies between the two."""
    rows = paper_table1_with_se()
    base = {r["benchmark"]: r for r in rows if r["model"] == PAPER_BASE}
    out = []
    for r in rows:
        if r["model"] == PAPER_BASE:
            continue
        b = base[r["benchmark"]]
        gain, se = r["score"] - b["score"], math.hypot(r["se"], b["se"] if base_se else 0.0)
        out.append(dict(model=r["model"], benchmark=r["benchmark"], gain=gain, se=se, z=gain / se,
                        clear=abs(gain / se) >= z_threshold))
    return out


def plot_paper_table1(models: Iterable[str] = (PAPER_BASE, *PAPER_OURS)):
    """Bars of the paper's Table 1 scores with 95% intervals (±1.96 SE, one sample per problem, computed here)."""
    rows = paper_table1_with_se(models)
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = _new_figure(1, 1, 10, 3.8)
    ax = axes[0, 0]
    width = 0.8 / len(models)
    for i, (color, m) in enumerate(zip(_cycle(COLORS), models)):
        mine = {r["benchmark"]: r for r in rows if r["model"] == m}
        xs = [j + (i - (len(models) - 1) / 2) * width for j, b in enumerate(PAPER_BENCHMARKS) if b in mine]
        ys = [mine[b]["score"] for b in PAPER_BENCHMARKS if b in mine]
        es = [1.96 * mine[b]["se"] for b in PAPER_BENCHMARKS if b in mine]
        ax.bar(xs, ys, width=width, color=color, label=m, yerr=es, capsize=2, error_kw=dict(lw=1))
    ax.set_xticks(range(len(PAPER_BENCHMARKS)),
                  [f"{b}\n(n = {BENCHMARK_SIZES[b]})" for b in PAPER_BENCHMARKS])
    ax.set_ylabel("pass@1 (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, ncols=2, loc="upper right")
    ax.set_title("Paper, Table 1 (one sample per problem); error bars computed here: 95% binomial interval",
                 fontsize=10)
    fig.tight_layout()
    return fig


def results_table(results: list[dict]) -> list[dict]:
    """Our Table 1: one row per (model, step) with pass@1 ± SE (%) per benchmark, and the average over
    benchmarks when there are several (its SE combines theirs as independent)."""
    keyed: dict[tuple, dict] = {}
    for r in results:
        keyed.setdefault((r["model"], r.get("step")), {})[r["benchmark"]] = r
    benches = sorted({r["benchmark"] for r in results}, key=_bench_order)
    rows = []
    for (model, step), by_bench in keyed.items():
        row = {"model": model, "step": step}
        for b in benches:
            r = by_bench.get(b)
            row[b] = None if r is None else (100 * r["pass@1"], 100 * (r.get("se") or 0.0))
        if len(benches) > 1 and all(row[b] is not None for b in benches):
            row["Avg."] = (sum(row[b][0] for b in benches) / len(benches),
                           math.sqrt(sum(row[b][1] ** 2 for b in benches)) / len(benches))
        sample = next(iter(by_bench.values()))
        row["samples per problem"] = sample.get("n_samples")
        rows.append(row)
    rows.sort(key=lambda r: (r["step"] is not None, checkpoint_run(r["model"]), r["step"] or 0))  # baselines first
    return rows


def _bench_order(name: str):
    paper = EVAL_NAMES.get(name, name)
    return (PAPER_BENCHMARKS.index(paper) if paper in PAPER_BENCHMARKS else len(PAPER_BENCHMARKS), name)


def plot_results(results: list[dict]):
    """Our pass@1 per benchmark as bars with 95% intervals, one bar per (model, step)."""
    benches = sorted({r["benchmark"] for r in results}, key=_bench_order)
    keys = list(dict.fromkeys((r["model"], r.get("step")) for r in results))
    fig, axes = _new_figure(1, 1, max(5.0, 1.6 * len(benches) * max(1, len(keys)) ** 0.5 + 2), 3.6)
    ax = axes[0, 0]
    width = 0.8 / len(keys)
    for i, (color, (model, step)) in enumerate(zip(_cycle(COLORS), keys)):
        xs, ys, lo, hi = [], [], [], []
        for j, b in enumerate(benches):
            r = next((r for r in results if r["benchmark"] == b and (r["model"], r.get("step")) == (model, step)),
                     None)
            if r is None:
                continue
            a, c = _interval(r)
            xs.append(j + (i - (len(keys) - 1) / 2) * width)
            ys.append(100 * r["pass@1"])
            lo.append(100 * (r["pass@1"] - a))
            hi.append(100 * (c - r["pass@1"]))
        name = short_name(model) if step is None else f"{short_name(checkpoint_run(model))} @ step {step}"
        ax.bar(xs, ys, width=width, color=color, label=name, yerr=[lo, hi], capsize=3)
    ax.set_xticks(range(len(benches)), [EVAL_NAMES.get(b, b) for b in benches])
    ax.set_ylabel("pass@1 (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title("Measured here: pass@1 with 95% intervals", fontsize=10)
    fig.tight_layout()
    return fig


def markdown_table(rows: list[dict], columns: list[str] | None = None, digits: int = 1) -> str:
    """A Markdown table of `rows`: None prints as '–', (value, se) pairs as 'value ± se'."""
    if not rows:
        return "(no rows)"
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))

    def cell(v):
        if v is None:
            return "–"
        if isinstance(v, tuple) and len(v) == 2:
            return f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}"
        if isinstance(v, float):
            return f"{v:,.{digits}f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def paper_table1_markdown() -> str:
    """The paper's Table 1 as Markdown (values as printed in the paper)."""
    rows = [{"group": r["group"], "model": r["model"], **dict(zip(PAPER_BENCHMARKS, r["scores"])), "Avg.": r["avg"]}
            for r in PAPER_TABLE1]
    return markdown_table(rows)


# ------------------------------------------------------------------------------------------------
# Language drift
# ------------------------------------------------------------------------------------------------
def off_script_letters(text: str, script: str = "LATIN") -> tuple[int, int]:
    """(letters outside `script`, all letters) of `text`; the drift share is their ratio."""
    counts = script_counts(text)
    total = sum(counts.values())
    return total - counts.get(script, 0), total


def language_drift(records: Iterable[dict], group: Callable[[dict], Any] = lambda r: r.get("step"),
                   script: str | None = None, text_key: str = "completion") -> list[dict]:
    """Share of completion letters outside the prompt's script, per group (default: per training step).

    `script=None` takes each record's prompt script (`rewards.main_script` of its "prompt"; LATIN when
    there is none, e.g. evaluation records). Returns one row per group, sorted:
    {"group", "off_script_share" (pooled over letters; None if no letters), "off_script_letters",
    "letters", "completions", "completions_off_script" (completions with any off-script letter)}.
    """
    acc: dict[Any, list[int]] = {}
    for r in records:
        target = script or main_script(completion_text(r.get("prompt")))
        off, total = off_script_letters(completion_text(r.get(text_key)), target)
        a = acc.setdefault(group(r), [0, 0, 0, 0])
        a[0] += off
        a[1] += total
        a[2] += 1
        a[3] += off > 0
    rows = []
    for g in sorted(acc, key=_none_last):
        off, total, n, n_off = acc[g]
        rows.append(dict(group=g, off_script_share=off / total if total else None, off_script_letters=off,
                         letters=total, completions=n, completions_off_script=n_off))
    return rows


def _percent_from_zero(ax) -> None:
    """y from just below 0 to at least 1%, so a line of zeros (no drift) shows as a line, not an empty axis."""
    top = max([1.0] + [1.15 * float(np.max(ln.get_ydata())) for ln in ax.get_lines() if len(ln.get_ydata())])
    ax.set_ylim(-0.04 * top, top)


def _none_last(g):
    """Sort key for group keys (a value or a tuple of values) that puts None after everything."""
    return tuple((x is None, 0 if x is None else x) for x in (g if isinstance(g, tuple) else (g,)))


def eval_language_drift(records: Iterable[dict], script: str = "LATIN") -> dict[str, list[dict]]:
    """Drift of evaluation completions: run (checkpoints folded into their run) -> rows per step."""
    rows = language_drift(records, group=lambda r: (checkpoint_run(r.get("model")), r.get("step")), script=script)
    out: dict[str, list[dict]] = {}
    for row in rows:
        run, step = row["group"]
        out.setdefault(run, []).append({**row, "group": step})
    return out


def plot_language_drift(train: dict[str, list[dict]], evaluation: dict[str, list[dict]] | None = None):
    """Drift per logged training step (left, one line per run) and per evaluated checkpoint (right).

    `train`: run label -> `language_drift` rows grouped by step; `evaluation`: model/run -> rows
    grouped by checkpoint step (None = the model before training, drawn at step 0).
    """
    panels = 2 if evaluation else 1
    fig, axes = _new_figure(1, panels, 5.2 * panels, 3.6)
    ax = axes[0, 0]
    for color, (label, rows) in zip(_cycle(COLORS), train.items()):
        pts = [(r["group"], 100 * r["off_script_share"]) for r in rows if r["off_script_share"] is not None]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, color=color, marker="o" if len(x) < 15 else None, ms=3, label=label)
    ax.set_title("training completions (completions.jsonl)")
    ax.set_xlabel("optimizer step")
    _integer_steps(ax)
    ax.set_ylabel("letters outside the prompt's script (%)")
    _percent_from_zero(ax)
    if train:
        ax.legend(fontsize=8)
    if evaluation:
        ax = axes[0, 1]
        for color, (label, rows) in zip(_cycle(COLORS), evaluation.items()):
            pts = [(r["group"] or 0, 100 * r["off_script_share"]) for r in rows if r["off_script_share"] is not None]
            if pts:
                x, y = zip(*sorted(pts))
                ax.plot(x, y, color=color, marker="o", ms=4, label=short_name(label))
        ax.set_title("evaluation completions, per checkpoint")
        ax.set_xlabel("training step of the checkpoint (0 = before training)")
        _integer_steps(ax)
        ax.set_ylabel("letters outside Latin script (%)")
        _percent_from_zero(ax)
        ax.legend(fontsize=8)
    fig.suptitle("Language drift: share of letters not in the prompt's script (Greek/math letters ignored)",
                 fontsize=10)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------
# Cost
# ------------------------------------------------------------------------------------------------
def plot_cost_vs_samples(points: list[dict]):
    """Figure 1 (right) in the paper's spirit: training cost against RL samples, log–log.

    `points`: dicts with "label", "samples", "cost" (USD; None = not priced, left out) and "source"
    ("paper" or "measured"); the two sources get different markers.
    """
    fig, axes = _new_figure(1, 1, 6.4, 4.2)
    ax = axes[0, 0]
    shown = [p for p in points if p.get("cost") and p.get("samples")]
    if not shown:
        raise ValueError("no point has both a cost and a sample count to plot")
    for p in shown:
        paper = p.get("source") == "paper"
        ax.scatter(p["samples"], p["cost"], s=50, marker="o" if paper else "*", zorder=3,
                   color=COLORS[0] if paper else COLORS[1])
        ax.annotate(p["label"], (p["samples"], p["cost"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("RL samples (prompts × generations)")
    ax.set_ylabel("training cost (USD)")
    measured = any(p.get("source") != "paper" for p in shown)
    ax.set_title("Cost vs data — circles: the paper's Tables 2–3" + ("; stars: measured here" if measured else ""),
                 fontsize=10)
    ax.margins(0.25)
    fig.tight_layout()
    return fig
