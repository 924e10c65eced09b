"""GRPO training with TRL: the CPU demo in this process, the paper's run (and its CPU rehearsal) as a launch.

`run_experiment(cfg, output_dir)` is the one entry point: the `demo` profile trains here; `paper` and
`rehearsal` write a launch plan (`launch.sh`, the accelerate recipe, `run.json`) and start it, each
process running `python -m openrs_nb.train --config run.json`.

What a run leaves in `output_dir`, written so that a crash never costs what was already saved:
- `run.json`: the ExperimentConfig, written once before training starts; `grpo_config.yaml`: the exact
  `trl.GRPOConfig`, readable by TRL's own `TrlParser`;
- `metrics.jsonl` (one line per logged step) and `completions.jsonl` (every sampled completion with
  its rewards and advantage), appended as they happen;
- `checkpoint-<step>/`: a checkpoint counts once it is complete (`checkpoint_missing`); a partial one
  left by a crash is renamed `incomplete-checkpoint-<step>` on resume, never deleted;
- `segments.json` (wall time of the first run and of each resume) and `summary.json` (at the end;
  `train_runtime` adds up every segment);
- `format-priming/` (demo only), `train.lock` (held by the training process; a second training into
  the same folder is refused).
"""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import functools
import hashlib
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from openrs_nb.config import ExperimentConfig, load_experiment, project_path
from openrs_nb.files import (
    append_jsonl,
    read_json,
    read_jsonl,  # noqa: F401 (re-exported: older code imports it from here)
    write_json_atomic,
    write_text_atomic,
)
from openrs_nb.generation import fast_generate

logger = logging.getLogger(__name__)

# Seconds-long settings for the test suite (OPENRS_SMOKE): shows the machinery runs, not that it learns.
SMOKE_OVERRIDES = dict(max_steps=2, save_steps=1, sft_steps=2, sft_examples=8, dataset_size=16,
                       max_completion_length=24)
NOTEBOOK_PARAMS = {"exp", "profile", "max_steps", "output_dir", "resume", "dry_run", "smoke", "run_dir",
                   "machine_rank", "main_process_ip", "main_process_port"}

METRICS_FILE = "metrics.jsonl"
COMPLETIONS_FILE = "completions.jsonl"
RUN_FILE = "run.json"
GRPO_CONFIG_FILE = "grpo_config.yaml"
SEGMENTS_FILE = "segments.json"
SUMMARY_FILE = "summary.json"
LOCK_FILE = "train.lock"
PRIMING_DIR = "format-priming"
PRIMING_LOSSES = "format_priming.jsonl"
REPLICA_FILE = "replica.rank{rank}.json"
RECIPES = {"zero2": "recipes/accelerate_configs/zero2.yaml", "ddp": "recipes/accelerate_configs/ddp.yaml"}


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
# What gets logged: metrics from the trainer's on_log, completions from the reward functions
# ---------------------------------------------------------------------------------------------
class CompletionRecorder:
    """Keeps what the reward functions were given (prompt, completion) and returned, until the step is logged.

    TRL calls every reward function with the same prompts and completions of this process's generation
    batch (its public reward-function interface), so wrapping them records every completion without
    reading the trainer's private state. The advantage is Eq. 3 on the weighted reward sum, as TRL
    computes it (`grpo.group_advantages`; groups are whole within a process: validate() keeps the
    per-device batch a multiple of num_generations).
    """

    def __init__(self, weights: list[float], num_generations: int, scale: bool = True):
        self.weights, self.num_generations, self.scale = list(weights), num_generations, scale
        self._batches: list[dict] = []

    def wrap(self, funcs: list) -> list:
        """The reward functions, each recording its inputs and outputs; names unchanged (TRL logs by name)."""
        return [self._wrap_one(f) for f in funcs]

    def _wrap_one(self, func):
        def reward(prompts=None, completions=None, **kwargs):
            values = func(prompts=prompts, completions=completions, **kwargs)
            self._record(func.__name__, prompts, completions, values)
            return values

        reward.__name__ = reward.__qualname__ = func.__name__
        reward.__doc__ = func.__doc__
        return reward

    def _record(self, name, prompts, completions, values) -> None:
        if not self._batches or name in self._batches[-1]["rewards"]:  # the first function of a new batch
            self._batches.append({"prompts": list(prompts), "completions": list(completions), "rewards": {}})
        self._batches[-1]["rewards"][name] = [None if v is None else float(v) for v in values]

    def pop_rows(self, step: int) -> list[dict]:
        """completions.jsonl rows of everything recorded since the last call."""
        from openrs_nb.grpo import group_advantages

        rows = []
        for batch in self._batches:
            rewards = batch["rewards"]
            names = list(rewards)
            totals = [sum(w * (rewards[n][i] or 0.0) for n, w in zip(names, self.weights))
                      for i in range(len(batch["completions"]))]
            scorable = all(r is not None for n in names for r in rewards[n])
            try:
                advantages = group_advantages(totals, self.num_generations, scale=self.scale).tolist()
            except ValueError:  # a batch that is not whole groups (never in training): no advantage to report
                advantages = None
            if not scorable:  # TRL zeroes the advantage of unscorable rows; we report none rather than guess
                advantages = None
            for i, (prompt, completion) in enumerate(zip(batch["prompts"], batch["completions"])):
                rows.append({"step": step, "prompt": _plain(prompt), "completion": _plain(completion),
                             "advantage": advantages[i] if advantages else None,
                             "rewards": {n: rewards[n][i] for n in names}})
        self._batches.clear()
        return rows


def _trainer_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class MetricsWriter(_trainer_callback_base()):
    """Append every logged step to metrics.jsonl and its completions to completions.jsonl (main process).

    Uses only the public callback interface: on_log's `logs`, the TrainerState, and the rows a
    CompletionRecorder kept (gathered from every process). Also keeps segments.json, the wall time of
    this training segment, so that a run killed and resumed still counts all the time it used.
    """

    def __init__(self, output_dir: str | Path, recorder: CompletionRecorder | None = None):
        self.dir = Path(output_dir)
        self.recorder = recorder
        self._t0 = time.time()
        self._segments: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = time.time()
        if state.is_world_process_zero:
            path = self.dir / SEGMENTS_FILE
            self._segments = read_json(path) if path.is_file() else []
            self._segments.append({"start_step": state.global_step, "end_step": state.global_step,
                                   "runtime_s": 0.0, "finished": False,
                                   "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            write_json_atomic(path, self._segments)

    def on_log(self, args, state, control, logs=None, **kwargs):
        rows = self.recorder.pop_rows(state.global_step) if self.recorder else []
        if args.world_size > 1:  # every process calls on_log at the same point: gather its completions
            from accelerate.utils import gather_object

            rows = gather_object(rows)
        if not state.is_world_process_zero or not logs:
            return
        if "train_runtime" in logs:  # the end-of-training summary, not a step
            self._end_segment(state, logs["train_runtime"], finished=True)
            total = sum(s["runtime_s"] for s in self._segments)
            summary = {**{k: _plain(v) for k, v in logs.items()}, "segment_train_runtime": logs["train_runtime"],
                       "train_runtime": total, "segments": self._segments}
            write_json_atomic(self.dir / SUMMARY_FILE, summary)
            return
        append_jsonl(self.dir / METRICS_FILE, [{"step": state.global_step, **{k: _plain(v) for k, v in logs.items()}}])
        if rows:
            append_jsonl(self.dir / COMPLETIONS_FILE, rows)
        self._end_segment(state, time.time() - self._t0, finished=False)

    def _end_segment(self, state, runtime: float, finished: bool) -> None:
        if not self._segments:
            return
        self._segments[-1].update(end_step=state.global_step, runtime_s=round(float(runtime), 3), finished=finished)
        write_json_atomic(self.dir / SEGMENTS_FILE, self._segments)


class ReplicaFingerprint(_trainer_callback_base()):
    """At the end of a multi-process run, each process writes a SHA-256 of its model's parameters.

    Data-parallel training keeps one model per process and must keep them identical (DDP averages
    the gradients; ZeRO-2 shards optimizer state, not parameters): `replicas_identical` compares them.
    """

    def __init__(self, output_dir: str | Path):
        self.dir = Path(output_dir)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if args.world_size > 1 and model is not None:
            write_json_atomic(self.dir / REPLICA_FILE.format(rank=args.process_index),
                              {"rank": args.process_index, "step": state.global_step,
                               "sha256": parameters_sha256(model)})


def parameters_sha256(model) -> str:
    """SHA-256 over every parameter's name and raw bytes (bit-identical models hash the same)."""
    import torch

    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def replicas_identical(output_dir: str | Path) -> tuple[bool, dict[int, str]]:
    """(all processes ended with the same parameters, rank -> hash) from the replica files."""
    hashes = {r["rank"]: r["sha256"] for p in sorted(Path(output_dir).glob(REPLICA_FILE.format(rank="*")))
              for r in [read_json(p)]}
    return len(set(hashes.values())) == 1 and len(hashes) > 1, hashes


def _plain(v):
    """JSON-friendly: tensors and numpy scalars to floats, chat messages to their text."""
    if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
        return v.item()
    if isinstance(v, list) and v and isinstance(v[0], dict) and "content" in v[0]:
        return v[-1]["content"]
    return v


# ---------------------------------------------------------------------------------------------
# Checkpoints, resume and the output-dir lock
# ---------------------------------------------------------------------------------------------
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "adapter_model.safetensors", "adapter_model.bin")


def checkpoint_step(path: Path) -> int | None:
    """N for a folder named checkpoint-N, else None."""
    prefix, _, step = path.name.partition("-")
    return int(step) if prefix == "checkpoint" and step.isdigit() else None


def checkpoint_missing(ckpt: str | Path, processes: int | None = None) -> list[str]:
    """What a checkpoint folder lacks to resume from; [] when complete.

    transformers writes weights, optimizer, scheduler and each process's RNG state, then
    trainer_state.json last; a crash in between leaves a folder that `get_last_checkpoint` still picks.
    `processes`: the run's process count (each saves rng_state_<rank>.pth); None accepts any count.
    """
    ckpt = Path(ckpt)
    names = {p.name for p in ckpt.iterdir()} if ckpt.is_dir() else set()
    missing = []
    if "trainer_state.json" not in names:
        missing.append("trainer_state.json")
    if not names & set(WEIGHT_FILES):
        missing.append("model weights (" + " / ".join(WEIGHT_FILES) + ")")
    if "optimizer.pt" in names:
        if "scheduler.pt" not in names:
            missing.append("scheduler.pt")
    elif "latest" not in names:  # DeepSpeed keeps optimizer and scheduler in global_step<N>/, named by `latest`
        missing.append("optimizer state (optimizer.pt, or DeepSpeed's latest + global_step*/)")
    if processes == 1 or (processes is None and "rng_state.pth" in names):
        rng = ["rng_state.pth"]
    else:
        count = processes or sum(1 for n in names if n.startswith("rng_state_")) or 1
        rng = [f"rng_state_{i}.pth" for i in range(count)]
    missing += [r for r in rng if r not in names]
    return missing


def latest_checkpoint(output_dir: str | Path, processes: int | None = None) -> Path | None:
    """The complete checkpoint-<step> folder with the highest step, or None."""
    ckpts = [p for p in Path(output_dir).glob("checkpoint-*") if checkpoint_step(p) is not None]
    complete = [p for p in ckpts if not checkpoint_missing(p, processes)]
    return max(complete, key=checkpoint_step, default=None)


def _set_aside(path: Path, prefix: str) -> Path:
    """Rename `path` to `<prefix>-<name>` beside it (never overwriting); returns the new path."""
    target = path.with_name(f"{prefix}-{path.name}")
    n = 2
    while target.exists():
        target, n = path.with_name(f"{prefix}{n}-{path.name}"), n + 1
    path.rename(target)
    return target


def holds_run(output_dir: Path) -> list[str]:
    """What in output_dir shows a training already ran there ([] for a fresh folder)."""
    found = [n for n in (METRICS_FILE, SEGMENTS_FILE) if (output_dir / n).exists()]
    return found + sorted(p.name for p in output_dir.glob("checkpoint-*") if checkpoint_step(p) is not None)


def check_output_dir(output_dir: str | Path, resume: bool) -> None:
    """Refuse, before anything is written, a fresh start over a run or a resume of nothing."""
    output_dir = Path(output_dir)
    found = holds_run(output_dir) if output_dir.is_dir() else []
    if not resume and found:
        raise FileExistsError(
            f"{output_dir} already holds a run ({', '.join(found[:4])}). Pass resume=True to continue it from "
            "its last complete checkpoint, or choose another output_dir. Nothing was changed."
        )
    if resume and not found:
        raise FileNotFoundError(f"resume=True but {output_dir} holds no run to resume (no {METRICS_FILE}, no "
                                "checkpoint-<step> folder); pass resume=False to start one")


def prepare_output_dir(output_dir: str | Path, resume: bool, processes: int | None = None) -> Path | None:
    """Make output_dir fit `resume` and return the checkpoint to resume from (None: start at step 0).

    On resume: incomplete checkpoints are set aside (renamed `incomplete-checkpoint-<step>`), and the
    rows that metrics.jsonl / completions.jsonl hold past the checkpoint move to
    `<file>.after-checkpoint-<step>` (those steps are trained again). With no complete checkpoint the
    run restarts at step 0, its logged rows set aside the same way.
    """
    output_dir = Path(output_dir)
    check_output_dir(output_dir, resume)
    if not resume:
        return None
    for p in sorted(output_dir.glob("checkpoint-*")):
        if checkpoint_step(p) is not None and (missing := checkpoint_missing(p, processes)):
            logger.info("%s is incomplete (missing %s; a crash while it was written?): kept as %s, not resumed from",
                        p.name, ", ".join(missing), _set_aside(p, "incomplete").name)
    ckpt = latest_checkpoint(output_dir, processes)
    step = checkpoint_step(ckpt) if ckpt else 0
    for name in (METRICS_FILE, COMPLETIONS_FILE):
        path = output_dir / name
        if not path.exists():
            continue
        rows = read_jsonl(path)  # a corrupt middle line raises, naming file and line
        later = [r for r in rows if r.get("step", 0) > step]
        if later:  # kept beside the file, never deleted; written whole, so a crash here repeats nothing
            aside = output_dir / f"{name}.after-checkpoint-{step}"
            kept = read_jsonl(aside) if aside.exists() else []
            write_text_atomic(aside, "".join(json.dumps(r) + "\n" for r in kept + [r for r in later if r not in kept]))
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows if r.get("step", 0) <= step))
    if ckpt:
        logger.info("resuming from %s (step %s)", ckpt, step)
    else:
        logger.info("resume=True but %s has no complete checkpoint: training again from step 0", output_dir)
    return ckpt


def lock_holder(output_dir: str | Path) -> int | None:
    """pid of the process holding output_dir's training lock, or None when it is free."""
    path = Path(output_dir) / LOCK_FILE
    if not path.exists():
        return None
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            info = dict(part.split("=", 1) for part in f.read().split() if "=" in part)
            return int(info["pid"]) if info.get("pid", "").isdigit() else -1
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


@contextmanager
def output_dir_lock(output_dir: str | Path):
    """Hold an exclusive lock on output_dir for a training; a second one is refused (the OS frees it on exit)."""
    path = Path(output_dir) / LOCK_FILE
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown process"
        f.close()
        raise RuntimeError(f"{output_dir} is in use by another training ({holder}). Wait for it to finish or stop "
                           "it, or choose another output_dir.") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid={os.getpid()} host={socket.gethostname()} since={time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
        f.flush()
        yield path
    finally:
        f.close()


def _check_unlocked(output_dir: Path) -> None:
    pid = lock_holder(output_dir)
    if pid is not None:
        raise RuntimeError(f"{output_dir} is in use by another training (pid={pid}). Wait for it to finish or stop "
                           "it, or choose another output_dir.")


# ---------------------------------------------------------------------------------------------
# Format priming (demo only)
# ---------------------------------------------------------------------------------------------
def priming_target(solution: str, answer: str, format_mode: str) -> str:
    """The completion a format-priming example teaches: reasoning in <think>, answer boxed."""
    reasoning = solution.rsplit("\n", 1)[0].strip()
    if format_mode == "prefilled_think":  # the template already opened <think>
        return f"{reasoning}\n</think>\n<answer>\\boxed{{{answer}}}</answer>"
    return f"<think>\n{reasoning}\n</think>\n<answer>\\boxed{{{answer}}}</answer>"


def format_logprob(model, tokenizer, rows, format_mode: str) -> float:
    """Mean log-probability per token that `model` (a path or a loaded model) gives each row's format-priming
    target (`priming_target`, then eos) after the row's prompt: how strongly it expects the rewarded format,
    measured without sampling noise."""
    import torch

    from openrs_nb import grpo
    from openrs_nb.models import load_policy

    if isinstance(model, (str, Path)):
        model = load_policy(str(model))
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:  # one row at a time: no padding
            target = priming_target(row["solution"], row["answer"], format_mode)
            batch = grpo.completion_batch(tokenizer, [row["prompt"]], [target])
            total += grpo.completion_logprobs(model, batch).sum().item()
            count += int(batch["completion_mask"].sum())
    return total / count


# LoRA format priming (cfg.lora): the adapters start at zero (B = 0) and move the model far less per step
# than a full-weight update at the same learning rate, so priming scales sft_learning_rate by this factor.
# Measured on the exp 2 demo (3 steps, 24 examples; 04's probe after priming, 6 groups of 4): all weights at
# 5e-5: SFT loss 1.26 -> 0.27, formatted 0.08, zero-variance groups 0.50. LoRA ×10: formatted 0.00 (the
# probe caught no formatted completion); ×20: loss -> 0.30, formatted 0.04, zero-variance 0.50, the closest to
# all weights; ×40: loss -> 0.18, formatted 0.42, 0.17, but 04's first-order check of the by-hand step then
# misses its 10% bound (11.6%); ×80: loss -> 0.31, formatted 0.04, 0.67 (too large a step).
LORA_PRIMING_LR_SCALE = 20.0


def _priming_settings(cfg: ExperimentConfig) -> dict:
    names = ("model_name_or_path", "sft_steps", "sft_examples", "sft_learning_rate", "seed", "format_mode",
             "system_prompt", "demo_levels", "attn_implementation", "use_cpu", "bf16")
    settings = {n: getattr(cfg, n) for n in names}
    if cfg.lora:  # a LoRA-primed model differs from an all-weights one; all-weights settings stay as they were
        settings.update({n: getattr(cfg, n) for n in ("lora", "lora_r", "lora_alpha", "lora_dropout",
                                                      "lora_target_modules")},
                        lora_priming_lr_scale=LORA_PRIMING_LR_SCALE)
    return settings


def lora_config(cfg: ExperimentConfig):
    """The experiment's peft LoraConfig (GRPO's adapters, and format priming's under cfg.lora)."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM")


def priming_complete(path: Path, cfg: ExperimentConfig | None = None) -> bool:
    """A primed model is usable: weights, tokenizer and settings saved (and, given cfg, the same settings)."""
    if not ((path / "config.json").exists() and any((path / w).exists() for w in WEIGHT_FILES)
            and (path / "tokenizer_config.json").exists() and (path / "priming.json").exists()):
        return False
    return cfg is None or read_json(path / "priming.json") == json.loads(json.dumps(_priming_settings(cfg)))


def format_priming(cfg: ExperimentConfig, output_dir: Path, allow_training: bool = True) -> Path:
    """A short SFT on worked examples so the small demo model emits the format GRPO rewards.

    R1-Distill learned this format from distillation; SmolLM2-135M never saw it, and without
    priming every completion in a group scores the same, so GRPO's advantages are all zero.
    Saves the primed model to output_dir/format-priming (GRPO's policy and reference start there):
    built in a temporary folder and renamed when complete, so a crash never leaves half a model.

    With cfg.lora the SFT trains LoRA adapters (at sft_learning_rate × LORA_PRIMING_LR_SCALE) instead of
    all weights (whose gradients and AdamW state alone take 3× the weights), then merges them into the
    weights (`merge_and_unload`): the saved model is a plain model, so GRPO's policy, its new adapters
    and its KL reference all start from the primed weights, as without LoRA.
    """
    output_dir = Path(output_dir)
    out = output_dir / PRIMING_DIR
    if priming_complete(out, cfg):
        if not (output_dir / PRIMING_LOSSES).exists():
            write_text_atomic(output_dir / PRIMING_LOSSES, (out / PRIMING_LOSSES).read_text())
        return out
    if out.exists():
        why = "incomplete" if not priming_complete(out) else "other-settings"
        logger.info("%s is %s: kept as %s, priming again", out, why.replace("-", " "), _set_aside(out, why).name)
    if not allow_training:
        raise RuntimeError(f"{out} is missing: format priming runs in one process before a multi-process launch "
                           "(run_experiment does it); run it first")
    from trl import SFTConfig, SFTTrainer

    from openrs_nb import data
    from openrs_nb.models import load_policy, load_tokenizer

    for stale in output_dir.glob(f".{PRIMING_DIR}.tmp-*"):  # half-built by a killed run: nothing to keep
        shutil.rmtree(stale, ignore_errors=True)
    tmp = output_dir / f".{PRIMING_DIR}.tmp-{os.getpid()}"
    tokenizer = load_tokenizer(cfg.model_name_or_path)
    model = load_policy(cfg.model_name_or_path, attn_implementation=cfg.attn_implementation)
    rows = data.make_demo_dataset(cfg.sft_examples, seed=cfg.seed + 1, split="train", levels=cfg.demo_levels)
    rows = data.build_prompts(rows, cfg.system_prompt)
    sft_data = rows.map(
        lambda r: {"completion": [{"role": "assistant",
                                   "content": priming_target(r["solution"], r["answer"], cfg.format_mode)}]},
        remove_columns=[c for c in rows.column_names if c != "prompt"],
    )
    if cfg.use_cpu and cfg.lora:  # the small-memory demo: freed tensors go back to the system, not into a
        from openrs_nb.cpu import mmap_large_allocations, narrow_trl_logprob_tiles  # fragmented heap, and

        mmap_large_allocations()
        narrow_trl_logprob_tiles()  # SFTTrainer's CPU log-prob tiles narrowed as GRPO's are (openrs_nb.cpu)
    args = SFTConfig(
        output_dir=str(tmp),
        max_steps=cfg.sft_steps,
        per_device_train_batch_size=max(1, cfg.sft_examples // cfg.sft_steps),
        learning_rate=cfg.sft_learning_rate * (LORA_PRIMING_LR_SCALE if cfg.lora else 1.0),
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=cfg.use_cpu,
        bf16=cfg.bf16,
        seed=cfg.seed,
        completion_only_loss=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=sft_data, processing_class=tokenizer,
                         peft_config=lora_config(cfg) if cfg.lora else None)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    loss_text = "".join(json.dumps({"step": i + 1, "loss": v}) + "\n" for i, v in enumerate(losses))
    primed = trainer.model
    if cfg.lora:  # fold the adapters into the weights: a plain model, saved as the all-weights priming is
        primed = primed.merge_and_unload()
    primed.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    write_text_atomic(tmp / PRIMING_LOSSES, loss_text)
    write_json_atomic(tmp / "priming.json", _priming_settings(cfg))  # last: marks the folder complete
    tmp.rename(out)
    write_text_atomic(output_dir / PRIMING_LOSSES, loss_text)  # whole file: a redo never appends twice
    # Memory: the SFT trainer, its model, gradients and AdamW state (~2 GB for the demo) sit in reference
    # cycles; free them before GRPO loads its policy and reference (benchmarks/bench_demo_memory.py).
    del trainer, model, primed
    from openrs_nb.cpu import release_memory

    release_memory()
    return out


# ---------------------------------------------------------------------------------------------
# Training in this process (CPU demo, one GPU, or each process of an accelerate launch)
# ---------------------------------------------------------------------------------------------
def train(cfg: ExperimentConfig, output_dir: str | Path, resume: bool = False, callbacks=None,
          write_run_file: bool = True) -> Path:
    """Run GRPO for `cfg` and return output_dir; metrics and checkpoints land there as they happen.

    In a launch, every process calls this: the main one takes the output-dir lock and prepares the
    folder (resume point, logs) while the others wait. `callbacks`: extra transformers
    TrainerCallbacks (e.g. the GPU smoke check's step timer). `write_run_file`: save run.json (an
    in-process run); launched processes leave the launcher's run.json alone.
    """
    from accelerate import PartialState

    state = PartialState(cpu=cfg.use_cpu)
    output_dir = Path(output_dir)
    with ExitStack() as held:
        if state.is_main_process:
            output_dir.mkdir(parents=True, exist_ok=True)
            held.enter_context(output_dir_lock(output_dir))
            prepare_output_dir(output_dir, resume, state.num_processes)
            run_json = json.loads(json.dumps(dataclasses.asdict(cfg)))
            path = output_dir / RUN_FILE
            if write_run_file and not (path.exists() and read_json(path) == run_json):
                write_json_atomic(path, run_json)
        state.wait_for_everyone()
        ckpt = latest_checkpoint(output_dir, state.num_processes) if resume else None
        from openrs_nb.models import load_tokenizer, resolve_model_path

        tokenizer = load_tokenizer(cfg.model_name_or_path)
        # A path, not a loaded model: TRL builds the KL reference from the same path, so after format
        # priming both policy and reference start from the primed weights.
        if cfg.sft_steps:
            with state.main_process_first():
                model = str(format_priming(cfg, output_dir, allow_training=state.num_processes == 1))
        else:
            model = resolve_model_path(cfg.model_name_or_path)
        dataset = load_train_dataset(cfg, tokenizer)
        peft_config = lora_config(cfg) if cfg.lora else None
        if cfg.use_cpu:  # memory: TRL's CPU log-prob tiles 8x narrower (see openrs_nb.cpu.TRL_CPU_TILE)
            from openrs_nb.cpu import mmap_large_allocations, narrow_trl_logprob_tiles

            narrow_trl_logprob_tiles()
            if cfg.lora:  # the small-memory demo: large blocks mmapped (1.5 GiB step peak, not 2-3.4; 1.3-1.5x slower)
                mmap_large_allocations()
        recorder = CompletionRecorder(cfg.reward_weights, cfg.num_generations, scale=cfg.scale_rewards)
        trainer = _grpo_trainer_class()(
            model=model,
            reward_funcs=recorder.wrap(reward_funcs(cfg)),
            args=cfg.to_grpo_config(str(output_dir)),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[MetricsWriter(output_dir, recorder), ReplicaFingerprint(output_dir), *(callbacks or [])],
        )
        if state.is_main_process:
            write_grpo_config(trainer.args, output_dir / GRPO_CONFIG_FILE)
        trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    return output_dir


def _grpo_trainer_class():
    """trl.GRPOTrainer, able to resume a multi-process CPU run (the rehearsal).

    transformers 5.17 `Trainer._load_optimizer_and_scheduler` loads optimizer.pt with
    `map_location=args.device` when world_size > 1; on CPU processes that device is `cpu:0`, which
    torch.load rejects ("don't know how to restore data location ... (tagged with cpu:0)"). Found by
    killing and resuming the rehearsal; GPU runs (`cuda:<i>`) and one-process runs are unaffected.
    """
    import torch
    from trl import GRPOTrainer

    class Trainer(GRPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._sampler, self._sampler_step = bf16_sampler(self.model, self.args), None

        def _generate_single_turn(self, *args, **kwargs):
            # Sample with the bf16 copy (CPU + bf16 only), refreshed after each optimizer step as TRL's
            # vLLM path syncs its engine (`self.state.global_step != self._last_loaded_step`).
            if self._sampler is None:
                return super()._generate_single_turn(*args, **kwargs)
            if self._sampler_step != self.state.global_step:
                self._sampler.load_state_dict(self.model.state_dict())  # copies, casting to bf16
                self._sampler_step = self.state.global_step
            trained, self.model_wrapped = self.model_wrapped, self._sampler
            try:
                return super()._generate_single_turn(*args, **kwargs)
            finally:
                self.model_wrapped = trained

        def _load_optimizer_and_scheduler(self, checkpoint):
            if checkpoint is None or self.args.world_size == 1 or self.args.device.type != "cpu":
                return super()._load_optimizer_and_scheduler(checkpoint)
            self.optimizer.load_state_dict(torch.load(Path(checkpoint) / "optimizer.pt", map_location="cpu",
                                                      weights_only=True))
            self.lr_scheduler.load_state_dict(torch.load(Path(checkpoint) / "scheduler.pt", weights_only=True))

    Trainer.__name__ = Trainer.__qualname__ = "GRPOTrainer"
    return Trainer


def bf16_sampler(model, args):
    """A bfloat16 copy of `model` to sample rollouts with on CPU under `bf16=True`, else None.

    On CPU, bf16 means autocast over fp32 weights for the training passes (TRL/accelerate), but
    transformers' generate runs outside that autocast, in fp32. Sampling is the largest piece of a CPU
    step (benchmarks/bench_demo_step.py), and a bf16 copy (half the bytes to read per token, bf16
    matmuls) samples faster. The paper's runs split the work the same way: vLLM samples in bf16 while
    the trained model computes the log-probs and the loss, so the samples come from a copy of the policy.
    LoRA keeps fp32 sampling (the copy would need the adapter merged after every step).
    """
    import torch
    from transformers import AutoModelForCausalLM

    if not (args.bf16 and args.use_cpu) or hasattr(model, "peft_config"):
        return None
    # Built from the config, not deepcopied: the trainer patches the policy's `forward` (closures that a
    # deepcopy would share), and gradient checkpointing turns its KV cache off.
    config = copy.deepcopy(model.config)
    config.use_cache = True
    # Eager attention, as every CPU sampler here (openrs_nb.models.load_sampling_model says why).
    sampler = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="eager")
    sampler.generation_config = copy.deepcopy(model.generation_config)
    # Its parameters keep requires_grad=True although it never trains (generate runs under no_grad): at
    # prefill, generate hands the LM head the last position as a non-contiguous [B, 1, d] slice, and with no
    # tensor requiring grad torch's matmul broadcasts the [d, V] weight to [B, d, V] instead of folding the
    # batch into one matrix product: +864 MiB per rollout at the demo's shapes (benchmarks/bench_demo_memory.py).
    # TRL calls generate with do_sample=True; the same draw without a full-vocabulary torch.multinomial per token.
    sampler.generate = functools.partial(fast_generate, sampler)
    return sampler.eval()


def write_grpo_config(args, path: str | Path) -> Path:
    """The trl.GRPOConfig as TRL YAML: `TrlParser((GRPOConfig,)).parse_args_and_config(["--config", path])`
    reads it back (as `trl grpo --config` and open-r1's recipes/*.yaml do)."""
    import yaml

    values = {k: v for k, v in args.to_dict().items() if not (isinstance(v, str) and v.endswith("_TOKEN>"))}
    # Derived in GRPOConfig.__post_init__ as per-device batch × processes × steps_per_generation; giving
    # both is an error there, and the process count belongs to the launch, not the file.
    values.pop("generation_batch_size", None)
    header = ("# The exact trl.GRPOConfig of this run (openrs_nb.train.write_grpo_config), every field; TRL reads it\n"
              "# back with TrlParser((GRPOConfig,)).parse_args_and_config(['--config', this_file]).\n"
              f"# generation_batch_size is derived: {args.generation_batch_size} in this run.\n")
    return write_text_atomic(path, header + yaml.safe_dump(values, sort_keys=True, allow_unicode=True))


def demo_learning_gain(metrics: list[dict], key: str = "reward") -> tuple[float, float]:
    """Mean of `key` over the first and last quarter of logged steps (the demo's learning check)."""
    values = [m[key] for m in metrics if key in m]
    if len(values) < 4:
        raise ValueError(f"need at least 4 logged steps with {key!r}, got {len(values)}")
    q = len(values) // 4
    return sum(values[:q]) / q, sum(values[-q:]) / q


# ---------------------------------------------------------------------------------------------
# The paper's launch: a vLLM server on one GPU, accelerate + DeepSpeed ZeRO-2 on the rest
# (profile 'rehearsal': the same launch on CPU, 2 processes, plain data parallel, no vLLM)
# ---------------------------------------------------------------------------------------------
@dataclass
class LaunchPlan:
    """Exact commands and files of a launch; `write()` saves them, `run_launch` starts them."""

    output_dir: Path
    files: dict[str, str] = field(default_factory=dict)
    """Relative path under output_dir -> file content (accelerate recipe, run.json)."""
    vllm_command: list[str] | None = None
    """The vLLM server (server mode, machine 0), or None (colocate mode, another machine, or no vLLM)."""
    vllm_env: dict[str, str] = field(default_factory=dict)
    train_command: list[str] = field(default_factory=list)
    train_env: dict[str, str] = field(default_factory=dict)
    health_url: str | None = None
    """Where the vLLM server answers when ready (server mode), or None."""
    health_timeout: float = 900.0
    """Seconds to wait for a healthy vLLM server before giving up."""

    def shell(self) -> str:
        """The plan as a shell script a user could run by hand; it stops if the vLLM server dies."""
        out = shlex.quote(str(self.output_dir))
        lines = ["#!/usr/bin/env bash", "set -euo pipefail", f"cd {shlex.quote(str(Path.cwd()))}"]
        if self.vllm_command:
            lines += [f"{_env_prefix(self.vllm_env)}{shlex.join(self.vllm_command)} > {out}/vllm.log 2>&1 &",
                      "VLLM_PID=$!",
                      "trap 'kill $VLLM_PID 2>/dev/null || true' EXIT"]
        if self.health_url:
            url = shlex.quote(self.health_url)
            lines += [f"deadline=$((SECONDS + {int(self.health_timeout)}))",
                      f"until curl -sf {url} > /dev/null; do"]
            if self.vllm_command:
                lines.append('  if ! kill -0 "$VLLM_PID" 2>/dev/null; then '
                             f'echo "launch.sh: the vLLM server exited before it was healthy; see {out}/vllm.log" >&2; '
                             "exit 1; fi")
            late = f"no healthy vLLM server at {self.health_url} after {int(self.health_timeout)} s"
            lines += [f'  if (( SECONDS > deadline )); then echo "launch.sh: {late}" >&2; exit 1; fi',
                      "  sleep 5", "done"]
        lines.append(f"{_env_prefix(self.train_env)}{shlex.join(self.train_command)}")
        return "\n".join(lines) + "\n"

    def write(self) -> list[Path]:
        """Write the files and launch.sh into output_dir (each whole or not at all; one already there with
        the same text is left untouched, e.g. run.json on resume); returns the paths."""
        paths = []
        for rel, text in {**self.files, "launch.sh": self.shell()}.items():
            path = self.output_dir / rel
            if not (path.is_file() and path.read_text() == text):
                write_text_atomic(path, text)
            paths.append(path)
        return paths


def _env_prefix(env: dict[str, str]) -> str:
    return "".join(f"{k}={shlex.quote(v)} " for k, v in env.items())


def recipe_path(name: str) -> Path:
    """A checked-in accelerate recipe (recipes/accelerate_configs/<name>.yaml, as in the authors' repository)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    path = project_path(RECIPES[name])
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: launches read the accelerate recipes of a source checkout "
                                "of this project (git clone, then pip install -e .)")
    return path


def _check_launch_args(cfg: ExperimentConfig, machine_rank, main_process_ip, main_process_port) -> str:
    """Validate the multi-machine arguments; returns the main process address."""
    import ipaddress
    import re

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if not is_int(machine_rank) or not 0 <= machine_rank < cfg.num_machines:
        raise ValueError(f"machine_rank={machine_rank!r} is not valid for num_machines={cfg.num_machines}; choose one "
                         f"of {list(range(cfg.num_machines))} (0 is the machine that runs vLLM and process 0)")
    if not is_int(main_process_port) or not 0 < main_process_port < 65536:
        raise ValueError(f"main_process_port={main_process_port!r} must be a TCP port, 1-65535")
    if main_process_ip is None:
        if cfg.num_machines > 1:
            raise ValueError(f"num_machines={cfg.num_machines} needs main_process_ip: the address of machine 0 "
                             "(machine_rank 0) that every machine can reach")
        return "127.0.0.1"
    if not isinstance(main_process_ip, str) or not re.fullmatch(r"[A-Za-z0-9]([\w.:-]*[A-Za-z0-9])?", main_process_ip):
        raise ValueError(f"main_process_ip={main_process_ip!r} is not an IP address or host name")
    try:
        loopback = ipaddress.ip_address(main_process_ip).is_loopback
    except ValueError:
        loopback = main_process_ip == "localhost"
    if loopback and cfg.num_machines > 1:
        raise ValueError(f"main_process_ip={main_process_ip!r} is this machine's loopback address, which the other "
                         f"{cfg.num_machines - 1} machine(s) cannot reach: give machine 0's network address")
    return main_process_ip


def launch_plan(cfg: ExperimentConfig, output_dir: str | Path, *, vllm_port: int = 8000, machine_rank: int = 0,
                main_process_ip: str | None = None, main_process_port: int = 29500) -> LaunchPlan:
    """Commands of this machine's part of the launch.

    paper: server mode puts vLLM on the last GPU of machine 0 and trains on the other GPUs (colocate mode:
    on every GPU), with the authors' DeepSpeed ZeRO-2 recipe. rehearsal: cfg.train_processes CPU processes
    with the authors' plain data-parallel recipe (gloo), no vLLM. The recipe file is copied into output_dir
    unchanged; this run's values are `accelerate launch` flags, which override the file.
    Several machines: run the plan on each with its machine_rank; output_dir must be on a filesystem they
    share (process 0 saves weights and optimizer, every process its RNG state).
    """
    if cfg.profile == "demo" or (cfg.profile != "rehearsal" and (cfg.use_cpu or not cfg.use_vllm)):
        raise ValueError("launch_plan is for GPU runs with vLLM (the paper profile) and their CPU rehearsal "
                         "(profile 'rehearsal'); the demo trains in-process")
    host = _check_launch_args(cfg, machine_rank, main_process_ip, main_process_port)
    output_dir = Path(output_dir)
    rehearsal = cfg.use_cpu
    server = cfg.use_vllm and cfg.vllm_mode == "server"
    run_cfg = dataclasses.replace(cfg, vllm_server_base_url=f"http://{host}:{vllm_port}" if server else None)
    recipe = recipe_path("ddp" if rehearsal else "zero2")
    acc_file = f"accelerate_{recipe.stem}.yaml"
    plan = LaunchPlan(output_dir=output_dir)
    plan.files[acc_file] = recipe.read_text()
    plan.files[RUN_FILE] = json.dumps(dataclasses.asdict(run_cfg), indent=1)
    if server:
        gpus = list(range(cfg.num_gpus))
        if machine_rank == 0:
            plan.vllm_command = [
                "trl", "vllm-serve", "--model", cfg.model_name_or_path, "--port", str(vllm_port),
                "--gpu_memory_utilization", str(cfg.vllm_gpu_memory_utilization),
                "--max_model_len", str(cfg.vllm_max_model_length), "--enforce_eager", "true",
            ]
            plan.vllm_env = {"CUDA_VISIBLE_DEVICES": str(gpus[-1])}
        plan.health_url = f"http://{host}:{vllm_port}/health"
        train_gpus = gpus[:-1]
    else:
        train_gpus = list(range(cfg.num_gpus))
    plan.train_command = [
        "accelerate", "launch", "--config_file", str(output_dir / acc_file),
        "--num_processes", str(cfg.train_processes), "--num_machines", str(cfg.num_machines),
        "--machine_rank", str(machine_rank), "--main_process_ip", host, "--main_process_port", str(main_process_port),
        "--mixed_precision", "bf16" if cfg.bf16 else "no",
        "-m", "openrs_nb.train", "--config", str(output_dir / RUN_FILE), "--output_dir", str(output_dir),
    ]
    # The rehearsal hides any GPU: each process trains on CPU (TrainingArguments.use_cpu → gloo).
    plan.train_env = {"CUDA_VISIBLE_DEVICES": "" if rehearsal else ",".join(map(str, train_gpus))}
    return plan


def run_launch(plan: LaunchPlan, resume: bool = False, health_timeout: float | None = None) -> int:
    """Start the plan: vLLM server first (wait until healthy), then training; stream logs here.

    Refuses, before writing anything, an output_dir in use by another training or one whose state does
    not fit `resume`. Ctrl-C / interrupting the notebook stops every process. Returns the training exit code.
    """
    import urllib.request

    _check_unlocked(plan.output_dir)
    check_output_dir(plan.output_dir, resume)
    plan.write()
    timeout = plan.health_timeout if health_timeout is None else health_timeout
    procs: list[subprocess.Popen] = []
    # `trl` and `accelerate` are found beside this interpreter even when its venv is not activated
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])

    def start(cmd, env, log):
        p = subprocess.Popen(cmd, env={**os.environ, "PATH": path, **env}, stdout=log, stderr=subprocess.STDOUT,
                             text=True, bufsize=1, start_new_session=True)
        procs.append(p)
        return p

    try:
        if plan.vllm_command:  # its output goes straight to vllm.log: a pipe nobody reads would fill and block it
            with open(plan.output_dir / "vllm.log", "a") as vlog:
                server = start(plan.vllm_command, plan.vllm_env, vlog)
        if plan.health_url:
            deadline = time.time() + timeout
            while True:
                if plan.vllm_command and server.poll() is not None:
                    tail = (plan.output_dir / "vllm.log").read_text(errors="replace").splitlines()[-20:]
                    raise RuntimeError(f"the vLLM server exited with code {server.returncode} before it was healthy; "
                                       f"{plan.output_dir / 'vllm.log'} ends with:\n" + "\n".join(tail))
                try:
                    urllib.request.urlopen(plan.health_url, timeout=2)
                    logger.info("vLLM server healthy at %s", plan.health_url)
                    break
                except OSError:
                    if time.time() > deadline:
                        raise TimeoutError(f"no healthy vLLM server at {plan.health_url} after {timeout:.0f} s; "
                                           "see vllm.log") from None
                    time.sleep(min(5.0, max(0.1, timeout / 10)))
        cmd = plan.train_command + (["--resume"] if resume else [])
        trainer = start(cmd, plan.train_env, subprocess.PIPE)
        with open(plan.output_dir / "train.log", "a") as tlog:
            for line in trainer.stdout:
                print(line, end="")
                tlog.write(line)
        return trainer.wait()
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)


def run_experiment(cfg: ExperimentConfig, output_dir: str | Path, resume: bool = False, dry_run: bool = False, *,
                   machine_rank: int = 0, main_process_ip: str | None = None, main_process_port: int = 29500,
                   vllm_port: int = 8000) -> Path:
    """Train `cfg` into output_dir the way its profile says; what notebook 04 calls.

    demo: `train` in this process. paper and rehearsal: `launch_plan` + `run_launch` (each process runs
    `train`); `dry_run` writes and prints the plan and starts nothing. Raises RuntimeError when the
    launched training fails; a finished or killed run can be continued with resume=True.
    """
    output_dir = Path(output_dir)
    if cfg.profile == "demo":
        if dry_run:
            check_output_dir(output_dir, resume)
            logger.info("dry run: the demo trains in this process; nothing to write or start")
            return output_dir
        return train(cfg, output_dir, resume=resume)
    plan = launch_plan(cfg, output_dir, vllm_port=vllm_port, machine_rank=machine_rank,
                       main_process_ip=main_process_ip, main_process_port=main_process_port)
    print(plan.shell())
    _check_unlocked(output_dir)
    check_output_dir(output_dir, resume)
    if dry_run:
        logger.info("dry run: wrote %s", ", ".join(str(p) for p in plan.write()))
        return output_dir
    if cfg.use_cpu:  # rehearsal: the demo model is converted once here, not by each process at the same time
        from openrs_nb.models import resolve_model_path

        resolve_model_path(cfg.model_name_or_path)
    if cfg.sft_steps and machine_rank == 0:  # priming is one process's job; the launch then finds it done
        output_dir.mkdir(parents=True, exist_ok=True)
        with output_dir_lock(output_dir):
            format_priming(cfg, output_dir)
    returncode = run_launch(plan, resume=resume)
    if returncode != 0:
        raise RuntimeError(f"training exited with code {returncode}; see {output_dir / 'train.log'}. "
                           "Continue it with resume=True once the cause is fixed.")
    return output_dir


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
    """Entry point of each process of a launch: `python -m openrs_nb.train --config run.json --output_dir DIR`."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--config", required=True, help="run.json written by launch_plan (read, never rewritten)")
    ap.add_argument("--output_dir", required=True)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    values = read_json(args.config)
    cfg = load_experiment(values.pop("exp"), values.pop("profile"), **values)
    train(cfg, args.output_dir, resume=args.resume, write_run_file=False)
    from accelerate import PartialState

    PartialState().destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
