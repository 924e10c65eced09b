"""Training data: the embedded demo problems, the paper's curation pipeline, and the prompt column.

Schema of every dataset here: `problem`, `solution` (text with a final `\\boxed{answer}`), `answer`,
`source`, `level` (int, the source's own difficulty scale; None where a source has none).

The curation pipeline (Section 2 of the paper; the authors never released these scripts), each step
a plain function over `datasets.Dataset` that returns what it kept and, for the funnel, what it
removed (with a `reason` column):

1. load          `load_source("s1" | "deepscaler" | "open-rs" | … | path | "demo")` -> one schema
2. math-only     `filter_boxed(ds)`: a balanced `\\boxed{…}` whose answer parses (openrs_nb.grading)
3. difficulty    `difficulty_filter(ds, model, k=…)`: k samples per problem, keep the rarely solved ones
                 (never-solved problems included)
4. quality       `quality_filter(ds)` (rules) and `judge_filter(ds, model)` (an LLM judge)
5. dedup/decont. `deduplicate(ds)`, `decontaminate(ds, benchmark_problems, ngram=13)` (this project's
                 additions: the paper describes neither step)
6. mix           `mix({name: ds}, {name: size}, seed)`
7. save          `save_curated(ds, out_dir, card=…)` with a dataset card, ready for 04_train

The steps commute (each drops rows by a property of the row alone, except dedup, which keeps the first
copy), so 01_data_curation runs the cheap text steps before the model-based ones. Every model call is
cached to a JSONL file keyed by (model, problem hash, sample index), so a crashed filter resumes where
it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, Value, concatenate_datasets

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
DEMO_LEVELS = (1, 2, 3, 4, 5)

COLUMNS = ("problem", "solution", "answer", "source", "level")
FEATURES = Features({"problem": Value("string"), "solution": Value("string"), "answer": Value("string"),
                     "source": Value("string"), "level": Value("int64")})

_NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kira", "Liam"]
_ITEMS = ["apples", "marbles", "books", "stickers", "pencils", "coins", "shells", "cards"]


# =================================================================================================
# The embedded demo problems
# =================================================================================================
def _level1(rng: random.Random) -> tuple[str, str, int]:
    a, b = rng.randint(1, 99), rng.randint(1, 99)
    return f"What is {a} + {b}?", f"{a} + {b} = {a + b}.", a + b


def _level2(rng: random.Random) -> tuple[str, str, int]:
    if rng.random() < 0.5:
        a, b = rng.randint(20, 99), rng.randint(1, 19)
        return f"What is {a} - {b}?", f"{a} - {b} = {a - b}.", a - b
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return f"What is {a} \\times {b}?", f"{a} \\times {b} = {a * b}.", a * b


def _level3(rng: random.Random) -> tuple[str, str, int]:
    a, b, c = rng.randint(2, 12), rng.randint(2, 12), rng.randint(1, 50)
    return (f"What is {a} \\times {b} + {c}?",
            f"{a} \\times {b} = {a * b}, and {a * b} + {c} = {a * b + c}.", a * b + c)


def _level4(rng: random.Random) -> tuple[str, str, int]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b = rng.randint(5, 60), rng.randint(2, 30)
    return (f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?",
            f"{name} has {a} + {b} = {a + b} {item}.", a + b)


def _level5(rng: random.Random) -> tuple[str, str, int]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    boxes, per, given = rng.randint(2, 9), rng.randint(3, 12), rng.randint(1, 10)
    total = boxes * per
    return (f"{name} has {boxes} boxes with {per} {item} in each box and gives away {given} {item}. "
            f"How many {item} are left?",
            f"There are {boxes} \\times {per} = {total} {item}. After giving away {given}, "
            f"{total} - {given} = {total - given} are left.", total - given)


_GENERATORS = {1: _level1, 2: _level2, 3: _level3, 4: _level4, 5: _level5}


def split_of(problem: str) -> str:
    """'test' for one problem text in five, by hash: a problem can never be in both splits."""
    return "test" if int(hashlib.sha1(problem.encode()).hexdigest(), 16) % 5 == 0 else "train"


def make_demo_dataset(n: int, seed: int = 0, split: str = "train", levels=DEMO_LEVELS) -> Dataset:
    """`n` distinct generated problems of the given difficulty `levels` (1 = two-number addition …
    5 = two-step word problems), deterministic in `seed`; train and test never share a problem."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not valid; choose one of {', '.join(SPLITS)}")
    bad = [lv for lv in levels if lv not in _GENERATORS]
    if bad or not levels:
        raise ValueError(f"levels={list(levels)} is not valid; choose from {list(_GENERATORS)}")
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    rng = random.Random(f"{seed}-{split}")
    rows, seen = [], set()
    for _ in range(200 * n):
        level = levels[len(rows) % len(levels)]
        problem, steps, answer = _GENERATORS[level](rng)
        if problem in seen or split_of(problem) != split:
            continue
        seen.add(problem)
        rows.append(dict(problem=problem, solution=f"{steps}\nThe final answer is $\\boxed{{{answer}}}$.",
                         answer=str(answer), source=f"demo/level{level}", level=level))
        if len(rows) == n:
            return Dataset.from_list(rows)
    raise ValueError(f"levels {list(levels)} hold fewer than {n} distinct {split} problems; ask for fewer")


# The held-out demo set that 05_evaluate scores (evaluate.load_benchmark("demo")): the first problems
# of the seed-0 test split. The demo pools plant some of them, and curation decontaminates against them.
DEMO_BENCHMARK_SEED = 0
DEMO_BENCHMARK_SIZE = 100


def demo_benchmark_problems(n: int = DEMO_BENCHMARK_SIZE) -> list[str]:
    """Problem texts of the demo evaluation set (the first `n` of the seed-0 test split)."""
    return make_demo_dataset(n, seed=DEMO_BENCHMARK_SEED, split="test")["problem"]


# Noise the demo pools carry, as fractions of the pool: each kind is one thing a curation step must
# remove (which step is in DEMO_NOISE_STEP), so the funnel of the demo can be checked row by row.
DEMO_NOISE = {"no_boxed": 0.10, "broken_boxed": 0.03, "multi_part": 0.05, "two_questions": 0.03,
              "proof": 0.03, "duplicate": 0.06, "planted": 0.05}
DEMO_NOISE_STEP = {"no_boxed": "boxed", "broken_boxed": "boxed", "multi_part": "quality",
                   "two_questions": "quality", "proof": "quality", "duplicate": "dedup", "planted": "decontaminate"}

_PROSE = [
    ("Which weighs more, a kilogram of {item} or a kilogram of feathers?",
     "Neither: both weigh one kilogram."),
    ("Why would {name}'s bag of {item} feel lighter on the Moon?",
     "Gravity on the Moon is about one sixth of the gravity on Earth, so the bag weighs less there."),
    ("Describe how {name} could sort a pile of {item} by size.",
     "{name} can compare them two at a time and move the smaller one to the left, like a bubble sort."),
    ("Explain why {name} should keep the {item} in a dry place.",
     "Damp air can damage {item}, so a dry place keeps them in good shape."),
]


def perturb_text(text: str, seed: int = 0) -> str:
    """A copy of `text` with the edits contamination often carries: doubled spaces, punctuation moved
    across a closing `$` (`$x,$` <-> `$x$,`), LaTeX thin spaces `\\,` and a trailing newline."""
    rng = random.Random(seed)
    if rng.random() < 0.5:
        out = re.sub(r"\$([,.])", r"\1$", text)  # $x$, -> $x,$
    else:
        out = re.sub(r"([,.])\$", r"$\1", text)  # $x,$ -> $x$,
    out = out.replace(" = ", " =\\, ").replace("+", "\\,+\\,")
    words = out.split(" ")
    if len(words) > 2:
        i = rng.randrange(1, len(words))
        words[i] = " " + words[i]
    return " ".join(words) + "\n"


def make_demo_pool(n: int = 40, seed: int = 0, levels=DEMO_LEVELS, noise: dict[str, float] | None = None) -> Dataset:
    """A raw demo pool of `n` rows like a scraped source: clean demo problems plus noise the curation
    steps must remove — prose questions without `\\boxed{}`, broken boxes, multi-part and proof questions,
    duplicates, and problems of the demo evaluation set planted with small edits. `source` names what
    each row is (`demo/level3`, `demo/multi_part`, …). Deterministic in `seed`."""
    noise = DEMO_NOISE if noise is None else noise
    bad = sorted(set(noise) - set(DEMO_NOISE))
    if bad:
        raise ValueError(f"unknown noise kind(s) {bad}; choose from {', '.join(DEMO_NOISE)}")
    counts = {k: max(1, round(f * n)) for k, f in noise.items() if f > 0}
    n_clean = n - sum(counts.values())
    if n_clean < 2:
        raise ValueError(f"n={n} is too small for the noise {noise}; ask for at least {sum(counts.values()) + 2} rows")
    rng = random.Random(f"pool-{seed}")
    clean = make_demo_dataset(n_clean, seed=seed, split="train", levels=levels).to_list()
    rows = list(clean)
    bench = make_demo_dataset(DEMO_BENCHMARK_SIZE, seed=DEMO_BENCHMARK_SEED, split="test").to_list()
    to_plant = rng.sample(bench, counts.get("planted", 0))  # distinct, so no plant is another's duplicate

    def num():
        return rng.randint(2, 60)

    for kind, count in counts.items():
        for j in range(count):
            name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
            if kind == "no_boxed":
                q, s = _PROSE[j % len(_PROSE)]
                row = dict(problem=q.format(name=name, item=item), solution=s.format(name=name, item=item),
                           answer="", level=None)
            elif kind == "broken_boxed":
                a, b = num(), num()
                box = f"$\\boxed{{{a + b}$." if j % 2 == 0 else "$\\boxed{}$."
                row = dict(problem=f"{name} counts {a} {item} and then {b} more. How many {item} is that?",
                           solution=f"{a} + {b} = {a + b}.\nThe final answer is {box}", answer="", level=None)
            elif kind == "multi_part":
                a, b, c, d = num(), num(), rng.randint(2, 12), rng.randint(2, 12)
                row = dict(problem=f"(a) What is {a} + {b}? (b) What is {c} \\times {d}?",
                           solution=f"(a) {a} + {b} = {a + b}. (b) {c} \\times {d} = {c * d}.\n"
                                    f"The final answer is $\\boxed{{{c * d}}}$.", answer=str(c * d), level=3)
            elif kind == "two_questions":
                a, b = num(), num()
                row = dict(problem=f"{name} has {a} {item}. Is that more than {b}? How many more or fewer?",
                           solution=f"{a} - {b} = {a - b}.\nThe final answer is $\\boxed{{{a - b}}}$.",
                           answer=str(a - b), level=2)
            elif kind == "proof":
                a, b = rng.randint(2, 12), rng.randint(2, 12)
                row = dict(problem=f"Prove that {a} \\times {b} = {a * b}.",
                           solution=f"Adding {a} to itself {b} times gives {a * b}.\n"
                                    f"The final answer is $\\boxed{{{a * b}}}$.", answer=str(a * b), level=2)
            elif kind == "duplicate":
                orig = clean[rng.randrange(len(clean))]
                text = orig["problem"] if j % 2 == 0 else "  " + orig["problem"].replace(" ", "  ") + " "
                row = dict(orig, problem=text)
            elif kind == "planted":
                orig = to_plant[j]
                text = orig["problem"] if j % 2 == 0 else perturb_text(orig["problem"], seed=rng.randrange(10**6))
                row = dict(orig, problem=text)
            rows.append(dict(row, source=f"demo/{kind}"))
    return to_schema(Dataset.from_list(rows), "demo")


# =================================================================================================
# Step 1: load
# =================================================================================================
HUB_SOURCES = {
    "s1": "simplescaling/data_ablation_full59K",  # s1's pool: the 59K questions before its 1K selection
    "deepscaler": "agentica-org/DeepScaleR-Preview-Dataset",
    "open-s1": "knoveleng/open-s1",
    "open-deepscaler": "knoveleng/open-deepscaler",
    "open-rs": "knoveleng/open-rs",
}
"""Short names of the Hub datasets the paper names (sources) or published (results)."""

FILTER_MODELS = {"s1": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "deepscaler": "Qwen/Qwen2.5-Math-7B-Instruct"}
"""Difficulty-filter model the paper used for each source (Section 2)."""
JUDGE_MODEL = "Qwen/Qwen2.5-7B-Instruct"
"""Quality judge the paper used on s1 (Section 2)."""

PAPER_FUNNEL = {
    "s1": [("loaded", 59_029), ("boxed", 31_323), ("difficulty", 21_533), ("quality", 18_615)],
    "deepscaler": [("loaded", 40_315), ("difficulty", 21_044)],
}
"""Rows after each step, as the paper reports them (Section 2)."""
PAPER_MIX = {"open-s1": 3000, "open-deepscaler": 3000, "deepscaler-easy": 1000}
"""Experiment 2's 7,000 rows: 3,000 open-s1 + 3,000 open-deepscaler + 1,000 easier raw DeepScaleR rows."""

# Where the fields of the known schemas live; the first field present wins.
_PROBLEM_FIELDS = ("problem", "question", "Problem", "query")
_SOLUTION_FIELDS = ("solution", "reference_solution", "Solution")
_ANSWER_FIELDS = ("answer", "final_answer", "Answer")
_SOURCE_FIELDS = ("source", "source_type", "data_source")
_LEVEL_FIELDS = ("level", "difficulty", "Level")


def _first(row: dict, fields: Sequence[str]):
    for f in fields:
        v = row.get(f)
        if v is not None and not (isinstance(v, str) and not v.strip()):
            return v
    return None


def _as_level(v) -> int | None:
    """5, '5', 'Level 5', 4.0 -> int; anything else -> None."""
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return int(round(v))
    m = re.search(r"-?\d+(\.\d+)?", str(v))
    return int(round(float(m.group()))) if m else None


def to_schema(ds: Dataset, source_name: str) -> Dataset:
    """Map any of the known schemas (s1, DeepScaleR, open-rs, MATH, the demo) onto
    problem / solution / answer / source / level.

    `answer` falls back to the solution's last `\\boxed{}`; a row with an answer but no solution (the
    local DeepScaleR math.json) gets the solution `$\\boxed{answer}$`, so the gold is still boxed."""
    from openrs_nb.grading import extract_answer

    names = set(ds.column_names)
    if not names & set(_PROBLEM_FIELDS):
        raise ValueError(f"{source_name}: no problem column; expected one of {_PROBLEM_FIELDS}, got {sorted(names)}")

    def convert(row):
        problem = _first(row, _PROBLEM_FIELDS)
        solution = _first(row, _SOLUTION_FIELDS)
        answer = _first(row, _ANSWER_FIELDS)
        if isinstance(answer, (list, tuple)):
            answer = answer[0] if len(answer) == 1 else ", ".join(map(str, answer))
        if solution is None and answer is not None:
            solution = f"The final answer is $\\boxed{{{answer}}}$."
        if answer is None:
            answer = extract_answer(solution) if solution else None
        origin = _first(row, _SOURCE_FIELDS)
        origin = None if origin is None else str(origin)
        if origin is None or origin == source_name:
            source = source_name
        else:
            source = origin if origin.startswith(source_name + "/") else f"{source_name}/{origin}"
        return {"problem": str(problem or ""), "solution": str(solution or ""), "answer": str(answer or ""),
                "source": source, "level": _as_level(_first(row, _LEVEL_FIELDS))}

    return ds.map(convert, remove_columns=ds.column_names, features=FEATURES, desc=f"schema {source_name}")


def load_source(source: str, *, split: str = "train", n: int | None = None, seed: int = 0) -> Dataset:
    """Step 1. Rows of `source` in the one schema (problem, solution, answer, source, level).

    `source`: 'demo' (a generated raw pool of `n` rows, 40 by default), a short name of HUB_SOURCES
    ('s1', 'deepscaler', 'open-s1', 'open-deepscaler', 'open-rs'), any other Hub id ('owner/name'),
    or a local .jsonl/.json/.parquet file or `save_to_disk` folder. `n` keeps a seeded random sample."""
    if not isinstance(source, str) or not source:
        raise ValueError(f"source={source!r} must be 'demo', one of {', '.join(HUB_SOURCES)}, a Hub id or a path")
    if source == "demo":
        return make_demo_pool(n or 40, seed=seed)
    path = Path(source).expanduser()
    if path.exists():
        ds, name = _load_local(path), path.stem
    elif source in HUB_SOURCES or re.fullmatch(r"[\w.-]+/[\w.-]+", source):
        ds, name = _load_hub(HUB_SOURCES.get(source, source), split), source
    else:
        raise ValueError(f"source={source!r} is not a file and not a Hub id; choose 'demo', one of "
                         f"{', '.join(HUB_SOURCES)}, an 'owner/name' Hub id, or a .jsonl/.parquet path")
    if n is not None and n < len(ds):
        ds = ds.shuffle(seed=seed).select(range(n))
    return to_schema(ds, name)


def _load_local(path: Path) -> Dataset:
    from datasets import load_dataset, load_from_disk

    if path.is_dir():
        ds = load_from_disk(str(path))
        if not isinstance(ds, Dataset):  # a DatasetDict: its train split, else its only split
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        return ds
    kinds = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
    if path.suffix not in kinds:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; "
                         "use .jsonl, .json, .parquet or a save_to_disk folder")
    return load_dataset(kinds[path.suffix], data_files=str(path), split="train")


def _load_hub(repo: str, split: str) -> Dataset:
    import datasets

    try:
        return datasets.load_dataset(repo, split=split)
    except Exception as err:  # noqa: BLE001 — re-raised with what to do
        raise OSError(
            f"could not load {repo!r} (split {split!r}) from the Hugging Face Hub ({type(err).__name__}: {err}). "
            f"On a machine with internet run `hf download {repo} --repo-type dataset` first or retry; offline, "
            "pass a local .jsonl/.parquet path, or 'demo' for the generated pool."
        ) from err


# =================================================================================================
# Funnel bookkeeping
# =================================================================================================
@dataclass
class StepReport:
    """Rows in and out of one curation step, and why rows left."""

    step: str
    rows_in: int
    rows_out: int
    removed: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        why = ", ".join(f"{k} {v:,}" for k, v in sorted(self.removed.items(), key=lambda kv: -kv[1]))
        line = f"{self.step:>14}: {self.rows_in:>7,} -> {self.rows_out:>7,} rows"
        return line + (f"  (removed: {why})" if why else "")


def report(step: str, kept: Dataset, removed: Dataset, verbose: bool = True) -> StepReport:
    """A StepReport of one step from its kept and removed rows (which carry a `reason` column)."""
    reasons = dict(Counter(removed["reason"])) if len(removed) else {}
    rep = StepReport(step, len(kept) + len(removed), len(kept), reasons)
    if verbose:
        print(rep)
    return rep


def _split(ds: Dataset, reasons: list[str | None], extra: dict[str, list] | None = None,
           removed_extra: dict[str, list] | None = None) -> tuple[Dataset, Dataset]:
    """(rows whose reason is None, the others with a `reason` column). `extra` columns (one value per
    row of `ds`) go on both outputs, `removed_extra` columns only on the removed rows."""
    only_removed = {**(removed_extra or {}), "reason": [r or "" for r in reasons]}
    for name, values in {**(extra or {}), **only_removed}.items():
        ds = ds.remove_columns(name) if name in ds.column_names else ds
        ds = ds.add_column(name, values)
    kept = ds.select([i for i, r in enumerate(reasons) if r is None]).remove_columns(list(only_removed))
    removed = ds.select([i for i, r in enumerate(reasons) if r is not None])
    return kept, removed


# =================================================================================================
# Step 2: math-only (a balanced \boxed{} whose answer parses)
# =================================================================================================
def boxed_status(solution: str | None) -> str | None:
    """None when `solution` has a closed, non-empty `\\boxed{…}`; else 'no_boxed', 'unbalanced_boxed'
    or 'empty_boxed' (the text check; whether the answer parses is filter_boxed's second check)."""
    from openrs_nb.grading import extract_answer

    if not solution or not re.search(r"\\(boxed|fbox)\b", solution):
        return "no_boxed"
    answer = extract_answer(solution)
    if answer is None:
        return "unbalanced_boxed"
    return "empty_boxed" if not answer.strip() else None


def filter_boxed(ds: Dataset, *, return_removed: bool = False, timeout: float = 5.0, progress: bool | None = None):
    """Step 2. Keep rows whose solution holds a balanced, non-empty `\\boxed{…}` whose answer the grader
    (openrs_nb.grading, math-verify) accepts as a gold answer. Returns the kept rows, or (kept, removed)
    with `return_removed=True`; the removed rows' `reason` says why.

    math-verify falls back to the plain string when LaTeX parsing fails, so the grader accepts almost any
    non-empty answer: on the real DeepScaleR files this second check removed nothing (measured: 0 of
    8,443 boxed rows); answers such as `\\text{Paris}` pass and are left to the quality step."""
    from openrs_nb.grading import grade_batch

    reasons = [boxed_status(s) for s in list(ds["solution"])]
    todo = [i for i, r in enumerate(reasons) if r is None]
    if todo:
        all_solutions = list(ds["solution"])
        sols = [all_solutions[i] for i in todo]
        # A gold that math-verify cannot parse comes back as "bad_gold"; grading a solution against
        # itself checks exactly that, with grading's hard time bound.
        results = grade_batch(sols, sols, timeout=timeout, detailed=True, progress=progress)
        for i, res in zip(todo, results):
            if res.status in ("bad_gold", "no_answer"):
                reasons[i] = "answer_does_not_parse"
            elif res.status in ("timeout", "error"):
                reasons[i] = "answer_parse_" + res.status
    kept, removed = _split(ds, reasons)
    return (kept, removed) if return_removed else kept


# =================================================================================================
# Model calls with a resumable cache (steps 3 and 4)
# =================================================================================================
def problem_hash(problem: str) -> str:
    """Stable short id of a problem text (the cache key's middle part)."""
    return hashlib.sha1(problem.encode("utf-8")).hexdigest()[:16]


def model_key(model: Any) -> str:
    """The name a model is cached under: its name/path string, or a loaded model's `name_or_path`."""
    if isinstance(model, str):
        return model
    config = getattr(model, "config", None)
    return str(getattr(model, "name_or_path", None) or getattr(config, "_name_or_path", None) or "model")


def _settings_id(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def read_cache(path: str | os.PathLike | None, model: str, settings: dict) -> dict[tuple[str, str, int], dict]:
    """Cached generations for (model, problem hash, sample index) made with these `settings`.
    A half-written last line (a crash mid-write) is skipped."""
    out: dict[tuple[str, str, int], dict] = {}
    if path is None or not Path(path).exists():
        return out
    sid = _settings_id(settings)
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("model") == model and rec.get("settings") == sid:
                out[(rec["model"], rec["problem"], int(rec["sample"]))] = rec
    return out


def cached_generate(model, problems: Sequence[str], prompts: Sequence, *, n: int, cache_path=None,
                    settings: dict, chunk_size: int | None = None, tokenizer=None, backend: str = "auto",
                    progress: bool = True, **gen_kwargs) -> list[list[dict]]:
    """`n` completions per prompt through openrs_nb.generation.generate, cached in `cache_path` (JSONL,
    one line per completion, keyed by model, problem hash and sample index, tagged with the
    generation `settings`). Only missing samples are generated; each chunk of `chunk_size` prompts is
    appended to the cache as soon as it is done, so a crash loses at most one chunk. Default chunks:
    16 prompts with transformers; about generation.VLLM_CHUNK_COMPLETIONS completions with vLLM."""
    from openrs_nb.generation import VLLM_CHUNK_COMPLETIONS, generate, pick_backend

    backend = pick_backend(backend)
    if backend == "transformers":  # the weights' dtype is part of what made a completion
        from openrs_nb.models import sampling_dtype

        dtype = sampling_dtype() if isinstance(model, str) else getattr(model, "dtype", None)
        if dtype is not None:
            settings = {**settings, "dtype": str(dtype).removeprefix("torch.")}
    key = model_key(model)
    sid = _settings_id(settings)
    cache = read_cache(cache_path, key, settings)
    hashes = [problem_hash(p) for p in problems]
    missing = [[s for s in range(n) if (key, h, s) not in cache] for h in hashes]
    first = {h: i for i, h in reversed(list(enumerate(hashes)))}
    todo = [i for i, m in enumerate(missing) if m and first[hashes[i]] == i]  # a repeated problem: once
    if todo and backend == "transformers" and isinstance(model, str):
        from openrs_nb.models import load_sampling_model, load_tokenizer

        tokenizer = tokenizer or load_tokenizer(model)
        model = load_sampling_model(model, settings["dtype"])  # once, not once per chunk
    if chunk_size is None:  # vLLM's engine is built once per process and reused across calls
        chunk_size = max(1, VLLM_CHUNK_COMPLETIONS // n) if backend == "vllm" else 16
    if cache_path is not None:
        Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
    # Problems missing the same number of samples are generated together (normally all n).
    by_count: dict[int, list[int]] = defaultdict(list)
    for i in todo:
        by_count[len(missing[i])].append(i)
    for count, idx in sorted(by_count.items()):
        for start in range(0, len(idx), chunk_size):
            chunk = idx[start:start + chunk_size]
            outs = generate(model, [prompts[i] for i in chunk], tokenizer=tokenizer, n=count, backend=backend,
                            progress=progress, **gen_kwargs)
            lines = []
            for i, recs in zip(chunk, outs):
                for s, rec in zip(missing[i], recs):
                    entry = dict(model=key, problem=hashes[i], sample=s, settings=sid, **rec)
                    cache[(key, hashes[i], s)] = entry
                    lines.append(json.dumps(entry, ensure_ascii=False))
            if cache_path is not None:
                with open(cache_path, "a", encoding="utf-8") as f:
                    f.write("\n".join(lines) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
    return [[cache[(key, h, s)] for s in range(n)] for h in hashes]


# =================================================================================================
# Step 3: difficulty filter
# =================================================================================================
FILTER_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
"""Appended to each problem for the filter model (DeepSeek-R1's and Qwen2.5-Math's recommended prompt)."""


def filter_prompt(problem: str, examples: Sequence[dict] = ()) -> list[dict[str, str]]:
    """Chat messages asking the filter model to solve `problem`; `examples` (rows with problem and
    solution) go first as worked turns — a one-shot example is what lets the 135M demo model answer in
    the `\\boxed{}` format at all; the paper's filter models need none."""
    msgs: list[dict[str, str]] = []
    for ex in examples:
        msgs += [{"role": "user", "content": f"{ex['problem']}\n{FILTER_INSTRUCTION}"},
                 {"role": "assistant", "content": ex["solution"]}]
    return msgs + [{"role": "user", "content": f"{problem}\n{FILTER_INSTRUCTION}"}]


def difficulty_filter(ds: Dataset, model, *, k: int = 4, max_solve_rate: float = 0.5, max_new_tokens: int = 4096,
                      temperature: float = 0.6, top_p: float = 0.95, seed: int = 1234, cache_path=None,
                      examples: Sequence[dict] = (), backend: str = "auto", tokenizer=None,
                      batch_size: int = 16, chunk_size: int | None = None, timeout: float = 1.0,
                      progress: bool = True) -> tuple[Dataset, Dataset]:
    """Step 3. Sample `k` completions per problem from the filter `model`, grade them against the
    row's answer (openrs_nb.grading), and drop the problems it solves too often.

    A row is dropped (reason 'too_easy') when its solve rate (correct / k) is above `max_solve_rate`;
    both outputs get a `solve_rate` column. Problems never solved (rate 0) are always kept, whether too
    hard for the filter model or wrongly labelled. `max_solve_rate=0` keeps only those.
    Completions are cached in `cache_path` (see cached_generate), so a rerun or a resumed crash only
    generates what is missing. Returns (kept = hard enough, removed = too easy)."""
    from openrs_nb.grading import grade_batch

    if k < 1 or not 0 <= max_solve_rate <= 1:
        raise ValueError(f"need k >= 1 and 0 <= max_solve_rate <= 1 (got k={k}, max_solve_rate={max_solve_rate})")
    problems = list(ds["problem"])
    prompts = [filter_prompt(p, examples) for p in problems]
    template = json.dumps(filter_prompt("{problem}", examples))
    settings = dict(step="difficulty", max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                    seed=seed, prompt=hashlib.sha1(template.encode()).hexdigest()[:12])
    outs = cached_generate(model, problems, prompts, n=k, cache_path=cache_path, settings=settings,
                           chunk_size=chunk_size, tokenizer=tokenizer, backend=backend, progress=progress,
                           max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                           batch_size=batch_size)
    golds = list(ds["answer"])
    flat = grade_batch([r["text"] for recs in outs for r in recs], [g for g in golds for _ in range(k)],
                       timeout=timeout, progress=None if progress else False)
    rates = [sum(flat[i * k:(i + 1) * k]) / k for i in range(len(problems))]
    reasons = [("too_easy" if r > max_solve_rate else None) for r in rates]
    return _split(ds, reasons, extra={"solve_rate": rates})


# =================================================================================================
# Step 4: quality filter (rules, and an optional LLM judge)
# =================================================================================================
QUALITY_RULES = ("missing_answer", "multi_part", "several_questions", "proof")
"""Cheap detectors of quality_filter, in the order they are checked (the first hit is the reason)."""

# Sub-question labels "(a) … (b)" / "(i) … (ii)" / "a) … b)": a label at a line start or after a space,
# never after a letter or `)` (so `f(a) + f(b)` is no label). Lower case only: AMC answer choices are
# "(A) … (E)". Labelled *conditions* ("(i) f(0) = 0. (ii) …  Find f(2/7).") are common in contest
# problems, so a part counts only when it asks something itself (a "?" or a question/command word).
_PART_LABEL = re.compile(r"(?:^|(?<=[\s:*>{]))\(?([a-h]|i{1,3}|iv|vi{0,3})\)\s", re.MULTILINE)
_ASKS = re.compile(r"\?|\b(find|compute|determine|calculate|evaluate|what|how|which|show|prove|explain|express|"
                   r"sketch|give|write|simplify|solve)\b", re.IGNORECASE)
_PROOF = re.compile(r"\bprove\b(?:\s+or\s+disprove)?\s+that\b|(?:^|[.:;!?]\s+)show\s+that\b",
                    re.IGNORECASE | re.MULTILINE)
# Where a "?" is not a question of the problem: figures, math, tables and quoted speech.
_NOT_PROSE = re.compile(r"\[asy\].*?\[/asy\]|\$\$.*?\$\$|\$.*?\$|\\\[.*?\\\]|\\\(.*?\\\)|"
                        r"\\begin\{(tabular|array|align\*?)\}.*?\\end\{\1\}|\"[^\"]*\"|``.*?''|“.*?”", re.DOTALL)
_ROMAN = ["i", "ii", "iii", "iv", "v", "vi", "vii", "viii"]


def _multi_part(problem: str) -> bool:
    """Two or more labelled parts ((a)/(b) or (i)/(ii)) that each ask a question."""
    found = list(_PART_LABEL.finditer(problem))
    for family in (list("abcdefgh"), _ROMAN):
        labels = [m for m in found if m.group(1) in family]
        asking = 0
        for m, nxt in zip(labels, labels[1:] + [None]):
            segment = problem[m.end(): nxt.start() if nxt else len(problem)]
            asking += bool(_ASKS.search(_NOT_PROSE.sub(" ", segment)) or "?" in segment)
        if asking >= 2:
            return True
    return False


def question_marks(problem: str) -> int:
    """Question marks in the prose of a problem (not in figures, math, tables or quoted speech)."""
    return _NOT_PROSE.sub(" ", problem).count("?")


def quality_issues(problem: str, answer: str | None = "x", *, max_question_marks: int = 1,
                   rules: Sequence[str] = QUALITY_RULES) -> list[str]:
    """Which rule-based detectors fire on one row (empty list = looks like one clean question)."""
    issues = []
    for rule in rules:
        if rule == "missing_answer":
            hit = answer is None or not str(answer).strip()
        elif rule == "multi_part":
            hit = _multi_part(problem)
        elif rule == "several_questions":
            hit = question_marks(problem) > max_question_marks
        elif rule == "proof":
            hit = bool(_PROOF.search(problem))
        else:
            raise ValueError(f"unknown quality rule {rule!r}; choose from {', '.join(QUALITY_RULES)}")
        if hit:
            issues.append(rule)
    return issues


def quality_filter(ds: Dataset, *, rules: Sequence[str] = QUALITY_RULES,
                   max_question_marks: int = 1) -> tuple[Dataset, Dataset]:
    """Step 4 (rules). Drop multi-part questions ("(a) … (b)"), questions with more than
    `max_question_marks` question marks, proof questions and rows without an answer.
    Returns (kept, removed); the reason is the first rule that fired."""
    bad = [r for r in rules if r not in QUALITY_RULES]
    if bad:
        raise ValueError(f"unknown quality rule(s) {bad}; choose from {', '.join(QUALITY_RULES)}")
    reasons = []
    for p, a in zip(list(ds["problem"]), list(ds["answer"])):
        hits = quality_issues(p, a, max_question_marks=max_question_marks, rules=rules)
        reasons.append(hits[0] if hits else None)
    return _split(ds, reasons)


JUDGE_PROMPT = """You review math problems for a training set. Each problem must have exactly one final answer
that can be checked automatically.

Answer GOOD if the problem:
- asks exactly one question (no parts such as (a), (b), (c)),
- has a single short final answer (a number, expression, interval or short phrase),
- is complete and clearly stated (no missing figure, data or conditions).

Answer BAD if it has several sub-questions, asks for a proof or an explanation only, is missing information,
or is garbled.

Problem:
{problem}

Reply with exactly one line: VERDICT: GOOD or VERDICT: BAD"""
"""The judge's prompt (the paper only says Qwen2.5-7B-Instruct removed noisy or multi-part questions)."""

_VERDICT = re.compile(r"^\W*VERDICT\W*:\W*(GOOD|BAD)\W*$")


def parse_verdict(text: str | None) -> str | None:
    """'good' or 'bad' when the judge's last non-empty line is exactly `VERDICT: GOOD` / `VERDICT: BAD`
    (markdown emphasis and a final full stop allowed), and no other line carries a verdict; else None."""
    if not text:
        return None
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    verdicts = [m.group(1) for ln in lines if (m := _VERDICT.match(ln))]
    if not lines or not _VERDICT.match(lines[-1]) or len(set(verdicts)) != 1:
        return None
    return verdicts[-1].lower()


def judge_filter(ds: Dataset, model, *, on_unparsed: str = "keep", max_new_tokens: int = 32, cache_path=None,
                 backend: str = "auto", tokenizer=None, batch_size: int = 16, chunk_size: int | None = None,
                 progress: bool = True) -> tuple[Dataset, Dataset]:
    """Step 4 (judge). Ask `model` (paper: Qwen2.5-7B-Instruct) JUDGE_PROMPT about each problem with
    greedy decoding; drop the 'bad' ones. A reply that parse_verdict cannot read is kept or dropped
    as `on_unparsed` says ('keep' or 'drop'); the `judge_verdict` column says 'good', 'bad' or
    'unparsed' on both outputs. Replies are cached like the difficulty filter's."""
    if on_unparsed not in ("keep", "drop"):
        raise ValueError(f"on_unparsed={on_unparsed!r} is not valid; choose 'keep' or 'drop'")
    problems = list(ds["problem"])
    prompts = [[{"role": "user", "content": JUDGE_PROMPT.format(problem=p)}] for p in problems]
    settings = dict(step="judge", max_new_tokens=max_new_tokens,
                    prompt=hashlib.sha1(JUDGE_PROMPT.encode()).hexdigest()[:12])
    outs = cached_generate(model, problems, prompts, n=1, cache_path=cache_path, settings=settings,
                           chunk_size=chunk_size, tokenizer=tokenizer, backend=backend, progress=progress,
                           max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size)
    verdicts = [parse_verdict(recs[0]["text"]) or "unparsed" for recs in outs]
    reasons = [("judge_bad" if v == "bad" else "judge_unparsed" if v == "unparsed" and on_unparsed == "drop" else None)
               for v in verdicts]
    return _split(ds, reasons, extra={"judge_verdict": verdicts})


# =================================================================================================
# Step 5: deduplicate and decontaminate
# =================================================================================================
_LATEX_NOISE = re.compile(r"\\[,;:!> ]|\\q?quad\b|\\(?:left|right|displaystyle|textstyle)\b|~")
_THOUSANDS = re.compile(r"(?<=\d)(?:\{,\}|,)(?=\d{3}\b)")
# Words, numbers and the operators that change a problem's meaning (`12 + 7` is not `12 - 7`).
_TOKEN = re.compile(r"\w+|[+\-*/=<>^!|]")


def text_tokens(text: str) -> list[str]:
    """Lower-case word tokens of `text` with formatting noise removed: Unicode forms, LaTeX spacing
    (`\\,` `\\;` `\\quad` `~`), `\\left`/`\\right`, `\\dfrac`/`\\tfrac` -> `\\frac`, `\\cdots`/`\\ldots`/… ->
    `\\dots`, thousands separators;
    punctuation, `$` and whitespace never reach a token (so `$x,$` and `$x$,` read the same), while
    the operators + - * / = < > ^ ! | do (so `12 + 7` and `12 - 7` differ)."""
    text = unicodedata.normalize("NFKC", text or "")
    text = _LATEX_NOISE.sub(" ", text)
    text = re.sub(r"\\[dt]frac\b", r"\\frac", text)
    text = re.sub(r"\\(?:[clvd]?dots[bcimo]?)\b", r" dots ", text)
    text = _THOUSANDS.sub("", text)
    return _TOKEN.findall(text.lower())


def normalize_text(text: str) -> str:
    """The text as its normalised tokens joined by spaces (the near-duplicate key)."""
    return " ".join(text_tokens(text))


def deduplicate(ds: Dataset, column: str = "problem") -> tuple[Dataset, Dataset]:
    """Step 5a. Keep the first row of each problem; later rows with the identical text (reason
    'exact_duplicate') or the same normalised text (reason 'near_duplicate': case, spacing,
    punctuation and LaTeX-spacing edits) are removed, with `duplicate_of` naming the kept text."""
    seen_raw: dict[str, int] = {}
    seen_norm: dict[str, int] = {}
    texts = list(ds[column])
    reasons, dup_of = [], []
    for i, t in enumerate(texts):
        norm = normalize_text(t)
        if t in seen_raw:
            reasons.append("exact_duplicate"), dup_of.append(texts[seen_raw[t]])
        elif norm in seen_norm:
            reasons.append("near_duplicate"), dup_of.append(texts[seen_norm[norm]])
        else:
            seen_raw[t], seen_norm[norm] = i, i
            reasons.append(None), dup_of.append("")
    return _split(ds, reasons, removed_extra={"duplicate_of": dup_of})


def ngrams(tokens: Sequence[str], n: int) -> set[str]:
    """Word n-grams of `tokens` as strings; a text shorter than `n` words is one gram (all of it),
    so short problems match only an identical short problem."""
    if len(tokens) < n:
        return {" ".join(tokens)} if tokens else set()
    return {" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


@dataclass
class Overlap:
    """The benchmark problem a training text overlaps most, and how much."""

    item: int | None
    """Index of the best-matching benchmark problem (None: no shared n-gram at all)."""
    overlap: float
    """Fraction of that problem's distinctive (non-boilerplate) n-grams found in the text (0 … 1)."""
    raw_overlap: float
    """Fraction of all its n-grams found in the text, boilerplate included (0 … 1)."""
    shared: int
    """n-grams shared with that problem, boilerplate included (what naive matching counts)."""
    shared_boilerplate: int
    """Of those, how many are boilerplate (see boilerplate_ngrams)."""


def boilerplate_ngrams(benchmark_problems: Sequence[str], texts: Sequence[str] = (), *, ngram: int = 13,
                       benchmark_df: int | None = 2, train_df: int | None = 3) -> set[str]:
    """n-grams that are boilerplate rather than content: those in at least `benchmark_df` distinct
    benchmark problems, or in at least `train_df` distinct training texts. "… where m and n are
    relatively prime positive integers. Find m+n" and MATH's "Enter your answer in the form …" recur
    in both. None switches a criterion off. Texts are counted once per distinct normalised form, so
    planted copies of one problem never make its own n-grams look common."""
    common: set[str] = set()
    for pool, threshold in ((benchmark_problems, benchmark_df), (texts, train_df)):
        if threshold is None or not len(pool):
            continue
        df = Counter(g for toks in {tuple(text_tokens(t)) for t in pool} for g in ngrams(toks, ngram))
        common |= {g for g, c in df.items() if c >= threshold}
    return common


def overlaps(texts: Sequence[str], benchmark_problems: Sequence[str], *, ngram: int = 13,
             boilerplate: set[str] | frozenset = frozenset()) -> list[Overlap]:
    """For each text, the benchmark problem it overlaps most (largest of `overlap` and `raw_overlap`)."""
    item_grams = [ngrams(text_tokens(b), ngram) for b in benchmark_problems]
    distinctive = [len(g - boilerplate) for g in item_grams]
    index: dict[str, list[int]] = defaultdict(list)
    for j, grams in enumerate(item_grams):
        for g in grams:
            index[g].append(j)
    out = []
    for t in texts:
        shared, shared_bp = Counter(), Counter()
        for g in ngrams(text_tokens(t), ngram):
            is_bp = g in boilerplate
            for j in index.get(g, ()):
                shared[j] += 1
                shared_bp[j] += is_bp
        best, best_key = Overlap(None, 0.0, 0.0, 0, 0), (0.0, 0.0)
        for j, s in shared.items():
            own = s - shared_bp[j]
            frac = own / distinctive[j] if distinctive[j] else 0.0
            raw = s / len(item_grams[j])
            if (max(frac, raw), frac) > best_key:
                best, best_key = Overlap(j, frac, raw, s, shared_bp[j]), (max(frac, raw), frac)
        out.append(best)
    return out


def is_contaminated(o: Overlap, min_overlap: float = 0.5, min_raw_overlap: float = 0.8) -> bool:
    """The decontamination rule: the text holds at least `min_overlap` of a benchmark problem's
    distinctive n-grams (and at least one of them), or at least `min_raw_overlap` of all its n-grams
    (a near-verbatim copy is caught however common its phrases are)."""
    if o.item is None:
        return False
    return (o.shared > o.shared_boilerplate and o.overlap >= min_overlap) or o.raw_overlap >= min_raw_overlap


def decontaminate(ds: Dataset, benchmark_problems: list[str], ngram: int = 13, *, min_overlap: float = 0.5,
                  min_raw_overlap: float = 0.8, benchmark_df: int | None = 2, train_df: int | None = 3,
                  benchmark_names: Sequence[str] | None = None, column: str = "problem") -> tuple[Dataset, Dataset]:
    """Step 5b. Remove rows whose problem overlaps a benchmark problem. Returns (kept, removed).

    Texts are compared as word `ngram`-grams of their normalised tokens (text_tokens), so whitespace,
    punctuation and LaTeX-spacing edits do not hide a copy. Naive matching (any shared n-gram) flags
    rows that share only contest boilerplate, so boilerplate n-grams (boilerplate_ngrams, set by
    `benchmark_df` and `train_df`) are discounted and a row must cover a large part of one benchmark
    problem (is_contaminated). `min_overlap=0, benchmark_df=None, train_df=None` is the naive rule.
    Removed rows carry `benchmark` (name, or the problem's index), `benchmark_problem` and `overlap`."""
    if not 0 <= min_overlap <= 1 or not 0 < min_raw_overlap <= 1 or ngram < 1:
        raise ValueError(f"need 0 <= min_overlap <= 1, 0 < min_raw_overlap <= 1 and ngram >= 1 "
                         f"(got {min_overlap}, {min_raw_overlap}, {ngram})")
    if benchmark_names is not None and len(benchmark_names) != len(benchmark_problems):
        raise ValueError(f"benchmark_names has {len(benchmark_names)} entries for {len(benchmark_problems)} problems")
    texts = list(ds[column])
    common = boilerplate_ngrams(benchmark_problems, texts, ngram=ngram, benchmark_df=benchmark_df, train_df=train_df)
    found = overlaps(texts, benchmark_problems, ngram=ngram, boilerplate=common)
    hit = [is_contaminated(o, min_overlap, min_raw_overlap) for o in found]
    def name(o):
        return "" if o.item is None else str(benchmark_names[o.item]) if benchmark_names is not None else str(o.item)

    return _split(ds, ["contaminated" if h else None for h in hit], removed_extra={
        "benchmark": [name(o) for o in found],
        "benchmark_problem": ["" if o.item is None else benchmark_problems[o.item] for o in found],
        "overlap": [round(max(o.overlap, o.raw_overlap), 4) for o in found]})


BENCHMARK_FILES = {"aime24": "problem", "amc23": "problem", "math500": "problem", "minerva": "problem",
                   "olympiadbench": "question"}
"""The five evaluation sets (file stem -> question field) of ../shared/data/benchmarks."""


def shared_data_dir() -> Path | None:
    """The reference data folder: $OPENRS_SHARED_DATA, else `<repo root>/../shared/data`; None if absent."""
    from openrs_nb.config import project_root

    env = os.environ.get("OPENRS_SHARED_DATA")
    path = Path(env) if env else project_root().parent / "shared" / "data"
    return path if path.is_dir() else None


def benchmark_problems(path: str | os.PathLike | None = None,
                       names: Iterable[str] = BENCHMARK_FILES) -> dict[str, list[str]]:
    """Problem texts of the five benchmarks, read from local JSONL files (`<path>/<name>.jsonl`;
    default: the benchmarks folder of shared_data_dir()). Raises FileNotFoundError when absent."""
    if path is None:
        root = shared_data_dir()
        if root is None:
            raise FileNotFoundError("no benchmark folder: set OPENRS_SHARED_DATA or pass path=")
        path = root / "benchmarks"
    out = {}
    for name in names:
        if name not in BENCHMARK_FILES:
            raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARK_FILES)}")
        file = Path(path) / f"{name}.jsonl"
        with open(file, encoding="utf-8") as f:
            out[name] = [json.loads(line)[BENCHMARK_FILES[name]] for line in f if line.strip()]
    return out


# =================================================================================================
# Step 6: mix
# =================================================================================================
def scale_mix(sizes: dict[str, int], available: dict[str, int]) -> dict[str, int]:
    """The largest sizes in the ratio of `sizes` that fit the `available` rows (e.g. the paper's
    3,000 : 3,000 : 1,000 on a small demo pool), at least 1 row per part where any are available;
    a part with no rows gets 0 and does not shrink the others."""
    scale = min([1.0] + [available[k] / v for k, v in sizes.items() if v > 0 and available.get(k, 0) > 0])
    return {k: min(available.get(k, 0), max(1 if available.get(k, 0) and v else 0, int(v * scale)))
            for k, v in sizes.items()}


def mix(sources: dict[str, Dataset], sizes: dict[str, int], seed: int) -> Dataset:
    """Step 6. `sizes[name]` rows drawn at random (seeded) from each `sources[name]`, in the order of
    `sizes`, skipping problems already drawn from an earlier part (normalised text), then shuffled.
    Columns: the schema plus `subset` (which part a row came from). Reproducible for a given seed."""
    unknown = sorted(set(sizes) - set(sources))
    if unknown:
        raise ValueError(f"sizes names {unknown} but sources has only {sorted(sources)}")
    parts, seen = [], set()
    for name, size in sizes.items():
        if size < 0:
            raise ValueError(f"sizes[{name!r}]={size} must be >= 0")
        ds = sources[name]
        order = list(range(len(ds)))
        random.Random(f"{seed}-{name}").shuffle(order)
        problems = list(ds["problem"])
        take = []
        for i in order:
            if len(take) == size:
                break
            key = normalize_text(problems[i])
            if key not in seen:
                seen.add(key)
                take.append(i)
        if len(take) < size:
            raise ValueError(f"source {name!r} has only {len(take)} usable rows (not drawn before), {size} requested")
        if not take:
            continue
        part = ds.select(take).select_columns(list(COLUMNS)).cast(FEATURES)
        parts.append(part.add_column("subset", [name] * len(part)))
    if not parts:
        raise ValueError(f"sizes {sizes} select no rows: nothing to mix")
    return concatenate_datasets(parts).shuffle(seed=seed).flatten_indices()


# =================================================================================================
# Step 7: save with a dataset card, and the prompt column for training
# =================================================================================================
def build_prompts(ds: Dataset, system_prompt: str, tokenizer=None, max_prompt_length: int | None = None) -> Dataset:
    """Add the chat `prompt` column (system + user turn) and drop prompts longer than
    `max_prompt_length` tokens (TRL 1.16 no longer truncates them)."""
    def to_prompt(row):
        return {"prompt": [{"role": "system", "content": system_prompt}, {"role": "user", "content": row["problem"]}]}

    out = ds.map(to_prompt)
    if tokenizer is not None and max_prompt_length:
        def short_enough(row):
            ids = tokenizer.apply_chat_template(row["prompt"], tokenize=True, add_generation_prompt=True)
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids  # transformers 5 returns a BatchEncoding
            return len(ids) <= max_prompt_length

        kept = out.filter(short_enough)
        dropped = len(out) - len(kept)
        if dropped:
            logger.info("dropped %d of %d prompts longer than %d tokens", dropped, len(out), max_prompt_length)
        out = kept
    return out


def dataset_card(info: dict[str, Any]) -> str:
    """A README.md for a curated dataset: what went in, what each step removed, how to load it.
    `info`: title, steps ({pool: [StepReport or dict]}), system_prompt, notes, and any other facts
    (rows, sources, seed, filter models, mix sizes, …), which go into the summary table."""
    lines = [f"# {info.get('title', 'Curated math training data (openrs_nb)')}", "",
             "Built by `openrs_nb.data` (notebooks/01_data_curation.ipynb), following Section 2 of "
             "*Reinforcement Learning for Reasoning in Small LLMs: What Works and What Doesn't*.", ""]
    lines += ["## Summary", "", "| field | value |", "|---|---|"]
    for key, value in info.items():
        if key not in ("title", "steps", "system_prompt", "notes") and value is not None:
            shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
            lines.append(f"| {key} | {shown.replace('|', '/')} |")
    for pool, steps in (info.get("steps") or {}).items():
        lines += ["", f"## Funnel: {pool}", "", "| step | rows in | rows out | removed (reason: rows) |",
                  "|---|---|---|---|"]
        for s in steps:
            s = asdict(s) if isinstance(s, StepReport) else s
            why = ", ".join(f"{k}: {v}" for k, v in s.get("removed", {}).items()) or "—"
            lines.append(f"| {s['step']} | {s['rows_in']:,} | {s['rows_out']:,} | {why} |")
    if info.get("system_prompt"):
        lines += ["", "## Prompt column", "", "System prompt of every row (prompts longer than "
                  f"{info.get('max_prompt_length')} tokens were dropped):", "", "```", info["system_prompt"], "```"]
    lines += ["", "## Columns", "", "`prompt` (chat messages), `problem`, `solution` (contains `\\boxed{answer}`), "
              "`answer`, `source`, `level`, `subset` (part of the mix).", "", "## Load", "", "```python",
              "from datasets import load_from_disk", "ds = load_from_disk('<this folder>')",
              "# or its Parquet copy (uploaded to the Hub, the YAML header makes that file the train split):",
              "from datasets import load_dataset",
              "ds = load_dataset('parquet', data_files='<this folder>/train.parquet', split='train')", "```"]
    if info.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in info["notes"]]
    return "\n".join(lines) + "\n"


def _size_category(rows: int) -> str:
    """The Hub's `size_categories` bin for a dataset of `rows` examples."""
    for limit, label in ((10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                         (10**7, "1M<n<10M")):
        if rows < limit:
            return label
    return "other"


def save_curated(ds: Dataset, out_dir: str | os.PathLike, *, card: dict[str, Any], system_prompt: str | None = None,
                 tokenizer=None, max_prompt_length: int | None = None) -> Path:
    """Step 7. Write `ds` as a `save_to_disk` folder (what 04_train's `dataset=<path>` reads), the same rows
    as `train.parquet`, a README.md dataset card (`huggingface_hub.DatasetCard`: YAML metadata whose
    `configs` make the Parquet file the train split once the folder is a Hub repo, then the funnel) and
    curation.json (the card's facts as JSON). With `system_prompt`, the chat `prompt` column is added and
    prompts over `max_prompt_length` tokens are dropped first."""
    import shutil

    from huggingface_hub import DatasetCard, DatasetCardData

    out = Path(out_dir)
    if system_prompt is not None:
        ds = build_prompts(ds, system_prompt, tokenizer, max_prompt_length)
    if out.exists():
        shutil.rmtree(out)
    ds.save_to_disk(str(out))
    ds.to_parquet(str(out / "train.parquet"))
    info = dict(card, rows=len(ds), system_prompt=system_prompt, max_prompt_length=max_prompt_length)
    info.setdefault("title", "Curated math training data (openrs_nb)")
    metadata = DatasetCardData(
        pretty_name=info["title"], language="en", task_categories=["text-generation"],
        size_categories=_size_category(len(ds)), tags=["math", "reasoning", "grpo", "open-rs"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "train.parquet"}]}])
    DatasetCard(f"---\n{metadata.to_yaml()}\n---\n\n{dataset_card(info)}").save(out / "README.md")
    steps = {k: [asdict(s) if isinstance(s, StepReport) else s for s in v]
             for k, v in (info.get("steps") or {}).items()}
    (out / "curation.json").write_text(json.dumps(dict(info, steps=steps), indent=2, ensure_ascii=False, default=str),
                                       encoding="utf-8")
    return out


def plot_funnel(funnels: dict[str, list[tuple[str, int]]], *, title: str = "", ax=None):
    """Bar chart of rows left after each step, one group of bars per pool, labelled with counts
    (like the paper's 59,029 -> 31,323 -> 21,533 -> 18,615). Returns the figure."""
    import matplotlib.pyplot as plt

    colors = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
    if ax is None:
        with plt.style.context("default"):
            fig, ax = plt.subplots(figsize=(9, 3.6), facecolor="white")
    fig = ax.figure
    ax.set_facecolor("white")
    steps = []
    for f in funnels.values():
        steps += [s for s, _ in f if s not in steps]
    width = 0.8 / max(1, len(funnels))
    for j, (name, f) in enumerate(funnels.items()):
        counts = dict(f)
        xs = [i + (j - (len(funnels) - 1) / 2) * width for i, s in enumerate(steps) if s in counts]
        ys = [counts[s] for s in steps if s in counts]
        bars = ax.bar(xs, ys, width=width * 0.95, color=colors[j % len(colors)], label=name)
        ax.bar_label(bars, labels=[f"{y:,}" for y in ys], fontsize=8, padding=2)
    ax.set_xticks(range(len(steps)), steps)
    ax.set_xlabel("curation step (rows left after it)")
    ax.set_ylabel("rows")
    ax.set_title(title)
    ax.margins(y=0.15)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(frameon=False)
    return fig
