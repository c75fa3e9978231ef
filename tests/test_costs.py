"""The cost model (ragft.costs) and the articles' cost figures rebuilt from their own inputs."""

import json

import pytest

from ragft import costs
from ragft.config import ParamError, resolve
from ragft.costs import Approach, Workload

# ---------------------------------------------------------------------------------------------
# The model, on numbers worked by hand (gpt-4o-mini: $0.15 / $0.60; its fine-tune: $0.30 / $1.20;
# training $3 per million; embedding $0.02 per million; Pinecone $0.33 / GB-month, $16 / M reads, $4 / M writes)

RAG = Approach("RAG", 1000, 100, "gpt-4o-mini", retrieval=True)
FT = Approach("fine-tune", 100, 100, "gpt-4o-mini-ft", trained=True, retrain_on_update=True)
HYBRID = Approach("hybrid", 1000, 100, "gpt-4o-mini-ft", retrieval=True, trained=True)


def workload(**kw):
    return Workload(**{"queries_per_month": 1e6, "updates_per_month": 2, "train_tokens": 1e6, "training_life_months": 4,
                       "reindex_tokens": 1e6, "writes_per_update": 1e6, "query_tokens": 50, "index_gb": 10, **kw})


def test_monthly_parts_worked_by_hand():
    w = workload()
    rag = costs.monthly_parts(RAG, w)
    assert rag["serving"] == pytest.approx(1e6 * (1000 * 0.15 + 100 * 0.60) / 1e6)  # $210
    assert rag["retrieval"] == pytest.approx(1e6 * (50 * 0.02 / 1e6 + 16 / 1e6))  # $17
    assert rag["index"] == pytest.approx(10 * 0.33 + 2 * (1e6 * 0.02 / 1e6 + 1e6 * 4 / 1e6))  # $3.30 + 2 x $4.02
    assert rag["training"] == 0
    ft = costs.monthly_parts(FT, w)
    assert ft["serving"] == pytest.approx(100 * 0.30 + 100 * 1.20) and ft["retrieval"] == ft["index"] == 0
    assert ft["training"] == pytest.approx(2 * 3.0)  # retrained at each of 2 updates, $3 a run
    # the hybrid reads the new documents: one run per adapter life, not per update
    assert costs.monthly_parts(HYBRID, w)["training"] == pytest.approx(3.0 / 4)
    # no updates: a closed-book fine-tune is amortised over its life too
    assert costs.monthly_parts(FT, workload(updates_per_month=0))["training"] == pytest.approx(3.0 / 4)


def test_crossover_is_where_the_lines_meet():
    w = workload(updates_per_month=10, train_tokens=1e8)  # the fine-tune: $3,000 a month of retraining
    q = costs.crossover(FT, RAG, w)
    assert q is not None and q > 0
    assert costs.monthly_usd(FT, w, q) == pytest.approx(costs.monthly_usd(RAG, w, q))
    assert costs.monthly_usd(FT, w, 2 * q) < costs.monthly_usd(RAG, w, 2 * q)
    assert costs.monthly_usd(FT, w, q / 2) > costs.monthly_usd(RAG, w, q / 2)
    assert costs.cheapest([RAG, FT], workload(queries_per_month=2 * q, updates_per_month=10, train_tokens=1e8)) == "fine-tune"
    # the hybrid costs more per query than RAG (same tokens, fine-tuned price): never cheaper
    assert costs.crossover(HYBRID, RAG, w) is None
    # cheaper per query and no dearer fixed: cheaper from the first query
    assert costs.crossover(Approach("short RAG", 10, 10, "gpt-4o-mini", retrieval=True), RAG, w) == 0.0


@pytest.mark.parametrize("make,message", [
    (lambda: Approach("x", -1, 0, "gpt-4o-mini"), "prompt_tokens=-1"),
    (lambda: Approach("x", 1, float("nan"), "gpt-4o-mini"), "completion_tokens=nan"),
    (lambda: Approach("x", 1, 1, "no-such-model"), "'no-such-model' is not a row of prices.*gpt-4o-mini"),
    (lambda: workload(queries_per_month=-5), "queries_per_month=-5"),
    (lambda: workload(training_life_months=0), "training_life_months=0"),
    (lambda: workload(training="nope"), "'nope' is not a row of training"),
    (lambda: costs.gpu_hours(1e18, "h100_runpod", 0), "utilisation=0"),
    (lambda: costs.row("menu", "x"), "section='menu'"),
])
def test_bad_inputs_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_training_flops_and_dollars():
    assert costs.train_flops(7e9, 1e6, full=True) == 6 * 7e9 * 1e6
    assert costs.train_flops(7e9, 1e6, full=False) == 4 * 7e9 * 1e6
    # 6 x 70e9 x 10e6 = 4.2e18 FLOPs at 40 % of 989 TFLOP/s: 2.95 GPU-hours
    assert costs.gpu_hours(4.2e18, "h100_runpod", 0.4) == pytest.approx(4.2e18 / (989e12 * 0.4) / 3600)
    assert costs.train_usd(70e9, 10e6, True, "h100_runpod", 0.4) == pytest.approx(2.949 * 2.79, rel=1e-3)


# ---------------------------------------------------------------------------------------------
# Each article's figure from its own inputs


def test_s4_is_reproduced_from_its_inputs():
    check, measured = costs.check_s4(Approach("RAG", 500, 0, "s4_actian", retrieval=True))
    assert measured == {1e7: pytest.approx(8750), 5e7: pytest.approx(43750), 1e8: pytest.approx(87500)}
    assert check.verdict == "supported"  # 500 tokens measured: the figure and this book agree
    assert costs.check_s4(Approach("RAG", 900, 0, "s4_actian"))[0].verdict == "depends"  # another prompt length


def test_s3_needs_a_mini_class_price_not_a_gpt4_class_one():
    check = costs.check_s3(Approach("RAG", 2000, 0, "gpt-4o-mini"))
    assert check.verdict == "contradicted"
    assert "$4.00 (gpt-4.1)" in check.note and "$5.00 (gpt-4o)" in check.note and "0.05-0.775" in check.note


def test_s5_table_crossover_and_linearity():
    cross, off = costs.s5_from_table()
    # between 10 K (RAG $45 < fine-tune $120) and 100 K (RAG $420 > $280): -75 + 215 t = 0 at t = 75/215
    assert cross == pytest.approx(10_000 + 90_000 * 75 / 215)
    # the straight line through RAG's 10 K and 1 M rows passes 100 K at $386.4, not $420
    assert off["RAG"] == pytest.approx(abs(45 + 3755 / 990_000 * 90_000 - 420) / 420)
    assert costs.check_s5_table().verdict == "contradicted"


def test_s8_completion_length_that_gives_73_percent():
    long_prompt, tuned = Approach("long", 3800, 96, "gpt-4o-mini"), Approach("ft", 180, 96, "gpt-4o-mini-ft")
    check, saving = costs.check_s8(long_prompt, tuned)
    # 1 - (180 x 0.30 + c x 1.20) / (3800 x 0.15 + c x 0.60) = 0.73  ->  c = 99.9 / 1.038 = 96.2
    assert "about 96 completion tokens" in check.note and saving == pytest.approx(0.73, abs=0.005)
    assert "would save 91%" in check.note  # prompt tokens alone: 1 - 180 x 0.30 / (3800 x 0.15)
    assert check.verdict == "depends"


def test_s9_implies_two_terabytes_of_storage():
    check, gb = costs.check_s9()
    assert gb == pytest.approx((1532 - 50 * 16 - 6 * 4) / 0.33)
    assert check.verdict == "depends" and "2,145 GB" in check.note


def test_t5_figures():
    check, cost = costs.check_t5_lora_70b("h100_runpod", 0.4, 10e6)
    assert "$6.25-18.75 per GPU-hour" in check.note and check.verdict == "depends"
    assert cost == pytest.approx(costs.train_usd(70e9, 10e6, False, "h100_runpod", 0.4))
    tokens = 32 * 3600 * 989e12 * 0.4 / (4 * 70e9)  # what 32 GPU-hours train at 40 %
    assert f"about {tokens / 1e6:,.0f} M tokens" in check.note
    assert costs.check_t5_api().verdict == "supported"  # 20 M x $25 = $500


@pytest.mark.parametrize("follows,lands,unstated,verdict", [
    (False, True, "", "contradicted"), (True, True, "", "supported"), (True, False, "", "depends"),
    (True, True, "storage", "depends")])
def test_the_rule(follows, lands, unstated, verdict):
    assert costs.rule(follows, lands, unstated) == verdict


def test_s2_stages_do_not_add_up_for_the_hybrid():
    # 60 + 40 + 180 + 420 = 700 (RAG) and 420 (fine-tune) add up; the hybrid embeds and searches too:
    # 60 + 40 + 420 = 520, not the stated 660 (= 700 less the search alone)
    out = costs.check_s2(retrieval_ms=12.0, rag_first_token_ms=1200.0)
    assert out.verdict == "contradicted" and "the hybrid's stated 660 ms is not its stages' 520 ms" in out.note
    assert "retrieval 1.0% of RAG's time" in out.computed and "against 14% in the source" in out.note


def test_a_volume_that_never_comes_depends_on_what_moves_it():
    from ragft.experiments.ch06_cost import _volume_check

    count = lambda v: f"{v:,.0f} queries a month"
    never = _volume_check("S6-thresholds", None, 10e6, 50e6, count, "the training cost")
    assert never.verdict == "depends" and never.computed == "never" and "never cheaper" in never.note
    assert _volume_check("S6-thresholds", 20e6, 10e6, 50e6, count, "x").verdict == "supported"
    assert _volume_check("S5-crossover", 537_708, 50_000, 100_000, count, "x").verdict == "depends"


def test_range_check():
    assert costs.range_check("S7-saving", 0.5, 0.4, 0.7, "saving", str, "x").verdict == "supported"
    out = costs.range_check("S7-saving", 0.9, 0.4, 0.7, "saving", str, "the prompt tokens")
    assert out.verdict == "depends" and "depends on the prompt tokens" in out.note
    assert out.as_comparison()["kind"] == "computed" and out.as_comparison()["n"] is None


# ---------------------------------------------------------------------------------------------
# Chapter 6's parameters


@pytest.mark.parametrize("override,message", [
    ({"queries_per_month": -1.0}, "queries_per_month=-1.0"),
    ({"updates_per_month": "weekly"}, "updates_per_month='weekly'"),
    ({"serving_price": "gpt-9"}, "serving_price: 'gpt-9' is not a row of prices"),
    ({"gpu_price": "a100"}, "gpu_price: 'a100' is not a row of gpu"),
    ({"gpu_utilisation": 1.5}, "gpu_utilisation=1.5"),
    ({"training_life_months": 0.0}, "training_life_months=0.0"),
])
def test_cost_parameters_refuse_bad_values_by_name(override, message):
    with pytest.raises(ParamError, match=message):
        resolve("06_cost", "smoke", **override)


def test_chapter_reads_published_results_when_run_alone_and_says_what_to_run_otherwise(tmp_path, monkeypatch):
    from ragft.experiments import ch06_cost

    monkeypatch.setenv("RAGFT_RUN_DIR", str(tmp_path))
    docs, origin = ch06_cost.read_inputs("cpu")
    assert set(docs) == set(ch06_cost.NEEDED) and set(origin.values()) == {"published cpu results"}
    params = resolve("06_cost", "cpu", queries_per_month=2e6, rag_prompt_tokens=500.0)
    approaches = ch06_cost.build_approaches(docs, params)
    assert approaches["RAG"].prompt_tokens == 500.0  # the reader's own prompt length wins
    assert approaches["fine-tune"].price == "gpt-4o-mini-ft" and approaches["RAG"].price == "gpt-4o-mini"
    # a profile with nothing published (smoke; gpu until someone runs it): the cpu run's, said so
    assert set(ch06_cost.read_inputs("smoke")[1].values()) == {"published cpu results"}
    # this run folder's chapter 2 ran only your documents: no stage times, so the published ones price it
    (tmp_path / "results").mkdir(exist_ok=True)  # read_chapter made it
    (tmp_path / "results" / "02_rag.json").write_text(json.dumps({"chapter": "02_rag", "profile": "cpu", "metrics": {"own_f1": 0.2}}))
    assert ch06_cost.read_inputs("cpu")[1]["02_rag"] == "published cpu results"
    from ragft import settings

    monkeypatch.setattr(settings, "PROJECT_ROOT", tmp_path)  # nothing published anywhere
    with pytest.raises(FileNotFoundError, match="python -m ragft.run --profile smoke"):
        ch06_cost.read_inputs("smoke")


def test_the_verdict_chapter_prices_readers_with_chapter_6s_model():
    """Chapter 6 saves its model; the verdict chapter rebuilds it and prices each reader's case."""
    from dataclasses import asdict

    from ragft.experiments.ch07_verdict import Verdicts, reader_costs, thresholds_table

    w = workload()
    doc = {"tables": {"cost_model": {"approaches": {a.name: asdict(a) for a in (RAG, FT, HYBRID)}, "workload": asdict(w)}}}
    approaches, again = costs.model_from_results(doc)
    assert again == w and approaches["fine-tune"] == FT
    v = Verdicts(clock=None, folder=None, params=None, rows=[], claims={}, chapters=["06_cost"], docs={"06_cost": doc})
    table = reader_costs(v, {"static, 10 M a month": dict(task="facts", queries_per_month=1e7, updates_per_month=0)})
    static = Workload(**{**asdict(w), "queries_per_month": 1e7, "updates_per_month": 0.0})
    assert table.loc["static, 10 M a month", "RAG ($/month)"] == round(costs.monthly_usd(RAG, static))
    assert table.loc["static, 10 M a month", "cheapest"] == costs.cheapest([RAG, FT, HYBRID], static)
    rows = thresholds_table(v)["queries a month"].tolist()
    assert rows[:4] == ["3,000,000", "50,000", "10,000,000", "50,000,000"] and len(rows) == 7
    assert reader_costs(Verdicts(None, None, None, [], {}, [], {}), {}) is None  # chapter 6 not in the run: said, not a crash


@pytest.mark.parametrize("effects,ok", [({"K1-a": [5, 10]}, True), ({"K1-b": [5, 10]}, False), ({"K1-a": [10, 5]}, False),
                                        ({"K1-a": "big"}, False)])
def test_a_claims_stated_effects_name_its_own_comparisons(tmp_path, effects, ok):
    import yaml

    from ragft.claims import load_claims

    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump({"K1": {"claim": "c", "sources": ["s"], "figure": "f", "chapter": "03_finetune",
                                           "scales": "s", "comparisons": ["K1-a"], "effects": effects}}))
    if ok:
        assert load_claims(path)["K1"].effects == {"K1-a": (5, 10)}
    else:
        with pytest.raises(ValueError, match="effects"):
            load_claims(path)


@pytest.mark.parametrize("change,message", [
    (lambda t: t["prices"]["gpt-4o"].pop("input_per_mtok"), r"prices.gpt-4o: missing 'input_per_mtok'"),
    (lambda t: t["prices"]["gpt-4o"].update(input_per_mtok="2.50"), r"prices.gpt-4o.input_per_mtok: '2.50' is not a number"),
    (lambda t: t["prices"]["gpt-4o"].update(output_per_mtok=-10.0), r"prices.gpt-4o.output_per_mtok: -10.0: use a finite number >= 0"),
    (lambda t: t["gpu"]["h100_runpod"].update(per_hour=float("inf")), r"gpu.h100_runpod.per_hour: inf"),
    (lambda t: t["training"]["gpt-4o"].update(per_mtok=None), r"training.gpt-4o.per_mtok: None is not a number"),
    (lambda t: t["prices"]["gpt-4o"].update(source=""), "every row names its source"),
    (lambda t: t.pop("gpu"), "gpu: missing"),
], ids=["missing-key", "string-price", "negative", "infinite", "null-training", "no-source", "no-section"])
def test_a_bad_price_table_is_refused_when_loaded(change, message):
    import copy

    table = copy.deepcopy(costs._table())
    change(table)
    with pytest.raises(ValueError, match=message):
        costs.validate_table(table, "pricing.yaml")


def test_a_row_without_an_output_price_says_so():
    assert costs.output_unpriced("gpt-4o") is None
    assert "no output price" in costs.output_unpriced("s4_actian")
