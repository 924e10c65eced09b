"""Files a run leaves behind, read and written so that a crash never costs what was already saved.

- JSONL logs (`metrics.jsonl`, `completions.jsonl`, evaluation records) are appended line by line and
  fsync'ed; the one reader, `iter_jsonl`, skips a half-written last line and names file and line of
  real corruption.
- JSON documents (`run.json`, `manifest.json`, `summary.json`) are written whole or not at all:
  a temporary file in the same folder, then an atomic rename.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield the JSON objects of a JSONL file, one per non-empty line.

    A last line that does not parse (a crash mid-write) is skipped with a warning; a bad line with
    whole lines after it is corruption, not a crash, and raises ValueError naming file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    bad: tuple[int, str] | None = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if bad is not None:
                raise ValueError(f"{path}: line {bad[0]} is not valid JSON ({bad[1]}) and is not the last line: "
                                 "the file is corrupt, not just cut short by a crash")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                bad = (lineno, e.msg)
                continue
            if not isinstance(row, dict):
                raise ValueError(f"{path}: line {lineno} holds a {type(row).__name__}, expected a JSON object")
            yield row
    if bad is not None:
        warnings.warn(f"{path}: skipped line {bad[0]}, an incomplete last line (a run stopped mid-write?)",
                      RuntimeWarning, stacklevel=2)


def read_jsonl(path: str | Path) -> list[dict]:
    """All rows of a JSONL file (see `iter_jsonl` for how damage is handled)."""
    return list(iter_jsonl(path))


def repair_jsonl_tail(path: str | Path) -> None:
    """Make a JSONL file safe to append to after a crash: cut off a half-written last line, or end a
    complete last line that lost only its newline. Whole lines are never touched."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return  # the usual case: one byte read, the file is left alone
        f.seek(0)
        data = f.read()
        start = data.rfind(b"\n") + 1
        try:
            complete = isinstance(json.loads(data[start:]), dict)
        except ValueError:
            complete = False
        if complete:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        else:
            f.truncate(start)


def append_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Append rows, one JSON object per line, and fsync: what was logged survives a crash."""
    with open(path, "a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` whole or not at all (temporary file in the same folder + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; the result should read like any other file written here
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, obj: Any, indent: int = 1) -> Path:
    """`write_text_atomic` for a JSON document."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=str))


def read_json(path: str | Path) -> Any:
    """A JSON document; a damaged one raises ValueError naming the file (and what to do)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}): it was damaged; "
                         "delete it to rebuild it, or restore it from a copy") from None
