"""Where the time of one CPU GRPO step of the demo goes, and how far it is from the machine's limit.

Runs the demo exactly as notebook 04 does (`openrs_nb.train.train`, TRL 1.16's GRPOTrainer) and times
its pieces by wrapping TRL's own methods, not a re-implementation:

  generation   GRPOTrainer._generate_single_turn          (transformers generate, KV cache)
  rewards      GRPOTrainer._calculate_rewards
  reference    GRPOTrainer._get_per_token_logps_and_entropies under no_grad (KL reference;
               with LoRA the same model with the adapter disabled)
  policy fwd   the same method with grad enabled (inside compute_loss)
  policy bwd   Accelerator.backward
  optimizer    between the on_pre_optimizer_step and on_optimizer_step callbacks (AdamW)
  other        the rest of the step (padding, advantages, loss arithmetic, gradient clipping)

FLOPs are counted from the model's linear layers and the padded token counts each piece really ran
(2 per weight per token forward; backward 2 more for the input gradient and 2 more where the weight
trains; attention 4·T·d per token and layer; TRL's CPU log-prob head scores every position and
recomputes the LM-head projection in backward). The limit is the best matmul throughput measured
here (fp32, and bf16 where the CPU has bf16 instructions); achieved / limit says how close a piece runs.

Several variants run side by side in one process, each in its own thread, taking turns step by step
(so a busy machine slows them alike), after `--warmup` steps each:

    .venv/bin/python benchmarks/bench_demo_step.py                       # fp32 vs bf16
    .venv/bin/python benchmarks/bench_demo_step.py --variants fp32,fp32+lora,bf16+lora --steps 5

Variant = '+'-joined tokens: fp32 | bf16 (autocast over fp32 weights), lora, gc / nogc (gradient checkpointing
on / off; default: the demo's setting), t<N> (torch threads), ga<N> (the step's completions in N
micro-batches), chunk<N> (TRL's CPU log-prob tile width), multinomial (the bf16 sampler draws as
transformers does, with a full-vocabulary torch.multinomial, instead of openrs_nb.generation.FastSampling).
`--numerics` compares bf16 autocast with fp32 on TRL's log-probs, loss and gradient.

Variant "bf16" is what the demo runs on CPUs with bf16 instructions: autocast over fp32 weights for the
training passes, and rollouts sampled from a bf16 copy of the weights (openrs_nb.train.bf16_sampler).

Measured on the project's 2-core CPU (AMD EPYC, avx512_bf16), experiment 2 demo,
`--exp 2 --variants fp32,bf16 --steps 3 --warmup 1`, on a quiet machine (load average ≈ 1):

  before (bf16 = autocast only; generate ran outside it, in fp32), 2026-11-29 10:17:
    piece        fp32 s   bf16 s        step: 2888 GFLOP (16 completions, 16×108 training tokens)
    generation    9.17     9.44 (1.03x)
    reference     3.41     1.95 (0.57x)
    policy fwd    3.58     2.13 (0.59x)
    policy bwd    9.56     6.43 (0.67x)
    step         26.17    21.46 (0.82x)  best matmul limit 408 GFLOP/s (bf16) = 7.08 s: 3.7x and 3.0x of it
  after (bf16 = autocast + a bf16 sampling copy), 2026-11-29 12:48:
    piece        fp32 s   bf16 s
    generation    9.34     7.88 (0.84x)
    reference     3.19     1.81 (0.57x)
    policy fwd    3.37     2.04 (0.60x)
    policy bwd    9.30     6.61 (0.71x)
    step         25.08    18.41 (0.73x)  best limit 415 GFLOP/s = 6.96 s: 3.6x (fp32) and 2.6x (bf16) of it
  after the sampling changes (the bf16 copy with eager attention and requires_grad on, see
  bench_generation.py and bench_demo_memory.py), 2026-11-29 15:22:
    piece        fp32 s   bf16 s
    generation    8.65     5.39 (0.62x)
    reference     3.08     1.80 (0.58x)
    policy fwd    3.27     2.32 (0.71x)
    policy bwd    8.80     7.01 (0.80x)
    step         24.42    16.78 (0.69x)  best limit 412 GFLOP/s = 7.00 s: 3.5x (fp32) and 2.4x (bf16) of it
  The 2x target is still not met: generation now runs at 20% of the bf16 limit (before: 13%; per decoded
  token, 16 rows times every weight; a 1-thread profile: aten::mm 63%, multinomial's exponential_ 7%,
  KV-cache copy/cat 11%), the bf16 training passes at 51-66%.
Earlier, under load (OMP_NUM_THREADS=1, load average 5–30), `--numerics` on 16 sampled completions
(673 tokens): per-token log-prob |Δ| max 1.01, mean 0.040 nats between bf16 autocast and fp32; GRPO loss
-0.002062 vs -0.001878; gradient ‖Δ‖/‖g‖ 0.107. Learning was then checked directly: the exp 2 demo in bf16
raised the mean total reward by +1.23 (seed 1) and +1.99 (seed 2) from the first to the last quarter of
its 40 steps (README), against +1.05 for fp32 seed 42 and +1.05 for fp32 seed 1 (30 of 40 steps) in an
earlier session, on a busy machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

PIECES = ("generation", "rewards", "reference", "policy fwd", "policy bwd", "optimizer", "other")
_tls = threading.local()  # the running variant's timer, per thread


# ---------------------------------------------------------------------------------------------
# Matmul throughput: the machine's limit
# ---------------------------------------------------------------------------------------------
def matmul_gflops(m: int, k: int, n: int, dtype, seconds: float = 0.4, repeats: int = 5) -> float:
    """Median GFLOP/s of torch.mm on [m,k]@[k,n] in `dtype` (each repeat runs ≥ `seconds`)."""
    import torch

    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    out = torch.empty(m, n, dtype=dtype)
    torch.mm(a, b, out=out)
    rates = []
    for _ in range(repeats):
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            torch.mm(a, b, out=out)
            reps += 1
        rates.append(2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


# ---------------------------------------------------------------------------------------------
# Timing TRL's pieces
# ---------------------------------------------------------------------------------------------
class StepTimer:
    """Seconds and shapes of each piece, per step; collected through the wrappers below."""

    def __init__(self, name: str):
        self.name = name
        self.steps: list[dict] = []
        self.cur: dict | None = None

    def begin(self):
        self.cur = {"t0": time.perf_counter(), "sec": defaultdict(float), "shapes": defaultdict(list)}

    def end(self):
        self.cur["total"] = time.perf_counter() - self.cur["t0"]
        self.steps.append(self.cur)
        self.cur = None

    @contextmanager
    def piece(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.cur is not None:
                self.cur["sec"][name] += time.perf_counter() - t0


def _timer() -> StepTimer | None:
    return getattr(_tls, "timer", None)


def install_wrappers() -> None:
    """Wrap GRPOTrainer's and Accelerator's methods once, for every trainer in this process."""
    import torch
    from accelerate import Accelerator
    from trl import GRPOTrainer

    def wrap(cls, name, piece_of):
        original = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            timer = _timer()
            if timer is None:
                return original(self, *args, **kwargs)
            piece = piece_of(self, args, kwargs)
            with timer.piece(piece):
                out = original(self, *args, **kwargs)
            if timer.cur is not None:
                timer.cur["shapes"][piece].append(_shape_of(piece, self, args, kwargs, out))
            return out

        setattr(cls, name, wrapper)

    wrap(GRPOTrainer, "_generate_single_turn", lambda s, a, k: "generation")
    wrap(GRPOTrainer, "_calculate_rewards", lambda s, a, k: "rewards")
    wrap(GRPOTrainer, "_get_per_token_logps_and_entropies",
         lambda s, a, k: "policy fwd" if torch.is_grad_enabled() else "reference")
    wrap(Accelerator, "backward", lambda s, a, k: "policy bwd")


def _shape_of(piece, trainer, args, kwargs, out):
    """Token counts a piece ran on (padded shapes: what the hardware computed)."""
    if piece == "generation":
        prompt_ids = args[0]
        completion_ids, _ = out
        return {"rows": len(prompt_ids), "prompt_pad": max(map(len, prompt_ids)),
                "prompt_real": sum(map(len, prompt_ids)), "new_tokens": max(map(len, completion_ids)),
                "completion_real": sum(map(len, completion_ids))}
    if piece in ("reference", "policy fwd"):
        input_ids, attention_mask = args[1], args[2]
        return {"rows": input_ids.shape[0], "seq": input_ids.shape[1], "real": int(attention_mask.sum()),
                "logits_to_keep": args[3]}
    return {}


def make_callback(timer: StepTimer, go, report):
    """Waits for the parent's go before each step; reports the step (times, shapes, logs) after its log."""
    from transformers import TrainerCallback

    class Timed(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            _tls.timer = timer
            shape = dataclasses.replace(model_shape(model), checkpointing=bool(args.gradient_checkpointing))
            report({"shape": dataclasses.asdict(shape)})

        def on_step_begin(self, args, state, control, **kw):
            go()
            timer.begin()

        def on_pre_optimizer_step(self, args, state, control, **kw):
            self._t_opt = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kw):
            timer.cur["sec"]["optimizer"] += time.perf_counter() - self._t_opt

        def on_step_end(self, args, state, control, **kw):
            timer.end()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "train_runtime" not in logs:
                step = timer.steps[-1]
                report({"step": {"total": step["total"], "sec": dict(step["sec"]),
                                 "shapes": {k: list(v) for k, v in step["shapes"].items()},
                                 "logs": {k: v for k, v in logs.items() if isinstance(v, (int, float))}}})

    return Timed()


# ---------------------------------------------------------------------------------------------
# FLOPs from the model shape
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ModelShape:
    linear_fwd: int  # weights of all linear layers but the LM head (2 FLOPs each per token)
    linear_trained: int  # of those, weights that get a gradient (all, or the LoRA adapters)
    head: int  # LM head weights (hidden × vocab)
    head_trained: bool
    layers: int
    attn_width: int  # heads × head_dim
    checkpointing: bool = False  # gradient checkpointing: the forward is recomputed in backward


def model_shape(model) -> ModelShape:
    import torch

    lin = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")]
    head = model.get_output_embeddings()
    cfg = model.config
    return ModelShape(
        linear_fwd=sum(m.weight.numel() for m in lin),
        linear_trained=sum(m.weight.numel() for m in lin if m.weight.requires_grad),
        head=head.weight.numel(),
        head_trained=head.weight.requires_grad,
        layers=cfg.num_hidden_layers,
        attn_width=cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads),
    )


def step_flops(shape: ModelShape, step: dict) -> dict[str, float]:
    """FLOPs each piece executed in one step, from its padded shapes."""
    s = step["shapes"]
    f: dict[str, float] = defaultdict(float)
    lin, head, attn = 2 * shape.linear_fwd, 2 * shape.head, shape.layers * shape.attn_width
    for g in s["generation"]:
        rows, p, new = g["rows"], g["prompt_pad"], g["new_tokens"]
        # prefill of the padded prompts (LM head on the last position only), then one token per row and step
        f["generation"] += rows * p * (lin + 2 * attn * p) + rows * head
        f["generation"] += rows * new * (lin + head + 4 * attn * (p + new / 2))  # mean context p + new/2
    for piece in ("reference", "policy fwd"):
        for x in s[piece]:
            rows, t = x["rows"], x["seq"]
            # TRL's CPU log-prob head projects every position but the last (on CPU it does not skip the prompt)
            body, head_fwd = rows * t * (lin + 4 * attn * t), rows * (t - 1) * head
            f[piece] += body + head_fwd
            if piece == "policy fwd":
                # input gradients (2 per weight), weight gradients where trained, attention twice its forward;
                # TRL recomputes the head projection in backward; checkpointing recomputes the body's forward
                trained = 2 * shape.linear_trained
                f["policy bwd"] += rows * t * (lin + trained + 8 * attn * t) + head_fwd * (2 + shape.head_trained)
                if shape.checkpointing:
                    f["policy bwd"] += body
    return f


# ---------------------------------------------------------------------------------------------
# Variants
# ---------------------------------------------------------------------------------------------
def parse_variant(spec: str) -> dict:
    v = {"name": spec, "bf16": False, "lora": False, "threads": None, "ga": 1, "gc": None, "chunk": None,
         "multinomial": False}
    for tok in spec.split("+"):
        if tok in ("fp32", "bf16"):
            v["bf16"] = tok == "bf16"
        elif tok in ("lora", "gc"):
            v[tok] = True
        elif tok == "nogc":
            v["gc"] = False
        elif tok == "multinomial":
            v["multinomial"] = True
        elif tok.startswith("t") and tok[1:].isdigit():
            v["threads"] = int(tok[1:])
        elif tok.startswith("ga") and tok[2:].isdigit():
            v["ga"] = int(tok[2:])
        elif tok.startswith("chunk") and tok[5:].isdigit():
            v["chunk"] = int(tok[5:])
        else:
            raise SystemExit(f"unknown variant token {tok!r} in {spec!r}; use fp32, bf16, lora, gc, nogc, t<N>, "
                             "ga<N>, chunk<N>, multinomial")
    return v


def variant_config(base, v):
    """A variant's demo config: precision, LoRA, checkpointing, the step's completions in `ga` micro-batches."""
    batch = base.per_device_train_batch_size * base.gradient_accumulation_steps
    if batch % (v["ga"] * base.num_generations):
        raise SystemExit(f"ga{v['ga']}: {batch} completions do not split into {v['ga']} micro-batches of whole groups")
    return dataclasses.replace(base, bf16=v["bf16"], lora=v["lora"],
                               gradient_checkpointing=base.gradient_checkpointing if v["gc"] is None else v["gc"],
                               per_device_train_batch_size=batch // v["ga"], gradient_accumulation_steps=v["ga"])


def child(args) -> None:
    """One variant in its own process (torch's autocast and accelerate's state are process-wide)."""
    import json

    from openrs_nb import train

    v = parse_variant(args.variant)
    if v["threads"]:
        import torch

        torch.set_num_threads(v["threads"])
    cfg = variant_config(_base_config(args), v)
    if v["chunk"]:  # vocabulary width of TRL's CPU log-prob tiles instead of openrs_nb's choice
        import trl.trainer.utils

        from openrs_nb import cpu

        cpu.narrow_trl_logprob_tiles = lambda: setattr(trl.trainer.utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", v["chunk"])
    if v["multinomial"]:  # the bf16 sampler draws as transformers does, not with generation.FastSampling
        train.fast_generate = lambda model, *a, **k: type(model).generate(model, *a, **k)
    result = os.fdopen(args.result_fd, "w", buffering=1)

    def go():
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("the parent stopped the benchmark")

    def report(obj):
        result.write(json.dumps(obj) + "\n")

    install_wrappers()
    # Every variant starts from the one primed model the parent made (priming itself is not timed).
    primed = Path(args.child_out) / "format-priming"
    train.format_priming = lambda cfg, output_dir, **kw: primed
    train.train(cfg, Path(args.child_out), callbacks=[make_callback(StepTimer(v["name"]), go, report)])


def _base_config(args):
    import json

    from openrs_nb.config import load_experiment

    sets = {k: json.loads(v) for k, v in (x.split("=", 1) for x in args.set)}
    return load_experiment(args.exp, "demo", **{"lora": False, **sets, "max_steps": args.warmup + args.steps,
                                               "save_steps": 10**6})


def run(args) -> None:
    import json
    import subprocess

    import torch

    from openrs_nb import cpu, train

    variants = [parse_variant(s) for s in args.variants.split(",")]
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, usable cores {cpu.usable_cpus()}, "
          f"fast bf16: {cpu.has_fast_bf16()}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)

    # --- the limit, measured before and after the steps (the best of both: a busy machine lowers it)
    shapes = [(1520, 576, 1536), (1840, 576, 4096), (2048, 2048, 2048)]
    limit: dict[str, float] = {}
    dtypes = [("fp32", torch.float32)] + ([("bf16", torch.bfloat16)] if cpu.has_fast_bf16() or args.bf16_anyway else [])

    def measure_limit(when):
        print(f"\nmatmul throughput {when} (torch.mm, median GFLOP/s):")
        for label, dt in dtypes:
            rates = [matmul_gflops(m, k, n, dt) for m, k, n in shapes]
            limit[label] = max(limit.get(label, 0.0), *rates)
            print(f"  {label}: " + "  ".join(f"{m}x{k}@{k}x{n} {r:6.0f}" for (m, k, n), r in zip(shapes, rates)),
                  flush=True)

    measure_limit("before the steps")

    # --- one shared format-primed policy, so every variant starts from the same weights
    work = Path(args.work)
    base = _base_config(args)
    primed_dir = work / "primed"
    if base.sft_steps:
        t0 = time.perf_counter()
        train.format_priming(base, primed_dir)
        print(f"format priming ready in {primed_dir} ({time.perf_counter() - t0:.0f} s)", flush=True)

    procs = []
    for i, v in enumerate(variants):
        out = work / f"run-{i}-{v['name']}"
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        if base.sft_steps:
            (out / "format-priming").symlink_to((primed_dir / "format-priming").resolve())
        r, w = os.pipe()
        cmd = [sys.executable, __file__, "--exp", str(args.exp), "--steps", str(args.steps), "--warmup",
               str(args.warmup), "--variant", v["name"], "--child-out", str(out), "--result-fd", str(w),
               *[f"--set={x}" for x in args.set]]
        log = open(out / "child.log", "w")
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, text=True,
                             pass_fds=(w,))
        os.close(w)
        procs.append({"p": p, "res": os.fdopen(r), "steps": [], "shape": None, "v": v, "log": out / "child.log"})
    try:
        for pr in procs:  # wait until every variant has built its trainer
            line = pr["res"].readline()
            if not line:
                raise SystemExit(f"{pr['v']['name']} failed to start; see {pr['log']}")
            pr["shape"] = ModelShape(**json.loads(line)["shape"])
        for _ in range(args.warmup + args.steps):  # variants take turns, one step each
            for pr in procs:
                pr["p"].stdin.write("go\n")
                pr["p"].stdin.flush()
                line = pr["res"].readline()
                if not line:
                    raise SystemExit(f"{pr['v']['name']} stopped; see {pr['log']}")
                pr["steps"].append(json.loads(line)["step"])
        for pr in procs:
            pr["p"].stdin.close()
            pr["p"].wait(timeout=600)
    finally:
        for pr in procs:
            if pr["p"].poll() is None:
                pr["p"].kill()
    load = os.getloadavg()
    print(f"\nload average after the runs: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    measure_limit("after the steps")
    report(procs, limit, args.warmup)


def report(procs, limit, warmup) -> None:
    rows = []
    best = max(limit.values())
    for pr in procs:
        v, shape = pr["v"], pr["shape"]
        steps = pr["steps"][warmup:]
        for s in steps:
            s["shapes"] = defaultdict(list, s["shapes"])
        med = {p: statistics.median(s["sec"].get(p, 0.0) for s in steps) for p in PIECES[:-1]}
        totals = [s["total"] for s in steps]
        med["other"] = statistics.median(s["total"] - sum(s["sec"].values()) for s in steps)
        flops = [step_flops(shape, s) for s in steps]
        fmed = {p: statistics.median(f.get(p, 0.0) for f in flops) for p in PIECES}
        lim = limit["bf16" if v["bf16"] and "bf16" in limit else "fp32"]
        tok = steps[-1]["shapes"]["policy fwd"][0]
        gen = steps[-1]["shapes"]["generation"][0]
        print(f"\n=== {v['name']}: {len(steps)} steps after {warmup} warm-up; last step: {gen['rows']} completions, "
              f"prompt {gen['prompt_pad']} tokens padded, {gen['new_tokens']} generated (longest), "
              f"training tensor {tok['rows']}x{tok['seq']} ({tok['real']} real tokens)")
        print(f"{'piece':12s} {'median s':>9s} {'share':>6s} {'GFLOP':>7s} {'GFLOP/s':>8s} {'/ limit':>8s}")
        tot = statistics.median(totals)
        for p in PIECES:
            rate = fmed[p] / med[p] / 1e9 if med[p] > 0 and fmed[p] else 0.0
            print(f"{p:12s} {med[p]:9.2f} {med[p] / tot:6.1%} {fmed[p] / 1e9:7.0f} {rate:8.0f} "
                  f"{(f'{rate / lim:7.0%}' if rate else ''):>8s}")
        total = sum(fmed.values())
        print(f"{'step':12s} {tot:9.2f} {'':6s} {total / 1e9:7.0f} {total / tot / 1e9:8.0f} "
              f"{total / tot / 1e9 / lim:7.0%}   (min {min(totals):.2f}, max {max(totals):.2f} s)")
        print(f"limit: {total / 1e9:.0f} GFLOP at {lim:.0f} GFLOP/s = {total / lim / 1e9:.2f} s; at the machine's "
              f"best {best:.0f} GFLOP/s = {total / best / 1e9:.2f} s; step / best limit = "
              f"{tot / (total / best / 1e9):.1f}x")
        if any(fmed[p] / med[p] / 1e9 > lim for p in PIECES if med[p] > 0 and fmed[p]):
            print("note: a piece ran faster than the measured limit, so the machine was busier while the limit was "
                  "measured than during the steps; the ratios to the limit are not meaningful on this run")
        rows.append((v["name"], tot, med, pr["steps"]))
    if len(rows) > 1:
        ref_name, ref_tot, ref_med, _ = rows[0]
        print(f"\nmedian step time relative to {ref_name} (same steps, taken in turns):")
        for name, tot, med, _ in rows:
            parts = "  ".join(f"{p} {med[p] / ref_med[p]:.2f}x" for p in PIECES if ref_med[p] > 0.05)
            print(f"  {name:16s} {tot:6.2f} s  {tot / ref_tot:.2f}x   {parts}")
    print("\nlogged per step (all steps, warm-up included):")
    for name, _, _, steps in rows:
        print(f"  {name:16s} reward " + " ".join(f"{s['logs'].get('reward', float('nan')):.2f}" for s in steps)
              + " | kl " + " ".join(f"{s['logs'].get('kl', float('nan')):.4f}" for s in steps))


def numerics(args) -> None:
    """bf16 autocast against fp32 on the same TRL code: per-token log-probs, the GRPO loss, its gradient."""
    import torch

    from openrs_nb import grpo, train
    from openrs_nb.generation import generate
    from openrs_nb.models import load_tokenizer

    base = _base_config(args)
    primed = train.format_priming(base, Path(args.work) / "primed")
    tokenizer = load_tokenizer(str(primed))
    dataset = train.load_train_dataset(base, tokenizer)
    rows = dataset.select(range(4))
    G = base.num_generations
    samples = generate(str(primed), rows["prompt"], tokenizer=tokenizer, n=G, max_new_tokens=base.max_completion_length,
                       temperature=base.temperature, top_p=1.0, seed=0, backend="transformers", progress=False)
    prompts = [p for p in rows["prompt"] for _ in range(G)]
    batch = grpo.completion_batch(tokenizer, prompts, [s["text"] or "." for g in samples for s in g])
    trainer = grpo.trl_trainer(str(primed), tokenizer, beta=base.beta, temperature=base.temperature,
                               num_generations=len(prompts), max_completion_length=base.max_completion_length,
                               output_dir=str(Path(args.work) / "numerics"))
    model = trainer.model
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    n = batch["completion_ids"].size(1)
    cmask = batch["completion_mask"].bool()
    torch.manual_seed(0)
    advantages = grpo.group_advantages(torch.randint(0, 4, (len(prompts),)).float(), G)

    def run(dtype):
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else torch.autocast("cpu", enabled=False)
        with ctx:
            with torch.no_grad():
                logp, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, n)
            model.zero_grad()
            loss, _ = grpo.trl_loss(trainer, batch, advantages, ref_logp=ref)
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).clone()
        return logp, loss.item(), grad

    with torch.no_grad():
        ref, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, n)
    ref = ref - 0.01  # a reference slightly off the policy, so the KL term and its gradient are not zero
    lp32, loss32, g32 = run("fp32")
    lp16, loss16, g16 = run("bf16")
    d = (lp16 - lp32)[cmask].abs()
    print(f"\nnumerics, bf16 autocast vs fp32 on {cmask.sum().item()} completion tokens of {len(prompts)} sampled "
          f"completions (TRL's log-prob head and compute_loss):")
    print(f"  per-token log-prob: max |Δ| {d.max():.4f}, mean |Δ| {d.mean():.5f} nats (fp32 values: mean "
          f"{lp32[cmask].mean():.3f})")
    print(f"  sequence log-prob (sum over tokens): max |Δ| {((lp16 - lp32) * cmask).sum(1).abs().max():.4f} nats")
    print(f"  GRPO loss: fp32 {loss32:.6f}, bf16 {loss16:.6f}, |Δ| {abs(loss16 - loss32):.2e}")
    g16, g32 = g16.double(), g32.double()  # fp32 norms of 10^8 entries drift (a cosine of 1.03 was printed)
    cos = (g16 @ g32 / (g16.norm() * g32.norm())).item()
    print(f"  gradient: ‖Δ‖/‖g_fp32‖ {((g16 - g32).norm() / g32.norm()).item():.4f}, cosine {cos:.5f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--exp", type=int, default=3)
    ap.add_argument("--variants", default="fp32,bf16", help="comma-separated, e.g. fp32,bf16,fp32+lora,bf16+t1")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps per variant")
    ap.add_argument("--work", default=str(Path(__file__).resolve().parent.parent / "runs" / "bench_step"))
    ap.add_argument("--bf16-anyway", action="store_true", help="measure bf16 matmuls even without bf16 instructions")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                    help="demo config override, e.g. --set max_completion_length=32")
    ap.add_argument("--numerics", action="store_true", help="compare bf16 autocast with fp32 numerically, then stop")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # internal: one variant's child process
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("--result-fd", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.numerics:
        numerics(args)
    else:
        child(args) if args.variant else run(args)


if __name__ == "__main__":
    sys.exit(main())
