"""Colab: the hidden set-up cell (with Colab simulated), its requirements kept in step with
requirements.txt, and the gpu profile chosen where CUDA is (simulated)."""

import re
import sys
import types

import nbformat
import pytest

from conftest import ROOT
from ragft import colab
from ragft import run as runner

# in requirements.txt, not for Colab: its own torch and kernel stay; book-building and test tools
NOT_ON_COLAB = {"torch", "ipykernel", "nbformat", "nbclient", "papermill", "jupyter-book", "jupyter-cache", "pytest",
                "datasets"}  # datasets: only the online benchmark fallback, and the clone carries the benchmark files
COLAB_OWN = {"numpy", "pandas", "matplotlib", "scipy"}  # Colab's own, left unpinned (replacing them needs a restart)


def requirements(name: str) -> dict[str, str | None]:
    """package -> pinned version (None when unpinned) of a requirements file."""
    out = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pkg, _, version = line.partition("==")
            out[re.sub(r"[-_.]+", "-", pkg.lower())] = version or None
    return out


def test_colab_requirements_are_requirements_txt_without_torch_and_the_tools():
    full, colab_reqs = requirements("requirements.txt"), requirements("requirements-colab.txt")
    assert "torch" not in colab_reqs
    assert set(full) - set(colab_reqs) == NOT_ON_COLAB, "a package of requirements.txt is missing on Colab"
    assert set(colab_reqs) <= set(full), "a Colab package requirements.txt does not have"
    for pkg, version in colab_reqs.items():
        if pkg in COLAB_OWN:
            assert version is None, f"{pkg}: Colab's own; pinning it would need a runtime restart"
        else:
            assert version == full[pkg], f"{pkg}: {version} on Colab, {full[pkg]} in requirements.txt"


def run_cell(source: str, monkeypatch, on_colab: bool, cloned: bool = False) -> list[list[str]]:
    """Execute the set-up cell with Colab simulated or not; returns the commands it ran."""
    import os
    import subprocess

    commands = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: commands.append(cmd))
    monkeypatch.setattr(os, "chdir", lambda path: commands.append(["chdir", path]))
    monkeypatch.setattr(os.path, "isdir", lambda path: cloned if path == colab.HOME else os.path.exists(path))
    monkeypatch.setattr(sys, "path", list(sys.path))
    if on_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(source, "colab-setup", "exec"), {})
    return commands


def test_the_setup_cell_does_nothing_outside_colab(monkeypatch):
    assert run_cell(colab.setup_cell("https://github.com/x/ragft", "main"), monkeypatch, on_colab=False) == []


def test_the_setup_cell_on_colab_clones_runs_the_installer_and_moves_into_the_book(monkeypatch):
    commands = run_cell(colab.setup_cell("https://github.com/x/ragft", "main"), monkeypatch, on_colab=True)
    assert commands[0] == ["git", "clone", "--depth", "1", "--branch", "main", "https://github.com/x/ragft", colab.HOME]
    assert commands[1][1:] == ["-m", "ragft.colab", "install", colab.HOME]  # the clone's installer (below)
    assert commands[-1] == ["chdir", f"{colab.HOME}/chapters"]
    # a second run in the same runtime finds the clone; the installer finds its marker and installs nothing
    again = run_cell(colab.setup_cell("https://github.com/x/ragft", "main"), monkeypatch, on_colab=True, cloned=True)
    assert [c[1:] for c in again[:-1]] == [["-m", "ragft.colab", "install", colab.HOME]]


def test_the_setup_cell_without_a_repository_says_what_to_set_and_installs_nothing(monkeypatch, capsys):
    assert run_cell(colab.setup_cell("", "main"), monkeypatch, on_colab=True) == []
    said = capsys.readouterr().out
    assert "names no repository" in said and "repository.url in _config.yml" in said and said.count("\n") == 1
    # a clone the reader made by hand is used as it is
    assert run_cell(colab.setup_cell("", "main"), monkeypatch, on_colab=True, cloned=True)[-1] == ["chdir", f"{colab.HOME}/chapters"]


# A runtime of four packages: gradio holds huggingface-hub below 2; the book upgrades the hub
RUNTIME = {"torch": "2.11.0+cu128", "numpy": "2.1.3", "gradio": "6.24.0", "huggingface-hub": "1.27.0"}
REQUIRES = {"gradio": ["huggingface-hub<2.0,>=1.16.0", "numpy<3.0", "mcp>=1; extra == 'mcp'"],
            "torch": ["numpy"], "huggingface-hub": ["tqdm>=4.42"]}


def test_constraints_keep_the_runtimes_packages_and_hold_an_upgrade_to_what_they_require():
    lines = colab.constraints(RUNTIME, REQUIRES, {"huggingface-hub": "a reason"}).splitlines()
    # every package at its version but the upgrade, which gradio holds below 2 (its extra's requirement ignored)
    assert lines == ["gradio==6.24.0", "numpy==2.1.3", "torch==2.11.0+cu128", "huggingface-hub<2.0,>=1.16.0"]


def test_conflicts_name_the_runtime_package_an_install_would_break():
    assert colab.conflicts({"huggingface-hub": "1.31.0"}, RUNTIME, REQUIRES) == []
    assert colab.conflicts({"huggingface-hub": "2.4.0"}, RUNTIME, REQUIRES) == [
        "gradio 6.24.0 requires huggingface-hub<2.0,>=1.16.0, the install leaves huggingface-hub 2.4.0"]
    # a package the install replaces brings its own requirements: pip's to resolve, not counted here
    assert colab.conflicts({"gradio": "7.0.0", "huggingface-hub": "2.4.0"}, RUNTIME, REQUIRES) == []


def test_the_installer_constrains_pip_to_the_runtime_retries_and_leaves_a_marker(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(colab, "runtime_packages", lambda: (RUNTIME, REQUIRES))
    ran, codes = [], iter([1, 0, 0])  # the first try's first command fails, the second try succeeds

    def run(cmd):
        ran.append(cmd)
        return next(codes)

    assert colab.install(str(tmp_path), run=run) is True
    first, book = ran[-2:]
    assert first[-4:] == ["-r", f"{tmp_path}/requirements-colab.txt", "-c", str(tmp_path / "_build" / "colab-constraints.txt")]
    assert "huggingface-hub<2.0,>=1.16.0" in (tmp_path / "_build" / "colab-constraints.txt").read_text()
    assert "--no-deps" in book and f"{tmp_path}/requirements-nodeps.txt" in book
    assert len(ran) == 3 and "try 1 of 3" in capsys.readouterr().out
    assert colab.install(str(tmp_path), run=run) is False  # the marker: nothing runs again
    with pytest.raises(RuntimeError, match="did not install in 3 tries"):
        colab.install(str(tmp_path / "other"), run=lambda cmd: 1)


@pytest.mark.parametrize("chapter", runner.toc_chapters())
def test_every_chapter_starts_with_the_generated_setup_cell_hidden(chapter):
    cell = nbformat.read(ROOT / "chapters" / f"{chapter}.ipynb", as_version=4).cells[0]
    assert cell.cell_type == "code" and {colab.TAG, "remove-cell"} <= set(cell.metadata.get("tags", []))
    assert cell.source == colab.setup_cell(), "regenerate it: python -m ragft.strip chapters/*.ipynb"


@pytest.mark.parametrize("cuda,profile", [(True, "gpu"), (False, "cpu")])
def test_a_notebook_opened_without_a_profile_takes_gpu_where_cuda_is(monkeypatch, cuda, profile):
    import torch

    from ragft.config import from_notebook

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert from_notebook("07_verdict", {"profile": None}).profile == profile
    assert from_notebook("07_verdict", {"profile": "smoke"}).profile == "smoke"  # a profile given wins


def test_the_setup_cell_leaves_no_name_the_parameters_would_take_for_one():
    """The cell runs in the notebook's namespace, which the next cell reads as parameters."""
    from ragft.config import from_notebook

    namespace = {}
    exec(compile(colab.setup_cell("https://github.com/x/ragft", "main"), "colab-setup", "exec"), namespace)
    namespace.pop("__builtins__")
    assert from_notebook("07_verdict", {**namespace, "profile": "smoke"}).profile == "smoke"


@pytest.mark.index
@pytest.mark.start_early(fn=colab.resolve_on_colab)  # started at collection, beside the other tests (conftest.py)
def test_the_colab_install_resolves_on_colabs_python_without_replacing_torch(started):
    """The installer's own pip command under the constraints it writes, for Colab's published packages
    (data/colab, with its source and date) and their requirements, for Python 3.13, with pip's
    resolver and the package index: it resolves, torch stays Colab's own build, every package whose
    Colab version it changes is a named upgrade with its reason (ragft.colab.UPGRADES), and no Colab
    package it leaves in place loses what it requires. Needs the package index: without one it skips, except where
    RAGFT_COLAB_RESOLVE_REQUIRED=1 (CI), where it fails."""
    import os

    try:
        resolved = started.result()
    except RuntimeError as e:
        if "(from versions: none)" in str(e) and os.environ.get("RAGFT_COLAB_RESOLVE_REQUIRED") != "1":
            pytest.skip(f"no package index here: {e}")
        raise
    on_colab = colab.colab_versions()
    assert resolved["torch"] == on_colab["torch"] and "+cu" in on_colab["torch"]  # Colab's CUDA torch, untouched
    changed = {n for n, v in resolved.items() if n in on_colab and on_colab[n] != v}
    assert changed <= set(colab.UPGRADES), f"Colab packages replaced without a stated reason: {sorted(changed - set(colab.UPGRADES))}"
    pinned = requirements("requirements-colab.txt")
    assert all(resolved[p] == v for p, v in pinned.items() if v), "the resolve took another version than the pin"
    # and every Colab package the install leaves in place still has what it requires
    assert not colab.conflicts(resolved, on_colab, colab.colab_requires())
    assert resolved["huggingface-hub"].split(".")[0] == "1"  # gradio and diffusers need it below 2


def test_the_colab_constraints_read_colabs_own_list():
    versions = colab.colab_versions()
    assert versions["torch"].startswith("2.11.0") and versions["transformers"] == "5.15.0"
    assert not any(" " in n or "@" in n for n in versions)  # `name @ url` lines are left out


def test_a_profile_chosen_for_the_reader_says_when_it_goes_online(monkeypatch, capsys):
    import torch

    from ragft.config import from_notebook

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert from_notebook("07_verdict", {"profile": None}).online
    assert 'goes online to load hub models. To stay offline, set profile = "cpu"' in capsys.readouterr().out
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not from_notebook("07_verdict", {"profile": None}).online
    assert capsys.readouterr().out == ""
