"""House rules for the notebooks, and papermill's parameter handling. (nbval executes each notebook.)"""

import json
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
TRAIN_NB = NOTEBOOK_DIR / "04_train.ipynb"


def test_the_six_stages_are_there():
    stems = [p.stem for p in NOTEBOOKS]
    assert stems == ["01_data_curation", "02_reward_design", "03_grpo_loss", "04_train", "05_evaluate",
                     "06_results"], stems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_clean_and_teaches(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    assert cells[0]["cell_type"] == "markdown" and "What you'll learn" in "".join(cells[0]["source"])
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code), "commit notebooks without outputs"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "papermill needs exactly one cell tagged 'parameters'"
    params = "".join(tagged[0]["source"])
    assert "smoke = smoke_default()" in params and "run_dir = None" in params
    assert any("assert " in "".join(c["source"]) for c in code), "a notebook checks its claims with assert cells"
    assert any("savefig" in "".join(c["source"]) or "save_figure" in "".join(c["source"]) for c in code)


def _papermill(tmp_path, notebook, **params):
    import papermill

    return papermill.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"), parameters=params,
                                      cwd=str(notebook.parent), progress_bar=False, kernel_name="python3")



@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_refuses_a_misspelled_parameter_first(tmp_path, path):
    """papermill only warns about unknown -p names; every notebook must stop, naming the bad one, in the
    cell right after the parameters (so before any heavy work)."""
    from papermill.exceptions import PapermillExecutionError

    with pytest.raises(PapermillExecutionError) as err:
        _papermill(tmp_path, path, betaz=0.1, run_dir=str(tmp_path))
    assert "unknown parameter(s) ['betaz']" in str(err.value)
    cells = [c for c in json.loads((tmp_path / "out.ipynb").read_text())["cells"]
             if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])]  # papermill's own markers
    injected = next(i for i, c in enumerate(cells) if "injected-parameters" in c.get("metadata", {}).get("tags", []))
    failed = [i for i, c in enumerate(cells) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert failed == [injected + 1], (injected, failed)

@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_reads_every_parameter(path):
    """papermill skips (with a warning) a parameter line with a second '=' in its comment, then calls the
    -p value 'unknown'; `papermill --help-notebook` would not list it."""
    import ast

    import papermill

    cell = next(c for c in json.loads(path.read_text())["cells"]
                if "parameters" in c.get("metadata", {}).get("tags", []))
    assigned = {t.id for node in ast.parse("".join(cell["source"])).body if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)}
    assert set(papermill.inspect_notebook(str(path))) == assigned


def test_04_refuses_an_unknown_parameter_before_loading_anything(tmp_path):
    from papermill.exceptions import PapermillExecutionError

    nb = TRAIN_NB
    with pytest.raises(PapermillExecutionError) as err:
        _papermill(tmp_path, nb, learnin_rate=5e-6, run_dir=str(tmp_path))
    assert "unknown parameter(s) ['learnin_rate']" in str(err.value)
    with pytest.raises(PapermillExecutionError) as err:
        _papermill(tmp_path, nb, exp=4, run_dir=str(tmp_path))
    assert "exp=4 is not valid; choose one of 1, 2, 3" in str(err.value)


def test_04_dry_run_of_the_paper_profile_writes_the_launch_files(tmp_path):
    _papermill(tmp_path, TRAIN_NB, profile="paper", dry_run=True, run_dir=str(tmp_path), exp=2,
               learning_rate=2e-6)
    run = json.loads((tmp_path / "train" / "run.json").read_text())
    assert run["exp"] == 2 and run["learning_rate"] == 2e-6 and run["model_name_or_path"].startswith("deepseek-ai/")
    script = (tmp_path / "train" / "launch.sh").read_text()
    assert "trl vllm-serve" in script and "accelerate launch" in script


def test_make_demo_runs_every_notebook_in_order():
    """The README's main command: its shell loop must reach all six notebooks (with `set -e`, a failing test
    in an assignment once stopped it silently at the first one)."""
    import shutil
    import subprocess

    run_dir = "runs/_make_demo_dry"
    root = NOTEBOOKS[0].parent.parent
    try:
        out = subprocess.run(["make", "--no-print-directory", "demo", "PY=echo", f"RUN_DIR={run_dir}"], cwd=root,
                             capture_output=True, text=True, check=True).stdout
    finally:
        shutil.rmtree(root / run_dir, ignore_errors=True)
    calls = [line for line in out.splitlines() if line.startswith("-m papermill")]
    assert [c.split()[5] for c in calls] == [f"notebooks/{p.name}" for p in NOTEBOOKS]
    assert [c.endswith("-p exp 2") for c in calls] == [p.name == "04_train.ipynb" for p in NOTEBOOKS]
