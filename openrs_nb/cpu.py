"""What this CPU can do: cores this process may really use, and whether bf16 matrix math is fast.

On a shared host (Binder, CI, a container) `os.cpu_count()` is the host's core count; the cores this
process may run on come from its affinity mask and its cgroup's CPU quota.
"""

from __future__ import annotations

import functools
import math
import os
import platform
from pathlib import Path

# x86 flags of the instructions that make bf16 matmuls faster than fp32 (oneDNN uses them);
# aarch64 calls its bf16 dot products "bf16".
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is no such file); read once per process."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def has_fast_bf16() -> bool:
    """True when the CPU has bf16 dot-product instructions (avx512_bf16, AMX, or aarch64 bf16).

    Without them torch emulates bf16 matmuls through fp32 and they run no faster (often slower)
    than fp32, so the demo then trains in fp32.
    """
    return platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64") and bool(cpu_flags() & set(BF16_FLAGS))


def _own_cgroup_dirs(controller: str) -> list[Path]:
    """The cgroup folders of this process for `controller` (v1) or the unified hierarchy (v2)."""
    dirs = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return dirs
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if controllers == "":  # cgroup v2
            dirs.append(Path("/sys/fs/cgroup") / rel.lstrip("/"))
        elif controller in controllers.split(","):
            base = Path("/sys/fs/cgroup") / controllers
            if not base.exists():
                base = Path("/sys/fs/cgroup") / controller
            dirs.append(base / rel.lstrip("/"))
    return dirs


def cgroup_cpu_quota() -> float | None:
    """CPUs allowed by this process's cgroup quota (e.g. 1.5), or None when unlimited or unknown."""
    for d in _own_cgroup_dirs("cpu"):
        try:
            if (d / "cpu.max").exists():  # v2: "<quota> <period>" or "max <period>"
                quota, period = (d / "cpu.max").read_text().split()
                if quota != "max":
                    return int(quota) / int(period)
            elif (d / "cpu.cfs_quota_us").exists():  # v1
                quota = int((d / "cpu.cfs_quota_us").read_text())
                period = int((d / "cpu.cfs_period_us").read_text())
                if quota > 0:
                    return quota / period
        except (OSError, ValueError):
            continue
    return None


def cgroup_memory_limit() -> int | None:
    """Bytes this process's own memory cgroup (or the tightest of its parents) may use; None when unlimited.

    Reads the cgroup this process is in (/proc/self/cgroup), not the root of the cgroup mount: under
    `systemd-run -p MemoryMax=2G`, a cgroup made by hand, or a container without a cgroup namespace the
    root file shows the whole machine.
    """
    limits = []
    for d in _own_cgroup_dirs("memory"):
        root = Path("/sys/fs/cgroup")
        while True:
            for name in ("memory.max", "memory.limit_in_bytes"):  # v2, v1
                try:
                    text = (d / name).read_text().strip()
                except OSError:
                    continue
                if text.isdigit() and int(text) < 1 << 60:  # v1 writes "unlimited" as ~2^63
                    limits.append(int(text))
            if d == root or root not in d.parents:
                break
            d = d.parent
    return min(limits) if limits else None


def usable_cpus() -> int:
    """Cores this process may use: its affinity mask, capped by its cgroup's CPU quota (at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def release_memory() -> None:
    """Free what Python no longer references and give glibc's free heap pages back to the system.

    Trainers hold reference cycles (callbacks, patched forwards), so a model dropped with its trainer
    lives until the cyclic garbage collector runs; glibc then keeps the freed blocks in its heap
    unless asked to trim it.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): the allocator decides
        pass


# glibc's malloc serves blocks below its mmap threshold from its heap, and raises that threshold (up to
# 32 MiB) each time a larger mmapped block is freed; a training step's activations, gradients and log-prob
# tiles (1-40 MiB each, freed in another order than allocated) then fragment the heap, whose freed holes
# stay resident. Measured on one LoRA GRPO step of the exp 2 demo (benchmarks/bench_demo_memory.py, and
# per phase in one process): peak resident 2.0-3.4 GiB with glibc's defaults (it varies with the heap's
# history), 1.4-1.5 GiB with every block of 1 MiB or more mmapped (4 MiB: the same). The price is time:
# each such block is page-faulted afresh, 40 s -> 59 s a step on one core (49 s with THP_MEM_ALLOC_ENABLE=1
# in the environment, which makes torch ask for 2 MiB pages). The LoRA demo (cfg.lora, the 2 GB setting)
# turns it on; all-weights runs keep glibc's defaults.
MMAP_THRESHOLD = 1 << 20


def mmap_large_allocations(threshold: int | None = None) -> bool:
    """Make glibc mmap every block of `threshold` bytes or more (fixed: no dynamic raise), so freed tensors
    go back to the system instead of fragmenting the heap; what MALLOC_MMAP_THRESHOLD_ does at start-up.

    `threshold`: None = $OPENRS_MMAP_THRESHOLD if set, else MMAP_THRESHOLD; 0 leaves glibc's own setting.
    Returns False where nothing was changed (threshold 0, no glibc: macOS, musl; a preloaded jemalloc
    ignores it).
    """
    import ctypes

    if threshold is None:
        threshold = int(os.environ.get("OPENRS_MMAP_THRESHOLD", MMAP_THRESHOLD))
    if threshold <= 0:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(ctypes.c_int(-3), ctypes.c_int(threshold)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


# Vocabulary width of TRL's log-prob tiles on CPU. TRL 1.16 scores per-token log-probs without the full
# logits, in [tokens, 32768] fp32 tiles; without Triton (CPU) it folds each tile with torch ops that make
# several temporaries of the tile's size. Measured at the demo's shape (1,760 tokens, vocab 49,152, fp32
# forward + backward): 2,495 MiB peak at TRL's 32,768, 686 MiB at 4,096, identical log-probs.
TRL_CPU_TILE = 4096


def narrow_trl_logprob_tiles(width: int = TRL_CPU_TILE) -> None:
    """Make TRL's CPU log-prob tiles `width` vocabulary entries wide (a private TRL 1.16 constant; no-op if gone)."""
    import trl.trainer.utils as trl_utils

    if isinstance(getattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", None), int):
        trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = min(trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE, width)
