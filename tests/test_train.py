"""Training: launch plans, metrics on disk, resume, notebook overrides, and a real (tiny) GRPO run."""

import json
import os
import shlex

import pytest
import yaml

from openrs_nb import train
from openrs_nb.config import load_experiment


def test_server_plan_puts_vllm_on_the_last_gpu_and_trains_on_three(tmp_path):
    cfg = load_experiment(3, "paper")
    plan = train.launch_plan(cfg, tmp_path / "run")
    assert plan.vllm_env == {"CUDA_VISIBLE_DEVICES": "3"}
    assert plan.train_env == {"CUDA_VISIBLE_DEVICES": "0,1,2"}
    assert plan.vllm_command[:4] == ["trl", "vllm-serve", "--model", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"]
    assert "--enforce_eager" in plan.vllm_command
    assert plan.vllm_command[plan.vllm_command.index("--max_model_len") + 1] == "4608"
    assert plan.vllm_command[plan.vllm_command.index("--gpu_memory_utilization") + 1] == "0.7"
    assert plan.health_url == "http://127.0.0.1:8000/health"
    assert plan.train_command[:2] == ["accelerate", "launch"]
    assert plan.train_command[plan.train_command.index("-m") + 1] == "openrs_nb.train"
    flags = _flags(plan.train_command)
    assert flags["--num_processes"] == "3" and flags["--num_machines"] == "1" and flags["--machine_rank"] == "0"
    assert flags["--mixed_precision"] == "bf16" and flags["--main_process_ip"] == "127.0.0.1"

    written = {p.name for p in plan.write()}
    assert written == {"accelerate_zero2.yaml", "run.json", "launch.sh"}
    # The authors' recipe, copied unchanged; this run's values are the flags above.
    recipe = train.recipe_path("zero2")
    assert (tmp_path / "run" / "accelerate_zero2.yaml").read_text() == recipe.read_text()
    acc = yaml.safe_load(recipe.read_text())
    assert acc["distributed_type"] == "DEEPSPEED" and acc["deepspeed_config"]["zero_stage"] == 2
    assert acc["mixed_precision"] == "bf16" and acc["deepspeed_config"]["offload_optimizer_device"] == "none"
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["vllm_server_base_url"] == "http://127.0.0.1:8000" and run["exp"] == 3
    script = (tmp_path / "run" / "launch.sh").read_text()
    assert "CUDA_VISIBLE_DEVICES=3 trl vllm-serve" in script and "until curl -sf" in script
    assert "CUDA_VISIBLE_DEVICES=0,1,2 accelerate launch" in script


def test_the_written_run_json_rebuilds_the_same_config(tmp_path):
    cfg = load_experiment(1, "paper", learning_rate=2e-6)
    plan = train.launch_plan(cfg, tmp_path)
    plan.write()
    values = json.loads((tmp_path / "run.json").read_text())
    again = load_experiment(values.pop("exp"), values.pop("profile"), **values)
    assert again.learning_rate == 2e-6 and again.max_completion_length == 4096
    assert again.grpo_kwargs()["vllm_server_base_url"] == "http://127.0.0.1:8000"


def test_colocate_plan_uses_every_gpu_and_no_server(tmp_path):
    cfg = load_experiment(2, "paper", vllm_mode="colocate", num_gpus=1)
    plan = train.launch_plan(cfg, tmp_path)
    assert plan.vllm_command is None and plan.train_env == {"CUDA_VISIBLE_DEVICES": "0"}
    assert cfg.train_processes == 1 and "vllm_server_base_url" not in cfg.grpo_kwargs()
    assert "vllm-serve" not in plan.shell()


def _flags(cmd):
    return {a: b for a, b in zip(cmd, cmd[1:]) if a.startswith("--")}


def test_multi_node_plan(tmp_path):
    cfg = load_experiment(2, "paper", num_machines=2)
    plan = train.launch_plan(cfg, tmp_path, machine_rank=1, main_process_ip="10.0.0.5")
    flags = _flags(plan.train_command)
    assert flags["--num_machines"] == "2" and flags["--num_processes"] == "6" and flags["--machine_rank"] == "1"
    assert flags["--main_process_ip"] == "10.0.0.5"
    # vLLM serves from machine 0 only; machine 1 waits for it before training.
    assert plan.vllm_command is None and plan.health_url == "http://10.0.0.5:8000/health"
    assert "vllm-serve" not in plan.shell() and "until curl -sf" in plan.shell()
    assert train.launch_plan(cfg, tmp_path, machine_rank=0, main_process_ip="10.0.0.5").vllm_command[1] == "vllm-serve"


@pytest.mark.parametrize("kwargs, message", [
    (dict(machine_rank=2, main_process_ip="10.0.0.5"), r"machine_rank=2 is not valid .* \[0, 1\]"),
    (dict(machine_rank=-1, main_process_ip="10.0.0.5"), "machine_rank=-1 is not valid"),
    (dict(machine_rank=1), "needs main_process_ip"),
    (dict(machine_rank=1, main_process_ip="127.0.0.1"), "loopback"),
    (dict(machine_rank=1, main_process_ip="10.0.0.5; rm -rf /"), "not an IP address or host name"),
    (dict(machine_rank=1, main_process_ip="10.0.0.5", main_process_port=70000), "must be a TCP port"),
])
def test_multi_node_arguments_are_checked(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        train.launch_plan(load_experiment(2, "paper", num_machines=2), tmp_path, **kwargs)


def test_rehearsal_plan_is_the_paper_launch_on_cpu(tmp_path):
    cfg = load_experiment(3, "rehearsal")
    assert cfg.use_cpu and not cfg.use_vllm and cfg.train_processes == 2
    # The paper's arithmetic on the rehearsal's own shape: processes × per-device batch × accumulation / G.
    per_step = 2 * cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps // cfg.num_generations
    assert cfg.prompts_per_step == per_step == 4
    plan = train.launch_plan(cfg, tmp_path, main_process_port=29611)
    assert plan.vllm_command is None and plan.health_url is None
    assert plan.train_env == {"CUDA_VISIBLE_DEVICES": ""}
    flags = _flags(plan.train_command)
    assert flags["--num_processes"] == "2" and flags["--mixed_precision"] == "no"
    assert flags["--main_process_port"] == "29611"
    assert plan.train_command[plan.train_command.index("-m") + 1] == "openrs_nb.train"
    assert plan.files["accelerate_ddp.yaml"] == train.recipe_path("ddp").read_text()
    assert yaml.safe_load(plan.files["accelerate_ddp.yaml"])["distributed_type"] == "MULTI_GPU"


def test_the_demo_profile_has_no_launch_plan(tmp_path):
    with pytest.raises(ValueError, match="GPU runs with vLLM"):
        train.launch_plan(load_experiment(3, "demo"), tmp_path)


def test_launch_script_is_valid_shell(tmp_path):
    import subprocess

    plan = train.launch_plan(load_experiment(3, "paper"), tmp_path)
    plan.write()
    subprocess.run(["bash", "-n", str(tmp_path / "launch.sh")], check=True)
    assert shlex.split(plan.shell().splitlines()[-1])[-1] == str(tmp_path)


def _dead_server_plan(tmp_path):
    """A plan whose "vLLM server" dies at once, with a health URL nobody serves."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return train.LaunchPlan(output_dir=tmp_path, vllm_command=["bash", "-c", "echo server failed to start; exit 3"],
                            health_url=f"http://127.0.0.1:{port}/health", train_command=["echo", "TRAINING STARTED"])


@pytest.mark.skipif(not __import__("shutil").which("curl"), reason="launch.sh polls the server with curl")
def test_launch_script_stops_when_the_vllm_server_dies(tmp_path):
    import subprocess
    import time

    plan = _dead_server_plan(tmp_path)
    plan.write()
    t0 = time.time()
    done = subprocess.run(["bash", str(tmp_path / "launch.sh")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and time.time() - t0 < 30
    assert "the vLLM server exited before it was healthy" in done.stderr and "TRAINING STARTED" not in done.stdout
    assert "server failed to start" in (tmp_path / "vllm.log").read_text()


def test_run_launch_stops_when_the_vllm_server_dies(tmp_path):
    with pytest.raises(RuntimeError, match=r"exited with code 3 before it was healthy(.|\n)*server failed to start"):
        train.run_launch(_dead_server_plan(tmp_path), health_timeout=20)
    assert not (tmp_path / "train.log").exists()


def test_a_completion_budget_that_does_not_fit_vllm_is_refused():
    with pytest.raises(ValueError, match=r"4097 = 4609 tokens do not fit vllm_max_model_length 4608"):
        load_experiment(1, "paper", max_completion_length=4097)
    assert load_experiment(1, "paper").max_completion_length + 512 == 4608  # exp 1 fits exactly


def test_run_json_is_refused_over_an_existing_run_before_anything_is_written(tmp_path):
    _metrics(tmp_path, [1])
    cfg = load_experiment(3, "rehearsal")
    with pytest.raises(FileExistsError, match="already holds a run"):
        train.run_experiment(cfg, tmp_path, dry_run=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
    train.run_experiment(cfg, tmp_path / "new", dry_run=True)
    assert {p.name for p in (tmp_path / "new").iterdir()} == {"accelerate_ddp.yaml", "run.json", "launch.sh"}


def _metrics(tmp_path, steps):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "reward": float(s)}) + "\n" for s in steps))
    return path


def test_read_jsonl_skips_a_truncated_last_line_only(tmp_path):
    path = _metrics(tmp_path, [1, 2])
    with open(path, "a") as f:
        f.write('{"step": 3, "rew')
    with pytest.warns(RuntimeWarning, match="line 3"):
        assert [r["step"] for r in train.read_jsonl(path)] == [1, 2]
    path.write_text('{"step": 1}\n{broken\n{"step": 3}\n')
    with pytest.raises(ValueError, match="metrics.jsonl: line 2 is not valid JSON"):
        train.read_jsonl(path)


def _checkpoint(out, step, ranks=1, skip=()):
    """A checkpoint folder with the files transformers writes (empty), minus `skip`."""
    d = out / f"checkpoint-{step}"
    d.mkdir(parents=True)
    rng = ["rng_state.pth"] if ranks == 1 else [f"rng_state_{r}.pth" for r in range(ranks)]
    for name in ["model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json", *rng]:
        if name not in skip:
            (d / name).write_text("{}")
    return d


def test_a_checkpoint_counts_only_when_complete(tmp_path):
    assert train.checkpoint_missing(_checkpoint(tmp_path, 1)) == []
    assert train.checkpoint_missing(_checkpoint(tmp_path, 2, skip=["trainer_state.json"])) == ["trainer_state.json"]
    no_optimizer = _checkpoint(tmp_path, 3, skip=["optimizer.pt", "scheduler.pt"])
    assert train.checkpoint_missing(no_optimizer)[0].startswith("optimizer")
    assert train.checkpoint_missing(_checkpoint(tmp_path, 4, skip=["model.safetensors"]))[0].startswith("model weights")
    two = _checkpoint(tmp_path, 5, ranks=2, skip=["rng_state_1.pth"])
    assert train.checkpoint_missing(two, processes=2) == ["rng_state_1.pth"]
    deepspeed = _checkpoint(tmp_path, 6, ranks=3, skip=["optimizer.pt", "scheduler.pt"])
    (deepspeed / "latest").write_text("global_step6")
    assert train.checkpoint_missing(deepspeed, processes=3) == []
    assert train.checkpoint_missing(deepspeed, processes=4) == ["rng_state_3.pth"]
    assert train.latest_checkpoint(tmp_path, processes=1).name == "checkpoint-1"
    assert train.latest_checkpoint(tmp_path).name == "checkpoint-6"  # any process count


def test_a_run_is_never_overwritten_and_nothing_is_no_run(tmp_path):
    _metrics(tmp_path, [1, 2])
    with pytest.raises(FileExistsError, match=r"already holds a run \(metrics.jsonl\).*resume=True.*Nothing was"):
        train.prepare_output_dir(tmp_path, resume=False)
    with pytest.raises(FileNotFoundError, match="holds no run to resume"):
        train.prepare_output_dir(tmp_path / "empty", resume=True)
    assert train.prepare_output_dir(tmp_path / "fresh", resume=False) is None


def test_resume_sets_aside_incomplete_checkpoints_and_later_rows(tmp_path):
    _metrics(tmp_path, [1, 2, 3, 4, 5])
    (tmp_path / "completions.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in [1, 4, 5]))
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 4, skip=["trainer_state.json", "rng_state.pth"])  # killed while it was written
    (tmp_path / "checkpoint-notes").mkdir()
    ckpt = train.prepare_output_dir(tmp_path, resume=True, processes=1)
    assert ckpt.name == "checkpoint-2"
    assert (tmp_path / "incomplete-checkpoint-4" / "model.safetensors").exists()  # renamed, never deleted
    assert [r["step"] for r in train.read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
    assert [r["step"] for r in train.read_jsonl(tmp_path / "metrics.jsonl.after-checkpoint-2")] == [3, 4, 5]
    assert [r["step"] for r in train.read_jsonl(tmp_path / "completions.jsonl.after-checkpoint-2")] == [4, 5]
    # A crash after the set-aside file was written but before metrics.jsonl was cut: redoing it adds nothing twice.
    _metrics(tmp_path, [1, 2, 3, 4, 5])
    assert train.prepare_output_dir(tmp_path, resume=True, processes=1).name == "checkpoint-2"
    assert [r["step"] for r in train.read_jsonl(tmp_path / "metrics.jsonl.after-checkpoint-2")] == [3, 4, 5]


def test_resume_without_a_complete_checkpoint_starts_again_from_step_0(tmp_path):
    _metrics(tmp_path, [1])
    _checkpoint(tmp_path, 1, skip=["trainer_state.json"])
    assert train.prepare_output_dir(tmp_path, resume=True) is None
    assert train.read_jsonl(tmp_path / "metrics.jsonl") == []
    assert (tmp_path / "incomplete-checkpoint-1").is_dir()


def test_resume_over_a_corrupt_metrics_line_names_file_and_line(tmp_path):
    _checkpoint(tmp_path, 1)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not valid JSON"):
        train.prepare_output_dir(tmp_path, resume=True)


def test_a_second_training_into_the_same_dir_is_refused(tmp_path):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from openrs_nb.train import output_dir_lock\n"
        f"with output_dir_lock({str(tmp_path)!r}):\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert train.lock_holder(tmp_path) == holder.pid
        with pytest.raises(RuntimeError, match=rf"{tmp_path} is in use by another training \(pid={holder.pid} "):
            with train.output_dir_lock(tmp_path):
                pass
        cfg = load_experiment(3, "demo", max_steps=1, lora=False)
        with pytest.raises(RuntimeError, match=rf"in use by another training \(pid={holder.pid}"):
            train.train(cfg, tmp_path)
        plan = train.launch_plan(load_experiment(3, "rehearsal"), tmp_path)
        with pytest.raises(RuntimeError, match=rf"in use by another training \(pid={holder.pid}"):
            train.run_launch(plan)
        assert not (tmp_path / "launch.sh").exists()  # refused before writing anything
    finally:
        holder.kill()
        holder.wait()
    assert train.lock_holder(tmp_path) is None  # the OS frees the lock with the process
    with train.output_dir_lock(tmp_path):
        assert train.lock_holder(tmp_path) == os.getpid()


def test_metrics_writer_adds_up_the_runtime_of_every_segment(tmp_path):
    from types import SimpleNamespace

    args = SimpleNamespace(world_size=1)
    state = SimpleNamespace(is_world_process_zero=True, global_step=0)
    first = train.MetricsWriter(tmp_path)
    first.on_train_begin(args, state, None)
    state.global_step = 3
    first._t0 -= 100.0  # 100 s into the first segment, then killed: no end-of-training log
    first.on_log(args, state, None, logs={"loss": 0.5})
    second = train.MetricsWriter(tmp_path)
    state.global_step = 2  # resumed from checkpoint-2
    second.on_train_begin(args, state, None)
    state.global_step = 5
    second.on_log(args, state, None, logs={"loss": 0.4})
    second.on_log(args, state, None, logs={"train_runtime": 50.0, "train_loss": 0.4})
    summary = train.read_json(tmp_path / "summary.json")
    assert [s["runtime_s"] for s in summary["segments"]] == [pytest.approx(100.0, abs=1.0), 50.0]
    assert summary["train_runtime"] == pytest.approx(150.0, abs=1.0) and summary["segment_train_runtime"] == 50.0
    spans = [(s["start_step"], s["end_step"], s["finished"]) for s in summary["segments"]]
    assert spans == [(0, 3, False), (2, 5, True)]
    assert [r["step"] for r in train.read_jsonl(tmp_path / "metrics.jsonl")] == [3, 5]


def test_completion_recorder_keeps_what_the_reward_functions_saw():
    from openrs_nb.grpo import group_advantages

    def format_reward(completions, **kwargs):
        return [1.0 if "boxed" in c else 0.0 for c in completions]

    def accuracy_reward(completions, solution, **kwargs):
        return [1.0 if s in c else 0.0 for c, s in zip(completions, solution)]

    rec = train.CompletionRecorder([1.0, 2.0], num_generations=2)
    fmt, acc = rec.wrap([format_reward, accuracy_reward])
    assert (fmt.__name__, acc.__name__) == ("format_reward", "accuracy_reward")  # TRL logs by name
    prompts, completions = ["p1", "p1", "p2", "p2"], ["boxed 3", "3", "x", "boxed 5"]
    assert fmt(prompts=prompts, completions=completions, solution=["3", "3", "5", "5"]) == [1.0, 0.0, 0.0, 1.0]
    assert acc(prompts=prompts, completions=completions, solution=["3", "3", "5", "5"]) == [1.0, 1.0, 0.0, 1.0]
    rows = rec.pop_rows(step=7)
    totals = [3.0, 2.0, 0.0, 3.0]  # format + 2 × accuracy
    # Eq. 3 by hand: groups (3, 2) and (0, 3); mean 2.5 and 1.5; sample std 0.7071 and 2.1213.
    sd1, sd2 = 0.5 ** 0.5 + 1e-4, 4.5 ** 0.5 + 1e-4
    hand = [0.5 / sd1, -0.5 / sd1, -1.5 / sd2, 1.5 / sd2]
    assert [r["advantage"] for r in rows] == pytest.approx(hand, rel=1e-6)
    assert [r["advantage"] for r in rows] == pytest.approx(group_advantages(totals, 2).tolist(), rel=1e-6)
    assert rows[0] == {"step": 7, "prompt": "p1", "completion": "boxed 3", "advantage": rows[0]["advantage"],
                       "rewards": {"format_reward": 1.0, "accuracy_reward": 1.0}}
    assert rec.pop_rows(step=8) == []


@pytest.mark.parametrize("profile", ["demo", "rehearsal", "paper"])
def test_grpo_config_yaml_reads_back_with_trls_parser(tmp_path, profile):
    import dataclasses

    from trl import GRPOConfig, TrlParser

    cfg = load_experiment(3, profile, **({"bf16": False} if profile == "paper" else {}))  # bf16 needs a GPU
    args = cfg.to_grpo_config(str(tmp_path))
    path = train.write_grpo_config(args, tmp_path / "grpo_config.yaml")
    (back,) = TrlParser((GRPOConfig,)).parse_args_and_config(["--config", str(path)])
    fields = [f.name for f in dataclasses.fields(GRPOConfig)]
    assert len(fields) > 150
    assert {n: getattr(back, n) for n in fields} == {n: getattr(args, n) for n in fields}
    assert back.beta == 0.04 and back.loss_type == "bnpo" and back.num_generations == cfg.num_generations


def test_learning_gain_compares_first_and_last_quarter():
    rows = [{"reward": r} for r in [0, 1, 2, 3, 4, 5, 6, 7]]
    assert train.demo_learning_gain(rows) == (0.5, 6.5)
    with pytest.raises(ValueError, match="at least 4"):
        train.demo_learning_gain(rows[:3])


def test_notebook_overrides_are_validated():
    ns = {"exp": 3, "profile": "demo", "max_steps": 5, "learning_rate": 5e-6, "_i3": "", "_": None}
    assert train.overrides_from_namespace(ns, {"learning_rate", "_i3", "_"}, {"exp"}) == {"learning_rate": 5e-6}
    ns["learnin_rate"] = 1.0
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['learnin_rate'\]"):
        train.overrides_from_namespace(ns, {"learning_rate", "learnin_rate"}, {"exp"})


def test_priming_target_matches_the_format_the_reward_checks():
    from openrs_nb.rewards import build_reward_funcs

    target = train.priming_target("6 + 47 = 53.\nThe final answer is $\\boxed{53}$.", "53", "strict")
    assert target == "<think>\n6 + 47 = 53.\n</think>\n<answer>\\boxed{53}</answer>"
    fmt, acc = build_reward_funcs(["format", "accuracy"], format_mode="strict")
    assert fmt([target]) == [1.0]
    assert acc([target], solution=["6 + 47 = 53.\nThe final answer is $\\boxed{53}$."]) == [1.0]
    prefilled = train.priming_target("1 + 1 = 2.\nx", "2", "prefilled_think")
    (fmt_r1,) = build_reward_funcs(["format"], format_mode="prefilled_think")
    assert fmt_r1([prefilled]) == [1.0]


@pytest.mark.slow
def test_two_grpo_steps_on_the_demo_model_write_metrics_and_checkpoints(tmp_path):
    cfg = load_experiment(3, "demo", max_steps=2, save_steps=1, sft_steps=1, sft_examples=8,
                          max_completion_length=16, dataset_size=16, log_completions=True)
    train.train(cfg, tmp_path)
    rows = train.read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward", "reward_std", "rewards/format_reward/mean", "rewards/cosine_reward/mean", "kl",
                "completions/mean_length"):
        assert key in rows[0], key
    assert train.latest_checkpoint(tmp_path).name == "checkpoint-2"
    completions = train.read_jsonl(tmp_path / "completions.jsonl")
    assert len(completions) == 2 * cfg.per_device_train_batch_size
    assert set(completions[0]["rewards"]) == {"format_reward", "cosine_reward"}
    assert json.loads((tmp_path / "run.json").read_text())["exp"] == 3
    # completions.jsonl (recorded through the reward functions) matches the table TRL itself writes with
    # log_completions: same completions, rewards and advantages (TRL computes those from the gathered rewards).
    import pandas as pd

    for step in (1, 2):
        table = pd.read_parquet(tmp_path / "completions" / f"completions_{step:05d}.parquet")
        ours = [c for c in completions if c["step"] == step]
        assert [train._plain(list(c)) for c in table["completion"]] == [c["completion"] for c in ours]
        assert list(table["advantage"]) == pytest.approx([c["advantage"] for c in ours], rel=1e-5, abs=1e-6)
        for name in ("format_reward", "cosine_reward"):
            assert list(table[name]) == pytest.approx([c["rewards"][name] for c in ours], rel=1e-6)
    assert train.read_json(tmp_path / "summary.json")["train_runtime"] > 0

    # Resume one more step from checkpoint-2: the metrics file continues.
    more = load_experiment(3, "demo", max_steps=3, save_steps=1, sft_steps=1, sft_examples=8,
                           max_completion_length=16, dataset_size=16)
    train.train(more, tmp_path, resume=True)
    assert [r["step"] for r in train.read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_the_bf16_sampler_is_a_bf16_copy_with_its_own_forward_and_kv_cache():
    import types

    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, use_cache=False)
    model = LlamaForCausalLM(config)
    model.forward = types.MethodType(lambda self, *a, **k: 1 / 0, model)  # as a trainer's patch would
    cpu_bf16 = types.SimpleNamespace(bf16=True, use_cpu=True)
    assert train.bf16_sampler(model, types.SimpleNamespace(bf16=False, use_cpu=True)) is None
    assert train.bf16_sampler(model, types.SimpleNamespace(bf16=True, use_cpu=False)) is None
    model.peft_config = {"default": None}  # LoRA keeps fp32 sampling
    assert train.bf16_sampler(model, cpu_bf16) is None
    del model.peft_config

    sampler = train.bf16_sampler(model, cpu_bf16)
    sampler.load_state_dict(model.state_dict())
    assert sampler.dtype == torch.bfloat16 and sampler.config.use_cache and not sampler.training
    assert sampler.config._attn_implementation == "eager"  # faster decode steps on CPU (bench_generation.py)
    with torch.no_grad():  # as generate runs it; requires_grad stays on (see bf16_sampler), no graph is built
        assert not sampler(input_ids=torch.randint(0, 96, (2, 5))).logits.requires_grad
    assert sampler.lm_head.weight.data_ptr() == sampler.model.embed_tokens.weight.data_ptr()  # still tied
    for name, low in sampler.state_dict().items():
        assert torch.equal(low, model.state_dict()[name].to(torch.bfloat16)), name

    ids = torch.randint(0, 96, (3, 7))
    with torch.no_grad():
        full = LlamaForCausalLM.forward(model, input_ids=ids).logits
        low = sampler(input_ids=ids).logits.float()  # its own forward, not the patched one
    assert (low - full).abs().max() < 0.05 * full.abs().max()
    out = sampler.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (3, 12)
    # TRL samples with do_sample=True; the sampler draws with generation.FastSampling, not torch.multinomial.
    real, sampling = torch.multinomial, GenerationConfig(do_sample=True, max_new_tokens=5, pad_token_id=0)
    try:
        torch.multinomial = lambda *a, **k: 1 / 0
        out = sampler.generate(ids, generation_config=sampling)
    finally:
        torch.multinomial = real
    assert out.shape == (3, 12)

    # a weight update reaches the copy on the next load (what the trainer does once per optimizer step)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.add_(1.0)
    sampler.load_state_dict(model.state_dict())
    assert torch.equal(sampler.model.layers[0].mlp.up_proj.weight,
                       model.model.layers[0].mlp.up_proj.weight.to(torch.bfloat16))


def test_format_logprob_is_the_mean_token_log_probability_of_the_priming_target():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from openrs_nb.models import load_tokenizer

    tok = load_tokenizer("demo")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)).eval()
    rows = [{"prompt": [{"role": "user", "content": "What is 2 + 3?"}], "solution": "2 + 3 = 5\n5", "answer": "5"},
            {"prompt": [{"role": "user", "content": "What is 7 - 4?"}], "solution": "7 - 4 = 3\n3", "answer": "3"}]
    # Brute force: every position's logits, the target tokens' log-probabilities picked one by one.
    total, count = 0.0, 0
    for row in rows:
        prompt = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        target = train.priming_target(row["solution"], row["answer"], "strict") + tok.eos_token
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        t = tok(target, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([p + t])).logits[0].log_softmax(-1)
        total += sum(logp[len(p) - 1 + i, token].item() for i, token in enumerate(t))
        count += len(t)
    assert train.format_logprob(model, tok, rows, "strict") == pytest.approx(total / count, abs=1e-5)
