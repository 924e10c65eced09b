"""What a run costs and how much data it uses: the paper's Tables 2–3 as a calculator.

cost = GPUs × hours × price per GPU-hour; samples used = prompts × generations per prompt.
The paper's Open-RS figure, $42 for 4 × A40 × 24 h, implies $0.4375 per A40-hour; its baselines'
figures imply about $1.89 per A100-hour (RunPod prices, the paper's footnote 3).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

PAPER_COST_USD = 42.0
"""Open-RS training cost (paper, abstract and Tables 2–3)."""
PAPER_GPUS = 4
"""4 × NVIDIA A40 48 GB (paper, Section 3)."""
PAPER_HOURS = 24.0
"""Wall-clock limit of each experiment (paper, Section 3)."""
PAPER_PRICE_PER_GPU_HOUR = PAPER_COST_USD / (PAPER_GPUS * PAPER_HOURS)
"""$0.4375 per A40-hour: implied by the paper's $42 for 4 × A40 × 24 h (not stated in the paper)."""


@dataclass(frozen=True)
class PaperCostRow:
    """One column of the paper's Table 2 or 3: the strings as printed, and the numbers they encode."""

    table: str
    model: str
    base_model: str
    sft_data: str
    rm_data: str
    rm: str
    rl_data: str
    hardware: str
    time: str
    cost_est: str
    # parsed from the strings above (None where the paper prints "–")
    rl_prompts: int
    generations: int
    num_gpus: int | None
    hours: float | None
    cost_usd: float | None

    @property
    def samples(self) -> int:
        """RL samples = prompts × generations per prompt (the paper's '7k × 6 = 42,000')."""
        return samples_used(self.rl_prompts, self.generations)

    @property
    def implied_price_per_gpu_hour(self) -> float | None:
        """cost / (GPUs × hours): the GPU-hour price the paper's estimate assumes."""
        if self.cost_usd is None or self.num_gpus is None or self.hours is None:
            return None
        return implied_price_per_gpu_hour(self.cost_usd, self.num_gpus, self.hours)


_R1 = "DeepSeek-R1-Distill-Qwen-1.5B"
_QM = "Qwen2.5-Math-7B"
_OPEN_RS = dict(model="Open-RS", base_model=_R1, sft_data="0", rm_data="0", rm="None", rl_data="7k × 6",
                hardware="1x 4 A40 48GB", time="24h", cost_est="$42", rl_prompts=7_000, generations=6,
                num_gpus=4, hours=24.0, cost_usd=42.0)

PAPER_TABLE2: tuple[PaperCostRow, ...] = (
    PaperCostRow("Table 2", "rStar-Math-7B", _QM, "7.3M", "7k", "None", "3.647M × 16",
                 "10x 8 H100 80GB, 15x 4 A100 40GB", "–", "–", 3_647_000, 16, 10 * 8 + 15 * 4, None, None),
    PaperCostRow("Table 2", "Eurus-2-7B-PRIME", _QM, "230k", "0", "Eurus-2-7B-SFT", "150k × 4",
                 "1x 8 A100 80GB", "72h", "$1088", 150_000, 4, 8, 72.0, 1088.0),
    PaperCostRow("Table 2", "Qwen2.5-7B-SimpleRL", _QM, "0", "0", "None", "8k × 8",
                 "4x 6 A100 80GB", "36h", "$1633", 8_000, 8, 4 * 6, 36.0, 1633.0),
    PaperCostRow("Table 2", **_OPEN_RS),
)
"""Table 2 of the paper (7B models), verbatim."""

PAPER_TABLE3: tuple[PaperCostRow, ...] = (
    PaperCostRow("Table 3", "DeepScaleR-1.5B-Preview", _R1, "0", "0", "None", "40k × 16",
                 "8x A100 80GB", "240h", "$3629", 40_000, 16, 8, 240.0, 3629.0),
    PaperCostRow("Table 3", "Still-3-1.5B-Preview", _R1, "0", "0", "None", "30k × 8",
                 "1x 8 A100 80GB", "150h", "$2268", 30_000, 8, 8, 150.0, 2268.0),
    PaperCostRow("Table 3", **_OPEN_RS),
)
"""Table 3 of the paper (1.5B models), verbatim."""

TABLE_COLUMNS = ("model", "base_model", "sft_data", "rm_data", "rm", "rl_data", "hardware", "time", "cost_est")
TABLE_HEADERS = ("", "Base Model", "SFT Data", "RM Data", "RM", "RL Data", "Hardware", "Time", "Cost Est.")


def training_cost(num_gpus: float, hours: float, price_per_gpu_hour: float) -> float:
    """Dollars for `num_gpus` GPUs held for `hours` hours at `price_per_gpu_hour`."""
    for name, v in (("num_gpus", num_gpus), ("hours", hours), ("price_per_gpu_hour", price_per_gpu_hour)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name}={v!r} must be a finite number >= 0")
    return num_gpus * hours * price_per_gpu_hour


def implied_price_per_gpu_hour(cost_usd: float, num_gpus: float, hours: float) -> float:
    """The GPU-hour price behind a cost estimate: cost / (GPUs × hours)."""
    if not num_gpus > 0 or not hours > 0:
        raise ValueError(f"num_gpus={num_gpus!r} and hours={hours!r} must be > 0")
    return cost_usd / (num_gpus * hours)


def samples_used(prompts: int, generations: int) -> int:
    """Completions sampled for RL: prompts × generations per prompt."""
    if prompts < 0 or generations < 1:
        raise ValueError(f"prompts={prompts!r} must be >= 0 and generations={generations!r} >= 1")
    return int(prompts) * int(generations)


def paper_rows(rows=PAPER_TABLE2 + PAPER_TABLE3, price_per_gpu_hour: float | None = None) -> list[dict]:
    """The paper's rows as dicts for display, each with its samples, implied price, and — given a price —
    what its GPU-hours would cost at that price (Open-RS listed once)."""
    out, seen = [], set()
    for r in rows:
        if r.model in seen:
            continue
        seen.add(r.model)
        d = {h: getattr(r, c) for h, c in zip(TABLE_HEADERS, TABLE_COLUMNS)}
        d[""] = f"{r.model} (paper, {r.table})"
        d["RL samples"] = r.samples
        d["GPU-hours"] = None if r.hours is None else r.num_gpus * r.hours
        d["$/GPU-hour implied"] = r.implied_price_per_gpu_hour
        if price_per_gpu_hour is not None:
            d[f"cost at ${price_per_gpu_hour:g}/GPU-h"] = (
                None if r.hours is None else training_cost(r.num_gpus, r.hours, price_per_gpu_hour))
        out.append(d)
    return out


def training_seconds(metrics: list[dict], summary: dict | None = None) -> tuple[float | None, str]:
    """Measured training time in seconds and where it came from.

    The trainer's `train_runtime` (summary.json) when present; else the sum of the logged `step_time`
    (seconds per optimizer step, averaged over the steps between two logs, so weighted by that gap).
    """
    if summary and isinstance(summary.get("train_runtime"), (int, float)):
        return float(summary["train_runtime"]), "train_runtime (summary.json)"
    total, prev, found = 0.0, 0, False
    for row in sorted((r for r in metrics if isinstance(r.get("step_time"), (int, float))), key=lambda r: r["step"]):
        total += row["step_time"] * max(1, row["step"] - prev)
        prev, found = row["step"], True
    return (total, "sum of logged step_time") if found else (None, "no step_time logged")


def run_cost(config: dict, metrics: list[dict], price_per_gpu_hour: float, summary: dict | None = None,
             price_per_cpu_hour: float | None = None) -> dict:
    """Our run in the paper's Table 2/3 terms: RL data, samples, hardware, measured time, cost.

    `config` is run.json (the ExperimentConfig as a dict). Prompts used = optimizer steps × prompts per
    step (from the config, as the trainer batches them); a CPU run is priced only if `price_per_cpu_hour`
    is given (it holds no GPU).
    """
    from openrs_nb.config import ExperimentConfig

    fields = {f.name for f in dataclasses.fields(ExperimentConfig)}
    cfg = ExperimentConfig(**{k: v for k, v in config.items() if k in fields})
    steps = max((int(r["step"]) for r in metrics if isinstance(r.get("step"), (int, float))), default=0)
    prompts = steps * cfg.prompts_per_step
    seconds, time_source = training_seconds(metrics, summary)
    hours = None if seconds is None else seconds / 3600
    if cfg.use_cpu:
        hardware, gpus = "CPU (no GPU)", 0
        price, unit = price_per_cpu_hour, "CPU machine-hour"
        cost = None if hours is None or price is None else training_cost(1, hours, price)
    else:
        gpus = cfg.num_gpus * cfg.num_machines
        hardware, price, unit = f"{cfg.num_machines}x {cfg.num_gpus} GPU", price_per_gpu_hour, "GPU-hour"
        cost = None if hours is None else training_cost(gpus, hours, price)
    model = {"demo": "SmolLM2-135M-Instruct (embedded)"}.get(cfg.model_name_or_path, cfg.model_name_or_path)
    return {
        "": f"exp {cfg.exp} ({cfg.profile}), {steps} steps — measured here",
        "Base Model": model,
        "SFT Data": f"{cfg.sft_examples} (format priming)" if cfg.sft_steps else "0",
        "RL Data": f"{prompts:,} × {cfg.num_generations}",
        "RL samples": samples_used(prompts, cfg.num_generations),
        "Hardware": hardware,
        "GPU-hours": None if hours is None else gpus * hours,
        "hours": hours,
        "time source": time_source,
        "price": None if price is None else f"${price:g} per {unit}",
        "cost (USD)": cost,
        "steps": steps,
        "prompts per step": cfg.prompts_per_step,
    }
