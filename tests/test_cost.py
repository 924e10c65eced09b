"""openrs_nb.cost: the paper's Tables 2–3 and the calculator, with hand-worked values."""

import os
import re
from pathlib import Path

import pytest

from openrs_nb import cost

PAPER = Path(os.environ.get("OPENRS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PAPER = PAPER.parent / "paper" / "open-rs-paper.txt"


def test_paper_price_reproduces_42_dollars():
    assert cost.PAPER_PRICE_PER_GPU_HOUR == 0.4375  # 42 / (4 × 24)
    assert cost.training_cost(4, 24, cost.PAPER_PRICE_PER_GPU_HOUR) == pytest.approx(42.0)
    assert cost.training_cost(8, 240, 1.89) == pytest.approx(3628.8)


def test_baselines_all_assume_about_189_per_a100_hour():
    rows = {r.model: r for r in cost.PAPER_TABLE2 + cost.PAPER_TABLE3}
    # 1088 / (8 × 72), 1633 / (24 × 36), 3629 / (8 × 240), 2268 / (8 × 150)
    for name in ("Eurus-2-7B-PRIME", "Qwen2.5-7B-SimpleRL", "DeepScaleR-1.5B-Preview", "Still-3-1.5B-Preview"):
        assert rows[name].implied_price_per_gpu_hour == pytest.approx(1.89, abs=0.005), name
    assert rows["Open-RS"].implied_price_per_gpu_hour == 0.4375
    assert rows["rStar-Math-7B"].implied_price_per_gpu_hour is None  # the paper gives no time or cost


def test_samples_are_prompts_times_generations():
    rows = {r.model: r for r in cost.PAPER_TABLE2 + cost.PAPER_TABLE3}
    assert rows["Open-RS"].samples == 42_000  # the paper: "42,000 total samples"
    assert rows["DeepScaleR-1.5B-Preview"].samples == 640_000
    assert rows["rStar-Math-7B"].samples == 58_352_000
    assert cost.samples_used(0, 6) == 0
    with pytest.raises(ValueError):
        cost.samples_used(10, 0)


def test_bad_inputs_raise():
    for args in ((-1, 24, 0.4), (4, float("nan"), 0.4), (4, 24, "cheap"), (True, 24, 0.4)):
        with pytest.raises(ValueError, match="must be a finite number"):
            cost.training_cost(*args)
    with pytest.raises(ValueError):
        cost.implied_price_per_gpu_hour(42, 0, 24)


def test_paper_rows_list_open_rs_once_and_price_them():
    rows = cost.paper_rows(price_per_gpu_hour=1.0)
    names = [r[""] for r in rows]
    assert len(rows) == 6 and sum("Open-RS" in n for n in names) == 1
    open_rs = next(r for r in rows if r[""].startswith("Open-RS"))
    assert open_rs["GPU-hours"] == 96 and open_rs["cost at $1/GPU-h"] == 96.0 and open_rs["Cost Est."] == "$42"
    assert next(r for r in rows if r[""].startswith("rStar"))["cost at $1/GPU-h"] is None


def test_tables_match_the_paper_text():
    if not PAPER.is_file():
        pytest.skip(f"paper text not found at {PAPER} (set OPENRS_SHARED_DATA)")
    text = PAPER.read_text().replace("\\times", "×").replace("\\$", "$")
    for table, rows in (("Table 2", cost.PAPER_TABLE2), ("Table 3", cost.PAPER_TABLE3)):
        block = text[: text.index(f"{table}: Comparison")].rstrip().rsplit("\n\n", 1)[-1]
        lines = {line.split("\t")[0]: line.split("\t")[1:] for line in block.splitlines() if "\t" in line}
        assert lines[""] == [r.model for r in rows]
        for label, attr in zip(cost.TABLE_HEADERS[1:], cost.TABLE_COLUMNS[1:]):
            assert lines[label] == [getattr(r, attr) for r in rows], (table, label)
        for r in rows:  # the parsed numbers agree with the printed strings
            if r.cost_usd is not None:
                assert r.cost_est == f"${r.cost_usd:.0f}" and r.time == f"{r.hours:.0f}h"
            num, unit, gens = re.fullmatch(r"([\d.]+)([kM]) × (\d+)", r.rl_data).groups()
            assert (r.rl_prompts, r.generations) == (round(float(num) * {"k": 1e3, "M": 1e6}[unit]), int(gens))


def test_training_seconds_weights_step_time_by_logging_gap():
    metrics = [{"step": 1, "step_time": 2.0}, {"step": 5, "step_time": 3.0}, {"step": 10, "step_time": 4.0},
               {"step": 10, "loss": 0.1}]
    assert cost.training_seconds(metrics) == (2 + 4 * 3 + 5 * 4, "sum of logged step_time")
    assert cost.training_seconds(metrics, {"train_runtime": 99.5}) == (99.5, "train_runtime (summary.json)")
    assert cost.training_seconds([{"step": 1}]) == (None, "no step_time logged")


def _config(**kw):
    base = dict(exp=3, profile="demo", model_name_or_path="demo", use_cpu=True, use_vllm=False, num_gpus=0,
                per_device_train_batch_size=8, gradient_accumulation_steps=1, num_generations=4,
                sft_steps=8, sft_examples=64, output_dir="ignored")  # unknown keys are ignored
    return {**base, **kw}


def test_run_cost_of_a_cpu_demo_run():
    metrics = [{"step": s, "step_time": 1800.0} for s in (1, 2, 3)]
    row = cost.run_cost(_config(), metrics, price_per_gpu_hour=0.4375)
    assert row["prompts per step"] == 2 and row["RL Data"] == "6 × 4" and row["RL samples"] == 24
    assert row["Hardware"] == "CPU (no GPU)" and row["GPU-hours"] == 0 and row["hours"] == 1.5
    assert row["cost (USD)"] is None and row["SFT Data"] == "64 (format priming)"
    assert row["Base Model"] == "SmolLM2-135M-Instruct (embedded)"
    priced = cost.run_cost(_config(), metrics, 0.4375, price_per_cpu_hour=0.1)
    assert priced["cost (USD)"] == pytest.approx(0.15)


def test_run_cost_of_a_paper_run_counts_all_four_gpus():
    cfg = _config(profile="paper", model_name_or_path="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", use_cpu=False,
                  use_vllm=True, vllm_mode="server", num_gpus=4, per_device_train_batch_size=6,
                  gradient_accumulation_steps=4, num_generations=6, sft_steps=0)
    metrics = [{"step": 50, "step_time": 0.0}]
    row = cost.run_cost(cfg, metrics, price_per_gpu_hour=0.4375, summary={"train_runtime": 24 * 3600})
    # 3 training GPUs × 6 completions × 4 accumulation = 72 completions = 12 prompts per step
    assert row["prompts per step"] == 12 and row["RL Data"] == "600 × 6" and row["RL samples"] == 3600
    assert row["GPU-hours"] == 96 and row["cost (USD)"] == pytest.approx(42.0)
