"""Is a completion's final answer equal to the gold answer? One grader for rewards, filters and evaluation.

Two rules, both through math-verify:
- `rule="reward"` (training rewards, curation filters): the last `\\boxed{…}` of the completion (or,
  without one, math-verify's anchored phrases such as "the final answer is $…$"), compared with
  `gold` — a bare answer ("204", "27.0", "\\frac{1}{2}") or a full solution containing `\\boxed{}`.
  A number written anywhere else in the completion is not an answer.
- `rule="paper_expr"` / `"paper_latex"` (evaluation): the metric behind the paper's Table 1, lighteval's
  `multilingual_extractive_match_metric` as configured in knoveleng/open-rs @2889c47
  `src/open_r1/evaluate.py`: `fallback_mode="first_match"`, `precision=5`, gold extracted with
  `ExprExtractionConfig()` (AIME24, AMC23: "paper_expr") or `LatexExtractionConfig()` (MATH-500,
  Minerva, OlympiadBench: "paper_latex"), predictions with
  `(ExprExtractionConfig(), LatexExtractionConfig(boxed_match_priority=0))`. The prediction needs no
  box: "46 + 96 = 142" counts as the answer 142. A gold that does not parse is compared as a string.

Hard time bound. math-verify's own timeout uses SIGALRM: it works only in the main thread and cannot
interrupt long C-level work (a sympy power such as `10^{10^{10^{10}}}` builds a giant integer inside
one C call). So parsing and verification run in a `pebble.ProcessPool` with math-verify's signal
timeouts off; a task past its `timeout` is killed with its worker (SIGTERM, which the workers do not
catch, so it ends even inside C code) and reported as "timeout". This works the same from any thread.
The workers start from multiprocessing's fork server with math-verify preloaded (a clean process: a
trainer's threads and CUDA state are never copied; a replacement worker starts in milliseconds).
The gold answer is parsed first, under its own budget (GOLD_TIMEOUT; it comes from the data set, not
the model); a completion then gets `timeout` seconds plus the time its gold took to parse (a worker
that has not seen that gold yet parses it again; workers cache parsed golds).

Safety. Nothing in a completion is ever evaluated as Python: math-verify turns LaTeX into sympy objects
with an ANTLR parser, and its plain-expression path only accepts digits and arithmetic operators.
The workers also get a memory limit, so a blow-up ends in MemoryError, not in swapping.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import concurrent.futures.process
import multiprocessing
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

# Status of a grading: "correct", "wrong", "no_answer" (nothing to compare in the prediction),
# "bad_gold" (the gold answer does not parse), "timeout", "error" (the worker crashed).
STATUSES = ("correct", "wrong", "no_answer", "bad_gold", "timeout", "error")
RULES = ("reward", "paper_expr", "paper_latex")
"""Grading rules: the training reward's, and the paper's evaluation metric with each gold extraction."""

# Without a \boxed{} answer, only this many trailing characters are searched for math-verify's
# anchored fallbacks ("final answer is …", "Answer: …"): the answer sits at the end of a completion.
FALLBACK_TAIL_CHARS = 2000
# A gold without \\boxed{} longer than this is a solution whose answer is not marked, not a bare answer
# (the longest bare answer in the five benchmarks and DeepScaleR has 210 characters): "bad_gold".
MAX_BARE_GOLD_CHARS = 500
# Most worker processes by default (each holds ~100 MB once sympy is warm).
MAX_DEFAULT_WORKERS = 8
# Memory limit of a worker process (address space); a blow-up raises MemoryError there.
WORKER_MEMORY_BYTES = 4 * 1024**3
# Seconds a worker may spend parsing a gold answer (it comes from the data set, not from the model;
# `timeout` covers only the completion, and parsed golds are cached).
GOLD_TIMEOUT = 10.0
# The paper's metric compares numbers rounded to this many decimals (lighteval `precision=5`).
PAPER_PRECISION = 5
# Show a progress bar for batches with more pairs than this (when progress=None).
PROGRESS_MIN_ITEMS = 500

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOXED_SPACE_RE = re.compile(r"\\boxed +([^\s$]+)")
_BRACE_RE = re.compile(r"[{}]")


@dataclass(frozen=True)
class GradeResult:
    """The verdict on one (prediction, gold) pair."""

    correct: bool
    """True iff math-verify says the prediction's answer equals the gold answer."""
    status: str
    """One of STATUSES: why `correct` is what it is."""
    answer: str | None
    """The final-answer string taken from the prediction (last \\boxed{} content), for display."""


# --------------------------------------------------------------------------------------------------
# Answer extraction (pure Python, linear time, runs in the calling process)
# --------------------------------------------------------------------------------------------------
def extract_answer(text: str | None) -> str | None:
    """Content of the last closed `\\boxed{…}` (or `\\fbox{…}`) in `text`, nested braces handled.

    Returns None when there is no closed box. An unclosed last box (a truncated completion) is skipped
    in favour of the previous closed one. `\\boxed 5` (no braces) is read up to the next space or `$`.
    """
    if not isinstance(text, str):
        return None
    starts = [m.end() for m in _BOXED_RE.finditer(text)]  # each just after its box's "{"
    if starts:
        close_of, stack = {}, []  # one pass over the braces: linear even for thousands of open boxes
        for m in _BRACE_RE.finditer(text, starts[0] - 1):
            if m.group() == "{":
                stack.append(m.start())
            elif stack:
                close_of[stack.pop()] = m.start()
        for start in reversed(starts):
            end = close_of.get(start - 1)
            if end is not None:
                return text[start:end].strip()
    spaced = _BOXED_SPACE_RE.findall(text)
    return spaced[-1] if spaced else None


def _prediction_text(prediction: str, rule: str = "reward") -> tuple[str, str | None]:
    """(text handed to math-verify, extracted answer or None). The paper's metric reads the whole text."""
    if rule != "reward":
        return prediction, None
    answer = extract_answer(prediction)
    if answer is not None:
        return "\\boxed{" + answer + "}", answer
    return prediction[-FALLBACK_TAIL_CHARS:], None


def _gold_text(gold, rule: str = "reward") -> str | None:
    """The gold answer as math-verify gets it, or None when there is none: a `\\boxed{…}` string under
    the reward rule, the text as given under the paper's rules (lighteval parses the raw field)."""
    if gold is None:
        return None
    if isinstance(gold, bool) or not isinstance(gold, (str, int, float)):
        raise TypeError(f"gold must be a str, int or float (or None), got {type(gold).__name__}")
    gold = str(gold).strip()
    if not gold:
        return None
    if rule != "reward":
        return gold
    boxed = extract_answer(gold)
    if boxed is not None:
        return "\\boxed{" + boxed + "}" if boxed else None
    if len(gold) > MAX_BARE_GOLD_CHARS:
        return None
    return "\\boxed{" + gold + "}"


def _check_args(prediction, timeout: float) -> None:
    if prediction is not None and not isinstance(prediction, str):
        raise TypeError(f"prediction must be a str (or None), got {type(prediction).__name__}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout={timeout!r} must be a positive number of seconds")


# --------------------------------------------------------------------------------------------------
# What runs inside a worker process
# --------------------------------------------------------------------------------------------------
_CONFIGS: dict = {}


def _configs(rule: str) -> tuple[list, list]:
    """(gold extraction configs, prediction extraction configs) of a rule; both rules parse with
    math-verify's default fallback_mode="first_match" (the paper's metric sets it explicitly)."""
    if rule not in _CONFIGS:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig

        if rule == "reward":
            # Gold is always handed over as \boxed{…}; predictions too when they have a box. Without a
            # box, only anchored phrases ("final answer is", "answer:") count: a stray number is not an answer.
            gold = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
            pred = [LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False),
                    ExprExtractionConfig(try_extract_without_anchor=False)]
            _CONFIGS[rule] = (gold, pred)
        else:  # knoveleng/open-rs @2889c47 src/open_r1/evaluate.py: expr_gold_metric / latex_gold_metric
            gold = [ExprExtractionConfig() if rule == "paper_expr" else LatexExtractionConfig()]
            pred = [ExprExtractionConfig(), LatexExtractionConfig(boxed_match_priority=0)]
            _CONFIGS[rule] = (gold, pred)
    return _CONFIGS[rule]


_GOLD_CACHE: OrderedDict[tuple[str, str], list] = OrderedDict()  # in a worker: (rule, gold text) -> parsed


def _parse_gold(rule: str, gold_text: str) -> list:
    """The parsed gold, cached ([] when it does not parse under the reward rule; lighteval compares an
    unparseable gold as its string, so the paper's rules give [gold_text] then). Parsed golds stay in
    the worker: sympy objects do not always survive pickling unchanged."""
    from math_verify import parse

    parsed = _GOLD_CACHE.get((rule, gold_text))
    if parsed is None:
        parsed = parse(gold_text, _configs(rule)[0], fallback_mode="first_match", parsing_timeout=None)
        if not parsed and rule != "reward":
            parsed = [gold_text]
        _GOLD_CACHE[(rule, gold_text)] = parsed
        if len(_GOLD_CACHE) > 4096:
            _GOLD_CACHE.popitem(last=False)
    return parsed


def _gold_job(rule: str, gold_text: str) -> tuple[bool, float]:
    """(does the gold parse, seconds it took): run once per gold, under GOLD_TIMEOUT."""
    t = time.perf_counter()
    return bool(_parse_gold(rule, gold_text)), time.perf_counter() - t


def _verify(rule: str, pred_text: str, gold_text: str) -> tuple[str, str | None]:
    """(status, extracted prediction string) by math-verify, with its signal timeouts off."""
    from math_verify import parse, verify

    try:
        gold_parsed = _parse_gold(rule, gold_text)
        if not gold_parsed:
            return "bad_gold", None
        pred_parsed = parse(pred_text, _configs(rule)[1], fallback_mode="first_match", parsing_timeout=None)
        if not pred_parsed:
            return "no_answer", None
        shown = next((p for p in reversed(pred_parsed) if isinstance(p, str)), None)
        precision = 6 if rule == "reward" else PAPER_PRECISION  # 6: math-verify's default
        ok = verify(gold_parsed, pred_parsed, float_rounding=precision, timeout_seconds=None)
    except MemoryError:
        return "error", None
    return ("correct" if ok else "wrong"), shown


def _verify_texts(pred_text: str, gold_text: str, rule: str = "reward") -> tuple[str, str | None]:
    """`_verify` in this process and without a time bound (for benchmarks)."""
    return _verify(rule, pred_text, gold_text)


def _init_worker() -> None:
    """Runs once in each worker: SIGTERM ends it at once (pebble stops a timed-out task with SIGTERM,
    and a Python-level handler would wait for the C call to return), memory limit, quiet loggers, warm
    parsers."""
    import logging
    import resource
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ValueError, OSError):
        pass
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    _verify_texts("\\boxed{\\frac{1}{2}}", "\\boxed{0.5}")  # loads the parsers


# --------------------------------------------------------------------------------------------------
# The worker pool, as seen from the calling process
# --------------------------------------------------------------------------------------------------
_PRELOAD = ["sympy", "latex2sympy2_extended", "math_verify", "openrs_nb.grading"]


class _Pool:
    """One pebble.ProcessPool per process, shared by all threads; replaced by a larger one on request."""

    def __init__(self) -> None:
        self.pool = None
        self.size = 0
        self.pid = os.getpid()
        self.lock = threading.Lock()

    def get(self, min_size: int):
        import pebble

        with self.lock:
            if self.pid != os.getpid():  # a forked child: the parent's workers are not ours
                self.pool, self.size, self.pid = None, 0, os.getpid()
            if self.pool is None or self.size < min_size or not self.pool.active:
                old = self.pool
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(_PRELOAD)  # only takes effect if the fork server is not running yet
                self.pool = pebble.ProcessPool(max_workers=min_size, initializer=_init_worker, context=ctx)
                self.size = min_size
                if old is not None:
                    old.close()  # running tasks finish; its workers then exit
            return self.pool

    def close(self) -> None:
        with self.lock:
            if self.pool is not None and self.pid == os.getpid():
                self.pool.stop()
                self.pool.join()
            self.pool, self.size = None, 0


_POOL = _Pool()
atexit.register(_POOL.close)


def default_num_workers() -> int:
    """Worker processes by default: the cores this process may use (affinity mask and cgroup quota,
    `openrs_nb.cpu.usable_cpus`), at most MAX_DEFAULT_WORKERS."""
    from openrs_nb.cpu import usable_cpus

    return max(1, min(usable_cpus(), MAX_DEFAULT_WORKERS))


def shutdown() -> None:
    """Stop the worker processes (they also stop when this process exits)."""
    _POOL.close()


# Results of finished gradings, keyed by (rule, texts math-verify sees); timeouts are not cached:
# under heavy load a normal pair may run late once. Whether each gold parses is cached apart.
_CACHE: OrderedDict[tuple, tuple[str, str | None]] = OrderedDict()
_CACHE_SIZE = 20_000
_CACHE_MAX_KEY_CHARS = 10_000  # pathological 100 kB answers are not worth keeping
_GOLDS: OrderedDict[tuple[str, str], tuple[bool, float]] = OrderedDict()
_GOLDS_SIZE = 4096
_CACHE_LOCK = threading.Lock()


def _lru_get(cache: OrderedDict, key):
    with _CACHE_LOCK:
        hit = cache.get(key)
        if hit is not None:
            cache.move_to_end(key)
        return hit


def _lru_put(cache: OrderedDict, key, value, size: int) -> None:
    with _CACHE_LOCK:
        cache[key] = value
        if len(cache) > size:
            cache.popitem(last=False)


def _cache_put(key, value) -> None:
    if value[0] not in ("timeout", "error") and sum(len(k) for k in key) <= _CACHE_MAX_KEY_CHARS:
        _lru_put(_CACHE, key, value, _CACHE_SIZE)


def clear_cache() -> None:
    """Forget cached verdicts (for benchmarks; whether a gold parses stays known, as workers keep their
    parsed golds)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _result(status: str, shown: str | None, answer: str | None) -> GradeResult:
    return GradeResult(correct=status == "correct", status=status, answer=answer if answer is not None else shown)


def _outcome(future) -> tuple[str, object]:
    """("ok", value), ("timeout", None) or ("error", None) of a finished pebble future."""
    try:
        return "ok", future.result()
    except concurrent.futures.TimeoutError:
        return "timeout", None
    except concurrent.futures.process.BrokenProcessPool as err:  # no worker could start at all
        raise RuntimeError(
            "the grading worker processes could not start. They start from multiprocessing's fork server, "
            "which imports the main script again: in a script, call grading functions only under "
            "`if __name__ == \"__main__\":` (see the errors printed above)") from err
    except Exception:  # the worker died (killed by the OS, out of memory) or the task raised
        return "error", None


def _run(jobs: list[tuple], timeout, num_workers: int, on_done=None) -> list[tuple[str, object]]:
    """Run (function, args) jobs in the pool, each within `timeout` seconds (one number, or one per job)
    once a worker has taken it, at most `num_workers` at a time; their outcomes in input order."""
    timeouts = timeout if isinstance(timeout, list) else [timeout] * len(jobs)
    pool = _POOL.get(max(num_workers, default_num_workers()))
    out: list = [None] * len(jobs)
    running: dict = {}
    todo = iter(enumerate(jobs))
    try:
        while True:
            while len(running) < num_workers:
                nxt = next(todo, None)
                if nxt is None:
                    break
                i, (fn, args) = nxt
                running[pool.schedule(fn, args=args, timeout=timeouts[i])] = i
            if not running:
                return out
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for f in done:
                out[running.pop(f)] = _outcome(f)
                if on_done is not None:
                    on_done()
    finally:
        for f in running:  # interrupted: don't leave work behind for the next caller
            f.cancel()


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------
def grade_detailed(prediction: str | None, gold, timeout: float = 1.0, rule: str = "reward") -> GradeResult:
    """Like `grade`, but says why: a GradeResult with status and the extracted answer."""
    return grade_batch([prediction], [gold], timeout=timeout, num_workers=1, progress=False, detailed=True,
                       rule=rule)[0]


def grade(prediction: str | None, gold, timeout: float = 1.0, rule: str = "reward") -> bool:
    """True iff the final answer of `prediction` equals `gold` (math-verify), decided within `timeout` s.

    `prediction` is a whole completion; `gold` a bare answer or a solution with `\\boxed{}`; `rule` one
    of RULES (see the module docstring). None or empty inputs, unparseable gold under the reward rule
    and timeouts all give False.
    """
    return grade_detailed(prediction, gold, timeout, rule).correct


def grade_batch(
    predictions: list,
    golds: list,
    *,
    timeout: float = 1.0,
    num_workers: int | None = None,
    progress: bool | None = None,
    detailed: bool = False,
    rule: str = "reward",
) -> list:
    """Grade many (prediction, gold) pairs in parallel worker processes, each within `timeout` seconds.

    Returns a list of bools (or GradeResult with `detailed=True`) in input order. `num_workers`
    defaults to `default_num_workers()`; `progress` None shows a bar for long batches; `rule` is one of
    RULES.
    """
    predictions, golds = list(predictions), list(golds)
    if len(predictions) != len(golds):
        raise ValueError(f"got {len(predictions)} predictions but {len(golds)} gold answers; they must pair up")
    if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(num_workers, int)
                                    or num_workers < 1):
        raise ValueError(f"num_workers={num_workers!r} must be a positive integer or None")
    if rule not in RULES:
        raise ValueError(f"rule={rule!r} is not a grading rule; choose one of {', '.join(RULES)}")
    for p in predictions:
        _check_args(p, timeout)
    workers = num_workers or default_num_workers()

    results: list[GradeResult | None] = [None] * len(predictions)
    todo: dict[tuple, list[tuple[int, str | None]]] = {}  # (rule, pred_text, gold_text) -> [(index, answer)]
    for i, (pred, gold) in enumerate(zip(predictions, golds)):
        gold_text = _gold_text(gold, rule)
        if gold_text is None:
            results[i] = GradeResult(False, "bad_gold", extract_answer(pred))
            continue
        if not pred or not pred.strip():
            results[i] = GradeResult(False, "no_answer", None)
            continue
        pred_text, answer = _prediction_text(pred, rule)
        key = (rule, pred_text, gold_text)
        hit = _lru_get(_CACHE, key)
        if hit is not None:
            results[i] = _result(*hit, answer)
        else:
            todo.setdefault(key, []).append((i, answer))
    if not todo:
        return results if detailed else [r.correct for r in results]

    # 1. each gold answer parsed once (a worker caches it) under GOLD_TIMEOUT; the parent keeps
    #    (parses?, seconds) so that a completion's budget is `timeout` plus its gold's parse time
    golds = {g: _lru_get(_GOLDS, g) for g in dict.fromkeys((rule, k[2]) for k in todo)}
    missing = [g for g, known in golds.items() if known is None]
    for g, (kind, value) in zip(missing, _run([(_gold_job, g) for g in missing], GOLD_TIMEOUT, workers)):
        golds[g] = value if kind == "ok" else kind  # "timeout" or "error": not cached
        if kind == "ok":
            _lru_put(_GOLDS, g, value, _GOLDS_SIZE)
    # 2. each completion against its gold, under `timeout` (+ the gold's parse time, in case this
    #    worker has not parsed it yet)
    keys, jobs, verdicts = list(todo), [], {}
    for key in keys:
        known = golds[(rule, key[2])]
        if isinstance(known, str):
            verdicts[key] = (known, None)
        elif not known[0]:
            verdicts[key] = ("bad_gold", None)
        else:
            jobs.append(key)
    show = progress if progress is not None else len(jobs) > PROGRESS_MIN_ITEMS
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="grading", unit="pair")
    try:
        outcomes = _run([(_verify, k) for k in jobs], [timeout + golds[(rule, k[2])][1] for k in jobs], workers,
                        on_done=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    for key, (kind, value) in zip(jobs, outcomes):
        verdicts[key] = value if kind == "ok" else (kind, None)
    for key in keys:
        _cache_put(key, verdicts[key])
        for i, answer in todo[key]:
            results[i] = _result(*verdicts[key], answer)
    return results if detailed else [r.correct for r in results]
