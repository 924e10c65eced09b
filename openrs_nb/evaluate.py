"""Evaluation as the paper ran it (Table 1), with honest statistics: the five benchmarks, k samples per
problem, pass@1 with its standard error and a bootstrap interval, the unbiased pass@k.

One call evaluates one or several models (a training output dir = all its checkpoints) on one or
several benchmarks and writes, in `eval_dir`:
- `completions.jsonl`: one record per completion, appended (and flushed) as it is produced, keyed by
  (model, step, benchmark, problem_id, sample_index). It is the cache: a re-run skips what is done,
  so a crash loses at most the completions being generated;
- `results.json`: one row per (model, step, benchmark) with pass@1, se, ci_low/ci_high, pass@k, ...;
- `manifest.json`: the sampling settings and model fingerprint behind each model's cached records.

Sampling goes through `openrs_nb.generation.generate` (transformers on CPU, vLLM on GPU) and scoring
through `openrs_nb.grading`: by default with the paper's metric (lighteval's extractive match, as
knoveleng/open-rs @2889c47 `src/open_r1/evaluate.py` configures it; `metric="paper"`), and each record
also keeps the verdict of the training reward's rule (`correct_reward`). With vLLM the work runs in
worker processes, one per GPU (`CUDA_VISIBLE_DEVICES`, data parallel over shards of the problems), each
appending to its own part file, merged into the cache afterwards; a worker's exit also frees its
engine's GPU memory. Both backends generate in chunks, each appended as soon as it is done.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from openrs_nb.config import project_path, project_root
from openrs_nb.files import append_jsonl, read_json, read_jsonl, repair_jsonl_tail, write_json_atomic, write_text_atomic
from openrs_nb.generation import VLLM_CHUNK_COMPLETIONS

logger = logging.getLogger(__name__)

# The paper's evaluation prompt (lighteval custom task of open-r1 / open-rs, from simple-evals),
# verbatim including its double space; the user turn of a chat with no system prompt.
PROMPT_TEMPLATE = (
    "Solve the following math problem efficiently and clearly.  The last line of your response should be of "
    "the following format: 'Therefore, the final answer is: $\\boxed{{ANSWER}}$. I hope it is correct' "
    "(without quotes) where ANSWER is just the final number or expression that solves the problem. "
    "Think step by step before answering.\n\n{problem}"
)

# The paper's sampling: vLLM with temperature 0.6, top_p 0.95 and 32,768 new tokens (knoveleng/open-rs
# @2889c47 README.md, "Evaluation"), one sample per problem, seed 1234 (lighteval's vLLM default at the
# commit open-rs pins, huggingface/lighteval @ed084813 src/lighteval/models/vllm/vllm_model.py).
PAPER_TEMPERATURE = 0.6
PAPER_TOP_P = 0.95
PAPER_MAX_NEW_TOKENS = 32768
PAPER_SEED = 1234
CPU_MAX_NEW_TOKENS = 256  # default on the transformers backend: 32,768 tokens on a CPU would take days

METRICS = ("paper", "reward")
"""How `correct` is decided: "paper" (Table 1's metric) or "reward" (the training reward's rule)."""
PAPER_RULES = {"aime24": "paper_expr", "amc23": "paper_expr", "math500": "paper_latex", "minerva": "paper_latex",
               "olympiadbench": "paper_latex", "demo": "paper_expr"}
"""The paper's gold extraction per benchmark (open-rs evaluate.py: expr_gold_metric for AIME and AMC,
latex_gold_metric for MATH-500, Minerva and OlympiadBench); the demo's gold is an integer."""


@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark lives and which fields hold its question and gold answer."""

    hub_id: str
    split: str
    question: tuple[str, ...]
    """Field(s) holding the problem text, first present wins."""
    gold: tuple[str, ...]
    """Field(s) holding the gold: an answer, or a solution whose last \\boxed{} is the answer."""
    size: int
    """Problems in the full set (paper, Appendix C, Table 4)."""


BENCHMARKS: dict[str, Benchmark] = {
    "aime24": Benchmark("HuggingFaceH4/aime_2024", "train", ("problem",), ("answer",), 30),
    "amc23": Benchmark("knoveleng/AMC-23", "train", ("problem",), ("answer",), 40),
    "math500": Benchmark("HuggingFaceH4/MATH-500", "test", ("problem",), ("solution",), 500),
    "minerva": Benchmark("knoveleng/Minerva-Math", "train", ("problem",), ("solution",), 272),
    # The Hub copy names the gold `answer`, Qwen2.5-Math's JSONL `final_answer`: a list, or a list in a string.
    "olympiadbench": Benchmark("knoveleng/OlympiadBench", "train", ("question",), ("answer", "final_answer"), 675),
}
"""The paper's five benchmarks (Table 1) and where the paper read them."""
PAPER_BENCHMARKS = ("aime24", "math500", "amc23", "minerva", "olympiadbench")
"""Their column order in the paper's Table 1."""
DEMO = "demo"
DEMO_SIZE = 100  # held-out demo problems when no limit is given
BENCHMARK_NAMES = (*BENCHMARKS, DEMO)
DTYPES = ("auto", "float32", "bfloat16")  # evaluate(dtype=...)
_ID_FIELDS = ("id", "unique_id", "idx")

COMPLETIONS_FILE = "completions.jsonl"
RESULTS_FILE = "results.json"
MANIFEST_FILE = "manifest.json"
PARTS_DIR = "parts"
RECORD_KEYS = ("model", "step", "benchmark", "problem_id", "sample_index", "completion", "num_tokens",
               "truncated", "correct", "gold", "prediction", "gold_raw", "rule", "correct_reward")
"""Fields of a completions.jsonl record (the evaluation output contract): `correct` and `prediction`
under `rule` (see `grading.RULES`), `correct_reward` under the training reward's rule; `gold` is the
bare answer, `gold_raw` the gold as the paper's metric reads it (e.g. MATH-500's whole solution)."""


# ================================================================================================
# Benchmarks
# ================================================================================================
def load_benchmark(name: str, path: str | os.PathLike | None = None, *, limit: int | None = None,
                   levels: Sequence[int] | None = None) -> list[dict]:
    """The problems of a benchmark as dicts {"id", "problem", "gold", "gold_raw"} (ids are strings).

    `name`: aime24, amc23, math500, minerva, olympiadbench, or 'demo' (the embedded held-out set:
    `limit` problems of `data.make_demo_dataset(split="test", levels=levels)`, 100 by default, all
    levels by default; ids are hashes of the problem text, so they never collide across settings).
    `path`: None reads the Hub dataset the paper used; a JSONL file (or a folder holding
    `<name>.jsonl`) in the schemas of ../shared/data/benchmarks reads that instead.
    `gold` is the bare answer: `answer` for AIME/AMC/OlympiadBench, the last \\boxed{} of `solution`
    for MATH-500 and Minerva. `gold_raw` is the field the paper's metric parsed (the whole `solution`
    for MATH-500 and Minerva). `limit` keeps the first `limit` problems.
    """
    if name not in BENCHMARK_NAMES:
        raise ValueError(f"benchmark {name!r} is not known; choose from {', '.join(BENCHMARK_NAMES)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit={limit!r} must be a positive integer or None")
    if name == DEMO:
        from openrs_nb.data import DEMO_LEVELS, make_demo_dataset

        ds = make_demo_dataset(limit or DEMO_SIZE, seed=0, split="test", levels=tuple(levels or DEMO_LEVELS))
        return [{"id": hashlib.sha1(r["problem"].encode()).hexdigest()[:12], "problem": r["problem"],
                 "gold": r["answer"], "gold_raw": r["answer"]} for r in ds]
    spec = BENCHMARKS[name]
    rows = _read_local(name, path) if path is not None else _read_hub(name, spec)
    items = [_item(name, spec, row, i) for i, row in enumerate(rows)]
    if len(items) != spec.size:
        warnings.warn(f"{name}: {len(items)} problems, the paper's set has {spec.size}", stacklevel=2)
    if len({it["id"] for it in items}) != len(items):
        raise ValueError(f"{name}: problem ids are not unique; the cache needs one id per problem")
    return items[:limit] if limit else items


def _read_local(name: str, path) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        path = path / f"{name}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (expected a JSONL file of the {name} benchmark)")
    return read_jsonl(path)


def _read_hub(name: str, spec: Benchmark) -> list[dict]:
    from datasets import load_dataset

    try:
        ds = load_dataset(spec.hub_id, split=spec.split)
    except Exception as err:  # offline, gated, renamed: say what to do instead
        raise OSError(
            f"could not read {spec.hub_id} (split {spec.split}) from the Hugging Face Hub for {name!r} "
            f"({type(err).__name__}: {err}). Offline, pass a local copy: path= a JSONL file or a folder with "
            f"{name}.jsonl in the schemas of ../shared/data/benchmarks (benchmark_dir= in evaluate)."
        ) from err
    return list(ds)


def _first(row: dict, fields: Sequence[str], what: str, name: str):
    for f in fields:
        if f in row and row[f] is not None:
            return row[f]
    raise ValueError(f"{name}: a row has no {what} field (looked for {', '.join(fields)}; it has {sorted(row)})")


def _item(name: str, spec: Benchmark, row: dict, index: int) -> dict:
    problem = _first(row, spec.question, "question", name)
    raw = _first(row, spec.gold, "gold", name)
    gold = gold_answer(raw, from_solution=spec.gold[0] == "solution")
    pid = next((row[f] for f in _ID_FIELDS if row.get(f) is not None), index)
    return {"id": str(pid), "problem": str(problem), "gold": gold, "gold_raw": _raw_gold(raw, gold)}


def _raw_gold(value: Any, gold: str) -> str:
    """The gold as lighteval's task handed it to the paper's metric: the field's text (a solution keeps
    its prose; an OlympiadBench list keeps its `$…$`, joined by ", "); numbers as `gold` writes them."""
    if isinstance(value, str) and value.strip().startswith("["):
        value = _parse_list_string(value.strip())
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return value if isinstance(value, str) else gold


def gold_answer(value: Any, from_solution: bool = False) -> str:
    """The gold answer as a string: the last \\boxed{} of a solution; an integral float as an integer
    ("27.0" -> "27"); a list, or a list written in a string ("['$69$,$84$']"), joined with ", " and
    stripped of its $ delimiters."""
    from openrs_nb.grading import extract_answer

    if from_solution:
        boxed = extract_answer(str(value))
        if boxed is None:
            raise ValueError(f"no \\boxed{{}} answer in the solution {str(value)[-120:]!r}")
        return boxed
    if isinstance(value, str) and value.strip().startswith("["):
        value = _parse_list_string(value.strip())
    if isinstance(value, (list, tuple)):
        return ", ".join(_strip_dollars(str(v)) for v in value)
    if isinstance(value, float) or (isinstance(value, str) and re.fullmatch(r"-?\d+\.0+", value.strip())):
        f = float(value)
        return str(int(f)) if f.is_integer() else repr(f)
    return _strip_dollars(str(value))


def _parse_list_string(s: str):
    """"['$\\frac{1}{2}$']" -> ['$\\frac{1}{2}$'], whether the backslashes were escaped (Python's repr
    of a list) or written raw (then `\\f` must not become a form feed); the string itself if not a list."""
    escaped = all(pair in ("\\\\", "\\'", '\\"') for pair in re.findall(r"\\.", s))
    try:
        value = ast.literal_eval(s if escaped else s.replace("\\", "\\\\"))  # literals only: never runs code
    except (ValueError, SyntaxError):
        return s
    return value if isinstance(value, list) else s


def _strip_dollars(s: str) -> str:
    return s.replace("$", "").strip()


def build_prompt(problem: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    """The paper's evaluation prompt as chat messages (no system prompt unless given)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": PROMPT_TEMPLATE.format(problem=problem)}]


# ================================================================================================
# Models: "demo", a Hub id, a checkpoint, or a training output dir (all its checkpoints)
# ================================================================================================
@dataclass(frozen=True)
class ModelSpec:
    """One model to evaluate: how records name it (`label`, `step`) and what generate() loads (`path`)."""

    label: str
    step: int | None
    path: str


_CKPT_RE = re.compile(r"checkpoint-(\d+)")


def _is_model_dir(p: Path) -> bool:
    return (p / "config.json").is_file() or (p / "adapter_config.json").is_file()


def _path_label(p: Path) -> str:
    p = p.resolve()
    try:
        return str(p.relative_to(project_root().resolve()))
    except ValueError:
        return str(p)


def resolve_models(model: str | os.PathLike | Iterable, steps: Iterable[int] | None = None) -> list[ModelSpec]:
    """The models a `model` argument stands for.

    'demo' -> the embedded model; a training output dir (holding `checkpoint-<step>/`) -> each checkpoint,
    labelled by the run folder and its step (only `steps` if given); a checkpoint folder -> that one
    (`checkpoint-<step>` names give the step); another local model folder -> step None; anything else
    is a Hub id. A list evaluates each. Relative paths are tried from the working folder, then the project.
    """
    if isinstance(model, (list, tuple)):
        out = [m for item in model for m in resolve_models(item, steps)]
        if len({(m.label, m.step) for m in out}) != len(out):
            raise ValueError(f"model list {list(model)} names the same model twice")
        return out
    if not isinstance(model, (str, os.PathLike)) or not str(model).strip():
        raise ValueError(f"model={model!r}: give 'demo', a Hub id, a checkpoint path or a training output dir")
    name = str(model).strip()
    if name == DEMO:
        return [ModelSpec(DEMO, None, DEMO)]
    p = Path(name).expanduser()
    if not p.exists() and not p.is_absolute() and project_path(name).exists():
        p = project_path(name)
    if p.is_dir():
        ckpts = sorted((int(m.group(1)), c) for c in p.iterdir()
                       if (m := _CKPT_RE.fullmatch(c.name)) and c.is_dir() and _is_model_dir(c))
        if ckpts:
            wanted = None if steps is None else {int(s) for s in steps}
            found = [ModelSpec(_path_label(p), s, str(c)) for s, c in ckpts if wanted is None or s in wanted]
            missing = sorted((wanted or set()) - {m.step for m in found})
            if missing or not found:
                raise ValueError(f"{p} has no checkpoint(s) for step(s) {missing or sorted(wanted)}; "
                                 f"it has steps {[s for s, _ in ckpts]}")
            return found
        if _is_model_dir(p):
            m = _CKPT_RE.fullmatch(p.name)
            if m:
                return [ModelSpec(_path_label(p.parent), int(m.group(1)), str(p))]
            return [ModelSpec(_path_label(p), None, str(p))]
        raise ValueError(f"{p} holds neither a model (config.json) nor checkpoint-<step>/ folders with one: "
                         "is the training run finished, or is this the right folder?")
    if p.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name:
        raise FileNotFoundError(f"model path {name} does not exist (nor relative to the project, {project_root()})")
    return [ModelSpec(name, None, name)]  # a Hub id


def model_fingerprint(path: str) -> str:
    """Changes when a local model's weights change (file names, sizes, modification times), so cached
    completions of an overwritten checkpoint are not reused; Hub ids fingerprint as themselves."""
    from openrs_nb.models import resolve_model_path

    p = Path(resolve_model_path(path))
    if not p.is_dir():
        return f"hub:{path}"
    h = hashlib.sha256()
    for f in sorted(p.iterdir()):
        if f.is_file() and (f.suffix in (".safetensors", ".bin") or f.name in ("config.json", "adapter_config.json")):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


# ================================================================================================
# Statistics
# ================================================================================================
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with c correct out of n samples (Chen et al. 2021):
    1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i) to avoid huge binomials."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def standard_error(per_problem: Sequence[float]) -> float | None:
    """Standard error of the mean over problems: s / sqrt(N), s the sample standard deviation (ddof=1)
    of the per-problem accuracies. None for fewer than 2 problems."""
    x = np.asarray(per_problem, dtype=float)
    if x.size < 2:
        return None
    return float(x.std(ddof=1) / math.sqrt(x.size))


def one_sample_se(p: float, n: int) -> float:
    """`standard_error` of an accuracy p measured with one sample on each of n problems (p·n of them
    right): sqrt(p(1 - p)/(n - 1)), the same N - 1 convention."""
    if not 0 <= p <= 1 or n < 2:
        raise ValueError(f"need 0 <= p <= 1 and n >= 2, got p={p}, n={n}")
    return math.sqrt(p * (1 - p) / (n - 1))


def bootstrap_ci(per_problem: Sequence[float], *, n_resamples: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over problems: resample the N problems with replacement
    `n_resamples` times (numpy generator seeded with `seed`), take the (1±confidence)/2 quantiles."""
    x = np.asarray(per_problem, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one problem")
    if not 0 < confidence < 1 or n_resamples < 1:
        raise ValueError(f"need 0 < confidence < 1 and n_resamples >= 1, got {confidence}, {n_resamples}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def variance_components(n: Sequence[int], c: Sequence[int]) -> tuple[float, float]:
    """(between, within) from c_i correct out of n_i >= 2 samples on each problem: `between` estimates
    the variance of the true per-problem accuracies p_i across problems (how unequal the problems are),
    `within` the mean Bernoulli variance p_i(1 - p_i) (each problem's sampling noise). With k samples
    per problem on N problems the expected SE of pass@1 is then sqrt((between + within / k) / N): more
    samples shrink only the second term; `between` is a floor that only more problems lower."""
    n, c = np.asarray(n, dtype=float), np.asarray(c, dtype=float)
    if n.size < 2 or (n < 2).any():
        raise ValueError("variance_components needs at least 2 problems with at least 2 samples each")
    w = c * (n - c) / (n * (n - 1))  # unbiased for p_i(1 - p_i)
    between = float((c / n).var(ddof=1) - np.mean(w / n))  # var of p̂_i = var of p_i + E[p_i(1 - p_i)] / n_i
    return max(0.0, between), float(w.mean())


def default_ks(n: int) -> list[int]:
    """k values reported for n samples per problem: 1, 2, 4, ... up to n, and n itself."""
    return sorted({2**i for i in range(int(math.log2(n)) + 1)} | {n}) if n >= 1 else []


def summarize(records: Sequence[dict], *, ks: Iterable[int] | None = None, n_resamples: int = 2000,
              seed: int = 0) -> dict:
    """Statistics of one (model, step, benchmark) group of completion records.

    pass@1 = mean over problems of the fraction of that problem's samples that are correct; `se`,
    `ci_low`/`ci_high` as in `standard_error` and `bootstrap_ci`; pass@k averaged over problems with
    the unbiased estimator (k up to the fewest samples any problem has); mean completion length in tokens;
    share of completions cut at max_new_tokens.
    """
    if not records:
        raise ValueError("no records to summarize")
    by_problem: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        by_problem[str(r["problem_id"])].append(bool(r["correct"]))
    n = np.array([len(v) for v in by_problem.values()])
    c = np.array([sum(v) for v in by_problem.values()])
    per_problem = c / n
    ks = default_ks(int(n.min())) if ks is None else sorted(set(ks))
    if any(k < 1 or k > n.min() for k in ks):
        raise ValueError(f"ks={ks} must lie in 1..{n.min()} (the fewest samples of any problem)")
    lo, hi = bootstrap_ci(per_problem, n_resamples=n_resamples, seed=seed)
    first = records[0]
    return {
        "model": first["model"],
        "step": first.get("step"),
        "benchmark": first["benchmark"],
        "n_problems": int(len(n)),
        "n_samples": int(n.min()),
        "pass@1": float(per_problem.mean()),
        "se": standard_error(per_problem),
        "ci_low": lo,
        "ci_high": hi,
        "pass@k": {str(k): float(np.mean([pass_at_k(int(a), int(b), k) for a, b in zip(n, c)])) for k in ks},
        "mean_length": float(np.mean([r["num_tokens"] for r in records])),
        "truncation_rate": float(np.mean([bool(r["truncated"]) for r in records])),
    }


def summarize_records(records: Iterable[dict], *, n_samples: int | None = None, **kwargs) -> list[dict]:
    """One results row per (model, step, benchmark) of `records`; `n_samples` keeps sample indices
    below it (n_samples=1 is the paper's single-sample protocol)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if n_samples is None or r["sample_index"] < n_samples:
            groups[(r["model"], r.get("step"), r["benchmark"])].append(r)
    return [summarize(g, **kwargs) for g in groups.values()]


def average_over_benchmarks(results: Sequence[dict], benchmarks: Sequence[str] | None = None) -> list[dict]:
    """Table 1's Avg. column: per (model, step), the unweighted mean of pass@1 over `benchmarks` (default:
    those present), with SE = sqrt(sum se_b^2) / B (benchmarks independent). Models missing a benchmark
    are left out."""
    by_model: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in results:
        by_model[(r["model"], r.get("step"))][r["benchmark"]] = r
    names = list(benchmarks) if benchmarks is not None else list(dict.fromkeys(r["benchmark"] for r in results))
    out = []
    for (model, step), rows in by_model.items():
        if not all(b in rows for b in names):
            continue
        ses = [rows[b]["se"] for b in names]
        out.append({
            "model": model, "step": step, "benchmarks": names,
            "pass@1": float(np.mean([rows[b]["pass@1"] for b in names])),
            "se": None if any(s is None for s in ses) else float(math.sqrt(sum(s * s for s in ses)) / len(names)),
        })
    return out


# ================================================================================================
# The cache: completions.jsonl, part files of data-parallel workers, manifest.json
# ================================================================================================
def record_key(r: dict) -> tuple:
    """(model, step, benchmark, problem_id, sample_index): what makes a completion unique."""
    return (r["model"], r.get("step"), r["benchmark"], str(r["problem_id"]), int(r["sample_index"]))


def read_records(path: str | os.PathLike, repair: bool = False) -> list[dict]:
    """Records of an evaluation's completions.jsonl (or a part file); [] when the file does not exist.

    files.iter_jsonl reads them: a last line cut short by a crash is dropped with a warning, a bad line
    before the end raises ValueError naming file and line. With `repair` the cut-short line is also
    removed from the file, so that appends start on a fresh line (files.repair_jsonl_tail)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = read_jsonl(path)
    if repair:
        repair_jsonl_tail(path)
    return records


def append_records(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Append records as JSON lines and sync them to disk (files.append_jsonl)."""
    append_jsonl(path, records)


def shard_work(work: Sequence, num_shards: int) -> list[list]:
    """Split work items round-robin into at most `num_shards` non-empty shards (hard and easy problems,
    long and short prompts, spread evenly); every item lands in exactly one shard."""
    if num_shards < 1:
        raise ValueError(f"num_shards={num_shards} must be >= 1")
    shards = [list(work[i::num_shards]) for i in range(num_shards)]
    return [s for s in shards if s]


def merge_parts(eval_dir: str | os.PathLike) -> int:
    """Move the records of data-parallel part files (`parts/*.jsonl`) into completions.jsonl, skipping
    keys already there; part files are deleted once merged. Returns how many records were added."""
    eval_dir = Path(eval_dir)
    parts = sorted((eval_dir / PARTS_DIR).glob("*.jsonl")) if (eval_dir / PARTS_DIR).is_dir() else []
    if not parts:
        return 0
    main = eval_dir / COMPLETIONS_FILE
    done = {record_key(r) for r in read_records(main, repair=True)}
    added = []
    for part in parts:
        for r in read_records(part):
            if record_key(r) not in done:
                done.add(record_key(r))
                added.append(r)
    append_records(main, added)
    for part in parts:
        part.unlink()
    return len(added)


def _entry_name(spec: ModelSpec) -> str:
    return f"{spec.label}@{spec.step}"


STALE_FILE = "completions.stale.jsonl"


def _discard_stale(eval_dir: Path, specs: list[ModelSpec], settings: dict) -> None:
    """Set aside cached records of a model whose weights or sampling settings changed since they were
    made (moved to completions.stale.jsonl, each with the settings and fingerprint it was made with),
    and record the current ones in manifest.json.

    Crash-safe: the set-aside file gains each record at most once (a rerun after a kill between the two
    writes adds nothing twice), completions.jsonl is replaced atomically, and manifest.json is written
    last, atomically."""
    manifest_path = eval_dir / MANIFEST_FILE
    manifest = read_json(manifest_path) if manifest_path.is_file() else {}
    entries = manifest.setdefault("entries", {})
    stale: dict[tuple, dict] = {}
    for spec in specs:
        now = {"path": spec.path, "fingerprint": model_fingerprint(spec.path), "settings": settings}
        before = entries.get(_entry_name(spec))
        if before is not None and (before["fingerprint"] != now["fingerprint"] or before["settings"] != settings):
            why = ("its weights changed" if before["fingerprint"] != now["fingerprint"]
                   else f"they were sampled with {before['settings']}")
            stale[(spec.label, spec.step)] = {"set_aside_because": why, "fingerprint": before["fingerprint"],
                                              "settings": before["settings"]}
        entries[_entry_name(spec)] = now
    main = eval_dir / COMPLETIONS_FILE
    if stale:
        records = read_records(main, repair=True)
        dropped = [r for r in records if (r["model"], r.get("step")) in stale]
        if dropped:
            for (label, step), info in stale.items():
                logger.info("setting aside cached completions of %s (step %s): %s; they are kept in %s",
                            label, step, info["set_aside_because"], STALE_FILE)
            aside = eval_dir / STALE_FILE
            seen = {_stale_key(r) for r in read_records(aside, repair=True)}
            new = [{**r, **stale[(r["model"], r.get("step"))]} for r in dropped]
            append_records(aside, [r for r in new if _stale_key(r) not in seen])
            keep = [r for r in records if (r["model"], r.get("step")) not in stale]
            write_text_atomic(main, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))
    write_json_atomic(manifest_path, manifest)


def _stale_key(r: dict) -> tuple:
    return (*record_key(r), r.get("fingerprint"), json.dumps(r.get("settings"), sort_keys=True))


# ================================================================================================
# Generating and grading
# ================================================================================================
def _chunk_seed(seed: int, spec_label: str, step, work_item: dict) -> int:
    """A seed per generate call that depends only on what is generated, not on what ran before."""
    key = f"{seed}|{spec_label}|{step}|{work_item['benchmark']}|{work_item['id']}|{work_item['samples'][0]}"
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % (2**31 - 1)


def pending_work(spec: ModelSpec, items_by_benchmark: dict[str, list[dict]], n_samples: int,
                 done: set[tuple]) -> list[dict]:
    """Work items {"benchmark", "id", "problem", "gold", "samples": [missing sample indices]} for `spec`."""
    work = []
    for bench, items in items_by_benchmark.items():
        for it in items:
            missing = [j for j in range(n_samples) if (spec.label, spec.step, bench, it["id"], j) not in done]
            if missing:
                work.append({"benchmark": bench, **it, "samples": missing})
    return work


def rule_for(benchmark: str, metric: str = "paper") -> str:
    """The grading rule (`grading.RULES`) behind `correct` for a benchmark under `metric`."""
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is not valid; choose one of {', '.join(METRICS)}")
    return PAPER_RULES.get(benchmark, "paper_latex") if metric == "paper" else "reward"


def score_records(records: list[dict], metric: str = "paper", timeout: float = 5.0) -> list[dict]:
    """Grade records in place: `correct`/`prediction`/`rule` under `metric`, `correct_reward` under the
    training reward's rule (the paper's metric reads `gold_raw`, the reward's rule `gold`)."""
    from openrs_nb.grading import grade_batch

    by_rule: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        r["rule"] = rule_for(r["benchmark"], metric)
        by_rule[r["rule"]].append(r)
    reward = grade_batch([r["completion"] for r in records], [r["gold"] for r in records], timeout=timeout,
                         detailed=True, progress=False)
    for r, v in zip(records, reward):
        r["correct_reward"] = v.correct
        if r["rule"] == "reward":
            r["correct"], r["prediction"] = v.correct, v.answer
    for rule, group in by_rule.items():
        if rule != "reward":
            verdicts = grade_batch([r["completion"] for r in group], [r.get("gold_raw") or r["gold"] for r in group],
                                   timeout=timeout, detailed=True, progress=False, rule=rule)
            for r, v in zip(group, verdicts):
                r["correct"], r["prediction"] = v.correct, v.answer
    return records


def run_work(spec: ModelSpec, work: list[dict], out_path: str | os.PathLike, settings: dict, *,
             backend: str, batch_size: int, chunk_size: int | None = None, grade_timeout: float = 5.0,
             metric: str = "paper", progress: bool = True) -> int:
    """Generate the missing samples of each work item, grade them, append each record to `out_path`.

    Items needing the same sample indices share generate calls of `chunk_size` prompts, each appended
    as soon as it is graded (default: one batch on transformers; about VLLM_CHUNK_COMPLETIONS
    completions on vLLM, whose engine is built once and reused across calls).
    Returns the number of records written.
    """
    from tqdm.auto import tqdm

    from openrs_nb.generation import generate

    if not work:
        return 0
    model, tokenizer = spec.path, None
    if backend == "transformers":
        from openrs_nb.models import load_sampling_model, load_tokenizer

        model, tokenizer = load_sampling_model(spec.path, settings.get("dtype", "float32")), load_tokenizer(spec.path)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for w in work:
        groups[tuple(w["samples"])].append(w)
    total = sum(len(w["samples"]) for w in work)
    bar = tqdm(total=total, desc=f"{spec.label} step {spec.step}", unit="completion", disable=not progress)
    written = 0
    for samples, items in groups.items():
        n = len(samples)
        if backend == "transformers":
            items = sorted(items, key=lambda w: len(w["problem"]))  # similar lengths batch with less padding
        size = chunk_size or max(1, (batch_size if backend == "transformers" else VLLM_CHUNK_COMPLETIONS) // n)
        for start in range(0, len(items), size):
            chunk = items[start:start + size]
            outs = generate(
                model, [build_prompt(w["problem"], settings["system_prompt"]) for w in chunk], tokenizer=tokenizer,
                n=n, max_new_tokens=settings["max_new_tokens"], temperature=settings["temperature"],
                top_p=settings["top_p"], seed=_chunk_seed(settings["seed"], spec.label, spec.step, chunk[0]),
                backend=backend, batch_size=batch_size, progress=False,
            )
            records = [
                {"model": spec.label, "step": spec.step, "benchmark": w["benchmark"], "problem_id": w["id"],
                 "sample_index": j, "completion": o["text"], "num_tokens": o["num_tokens"],
                 "truncated": o["truncated"], "correct": None, "gold": w["gold"], "prediction": None,
                 "gold_raw": w.get("gold_raw", w["gold"]), "rule": None, "correct_reward": None}
                for w, out in zip(chunk, outs) for j, o in zip(samples, out)
            ]
            append_records(out_path, score_records(records, metric, grade_timeout))
            written += len(records)
            bar.update(len(records))
    bar.close()
    return written


def _visible_gpus(count: int) -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [g.strip() for g in listed.split(",") if g.strip()] if listed else [str(i) for i in range(count)]
    return ids[:count]


def run_data_parallel(spec: ModelSpec, work: list[dict], eval_dir: Path, settings: dict, *, num_workers: int,
                      backend: str, batch_size: int, chunk_size: int | None, grade_timeout: float,
                      metric: str = "paper", progress: bool = True) -> int:
    """Spread `work` over `num_workers` processes, one GPU each (CUDA_VISIBLE_DEVICES), each appending to
    parts/<name>-<i>.jsonl; then merge the parts into completions.jsonl. A failed worker's finished
    records are kept (the next call resumes) and RuntimeError names its log."""
    from tqdm.auto import tqdm

    parts = eval_dir / PARTS_DIR
    parts.mkdir(parents=True, exist_ok=True)
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", _entry_name(spec))
    gpus = _visible_gpus(num_workers)
    procs = []
    for i, shard in enumerate(shard_work(work, num_workers)):
        job = {"spec": asdict(spec), "work": shard, "out": str(parts / f"{tag}-{i}.jsonl"), "settings": settings,
               "backend": backend, "batch_size": batch_size, "chunk_size": chunk_size,
               "grade_timeout": grade_timeout, "metric": metric}
        job_path = parts / f"{tag}-{i}.job.json"
        write_json_atomic(job_path, job)
        env = dict(os.environ)
        if i < len(gpus):
            env["CUDA_VISIBLE_DEVICES"] = gpus[i]
        log = open(parts / f"{tag}-{i}.log", "w")
        procs.append((subprocess.Popen([sys.executable, "-m", "openrs_nb.evaluate", "--worker", str(job_path)],
                                       env=env, stdout=log, stderr=subprocess.STDOUT), log, job_path))
    bar = tqdm(total=sum(len(w["samples"]) for w in work), desc=f"{spec.label} step {spec.step} "
               f"({len(procs)} workers)", unit="completion", disable=not progress)
    try:
        while any(proc.poll() is None for proc, _, _ in procs):
            time.sleep(2)
            bar.update(_count_lines(parts.glob(f"{tag}-*.jsonl")) - bar.n)
    except BaseException:  # interrupted: stop the workers; what they finished is merged next time
        for proc, _, _ in procs:
            proc.terminate()
        for proc, _, _ in procs:
            proc.wait()
        raise
    finally:
        bar.close()
    failed = []
    for i, (proc, log, job_path) in enumerate(procs):
        log.close()
        if proc.returncode == 0:
            job_path.unlink()
            Path(log.name).unlink()
        else:
            failed.append((i, proc.returncode, log.name))
    added = merge_parts(eval_dir)
    if failed:
        tails = "\n".join(f"--- worker {i} (exit code {code}), {name}:\n{_tail(name)}" for i, code, name in failed)
        raise RuntimeError(f"{len(failed)} evaluation worker(s) failed; finished completions are kept, "
                           f"call evaluate again to resume.\n{tails}")
    return added


def _count_lines(paths) -> int:
    return sum(p.read_bytes().count(b"\n") for p in paths)


def _tail(path: str, chars: int = 2000) -> str:
    text = Path(path).read_text(errors="replace")
    return text[-chars:]


def _worker_main(job_path: str) -> None:
    job = read_json(job_path)
    run_work(ModelSpec(**job["spec"]), job["work"], job["out"], job["settings"], backend=job["backend"],
             batch_size=job["batch_size"], chunk_size=job["chunk_size"], grade_timeout=job["grade_timeout"],
             metric=job.get("metric", "paper"), progress=False)


# ================================================================================================
# The entry point
# ================================================================================================
def benchmark_path(benchmark_dir, name: str):
    """Local file of `name` under `benchmark_dir` (None -> None: read the Hub)."""
    if name == DEMO or benchmark_dir is None:
        return None
    return project_path(benchmark_dir) / f"{name}.jsonl"


def evaluate(
    model: str | os.PathLike | Sequence,
    benchmarks: str | Sequence[str] = (DEMO,),
    *,
    eval_dir: str | os.PathLike,
    n_samples: int = 1,
    n_problems: int | None = None,
    benchmark_dir: str | os.PathLike | None = None,
    steps: Iterable[int] | None = None,
    demo_levels: Sequence[int] | None = None,
    max_new_tokens: int | None = None,
    temperature: float = PAPER_TEMPERATURE,
    top_p: float = PAPER_TOP_P,
    seed: int = PAPER_SEED,
    system_prompt: str | None = None,
    backend: str = "auto",
    num_workers: int | None = None,
    batch_size: int = 32,
    chunk_size: int | None = None,
    grade_timeout: float = 5.0,
    metric: str = "paper",
    dtype: str = "auto",
    n_resamples: int = 2000,
    progress: bool = True,
) -> list[dict]:
    """Evaluate `model` (see `resolve_models`; a training output dir = each checkpoint) on `benchmarks`
    with `n_samples` completions per problem; returns the results rows and writes eval_dir/results.json.

    `n_problems` keeps the first n problems of each benchmark (the demo set is generated with n, of
    difficulty `demo_levels`, default all).
    `benchmark_dir`: folder of local JSONL files (../shared/data/benchmarks schemas); None reads the Hub.
    `max_new_tokens` None: 32,768 with vLLM (the paper), 256 with transformers. `num_workers`: worker
    processes to spread generation over, one per GPU; 0 generates in this process. None: one per
    visible GPU (at least one) with vLLM, so that each model's engine frees its GPU memory when its
    worker exits; 0 with transformers. `chunk_size`: prompts per generate call, each chunk saved when done
    (None: one batch on transformers, about VLLM_CHUNK_COMPLETIONS completions on vLLM).
    `metric`: "paper" scores `correct` as Table 1 was scored (lighteval's extractive match, see
    `grading`), "reward" with the training reward's rule; records keep both verdicts.
    `dtype` of the weights on the transformers backend: "auto" = bfloat16 on CUDA and on CPUs with bf16
    instructions (the authors evaluated with dtype=bfloat16), else float32 (openrs_nb.models.sampling_dtype).
    Completed (model, step, benchmark, problem, sample) records are reused from eval_dir/completions.jsonl;
    cached records scored under another metric are re-scored, not re-generated.
    """
    from openrs_nb.generation import pick_backend

    names = [b.strip() for b in benchmarks.split(",")] if isinstance(benchmarks, str) else list(benchmarks)
    bad = [b for b in names if b not in BENCHMARK_NAMES]
    if bad or not names or len(set(names)) != len(names):
        raise ValueError(f"benchmarks={names} is not valid: give distinct names from {', '.join(BENCHMARK_NAMES)}")
    for label, value in (("n_samples", n_samples), ("batch_size", batch_size), ("n_resamples", n_resamples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label}={value!r} must be a positive integer")
    if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be a positive integer or None")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1 (got {temperature}, {top_p})")
    if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(num_workers, int)
                                    or num_workers < 0):
        raise ValueError(f"num_workers={num_workers!r} must be an integer >= 0 (0: no worker processes) or None")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive integer or None")
    rule_for(names[0], metric)  # checks `metric`
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not valid: choose one of {', '.join(DTYPES)}")
    backend = pick_backend(backend)
    specs = resolve_models(model, steps)
    items = {b: load_benchmark(b, benchmark_path(benchmark_dir, b), limit=n_problems, levels=demo_levels)
             for b in names}
    if max_new_tokens is None:
        max_new_tokens = PAPER_MAX_NEW_TOKENS if backend == "vllm" else CPU_MAX_NEW_TOKENS
    if num_workers is None:
        from openrs_nb.config import cuda_gpu_count

        num_workers = max(1, cuda_gpu_count()) if backend == "vllm" else 0
    settings = {"prompt_template": PROMPT_TEMPLATE, "system_prompt": system_prompt, "max_new_tokens": max_new_tokens,
                "temperature": temperature, "top_p": top_p, "seed": seed}
    if backend == "transformers":  # vLLM picks its own (bf16 for these models)
        from openrs_nb.models import sampling_dtype

        settings["dtype"] = sampling_dtype() if dtype == "auto" else dtype

    eval_dir = project_path(eval_dir)
    eval_dir.mkdir(parents=True, exist_ok=True)
    merge_parts(eval_dir)  # what the workers of an interrupted data-parallel call left behind
    _discard_stale(eval_dir, specs, settings)
    cache = eval_dir / COMPLETIONS_FILE
    done = {record_key(r) for r in read_records(cache, repair=True)}
    kw = dict(backend=backend, batch_size=batch_size, chunk_size=chunk_size, grade_timeout=grade_timeout, metric=metric)
    for spec in specs:
        work = pending_work(spec, items, n_samples, done)
        if not work:
            continue
        if num_workers:
            run_data_parallel(spec, work, eval_dir, settings, num_workers=num_workers, progress=progress, **kw)
        else:
            run_work(spec, work, cache, settings, progress=progress, **kw)

    wanted = {(s.label, s.step, b, it["id"]) for s in specs for b in names for it in items[b]}
    records = [r for r in _rescore(cache, items, metric, grade_timeout)
               if r["sample_index"] < n_samples and (r["model"], r.get("step"), r["benchmark"], str(r["problem_id"]))
               in wanted]
    rows = [{**row, "metric": metric} for row in summarize_records(records, n_resamples=n_resamples, seed=seed)]
    order = {(s.label, s.step, b): i for i, (s, b) in enumerate((s, b) for s in specs for b in names)}
    rows.sort(key=lambda r: order[(r["model"], r["step"], r["benchmark"])])
    write_results(eval_dir, rows)
    return rows


def _rescore(cache: Path, items: dict[str, list[dict]], metric: str, timeout: float) -> list[dict]:
    """All records of `cache`; those of `items`' problems that were scored under another rule (or by an
    older version without `rule`) are scored again under `metric` and the file is replaced atomically."""
    raw = {(b, it["id"]): it.get("gold_raw", it["gold"]) for b, its in items.items() for it in its}
    records = read_records(cache)
    redo = [r for r in records if (r["benchmark"], str(r["problem_id"])) in raw
            and (r.get("rule") != rule_for(r["benchmark"], metric) or "correct_reward" not in r)]
    if redo:
        for r in redo:
            r.setdefault("gold_raw", raw[(r["benchmark"], str(r["problem_id"]))])
        score_records(redo, metric, timeout)
        write_text_atomic(cache, "".join(json.dumps({k: r.get(k) for k in RECORD_KEYS} | r, ensure_ascii=False) + "\n"
                                         for r in records))
    return records


def write_results(eval_dir: str | os.PathLike, rows: list[dict]) -> Path:
    """Write results.json: `rows` replace earlier rows of the same (model, step, benchmark), others stay."""
    path = Path(eval_dir) / RESULTS_FILE
    old = read_json(path) if path.is_file() else []
    new_keys = {(r["model"], r["step"], r["benchmark"]) for r in rows}
    merged = [r for r in old if (r["model"], r.get("step"), r["benchmark"]) not in new_keys] + list(rows)
    return write_json_atomic(path, merged)


def main(argv: list[str] | None = None) -> None:
    """`python -m openrs_nb.evaluate --model M --benchmarks aime24,amc23 --eval-dir D [...]`."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one data-parallel shard
    ap.add_argument("--model", nargs="+", help="'demo', Hub id(s), checkpoint path(s) or training output dir(s)")
    ap.add_argument("--benchmarks", default=",".join(PAPER_BENCHMARKS), help="comma-separated names")
    ap.add_argument("--eval-dir", help="where completions.jsonl and results.json go")
    ap.add_argument("--benchmark-dir", help="folder of local <name>.jsonl files (default: the Hub)")
    ap.add_argument("--n-samples", type=int, default=1)
    ap.add_argument("--n-problems", type=int)
    ap.add_argument("--max-new-tokens", type=int)
    ap.add_argument("--temperature", type=float, default=PAPER_TEMPERATURE)
    ap.add_argument("--top-p", type=float, default=PAPER_TOP_P)
    ap.add_argument("--seed", type=int, default=PAPER_SEED)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--num-workers", type=int)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--metric", default="paper", choices=METRICS,
                    help="paper: Table 1's metric (default); reward: the training reward's rule")
    args = ap.parse_args(argv)
    if args.worker:
        _worker_main(args.worker)
        return
    if not args.model or not args.eval_dir:
        ap.error("--model and --eval-dir are required")
    rows = evaluate(args.model, args.benchmarks, eval_dir=args.eval_dir, n_samples=args.n_samples,
                    n_problems=args.n_problems, benchmark_dir=args.benchmark_dir, max_new_tokens=args.max_new_tokens,
                    temperature=args.temperature, top_p=args.top_p, seed=args.seed, backend=args.backend,
                    num_workers=args.num_workers, batch_size=args.batch_size, metric=args.metric)
    for r in rows:
        print(f"{r['model']} step {r['step']} {r['benchmark']}: pass@1 {100 * r['pass@1']:.1f}% "
              f"(SE {100 * (r['se'] or 0):.1f}, 95% CI {100 * r['ci_low']:.1f}-{100 * r['ci_high']:.1f}), "
              f"{r['n_problems']} problems x {r['n_samples']} samples")


if __name__ == "__main__":
    main()
