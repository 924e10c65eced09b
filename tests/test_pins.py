"""One list of pins (pyproject.toml); every environment file says the same, and the venv runs it."""

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BASE = PROJECT["project"]["dependencies"]
EXTRAS = PROJECT["project"]["optional-dependencies"]
EMBEDDED = PROJECT["tool"]["openrs_nb"]["embedded-model"]


def pins(lines):
    """{canonical name: (version, extras)} from requirement strings; options and comments skipped."""
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # exactly one specifier ...
        assert spec.operator == "==", f"{line!r} is not an exact pin"  # ... and it is ==
        name = canonicalize_name(req.name)
        assert name not in out, f"{req.name} is pinned twice"
        out[name] = (spec.version, frozenset(req.extras))
    return out


def expected(*groups):
    lines = list(BASE) if "base" in groups else []
    for g in groups:
        if g != "base":
            lines += EXTRAS[g]
    return pins(lines)


def test_the_groups_are_there_and_every_requirement_is_an_exact_pin():
    assert set(EXTRAS) == {"gpu", "lab", "dev"}
    assert {"vllm", "deepspeed"} <= set(expected("gpu")) and "jupyterlab" in expected("lab")
    assert {"pytest", "nbval", "ruff", "nbstripout", "pre-commit"} <= set(expected("dev"))
    everything = BASE + [r for g in EXTRAS.values() for r in g]
    assert len(pins(everything)) == len(everything), "a package appears in two groups"


def test_a_loose_pin_is_refused():
    with pytest.raises(AssertionError, match="not an exact pin"):
        pins(["torch>=2.5"])
    with pytest.raises(AssertionError, match="pinned twice"):
        pins(["torch==2.13.0", "Torch==2.13.0"])


def test_the_generated_files_are_up_to_date():
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "pins.py"), "--check"], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("path, groups", [
    ("requirements-cpu.txt", ("base", "lab", "dev")),
    ("binder/requirements.txt", ("base", "lab")),
])
def test_requirements_files_pin_the_same_versions(path, groups):
    assert pins((ROOT / path).read_text().splitlines()) == expected(*groups)


def test_environment_yml_pins_the_same_versions_and_python():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"], "the pytorch conda channel is retired: conda-forge + pip"
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    (pip_list,) = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    assert f"python={PROJECT['tool']['openrs_nb']['python']}" in conda
    assert "-e ." in pip_list
    assert pins(pip_list) == expected("base", "gpu", "lab", "dev")


def test_pins_written_out_elsewhere_agree():
    torch = expected("base")["torch"][0]
    makefile = (ROOT / "Makefile").read_text()
    assert set(re.findall(r"torch==([\w.+]+)", makefile)) == {torch}
    name, version = EMBEDDED.split("==")
    mentions = {}
    for rel in ["Makefile", "README.md", "binder/postBuild", "environment.yml", "openrs_nb/models.py"]:
        mentions[rel] = set(re.findall(re.escape(name) + r"==([\w.]+)", (ROOT / rel).read_text()))
    assert mentions["binder/postBuild"] and mentions["Makefile"], mentions
    assert all(found <= {version} for found in mentions.values()), mentions


def test_this_venv_runs_the_pinned_versions():
    wrong = {}
    for name, (version, _) in expected("base", "lab", "dev").items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed is None or Version(installed).public != Version(version).public:  # 2.13.0+cpu is 2.13.0
            wrong[name] = (installed, version)
    assert not wrong, f"installed vs pinned {wrong}: rebuild the venv (rm .venv/.installed; make test)"


# Imports the package makes of modules whose distribution is not named like the module.
PROVIDED_BY = {"latex2sympy2_extended": "math-verify", "yaml": "pyyaml", "huggingface_hub": "huggingface-hub"}


def test_every_third_party_import_of_the_package_is_pinned():
    modules = set()
    for path in (ROOT / "openrs_nb").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - {"openrs_nb"}
    pinned = set(expected("base", "gpu"))
    dists = importlib.metadata.packages_distributions()
    missing = {}
    for module in sorted(third_party):
        candidates = {canonicalize_name(PROVIDED_BY.get(module, module))}
        candidates |= {canonicalize_name(d) for d in dists.get(module, [])}
        if not candidates & pinned:
            missing[module] = sorted(candidates)
    assert not missing, f"imported by openrs_nb but pinned nowhere in pyproject.toml: {missing}"


def test_pre_commit_hooks_install_the_dev_pins():
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hooks = {h["id"]: h for repo in config["repos"] for h in repo["hooks"]}
    assert set(hooks) == {"ruff", "nbstripout"}
    dev = expected("dev")
    for hook in hooks.values():
        assert pins(hook["additional_dependencies"]).items() <= dev.items(), hook
    makefile = (ROOT / "Makefile").read_text()
    strip_args = hooks["nbstripout"]["entry"].removeprefix("nbstripout ")
    assert f"-m nbstripout {strip_args}" in makefile, "make strip-notebooks and the hook strip the same keys"
