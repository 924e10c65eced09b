"""GPU smoke check (benchmarks/bench_grpo_gpu.py): the model builder, forced-length sampling, the report,
the launch choice and the refusal without CUDA — everything that runs on CPU."""

import dataclasses
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from openrs_nb import gpu_smoke, train

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)


def meta_count(config) -> int:
    """Parameters of the model instantiated on the meta device (shapes only, no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert model.lm_head.weight is not model.model.embed_tokens.weight  # untied
    return sum(p.numel() for p in model.parameters())


def test_full_size_model_is_r1_distill_qwen_with_1_78b_parameters():
    c = gpu_smoke.model_config()
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (1536, 28, 12, 2)
    assert (c.intermediate_size, c.vocab_size, c.tie_word_embeddings) == (8960, 151936, False)
    assert c.rope_parameters["rope_theta"] == 10000.0 and c.max_position_embeddings == 131072
    assert c.rms_norm_eps == 1e-6 and c.hidden_act == "silu" and c.sliding_window is None
    # By hand: embeddings and untied head 2 × 151,936 × 1,536 = 466,747,392. Per layer: q 1536·1536 + 1536,
    # k and v 2 × (1536·256 + 256), o 1536·1536 -> 5,507,072; MLP 3 × 1536 × 8960 = 41,287,680; two norms
    # 3,072 -> 46,797,824 × 28 = 1,310,339,072. Final norm 1,536. Total 1,777,088,000.
    assert gpu_smoke.parameter_count(c) == 1_777_088_000
    assert meta_count(c) == 1_777_088_000
    assert abs(1_777_088_000 / gpu_smoke.PAPER_PARAMETERS - 1) < 0.01  # 0.16% below 1.78B


def test_scaled_variant_keeps_heads_and_vocabulary():
    c = gpu_smoke.model_config(0.25)
    assert (c.hidden_size, c.num_hidden_layers, c.intermediate_size) == (384, 7, 2240)  # 12 heads × 32
    assert (c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == (12, 2, 151936)
    # 2 × 151,936 × 384 + 7 × (384·384+384 + 2·(384·64+64) + 384·384 + 3·384·2240 + 768) + 384
    assert gpu_smoke.parameter_count(c) == meta_count(c) == 137_168_000
    half = gpu_smoke.model_config(0.5)
    assert (half.hidden_size, half.num_hidden_layers, half.intermediate_size) == (768, 14, 4480)
    assert gpu_smoke.parameter_count(gpu_smoke.model_config(**TINY)) == meta_count(gpu_smoke.model_config(**TINY))
    for bad in (0, 1.5, -1):
        with pytest.raises(ValueError, match="scale"):
            gpu_smoke.model_config(bad)
    with pytest.raises(ValueError, match="hidden_sz"):
        gpu_smoke.model_config(hidden_sz=64)


def test_forced_length_kwargs_for_both_backends():
    assert gpu_smoke.forced_length_kwargs(5, "transformers", 3) == {"min_new_tokens": 5}
    assert gpu_smoke.forced_length_kwargs(5, "vllm", 3) == {"min_tokens": 5, "allowed_token_ids": [0, 1, 2]}
    assert gpu_smoke.forced_length_kwargs(5, "vllm") == {"min_tokens": 5}
    with pytest.raises(ValueError, match="backend"):
        gpu_smoke.forced_length_kwargs(5, "sglang")
    with pytest.raises(ValueError, match="length >= 1"):
        gpu_smoke.forced_length_kwargs(0, "vllm")


def test_forced_length_generation_on_a_tiny_model():
    """A model that wants to stop at once (eos logit +100) still writes exactly L tokens when sampled
    with the forced-length kwargs TRL receives; the tokenizer decodes ids it lacks to nothing."""
    from transformers import GenerationConfig

    from openrs_nb.models import load_tokenizer

    eos, length = 2, 12
    model = gpu_smoke.build_random_model(gpu_smoke.model_config(**TINY), seed=1).eval()

    def wants_to_stop(module, inputs, logits):
        logits[..., eos] += 100.0
        return logits

    model.lm_head.register_forward_hook(wants_to_stop)
    prompt = torch.tensor([[1, 504, 2318, 17, 330], [1, 28, 900, 4410, 21]])
    base = dict(max_new_tokens=length, do_sample=True, eos_token_id=eos, pad_token_id=0)

    free = model.generate(prompt, generation_config=GenerationConfig(**base))
    assert free.shape[1] - prompt.shape[1] == 1 and (free[:, -1] == eos).all()  # stops at once

    torch.manual_seed(0)
    kwargs = gpu_smoke.forced_length_kwargs(length, "transformers")
    forced = model.generate(prompt, generation_config=GenerationConfig(**base, **kwargs))[:, prompt.shape[1]:]
    assert forced.shape == (2, length) and not (forced == eos).any()
    tok = load_tokenizer("demo")
    unknown = forced[forced >= len(tok)]
    assert len(unknown) > 0 and tok.decode(unknown) == ""  # ~2/3 of a uniform draw over 151,936 ids


def test_step_timer_splits_a_step_with_trls_own_timings(tmp_path):
    from types import SimpleNamespace

    from trl.extras.profiling import ProfilingContext

    gpu_smoke.record_trl_timings()
    gpu_smoke.record_trl_timings()  # installing twice records once
    timer = gpu_smoke.StepTimer(tmp_path, ["format", "cosine"])
    args = SimpleNamespace(process_index=1, per_device_train_batch_size=6, gradient_accumulation_steps=4, world_size=3)
    timer.on_step_begin(args, SimpleNamespace(global_step=0), None)
    before = len(gpu_smoke.TRL_TIMINGS)
    for name in ("GRPOTrainer.vLLM.generate", "GRPOTrainer.sync_weights", "GRPOTrainer.cosine_reward",
                 "GRPOTrainer._prepare_inputs"):
        with ProfilingContext(name=name, report_to=[], is_main_process=True):
            time.sleep(0.02)
    timer.on_step_end(args, SimpleNamespace(global_step=1), None)
    timer.on_log(args, None, None, logs={"completions/mean_length": 50.0, "completions/min_length": 50,
                                         "completions/max_length": 50, "num_tokens": 9000, "step_time": 0.1})
    timer.on_log(args, None, None, logs={"train_runtime": 1.0})  # the end-of-training summary is no step
    (row,) = gpu_smoke.read_step_rows(tmp_path)
    assert row["step"] == 1 and row["rank"] == 1 and row["completions"] == 72
    new = gpu_smoke.TRL_TIMINGS[before:]
    assert [n for n, _ in new] == ["vLLM.generate", "sync_weights", "cosine_reward", "_prepare_inputs"]
    assert row["generation_s"] == new[0][1] >= 0.02 and row["weight_sync_s"] == new[1][1]
    assert row["reward_s"] == new[2][1] and row["step_s"] >= sum(d for _, d in new)  # _prepare_inputs: no bucket
    assert row["completion_length_min"] == 50 and row["num_tokens"] == 9000 and row["peak_memory_gib"] is None
    assert (tmp_path / "gpu_steps.rank1.jsonl").exists()


def _rows(rank, steps, peak):
    """Step rows as StepTimer writes them: 24 completions of 100 tokens, 40 prompt tokens each."""
    return [dict(step=s, rank=rank, step_s=10.0 * s, generation_s=4.0 * s, weight_sync_s=0.5, reward_s=0.5,
                 completions=24, peak_memory_gib=peak + s, device_memory_used_gib=50.0, completion_length_mean=100.0,
                 completion_length_min=100, completion_length_max=100, num_tokens=s * 24 * 140,
                 trl_step_time_s=9.0 * s) for s in steps]


def test_report_figures_medians_and_estimate():
    rows = _rows(0, [1, 2, 3], 10.0) + _rows(1, [1, 2, 3], 20.0)
    report = gpu_smoke.build_report(rows, run={"completion_tokens": 100}, model={"parameters": 1}, device={},
                                    planned_steps=500, paper_completions_per_step=72)
    report = json.loads(json.dumps(report))  # the JSON written is the report
    assert set(report) == {"schema", "created", "device", "model", "run", "steps", "summary"}
    s2 = report["steps"][1]
    assert s2["step"] == 2 and s2["step_s"] == 20.0 and s2["generation_s"] == 8.0 and s2["train_s"] == 11.0
    assert s2["completion_tokens"] == 2400 and s2["prompt_tokens"] == 24 * 40
    assert s2["generation_tokens_per_s"] == 300.0 and s2["tokens_per_s"] == 120.0
    assert s2["peak_memory_gib"] == 22.0  # the busier process
    s = report["summary"]
    assert s["measured_steps"] == [2, 3]  # step 1 is warm-up
    assert s["median_step_s"] == 25.0 and s["median_generation_s"] == 10.0 and s["median_train_s"] == 14.0
    assert s["estimated_hours"] == pytest.approx(500 * 25 / 3600)
    assert s["estimated_hours_paper_batch"] == pytest.approx(500 * 25 / 3600 * 3)
    assert s["peak_memory_gib"] == 23.0 and s["forced_length_ok"] is True
    text = gpu_smoke.format_report(report)
    assert "median over steps [2, 3] (step 1, warm-up, left out): 25.0 s/step = generation 10.0" in text
    assert "estimated 500 steps here: 3.47 h" in text and "10.42 h" in text
    one = gpu_smoke.build_report(rows[:1], run={"completion_tokens": 100}, model={}, device={})
    assert "median over steps [1]: 10.0 s/step" in gpu_smoke.format_report(one)

    short = _rows(0, [1, 2], 1.0)
    short[1]["completion_length_min"] = 97
    assert gpu_smoke.build_report(short, run={"completion_tokens": 100}, model={}, device={})["summary"][
        "forced_length_ok"] is False
    with pytest.raises(ValueError, match="no step rows"):
        gpu_smoke.build_report([], run={"completion_tokens": 100}, model={}, device={})


def test_launch_choice_follows_the_paper_profile():
    assert gpu_smoke.choose_launch(1, True) == dict(launch="in_process", use_vllm=True, vllm_mode="colocate",
                                                    num_gpus=1, note=None)
    assert gpu_smoke.choose_launch(1, False)["launch"] == "in_process"
    assert gpu_smoke.choose_launch(4, True) == dict(launch="accelerate", use_vllm=True, vllm_mode="server",
                                                    num_gpus=4, note=None)
    assert gpu_smoke.choose_launch(4, True, "colocate")["vllm_mode"] == "colocate"
    three = gpu_smoke.choose_launch(3, False)
    assert three["launch"] == "gpu0_subprocess" and three["num_gpus"] == 1 and "vllm is not installed" in three["note"]
    with pytest.raises(ValueError, match="server"):
        gpu_smoke.choose_launch(1, True, "server")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        gpu_smoke.choose_launch(0, True)


def test_smoke_config_is_the_paper_preset_and_survives_run_json(tmp_path):
    cfg = gpu_smoke.smoke_config(3, tmp_path / "model", steps=4, sample_vocab_size=49152, num_gpus=4)
    assert (cfg.num_generations, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps) == (6, 6, 4)
    assert cfg.max_completion_length == 3584 and cfg.learning_rate == 1e-6 and cfg.beta == 0.04
    assert cfg.dataset == "demo" and cfg.dataset_size == 2 * 4 * 12 and cfg.max_steps == 4
    kw = cfg.grpo_kwargs()
    assert kw["save_strategy"] == "no" and kw["vllm_mode"] == "server"
    assert kw["generation_kwargs"]["min_tokens"] == 3584 and len(kw["generation_kwargs"]["allowed_token_ids"]) == 49152

    plan = train.launch_plan(cfg, tmp_path / "run")  # the paper's launch, SmokeConfig included
    plan.write()
    again = gpu_smoke.load_smoke_config(tmp_path / "run" / "run.json")
    assert isinstance(again, gpu_smoke.SmokeConfig) and again.vllm_server_base_url == "http://127.0.0.1:8000"
    assert dataclasses.replace(again, vllm_server_base_url=None) == cfg

    cpu = gpu_smoke.smoke_config(2, tmp_path, steps=1, sample_vocab_size=10, use_vllm=False, num_gpus=1,
                                 max_completion_length=7)
    assert cpu.grpo_kwargs()["generation_kwargs"] == {"min_new_tokens": 7}
    with pytest.raises(ValueError, match="vllm_max_model_length"):
        gpu_smoke.smoke_config(3, tmp_path, steps=1, max_completion_length=4097)


def test_launched_processes_run_the_smoke_worker(tmp_path):
    paper = gpu_smoke.smoke_config(3, tmp_path / "model", steps=2, sample_vocab_size=49152, num_gpus=4)
    plan = gpu_smoke.worker_plan(paper, gpu_smoke.choose_launch(4, True), tmp_path / "a")
    assert plan.vllm_command[:2] == ["trl", "vllm-serve"] and plan.train_env == {"CUDA_VISIBLE_DEVICES": "0,1,2"}
    assert plan.train_command[:2] == ["accelerate", "launch"]
    assert plan.train_command[plan.train_command.index("-m") + 1] == "openrs_nb.gpu_smoke"

    one = gpu_smoke.smoke_config(3, tmp_path / "model", steps=2, use_vllm=False, num_gpus=1)
    plan = gpu_smoke.worker_plan(one, gpu_smoke.choose_launch(2, False), tmp_path / "b")
    assert plan.vllm_command is None and plan.train_env == {"CUDA_VISIBLE_DEVICES": "0"}
    assert plan.train_command[:3] == [sys.executable, "-m", "openrs_nb.gpu_smoke"]
    plan.write()
    assert gpu_smoke.load_smoke_config(tmp_path / "b" / "run.json") == one
    with pytest.raises(ValueError, match="needs no plan"):
        gpu_smoke.worker_plan(one, gpu_smoke.choose_launch(1, False), tmp_path / "c")


def test_refuses_cleanly_without_cuda(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_grpo_gpu.py"), "--output-dir",
                           str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 77, proc.stderr
    assert "needs a CUDA GPU" in proc.stderr and "nothing was run" in proc.stderr
    assert not (tmp_path / "out").exists() and proc.stdout == ""
    assert time.perf_counter() - start < 60


@pytest.mark.slow
@pytest.mark.skipif("callbacks" not in inspect.signature(train.train).parameters,
                    reason="needs openrs_nb.train.train(..., callbacks=) (issue 8 asks the lead for it)")
def test_one_grpo_step_on_a_tiny_random_model(tmp_path):
    """One real GRPO step through train.train on CPU: completions of exactly 8 tokens, one timed step row."""
    from openrs_nb.models import load_tokenizer

    config = gpu_smoke.model_config(**TINY, vocab_size=49152)  # the LM head dominates a CPU step; 151,936 is 3x slower
    model_dir = gpu_smoke.save_random_model(tmp_path / "model", config)
    cfg = gpu_smoke.smoke_config(3, model_dir, steps=1, sample_vocab_size=len(load_tokenizer("demo")),
                                 max_completion_length=8, gradient_accumulation_steps=1, use_vllm=False, use_cpu=True,
                                 bf16=False, num_gpus=0, gradient_checkpointing=False)
    gpu_smoke.run_worker(cfg, tmp_path / "train")
    (row,) = gpu_smoke.read_step_rows(tmp_path / "train")
    assert row["step"] == 1 and row["completions"] == 6
    assert row["completion_length_min"] == row["completion_length_max"] == 8
    assert 0 < row["generation_s"] < row["step_s"] and row["peak_memory_gib"] is None
    report = gpu_smoke.build_report([row], run={"completion_tokens": 8}, model={}, device={})
    assert report["summary"]["forced_length_ok"] and report["steps"][0]["completion_tokens"] == 48
