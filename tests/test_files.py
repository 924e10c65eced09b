"""openrs_nb.files: atomic writes leave a whole file or none; the JSONL reader survives a crash mid-line."""

import json
import os
import stat

import pytest

from openrs_nb import files


def test_atomic_write_replaces_whole_and_reads_like_a_normal_file(tmp_path):
    path = tmp_path / "run.json"
    files.write_json_atomic(path, {"a": 1})
    files.write_json_atomic(path, {"a": 2, "b": [1, 2]})
    assert files.read_json(path) == {"a": 2, "b": [1, 2]}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temporary file left behind


def test_read_json_names_a_damaged_file(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text('{"a": 1')
    with pytest.raises(ValueError, match="manifest.json is not valid JSON"):
        files.read_json(path)


def test_jsonl_reader_skips_a_cut_last_line_and_names_a_corrupt_middle_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    files.append_jsonl(path, [{"step": 1}, {"step": 2}])
    with open(path, "a") as f:
        f.write('{"step": 3, "loss"')  # a crash mid-write
    with pytest.warns(RuntimeWarning, match="line 3"):
        assert [r["step"] for r in files.read_jsonl(path)] == [1, 2]
    path.write_text(json.dumps({"step": 1}) + "\n{oops\n" + json.dumps({"step": 3}) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not valid JSON"):
        files.read_jsonl(path)
