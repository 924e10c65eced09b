"""Is a completion's final answer equal to the gold answer? One grader for rewards, filters and evaluation.

`grade(prediction, gold)` takes the last `\\boxed{…}` of a whole completion (math-verify's anchored
fallbacks such as "the final answer is $…$" when there is none) and compares it with `gold` — a bare
answer ("204", "27.0", "\\frac{1}{2}") or a full solution containing `\\boxed{}` — using math-verify.

Hard time bound. math-verify's own timeout uses SIGALRM: it works only in the main thread and cannot
interrupt long C-level work (a sympy power such as `10^{10^{10^{10}}}` builds a giant integer inside
one C call). So parsing and verification run in helper processes with math-verify's signal timeouts
off; the caller waits at most `timeout` seconds for the verdict on the completion, then kills the
helper (SIGKILL) and returns False. This works the same from any thread or process. The helpers are
forked from a warm template process (started once with `subprocess`, so a trainer's threads and CUDA
state are never copied), which makes replacing a killed helper take milliseconds. The gold answer is
parsed first under its own budget (GOLD_TIMEOUT; it comes from the data set, not the model) and cached.

Safety. Nothing in a completion is ever evaluated as Python: math-verify turns LaTeX into sympy objects
with an ANTLR parser, and its plain-expression path only accepts digits and arithmetic operators.
The helper processes also get a memory limit, so a blow-up ends in MemoryError, not in swapping.
"""

from __future__ import annotations

import atexit
import os
import re
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

# Status of a grading: "correct", "wrong", "no_answer" (nothing to compare in the prediction),
# "bad_gold" (the gold answer does not parse), "timeout", "error" (the helper crashed).
STATUSES = ("correct", "wrong", "no_answer", "bad_gold", "timeout", "error")

# Without a \boxed{} answer, only this many trailing characters are searched for math-verify's
# anchored fallbacks ("final answer is …", "Answer: …"): the answer sits at the end of a completion.
FALLBACK_TAIL_CHARS = 2000
# A gold without \\boxed{} longer than this is a solution whose answer is not marked, not a bare answer
# (the longest bare answer in the five benchmarks and DeepScaleR has 210 characters): "bad_gold".
MAX_BARE_GOLD_CHARS = 500
# Most helper processes a batch uses by default (each holds ~100 MB once sympy is warm).
MAX_DEFAULT_WORKERS = 8
# Memory limit of a helper process (address space); a blow-up raises MemoryError there.
WORKER_MEMORY_BYTES = 4 * 1024**3
# Seconds a helper may spend parsing a gold answer (it comes from the data set, not from the model;
# `timeout` starts once it is parsed, and parsed golds are cached).
GOLD_TIMEOUT = 10.0
# Seconds the template process (which the helpers are forked from) may take to import math-verify.
WORKER_START_TIMEOUT = 120.0
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


def _prediction_text(prediction: str) -> tuple[str, str | None]:
    """(text handed to math-verify, extracted answer or None)."""
    answer = extract_answer(prediction)
    if answer is not None:
        return "\\boxed{" + answer + "}", answer
    return prediction[-FALLBACK_TAIL_CHARS:], None


def _gold_text(gold) -> str | None:
    """The gold answer as a `\\boxed{…}` string for math-verify, or None when there is none."""
    if gold is None:
        return None
    if isinstance(gold, bool) or not isinstance(gold, (str, int, float)):
        raise TypeError(f"gold must be a str, int or float (or None), got {type(gold).__name__}")
    gold = str(gold).strip()
    if not gold:
        return None
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
# What runs inside a helper process
# --------------------------------------------------------------------------------------------------
_CONFIGS = None


def _math_verify_configs():
    global _CONFIGS
    if _CONFIGS is None:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig

        # Gold is always handed over as \boxed{…}; predictions too when they have a box. Without a box,
        # only anchored phrases ("final answer is", "answer:") count: a stray number is not an answer.
        gold = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
        pred = [
            LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False),
            ExprExtractionConfig(try_extract_without_anchor=False),
        ]
        _CONFIGS = (gold, pred)
    return _CONFIGS


_GOLD_CACHE: OrderedDict[str, list] = OrderedDict()  # inside a helper: gold text -> parsed gold
GOLD_PARSED = "gold parsed"  # a helper's message between parsing the gold and the completion


def _parse_gold(gold_text: str) -> list:
    from math_verify import parse

    parsed = _GOLD_CACHE.get(gold_text)
    if parsed is None:
        parsed = parse(gold_text, _math_verify_configs()[0], parsing_timeout=None)
        _GOLD_CACHE[gold_text] = parsed
        if len(_GOLD_CACHE) > 4096:
            _GOLD_CACHE.popitem(last=False)
    return parsed


def _verify_texts(pred_text: str, gold_text: str, on_gold_parsed=None) -> tuple[str, str | None]:
    """(status, extracted prediction string) by math-verify, with its signal timeouts off."""
    from math_verify import parse, verify

    gold_parsed = _parse_gold(gold_text)
    if not gold_parsed:
        return "bad_gold", None
    if on_gold_parsed is not None:
        on_gold_parsed()
    pred_parsed = parse(pred_text, _math_verify_configs()[1], parsing_timeout=None)
    if not pred_parsed:
        return "no_answer", None
    shown = next((p for p in reversed(pred_parsed) if isinstance(p, str)), None)
    ok = verify(gold_parsed, pred_parsed, timeout_seconds=None)
    return ("correct" if ok else "wrong"), shown


def _serve(conn: Connection) -> None:
    """Loop of a helper process: receive (pred_text, gold_text); send GOLD_PARSED once the gold is
    parsed (the caller's `timeout` covers only the work on the completion), then (status, shown)."""
    while True:
        try:
            pred_text, gold_text = conn.recv()
        except (EOFError, OSError):
            return
        try:
            result = _verify_texts(pred_text, gold_text, on_gold_parsed=lambda: conn.send(GOLD_PARSED))
        except MemoryError:
            result = ("error", None)
        except Exception:  # math-verify catches most errors itself; anything left means "not correct"
            result = ("error", None)
        conn.send(result)


def _zygote_main(fd: int) -> None:
    """The template process: warm math-verify once, then fork a helper per request.

    Commands on `fd`: ("fork",) followed by a socket handle -> replies the helper's pid;
    ("kill", pid) -> SIGKILL and reap that helper. Helpers stay unreaped until killed, so their pid
    can never be reused by an unrelated process before we kill it. On EOF (our parent exited) the
    whole process group — this template and all helpers — is killed.
    """
    import logging
    import resource
    import signal
    from multiprocessing import reduction

    try:
        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ValueError, OSError):
        pass
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    _verify_texts("\\boxed{\\frac{1}{2}}", "\\boxed{0.5}")  # import and warm the parsers once
    control = Connection(fd)
    control.send("ready")
    children: set[int] = set()  # only these pids are ever killed: our own, unreaped helpers
    while True:
        try:
            command = control.recv()
            if command[0] == "fork":
                handle = reduction.recv_handle(control)
                pid = os.fork()
                if pid == 0:
                    control.close()
                    try:
                        _serve(Connection(handle))
                    finally:
                        os._exit(0)
                os.close(handle)
                children.add(pid)
                control.send(pid)
            elif command[0] == "kill" and command[1] in children:
                children.discard(command[1])
                try:
                    os.kill(command[1], signal.SIGKILL)
                    os.waitpid(command[1], 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
        except (EOFError, OSError):
            os.killpg(0, signal.SIGKILL)


# --------------------------------------------------------------------------------------------------
# Helper processes, as seen from the calling process
# --------------------------------------------------------------------------------------------------
class _Zygote:
    """Starts the template process (a clean interpreter via subprocess: no trainer threads or CUDA
    state are copied) and asks it for helpers, which then start warm in a few milliseconds."""

    def __init__(self) -> None:
        self.proc = None
        self.control = None
        self.lock = threading.Lock()
        self.pid = None

    def _start(self) -> None:
        import socket

        ours, theirs = socket.socketpair()
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", f"from openrs_nb.grading import _zygote_main; _zygote_main({theirs.fileno()})"],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group, so it can take all helpers down with it
        )
        theirs.close()
        self.control = Connection(ours.detach())
        self.pid = os.getpid()
        if not self.control.poll(WORKER_START_TIMEOUT):
            self._stop()
            raise RuntimeError(f"grading template process did not start within {WORKER_START_TIMEOUT:.0f} s")
        try:
            message = self.control.recv()
        except (EOFError, OSError):
            message = None
        if message != "ready":
            self._stop()
            raise RuntimeError("grading template process failed to start (see its error above)")

    def _stop(self) -> None:
        if self.control is not None:
            self.control.close()  # on EOF it kills its process group
            self.control = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def fork(self) -> tuple[int, Connection]:
        """A new warm helper: (pid, connection to it)."""
        import socket
        from multiprocessing import reduction

        with self.lock:
            for attempt in (1, 2):
                if self.control is None or self.pid != os.getpid() or self.proc.poll() is not None:
                    if self.pid == os.getpid():
                        self._stop()
                    self.control = self.proc = None
                    self._start()
                ours, theirs = socket.socketpair()
                try:
                    self.control.send(("fork",))
                    reduction.send_handle(self.control, theirs.fileno(), self.proc.pid)
                    pid = self.control.recv()
                    return pid, Connection(ours.detach())
                except (EOFError, OSError):
                    ours.close()
                    self._stop()
                    if attempt == 2:
                        raise
                finally:
                    theirs.close()
        raise AssertionError("unreachable")

    def kill(self, pid: int) -> None:
        with self.lock:
            if self.control is not None and self.pid == os.getpid():
                try:
                    self.control.send(("kill", pid))
                except (EOFError, OSError):
                    pass

    def close(self) -> None:
        with self.lock:
            if self.pid == os.getpid():
                self._stop()


_ZYGOTE = _Zygote()


class _Worker:
    """One helper process; killed and replaced when it runs past a deadline."""

    def __init__(self) -> None:
        self.pid, self.conn = _ZYGOTE.fork()
        self.task = None  # (key, deadline) while busy in a batch

    def send(self, pred_text: str, gold_text: str) -> None:
        try:
            self.conn.send((pred_text, gold_text))
        except (EOFError, OSError):  # it died while idle: replace it and try once more
            self.restart()
            self.conn.send((pred_text, gold_text))

    def receive(self):
        """GOLD_PARSED or a final (status, shown); ("error", None) if the helper died."""
        try:
            return self.conn.recv()
        except (EOFError, OSError):  # the helper died (e.g. killed by the OS): replace it
            self.restart()
            return ("error", None)

    def stop(self) -> None:
        self.conn.close()
        _ZYGOTE.kill(self.pid)

    def restart(self) -> None:
        self.stop()
        self.pid, self.conn = _ZYGOTE.fork()

    def run(self, pred_text: str, gold_text: str, timeout: float) -> tuple[str, str | None]:
        """Grade one pair; past a deadline kill the helper and report 'timeout'."""
        self.send(pred_text, gold_text)
        budget = max(GOLD_TIMEOUT, timeout)
        while self.conn.poll(budget):
            msg = self.receive()
            if msg != GOLD_PARSED:
                return msg
            budget = timeout  # the gold is parsed: from now on only `timeout` for the completion
        self.restart()
        return ("timeout", None)


class _Pool:
    """Helper processes shared by all threads of this process; grown on demand, reused."""

    def __init__(self) -> None:
        self.free: list[_Worker] = []
        self.count = 0
        self.cond = threading.Condition()
        self.pid = os.getpid()

    def acquire(self, n: int, limit: int) -> list[_Worker]:
        """At least one and at most `n` workers (starting new ones while fewer than `limit` exist)."""
        with self.cond:
            if self.pid != os.getpid():  # we are a forked child: the parent's helpers are not ours
                self.free, self.count, self.pid = [], 0, os.getpid()
            got: list[_Worker] = []
            while True:
                while len(got) < n and self.free:
                    got.append(self.free.pop())
                to_start = min(n - len(got), max(0, limit - self.count))
                self.count += to_start
                if got or to_start:
                    break
                self.cond.wait()
        try:
            for _ in range(to_start):
                got.append(_Worker())
                to_start -= 1
        except Exception:
            with self.cond:
                self.count -= to_start
            self.release(got)
            raise
        return got

    def release(self, workers: list[_Worker]) -> None:
        with self.cond:
            if self.pid == os.getpid():
                self.free.extend(workers)
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            workers, self.free = self.free, []
            self.count -= len(workers)
        for w in workers:
            w.stop()


_POOL = _Pool()


def _shutdown_all() -> None:
    _POOL.close()
    _ZYGOTE.close()


atexit.register(_shutdown_all)


def default_num_workers() -> int:
    """Helper processes a batch uses by default: all cores, at most MAX_DEFAULT_WORKERS."""
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS))


def shutdown() -> None:
    """Stop the helper processes (they also stop when this process exits)."""
    _shutdown_all()


# Results of finished gradings, keyed by the texts math-verify sees (timeouts are not cached:
# under heavy load a normal pair may run late once).
_CACHE: OrderedDict[tuple[str, str], tuple[str, str | None]] = OrderedDict()
_CACHE_SIZE = 20_000
_CACHE_MAX_KEY_CHARS = 10_000  # pathological 100 kB answers are not worth keeping
_CACHE_LOCK = threading.Lock()


def _cache_get(key):
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
        return hit


def _cache_put(key, value) -> None:
    if value[0] in ("timeout", "error") or len(key[0]) + len(key[1]) > _CACHE_MAX_KEY_CHARS:
        return
    with _CACHE_LOCK:
        _CACHE[key] = value
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)


def clear_cache() -> None:
    """Forget cached verdicts (for benchmarks)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _result(status: str, shown: str | None, answer: str | None) -> GradeResult:
    return GradeResult(correct=status == "correct", status=status, answer=answer if answer is not None else shown)


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------
def grade_detailed(prediction: str | None, gold, timeout: float = 1.0) -> GradeResult:
    """Like `grade`, but says why: a GradeResult with status and the extracted answer."""
    _check_args(prediction, timeout)
    gold_text = _gold_text(gold)
    if gold_text is None:
        return GradeResult(False, "bad_gold", extract_answer(prediction))
    if not prediction or not prediction.strip():
        return GradeResult(False, "no_answer", None)
    pred_text, answer = _prediction_text(prediction)
    key = (pred_text, gold_text)
    hit = _cache_get(key)
    if hit is None:
        (worker,) = _POOL.acquire(1, default_num_workers())
        try:
            hit = worker.run(pred_text, gold_text, timeout)
        finally:
            _POOL.release([worker])
        _cache_put(key, hit)
    return _result(*hit, answer)


def grade(prediction: str | None, gold, timeout: float = 1.0) -> bool:
    """True iff the final answer of `prediction` equals `gold` (math-verify), decided within `timeout` s.

    `prediction` is a whole completion (answer = last `\\boxed{}`); `gold` a bare answer or a solution
    with `\\boxed{}`. None or empty inputs, unparseable gold and timeouts all give False.
    """
    return grade_detailed(prediction, gold, timeout).correct


def grade_batch(
    predictions: list,
    golds: list,
    *,
    timeout: float = 1.0,
    num_workers: int | None = None,
    progress: bool | None = None,
    detailed: bool = False,
) -> list:
    """Grade many (prediction, gold) pairs in parallel helper processes, each within `timeout` seconds.

    Returns a list of bools (or GradeResult with `detailed=True`) in input order. `num_workers`
    defaults to all cores (at most MAX_DEFAULT_WORKERS); `progress` None shows a bar for long batches.
    """
    predictions, golds = list(predictions), list(golds)
    if len(predictions) != len(golds):
        raise ValueError(f"got {len(predictions)} predictions but {len(golds)} gold answers; they must pair up")
    if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1):
        raise ValueError(f"num_workers={num_workers!r} must be a positive integer or None")
    for p in predictions:
        _check_args(p, timeout)

    results: list[GradeResult | None] = [None] * len(predictions)
    todo: dict[tuple[str, str], list[tuple[int, str | None]]] = {}  # key -> [(index, answer)]
    for i, (pred, gold) in enumerate(zip(predictions, golds)):
        gold_text = _gold_text(gold)
        if gold_text is None:
            results[i] = GradeResult(False, "bad_gold", extract_answer(pred))
            continue
        if not pred or not pred.strip():
            results[i] = GradeResult(False, "no_answer", None)
            continue
        pred_text, answer = _prediction_text(pred)
        key = (pred_text, gold_text)
        hit = _cache_get(key)
        if hit is not None:
            results[i] = _result(*hit, answer)
        else:
            todo.setdefault(key, []).append((i, answer))

    if todo:
        _run_batch(todo, results, timeout, num_workers or default_num_workers(), progress)
    return results if detailed else [r.correct for r in results]


def _run_batch(todo, results, timeout: float, num_workers: int, progress: bool | None) -> None:
    keys = list(todo)
    show = progress if progress is not None else len(keys) > PROGRESS_MIN_ITEMS
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(keys), desc="grading", unit="pair")
    workers = _POOL.acquire(min(num_workers, len(keys)), max(num_workers, default_num_workers()))
    try:
        next_key = 0

        def finish(worker: _Worker, value) -> None:
            key = worker.task[0]
            worker.task = None
            _cache_put(key, value)
            for i, answer in todo[key]:
                results[i] = _result(*value, answer)
            if bar is not None:
                bar.update(1)

        while True:
            for w in workers:
                if w.task is None and next_key < len(keys):
                    key = keys[next_key]
                    next_key += 1
                    w.send(*key)
                    w.task = (key, time.monotonic() + max(GOLD_TIMEOUT, timeout))
            busy = [w for w in workers if w.task is not None]
            if not busy:
                break
            nearest = min(w.task[1] for w in busy)
            ready = wait([w.conn for w in busy], timeout=max(0.0, nearest - time.monotonic()))
            for w in busy:
                if w.conn in ready:
                    msg = w.receive()
                    if msg == GOLD_PARSED:  # from now on only `timeout` for the completion
                        w.task = (w.task[0], time.monotonic() + timeout)
                    else:
                        finish(w, msg)
            now = time.monotonic()
            for w in busy:
                if w.task is not None and now >= w.task[1]:
                    w.restart()  # kill it mid-computation; the fork of a warm template takes ms
                    finish(w, ("timeout", None))
    finally:
        for w in workers:
            if w.task is not None:  # interrupted mid-task: its reply would confuse the next caller
                w.restart()
                w.task = None
        _POOL.release(workers)
        if bar is not None:
            bar.close()
