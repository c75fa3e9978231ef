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
    # the plan was first committed after results of almost every comparison had been published; N1-delimit,
    # declared first, was judged by verdict rules whose code changed after its results (issue 49's engine),
    # and K1-rag-vs-reader has never had a published result on the pilot draw
    built = declared.merged(declared.record(), declared.build())
    assert built == declared.record(), "run `python -m ragft.declared update` after a plan commit"
    assert built["N1-delimit"]["declared_before_any_result"] is False
    assert built["K1-rag-vs-dsf"]["declared_before_any_result"] is False
    assert built["K1-rag-vs-reader"]["declared_before_any_result"] is True


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
