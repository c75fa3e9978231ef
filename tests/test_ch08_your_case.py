"""Chapter 8, your own case: inputs refused before any model loads, the split by document, the case's
family apart from the book's, the closing words; and (notebooks) papermill on a small invented
corpus written for these tests (tests/fixtures/case, not the sample), read back."""

import json
import shutil

import pytest

from conftest import ROOT
from ragft import config
from ragft.experiments import ch08_your_case as ch08
from ragft.rag import CorpusError

CASE = ROOT / "tests" / "fixtures" / "case"


def params(**overrides):
    base = dict(corpus_dir=str(CASE / "docs"), questions_file=str(CASE / "questions.jsonl"),
                train_questions_file=str(CASE / "train_questions.jsonl"), min_dev=2, min_test=4)
    return config.resolve("08_your_case", "smoke", **{**base, **overrides})


def test_the_split_keeps_whole_documents_apart_and_finds_sources_from_answers():
    inputs = ch08.read_inputs(params(max_questions=0))
    # 12 questions, 4 per document; dev_share 0.4 wants >= 4.8 development questions: two documents
    # (8 questions) go to development, the last one (4) to test
    assert (len(inputs.dev), len(inputs.test), len(inputs.train)) == (8, 4, 12)
    assert not set(inputs.dev_docs) & set(inputs.test_docs)
    assert {inputs.sources[it.qid] for it in inputs.test} == set(inputs.test_docs)
    # the training questions name no doc_id: their source is the document that holds the answer
    assert inputs.train_sources["t-orchard-dog"] == "orchard.txt" and inputs.train_sources["t-mill-loft"] == "mill.md"
    again = ch08.read_inputs(params(max_questions=0))
    assert [it.qid for it in again.test] == [it.qid for it in inputs.test]  # seeded: the same split
    assert ch08.read_inputs(params(seed=1)).test_docs != () and len(ch08.read_inputs(params(max_questions=8)).train) == 8


def test_training_questions_may_reuse_the_judged_questions_ids(tmp_path):
    """Two files, two id spaces: a training file whose ids repeat the judged file's for other facts
    (chapter 2's default ids are q1, q2 ... in both) keeps each question's own source document."""
    judged = [json.loads(line)["id"] for line in (CASE / "questions.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (CASE / "train_questions.jsonl").read_text().splitlines()]
    tfile = tmp_path / "t.jsonl"  # training row i takes the id of judged row i + 4: a fact of the next document
    tfile.write_text("".join(json.dumps({**r, "id": judged[(i + 4) % 12]}) + "\n" for i, r in enumerate(rows)))
    base, other = ch08.read_inputs(params()), ch08.read_inputs(params(train_questions_file=str(tfile)))
    assert other.sources == base.sources and other.test_docs == base.test_docs
    assert other.train_sources[judged[4]] == "bakery.md" and base.sources[judged[4]] == "orchard.txt"


@pytest.mark.parametrize("case, match", [
    ("empty folder", "holds no usable document"),
    ("answer in no document", "appear in no document .*bakery-open"),
    ("too few questions", "too few questions for a split by document: 3 answerable"),
    ("test question trained on", "word for word"),
    ("own corpus, no questions", "questions_file is empty"),
])
def test_bad_inputs_are_refused_before_any_model_loads(tmp_path, case, match):
    docs = tmp_path / "docs"
    shutil.copytree(CASE / "docs", docs)
    rows = [json.loads(line) for line in (CASE / "questions.jsonl").read_text().splitlines()]
    qfile, tfile = tmp_path / "q.jsonl", tmp_path / "t.jsonl"
    write = lambda path, rs: path.write_text("".join(json.dumps(r) + "\n" for r in rs))  # noqa: E731
    write(qfile, rows)
    write(tfile, [{**r, "id": "t-" + r["id"], "question": r["question"] + " (in other words)"} for r in rows])
    overrides = {"corpus_dir": str(docs), "questions_file": str(qfile), "train_questions_file": str(tfile)}
    if case == "empty folder":
        shutil.rmtree(docs)
        docs.mkdir()
    elif case == "answer in no document":
        write(qfile, [{**rows[0], "answers": ["07:30"]}, *rows[1:]])
    elif case == "too few questions":
        write(qfile, rows[:3])
    elif case == "test question trained on":
        write(tfile, rows[:2])
    else:
        overrides["questions_file"] = ""
    with pytest.raises(CorpusError, match=match):
        ch08.read_inputs(params(**overrides))


def test_bad_parameters_are_refused_by_name():
    with pytest.raises(config.ParamError, match="dev_share"):
        params(dev_share=0.95)
    with pytest.raises(config.ParamError, match="dsf_epochs"):
        params(dsf_epochs=[4, 2])
    with pytest.raises(config.ParamError, match="serving_price"):
        params(serving_price="no-such-row")


def test_the_case_comparisons_are_a_family_of_their_own():
    from ragft.plan import BOOK, CASE as FAMILY, adjust, the_plan

    plan = the_plan()
    assert set(plan.members(FAMILY)) == set(ch08.COMPARISONS)
    assert not set(plan.members(BOOK)) & set(ch08.COMPARISONS)
    for cid in ch08.COMPARISONS:  # every condition is one of the chapter's declared arms
        assert {plan.get(cid).a, plan.get(cid).b} <= set(ch08.ARMS)

    def c(cid, p):
        return {"claim": cid, "role": "primary", "test": "paired", "p": p, "diff": 0.2, "expect": "greater",
                "bound": None, "margin": 0.0}

    book = c("K3-rag-vs-ft", 0.01)
    out = {x["claim"]: x for x in adjust([c("Y-rag-vs-base", 0.01), c("Y-dsf-vs-base", 0.04), book], family=FAMILY)}
    # Holm over the case's two: 0.01 x 2 = 0.02, then max(0.02, 0.04 x 1) = 0.04; the book's untouched
    assert out["Y-rag-vs-base"]["p_adjusted"] == pytest.approx(0.02)
    assert out["Y-dsf-vs-base"]["p_adjusted"] == pytest.approx(0.04)
    assert "p_adjusted" not in out["K3-rag-vs-ft"]


def test_the_ledger_leaves_a_readers_case_out_of_the_books_family():
    from ragft import verdict

    doc = {"outcomes": {ch08.RAG: {"a": 1.0, "b": 1.0}, ch08.BASE: {"a": 0.0, "b": 0.0}}, "profile": "cpu"}
    from ragft.plan import judge

    doc["comparisons"] = [judge("Y-rag-vs-base", doc["outcomes"]).as_dict()]
    assert verdict.family({ch08.CHAPTER: doc}) == {}


def test_headline_says_undecided_with_the_questions_that_would_decide():
    import pandas as pd

    scores = pd.DataFrame({"contains": [0.2, 0.5]}, index=[ch08.LABELS[ch08.BASE], ch08.LABELS[ch08.RAG]])
    c = {"claim": "Y-rag-vs-base", "a": ch08.RAG, "b": ch08.BASE, "verdict": "not decided at this n", "n": 10,
         "n_needed": 123}
    j = ch08.Judged(scores, [c], {})
    assert ch08.headline(j) == {"case_best_arm": "base + RAG", "case_best_sure":
                                "not decided against base, closed book at n = 10: about 123 test questions would decide"}
    j.comparisons = [{**c, "verdict": "supported"}, {**c, "claim": "Y-dsf-rag-vs-rag", "a": ch08.DSF_RAG, "b": ch08.RAG,
                                                     "verdict": "not decided: an arm did not reach its fitness"}]
    assert ch08.headline(j)["case_best_sure"] == ("better than base, closed book after the adjustment; against DSF + RAG: "
                                                  "not decided: an arm did not reach its fitness")


@pytest.mark.notebooks
def test_your_case_runs_a_new_corpus_end_to_end_with_papermill(tmp_path, monkeypatch):
    """`papermill chapters/08_your_case.ipynb out.ipynb -p corpus_dir <folder> -p questions_file <file>`
    on the invented test corpus, offline, at the smallest sizes: the estimate printed first, every arm
    scored, the comparisons, the cost table, the closing table; a refusal names what is missing."""
    import papermill as pm

    monkeypatch.setenv("RAGFT_RUN_DIR", str(tmp_path / "run"))  # the kernel inherits it
    case = {"profile": "smoke", "corpus_dir": str(CASE / "docs"), "questions_file": str(CASE / "questions.jsonl"),
            "train_questions_file": str(CASE / "train_questions.jsonl"), "max_questions": 0, "top_ks": [1],
            "dsf_epochs": [1], "train_on_documents": False, "queries_per_month": 2e6}
    nb = pm.execute_notebook(str(ROOT / "chapters" / "08_your_case.ipynb"), str(tmp_path / "out.ipynb"),
                             parameters=case, kernel_name="python3", cwd=str(ROOT / "chapters"), progress_bar=False)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    printed = [o.get("text", "") for o in outputs if o.get("output_type") == "stream"]
    assert printed and printed[0].startswith("Training estimate: about")  # said before anything trains
    shown = "\n".join(o.get("data", {}).get("text/html", "") for o in outputs)
    for label in ch08.LABELS.values():
        assert label in shown
    assert "per month ($)" in shown and "against base + RAG" in shown and "Holm-adjusted p" in shown
    doc = json.loads((tmp_path / "run" / "results" / "08_your_case.json").read_text())
    assert doc["params"]["corpus_dir"] == str(CASE / "docs") and doc["metrics"]["case_n_test"] == 4
    assert set(doc["outcomes"]) >= set(ch08.ARMS) and all(len(doc["outcomes"][a]) == 4 for a in ch08.ARMS)
    assert {c["claim"] for c in doc["comparisons"]} == set(ch08.COMPARISONS)
    assert all(c["p_adjusted"] >= c["p"] for c in doc["comparisons"])
    # the reader's volume reaches the costs: twice chapter 6's default 1 M queries
    assert [r["arm"] for r in doc["tables"]["costs"]] == [ch08.LABELS[a] for a in ch08.ARMS]
    assert doc["metrics"]["case_rag_monthly_usd"] > doc["metrics"]["case_base_monthly_usd"]
    with pytest.raises(pm.PapermillExecutionError, match="too few questions"):
        pm.execute_notebook(str(ROOT / "chapters" / "08_your_case.ipynb"), str(tmp_path / "bad.ipynb"),
                            parameters={**case, "max_questions": 3}, kernel_name="python3",
                            cwd=str(ROOT / "chapters"), progress_bar=False)


def test_the_training_plan_keeps_what_fits_the_token_budget():
    # everything fits: 1,000 x 12 + 500 x 2 = 13,000 <= 100,000
    assert ch08.training_plan(1_000, 500, [4, 8, 12], 2, 100_000) == ((4, 8, 12), 2, "")
    # a reader's 30,000-token corpus: 36,000 x 12 + 34,000 x 2 = 500,000 against 300,000, f = 0.6:
    # checkpoints up to 0.6 x 12 = 7.2 epochs (4), floor(0.6 x 2) = 1 RAFT epoch
    kept, raft_kept, said = ch08.training_plan(36_000, 34_000, [4, 8, 12], 2, 300_000)
    assert (kept, raft_kept) == ((4,), 1) and "keeps the fine-tune's checkpoints [4] of [4, 8, 12]" in said
    # nothing fits: the first checkpoint and one RAFT epoch all the same (said)
    assert ch08.training_plan(36_000, 34_000, [4, 8], 3, 1_000)[:2] == ((4,), 1)
