"""Peak memory and time of per-token log-probabilities at Qwen2's vocabulary (151,936) and long completions.

Three ways to get log π(token) for every position of [B, T, V] fp32 logits:
  naive      logits.log_softmax(-1).gather(-1, ids)       (a second full [B, T, V] tensor)
  trl        trl.trainer.utils.selective_log_softmax      (TRL 1.16's helper; its CPU path loops over B)
  openrs_nb  openrs_nb.grpo.selective_log_softmax         (chunks of `--chunk-size` positions)

Each (variant, batch) runs in a fresh subprocess that first allocates the logits, then reads its resident
set size (RSS); the peak extra memory is the process's high-water mark (ru_maxrss) minus that baseline, so
it sees every allocation, torch's included. Values are compared with the naive result (max |Δ|, max
relative Δ) and, on the first 64 positions, with an fp64 computation (|Δ| fp64). Usage:

    .venv/bin/python benchmarks/bench_logprobs.py                       # vocab 151,936, T 4,096, B 1 and 2
    .venv/bin/python benchmarks/bench_logprobs.py --tokens 512 --batch 1  # a quick look

Needs about 3 × B × T × V × 4 bytes free for the naive run (10 GB at B = 2).

Measured on the project's 2-core CPU, torch 2.13, defaults (chunk 128, T = 1), while other jobs kept
the load average near 4 (times are noisy; memory is not):

     B    variant    logits  peak extra  vs naive  median s  vs naive   max |Δ|  max rel Δ  |Δ| fp64
     1      naive    2.32Gi      2374Mi   100.0%      2.30     1.00×   0.0e+00    0.0e+00   1.8e-05
     1        trl    2.32Gi      2374Mi   100.0%      3.19     1.39×   2.7e-05    1.6e-06   1.6e-06
     1  openrs_nb    2.32Gi        74Mi     3.1%      3.71     1.61×   2.7e-05    1.6e-06   1.6e-06
     2      naive    4.64Gi      4748Mi   100.0%      5.90     1.00×   0.0e+00    0.0e+00   1.7e-05
     2        trl    4.64Gi      2374Mi    50.0%      8.91     1.51×   2.7e-05    2.1e-06   1.5e-06
     2  openrs_nb    4.64Gi        74Mi     1.6%      7.19     1.22×   2.7e-05    2.1e-06   1.5e-06

The chunked version's extra memory is one [128, V] fp32 chunk (74 MiB) whatever B and T; TRL's CPU path
holds one [T, V] row at a time. Its values agree with the naive ones to 2e-6 relative, and are closer
to an fp64 computation than the naive ones (max error 1.5e-6 vs 1.7e-5 nats).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("naive", "trl", "openrs_nb")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def worker(args) -> None:
    """One variant in this process: allocate logits, measure the function, save its output."""
    import torch

    if args.variant == "trl":
        from trl.trainer.utils import selective_log_softmax as trl_fn
    else:
        from openrs_nb.grpo import selective_log_softmax as ours

    def run(logits, ids):
        if args.variant == "naive":
            return (logits / args.temperature if args.temperature != 1 else logits).log_softmax(-1).gather(
                -1, ids.unsqueeze(-1)).squeeze(-1)
        if args.variant == "trl":
            return trl_fn(logits, ids, temperature=args.temperature)
        return ours(logits, ids, chunk_size=args.chunk_size, temperature=args.temperature)

    batch = args.batch[0]
    gen = torch.Generator().manual_seed(0)
    logits = torch.empty(batch, args.tokens, args.vocab).normal_(0.0, 3.0, generator=gen)  # filled in place
    ids = torch.randint(0, args.vocab, (batch, args.tokens), generator=gen)
    with torch.no_grad():
        run(logits[:, :8], ids[:, :8])  # warm up kernels and allocator on a small slice
    baseline, peak_before = rss_bytes(), peak_bytes()
    times, out = [], None
    with torch.no_grad():
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = run(logits, ids)
            times.append(time.perf_counter() - t0)
            out = result if out is None else out
            del result
    peak_extra = peak_bytes() - baseline  # before the fp64 check below allocates
    torch.save(out.clone(), args.out)
    # accuracy against an fp64 reference on the first positions (a full fp64 copy would not fit)
    n = min(64, args.tokens)
    exact = (logits[:, :n].double() / args.temperature).log_softmax(-1).gather(-1, ids[:, :n, None]).squeeze(-1)
    fp64_err = (out[:, :n].double() - exact).abs().max().item()
    print(json.dumps({
        "fp64_err": fp64_err,
        "variant": args.variant, "batch": batch, "logits_bytes": logits.numel() * logits.element_size(),
        "baseline_rss": baseline, "peak_before": peak_before, "peak_extra": peak_extra,
        "times": times, "threads": torch.get_num_threads(),
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=151_936, help="vocabulary size (Qwen2: 151,936)")
    ap.add_argument("--tokens", type=int, default=4096, help="completion length T")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 2], help="batch sizes B to measure")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per variant (median reported)")
    ap.add_argument("--chunk-size", type=int, default=128, help="positions per chunk for openrs_nb")
    ap.add_argument("--temperature", type=float, default=1.0, help="logits are divided by this first")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # worker mode
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        return worker(args)
    if "naive" not in args.variants:
        ap.error("--variants must include naive: the others are compared with it")
    for name in ("vocab", "tokens", "repeats", "chunk_size"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")

    import torch

    print(f"vocab {args.vocab:,} × tokens {args.tokens:,}, fp32 logits, chunk_size {args.chunk_size}, "
          f"temperature {args.temperature}, {args.repeats} timed calls each; torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'B':>2} {'variant':>10} {'logits':>9} {'peak extra':>11} {'vs naive':>9} {'median s':>9} "
          f"{'vs naive':>9} {'max |Δ|':>9} {'max rel Δ':>10} {'|Δ| fp64':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for b in args.batch:
            rows = {}
            for v in args.variants:
                out = Path(tmp) / f"{v}_{b}.pt"
                cmd = [sys.executable, __file__, "--variant", v, "--out", str(out), "--batch", str(b),
                       "--vocab", str(args.vocab), "--tokens", str(args.tokens), "--repeats", str(args.repeats),
                       "--chunk-size", str(args.chunk_size), "--temperature", str(args.temperature)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    sys.exit(f"worker {v} (B={b}) failed:\n{proc.stderr[-3000:]}")
                rows[v] = json.loads(proc.stdout.strip().splitlines()[-1])
                rows[v]["values"] = torch.load(out)
            naive = rows["naive"]
            for v, r in rows.items():
                diff = (r["values"] - naive["values"]).abs()
                rel = diff / naive["values"].abs().clamp(min=1e-12)
                med, naive_med = statistics.median(r["times"]), statistics.median(naive["times"])
                print(f"{b:>2} {v:>10} {r['logits_bytes'] / 2**30:>7.2f}Gi {r['peak_extra'] / 2**20:>9.0f}Mi "
                      f"{r['peak_extra'] / naive['peak_extra']:>8.1%} {med:>9.2f} {med / naive_med:>8.2f}× "
                      f"{diff.max().item():>9.1e} {rel.max().item():>10.1e} {r['fp64_err']:>9.1e}")
                if r["peak_before"] - r["baseline_rss"] > 0.05 * r["logits_bytes"]:
                    print(f"   note: {v} had a high-water mark {r['peak_before'] - r['baseline_rss']:,} bytes above "
                          "its baseline before the timed calls; its peak extra may be understated")


if __name__ == "__main__":
    main()
