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
    # the plan was first committed after results of almost every comparison had been published: today
    # only N1-delimit among the book's primary comparisons was declared before any result of it
    built = declared.merged(declared.record(), declared.build())
    assert built == declared.record(), "run `python -m ragft.declared update` after a plan commit"
    assert built["N1-delimit"]["declared_before_any_result"] is True
    assert built["K1-rag-vs-dsf"]["declared_before_any_result"] is False


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
