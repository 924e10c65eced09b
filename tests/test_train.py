"""Training: launch plans, metrics on disk, resume, notebook overrides, and a real (tiny) GRPO run."""

import json
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

    written = {p.name for p in plan.write()}
    assert written == {"accelerate_zero2.yaml", "run.json", "launch.sh"}
    acc = yaml.safe_load((tmp_path / "run" / "accelerate_zero2.yaml").read_text())
    assert acc["num_processes"] == 3 and acc["num_machines"] == 1
    assert acc["deepspeed_config"]["zero_stage"] == 2 and acc["mixed_precision"] == "bf16"
    assert acc["deepspeed_config"]["offload_optimizer_device"] == "none"
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


def test_multi_node_plan(tmp_path):
    cfg = load_experiment(2, "paper", num_machines=2)
    plan = train.launch_plan(cfg, tmp_path, machine_rank=1, main_process_ip="10.0.0.5")
    acc = yaml.safe_load(plan.files["accelerate_zero2.yaml"])
    assert acc["num_machines"] == 2 and acc["num_processes"] == 6 and acc["machine_rank"] == 1
    assert acc["main_process_ip"] == "10.0.0.5"
    assert plan.health_url == "http://10.0.0.5:8000/health"


def test_the_demo_profile_has_no_launch_plan(tmp_path):
    with pytest.raises(ValueError, match="GPU runs with vLLM"):
        train.launch_plan(load_experiment(3, "demo"), tmp_path)


def test_launch_script_is_valid_shell(tmp_path):
    import subprocess

    plan = train.launch_plan(load_experiment(3, "paper"), tmp_path)
    plan.write()
    subprocess.run(["bash", "-n", str(tmp_path / "launch.sh")], check=True)
    assert shlex.split(plan.shell().splitlines()[-1])[-1] == str(tmp_path)


def _metrics(tmp_path, steps):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "reward": float(s)}) + "\n" for s in steps))
    return path


def test_read_jsonl_skips_a_truncated_last_line_only(tmp_path):
    path = _metrics(tmp_path, [1, 2])
    with open(path, "a") as f:
        f.write('{"step": 3, "rew')
    assert [r["step"] for r in train.read_jsonl(path)] == [1, 2]
    path.write_text('{"step": 1}\n{broken\n{"step": 3}\n')
    with pytest.raises(json.JSONDecodeError):
        train.read_jsonl(path)


def test_a_finished_run_is_never_overwritten(tmp_path):
    _metrics(tmp_path, [1, 2])
    with pytest.raises(FileExistsError, match="resume=True"):
        train._prepare_output_dir(tmp_path, resume=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train._prepare_output_dir(tmp_path, resume=True)


def test_resume_keeps_metrics_up_to_the_checkpoint_and_sets_the_rest_aside(tmp_path):
    _metrics(tmp_path, [1, 2, 3, 4, 5])
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-notes").mkdir()
    ckpt = train._prepare_output_dir(tmp_path, resume=True)
    assert ckpt.name == "checkpoint-4"
    assert [r["step"] for r in train.read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
    assert [r["step"] for r in train.read_jsonl(tmp_path / "metrics.jsonl.after-checkpoint-4")] == [5]


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
                          max_completion_length=16, dataset_size=16)
    train.train(cfg, tmp_path)
    rows = train.read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward", "reward_std", "rewards/format_reward/mean", "rewards/cosine_reward/mean", "kl",
                "completions/mean_length"):
        assert key in rows[0], key
    assert train.latest_checkpoint(tmp_path).name == "checkpoint-2"
    completions = train.read_jsonl(tmp_path / "completions.jsonl")
    assert len(completions) == 2 * cfg.per_device_train_batch_size and set(completions[0]["rewards"]) == {"format_reward", "cosine_reward"}
    assert json.loads((tmp_path / "run.json").read_text())["exp"] == 3

    # Resume one more step from checkpoint-2: the metrics file continues.
    more = load_experiment(3, "demo", max_steps=3, save_steps=1, sft_steps=1, sft_examples=8,
                           max_completion_length=16, dataset_size=16)
    train.train(more, tmp_path, resume=True)
    assert [r["step"] for r in train.read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
