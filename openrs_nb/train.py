"""GRPO training with TRL: the CPU demo in-process, the paper's multi-GPU run as a launch plan.

Outputs of a run in `output_dir`: `metrics.jsonl` (one line per logged step, appended as it
happens), `completions.jsonl` (sampled completions with their rewards), `checkpoint-<step>/`,
`run.json` (the config), `summary.json` (when training ends).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from openrs_nb.config import ExperimentConfig, load_experiment

# Seconds-long settings for the test suite (OPENRS_SMOKE): shows the machinery runs, not that it learns.
SMOKE_OVERRIDES = dict(max_steps=2, save_steps=1, sft_steps=2, sft_examples=8, dataset_size=16,
                       max_completion_length=24)
NOTEBOOK_PARAMS = {"exp", "profile", "max_steps", "output_dir", "resume", "dry_run", "smoke", "run_dir"}

METRICS_FILE = "metrics.jsonl"
COMPLETIONS_FILE = "completions.jsonl"
RUN_FILE = "run.json"


# ---------------------------------------------------------------------------------------------
# Data and rewards
# ---------------------------------------------------------------------------------------------
def load_train_dataset(cfg: ExperimentConfig, tokenizer):
    """The experiment's training rows with a chat `prompt` column, over-long prompts dropped."""
    from openrs_nb import data

    if cfg.dataset == "demo":
        ds = data.make_demo_dataset(cfg.dataset_size or 512, seed=cfg.seed, split="train", levels=cfg.demo_levels)
    else:
        ds = _load_rows(cfg.dataset)
        if cfg.dataset_size:
            ds = ds.shuffle(seed=cfg.seed).select(range(min(cfg.dataset_size, len(ds))))
    return data.build_prompts(ds, cfg.system_prompt, tokenizer, cfg.max_prompt_length)


def _load_rows(name_or_path: str):
    """A Hub dataset id (train split) or a local JSONL/Parquet file or `save_to_disk` folder."""
    from datasets import load_dataset, load_from_disk

    p = Path(name_or_path)
    if p.is_dir() and (p / "dataset_info.json").exists():
        return load_from_disk(str(p))
    if p.suffix in (".jsonl", ".json"):
        return load_dataset("json", data_files=str(p), split="train")
    if p.suffix == ".parquet":
        return load_dataset("parquet", data_files=str(p), split="train")
    try:
        return load_dataset(name_or_path, split="train")
    except Exception as err:  # noqa: BLE001 — re-raised with what to do
        raise OSError(
            f"could not load dataset {name_or_path!r} ({type(err).__name__}: {err}). Give a Hub id on a machine "
            "with internet, a local .jsonl/.parquet file or save_to_disk folder, or 'demo'."
        ) from err


def reward_funcs(cfg: ExperimentConfig):
    """The experiment's reward functions, in the order of cfg.reward_weights."""
    from openrs_nb.rewards import build_reward_funcs

    return build_reward_funcs(cfg.reward_funcs, format_mode=cfg.format_mode, cosine_max_len=cfg.cosine_max_len)


# ---------------------------------------------------------------------------------------------
# Metrics: appended to disk as they are logged
# ---------------------------------------------------------------------------------------------
def _trainer_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class MetricsWriter(_trainer_callback_base()):
    """Append every logged step to metrics.jsonl (and its sampled completions to completions.jsonl)."""

    def __init__(self, output_dir: str | Path, progress_every: int = 0):
        self.dir = Path(output_dir)
        self.trainer = None  # set after the trainer exists, to read the completions TRL keeps
        self.progress_every = progress_every

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "train_runtime" in logs:  # the end-of-training summary, not a step
            (self.dir / "summary.json").write_text(json.dumps(logs, indent=1))
            return
        row = {"step": state.global_step, **{k: _plain(v) for k, v in logs.items()}}
        _append_jsonl(self.dir / METRICS_FILE, [row])
        self._log_completions(state.global_step)

    def _log_completions(self, step: int) -> None:
        logs = getattr(self.trainer, "_logs", None)
        if not logs or not logs.get("completion"):
            return
        names = list(logs["rewards"])
        rows = []
        for i, (prompt, completion) in enumerate(zip(logs["prompt"], logs["completion"])):
            rows.append({
                "step": step,
                "prompt": _plain(prompt),
                "completion": _plain(completion),
                "advantage": _plain(logs["advantages"][i]) if i < len(logs["advantages"]) else None,
                "rewards": {n: _plain(logs["rewards"][n][i]) for n in names if i < len(logs["rewards"][n])},
            })
        _append_jsonl(self.dir / COMPLETIONS_FILE, rows)


def _plain(v):
    """JSON-friendly: tensors and numpy scalars to floats, chat messages to their text."""
    if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
        return v.item()
    if isinstance(v, list) and v and isinstance(v[0], dict) and "content" in v[0]:
        return v[-1]["content"]
    return v


def _append_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file; a truncated last line (a crash mid-write) is skipped."""
    rows = []
    lines = Path(path).read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise
    return rows


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint-<step> folder with the highest step, or None."""
    ckpts = [p for p in Path(output_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[-1]), default=None)


def _prepare_output_dir(output_dir: Path, resume: bool) -> Path | None:
    """Check the folder fits `resume`; on resume trim metrics past the checkpoint (they will be redone)."""
    ckpt = latest_checkpoint(output_dir)
    if resume:
        if ckpt is None:
            raise FileNotFoundError(f"resume=True but {output_dir} holds no checkpoint-<step> folder to resume from")
        step = int(ckpt.name.split("-")[-1])
        for name in (METRICS_FILE, COMPLETIONS_FILE):
            path = output_dir / name
            if path.exists():
                rows = read_jsonl(path)
                later = [r for r in rows if r.get("step", 0) > step]
                if later:  # keep the steps that will be recomputed, beside the file, never delete them
                    _append_jsonl(output_dir / (name + f".after-checkpoint-{step}"), later)
                path.write_text("".join(json.dumps(r) + "\n" for r in rows if r.get("step", 0) <= step))
        print(f"[openrs_nb] resuming from {ckpt} (step {step})")
        return ckpt
    if (output_dir / METRICS_FILE).exists() or ckpt is not None:
        raise FileExistsError(
            f"{output_dir} already holds a run. Pass resume=True to continue it, or choose another output_dir "
            "(nothing is overwritten)."
        )
    return None


# ---------------------------------------------------------------------------------------------
# Format priming (demo only)
# ---------------------------------------------------------------------------------------------
def priming_target(solution: str, answer: str, format_mode: str) -> str:
    """The completion a format-priming example teaches: reasoning in <think>, answer boxed."""
    reasoning = solution.rsplit("\n", 1)[0].strip()
    if format_mode == "prefilled_think":  # the template already opened <think>
        return f"{reasoning}\n</think>\n<answer>\\boxed{{{answer}}}</answer>"
    return f"<think>\n{reasoning}\n</think>\n<answer>\\boxed{{{answer}}}</answer>"


def format_priming(cfg: ExperimentConfig, output_dir: Path) -> Path:
    """A short SFT on worked examples so the small demo model emits the format GRPO rewards.

    R1-Distill learned this format from distillation; SmolLM2-135M never saw it, and without
    priming every completion in a group scores the same, so GRPO's advantages are all zero.
    Saves the primed model to output_dir/format-priming (GRPO's policy and reference start there).
    """
    from trl import SFTConfig, SFTTrainer

    from openrs_nb import data
    from openrs_nb.models import load_policy, load_tokenizer

    out = output_dir / "format-priming"
    if (out / "config.json").exists():
        return out
    tokenizer = load_tokenizer(cfg.model_name_or_path)
    model = load_policy(cfg.model_name_or_path, attn_implementation=cfg.attn_implementation)
    rows = data.make_demo_dataset(cfg.sft_examples, seed=cfg.seed + 1, split="train", levels=cfg.demo_levels)
    rows = data.build_prompts(rows, cfg.system_prompt)
    sft_data = rows.map(
        lambda r: {"completion": [{"role": "assistant",
                                   "content": priming_target(r["solution"], r["answer"], cfg.format_mode)}]},
        remove_columns=[c for c in rows.column_names if c != "prompt"],
    )
    args = SFTConfig(
        output_dir=str(out),
        max_steps=cfg.sft_steps,
        per_device_train_batch_size=max(1, cfg.sft_examples // cfg.sft_steps),
        learning_rate=cfg.sft_learning_rate,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=cfg.use_cpu,
        bf16=cfg.bf16,
        seed=cfg.seed,
        completion_only_loss=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=sft_data, processing_class=tokenizer)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    _append_jsonl(output_dir / "format_priming.jsonl", [{"step": i + 1, "loss": v} for i, v in enumerate(losses)])
    trainer.model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# ---------------------------------------------------------------------------------------------
# Training in this process (CPU demo, one GPU, or each process of an accelerate launch)
# ---------------------------------------------------------------------------------------------
def train(cfg: ExperimentConfig, output_dir: str | Path, resume: bool = False, callbacks=None) -> Path:
    """Run GRPO for `cfg` and return output_dir; metrics and checkpoints land there as they happen.
    `callbacks`: extra transformers TrainerCallbacks (e.g. the GPU smoke check's step timer)."""
    from trl import GRPOTrainer

    from openrs_nb.models import load_tokenizer, resolve_model_path

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    ckpt = _prepare_output_dir(output_dir, resume)
    (output_dir / RUN_FILE).write_text(json.dumps(dataclasses.asdict(cfg), indent=1))

    tokenizer = load_tokenizer(cfg.model_name_or_path)
    # A path, not a loaded model: TRL builds the KL reference from the same path, so after format
    # priming both policy and reference start from the primed weights.
    model = str(format_priming(cfg, output_dir)) if cfg.sft_steps else resolve_model_path(cfg.model_name_or_path)
    dataset = load_train_dataset(cfg, tokenizer)
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM")
    writer = MetricsWriter(output_dir)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs(cfg),
        args=cfg.to_grpo_config(str(output_dir)),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[writer, *(callbacks or [])],
    )
    writer.trainer = trainer
    trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    return output_dir


def demo_learning_gain(metrics: list[dict], key: str = "reward") -> tuple[float, float]:
    """Mean of `key` over the first and last quarter of logged steps (the demo's learning check)."""
    values = [m[key] for m in metrics if key in m]
    if len(values) < 4:
        raise ValueError(f"need at least 4 logged steps with {key!r}, got {len(values)}")
    q = len(values) // 4
    return sum(values[:q]) / q, sum(values[-q:]) / q


# ---------------------------------------------------------------------------------------------
# The paper's multi-GPU launch: a vLLM server on one GPU, accelerate + DeepSpeed ZeRO-2 on the rest
# ---------------------------------------------------------------------------------------------
@dataclass
class LaunchPlan:
    """Exact commands and files of a multi-GPU run; `write()` saves them, `run_launch` starts them."""

    output_dir: Path
    files: dict[str, str] = field(default_factory=dict)
    """Relative path under output_dir -> file content (accelerate config, run.json)."""
    vllm_command: list[str] | None = None
    """The vLLM server (server mode), or None (colocate mode: vLLM lives inside each training process)."""
    vllm_env: dict[str, str] = field(default_factory=dict)
    train_command: list[str] = field(default_factory=list)
    train_env: dict[str, str] = field(default_factory=dict)
    health_url: str | None = None

    def shell(self) -> str:
        """The plan as a shell script a user could run by hand."""
        lines = ["#!/usr/bin/env bash", "set -euo pipefail", f"cd {shlex.quote(str(Path.cwd()))}"]
        if self.vllm_command:
            env = " ".join(f"{k}={v}" for k, v in self.vllm_env.items())
            lines += [f"{env} {shlex.join(self.vllm_command)} > {self.output_dir}/vllm.log 2>&1 &",
                      "VLLM_PID=$!; trap 'kill $VLLM_PID' EXIT",
                      f"until curl -sf {self.health_url} >/dev/null; do sleep 5; done"]
        env = " ".join(f"{k}={v}" for k, v in self.train_env.items())
        lines.append(f"{env} {shlex.join(self.train_command)}".strip())
        return "\n".join(lines) + "\n"

    def write(self) -> list[Path]:
        """Write the configs and launch.sh into output_dir; returns the paths."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for rel, text in {**self.files, "launch.sh": self.shell()}.items():
            p = self.output_dir / rel
            p.write_text(text)
            paths.append(p)
        return paths


ZERO2_TEMPLATE = """\
# accelerate + DeepSpeed ZeRO-2 (no offload, bf16): the authors' zero2.yaml.
compute_environment: LOCAL_MACHINE
debug: false
deepspeed_config:
  deepspeed_multinode_launcher: standard
  offload_optimizer_device: none
  offload_param_device: none
  zero3_init_flag: false
  zero_stage: 2
distributed_type: DEEPSPEED
downcast_bf16: 'no'
machine_rank: {machine_rank}
main_process_ip: {main_process_ip}
main_process_port: {main_process_port}
main_training_function: main
mixed_precision: bf16
num_machines: {num_machines}
num_processes: {num_processes}
rdzv_backend: static
same_network: true
tpu_env: []
tpu_use_cluster: false
tpu_use_sudo: false
use_cpu: false
"""


def accelerate_config(cfg: ExperimentConfig, machine_rank: int = 0, main_process_ip: str = "127.0.0.1",
                      main_process_port: int = 29500) -> str:
    """The ZeRO-2 accelerate config for cfg's process count (recipes/zero2.yaml is the 4-GPU one)."""
    return ZERO2_TEMPLATE.format(machine_rank=machine_rank, main_process_ip=main_process_ip,
                                 main_process_port=main_process_port, num_machines=cfg.num_machines,
                                 num_processes=cfg.train_processes)


def launch_plan(cfg: ExperimentConfig, output_dir: str | Path, *, vllm_port: int = 8000, machine_rank: int = 0,
                main_process_ip: str = "127.0.0.1") -> LaunchPlan:
    """Commands for the paper profile: server mode puts vLLM on the last GPU of machine 0 and trains
    on the others; colocate mode trains and generates on every GPU."""
    if cfg.use_cpu or not cfg.use_vllm:
        raise ValueError("launch_plan is for GPU runs with vLLM (the paper profile); the demo trains in-process")
    output_dir = Path(output_dir)
    gpus = list(range(cfg.num_gpus))
    server = cfg.vllm_mode == "server"
    train_gpus = gpus[:-1] if server else gpus
    host = main_process_ip if cfg.num_machines > 1 else "127.0.0.1"
    run_cfg = dataclasses.replace(cfg, vllm_server_base_url=f"http://{host}:{vllm_port}" if server else None)
    plan = LaunchPlan(output_dir=output_dir)
    plan.files["accelerate_zero2.yaml"] = accelerate_config(cfg, machine_rank, main_process_ip)
    plan.files[RUN_FILE] = json.dumps(dataclasses.asdict(run_cfg), indent=1)
    if server:
        plan.vllm_command = [
            "trl", "vllm-serve", "--model", cfg.model_name_or_path, "--port", str(vllm_port),
            "--gpu_memory_utilization", str(cfg.vllm_gpu_memory_utilization),
            "--max_model_len", str(cfg.vllm_max_model_length), "--enforce_eager", "true",
        ]
        plan.vllm_env = {"CUDA_VISIBLE_DEVICES": str(gpus[-1])}
        plan.health_url = f"http://{host}:{vllm_port}/health"
    plan.train_command = [
        "accelerate", "launch", "--config_file", str(output_dir / "accelerate_zero2.yaml"),
        "-m", "openrs_nb.train", "--config", str(output_dir / RUN_FILE), "--output_dir", str(output_dir),
    ]
    plan.train_env = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, train_gpus))}
    return plan


def run_launch(plan: LaunchPlan, resume: bool = False, health_timeout: float = 900.0) -> int:
    """Start the plan: vLLM server first (wait until healthy), then training; stream logs here.
    Ctrl-C / interrupting the notebook stops both cleanly. Returns the training exit code."""
    import urllib.request

    plan.write()
    procs: list[subprocess.Popen] = []

    def start(cmd, env, log_name):
        log = open(plan.output_dir / log_name, "a")
        # `trl` and `accelerate` are found beside this interpreter even when its venv is not activated
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        p = subprocess.Popen(cmd, env={**os.environ, "PATH": path, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, bufsize=1, start_new_session=True)
        procs.append(p)
        return p, log

    def stream(p, log, until=None):
        for line in p.stdout:
            print(line, end="")
            log.write(line)
            if until and until():
                return

    try:
        if plan.vllm_command:
            server, slog = start(plan.vllm_command, plan.vllm_env, "vllm.log")
            deadline = time.time() + health_timeout
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"the vLLM server exited with code {server.returncode}; see vllm.log")
                try:
                    urllib.request.urlopen(plan.health_url, timeout=2)
                    print(f"[openrs_nb] vLLM server healthy at {plan.health_url}")
                    break
                except OSError:
                    if time.time() > deadline:
                        raise TimeoutError(f"vLLM server not healthy after {health_timeout:.0f}s; see vllm.log")
                    time.sleep(5)
        cmd = plan.train_command + (["--resume"] if resume else [])
        trainer, tlog = start(cmd, plan.train_env, "train.log")
        stream(trainer, tlog)
        return trainer.wait()
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# Notebook helpers
# ---------------------------------------------------------------------------------------------
def overrides_from_namespace(namespace: dict, injected: set[str], notebook_params: set[str]) -> dict:
    """Config overrides papermill injected (`-p learning_rate 5e-6`): the `injected` names (new since
    the parameters cell) that are config fields. Other new names raise ValueError listing the valid
    ones (papermill itself only warns about unknown parameters)."""
    fields = {f.name for f in dataclasses.fields(ExperimentConfig)} - {"exp", "profile"}
    injected = {n for n in injected if not n.startswith("_")}
    unknown = sorted(injected - fields - notebook_params)
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown}. Notebook parameters: {', '.join(sorted(notebook_params))}; "
            f"config fields: {', '.join(sorted(fields))}"
        )
    return {n: namespace[n] for n in sorted(injected & fields)}


def main(argv: list[str] | None = None) -> None:
    """Entry point of each process of an accelerate launch: `python -m openrs_nb.train --config run.json`."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--config", required=True, help="run.json written by launch_plan")
    ap.add_argument("--output_dir", required=True)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    values = json.loads(Path(args.config).read_text())
    cfg = load_experiment(values.pop("exp"), values.pop("profile"), **values)
    train(cfg, args.output_dir, resume=args.resume)


if __name__ == "__main__":
    main(sys.argv[1:])
