"""Training data: the embedded demo problems and the prompt column GRPO trains on.

Schema of every dataset here: `problem`, `solution` (text with a final `\\boxed{answer}`), `answer`,
`source`, `level`.
"""

from __future__ import annotations

import hashlib
import random

from datasets import Dataset

SPLITS = ("train", "test")
DEMO_LEVELS = (1, 2, 3, 4, 5)

_NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kira", "Liam"]
_ITEMS = ["apples", "marbles", "books", "stickers", "pencils", "coins", "shells", "cards"]


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


def build_prompts(ds: Dataset, system_prompt: str, tokenizer=None, max_prompt_length: int | None = None) -> Dataset:
    """Add the chat `prompt` column (system + user turn) and drop prompts longer than
    `max_prompt_length` tokens (TRL 1.16 no longer truncates them)."""
    def to_prompt(row):
        return {"prompt": [{"role": "system", "content": system_prompt}, {"role": "user", "content": row["problem"]}]}

    out = ds.map(to_prompt)
    if tokenizer is not None and max_prompt_length:
        def short_enough(row):
            ids = tokenizer.apply_chat_template(row["prompt"], tokenize=True, add_generation_prompt=True)
            ids = ids["input_ids"] if isinstance(ids, dict) else ids
            return len(ids) <= max_prompt_length

        kept = out.filter(short_enough)
        dropped = len(out) - len(kept)
        if dropped:
            print(f"[openrs_nb] dropped {dropped} of {len(out)} prompts longer than {max_prompt_length} tokens")
        out = kept
    return out
