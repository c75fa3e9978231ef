"""The RAG layer: ingestion sync (idempotent, updates, deletes, reopen), a real Chroma server,
retrieval pieces, citations, refusal sweep, a reader's folder and questions file with bad input."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from ragft import rag
from ragft.corpus import build_kb
from ragft.corpus.kb import KBSizes
from ragft.rag import bench
from ragft.rag.sources import CorpusError, QAItem, Source
from ragft.rag.store import Hit

SMALL = KBSizes(n_series=3, models_per_series=2, n_people=6, n_sites=3, n_policies=2)


@pytest.fixture(scope="module")
def pages():
    return rag.kb_pages(build_kb(0, SMALL), docs_per_page=4)


def open_store(embed_model, folder, **kw):
    return rag.ChunkStore("kb-test", path=folder, embed_model=embed_model, chunk_size=128, chunk_overlap=16, **kw)


def chunk_ids(store):
    return set(store.collection.get(include=[])["ids"])


# ---------------------------------------------------------------------------------------------
# Ingestion


def test_ingest_is_idempotent_and_ids_are_stable(embed_model, pages, tmp_path):
    store = open_store(embed_model, tmp_path)
    first = store.ingest(pages)
    assert first.docs_added == len(pages) and first.chunks_added == store.count() > len(pages)
    ids = chunk_ids(store)
    again = store.ingest(pages)
    assert (again.chunks_added, again.chunks_deleted, again.docs_unchanged) == (0, 0, len(pages))
    assert chunk_ids(store) == ids
    meta = store.collection.get(limit=1, include=["metadatas"])["metadatas"][0]
    assert {"doc_id", "title", "version", "kind", "doc_hash"} <= set(meta)
    assert all(i.split("#")[0] in {p.doc_id for p in pages} for i in ids)


def test_changed_document_replaces_its_chunks_and_removed_one_is_deleted(embed_model, pages, tmp_path):
    store = open_store(embed_model, tmp_path)
    store.ingest(pages)
    before = chunk_ids(store)
    changed = replace(pages[0], text=pages[0].text.replace("sells for", "is priced at"))
    report = store.ingest([changed] + pages[2:])  # page 0 changed, page 1 removed
    assert report.docs_updated == 1 and report.docs_deleted == 1 and report.docs_unchanged == len(pages) - 2
    after = chunk_ids(store)
    assert not any(i.startswith(pages[1].doc_id + "#") for i in after)
    old0 = {i for i in before if i.startswith(pages[0].doc_id + "#")}
    assert old0 and not (old0 & after)
    assert {i.split("#")[1] for i in after if i.startswith(pages[0].doc_id + "#")} == {changed.content_hash}
    assert store.count() == len(store.split([changed] + pages[2:]))


def test_keep_protects_documents_that_could_not_be_read(embed_model, pages, tmp_path):
    store = open_store(embed_model, tmp_path)
    store.ingest(pages)
    n = store.count()
    report = store.ingest(pages[1:], keep={pages[0].doc_id})
    assert report.docs_deleted == 0 and store.count() == n


def test_index_reopens_from_disk_without_embedding(embed_model, pages, tmp_path):
    store = open_store(embed_model, tmp_path)
    store.ingest(pages)
    question = "How much does the " + pages[0].text.split("## ")[1].split(" ")[0]
    vector = [embed_model.get_query_embedding(question)]
    expected = [h.chunk_id for h in store.search(vector, 3)[0]]

    class NoEmbedding:  # any embedding call would fail the test
        model_name = embed_model.model_name
        _model = embed_model._model  # read for its window and tokenizer, never to embed

        def __getattr__(self, name):
            raise AssertionError(f"re-embedding on reopen: {name}")

    from chromadb.api.client import SharedSystemClient

    SharedSystemClient.clear_system_cache()
    reopened = rag.ChunkStore("kb-test", path=tmp_path, embed_model=NoEmbedding(), chunk_size=128, chunk_overlap=16)
    assert reopened.count() == store.count()
    assert [h.chunk_id for h in reopened.search(vector, 3)[0]] == expected
    index = store.as_llama_index()  # LlamaIndex reads the same collection back
    assert index.as_retriever(similarity_top_k=3).retrieve(question)[0].node.node_id == expected[0]


def test_reopening_with_another_chunk_size_is_refused(embed_model, pages, tmp_path):
    open_store(embed_model, tmp_path).ingest(pages[:1])
    with pytest.raises(ValueError, match="chunk_size"):
        rag.ChunkStore("kb-test", path=tmp_path, embed_model=embed_model, chunk_size=256, chunk_overlap=16)


def test_store_rejects_bad_settings(embed_model, tmp_path):
    with pytest.raises(ValueError, match="3-512"):
        rag.ChunkStore("ab", path=tmp_path, embed_model=embed_model)
    with pytest.raises(ValueError, match="chunk_overlap"):
        rag.ChunkStore("abc", path=tmp_path, embed_model=embed_model, chunk_size=64, chunk_overlap=64)
    with pytest.raises(ValueError, match="duplicate document ids"):
        rag.ChunkStore("abc", path=tmp_path, embed_model=embed_model).ingest([Source("a", "t", "x"), Source("a", "t", "y")])


def test_same_store_code_against_a_real_chroma_server(embed_model, pages, chroma_server):
    store = rag.ChunkStore("kb-server", host="127.0.0.1", port=chroma_server, embed_model=embed_model,
                           chunk_size=128, chunk_overlap=16)
    first = store.ingest(pages)
    assert first.chunks_added == store.count() > 0
    assert store.ingest(pages).chunks_added == 0
    retriever = rag.Retriever(store, embed_model)
    item = rag.kb_items(build_kb(0, SMALL).by_kind("single"))[0]
    hits = retriever.search([item.question], 5, "hybrid")[0]
    assert any(item.is_relevant(h.doc_id, h.text) for h in hits)


# ---------------------------------------------------------------------------------------------
# Retrieval and its measurements


def hit(cid, score=0.0, text="", doc="d"):
    return Hit(cid, doc, "", text, score)


def test_reciprocal_rank_fusion():
    fused = rag.fuse([[hit("a"), hit("b"), hit("c")], [hit("c"), hit("a")]], rrf_k=60)
    assert [h.chunk_id for h in fused] == ["a", "c", "b"]
    assert fused[0].score == pytest.approx(1 / 61 + 1 / 62)


def test_threshold_returns_nothing_under_it():
    hits = [hit("a", 0.42), hit("b", 0.30)]
    assert rag.above_threshold(hits, 0.4) == hits and rag.above_threshold(hits, 0.5) == []


def test_keyword_search_separates_look_alikes(embed_model, pages, tmp_path):
    store = open_store(embed_model, tmp_path)
    store.ingest(pages)
    retriever = rag.Retriever(store, embed_model)
    items = rag.kb_items(build_kb(0, SMALL).by_kind("single"))
    scores = rag.retrieval_scores(items, retriever.search([it.question for it in items], 5, "bm25"), [1, 5])
    assert scores["recall_at_5"] >= 0.8 and 0 < scores["mrr"] <= 1


def test_retrieval_scores_and_relevance():
    item = QAItem("q", "?", ("5 days",), gold_sentences=("Repairs take 5 days.",))
    ranked = [[hit("x", text="nothing here"), hit("y", text="Repairs   take 5 days. More.")]]
    assert rag.retrieval_scores([item], ranked, [1, 2]) == {"recall_at_1": 0.0, "recall_at_2": 1.0, "mrr": 0.5}
    by_doc = QAItem("q", "?", ("x",), gold_doc_ids=("p1",))
    assert by_doc.is_relevant("p1", "") and not by_doc.is_relevant("p2", "x")
    by_answer = QAItem("q", "?", ("Nine days",))
    assert by_answer.is_relevant("any", "They spend nine days there.")


def test_citations_are_parsed_and_scored():
    assert rag.parse_citations("the north gate [2] and [1, 3] but not [9]", 3) == [2, 1, 3]
    assert rag.strip_citations("the north gate [2]") == "the north gate"
    item = QAItem("q", "?", ("gate",), gold_sentences=("The gate is north.",))
    hits = [hit("a", text="other"), hit("b", text="The gate is north.")]
    from ragft.rag.evaluation import citation_scores

    assert citation_scores([item], [hits], ["north gate [2]"])["citation_accuracy"] == 1.0
    assert citation_scores([item], [hits], ["north gate [1]"])["citation_accuracy"] == 0.0


def test_refusal_sweep_counts():
    rows = rag.refusal_sweep(answerable=[0.9, 0.8, 0.4], unanswerable=[0.3, 0.5], thresholds=[0.45])
    r = rows[0]
    assert (r["refusal_recall"], r["answerable_refused"]) == (0.5, 1 / 3)
    assert r["refusal_precision"] == 0.5 and r["refusal_f1"] == pytest.approx(0.5)
    assert r["refusal_j"] == pytest.approx(0.5 - 1 / 3)
    # refusing everything: F1 above 0 (precision is the unanswerable share), J exactly 0
    everything = rag.refusal_sweep(answerable=[0.9, 0.8, 0.4], unanswerable=[0.3, 0.5], thresholds=[1.0])[0]
    assert everything["refusal_f1"] == pytest.approx(2 * 0.4 / 1.4) and everything["refusal_j"] == 0.0


def test_refusal_threshold_is_chosen_on_answerable_questions_alone():
    # ten development similarities; refusing under t refuses those below it. At most 10 % (one of
    # ten) may be refused: 0.45 refuses 0.3 only (10 %), 0.55 refuses 0.3 and 0.5 (20 %): 0.45
    sims = [0.3, 0.5, 0.6, 0.7, 0.7, 0.8, 0.8, 0.9, 0.9, 0.95]
    assert rag.threshold_for_false_refusals(sims, [0.55, 0.25, 0.45, 0.35], 0.1) == 0.45
    assert rag.threshold_for_false_refusals(sims, [0.25, 0.55], 0.0) == 0.25  # refuses none of them
    # every threshold refuses too many: the lowest, which refuses least
    assert rag.threshold_for_false_refusals([0.1, 0.1], [0.2, 0.3], 0.05) == 0.2
    with pytest.raises(ValueError, match="answerable development questions"):
        rag.threshold_for_false_refusals([], [0.2], 0.05)


def test_scale_benchmark_pieces(tmp_path):
    rng = np.random.default_rng(0)
    real = bench.normalize_rows(rng.standard_normal((60, 16)).astype(np.float32))
    fillers = bench.filler_vectors(real, 500, seed=1)
    assert fillers.shape == (500, 16) and np.allclose(np.linalg.norm(fillers, axis=1), 1, atol=1e-5)
    assert np.array_equal(fillers, bench.filler_vectors(real, 500, seed=1))
    q = real[3]
    assert bench.exact_top_k(real, q, 5)[0] == 3
    rows, sweep, stats = bench.scale_benchmark(real, real[:5], [100, 300], k=5, ef_search=[50, 100], folder=tmp_path)
    assert [r["chunks"] for r in rows] == [100, 300] and all(r["hnsw_recall_at_5"] >= 0.8 for r in rows)
    assert [r["ef_search"] for r in sweep] == [50, 100] and 0 < stats["filler_nn_similarity"] <= 1


# ---------------------------------------------------------------------------------------------
# A reader's documents and questions


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def test_folder_with_bad_files_lists_what_it_skipped(tmp_path):
    write(tmp_path / "a.md", "# Alpha\n\nThe alpha gate opens at nine.")
    write(tmp_path / "sub" / "b.txt", "Beta text.")
    write(tmp_path / "c.html", "<html><head><title>Gamma</title><script>var x;</script></head><body><p>Gamma body</p></body></html>")
    write(tmp_path / "copy.md", "# Alpha\n\nThe alpha gate opens at nine.\n")
    write(tmp_path / "bin.txt", b"\x00\x01\x02binary")
    write(tmp_path / "latin1.txt", "caf\xe9".encode("latin-1"))
    write(tmp_path / "empty.md", "   \n")
    write(tmp_path / "big.txt", "x" * 3000)
    write(tmp_path / "report.pdf", b"%PDF-1.4")
    write(tmp_path / ".hidden" / "x.md", "hidden")
    corpus = rag.load_folder(tmp_path, max_file_mb=0.002)
    assert sorted(s.doc_id for s in corpus.sources) == ["a.md", "c.html", "sub/b.txt"]
    reasons = {s.path: s.reason for s in corpus.skipped}
    assert "duplicate of a.md" in reasons["copy.md"]
    assert "binary" in reasons["bin.txt"] and "UTF-8" in reasons["latin1.txt"] and reasons["empty.md"] == "empty"
    assert "too large" in reasons["big.txt"] and "unsupported" in reasons["report.pdf"]
    html = next(s for s in corpus.sources if s.doc_id == "c.html")
    assert html.title == "Gamma" and "Gamma body" in html.text and "var x" not in html.text
    assert next(s for s in corpus.sources if s.doc_id == "a.md").title == "Alpha"
    assert list(corpus.skipped_table().columns) == ["path", "reason"]
    assert reasons[".hidden"] == "hidden folder: not read"


def test_the_corpus_folder_is_a_boundary(tmp_path):
    """A link to /etc/passwd inside the folder was indexed as passwd.txt: links that leave the folder,
    dangling links and hidden files are skipped, each with its reason; a link inside it is read."""
    docs = tmp_path / "docs"
    write(docs / "a.md", "# Alpha\n\nThe alpha gate opens at nine.")
    write(tmp_path / "secret.txt", "outside the corpus")
    (docs / "passwd.txt").symlink_to(tmp_path / "secret.txt")
    (docs / "gone.md").symlink_to(docs / "missing.md")
    (docs / "alias.md").symlink_to(docs / "a.md")  # inside: read (and then a duplicate of a.md)
    (docs / "outside").symlink_to(tmp_path, target_is_directory=True)
    write(docs / ".notes.md", "private")
    corpus = rag.load_folder(docs)
    assert [s.doc_id for s in corpus.sources] == ["a.md"]
    reasons = {s.path: s.reason for s in corpus.skipped}
    assert reasons["passwd.txt"] == "a link to a file outside the corpus folder: not read"
    assert reasons["gone.md"].startswith("a link to nothing") and reasons[".notes.md"] == "hidden file: not read"
    assert reasons["outside"].startswith("a link to a folder: not followed") and "duplicate of a.md" in reasons["alias.md"]


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusError, match="no usable document"):
        rag.load_folder(tmp_path)
    write(tmp_path / "x.pdf", b"%PDF")
    with pytest.raises(CorpusError, match="x.pdf: unsupported"):
        rag.load_folder(tmp_path)
    with pytest.raises(CorpusError, match="not a folder"):
        rag.load_folder(tmp_path / "nope")


def test_a_file_going_bad_loses_nothing_already_indexed(embed_model, tmp_path):
    docs = tmp_path / "docs"
    write(docs / "a.md", "# A\n\nThe alpha gate opens at nine.")
    write(docs / "b.md", "# B\n\nThe beta gate opens at ten.")
    store = rag.ChunkStore("own-docs", path=tmp_path / "db", embed_model=embed_model, chunk_size=128, chunk_overlap=16)
    corpus = rag.load_folder(docs)
    store.ingest(corpus.sources, keep={s.path for s in corpus.skipped})
    n = store.count()
    write(docs / "b.md", "caf\xe9".encode("latin-1"))  # now unreadable
    corpus = rag.load_folder(docs)
    report = store.ingest(corpus.sources, keep={s.path for s in corpus.skipped})
    assert report.docs_deleted == 0 and store.count() == n


def test_questions_file(tmp_path):
    good = write(tmp_path / "q.jsonl", "\n".join([
        json.dumps({"id": "a", "question": "Where?", "answers": ["north"], "doc_id": "a.md"}),
        json.dumps({"question": "When?", "answers": ["nine"]}), "",
        json.dumps({"question": "Unknown?", "answers": []})]))
    items = rag.load_questions(good)
    assert [(i.qid, i.answers, i.kind) for i in items] == [("a", ("north",), "single"), ("q2", ("nine",), "single"),
                                                         ("q4", (), "unanswerable")]
    assert items[0].gold_doc_ids == ("a.md",)
    cases = {"not JSON": "{nope", 'no "question"': json.dumps({"answers": ["x"]}),
             "must be a list of strings": json.dumps({"question": "Q?", "answers": [1]}), "holds no question": "",
             # README's format is a list: one string is refused with the list to write (issue 51)
             r'is one string, .nine.: give a list, \["nine"\]': json.dumps({"question": "When?", "answers": "nine"})}
    for message, text in cases.items():
        with pytest.raises(CorpusError, match=message):
            rag.load_questions(write(tmp_path / "bad.jsonl", text))
    with pytest.raises(CorpusError, match="does not exist"):
        rag.load_questions(tmp_path / "missing.jsonl")


def test_sample_folder_ships_with_the_book():
    corpus = rag.load_folder(ROOT / "data" / "sample_docs")
    assert {s.kind for s in corpus.sources} == {"md", "txt", "html"}
    assert [s.reason.split(" of ")[0] for s in corpus.skipped] == ["duplicate"]
    assert rag.load_questions(ROOT / "data" / "sample_questions.jsonl")


def test_rag_parameters_are_validated(tmp_path):
    from ragft.config import ParamError, resolve

    assert resolve("02_rag", "smoke").chunk_sizes
    bad = {"chunk_sizes": [0], "chunk_overlap": 500, "top_ks": [], "retrieval": "sparse", "n_scored_questions": 21,
           "corpus_dir": str(tmp_path / "missing"), "questions_file": str(tmp_path / "missing.jsonl"),
           "max_file_mb": 0, "chroma_port": 0, "scale_sizes": [10]}
    for name, value in bad.items():
        with pytest.raises(ParamError, match=name):
            resolve("02_rag", "smoke", **{name: value})


def test_a_questions_file_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_bytes("\ufeff".encode("utf-8") + json.dumps({"question": "Where?", "answers": ["north"]}).encode("utf-8"))
    (item,) = rag.load_questions(path)
    assert item.question == "Where?" and item.answers == ("north",)


def test_hybrid_returns_the_top_k_asked_for_above_its_pool(monkeypatch):
    """own_top_k 50 returned 20 before: the fused pool is at least k deep."""
    from ragft.rag.retrieve import Retriever

    retriever = Retriever.__new__(Retriever)
    ranked = lambda questions, k, **kw: [[hit(f"c{i}") for i in range(k)] for _ in questions]  # noqa: E731
    monkeypatch.setattr(retriever, "dense", ranked, raising=False)
    monkeypatch.setattr(retriever, "keyword", ranked, raising=False)
    assert len(retriever.hybrid(["q"], 50)[0]) == 50 and len(retriever.hybrid(["q"], 5)[0]) == 5
