"""One channel for results (issue 65): a chapter's steps return what they measured (ragft.results.Measured
in their typed results); the set-up objects hold no run, only the run folder and a clock; and a
chapter writes its results file in one recording step, `ChapterRun(...).save(...)`. Read with `ast`
from the chapter modules and the notebooks' code cells, so a write that comes back (run.metric,
run.tables[...] = ..., ch.run) fails here, loading nothing."""

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from ragft.results import ChapterRun, Clock

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted((ROOT / "src" / "ragft" / "experiments").glob("*.py"))
CHAPTERS = [p for p in MODULES if p.stem.startswith("ch")]
NOTEBOOKS = sorted((ROOT / "chapters").glob("*.ipynb"))


def sources() -> dict[str, ast.AST]:
    out = {p.name: ast.parse(p.read_text()) for p in MODULES}
    for nb in NOTEBOOKS:
        cells = json.loads(nb.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        # notebook-only syntax (!pip, %magic) is not Python: those lines are blanked
        code = "\n".join("" if line.lstrip().startswith(("!", "%")) else line for line in code.splitlines())
        out[nb.name] = ast.parse(code)
    return out


def run_uses(tree: ast.AST) -> list[tuple[str, int]]:
    """(attribute, line) for every attribute read or written on a run: a name `run`, or `<x>.run`."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id == "run") or (isinstance(owner, ast.Attribute) and owner.attr == "run"):
                out.append((node.attr, node.lineno))
    return out


def test_no_set_up_object_holds_a_run_and_a_run_is_only_saved():
    """Nothing reaches a run but its save: no `<set-up>.run` anywhere, and a name `run` is only saved."""
    found = sources()
    assert len(found) == len(MODULES) + len(NOTEBOOKS) and len(NOTEBOOKS) >= 9
    for name, tree in found.items():
        held = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "run"
                and not (isinstance(n.value, ast.Name) and n.value.id == "_subprocess")]  # Colab's cell: subprocess.run
        assert not held, f"{name} reaches a run through a set-up object at lines {held}"
        other = sorted({(attr, line) for attr, line in run_uses(tree) if attr != "save"})
        assert not other, f"{name} touches its run outside the recording step: {other}"


@pytest.mark.parametrize("module", CHAPTERS, ids=lambda p: p.stem)
def test_each_chapter_records_once(module):
    """One ChapterRun a chapter module, made in its recording step and saved there."""
    tree = ast.parse(module.read_text())
    made = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "ChapterRun"]
    saves = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "save"
             and (isinstance(n.value, ast.Call) and getattr(n.value.func, "id", None) == "ChapterRun"
                  or isinstance(n.value, ast.Name) and n.value.id == "run")]
    assert len(made) == 1 and len(saves) == 1 and 0 <= saves[0] - made[0] <= 1, (module.name, made, saves)


def test_the_run_offers_no_other_way_in_and_set_up_carries_a_clock():
    """ChapterRun keeps no results of its own: metrics, outcomes, tables and comparisons reach the
    results file only as save's arguments; the set-up carries the clock, whose stages are the timings."""
    has = {f.name for f in dataclasses.fields(ChapterRun)} | set(dir(ChapterRun))
    assert {"save", "folder", "clock"} <= has
    assert not has & {"metric", "record", "compare", "compare_chapter", "metrics", "metric_rules", "outcomes",
                      "outcome_tokens", "tables", "comparisons", "artifacts", "sections", "stage"}
    clock = Clock()
    with clock.stage("a"):
        pass
    with clock.stage("a"):  # a stage timed twice adds up
        pass
    assert set(clock.stages) == {"a"} and clock.stages["a"] >= 0
