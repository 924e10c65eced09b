"""Peak resident memory per stage of notebook 04's demo, beside what the tensors of each stage need.

The stages are 04's, run through the same functions in one process, in 04's order:

  imports     torch, transformers, trl, openrs_nb
  data        tokenizer and training prompts (train.load_train_dataset)
  probe       the untrained model sampled for a few groups (generation.generate, as 04's probe)
  priming     format priming (train.format_priming: TRL's SFTTrainer)
  trainer     GRPOTrainer built: policy and, without LoRA, the KL reference
  step 1, 2   training steps: generation, log-probs, backward, AdamW (its state appears at step 1)

Each stage's peak is the process's resident high-water mark (VmHWM), reset at the stage's start
(`echo 5 > /proc/self/clear_refs`); "after" is the resident set (VmRSS) once the stage is over.
Each configuration runs in a fresh process, so allocator settings can differ:

    .venv/bin/python benchmarks/bench_demo_memory.py                          # full and LoRA, exp 2
    .venv/bin/python benchmarks/bench_demo_memory.py --alloc default,glibc,arena2,jemalloc,mmap1m --lora on

  default    as openrs_nb sets it: under LoRA (cfg.lora) format priming and train() make glibc mmap every
             block ≥ 1 MiB (openrs_nb.cpu.mmap_large_allocations); all-weights runs keep glibc's defaults
  glibc      OPENRS_MMAP_THRESHOLD=0: glibc's defaults under LoRA too (up to 8 arenas per core; the mmap
             threshold rises to 32 MiB after the first large free, and freed tensors stay in its heap)
  arena2     MALLOC_ARENA_MAX=2
  jemalloc   LD_PRELOAD of libjemalloc.so.2 (apt install libjemalloc2), where installed
  mmap1m     MALLOC_MMAP_THRESHOLD_=1048576 in the environment (what mmap_large_allocations does in-process)
  thp        mmap1m + THP_MEM_ALLOC_ENABLE=1 (torch asks for 2 MiB pages for its large blocks: fewer faults)

Targets of the demo (issue 13): LoRA ≤ 2 GiB peak, all weights ≤ 4 GiB peak.

Measured: experiment 2 demo (04's default), 1 step, gradient checkpointing on, fp32 (--set bf16=false),
each configuration a fresh process on one core (OMP_NUM_THREADS=1 taskset -c 1):

    .venv/bin/python benchmarks/bench_demo_memory.py --exp 2 --steps 1 --lora on --alloc ... [--set bf16=false]

    peak MiB (LoRA)                imports  data  probe  priming  trainer  step 1    peak     step 1
    before (commit b9c93ea: all-weights AdamW format priming; glibc as the system sets it)
      default                         350   486   1136     3826      598    3444   3.74 GiB    49 s
      arena2                          350   488   1129     3758      595    3155   3.67 GiB    51 s
      jemalloc                        356   487   1134     3336      856    1439   3.26 GiB    60 s
      mmap1m                          350   476   1105     3161      586    1489   3.09 GiB    71 s
    after (LoRA format priming merged into the weights; blocks ≥ 1 MiB mmapped under LoRA)
      default                         350   486   1137     1367      608    1550   1.51 GiB    64 s
      glibc                           350   486   1124     2090      602    3203   3.13 GiB    48 s

The LoRA step's peak above the all-weights step's (3.4 GiB here; all weights, exp 3: 3.1 GiB) was the
allocator, not tensors: with glibc's defaults the step left 2.9 GiB resident once over, with blocks
≥ 1 MiB mmapped 1.1 GiB. Per phase of one LoRA step (one process, one core,
working tree of this change with bf16 autocast on, as the demo sets it on a CPU with bf16 instructions):

    peak MiB / seconds            generation + old/ref log-probs   loss forward   backward    step
    glibc defaults                        1175 / 21.1                1935 / 6.2   1980 / 12.0   40 s
    blocks ≥ 1 MiB mmapped                1163 / 27.5                1324 / 10.4  1445 / 20.5   59 s
    the same + THP_MEM_ALLOC_ENABLE=1     1182 / 24.5                1327 / 7.8   1450 / 16.6   49 s

LoRA priming now peaks at 1.37 GiB (its model, 0.53 GiB, over the 0.6 GiB the process held before); the
step, at 1.5 GiB, is still 0.6 GiB above the tensor estimate in its row (not broken down further).
All-weights runs are unchanged by this (all-weights priming, glibc's defaults): 3.52 GiB peak (exp 3,
last measured before this change). In notebook 04 itself (LoRA, bf16 autocast as the demo sets it on this
CPU, run by papermill in a cgroup v1 with memory.limit_in_bytes 2 GiB and cpu.cfs_quota_us 100000 of
100000, pinned to one core) the kernel's resident peak (VmRSS with the file-backed weights, sampled every
0.2 s) was: probe 1.14 GiB, LoRA priming 1.39 GiB, the by-hand GRPO step 1.92 GiB (its reference
log-probs taken from the policy before the update, gradient checkpointing on, completion logits only, its
param group freed after), training steps 1-10 1.62 GiB (about 60 s a step).

All weights, bf16 (the demo's setting on a CPU with bf16 instructions), experiment 2, 2 steps, one core
(OMP_NUM_THREADS=1 taskset -c 1), working tree of 29 Nov 2026 (sampler with eager attention):

    .venv/bin/python benchmarks/bench_demo_memory.py --lora off --steps 2 --set bf16=true

    peak MiB      imports  data  probe  priming  trainer  step 1  step 2     peak
    before            350   488   1136     3477      924    3532    4396   4.29 GiB  (119 s in all)
    after (eceb9b0)   350   486   1130     3491      933    3534    4012   3.92 GiB  (116 s in all)

"after" is the committed code, run on its own beside a 1-core notebook job on the other core; the
patched run of the investigation below had 3.88 GiB. Over more steps it grows (`--steps 12 --set
save_steps=5`, 2 threads, quiet): step peaks 3935-4080 MiB from step 3 on, resident after each step
3441 MiB (step 1) -> 3808 MiB (step 12), with no jump at the checkpoint steps 5 and 10. Notebook 04's
kernel in make demo peaked at 4.2 GiB with 40 steps and again with 24 (4.22 GiB, VmHWM sampled every 0.5 s),
so the notebook's peak is not reached by the growth over the later steps; where its last 0.2-0.3 GiB above
this benchmark go was not found.

Per phase of each step (one process, VmHWM reset at each phase; a scratch copy of this script's child with
hooks on the trainer): step 1 peaks at AdamW's first step (3532 MiB: gradients, then m and v allocated);
step 2 starts there (policy 513 + reference 513 + m, v 1026 + bf16 sampler 257 MiB + the process) and adds
  generation +864 MiB (transient)   reference log-probs +1   policy log-probs +125   backward +342 (gradients)
  optimizer step +0 (transformers' default optim on torch >= 2.8 is "adamw_torch_fused": no foreach
  temporaries, so there is nothing to gain from foreach=False).
The generation transient is the bf16 sampler's LM head at prefill: generate keeps the last position
(logits_to_keep=1), a [16, 1, 576] slice with stride 32,256, and torch's matmul folds a non-contiguous 3-D
input into one mm only when an operand requires grad; train.bf16_sampler sets requires_grad_(False), so
the [576, 49152] weight is broadcast to [16, 576, 49152] and copied: 864 MiB at every rollout (measured
alone too: a bf16 model's prefill of 16 x 56 tokens, 880 MiB with requires_grad False, 22 MiB with True;
F.linear on the slice, 864 MiB vs 0). With the sampler's parameters left requiring grad (generation runs
under torch.no_grad, so no graph is built): no transient, step 2 peaks in backward at 3973 MiB, the whole
run at 3.88 GiB (target met); generation 8.8 -> 7.0 s, step time 32/30 s -> 29/26 s; logged kl at steps
1 and 2 unchanged (0, 0.004398). Blocks >= 1 MiB mmapped (MALLOC_MMAP_THRESHOLD_=1048576, as under LoRA)
instead: step 2 peak 3951 MiB, still at generation, at 45/38 s a step (not adopted).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
GIB = 2**30
MIB = 2**20


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


class Stages:
    """Peak and final resident memory of each stage, in bytes."""

    def __init__(self):
        self.rows: list[dict] = []
        self.name = None

    def start(self, name: str):
        if self.name:
            self.stop()
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        self.name, self.t0 = name, time.perf_counter()

    def stop(self):
        row = {"stage": self.name, "peak": _status_kib("VmHWM") * 1024, "after": _status_kib("VmRSS") * 1024,
               "seconds": time.perf_counter() - self.t0}
        self.rows.append(row)
        print("STAGE " + json.dumps(row), flush=True)  # the parent keeps what a killed run measured
        self.name = None


def expected_sizes(cfg, n_params: int, n_trainable: int, vocab: int, hidden: int, layers: int, kv_width: int,
                   prompt_tokens: int) -> dict[str, dict[str, int]]:
    """Bytes the tensors of each stage need, by kind (fp32 throughout, as the demo runs)."""
    b = 4
    weights = n_params * b
    rows = cfg.per_device_train_batch_size
    seq = prompt_tokens + cfg.max_completion_length
    tokens = rows * seq
    kv = 2 * layers * rows * seq * kv_width * b  # generation's KV cache
    # TRL's CPU log-prob head: one [tokens, 32768] fp32 tile and a few temporaries of its size
    head_tile = min(tokens, 4096) * 32768 * b
    # activations autograd keeps per layer: about 16 hidden-sized tensors and the MLP's 3 × 1536/576 wider ones
    acts = layers * tokens * hidden * b * 24
    if cfg.gradient_checkpointing:  # each layer's input, plus one layer's activations while it is recomputed
        acts = (layers + 24) * tokens * hidden * b
    probe_rows = cfg.num_generations * 6
    return {
        "imports": {},
        "data": {},
        "probe": {"weights": weights, "KV cache": 2 * layers * probe_rows * seq * kv_width * b},
        # LoRA primes LoRA adapters (train.format_priming), the same count as GRPO's
        "priming": ({"weights": weights, "grads": n_trainable * b, "AdamW m+v": 2 * n_trainable * b} if cfg.lora
                    else {"weights": weights, "grads": weights, "AdamW m+v": 2 * weights}),
        "trainer": {"policy": weights, "reference": 0 if cfg.lora else weights},
        "step 1": {"policy+ref": weights * (1 if cfg.lora else 2), "grads": n_trainable * b,
                   "AdamW m+v": 2 * n_trainable * b, "KV cache": kv, "activations": acts, "LM-head tile": head_tile},
    }


def child(args) -> None:
    stages = Stages()
    stages.start("imports")
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401
    from transformers import TrainerCallback

    from openrs_nb import train
    from openrs_nb.config import load_experiment
    from openrs_nb.generation import generate
    from openrs_nb.models import load_tokenizer, resolve_model_path

    stages.stop()

    stages.start("data")
    sets = {k: json.loads(v) for k, v in (x.split("=", 1) for x in args.set)}
    cfg = load_experiment(args.exp, "demo", **{"lora": args.lora == "on", "max_steps": args.steps,
                                               "save_steps": 10**6, **sets})
    if args.chunk:  # vocabulary width of TRL's CPU log-prob tiles instead of openrs_nb's choice
        import trl.trainer.utils

        from openrs_nb import cpu

        cpu.narrow_trl_logprob_tiles = lambda: setattr(trl.trainer.utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", args.chunk)
    tokenizer = load_tokenizer(cfg.model_name_or_path)
    dataset = train.load_train_dataset(cfg, tokenizer)
    prompt_tokens = max(len(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True))
                        for p in dataset.select(range(64))["prompt"])
    stages.stop()

    stages.start("probe")  # 04 section 3: the untrained model, 6 groups
    rows = dataset.select(range(6))
    generate(cfg.model_name_or_path, rows["prompt"], tokenizer=tokenizer, n=cfg.num_generations,
             max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature, top_p=1.0, seed=0,
             backend="transformers", progress=False)
    stages.stop()

    out = Path(args.out)
    stages.start("priming")
    if cfg.sft_steps:
        train.format_priming(cfg, out)
    stages.stop()

    from transformers import AutoConfig

    mcfg = AutoConfig.from_pretrained(resolve_model_path(cfg.model_name_or_path))
    kv_width = mcfg.num_key_value_heads * getattr(mcfg, "head_dim", mcfg.hidden_size // mcfg.num_attention_heads)
    info = {}

    class StageMarks(TrainerCallback):
        def on_train_begin(self, args_, state, control, model=None, **kw):
            info["n_params"] = sum(p.numel() for p in model.parameters())
            info["n_trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
            stages.stop()

        def on_step_begin(self, args_, state, control, **kw):
            stages.start(f"step {state.global_step + 1}")

        def on_step_end(self, args_, state, control, **kw):
            stages.stop()

    stages.start("trainer")
    train.train(cfg, out, callbacks=[StageMarks()])
    exp = expected_sizes(cfg, info["n_params"], info["n_trainable"], mcfg.vocab_size, mcfg.hidden_size,
                         mcfg.num_hidden_layers, kv_width, prompt_tokens)
    for r in stages.rows:
        r["expected"] = exp.get(r["stage"], {})
        if r["stage"].startswith("step") and r["stage"] != "step 1":
            r["expected"] = exp["step 1"]
    print("RESULT " + json.dumps({"rows": stages.rows, "peak": _status_kib("VmPeak") * 1024, **info}))


def run(args) -> None:
    configs = []
    for lora in (["off", "on"] if args.lora == "both" else [args.lora]):
        for alloc in args.alloc.split(","):
            if alloc == "jemalloc" and not Path(JEMALLOC).exists():
                print(f"skipping jemalloc: {JEMALLOC} is not installed (apt install libjemalloc2)")
                continue
            configs.append((lora, alloc))
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; experiment {args.exp}, {args.steps} steps; "
          f"overrides {args.set or 'none'}; TRL CPU log-prob tile width {args.chunk or 'openrs_nb.cpu.TRL_CPU_TILE'}")
    results = []
    for lora, alloc in configs:
        env = dict(os.environ)
        if alloc == "glibc":
            env["OPENRS_MMAP_THRESHOLD"] = "0"
        elif alloc == "arena2":
            env["MALLOC_ARENA_MAX"] = "2"
        elif alloc == "jemalloc":
            env["LD_PRELOAD"] = JEMALLOC
        elif alloc == "mmap1m":
            env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
        elif alloc == "thp":
            env.update(MALLOC_MMAP_THRESHOLD_=str(1 << 20), THP_MEM_ALLOC_ENABLE="1")
        elif alloc != "default":
            raise SystemExit(f"unknown allocator {alloc!r}; choose default, glibc, arena2, jemalloc, mmap1m, thp")
        out = Path(args.work) / f"{'lora' if lora == 'on' else 'full'}-{alloc}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        cmd = [sys.executable, __file__, "--child", "--exp", str(args.exp), "--steps", str(args.steps),
               "--lora", lora, "--out", str(out), "--chunk", str(args.chunk)] + [f"--set={x}" for x in args.set]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        (out / "child.log").write_text(proc.stdout + proc.stderr)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            done = [json.loads(x[len("STAGE "):]) for x in proc.stdout.splitlines() if x.startswith("STAGE ")]
            why = ", killed: out of memory?" if proc.returncode == -9 else ""
            print(f"\n{lora=} {alloc=}: failed (exit {proc.returncode}{why}) after {[r['stage'] for r in done]}; "
                  f"see {out / 'child.log'}")
            for r in done:
                print(f"  {r['stage']:10s} peak {r['peak'] / MIB:6.0f} MiB, after {r['after'] / MIB:6.0f} MiB")
            continue
        res = json.loads(line[-1][len("RESULT "):])
        results.append((lora, alloc, res, wall))
        label = f"{'LoRA' if lora == 'on' else 'all weights'}, {alloc}"
        print(f"\n=== {label}: {res['n_params'] / 1e6:.1f}M parameters, {res['n_trainable'] / 1e6:.2f}M trained; "
              f"{wall:.0f} s")
        print(f"{'stage':10s} {'peak MiB':>9s} {'after MiB':>10s} {'+peak vs before':>16s}  "
              "tensors the stage needs (MiB)")
        before = 0
        for r in res["rows"]:
            need = ", ".join(f"{k} {v / MIB:.0f}" for k, v in r["expected"].items())
            need_total = sum(r["expected"].values())
            print(f"{r['stage']:10s} {r['peak'] / MIB:9.0f} {r['after'] / MIB:10.0f} "
                  f"{(r['peak'] - before) / MIB:16.0f}  {need}{f' = {need_total / MIB:.0f}' if need_total else ''}")
            before = r["after"]
        peak = max(r["peak"] for r in res["rows"])
        target = 2 if lora == "on" else 4
        verdict = "met" if peak <= target * GIB else "NOT met"
        print(f"peak resident {peak / GIB:.2f} GiB (target ≤ {target} GiB: {verdict})")
    if len(results) > 1:
        print("\nsummary: peak GiB")
        for lora, alloc, res, wall in results:
            print(f"  {'LoRA' if lora == 'on' else 'all weights':12s} {alloc:9s} "
                  f"{max(r['peak'] for r in res['rows']) / GIB:5.2f}   ({wall:.0f} s)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--exp", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2, help="training steps (AdamW allocates its state in step 1)")
    ap.add_argument("--lora", default="both", choices=["off", "on", "both"])
    ap.add_argument("--alloc", default="default", help="comma-separated: default, glibc, arena2, jemalloc, mmap1m, thp")
    ap.add_argument("--work", default=str(Path(__file__).resolve().parent.parent / "runs" / "bench_memory"))
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                    help="config override, e.g. --set gradient_checkpointing=true")
    ap.add_argument("--chunk", type=int, default=0, help="vocabulary width of TRL's CPU log-prob tiles (0 = TRL's)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    child(args) if args.child else run(args)


if __name__ == "__main__":
    sys.exit(main())
