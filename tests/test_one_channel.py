"""One channel for results (issue 65): a chapter's steps return what they measured (ragft.results.Measured
in their typed results) and the chapter writes into its run only through its one recording step,
`ChapterRun.save`. Read with `ast` from the chapter modules and the notebooks' code cells, so a write
that comes back (run.metric, run.tables[...] = ..., run.comparisons = ...) fails here, loading nothing."""

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from ragft.results import ChapterRun

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted((ROOT / "src" / "ragft" / "experiments").glob("*.py"))
NOTEBOOKS = sorted((ROOT / "chapters").glob("*.ipynb"))
# what a chapter may touch on its run: the stage timer, the run folder and what it was started with, and save
ALLOWED = {"stage", "save", "folder", "chapter", "params", "profile", "started", "stages"}


def run_uses(tree: ast.AST) -> list[tuple[str, int]]:
    """(attribute, line) for every attribute read or written on a run: a name `run`, or `<x>.run`."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id == "run") or (isinstance(owner, ast.Attribute) and owner.attr == "run"):
                out.append((node.attr, node.lineno))
    return out


def sources() -> dict[str, ast.AST]:
    out = {p.name: ast.parse(p.read_text()) for p in MODULES}
    for nb in NOTEBOOKS:
        cells = json.loads(nb.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        # notebook-only syntax (!pip, %magic) is not Python: those lines are blanked
        code = "\n".join("" if line.lstrip().startswith(("!", "%")) else line for line in code.splitlines())
        out[nb.name] = ast.parse(code)
    return out


def test_chapters_write_into_their_run_only_through_save():
    found = sources()
    assert len(found) >= len(MODULES) + 9
    for name, tree in found.items():
        other = sorted({(attr, line) for attr, line in run_uses(tree) if attr not in ALLOWED})
        assert not other, f"{name} touches its run outside the recording step: {other}"


@pytest.mark.parametrize("module", [p for p in MODULES if p.stem.startswith("ch")], ids=lambda p: p.stem)
def test_each_chapter_records_once(module):
    """One `save` a chapter module: the step that records what its sections returned."""
    saves = [line for attr, line in run_uses(ast.parse(module.read_text())) if attr == "save"]
    assert len(saves) == 1, f"{module.name}: run.save at lines {saves}"


def test_the_run_offers_no_other_way_in():
    """ChapterRun keeps no results of its own: metrics, outcomes, tables and comparisons reach the
    results file only as save's arguments."""
    has = {f.name for f in dataclasses.fields(ChapterRun)} | set(dir(ChapterRun))
    assert {"stage", "save", "folder", "stages"} <= has
    assert not has & {"metric", "record", "compare", "compare_chapter", "metrics", "metric_rules", "outcomes",
                      "outcome_tokens", "tables", "comparisons", "artifacts", "sections"}
