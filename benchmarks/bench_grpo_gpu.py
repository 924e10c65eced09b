"""GPU smoke check and throughput benchmark of the paper path (`make gpu-smoke`); no download needed.

Builds a random-initialised model with DeepSeek-R1-Distill-Qwen-1.5B's architecture (1.78B parameters,
or a smaller `--scale`), saves it with the embedded tokenizer, and runs a few GRPO steps of the paper
preset (6 generations, per-device batch 6, `--grad-accum` micro-batches) through openrs_nb.train, every
completion forced to `--completion-tokens` tokens. Uses every visible GPU the way the paper profile
would: one GPU trains in this process (vLLM colocated when installed, transformers generate
otherwise); several run the paper's `accelerate launch` (vLLM server on the last GPU by default).

    .venv/bin/python benchmarks/bench_grpo_gpu.py                        # full size, 4 steps
    .venv/bin/python benchmarks/bench_grpo_gpu.py --scale 0.25 --steps 3 --completion-tokens 1024

Prints per step generation, weight-sync, reward and training seconds, completion tokens/s and peak GPU
memory, then the medians (step 1 is warm-up) and the estimated wall time of 500 steps; writes the same
as JSON to <output-dir>/report.json. Without CUDA it exits at once with code 77 (the "skipped" code).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

NO_CUDA_EXIT = 77


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp", type=int, default=3, choices=(1, 2, 3), help="experiment whose paper preset to use")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="model size: 1 = R1-Distill-Qwen-1.5B, 0.25 = 7 layers × 384 wide")
    ap.add_argument("--steps", type=int, default=4, help="GRPO optimizer steps (the first is warm-up)")
    ap.add_argument("--grad-accum", type=int, default=4, help="micro-batches of 6 completions per step (paper: 4)")
    ap.add_argument("--completion-tokens", type=int, default=None,
                    help="forced length of every completion (default: the preset's max, 3584; 4096 for exp 1)")
    ap.add_argument("--vllm-mode", choices=("server", "colocate"), default=None,
                    help="with several GPUs: server (paper, default) or colocate; one GPU always colocates")
    ap.add_argument("--vllm-gpu-memory-utilization", type=float, default=None,
                    help="vLLM's share of its GPU (default: 0.7 for a server GPU as in the paper, 0.3 colocated)")
    ap.add_argument("--no-vllm", action="store_true", help="generate with transformers even when vllm is installed")
    ap.add_argument("--output-dir", default=None, help="default: runs/gpu-smoke/<date-time>")
    ap.add_argument("--keep-model", action="store_true", help="keep the saved random model (3.6 GB at full size)")
    args = ap.parse_args(argv)
    for name in ("steps", "grad_accum"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.completion_tokens is not None and args.completion_tokens < 1:
        ap.error(f"--completion-tokens must be >= 1, got {args.completion_tokens}")
    if not 0 < args.scale <= 1:
        ap.error(f"--scale must be in (0, 1], got {args.scale}")
    share = args.vllm_gpu_memory_utilization
    if share is not None and not 0 < share <= 1:
        ap.error(f"--vllm-gpu-memory-utilization must be in (0, 1], got {share}")
    return args


def cuda_problem() -> str | None:
    """Why CUDA training cannot run here, or None."""
    import torch

    if torch.version.cuda is None:
        return f"this torch {torch.__version__} is a CPU-only build (torch.version.cuda is None)"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA GPU (CUDA_VISIBLE_DEVICES=" \
               f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r})"
    return None


def device_info() -> dict:
    import torch
    import transformers
    import trl

    vllm = importlib.util.find_spec("vllm")
    props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    return {"gpus": [p.name for p in props], "gpu_memory_gib": [round(p.total_memory / 2**30, 1) for p in props],
            "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
            "trl": trl.__version__, "vllm": _version("vllm") if vllm else None}


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def main(argv=None) -> int:
    args = parse_args(argv)
    problem = cuda_problem()
    if problem:
        print(f"bench_grpo_gpu: needs a CUDA GPU, and {problem}.\n"
              "It times GRPO steps of the paper geometry on GPUs; nothing was run. On CPU, `make demo` trains "
              "the embedded model instead.", file=sys.stderr)
        return NO_CUDA_EXIT

    import torch

    from openrs_nb import gpu_smoke
    from openrs_nb.config import project_path
    from openrs_nb.models import load_tokenizer

    has_vllm = importlib.util.find_spec("vllm") is not None and not args.no_vllm
    launch = gpu_smoke.choose_launch(torch.cuda.device_count(), has_vllm, args.vllm_mode)
    if launch["launch"] == "accelerate" and importlib.util.find_spec("deepspeed") is None:
        print("bench_grpo_gpu: the paper's multi-GPU launch uses DeepSpeed ZeRO-2; `pip install deepspeed` "
              "(or CUDA_VISIBLE_DEVICES=0 to time one GPU).", file=sys.stderr)
        return 1
    out = Path(args.output_dir) if args.output_dir else project_path("runs/gpu-smoke") / time.strftime("%Y%m%d-%H%M%S")
    if (out / "report.json").exists() or (out / "train").exists():
        print(f"bench_grpo_gpu: {out} already holds a run; choose another --output-dir", file=sys.stderr)
        return 1

    overrides = dict(gradient_accumulation_steps=args.grad_accum, num_gpus=launch["num_gpus"],
                     use_vllm=launch["use_vllm"])
    if args.completion_tokens:
        overrides["max_completion_length"] = args.completion_tokens
    if launch["use_vllm"]:
        default_share = 0.7 if launch["vllm_mode"] == "server" else 0.3
        overrides.update(vllm_mode=launch["vllm_mode"],
                         vllm_gpu_memory_utilization=args.vllm_gpu_memory_utilization or default_share)
    config = gpu_smoke.model_config(args.scale)
    cfg = gpu_smoke.smoke_config(args.exp, out / "model", steps=args.steps,
                                 sample_vocab_size=len(load_tokenizer("demo")), **overrides)
    out.mkdir(parents=True, exist_ok=True)
    try:
        return run(args, cfg, launch, config, out)
    finally:
        if not args.keep_model and (out / "model").exists():
            shutil.rmtree(out / "model")


def run(args, cfg, launch: dict, config, out: Path) -> int:
    """Build and save the model, train, write and print the report; returns the exit code."""
    import torch

    from openrs_nb import gpu_smoke, train
    from openrs_nb.config import load_experiment

    n_params = gpu_smoke.parameter_count(config)
    completions = cfg.train_processes * cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    if launch["note"]:
        print(f"[gpu-smoke] {launch['note']}")
    print(f"[gpu-smoke] exp {cfg.exp} paper preset: {cfg.train_processes} training process(es) × "
          f"{cfg.per_device_train_batch_size} × {cfg.gradient_accumulation_steps} = {completions} completions "
          f"of {cfg.max_completion_length} tokens per step; generation: "
          f"{'vLLM ' + cfg.vllm_mode if cfg.use_vllm else 'transformers'}; launch: {launch['launch']}")
    print(f"[gpu-smoke] random {config.num_hidden_layers}-layer Qwen2 ({config.hidden_size} wide, "
          f"{n_params / 1e9:.3f}B parameters) -> {cfg.model_name_or_path}")
    t0 = time.perf_counter()
    gpu_smoke.save_random_model(cfg.model_name_or_path, config, dtype=torch.bfloat16, device="cuda")
    torch.cuda.empty_cache()
    build_s = time.perf_counter() - t0

    train_dir = out / "train"
    if launch["launch"] == "in_process":
        gpu_smoke.run_worker(cfg, train_dir)
    else:
        plan = gpu_smoke.worker_plan(cfg, launch, train_dir)
        # `accelerate` and `trl` are the venv's scripts: found even when the venv is not activated
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        rc = train.run_launch(plan)
        if rc:
            print(f"bench_grpo_gpu: training exited with code {rc}; see {train_dir}/train.log", file=sys.stderr)
            return rc

    paper = load_experiment(args.exp, "paper")
    report = gpu_smoke.build_report(
        gpu_smoke.read_step_rows(train_dir),
        run=dict(exp=cfg.exp, launch=launch["launch"], generation="vllm" if cfg.use_vllm else "transformers",
                 vllm_mode=cfg.vllm_mode if cfg.use_vllm else None, num_gpus=launch["num_gpus"],
                 train_processes=cfg.train_processes, num_generations=cfg.num_generations,
                 per_device_train_batch_size=cfg.per_device_train_batch_size,
                 gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                 completion_tokens=cfg.max_completion_length, steps=cfg.max_steps,
                 vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization if cfg.use_vllm else None,
                 model_build_s=build_s, note=launch["note"], command=sys.argv),
        model=dict(scale=args.scale, parameters=n_params, dtype="bfloat16", hidden_size=config.hidden_size,
                   num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
                   num_key_value_heads=config.num_key_value_heads, intermediate_size=config.intermediate_size,
                   vocab_size=config.vocab_size,
                   sampled_ids_below=cfg.sample_vocab_size if cfg.use_vllm else config.vocab_size),
        device=device_info(),
        planned_steps=paper.max_steps,
        paper_completions_per_step=paper.train_processes * paper.per_device_train_batch_size
        * paper.gradient_accumulation_steps,
    )
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print("\n" + gpu_smoke.format_report(report))
    print(f"\n[gpu-smoke] report: {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
