"""openrs_nb.files: atomic writes leave a whole file or none (the JSONL reader is tested through plots.read_metrics)."""

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

