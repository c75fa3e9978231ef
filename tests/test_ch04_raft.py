"""Chapter 4's experiment module without the language model: per-question outcomes, candidate
scores and refusal as a detector, the DSF and fact hand-over from chapter 3, metric kinds, macro-F1's
drift tolerance and the stated comparisons."""

import dataclasses
import json
from types import SimpleNamespace

import pandas as pd
import pytest

from conftest import ROOT

from ragft import config, plots, raft, settings
from ragft.experiments import ch04_raft as ch04
from ragft.experiments import common
from ragft.experiments.common import record_seeds, split_outcomes
from ragft.generation import Generation
from ragft.results import Clock, Measured, judged_of
from ragft.scoring import Ranking


def item(qid, answers=("Lena Voss",), kind="single"):
    return SimpleNamespace(qid=qid, answers=list(answers), kind=kind, question=f"question {qid}")


def gen(texts):
    return Generation(list(texts), [10 + i for i in range(len(texts))], [3] * len(texts), 0.0, [0.0] * len(texts))


def params(**overrides):
    return config.resolve("04_raft", "smoke", **overrides)


def chapter(p=None, **fields):
    """A Chapter with only what the tested functions read."""
    p = p or params()
    ch = ch04.Chapter(p, None, Clock(), None, None, None, None, None, [], [], [], [], [], [], [], None,
                      [], settings.PROJECT_ROOT / "kb_train.jsonl", None)
    known = {f.name for f in dataclasses.fields(ch04.Chapter)} | {"lm"}
    for name, value in fields.items():
        assert name in known, f"Chapter has no field {name!r}"  # a removed field must not pass silently
        setattr(ch, name, value)
    return ch


def test_split_outcomes_score_the_final_answer_and_refusals_apart():
    items = [item("q1"), item("q2"), item("u1", (), "unanswerable")]
    texts = ["##begin_quote##Lab 4 is run by Omar.##end_quote##\n<ANSWER>: Lena Voss [1]", "<ANSWER>: Omar",
             "I don't know."]
    parts = split_outcomes(items, gen(texts), raft.answers_of(texts))  # scored on the final answer
    assert parts["answer"][0] == {"q1": 1.0, "q2": 0.0}
    assert parts["refusal"][0] == {"u1": 1.0}
    assert parts["answer"][1]["q2"] == (11, 3)


def test_split_outcomes_refuse_mismatched_and_repeated_questions():
    with pytest.raises(ValueError, match="pair up"):
        split_outcomes([item("q1")], gen(["a", "b"]))
    with pytest.raises(ValueError, match="asked twice"):
        split_outcomes([item("q1"), item("q1")], gen(["a", "b"]))


def test_benchmark_labels_are_named_and_f1_reads_the_final_answer():
    assert ch04.pubmedqa_question("Does it work?") == "Does it work? Answer yes, no or maybe."
    f1 = ch04.f1_outcomes([item("h1", ["Paris France"])], ["<ANSWER>: Paris"])
    assert f1["h1"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="pair up"):
        ch04.f1_outcomes([item("h1")], [])
    # the official script's yes/no rule: "yes it is" against "yes" is 0, not token F1's 2/3
    yes = ch04.f1_outcomes([item("h2", ["yes"]), item("h3", ["Paris"]), item("h4", ["yes"])],
                           ["<ANSWER>: yes it is", "<ANSWER>: no", "<ANSWER>: Yes."])
    assert yes == {"h2": 0.0, "h3": 0.0, "h4": 1.0}


def test_rank_scores_values_apart_from_the_refusal(monkeypatch):
    """Accuracy ranks the values only; the refusal column becomes a refusal score (its
    log-likelihood minus the best value's) on every item, unanswerable ones the positives."""
    items = [item("f0"), item("f1"), item("u0", (), "unanswerable")]
    ch = chapter(test_items=items, ranked=[[]] * 3,
                 candidates=[(["a", "b"], 0), (["c", "d"], 1), (["e", "f"], None)])
    seen = {}

    def fake_read(lm, questions, docs, style, candidates, gold, max_new_tokens, batch_size, desc):
        seen.update(candidates=candidates, gold=gold, max_new_tokens=max_new_tokens)
        # f0: gold first, but the refusal scores higher still; f1: gold second; u0: refusal far ahead
        return "generated", Ranking([[-1.0, -2.0, -0.5], [-1.0, -3.0, -9.0], [-4.0, -5.0, -1.0]], gold, [10, 20, 30], 0.1)

    monkeypatch.setattr(ch04.raft, "read", fake_read)
    sc, gen = ch04.rank(ch, None, "raft", 0)
    assert seen["candidates"][0] == ["a", "b", ch04.REFUSAL_ANSWER] and seen["gold"] == [0, 1, 0]
    assert gen == "generated" and seen["max_new_tokens"] == ch.params.cot_max_new_tokens
    assert sc.outcomes == {"f0": 1, "f1": 0} and sc.acc == 0.5 and sc.ranking.chance == 0.5
    assert sc.refuse_pos == [3.0] and sc.refuse_neg == [0.5, -8.0]
    area, recall = sc.refusal()
    assert area == 1.0 and recall == 1.0
    row = sc.row()
    assert row["n"] == 2 and row["acc_lo"] < 0.5 < row["acc_hi"] and row["scored_prompt_tokens"] == 20


def test_a_readers_scores_restricted_to_the_ablation_facts():
    """The main run's scores reused on the ablations' first facts: same per-question outcomes, the
    accuracy and n of the subset, no unanswerable item left."""
    ranking = Ranking([[0.0, -1.0], [-2.0, -1.0], [0.0, -3.0]], [0, 0, 0], [10, 20, 30], 1.0)
    scored = ch04.Scored(ranking, ["a", "b", "c"], [0.5], [-1.0, -2.0, -3.0], 25.0)
    sub = scored.only(["a", "b", "u"])
    assert sub.qids == ["a", "b"] and sub.outcomes == {"a": 1, "b": 0}
    assert sub.acc == 0.5 and sub.row()["n"] == 2 and sub.refuse_pos == [] and sub.refuse_neg == [-1.0, -2.0]
    assert sub.prompt_tokens == 15


def test_marker_rate_counts_replies_that_reach_the_answer():
    assert ch04.marker_rate(gen(["##begin_quote##x##end_quote##\n<ANSWER>: y", "##begin_quote##x, cut"])) == 0.5


def test_chapter3_facts_follow_its_list_else_its_draw(run_dir, kb):
    p3 = config.resolve("03_finetune", "smoke")
    drawn, where = common.chapter3_facts(kb, p3)
    # chapter 3's own draw (d2: every fact of test_documents whole documents), not a sample of its own
    assert [q.qid for q in drawn] == [q.qid for q in common.drawn_facts(kb, p3)[0]] and "drawn" in where
    assert [q.qid for q in drawn] != [q.qid for q in kb.sample("single", len(drawn), p3.seed)]
    chosen = [q.qid for q in kb.by_kind("single")[5:12]]  # any size, in chapter 3's order
    (run_dir / "results" / "03_finetune.json").write_text(json.dumps(
        {"params": {"model": p3.model, "kb_seed": p3.kb_seed}, "tables": {"dsf_facts": chosen}}))
    facts, where = common.chapter3_facts(kb, p3)
    assert [q.qid for q in facts] == chosen and "chapter 3's list" in where
    (run_dir / "results" / "03_finetune.json").write_text(json.dumps(
        {"params": {"model": "other"}, "tables": {"dsf_facts": chosen}}))
    assert common.chapter3_facts(kb, p3)[0] == drawn


def test_macro_f1_tolerance_is_a_capped_bound_that_shrinks_with_n():
    assert ch04.macro_f1_tol(["yes"] * 10 + ["no"] * 8 + ["maybe"] * 2) == 1.0  # a rare label swings it
    big = ["yes"] * 400 + ["no"] * 400 + ["maybe"] * 200  # 50 flips allowed, smallest class 200
    assert ch04.macro_f1_tol(big) == pytest.approx(50 * 4 / (3 * 200))
    assert ch04.macro_f1_tol([]) == 0.0


def test_best_p_breaks_ties_towards_the_larger_p():
    table = pd.DataFrame({"p_oracle": [0.0, 0.4, 0.8, 1.0], "acc": [0.5, 0.75, 0.75, 0.5]})
    assert ch04.best_p(table) == 0.8


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "run_dir", lambda: tmp_path)
    (tmp_path / "results").mkdir()
    return tmp_path


ADAPTER = f"unit:dsf-p3-{'a' * 16}@8"  # chapter 3's chosen checkpoint, as its hand-over names it


def test_dsf_is_chapter_3s_adapter_when_chapter_3_ran(run_dir, monkeypatch):
    facts = [SimpleNamespace(qid="f1"), SimpleNamespace(qid="f2")]
    p = params()
    (run_dir / "results" / "03_finetune.json").write_text(json.dumps(
        {"params": {"model": p.model}, "artifacts": {"dsf_adapter": ADAPTER}, "tables": {"dsf_facts": ["f1", "f2"]}}))
    loaded = []
    monkeypatch.setattr(common.handover.units, "by_ref", lambda ref: (None, 8))  # the unit is stored
    monkeypatch.setattr(common.units, "model", lambda ref: loaded.append(ref) or "lm")
    monkeypatch.setattr(ch04.tasks, "train_dsf", lambda *a: pytest.fail("must not retrain chapter 3's adapter"))
    dsf_params = config.resolve("03_finetune", "smoke", model=p.model)
    lm, line = ch04.dsf_model(chapter(p, dsf_params=dsf_params, facts=facts))
    assert lm == "lm" and "chapter 3's adapter from this run" in line
    assert loaded == [ADAPTER]  # its unit's checkpoint, merged: it only answers (units.model)


@pytest.mark.parametrize("doc, why", [
    (None, "has not run"),
    ({"params": {"model": "smollm2-135m"}, "artifacts": {}}, "no DSF adapter"),
    ({"params": {"model": "smollm2-135m"}, "artifacts": {"dsf_adapter": "/nowhere"}, "tables": {"dsf_facts": ["x"]}},
     "other facts"),
    ({"params": {"model": "smollm2-135m"}, "artifacts": {"dsf_adapter": "/nowhere"}}, "is not a stored unit"),
])
def test_dsf_is_trained_here_and_says_why_otherwise(run_dir, monkeypatch, doc, why):
    if doc is not None:
        (run_dir / "results" / "03_finetune.json").write_text(json.dumps(doc))
    trained = []
    monkeypatch.setattr(common, "development_facts", lambda kb, facts, n, seed: [])
    monkeypatch.setattr(common, "curve_run", lambda p3, facts, dev, lr: trained.append(lr)
                        or SimpleNamespace(cached=False, ref=lambda epoch: f"unit:dsf-p3-{'c' * 16}@{epoch}"))
    monkeypatch.setattr(common.units, "model", lambda ref: ("own", ref))
    # the published results' model: chapter 3's recipe is read from them only for the model they measured
    p = params(model="smollm2-135m")
    dsf_params = config.resolve("03_finetune", "smoke", model=p.model)
    (lm, folder), line = ch04.dsf_model(chapter(p, dsf_params=dsf_params, facts=[SimpleNamespace(qid="f1")]))
    # chapter 3's curve run at the rate and checkpoint chapter 3 chose in its published (cpu) results,
    # so a chapter alone trains what the book did
    published = json.loads((ROOT / "experiments" / "results" / "cpu" / "03_finetune.json").read_text())["metrics"]
    assert lm == "own" and trained == [published["lora_lr_chosen"]]
    epoch = published["dsf_chosen_exposures"] // max(dsf_params.paraphrase_counts)
    assert folder == f"unit:dsf-p3-{'c' * 16}@{epoch}"  # the curve unit's checkpoint chapter 3 chose
    assert "fine-tuned here" in line and why in line and "published cpu results" in line


def measured_chapter(p):
    """A chapter and what its sections 'returned': tables and per-question outcomes of a fake
    measurement."""
    ch = chapter(p, facts=[SimpleNamespace(qid=f"f{i}") for i in range(4)],
                 test_items=[item(f"f{i}") for i in range(4)] + [item("u0", (), "unanswerable")],
                 train_sources=[object(), object()], lm=SimpleNamespace(n_params=lambda: 134_515_008))
    names = list(ch04.MAIN.values())
    rows = [{"condition": n, "acc": 0.75, "chance": 0.25, "n": 4, "refusal_auroc": 0.5, "refusal_recall": 0.0,
             "contains": 0.5, "f1": 0.5, "em": 0.25, "refusal_acc": 0.0, "prompt_tokens": 30.0,
             "quote_correct": 0.5 if n.startswith("RAFT") else None,
             "marker_rate": 0.9 if n.startswith("RAFT") else None} for n in names]
    rec = Measured()  # every section's outcomes, here all returned with the main table
    main = ch04.MainTable(pd.DataFrame(rows).set_index("condition"), "", SimpleNamespace(metrics={"train_s": 1.0, "tokens_per_s": 9.0}),
                          ch04.RaftFitness(2, 0.5, 0.5, 0.5), {}, {}, dict(zip(ch04.MAIN, names)), rec)
    abl = ch04.Ablations(pd.DataFrame([{"condition": f"P = {x:g}", "p_oracle": x, "acc": 0.5, "contains": 0.5}
                                       for x in p.p_values]).set_index("condition"),
                         pd.DataFrame([{"condition": f"{d} distractors", "n_distractors": d, "acc": 0.5, "contains": 0.5}
                                       for d in p.distractor_counts]).set_index("condition"))
    curve = pd.DataFrame({ch04.BASE_READER: {k: 0.5 for k in p.top_ks}, ch.raft_reader: {k: 0.75 for k in p.top_ks},
                          ch.least_reader: {k: 0.25 for k in p.top_ks}}).rename_axis("top-k")
    curves = ch04.Curves(curve, curve * 0.5, {(r, k): 50.0 * k for r in curve for k in p.top_ks})
    ones, zeros = {f"f{i}": 1.0 for i in range(4)}, {f"f{i}": float(i % 2) for i in range(4)}
    for name in names + [ch04.p_outcome(x) for x in p.p_values] + [ch04.d_outcome(d) for d in p.distractor_counts]:
        if name in names and ("RAFT" in name or "DSF" in name):  # the main table's trained readers are seeded
            record_seeds(rec, name, [ones if "RAFT" in name else zeros] * 3)  # arms: each seed's and their mean
        else:
            rec.record(name, ones if "RAFT" in name else zeros)
    for r in curve:
        for k in p.top_ks:
            rec.record(ch04.topk_outcome(r, k), ones if r == ch.raft_reader else zeros)
    return ch, ch04.Findings(main, abl, curves, ch04.Benchmarks())


def test_headline_metrics_declare_every_kind_and_keep_the_published_keys():
    p = params()
    ch, found = measured_chapter(p)
    m = ch04.headline_metrics(ch, found)
    rules = m.metric_rules
    assert set(m.metrics) == set(rules)
    assert rules["raft_best_p"]["kind"] == "choice"
    assert rules["raft_rag_acc"] == {"kind": "rate", "n": 4}  # candidate accuracy on every test fact
    assert rules["raft_rag_contains"] == {"kind": "rate", "n": p.n_generated}  # generated answers on the subset
    assert rules["raft_rag_refusal_auroc"]["kind"] == "derived"
    assert rules["raft_rag_refusal_recall_at_5pct_fpr"] == {"kind": "rate", "n": 1}
    assert rules["raft_rag_f1"]["kind"] == "mean" and rules["raft_rag_prompt_tokens"]["kind"] == "exact"
    assert rules["raft_train_s"]["kind"] == "machine" and rules["raft_topk_spread"]["kind"] == "derived"
    assert rules["raft_rag_refusal_acc"]["n"] == min(1, p.n_generated_unanswerable)
    for k in p.top_ks:
        for reader in ("base_rag", "raft_rag", "raft_d0_rag"):
            assert f"{reader}_top{k}_contains" in m and f"{reader}_top{k}_acc" in m
    assert m["raft_marker_rate"] == 0.9 and m["generated_n"] == p.n_generated
    assert m["raft_k_for_base_best"] == min(p.top_ks)
    assert m["raft_rag_n"] == 4 and m["ablation_n"] == p.n_ablation_facts == 3  # the smoke profile asks the subset
    assert "pubmedqa_raft_acc" not in m  # no benchmark rows: no benchmark metrics
    # issue 29's keys: RAFT's fitness on the development questions, and its training size and epochs
    assert (m["raft_dev_fitness"], m["raft_n_train"], m["raft_epochs"]) == (0, len(ch.train_sources), p.epochs)
    assert rules["raft_dev_fitness"]["kind"] == "choice" and rules["raft_dev_quote_marker"] == {"kind": "rate", "n": 2}


def test_comparisons_carry_the_claim_ids_and_say_what_was_not_measured():
    p = params()  # smoke: p_values has no P = 1, no benchmark outcomes
    ch, found = measured_chapter(p)
    out = ch04.comparisons(ch, found)
    stated = {k: s.comparison.claim for k, s in out.items() if s.comparison is not None}
    assert set(stated) == {"F3-raft-vs-base-rag", "F3-raft-vs-dsf-rag", "F4-cot", "F5-distractors", "F5-topk-robust",
                           "F6-fewer-chunks", "K6-ladder", "K3-rag-vs-ft", "K6-ladder-reader", "K3-rag-vs-reader"}
    assert all(k == v for k, v in stated.items())
    assert {c.claim for c in judged_of(out)} == set(stated.values())  # what save keeps on the results file
    # this fake trains no reader's RAFT (its fitness is not among the main table's)
    assert {k for k, s in out.items() if s.comparison is None} == {"F2-best-p", "F3-hotpotqa", "F3-pubmedqa",
                                                                  "F3-reader-raft-vs-base-rag", "F3-reader-raft-vs-reader-rag"}
    assert "no P = 1" in out["F2-best-p"].missing and out["F2-best-p"].key == "f2_best_p"
    assert all(s.comparison.expect == "greater" for s in out.values() if s.comparison is not None)
    f6 = out["F6-fewer-chunks"].comparison  # RAFT at the fewest chunks against the base at its best top-k
    assert f6.a == ch04.topk_outcome(f"RAFT, {p.n_distractors} distractors", min(p.top_ks))
    assert f6.b == ch04.topk_outcome(ch04.BASE_READER, min(p.top_ks))  # a flat base curve: its first top-k


def test_a_profile_the_plan_leaves_the_ablations_to_says_so_instead_of_measuring():
    """The cpu profile runs no ablation, top-k curve or PubMedQA (the plan's `profiles`): the sections
    return empty tables before training anything, and the metrics, comparisons and sentences say
    where those comparisons run."""
    p = config.resolve("04_raft", "cpu")
    assert ch04.not_here(p, ch04.ABLATION_COMPARISONS) and ch04.not_here(p, ch04.TOPK_COMPARISONS)
    assert ch04.not_here(p, ch04.PUBMEDQA_COMPARISONS) and not ch04.not_here(params(), ch04.ABLATION_COMPARISONS)
    ch, found = measured_chapter(params())
    ch.params = p
    before = {name: id(value) for name, value in vars(ch).items()}
    abl = ch04.ablations(ch, found.main)  # returns before `fit`: nothing here could train
    curves = ch04.top_k_curves(ch, found.main, abl)
    assert abl.empty and abl.d_table.empty and curves.empty and curves.contains.empty
    bench = ch04.pubmedqa(ch)
    assert "PubMedQA is not run in the cpu profile" in bench.notes[0] and not bench.rows
    assert {name: id(value) for name, value in vars(ch).items()} == before  # each section returns, none writes on ch
    found = ch04.Findings(found.main, abl, curves, bench)
    m = ch04.headline_metrics(ch, found)
    assert not {"raft_best_p", "ablation_n", "topk_n", "raft_topk_spread"} & set(m.metrics) and "raft_rag_acc" in m
    out = ch04.comparisons(ch, found)
    for cid in ("F2-best-p", "F5-distractors", "F5-topk-robust", "F6-fewer-chunks", "F3-pubmedqa"):
        assert out[cid].comparison is None and "smoke and gpu profiles measure it" in out[cid].missing, cid
    said = ch04.sentences(ch, found, m)
    assert said["p_sentence"] == "No P value is trained in this run" and "PubMedQA is not run" in said["pubmedqa_sentence"]
    assert "not measured in this run" in said["f5_spread_sentence"] == said["f6_tokens_sentence"]
    import matplotlib.pyplot as plt

    for fig in (plots.raft_ablations(abl.p_table, abl.d_table, abl.why), plots.raft_top_k(curves.curve, curves.why)):
        # a figure that says why, for the glue key
        assert "Not measured in this run" in " ".join(t.get_text() for t in fig.axes[0].texts)
        plt.close(fig)


def test_a_comparison_whose_raft_arm_missed_its_fitness_is_glued_as_not_fit(monkeypatch):
    """The chapter's prose says what the ledger will: RAFT below its fitness bar (this chapter's
    `raft_dev_fitness` 0) makes F3 and F4 "not decided: an arm did not reach its fitness" whatever
    the raw p; a comparison without that rule (K6, whose rule is chapter 3's) keeps its raw verdict."""
    from ragft import prose
    from ragft.stats import NOT_FIT

    glued = {}
    monkeypatch.setattr(prose, "glue", lambda key, value: glued.__setitem__(key, value))
    ch, found = measured_chapter(params())
    m = ch04.headline_metrics(ch, found)
    assert m["raft_dev_fitness"] == 0
    prose.glue_findings(m.metrics, ch04.comparisons(ch, found).values())
    assert glued["f4_cot_verdict"] == glued["f3_raft_vs_base_rag_verdict"] == NOT_FIT
    assert glued["f4_cot"].startswith(NOT_FIT + ": RAFT with the quote minus RAFT without it")
    assert glued["k6_ladder_verdict"] != NOT_FIT
    glued.clear()
    prose.glue_findings({**m.metrics, "raft_dev_fitness": 1}, ch04.comparisons(ch, found).values())
    assert glued["f4_cot_verdict"] != NOT_FIT


def test_f2_is_stated_when_p_one_was_trained():
    p = params(p_values=[0.0, 0.8, 1.0])
    ch, found = measured_chapter(p)
    out = ch04.comparisons(ch, found)
    assert out["F2-best-p"].comparison.a == "RAFT P=0.8" and out["F2-best-p"].comparison.b == "RAFT P=1"
    assert [c.claim for c in judged_of(out)].count("F2-best-p") == 1


def test_sentences_describe_without_verdicts():
    p = params()
    ch, found = measured_chapter(p)
    out = ch04.sentences(ch, found, ch04.headline_metrics(ch, found))
    assert "the one trained with 0 spans 0 points and the base reader spans 0 points" in out["f5_spread_sentence"]
    assert "no data folder" in out["pubmedqa_sentence"] and "no data folder" in out["hotpotqa_sentence"]
    assert "AUROC 0.50 (base closed)" in out["refusal_sentence"] and "chance" not in out["refusal_sentence"]
    assert "guessing ranks the gold first 25%" in out["scoring_sentence"]
    assert "(the same top-k: no chunks can be saved here)" in out["f6_tokens_sentence"]
    for sentence in out.values():
        assert not any(word in sentence for word in (" beats ", " better ", " ahead ", " worse "))


@pytest.mark.parametrize("quote, marker, acc, base_acc, met", [
    # the plan's d2 rule on 24 development replies: quote an oracle on at least 70 % (17 of 24 is 0.71),
    # reach the marker on at least 90 % (22 of 24 is 0.92), and rank above the base reader
    (17 / 24, 22 / 24, 0.6, 0.5, True),
    (16 / 24, 1.0, 0.9, 0.5, False),  # 16 of 24 quote: 0.67, under 70 %
    (1.0, 21 / 24, 0.9, 0.5, False),  # 21 of 24 reach the marker: 0.875, under 90 %
    (1.0, 1.0, 0.5, 0.5, False),  # level with the base reader is not beating it
])
def test_raft_fitness_needs_the_quote_and_the_marker_and_a_better_reader(quote, marker, acc, base_acc, met):
    # quote_marker (both in one reply) is reported beside them; the d2 rule does not read it
    assert ch04.RaftFitness(24, min(quote, marker), acc, base_acc, quote, marker).met is met


def test_the_development_table_has_a_row_for_each_raft_and_seed_it_trained():
    p = params()
    ch, found = measured_chapter(p)
    fit = lambda quote: ch04.RaftFitness(24, quote, 0.6, 0.5, quote, 1.0)  # noqa: E731
    trained = lambda n: {"examples": n, "train_tokens": 10 * n}  # noqa: E731
    # the pilot: the one RAFT, its fitness and training as the main table holds them
    main = dataclasses.replace(found.main, raft=SimpleNamespace(metrics=trained(2)), fitness=fit(0.75))
    (row,) = ch04.development_table(ch, main).to_dict("records")
    assert (row["reader"], row["seed"], row["n_train"], row["train_tokens"], row["met"]) == ("RAFT + RAG", p.seed, 2, 20, 1)
    # a seeded draw: each RAFT at each seed, the reader's on its own questions; a seed whose replies quote
    # on 16 of 24 (0.67, under the plan's 70 %) misses the bar alone
    main = dataclasses.replace(main, seed_fitness={"raft_rag": [fit(0.75), fit(16 / 24)], "reader_raft_rag": [fit(0.75)] * 2},
                               seed_training={"raft_rag": [trained(2)] * 2, "reader_raft_rag": [trained(5)] * 2})
    rows = ch04.development_table(ch, main)
    assert rows[["reader", "seed", "n_train", "met"]].values.tolist() == [
        ["RAFT + RAG", p.seed, 2, 1], ["RAFT + RAG", p.seed + 1, 2, 0],
        ["RAFT from documents + RAG", p.seed, 5, 1], ["RAFT from documents + RAG", p.seed + 1, 5, 1]]


def test_development_questions_never_share_a_fact_with_training():
    """Three facts besides the test ones: two train, so two development questions would take one of
    them; refused before any model reads."""
    fact = lambda i: SimpleNamespace(qid=f"f{i}", gold_sentences=[f"Fact {i} holds."], train_texts=[f"q{i}?"],
                                     test_text=f"Q{i}?", answer=str(i))
    others = [fact(i) for i in range(3)]
    chunks = [SimpleNamespace(text=f"Fact {i} holds.") for i in range(3)]
    p = params(n_train=2, n_dev=2)
    with pytest.raises(ValueError, match="n_train=2 and n_dev=2"):
        ch04.development_questions(None, None, chunks, others, {"f0", "f1"}, p)
