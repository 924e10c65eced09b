"""GPU smoke check of the paper path: a random-initialised R1-Distill-Qwen-1.5B and timed GRPO steps.

Nothing is downloaded: the model has DeepSeek-R1-Distill-Qwen-1.5B's architecture with random
weights, the tokenizer is the embedded demo one (49,152 ids, all below the model's 151,936), and the
prompts are generated. `benchmarks/bench_grpo_gpu.py` (`make gpu-smoke`) drives it; training goes
through `openrs_nb.train.train`, in this process on one GPU or in each process of the paper's
`accelerate launch` (`python -m openrs_nb.gpu_smoke --config run.json --output_dir DIR`).

Random weights rarely emit end-of-sequence, but they might: every completion is forced to exactly
`max_completion_length` tokens (min = max new tokens), so the timing measures the paper's worst case
and does not depend on the weights. Under vLLM, sampling is limited to the tokenizer's ids (its
detokenizer rejects ids it does not know; transformers decodes them to nothing).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

from openrs_nb.config import ExperimentConfig, load_experiment

# deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B's config.json, in transformers' Qwen2Config names. Qwen2
# puts biases on q/k/v only; the untied LM head is a second 151,936 × 1,536 matrix.
R1_DISTILL_QWEN_1_5B = dict(
    hidden_size=1536,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    intermediate_size=8960,
    vocab_size=151936,
    tie_word_embeddings=False,
    max_position_embeddings=131072,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    use_sliding_window=False,
    max_window_layers=21,
    attention_dropout=0.0,
    initializer_range=0.02,
)
PAPER_PARAMETERS = 1.78e9  # "1.5B" is the name; with the untied head the model holds 1.78B

GENERATION_NAMES = ("vLLM.generate", "transformers.generate", "transformers.generate_batch")
STEPS_FILE = "gpu_steps.rank{rank}.jsonl"
GIB = 2**30


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------
def model_config(scale: float = 1.0, **overrides):
    """Qwen2Config of R1-Distill-Qwen-1.5B, or a `scale`d variant (0 < scale <= 1).

    `scale` multiplies the width and the depth: layers = round(28·s), head size = 128·s rounded to a
    multiple of 32 (at least 32, what vLLM's attention kernels take), hidden = 12 heads × head size,
    intermediate = 8960·s rounded to a multiple of 64. The 12:2 query:key-value heads and the
    151,936-token vocabulary stay (the LM head's cost belongs to the tokenizer, not the depth).
    `overrides` set Qwen2Config fields directly (the tests build a 64-wide model this way).
    """
    from transformers import Qwen2Config

    if not 0 < scale <= 1:
        raise ValueError(f"scale={scale!r} must be in (0, 1]: 1 is the full 1.78B model, 0.25 a 7-layer variant")
    values = dict(R1_DISTILL_QWEN_1_5B)
    if scale != 1:
        head_dim = max(32, 32 * round(128 * scale / 32))
        values.update(
            hidden_size=values["num_attention_heads"] * head_dim,
            num_hidden_layers=max(1, round(values["num_hidden_layers"] * scale)),
            intermediate_size=max(64, 64 * round(values["intermediate_size"] * scale / 64)),
        )
    unknown = sorted(set(overrides) - set(Qwen2Config.__dataclass_fields__) - {"rope_theta"})
    if unknown:
        raise ValueError(f"unknown Qwen2Config field(s) {unknown}")
    values.update(overrides)
    heads, kv_heads = values["num_attention_heads"], values["num_key_value_heads"]
    if values["hidden_size"] % heads or heads % kv_heads:
        raise ValueError("hidden_size must divide by num_attention_heads, and those by num_key_value_heads")
    return Qwen2Config(**values)


def parameter_count(config) -> int:
    """Parameters of a Qwen2ForCausalLM with `config`, counted from the shapes (no model built)."""
    h, v = config.hidden_size, config.vocab_size
    d = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    attention = (h * q + q) + 2 * (h * kv + kv) + q * h  # q, k, v with bias; o without
    mlp = 3 * h * config.intermediate_size  # gate, up, down
    layer = attention + mlp + 2 * h  # + two RMSNorm weights
    embeddings = v * h * (1 if config.tie_word_embeddings else 2)
    return embeddings + config.num_hidden_layers * layer + h  # + the final norm


def build_random_model(config, *, dtype=None, device: str = "cpu", seed: int = 0):
    """A randomly initialised Qwen2ForCausalLM (transformers' own init, std 0.02), built on `device`."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)


def save_random_model(out_dir: str | Path, config, *, dtype=None, device: str = "cpu", seed: int = 0,
                      tokenizer: str = "demo") -> Path:
    """Build the random model and save it with the embedded tokenizer: a local path train.train can load."""
    from openrs_nb.models import load_tokenizer

    out_dir, config = Path(out_dir), copy.deepcopy(config)
    tok = load_tokenizer(tokenizer)
    if len(tok) > config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tok)} ids but the model only {config.vocab_size}")
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    model = build_random_model(config, dtype=dtype, device=device, seed=seed)
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    del model
    return out_dir


# ---------------------------------------------------------------------------------------------
# The run: the paper preset, completions of a forced length, no checkpoints
# ---------------------------------------------------------------------------------------------
def forced_length_kwargs(length: int, backend: str, sample_vocab_size: int | None = None) -> dict:
    """TRL `generation_kwargs` that make every completion exactly `length` tokens (min = max new tokens).

    transformers: GenerationConfig keys. vLLM (colocate, and server through its OpenAI API): SamplingParams
    keys, sampling only ids below `sample_vocab_size` — vLLM's detokenizer rejects ids its tokenizer lacks,
    while transformers decodes them to nothing, so it gets no mask (suppressing 100k ids is slow there).
    """
    if backend not in ("transformers", "vllm"):
        raise ValueError(f"backend={backend!r} is not valid; choose 'transformers' or 'vllm'")
    if length < 1 or (sample_vocab_size is not None and sample_vocab_size < 1):
        raise ValueError(f"need length >= 1 and sample_vocab_size >= 1 (got {length}, {sample_vocab_size})")
    if backend == "transformers":
        return {"min_new_tokens": length}
    kwargs = {"min_tokens": length}
    if sample_vocab_size:
        kwargs["allowed_token_ids"] = list(range(sample_vocab_size))
    return kwargs


@dataclass
class SmokeConfig(ExperimentConfig):
    """An experiment preset plus what only the smoke check needs; run.json carries both fields."""

    sample_vocab_size: int = 0
    """vLLM samples only token ids below this (the tokenizer's size); 0 = every id of the model."""

    def grpo_kwargs(self, output_dir: str = "runs/train"):
        kw = super().grpo_kwargs(output_dir)
        kw["generation_kwargs"] = forced_length_kwargs(self.max_completion_length,
                                                       "vllm" if self.use_vllm else "transformers",
                                                       self.sample_vocab_size or None)
        kw["save_strategy"] = "no"  # a checkpoint of random weights (and Adam) is minutes of writing for nothing
        return kw


SMOKE_FIELDS = ("sample_vocab_size",)


def smoke_config(exp: int, model_dir: str | Path, *, steps: int, sample_vocab_size: int = 0,
                 **overrides) -> SmokeConfig:
    """Experiment `exp`'s paper preset on the random model and generated prompts, for `steps` steps.

    `overrides` replace preset fields (gradient_accumulation_steps, max_completion_length, num_gpus, …).
    """
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    if sample_vocab_size < 0:
        raise ValueError(f"sample_vocab_size={sample_vocab_size} must be >= 0 (0 = every id)")
    base = dict(model_name_or_path=str(model_dir), dataset="demo", demo_levels=[1, 2, 3, 4, 5], max_steps=steps,
                log_completions=False, report_to="none", push_to_hub=False)
    cfg = load_experiment(exp, "paper", **{**base, **overrides})
    if cfg.max_prompt_length + cfg.max_completion_length > cfg.vllm_max_model_length:
        raise ValueError(f"max_prompt_length {cfg.max_prompt_length} + max_completion_length "
                         f"{cfg.max_completion_length} exceeds vllm_max_model_length {cfg.vllm_max_model_length}")
    cfg = dataclasses.replace(cfg, dataset_size=max(8, 2 * steps * cfg.prompts_per_step))
    return SmokeConfig(**dataclasses.asdict(cfg), sample_vocab_size=sample_vocab_size)


def load_smoke_config(path: str | Path) -> SmokeConfig:
    """The SmokeConfig saved in a run.json (train.train and launch_plan write them)."""
    values = json.loads(Path(path).read_text())
    extra = {k: values.pop(k) for k in SMOKE_FIELDS}
    cfg = load_experiment(values.pop("exp"), values.pop("profile"), **values)
    return SmokeConfig(**dataclasses.asdict(cfg), **extra)


def choose_launch(num_gpus: int, has_vllm: bool, vllm_mode: str | None = None) -> dict:
    """How to use the visible GPUs the way the paper profile would.

    One GPU: this process, vLLM colocated when installed. Several with vLLM: `accelerate launch`
    through train.launch_plan, server mode by default (vLLM on the last GPU, training on the others)
    or colocate. Several without vLLM: the paper's launch needs vLLM, so one GPU, in a child process
    that sees only GPU 0.
    """
    if num_gpus < 1:
        raise ValueError("no CUDA GPU visible")
    if vllm_mode not in (None, "server", "colocate"):
        raise ValueError(f"vllm_mode={vllm_mode!r} is not valid; choose 'server' or 'colocate'")
    if not has_vllm:
        note = None if num_gpus == 1 else (f"vllm is not installed, and the paper's {num_gpus}-GPU launch needs it: "
                                          "timing GPU 0 alone with transformers generate")
        return dict(launch="in_process" if num_gpus == 1 else "gpu0_subprocess", use_vllm=False, vllm_mode=None,
                    num_gpus=1, note=note)
    if num_gpus == 1:
        if vllm_mode == "server":
            raise ValueError("vllm_mode='server' needs 2 or more GPUs (one serves vLLM); one GPU runs colocate")
        return dict(launch="in_process", use_vllm=True, vllm_mode="colocate", num_gpus=1, note=None)
    return dict(launch="accelerate", use_vllm=True, vllm_mode=vllm_mode or "server", num_gpus=num_gpus, note=None)


def worker_plan(cfg: SmokeConfig, launch: dict, output_dir: str | Path):
    """The train.LaunchPlan for a launch other than in-process, each process running this module's worker.

    "accelerate": the paper's launch from train.launch_plan (vLLM server on the last GPU in server mode).
    "gpu0_subprocess": one process that sees only GPU 0.
    """
    from openrs_nb import train

    output_dir = Path(output_dir)
    if launch["launch"] == "accelerate":
        plan = train.launch_plan(cfg, output_dir)
    elif launch["launch"] == "gpu0_subprocess":
        plan = train.LaunchPlan(
            output_dir=output_dir, files={train.RUN_FILE: json.dumps(dataclasses.asdict(cfg), indent=1)},
            train_command=[sys.executable, "-m", "openrs_nb.train", "--config", str(output_dir / train.RUN_FILE),
                           "--output_dir", str(output_dir)],
            train_env={"CUDA_VISIBLE_DEVICES": "0"})
    else:
        raise ValueError(f"launch={launch['launch']!r} needs no plan; plans are for 'accelerate' and 'gpu0_subprocess'")
    plan.train_command[plan.train_command.index("openrs_nb.train")] = "openrs_nb.gpu_smoke"
    return plan


# ---------------------------------------------------------------------------------------------
# Timing: TRL's own profiler for generation, a callback for whole steps and memory
# ---------------------------------------------------------------------------------------------
TRL_TIMINGS: list[tuple[str, float]] = []
"""(name, seconds) of every block TRL times (`GRPOTrainer.vLLM.generate`, rewards, …), in order."""


def record_trl_timings() -> None:
    """Keep the durations TRL's profiler measures (it only sends them to wandb/mlflow/trackio).

    Generation runs inside TRL's first micro-step, where no callback can see it; TRL times it itself.
    """
    from trl.extras.profiling import ProfilingContext

    original = ProfilingContext._log_metrics
    if getattr(original, "keeps_timings", False):
        return

    def log_metrics(self, duration):
        TRL_TIMINGS.append((self.name.split(".", 1)[-1], duration))
        return original(self, duration)

    log_metrics.keeps_timings = True
    ProfilingContext._log_metrics = log_metrics


def _cuda():
    import torch

    return torch.cuda if torch.cuda.is_available() else None


class StepTimer(TrainerCallback):
    """Per optimizer step: wall time, TRL's generation / weight-sync / reward time, tokens, peak memory.

    Each process appends its rows to `<output_dir>/gpu_steps.rank<r>.jsonl`.
    """

    def __init__(self, output_dir: str | Path, reward_names: list[str]):
        self.dir = Path(output_dir)
        self.reward_names = [f"{n}_reward" for n in reward_names]
        self._t0 = self._mark = None
        self._row = None

    def on_step_begin(self, args, state, control, **kwargs):
        cuda = _cuda()
        if cuda:
            cuda.synchronize()
            cuda.reset_peak_memory_stats()
        self._mark, self._t0 = len(TRL_TIMINGS), time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        cuda = _cuda()
        if cuda:
            cuda.synchronize()
        step_s = time.perf_counter() - self._t0
        timings = TRL_TIMINGS[self._mark:]
        free, total = cuda.mem_get_info() if cuda else (None, None)
        self._row = {
            "step": state.global_step,
            "rank": args.process_index,
            "step_s": step_s,
            "generation_s": sum(s for n, s in timings if n in GENERATION_NAMES),
            "weight_sync_s": sum(s for n, s in timings if n == "sync_weights"),
            "reward_s": sum(s for n, s in timings if n in self.reward_names),
            "completions": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
            "peak_memory_gib": cuda.max_memory_allocated() / GIB if cuda else None,
            "device_memory_used_gib": (total - free) / GIB if cuda else None,
        }

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._row is None or not logs or "train_runtime" in logs:
            return
        row, self._row = self._row, None
        row.update(
            completion_length_mean=logs.get("completions/mean_length"),
            completion_length_min=logs.get("completions/min_length"),
            completion_length_max=logs.get("completions/max_length"),
            num_tokens=logs.get("num_tokens"),
            trl_step_time_s=logs.get("step_time"),
        )
        with open(self.dir / STEPS_FILE.format(rank=row["rank"]), "a") as f:
            f.write(json.dumps(row) + "\n")


def run_worker(cfg: SmokeConfig, output_dir: str | Path) -> Path:
    """GRPO for cfg through train.train, with the step timer (one process, or each launched process)."""
    from openrs_nb import train

    record_trl_timings()
    return train.train(cfg, output_dir, callbacks=[StepTimer(output_dir, cfg.reward_funcs)])


def read_step_rows(output_dir: str | Path) -> list[dict]:
    """All processes' step rows of a run."""
    from openrs_nb.files import read_jsonl

    return [r for p in sorted(Path(output_dir).glob(STEPS_FILE.format(rank="*"))) for r in read_jsonl(p)]


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------
def step_figures(rows: list[dict]) -> list[dict]:
    """One line per step: timings of rank 0, memory the most any process used, derived rates.

    train_s is the rest of the step: log-probabilities of policy and reference, loss, backward, optimizer.
    Token counts are over all processes: completions × mean length, and num_tokens' growth (prompt + completion).
    """
    by_step: dict[int, list[dict]] = {}
    for r in rows:
        by_step.setdefault(r["step"], []).append(r)
    out, seen_tokens = [], 0
    for step in sorted(by_step):
        ranks = by_step[step]
        r = min(ranks, key=lambda x: x["rank"])
        completion_tokens = round(r["completions"] * r["completion_length_mean"])
        total_tokens = r["num_tokens"] - seen_tokens if r.get("num_tokens") is not None else None
        seen_tokens = r.get("num_tokens") or seen_tokens
        mems = [x["peak_memory_gib"] for x in ranks if x.get("peak_memory_gib") is not None]
        used = [x["device_memory_used_gib"] for x in ranks if x.get("device_memory_used_gib") is not None]
        out.append({
            "step": step,
            "step_s": r["step_s"],
            "generation_s": r["generation_s"],
            "weight_sync_s": r["weight_sync_s"],
            "reward_s": r["reward_s"],
            "train_s": r["step_s"] - r["generation_s"] - r["weight_sync_s"] - r["reward_s"],
            "trl_step_time_s": r.get("trl_step_time_s"),
            "completions": r["completions"],
            "completion_tokens": completion_tokens,
            "prompt_tokens": total_tokens - completion_tokens if total_tokens is not None else None,
            "completion_length_min": r.get("completion_length_min"),
            "completion_length_max": r.get("completion_length_max"),
            "generation_tokens_per_s": completion_tokens / r["generation_s"] if r["generation_s"] > 0 else None,
            "tokens_per_s": completion_tokens / r["step_s"],
            "peak_memory_gib": max(mems) if mems else None,
            "device_memory_used_gib": max(used) if used else None,
        })
    return out


def build_report(rows: list[dict], *, run: dict, model: dict, device: dict, planned_steps: int = 500,
                 paper_completions_per_step: int = 72) -> dict:
    """The JSON report: per-step figures, their medians after the first (warm-up) step, and the
    estimated wall time of `planned_steps` steps at that rate, as measured and at the paper's batch.

    `run` must hold `completion_tokens` (the forced length); `paper_completions_per_step` is
    3 training GPUs × 6 × 4 accumulation = 72 for the paper's 4×A40.
    """
    steps = step_figures(rows)
    if not steps:
        raise ValueError("no step rows: the run logged no optimizer step")
    measured = steps[1:] if len(steps) > 1 else steps

    def median(key):
        values = [s[key] for s in measured if s[key] is not None]
        return statistics.median(values) if values else None

    step_s = median("step_s")
    completions = steps[0]["completions"]
    lengths = {(s["completion_length_min"], s["completion_length_max"]) for s in steps}
    mems = [s["peak_memory_gib"] for s in steps if s["peak_memory_gib"] is not None]
    hours = planned_steps * step_s / 3600
    summary = {
        "measured_steps": [s["step"] for s in measured],
        "median_step_s": step_s,
        "median_generation_s": median("generation_s"),
        "median_weight_sync_s": median("weight_sync_s"),
        "median_reward_s": median("reward_s"),
        "median_train_s": median("train_s"),
        "median_generation_tokens_per_s": median("generation_tokens_per_s"),
        "median_tokens_per_s": median("tokens_per_s"),
        "peak_memory_gib": max(mems) if mems else None,
        "completions_per_step": completions,
        "forced_length_ok": lengths == {(run["completion_tokens"], run["completion_tokens"])},
        "planned_steps": planned_steps,
        "estimated_hours": hours,
        "paper_completions_per_step": paper_completions_per_step,
        "estimated_hours_paper_batch": hours * paper_completions_per_step / completions,
    }
    return {"schema": "openrs_nb.gpu_smoke/1", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "device": device, "model": model, "run": run, "steps": steps, "summary": summary}


def format_report(report: dict) -> str:
    """The report as text: one line per step, then the summary."""
    def f(v, spec=".1f"):
        return "-" if v is None else format(v, spec)

    run, s = report["run"], report["summary"]
    lines = [f"{'step':>4} {'gen s':>8} {'sync s':>7} {'reward s':>8} {'train s':>8} {'step s':>8} "
             f"{'gen tok/s':>10} {'tok/s':>8} {'peak GiB':>9} {'used GiB':>9}"]
    for r in report["steps"]:
        lines.append(f"{r['step']:>4} {f(r['generation_s']):>8} {f(r['weight_sync_s']):>7} {f(r['reward_s']):>8} "
                     f"{f(r['train_s']):>8} {f(r['step_s']):>8} {f(r['generation_tokens_per_s'], '.0f'):>10} "
                     f"{f(r['tokens_per_s'], '.0f'):>8} {f(r['peak_memory_gib']):>9} "
                     f"{f(r['device_memory_used_gib']):>9}")
    warmup = " (step 1, warm-up, left out)" if s["measured_steps"][0] > report["steps"][0]["step"] else ""
    lines += [
        "",
        f"median over steps {s['measured_steps']}{warmup}: {f(s['median_step_s'])} s/step = generation "
        f"{f(s['median_generation_s'])} + weight sync {f(s['median_weight_sync_s'])} + rewards "
        f"{f(s['median_reward_s'])} + training {f(s['median_train_s'])}",
        f"{s['completions_per_step']} completions × {run['completion_tokens']} tokens per step: generation "
        f"{f(s['median_generation_tokens_per_s'], '.0f')} tok/s, whole step {f(s['median_tokens_per_s'], '.0f')} "
        f"completion tok/s; peak GPU memory {f(s['peak_memory_gib'])} GiB (torch, the busiest training process)",
        f"every completion exactly {run['completion_tokens']} tokens: {s['forced_length_ok']}",
        f"estimated {s['planned_steps']} steps here: {f(s['estimated_hours'], '.2f')} h; at the paper's "
        f"{s['paper_completions_per_step']} completions per step and this per-completion rate: "
        f"{f(s['estimated_hours_paper_batch'], '.2f')} h",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Entry point of each process of an accelerate launch
# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """`python -m openrs_nb.gpu_smoke --config run.json --output_dir DIR` (what launch_plan starts)."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--config", required=True, help="run.json with the SmokeConfig")
    ap.add_argument("--output_dir", required=True)
    args = ap.parse_args(argv)
    run_worker(load_smoke_config(args.config), args.output_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
