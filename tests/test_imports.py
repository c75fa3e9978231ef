"""The package's imports form no circle (issue 52): read with `ast` from the source, so an import
hidden inside a function counts as much as one at the top of a module."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ragft"


def module_names() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imported(module: str, path: Path, known: dict) -> set[str]:
    """The package's modules that `module` imports anywhere in its file. `from .x import name` counts
    as x.name where that is a module (a submodule), else as x."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else (node.module or "")
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known and n != module}
    return out


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while not part or part[-1] != v:
                part.append(stack.pop())
                on.discard(part[-1])
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_circles_finds_a_circle_and_only_circles():
    # a -> b -> c -> a is one circle; d -> a hangs off it and is not part of it
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_package_imports_form_no_circle():
    known = module_names()
    graph = {m: imported(m, p, known) for m, p in known.items()}
    assert graph["ragft.plan"] >= {"ragft.constants", "ragft.files"}  # the reader sees relative imports
    assert circles(graph) == []


def test_the_bottom_floor_imports_nothing_of_the_package():
    known = module_names()
    assert imported("ragft.constants", known["ragft.constants"], known) == set()
    assert imported("ragft.files", known["ragft.files"], known) == {"ragft.constants"}


def reachable(start: str, graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for m in graph[todo.pop()] - seen:
            seen.add(m)
            todo.append(m)
    return seen


def test_training_and_the_host_probe_sit_below_the_results_ledger():
    # issue 65: the trainer measures its peak with the host probe (ragft.host), not through the ledger,
    # so training depends on neither results nor what results reads (plan, stats, config ...)
    known = module_names()
    graph = {m: imported(m, p, known) for m, p in known.items()}
    for low in ("ragft.train.trainer", "ragft.host"):
        assert not reachable(low, graph) & {"ragft.results", "ragft.plan", "ragft.stats", "ragft.config"}, low
    assert "ragft.host" in graph["ragft.results"]  # provenance comes from the host module


def test_no_chapter_module_imports_another_chapter():
    known = module_names()
    chapters = {m for m in known if m.startswith("ragft.experiments.ch")}
    for m in chapters:
        assert not imported(m, known[m], known) & (chapters - {m}), m
