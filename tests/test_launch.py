"""The launch and resume machinery run for real: a 2-process `accelerate launch` on CPU (the rehearsal)
and in-process training, each killed with SIGKILL mid-run and resumed.

A tiny random-weight model with the demo tokenizer keeps every step under a second: these tests check
the machinery (processes, checkpoints, logs, RNG), not learning.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from openrs_nb import train
from openrs_nb.config import load_experiment

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from openrs_nb.grpo import save_tiny_policy
    from openrs_nb.models import load_tokenizer

    return save_tiny_policy(load_tokenizer("demo"), tmp_path_factory.mktemp("tiny") / "policy")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _steps(path: Path) -> list[int]:
    return [r["step"] for r in train.read_jsonl(path)]


def _children(pid: int) -> list[int]:
    """Direct children of a process (Linux /proc)."""
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        kids += [int(c) for c in (task / "children").read_text().split()]
    return kids


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# The rehearsal: the paper's launch on 2 CPU processes, killed and resumed
# ---------------------------------------------------------------------------------------------
def test_rehearsal_launch_trains_one_model_in_two_processes_and_survives_a_kill(tmp_path, tiny_model):
    out = tmp_path / "rehearsal"
    cfg = load_experiment(3, "rehearsal", model_name_or_path=tiny_model, max_steps=4, save_steps=1,
                          dataset_size=32, max_completion_length=8)
    port = _free_port()
    plan = train.launch_plan(cfg, out, main_process_port=port)
    result = {}
    first = threading.Thread(target=lambda: result.update(rc=train.run_launch(plan)))
    first.start()
    # Kill every process of the launch at once (a power cut) once step 2 is checkpointed.
    _wait_for(lambda: train.latest_checkpoint(out, 2) is not None and train.checkpoint_step(
        train.latest_checkpoint(out, 2)) >= 2, 300, "checkpoint-2")
    rank0 = train.lock_holder(out)
    agent = int(Path(f"/proc/{rank0}/stat").read_text().rsplit(")", 1)[1].split()[1])  # ppid: the torchrun agent
    for pid in [*_children(agent), agent]:
        os.kill(pid, signal.SIGKILL)
    first.join(60)
    assert result["rc"] != 0
    killed_at = max(_steps(out / "metrics.jsonl"))
    run_json = (out / "run.json").read_text(), (out / "run.json").stat().st_mtime_ns

    train.run_experiment(cfg, out, resume=True, main_process_port=port)

    # Every step logged exactly once, across the kill.
    assert _steps(out / "metrics.jsonl") == [1, 2, 3, 4], killed_at
    # Both processes hold the same model at the end (DDP averaged their gradients).
    same, hashes = train.replicas_identical(out)
    assert same and sorted(hashes) == [0, 1], hashes
    # Prompts per step: processes × per-device batch × accumulation / G, counted in the logged completions
    # (gathered from both processes); each prompt's G completions sit together as one group.
    completions = train.read_jsonl(out / "completions.jsonl")
    assert cfg.prompts_per_step == 2 * 4 * 2 // 4 == 4
    for step in range(1, 5):
        rows = [c for c in completions if c["step"] == step]
        groups = [rows[i:i + cfg.num_generations] for i in range(0, len(rows), cfg.num_generations)]
        assert len(rows) == cfg.prompts_per_step * cfg.num_generations, step
        assert all(len({c["prompt"] for c in g}) == 1 for g in groups)
        assert all(c["advantage"] is not None for c in rows)
    # Checkpoints: each complete for 2 processes (both RNG states), saved once per step by the main process.
    log = (out / "train.log").read_text()
    for step in range(1, 5):
        ckpt = out / f"checkpoint-{step}"
        if ckpt.exists():
            assert train.checkpoint_missing(ckpt, 2) == [], step
            assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == step
    assert log.count(f"Saving model checkpoint to {out}/checkpoint-4\n") == 1
    assert all(train.checkpoint_missing(p, 2) for p in out.glob("incomplete-checkpoint-*"))
    # run.json was written by the launcher and never rewritten by the training processes.
    assert ((out / "run.json").read_text(), (out / "run.json").stat().st_mtime_ns) == run_json
    # Wall time: the killed segment counts too.
    summary = train.read_json(out / "summary.json")
    assert len(summary["segments"]) == 2 and not summary["segments"][0]["finished"]
    assert summary["train_runtime"] == pytest.approx(sum(s["runtime_s"] for s in summary["segments"]))
    assert (out / "grpo_config.yaml").exists()


# ---------------------------------------------------------------------------------------------
# In-process training killed while saving, resumed: the same numbers as an uninterrupted run
# ---------------------------------------------------------------------------------------------
# Runs train.train in a child process; KILL_AT makes it SIGKILL itself at a chosen point of a save.
DRIVER = r"""
import json, os, signal, sys
from openrs_nb import train
from openrs_nb.config import load_experiment

out, kill_at, resume, overrides = sys.argv[1], sys.argv[2], sys.argv[3] == "1", json.loads(sys.argv[4])
if kill_at == "priming":  # after the primed weights, before the tokenizer: a half-saved model
    from transformers import PreTrainedTokenizerBase
    save = PreTrainedTokenizerBase.save_pretrained
    def killing_save(self, path, *a, **k):
        if ".format-priming.tmp" in str(path):
            os.kill(os.getpid(), signal.SIGKILL)
        return save(self, path, *a, **k)
    PreTrainedTokenizerBase.save_pretrained = killing_save
elif kill_at.startswith("checkpoint-"):  # weights and optimizer written; RNG state and trainer_state.json not
    from transformers import Trainer
    save_rng, step = Trainer._save_rng_state, int(kill_at.split("-")[1])
    def killing_save_rng(self, output_dir):
        if self.state.global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return save_rng(self, output_dir)
    Trainer._save_rng_state = killing_save_rng
train.train(load_experiment(3, "demo", **overrides), out, resume=resume)
"""


def _run(out: Path, kill_at: str = "", resume: bool = False, **overrides) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same arithmetic in every run: bit-comparable numbers
    done = subprocess.run([sys.executable, "-c", DRIVER, str(out), kill_at, "1" if resume else "0",
                           json.dumps(overrides)], env=env, capture_output=True, text=True, timeout=600)
    if done.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(done.stdout[-3000:] + done.stderr[-3000:])
    return done.returncode


def test_demo_killed_while_saving_resumes_to_the_uninterrupted_numbers(tmp_path, tiny_model):
    settings = dict(model_name_or_path=tiny_model, lora=False, max_steps=4, save_steps=1, sft_steps=1,
                    sft_examples=4, dataset_size=16, per_device_train_batch_size=8, max_completion_length=8)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert _run(whole, **settings) == 0

    # 1. Killed while the format-primed model is saved: no half model is left where training looks.
    assert _run(broken, "priming", **settings) == -signal.SIGKILL
    assert not (broken / "format-priming").exists() and list(broken.glob(".format-priming.tmp-*"))
    # 2. Started again (nothing trained yet, so not a resume); killed while checkpoint-3 is written.
    assert _run(broken, "checkpoint-3", **settings) == -signal.SIGKILL
    assert train.checkpoint_missing(broken / "checkpoint-3", 1) == ["trainer_state.json", "rng_state.pth"]
    assert not list(broken.glob(".format-priming.tmp-*"))
    with pytest.raises(FileExistsError, match="already holds a run"):  # a fresh start would overwrite: refused
        train.check_output_dir(broken, resume=False)
    # 3. Resumed: the partial checkpoint is set aside, checkpoint-2 is the resume point, steps 3-4 rerun.
    assert _run(broken, resume=True, **settings) == 0
    assert train.checkpoint_missing(broken / "incomplete-checkpoint-3", 1)
    assert _steps(broken / "metrics.jsonl") == [1, 2, 3, 4]
    assert _steps(broken / "metrics.jsonl.after-checkpoint-2") == [3]
    assert _steps(broken / "format_priming.jsonl") == [1]  # priming redone once, its loss logged once

    # Optimizer, scheduler and RNG restored: the resumed steps equal the uninterrupted run's.
    a, b = train.read_jsonl(whole / "metrics.jsonl"), train.read_jsonl(broken / "metrics.jsonl")
    for key in ("loss", "reward", "kl", "grad_norm", "learning_rate", "completions/mean_length"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=1e-5, abs=1e-7), key
    ca, cb = train.read_jsonl(whole / "completions.jsonl"), train.read_jsonl(broken / "completions.jsonl")
    assert [(c["step"], c["completion"]) for c in cb] == [(c["step"], c["completion"]) for c in ca]
    summary = train.read_json(broken / "summary.json")
    assert [s["finished"] for s in summary["segments"]] == [False, True]
    assert summary["train_runtime"] == pytest.approx(sum(s["runtime_s"] for s in summary["segments"]))
