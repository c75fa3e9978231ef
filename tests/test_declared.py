"""The record of when each plan entry was declared (ragft.declared): it matches the repository's
history, and a mark of "declared after a look" is never cleared."""

import subprocess

import pytest

from conftest import ROOT
from ragft import declared


def _full_history() -> bool:
    out = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT, capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip() == "false"


@pytest.mark.skipif(not _full_history(), reason="the record is rebuilt from git history; this copy has none (or a shallow one)")
def test_the_committed_record_is_what_history_gives():
    # draw d2's plan was declared whole (2c3d059) before any unit of d2 ran, so every comparison of it was
    # declared before any result of its draw (on the pilot's draw most were not: the plan was first
    # committed after their results; the record of those marks is in git history)
    built = declared.merged(declared.record(), declared.build())
    assert built == declared.record(), "run `python -m ragft.declared update` after a plan commit"
    assert {e["draw"] for e in built.values()} == {"d2"}
    assert all(e["declared_before_any_result"] for e in built.values())
    assert built["K1-rag-vs-reader"]["first_result_in"] is not None  # d2's results are published


def test_a_mark_of_a_look_is_kept_forever():
    old = {"K1-x": {"declared_in": "a", "first_result_in": "b", "declared_before_any_result": False},
           "K2-x": {"declared_in": "c", "first_result_in": None, "declared_before_any_result": True}}
    new = {"K1-x": {"declared_in": "d", "first_result_in": None, "declared_before_any_result": True},
           "K2-x": {"declared_in": "c", "first_result_in": None, "declared_before_any_result": True}}
    out = declared.merged(old, new)
    assert out["K1-x"]["declared_before_any_result"] is False and out["K2-x"]["declared_before_any_result"] is True
    # a comparison gone from the plan keeps its line, marked so
    assert declared.merged(old, {})["K1-x"] == {**old["K1-x"], "removed_from_plan": True}


def test_every_comparison_of_the_plan_is_in_the_record():
    from ragft.plan import the_plan

    assert set(the_plan().comparisons) <= set(declared.record())
    with pytest.raises(KeyError, match="ragft.declared update"):
        declared.of("K99-nowhere")


ENTRY = {"chapter": "03_finetune", "a": "x", "b": "y", "role": "primary", "test": "paired", "sesoi_from": "accuracy"}


def test_the_form_sees_profiles_family_draw_and_rule_code_but_not_prose():
    plan = {"rules": {"accuracy": {"sesoi": 0.1}}, "comparisons": {"K1-a": ENTRY, "K2-b": ENTRY}}
    form = declared._form("K1-a", ENTRY, plan, {}, {"f": "1"}, plan["comparisons"])
    # prose moves nothing
    assert declared._form("K1-a", {**ENTRY, "note": "n", "caveat": "c"}, plan, {}, {"f": "1"}, plan["comparisons"]) == form
    # the profiles that measure it, and another member leaving a profile's family (its Holm count)
    assert declared._form("K1-a", {**ENTRY, "profiles": ["gpu"]}, plan, {}, {"f": "1"}, plan["comparisons"]) != form
    fewer = {"K1-a": ENTRY, "K2-b": {**ENTRY, "profiles": ["gpu"]}}
    assert declared._form("K1-a", ENTRY, {**plan, "comparisons": fewer}, {}, {"f": "1"}, fewer) != form
    # a fresh draw, and the verdict rules' code
    assert declared._form("K1-a", ENTRY, {**plan, "draw": {"name": "d2"}}, {}, {"f": "1"}, plan["comparisons"]) != form
    assert declared._form("K1-a", ENTRY, plan, {}, {"f": "2"}, plan["comparisons"]) != form


def test_rule_code_ignores_docstrings_comments_and_imports_not_logic():
    base = "def decide(c, p):\n    \"\"\"doc\"\"\"\n    return p < 0.05\n"
    same = "def decide(c, p):\n    \"\"\"other words\"\"\"\n    import math  # moved\n    return p < 0.05  # note\n"
    moved = "def decide(c, p):\n    return p <= 0.05\n"
    h = declared._code(base, ("decide", "holm"))
    assert h == declared._code(same, ("decide", "holm")) and h["holm"] == "absent"
    assert h != declared._code(moved, ("decide", "holm"))


def test_a_fresh_draw_keeps_the_pilots_lines_and_starts_its_own():
    pilot = {"K1-x": {"draw": "pilot", "declared_in": "a", "first_result_in": "b", "declared_before_any_result": False}}
    fresh = {"K1-x": {"draw": "d2", "declared_in": "c", "first_result_in": None, "declared_before_any_result": True}}
    # the pilot's mark of a look does not follow the comparison to the fresh draw's test items ...
    assert declared.merged(pilot, fresh) == fresh
    # ... and its line is kept, as it was, under the draw it was made on
    assert declared.earlier_draws({"comparisons": pilot}, fresh) == {"pilot": pilot}
    assert declared.earlier_draws({"comparisons": fresh, "earlier_draws": {"pilot": pilot}}, fresh) == {"pilot": pilot}
    # a line without a draw is the pilot's
    assert declared.draw_of({}) == "pilot" and declared.draw_of({"draw": {"name": "d2"}}) == "d2"


def test_a_draw_declared_ahead_is_dated_from_its_declaration_not_its_publication(tmp_path):
    # a repository's history: the pilot plan and a pilot result of K1-a; the draw d2 declared in
    # data/draws/d2 (K1-a, and K1-b new); d2's plan published as the plan file; then a d2 result. Each d2
    # entry dates from the declaration's commit and came before any result of d2 (the pilot's is another draw's)
    import json

    import yaml

    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()

    def commit(files: dict, message: str) -> str:
        for path, text in files.items():
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_text(text)
        git("add", "-A")
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)
        return git("rev-parse", "HEAD")

    git("init", "-q")
    rules = {"rules": {"accuracy": {"sesoi": 0.1}}, "family": {"alpha": 0.05, "adjustment": "holm"}}
    pilot = yaml.safe_dump({**rules, "comparisons": {"K1-a": ENTRY}})
    d2 = yaml.safe_dump({**rules, "draw": {"name": "d2"}, "comparisons": {"K1-a": ENTRY, "K1-b": ENTRY}})
    result = lambda draw: json.dumps({"params": {"draw": draw} if draw else {}, "comparisons": [{"claim": "K1-a", "a": "x", "b": "y"}]})  # noqa: E731
    commit({declared.PLAN_PATH: pilot, declared.CLAIMS_PATH: "{}"}, "pilot plan")
    commit({"experiments/results/cpu/03.json": result(None)}, "pilot result")
    declared_in = commit({"data/draws/d2/analysis_plan.yaml": d2, "data/draws/d2/claims.yaml": "{}"}, "declare d2")
    (tmp_path / "data/draws/d2/analysis_plan.yaml").unlink()
    (tmp_path / "data/draws/d2/claims.yaml").unlink()
    commit({declared.PLAN_PATH: d2}, "publish d2")
    first = commit({"experiments/results/cpu/03.json": result("d2")}, "d2 result")
    record = declared.build(tmp_path)
    assert record["K1-a"]["draw"] == "d2" and record["K1-a"]["declared_in"] == declared_in[:12]
    assert record["K1-a"]["first_result_in"] == first[:12] and record["K1-a"]["declared_before_any_result"] is True
    assert record["K1-b"]["declared_in"] == declared_in[:12] and record["K1-b"]["declared_before_any_result"] is True
