"""Every bad input tried on the library's public entry points, as a table: each must fail at once with
a clear error that names the argument (and, for files, the file and line), never deep inside.
Add a row when a new bad input is found."""

import json

import pytest

from ragft import config, models
from ragft.config import ParamError
from ragft.corpus import build_kb
from ragft.corpus.kb import KBSizes
from ragft.rag import CorpusError, load_folder, load_questions


def _file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def _questions(tmp_path, *rows):
    return _file(tmp_path, "q.jsonl", "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows))


# (case, call, exception, the message must match)
CASES = [
    ("kb seed is text", lambda tmp: build_kb("abc"), ValueError, r"seed='abc'.*integer >= 0"),
    ("kb seed is a fraction", lambda tmp: build_kb(1.5), ValueError, r"seed=1.5"),
    ("kb seed is negative", lambda tmp: build_kb(-1), ValueError, r"seed=-1"),
    ("kb seed is a boolean", lambda tmp: build_kb(True), ValueError, r"seed=True"),
    ("kb sizes are a dict", lambda tmp: build_kb(0, {"n_series": 3}), TypeError, r"sizes=.*KBSizes"),
    ("kb size out of range", lambda tmp: KBSizes(n_series=0), ValueError, r"kb.n_series=0"),
    ("kb version", lambda tmp: build_kb(0, version="v3"), ValueError, r"version='v3'"),
    ("question kind", lambda tmp: build_kb(0).sample("trivia", 3, 0), ValueError, r"kind='trivia'"),
    ("question count", lambda tmp: build_kb(0).sample("single", -2, 0), ValueError, r"n=-2"),
    ("answers is a number", lambda tmp: load_questions(_questions(tmp, {"question": "Q?", "answers": 45})),
     CorpusError, r'q.jsonl line 1: "answers" must be a list of strings, not 45'),
    ("doc_id is a number", lambda tmp: load_questions(_questions(tmp, {"question": "Q?", "answers": ["a"], "doc_id": 5})),
     CorpusError, r'line 1: "doc_id"'),
    ("repeated question id", lambda tmp: load_questions(_questions(tmp, {"id": "a", "question": "Q?", "answers": []},
                                                                      {"id": "a", "question": "R?", "answers": []})),
     CorpusError, r"line 2 repeats the id 'a' of line 1"),
    ("questions file in Latin-1", lambda tmp: load_questions(_file(tmp, "q.jsonl", '{"question": "Où?"}'.encode("latin-1"))),
     CorpusError, r"q.jsonl is not UTF-8"),
    ("questions line not JSON", lambda tmp: load_questions(_questions(tmp, {"question": "Q?", "answers": []}, "{nope")),
     CorpusError, r"q.jsonl, line 2: not JSON"),
    ("question missing", lambda tmp: load_questions(_questions(tmp, {"answers": ["x"]})), CorpusError, r'line 1 has no "question"'),
    # a misspelt or missing "answers" would read as an unanswerable question, scored on refusing
    ("answers misspelt", lambda tmp: load_questions(_questions(tmp, {"question": "Q?", "anwsers": ["x"]})), CorpusError,
     r"q.jsonl line 1 has unknown keys 'anwsers' \(did you mean 'answers'\?\)"),
    ("answers missing", lambda tmp: load_questions(_questions(tmp, {"question": "Q?"})), CorpusError,
     r'q.jsonl line 1 has no "answers".*"answers": \[\] for a question'),
    ("unknown key", lambda tmp: load_questions(_questions(tmp, {"question": "Q?", "answers": [], "source": "x"})),
     CorpusError, r"unknown keys 'source'"),
    ("question is a number", lambda tmp: load_questions(_questions(tmp, {"question": 5, "answers": ["x"]})), CorpusError,
     r'line 1: "question" must be text, not 5'),
    ("empty answer", lambda tmp: load_questions(_questions(tmp, {"question": "Q?", "answers": [""]})), CorpusError,
     r"line 1: an empty answer can never be matched"),
    ("doc_id not in the corpus", lambda tmp: load_questions(_questions(tmp, {"question": "Q?", "answers": ["x"], "doc_id": "b.md"}),
                                                             {"a.md"}), CorpusError, r"'b.md' names no indexed document"),
    ("doc_id of a skipped file", lambda tmp: load_questions(_questions(tmp, {"question": "Q?", "answers": ["x"], "doc_id": "c.md"}),
                                                             {"a.md"}, {"c.md": "duplicate of a.md"}), CorpusError,
     r"it was skipped \(duplicate of a.md\)"),
    ("questions file missing", lambda tmp: load_questions(tmp / "none.jsonl"), CorpusError, r"does not exist"),
    ("corpus folder missing", lambda tmp: load_folder(tmp / "none"), CorpusError, r"corpus_dir=.* is not a folder"),
    ("corpus folder unusable", lambda tmp: load_folder(_file(tmp, "a.bin", b"\x00\x01").parent), CorpusError,
     r"holds no usable document \(a.bin: unsupported type"),
    ("data_dir missing", lambda tmp: config.resolve("02_rag", "smoke", data_dir=str(tmp / "none")), ParamError,
     r"data_dir=.*use an existing folder"),
    ("corpus_dir missing", lambda tmp: config.resolve("02_rag", "smoke", corpus_dir=str(tmp / "none")), ParamError,
     r"corpus_dir=.*use an existing folder"),
    ("questions_file missing", lambda tmp: config.resolve("02_rag", "smoke", questions_file=str(tmp / "q.jsonl")),
     ParamError, r"questions_file=.*use an existing file"),
    ("a list passed with -p", lambda tmp: config.resolve("01_prompting", "smoke", few_shot_ks="[0, 1]"), ParamError,
     r"few_shot_ks=.*give a list with -y"),
    ("unknown notebook parameter", lambda tmp: config.from_notebook("02_rag", {"max_fil_mb": 3}), ParamError,
     r"unknown parameter\(s\) \['max_fil_mb'\].*it takes"),
    ("seed is a fraction", lambda tmp: config.resolve("01_prompting", "smoke", seed=1.5), ParamError, r"seed=1.5"),
    ("seed is a boolean", lambda tmp: config.resolve("01_prompting", "smoke", seed=True), ParamError, r"seed=True"),
    ("an integer given as True", lambda tmp: config.resolve("02_rag", "smoke", own_top_k=True), ParamError, r"own_top_k=True"),
    # a repeated list entry would run (or train) the same condition twice
    ("repeated chunk size", lambda tmp: config.resolve("02_rag", "smoke", chunk_sizes=[128, 128]), ParamError,
     r"chunk_sizes=.*list each value once \(repeated: 128\)"),
    # a chunk the embedder would cut: MiniLM reads 512 positions, two of them its special tokens
    ("chunk size above the embedder's window", lambda tmp: config.resolve("02_rag", "smoke", chunk_sizes=[128, 1024]),
     ParamError, r"chunk_sizes=\[128, 1024\].*reads at most 510 tokens"),
    ("SQuAD chunk size above the window", lambda tmp: config.resolve("02_rag", "smoke", squad_chunk_sizes=[64, 512]),
     ParamError, r"squad_chunk_sizes=.*at most 510"),
    ("your chunk size above the window", lambda tmp: config.resolve("02_rag", "smoke", own_chunk_size=511), ParamError,
     r"own_chunk_size=511.*at most 510"),
    ("RAFT's chunk size above the window", lambda tmp: config.resolve("04_raft", "smoke", chunk_size=1024), ParamError,
     r"chunk_size=1024.*at most 510"),
    ("PubMedQA's chunk size above the window", lambda tmp: config.resolve("04_raft", "smoke", pubmedqa_chunk_size=600),
     ParamError, r"pubmedqa_chunk_size=600.*at most 510"),
    ("freshness chunk size above the window", lambda tmp: config.resolve("05_freshness", "smoke", chunk_size=700),
     ParamError, r"chunk_size=700.*at most 510"),
    ("repeated top-k", lambda tmp: config.resolve("02_rag", "smoke", top_ks=[1, 3, 1]), ParamError, r"top_ks=.*repeated: 1"),
    ("repeated method", lambda tmp: config.resolve("03_finetune", "smoke", methods=["lora", "lora"]), ParamError,
     r"methods=.*repeated: 'lora'"),
    ("repeated section", lambda tmp: config.resolve("02_rag", "smoke", sections=["own_documents", "own_documents"]),
     ParamError, r"sections=.*repeated"),
    ("overlap not below your chunk size", lambda tmp: config.resolve("02_rag", "smoke", chunk_overlap=64, own_chunk_size=64),
     ParamError, r"chunk_overlap=64"),
    ("infinite months", lambda tmp: config.resolve("06_cost", "smoke", training_life_months=float("inf")), ParamError,
     r"training_life_months=inf.*finite"),
    ("not-a-number file size", lambda tmp: config.resolve("02_rag", "smoke", max_file_mb=float("nan")), ParamError,
     r"max_file_mb=nan"),
    ("profile unknown", lambda tmp: config.resolve("01_prompting", "laptop"), ParamError, r"profile='laptop'"),
    ("model unknown", lambda tmp: models.get_spec("gpt-5"), models.ModelUnavailable, r"unknown model 'gpt-5'.*registry knows"),
    ("hub model offline", lambda tmp: models.model_source("qwen2.5-0.5b"), models.ModelUnavailable,
     r"comes from the model hub, and this run is offline"),
]


@pytest.mark.parametrize("call,error,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_fails_at_once_with_a_clear_message(tmp_path, monkeypatch, call, error, message):
    monkeypatch.setenv("RAGFT_ONLINE", "0")
    with pytest.raises(error, match=message):
        call(tmp_path)


@pytest.mark.lm  # asks load_lm for a hub model (refused before any weight loads)
def test_hub_model_online_without_a_hub_names_the_online_setting(monkeypatch):
    """`-p profile gpu` on a machine without the hub: not a raw OSError, but what to change."""
    import transformers

    monkeypatch.setenv("RAGFT_ONLINE", "1")

    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", unreachable)
    with pytest.raises(models.ModelUnavailable, match=r"online=True, which the gpu profile sets.*smollm2-135m"):
        models.load_lm("qwen2.5-0.5b", device="cpu")


def test_documents_in_utf16_are_read_and_binary_or_latin1_ones_skipped_with_the_reason(tmp_path):
    _file(tmp_path, "windows.txt", "Notes saved by Notepad: the gate is teal.".encode("utf-16"))
    _file(tmp_path, "latin.txt", "Où est la porte?".encode("latin-1"))
    _file(tmp_path, "nul.md", b"# x\x00y")
    corpus = load_folder(tmp_path)
    assert [s.doc_id for s in corpus.sources] == ["windows.txt"] and "teal" in corpus.sources[0].text
    reasons = {s.path: s.reason for s in corpus.skipped}
    assert reasons["latin.txt"].startswith("not UTF-8") and reasons["nul.md"].startswith("binary")


def test_a_folder_with_a_link_loop_a_pipe_and_utf16_without_its_mark_still_loads(tmp_path):
    # issue 51: each of these is skipped with its reason, never fatal and never opened
    import os

    _file(tmp_path, "good.md", "# Good\n\nThe gate is teal.")
    (tmp_path / "loop-a.md").symlink_to(tmp_path / "loop-b.md")
    (tmp_path / "loop-b.md").symlink_to(tmp_path / "loop-a.md")  # a loop: resolving it raised RuntimeError
    os.mkfifo(tmp_path / "pipe.txt")  # opening it would wait for a writer for ever
    _file(tmp_path, "notepad.txt", "The gate is teal and the door is red.".encode("utf-16-le"))  # no mark
    corpus = load_folder(tmp_path)
    reasons = {s.path: s.reason for s in corpus.skipped}
    assert [s.doc_id for s in corpus.sources] == ["good.md"]
    assert reasons["loop-a.md"] == reasons["loop-b.md"] == "a loop of links: not read"
    assert reasons["pipe.txt"].startswith("not a regular file (a named pipe")
    assert reasons["notepad.txt"].startswith("UTF-16 (little-endian) without a byte-order mark")


def test_chapter_8_takes_chapter_2s_range_of_file_sizes():
    for bad in (-5, 0, 1e9):
        with pytest.raises(ParamError, match=r"max_file_mb.*\(0, 1000\]"):
            config.resolve("08_your_case", "smoke", max_file_mb=bad)
    assert config.resolve("08_your_case", "smoke", max_file_mb=0.5).max_file_mb == 0.5


def test_the_gpu_profile_without_a_gpu_is_refused_before_it_goes_online(monkeypatch):
    # issue 51: `-p profile gpu` here silently went online for the hub's larger model at GPU sizes
    import torch

    from ragft import settings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    settings.set_online(False)
    with pytest.raises(ParamError, match=r"profile='gpu' needs a CUDA GPU.*device='cpu'"):
        settings.configure(config.resolve("01_prompting", "gpu"))
    assert settings.offline()  # nothing was switched on
    settings.configure(config.resolve("01_prompting", "gpu", device="cpu"))  # on purpose: allowed
    settings.set_online(False)


def test_an_offline_run_refuses_a_chroma_server_elsewhere():
    # issue 51: an offline run would have contacted chroma_host; a server on this machine is no call out
    with pytest.raises(ParamError, match=r"chroma_host.*this run is offline"):
        config.resolve("02_rag", "cpu", chroma_host="chroma.example.org")
    assert config.resolve("02_rag", "cpu", chroma_host="localhost").chroma_host == "localhost"
    assert config.resolve("02_rag", "cpu", chroma_host="chroma.example.org", online=True).online


def test_a_folder_named_like_a_registry_model_does_not_shadow_it(tmp_path, monkeypatch):
    # issue 51: a folder "smollm2-135m" in the working directory was loaded instead of the registry model
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2-135m").mkdir()
    assert models.model_source("smollm2-135m") != "smollm2-135m"  # the registry's weights
    assert models.model_source("./smollm2-135m") == "./smollm2-135m"  # a path says it is one
