"""Benchmark loaders: the exact schemas (fixtures), the real files the repository carries, and clear absence."""

import pytest

from conftest import BENCHMARKS, FIXTURES
from ragft import settings
from ragft.corpus import benchmarks as b


def test_squad_fixture():
    items, corpus = b.load_squad(str(FIXTURES))
    assert len(items) == 4 and len(corpus) == 3
    assert items[0].answers == ["1204", "1204"] and items[0].gold_pids == {items[0].passages[0].pid}
    assert items[0].passages[0] is items[1].passages[0]  # one corpus entry per paragraph


def test_squad_articles_fixture_spans_point_at_the_answers():
    town, island = b.load_squad_articles(str(FIXTURES))
    assert town.title == "Fictional Town" and [q.qid for q in town.questions] == ["q1", "q2", "q3"]
    # the second paragraph starts after the first (72 characters) and the blank line: 74
    assert town.text.index("The Ald flows") == 74
    (start, end), = town.questions[2].spans  # "the Northern Sea" at 19 in its paragraph
    assert (start, end) == (74 + 19, 74 + 19 + 16) and town.text[start:end] == "the Northern Sea"
    assert town.questions[0].spans == ((56, 60),)  # two annotators, one span
    assert island.questions[0].answers == ("1871",)


def test_pubmedqa_fixture_uses_official_split():
    items = {x.qid: x for x in b.load_pubmedqa(str(FIXTURES))}
    assert items["1001"].split == "test" and items["1002"].split == "train"
    assert items["1003"].answers == ["maybe"] and len(items["1003"].passages) == 3


def test_hotpotqa_fixture_reads_both_schemas_and_deduplicates():
    items = {x.qid: x for x in b.load_hotpotqa(str(FIXTURES))}
    assert set(items) == {"h1", "h2"}  # h1 appears in both files and is kept once (the first)
    h1, h2 = items["h1"], items["h2"]
    assert h1.question.startswith("Which river") and len(h1.gold_pids) == 2 and len(h1.passages) == 3
    assert h1.gold_sentences == ["It was founded by weavers in 1204.", "The Ald runs through Brockmere."]
    assert h2.answers == ["Tutu"] and len(h2.passages) == 3 and h2.gold_sentences == ["It is on Tutu.", "Tutu is an island."]
    assert h1.split == h2.split == "test"  # each file's first question; splits alternate within a file


def test_nq_fixture():
    (item,) = b.load_nq_open(str(FIXTURES))
    assert item.answers == ["weavers", "the weavers"] and item.gold_pids == {item.passages[0].pid}


@pytest.mark.parametrize("loader", [b.load_squad, b.load_pubmedqa, b.load_hotpotqa, b.load_nq_open])
def test_absent_data_gives_a_clear_message(loader, tmp_path, monkeypatch):
    monkeypatch.setenv("RAGFT_ONLINE", "0")
    monkeypatch.delenv("RAGFT_DATA_DIR", raising=False)
    monkeypatch.setattr(settings, "BUNDLED_DATA", tmp_path / "not-carried")  # a package installed without the repository
    with pytest.raises(b.DataUnavailable, match="RAGFT_DATA_DIR"):
        loader(str(tmp_path))
    with pytest.raises(b.DataUnavailable, match="no data folder is set"):
        loader(None)
    assert b.available(str(tmp_path)) == dict.fromkeys(b.BENCHMARKS, False)


def test_the_repository_carries_the_benchmarks_and_reads_them_by_default(monkeypatch):
    """A clone needs nothing beside it: data/benchmarks is the default folder, and every file there
    has the checksum its README (and SHA256SUMS) gives, so it is byte-identical to the source's."""
    import hashlib

    monkeypatch.delenv("RAGFT_DATA_DIR", raising=False)
    assert settings.data_dir() == BENCHMARKS and b.available() == dict.fromkeys(b.BENCHMARKS, True)
    sums = dict(line.split()[::-1] for line in (BENCHMARKS / "SHA256SUMS").read_text().splitlines())
    carried = {str(p.relative_to(BENCHMARKS)) for p in BENCHMARKS.rglob("*") if p.suffix in (".gz", ".json")}
    assert set(sums) == carried == {f for files in b._FILES.values() for f in files}
    for name, digest in sums.items():
        assert hashlib.sha256((BENCHMARKS / name).read_bytes()).hexdigest() == digest, name
        assert digest in (BENCHMARKS / name.split("/")[0] / "README.md").read_text(), f"{name}: its README gives another checksum"


def test_real_files_have_the_documented_counts():
    items, corpus = b.load_squad(str(BENCHMARKS))
    assert (len(items), len(corpus)) == (10570, 2067)
    pub = b.load_pubmedqa(str(BENCHMARKS))
    assert len(pub) == 1000 and sum(x.split == "test" for x in pub) == 500
    hot = b.load_hotpotqa(str(BENCHMARKS))
    assert len(hot) == 203 and all(len(x.gold_pids) == 2 for x in hot)
    # both files give half their questions to each split, and no question is in both
    assert sum(x.split == "test" for x in hot) == 102 and len({x.question for x in hot}) == 203
    assert len(b.load_nq_open(str(BENCHMARKS))) == 2655


def test_known_questions_take_look_alikes_from_questions_of_their_kind():
    from types import SimpleNamespace

    from ragft.corpus.known import ranked_questions

    items = [SimpleNamespace(qid=f"q{i}", question=q, answers=[a]) for i, (q, a) in enumerate([
        ("who wrote hamlet", "William Shakespeare"), ("who painted the mona lisa", "Leonardo da Vinci"),
        ("who discovered penicillin", "Alexander Fleming"), ("who invented the telephone", "Alexander Graham Bell"),
        ("when did the titanic sink", "1912"), ("where is the eiffel tower", "Paris"),
        ("who is the author of the book who", "who"),  # the answer is in the question: not usable
        ("what is the capital of peru", "Lima"),  # no question word of the four: not usable
        ("who wrote a very long answer", "one two three four five six")])]  # over four words
    out = ranked_questions(items, 10, k=3, seed=0)
    # from the end of the file backwards; "when" and "where" have too few of their kind for 3 look-alikes
    assert [q.qid for q in out] == ["q3", "q2", "q1", "q0"]
    for q in out:
        gold = next(i for i in items if i.qid == q.qid).answers[0]
        assert q.candidates[q.gold] == gold and len(set(q.candidates)) == 4
        assert set(q.candidates) <= {"William Shakespeare", "Leonardo da Vinci", "Alexander Fleming", "Alexander Graham Bell"}
    assert ranked_questions(items, 10, k=3, seed=0) == out  # reproducible
    with pytest.raises(ValueError, match="at least one"):
        ranked_questions(items, 0)
