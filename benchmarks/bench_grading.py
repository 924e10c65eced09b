"""Grader throughput on typical completions and latency on pathological ones.

    .venv/bin/python benchmarks/bench_grading.py [--n 1000] [--runs 5] [--timeout 1.0]

Typical completions: ~1,500 characters of reasoning ending in \\boxed{answer}, half right and half
wrong, with the gold answers of AIME24 / AMC23 / MATH-500 (from ../shared/data/benchmarks, or
OPENRS_SHARED_DATA; synthetic integers and fractions when the data is absent). Each run grades a fresh
set (different wrong answers and wording, verdict cache cleared), as GRPO does step after step.

Printed: completions/s of `grade_batch` on all cores (first run, which includes starting the
worker processes, and the median of the other runs); the CPU seconds the grading used (this process
and every process it started), which depend far less on how busy a shared machine is; the same pairs
graded in this process by bare math-verify on one core (no time bound) for scale; median latency of
single `grade` calls; and the latency of every pathological item through `grade` (main thread),
`grade` from a worker thread, and `grade_batch`. Targets: ≥200 typical completions/s on 2 cores; no
pathological item over 1.5 s. To compare two versions of `openrs_nb.grading`, run them one after the
other on the same machine (PYTHONPATH=<other checkout>) and compare the CPU-second rates.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import threading
import time
from pathlib import Path

from openrs_nb import grading

FILLER = (
    "Let me set up the problem carefully. We are given the constraints and need to combine them. "
    "First I rewrite the expression, then simplify term by term, checking each step. "
)

PATHOLOGICAL = {
    "power tower 10^10^10^10": "so \\boxed{10^{10^{10^{10}}}}",
    "power tower 2^2^...^2 (8)": "\\boxed{2^{2^{2^{2^{2^{2^{2^{2}}}}}}}}",
    "9^9^9 times 7^7^7": "\\boxed{9^{9^{9}} \\cdot 7^{7^{7}}}",
    "factorial 10^6!": "\\boxed{(10^{6})!}",
    "100 kB of digits": "\\boxed{" + "7" * 100_000 + "}",
    "100 kB digits, no box": "The answer is " + "3" * 100_000,
    "5,000 nested braces": "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
    "2,000 nested fractions": "\\boxed{" + "\\frac{1}{" * 2000 + "2" + "}" * 2000 + "}",
    "1 MB of text, no box": "word " * 200_000,
    "5,000 boxes": "\\boxed{1} " * 5000,
    "sum to 10^12": "\\boxed{\\sum_{n=1}^{10^{12}} n^{n}}",
    "product of 300 sines": "\\boxed{" + "".join(f"\\sin({k}x)" for k in range(1, 301)) + "}",
    "code payload": "\\boxed{__import__('os').system('echo pwned')}",
}


def shared_data() -> Path:
    env = os.environ.get("OPENRS_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def gold_answers() -> tuple[list[str], str]:
    root = shared_data() / "benchmarks"
    golds = []
    for name in ("aime24", "amc23", "math500"):
        path = root / f"{name}.jsonl"
        if path.exists():
            golds += [str(json.loads(line)["answer"]) for line in path.open()]
    if golds:
        return golds, f"{len(golds)} gold answers of AIME24, AMC23 and MATH-500 ({root})"
    rng = random.Random(0)
    golds = [str(rng.randint(0, 999)) if i % 2 else f"\\frac{{{rng.randint(1, 99)}}}{{{rng.randint(2, 99)}}}"
             for i in range(600)]
    return golds, "600 synthetic integers and fractions (shared data not found)"


def typical_set(golds: list[str], n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    preds, gold_list = [], []
    for i in range(n):
        gold = rng.choice(golds)
        answer = gold if i % 2 == 0 else rng.choice(golds)  # wrong half: another problem's answer
        text = f"Attempt {seed}-{i}. " + FILLER * rng.randint(6, 10) + f"Therefore the answer is $\\boxed{{{answer}}}$."
        preds.append(text)
        gold_list.append(gold)
    return preds, gold_list


def helper_cpu_seconds() -> float | None:
    """CPU seconds used so far by all processes descended from this one (the grading workers and
    whatever starts them; Linux /proc; None elsewhere)."""
    try:
        stats = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue  # it exited meanwhile
                stats[int(d.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
        mine, frontier = set(), {os.getpid()}
        while frontier:
            frontier = {pid for pid, (ppid, _) in stats.items() if ppid in frontier} - mine
            mine |= frontier
        return sum(stats[pid][1] for pid in mine)
    except (OSError, ValueError, IndexError):
        return None


def bare_math_verify(preds: list[str], golds: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) for the same pairs through math-verify in this process (one core,
    no time bound, no helper processes). CPU seconds do not depend on how busy the machine is."""
    wall, cpu = time.perf_counter(), time.process_time()
    for p, g in zip(preds, golds):
        grading._verify_texts(grading._prediction_text(p)[0], grading._gold_text(g))
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="typical completions per run")
    ap.add_argument("--runs", type=int, default=5, help="runs of the typical set (median reported)")
    ap.add_argument("--timeout", type=float, default=1.0, help="grading timeout in seconds")
    ap.add_argument("--workers", type=int, default=None, help="helper processes (default: all cores, ≤8)")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # bare math-verify warns that its own timeout is off

    golds, source = gold_answers()
    workers = args.workers or grading.default_num_workers()
    print(f"cores: {os.cpu_count()}, helpers: {workers}, timeout: {args.timeout} s, load average: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"typical set: {args.n} completions of ~1,500 chars, half right; gold from {source}")

    rates, cpu_rates = [], []
    for run in range(args.runs):
        preds, gl = typical_set(golds, args.n, seed=run)
        grading.clear_cache()
        cpu0, own0 = helper_cpu_seconds(), time.process_time()
        t = time.perf_counter()
        out = grading.grade_batch(preds, gl, timeout=args.timeout, num_workers=workers, progress=False, detailed=True)
        dt = time.perf_counter() - t
        rates.append(args.n / dt)
        cpu1 = helper_cpu_seconds()
        if run and cpu0 is not None and cpu1 is not None:  # run 1 starts the helpers: no "before"
            cpu_rates.append(args.n / ((cpu1 - cpu0) + (time.process_time() - own0)))
        statuses = {s: sum(r.status == s for r in out) for s in grading.STATUSES if any(r.status == s for r in out)}
        print(f"  run {run + 1}: {args.n / dt:7.0f} completions/s  ({dt:.2f} s; {statuses})")
    warm = statistics.median(rates[1:]) if len(rates) > 1 else rates[0]
    print(f"grade_batch, first run (starts the helpers): {rates[0]:.0f} completions/s")
    print(f"grade_batch, median of runs 2..{args.runs}: {warm:.0f} completions/s  (target ≥ 200)")
    if cpu_rates:
        per_cpu = statistics.median(cpu_rates)
        print(f"grade_batch, CPU used by helpers + this process: {per_cpu:.0f} completions per CPU-second, "
              f"so about {per_cpu * workers:.0f} completions/s on {workers} otherwise idle cores")

    preds, gl = typical_set(golds, min(args.n, 300), seed=99)
    bare_wall, bare_cpu = bare_math_verify(preds, gl)
    print(f"bare math-verify, this process, 1 core: {len(preds) / bare_wall:.0f} completions/s wall "
          f"(grade_batch/bare = {warm / (len(preds) / bare_wall):.2f}x), {len(preds) / bare_cpu:.0f} per CPU-second "
          f"(an idle machine with {workers} cores would give about {workers} x that)")

    grading.clear_cache()
    preds, gl = typical_set(golds, 200, seed=123)
    lat = []
    for p, g in zip(preds, gl):
        t = time.perf_counter()
        grading.grade(p, g, timeout=args.timeout)
        lat.append(time.perf_counter() - t)
    lat.sort()
    print(f"single grade() calls, main thread: median {statistics.median(lat) * 1e3:.1f} ms, "
          f"p90 {lat[int(0.9 * len(lat))] * 1e3:.1f} ms, max {lat[-1] * 1e3:.0f} ms")

    print(f"\npathological set ({len(PATHOLOGICAL)} items, gold '42'), seconds (target: each ≤ 1.5):")
    print(f"  {'item':30s} {'main':>6s} {'thread':>7s}  status")
    worst = 0.0
    for name, text in PATHOLOGICAL.items():
        grading.clear_cache()
        t = time.perf_counter()
        res = grading.grade_detailed(text, "42", timeout=args.timeout)
        main_s = time.perf_counter() - t
        grading.clear_cache()
        box = {}

        def in_thread(text=text, box=box):
            t0 = time.perf_counter()
            grading.grade(text, "42", timeout=args.timeout)
            box["s"] = time.perf_counter() - t0

        th = threading.Thread(target=in_thread)
        th.start()
        th.join()
        worst = max(worst, main_s, box["s"])
        print(f"  {name:30s} {main_s:6.2f} {box['s']:7.2f}  {res.status}")
    grading.clear_cache()
    texts = list(PATHOLOGICAL.values())
    t = time.perf_counter()
    grading.grade_batch(texts, ["42"] * len(texts), timeout=args.timeout, num_workers=workers, progress=False)
    batch_s = time.perf_counter() - t
    print(f"  whole set through grade_batch: {batch_s:.2f} s for {len(texts)} items on {workers} helpers")
    print(f"worst single-item latency: {worst:.2f} s (target ≤ 1.5)")
    grading.shutdown()


if __name__ == "__main__":
    main()
