"""The decision helper: each rule of D1, D2 and D3 as its source states it, and each bad input."""

import pytest

from ragft.decide import Reader, actian_d3, decide, ergini_d2, heym_d1, latency_reason

READY = dict(examples=500, tried_prompting=True, rag_baseline=True, eval_set=True, ready_to_retrain=True)


@pytest.mark.parametrize("reader,approach,claim", [
    (Reader("facts", updates_per_month=8), "RAG", "U1"),  # 1. facts that change
    (Reader("both", updates_per_month=1), "RAG", "U1"),
    (Reader("facts", private_documents=True), "RAG", "private documents"),  # 2. private documents
    (Reader("both", private_documents=True), "RAG", "private documents"),  # asked before "both -> hybrid"
    (Reader("facts"), "RAG", "K2"),  # 3. wrong facts
    (Reader("format", queries_per_month=100_000), "fine-tune", "K4"),  # 3. wrong format
    (Reader("format", queries_per_month=3_100_000), "fine-tune", "S7"),  # 4. > 100 K a day, static
    (Reader("format", updates_per_month=8), "fine-tune", "K4"),  # changing facts do not matter to format
    (Reader("format", updates_per_month=1, queries_per_month=3_100_000), "fine-tune", "K4"),  # not a static set
    (Reader("both"), "hybrid", "F3"),  # 5. both
], ids=["changing", "changing-both", "private", "private-both", "facts", "format", "volume", "format-changing",
        "volume-not-static", "both"])
def test_heym_d1_asks_its_five_questions_in_order(reader, approach, claim):
    """`claim` is a claim id the reason rests on, or words of the reason itself."""
    advice = heym_d1(reader)
    assert advice.approach == approach and any(claim in r.claims or claim in r.says for r in advice.reasons)


def test_ergini_d2_fine_tunes_only_when_all_eight_checks_pass():
    assert ergini_d2(Reader("format", queries_per_month=60_000, **READY)).approach == "fine-tune"
    failing = {
        "prompting has been tried": dict(READY, tried_prompting=False),
        "a RAG baseline": dict(READY, rag_baseline=False),
        "at least 200 examples": dict(READY, examples=199),
        "an evaluation set": dict(READY, eval_set=False),
        "retraining every 3-6 months": dict(READY, ready_to_retrain=False),
    }
    for text, kwargs in failing.items():
        advice = ergini_d2(Reader("format", queries_per_month=60_000, **kwargs))
        assert advice.approach == "prompting" and len(advice.reasons) == 1 and text in advice.reasons[0].says
    assert "behaviour, not facts" in ergini_d2(Reader("facts", queries_per_month=60_000, **READY)).reasons[0].says
    stale = ergini_d2(Reader("format", queries_per_month=60_000, updates_per_month=0.5, **READY))
    assert stale.approach == "prompting" and "stable for 3 months" in stale.reasons[0].says
    small = ergini_d2(Reader("format", queries_per_month=40_000, **READY))
    assert "50 K calls" in small.reasons[0].says
    assert ergini_d2(Reader("format", queries_per_month=40_000, prompt_cost_usd_per_month=250, **READY)).approach == "fine-tune"


@pytest.mark.parametrize("queries,updates,approach", [
    (5e6, 8, "RAG"), (20e6, 8, "RAG"), (60e6, 8, "hybrid"), (200e6, 8, "hybrid"),
    (5e6, 0, "RAG"), (20e6, 0, "RAG"), (60e6, 0, "fine-tune"), (200e6, 0, "fine-tune"),
    (60e6, 2, "hybrid"),
])
def test_actian_d3_reads_volume_by_update_frequency(queries, updates, approach):
    advice = actian_d3(Reader("facts", queries_per_month=queries, updates_per_month=updates))
    assert advice.approach == approach and advice.reasons[0].claims == ("S6", "U1")
    if queries == 20e6 and updates == 0:
        assert "evaluate both" in advice.reasons[0].says


def test_decide_gives_each_rules_advice():
    assert [a.rule for a in decide(Reader("facts"))] == ["D1", "D2", "D3"]


@pytest.mark.parametrize("budget,measured,says", [(500, 12.0, "within"), (10, 12.0, "over"), (0, 12.0, None), (500, None, None)])
def test_a_latency_budget_is_set_beside_the_measured_retrieval_latency(budget, measured, says):
    reader = Reader("facts", latency_budget_ms=budget)
    advice = decide(reader, measured)
    added = [r for a in advice for r in a.reasons if "S1" in r.claims]
    if says is None:
        assert added == []
    else:  # every advice that retrieves (here all three: RAG) says where 12 ms sits against the budget
        assert len(added) == 3 and all(f"12 ms per answer in this run: {says}" in r.says for r in added)
    assert latency_reason(Reader("format", latency_budget_ms=10), heym_d1(Reader("format")), 12.0) is None  # no retrieval


@pytest.mark.parametrize("kwargs,name", [
    (dict(task="knowledge"), "task"), (dict(task="facts", updates_per_month=-1), "updates_per_month"),
    (dict(task="facts", queries_per_month="many"), "queries_per_month"), (dict(task="facts", examples=2.5), "examples"),
    (dict(task="facts", examples=True), "examples"), (dict(task="facts", private_documents="yes"), "private_documents"),
    (dict(task="facts", queries_per_month=float("nan")), "queries_per_month"),
    (dict(task="facts", updates_per_month=float("inf")), "updates_per_month"),
    (dict(task="facts", prompt_cost_usd_per_month=-1.0), "prompt_cost_usd_per_month"),
    (dict(task="facts", latency_budget_ms=-5), "latency_budget_ms"),
    (dict(task="facts", tried_prompting=1), "tried_prompting"), (dict(task="facts", rag_baseline="no"), "rag_baseline"),
    (dict(task="facts", eval_set=None), "eval_set"), (dict(task="facts", ready_to_retrain="yes"), "ready_to_retrain"),
])
def test_a_bad_reader_is_refused_naming_the_field(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}="):
        Reader(**kwargs)


@pytest.mark.parametrize("override,name", [({"reader_task": "knowledge"}, "reader_task"),
                                          ({"reader_queries_per_month": -5.0}, "reader_queries_per_month"),
                                          ({"reader_private_documents": "yes"}, "reader_private_documents"),
                                          ({"reader_latency_budget_ms": -1.0}, "reader_latency_budget_ms"),
                                          ({"reader_eval_set": "yes"}, "reader_eval_set")])
def test_the_verdict_chapters_reader_parameters_are_checked_by_name(override, name):
    from ragft.config import ParamError, resolve

    assert resolve("07_verdict", "smoke").reader().task == "facts"
    with pytest.raises(ParamError, match=f"parameter {name}="):
        resolve("07_verdict", "smoke", **override)
