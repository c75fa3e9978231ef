"""Results files, the drift rules and the accept path."""

import json

import pytest

from ragft import config, drift, host, results


@pytest.mark.parametrize("probe,products", [(1.2, [(256, 1)] * 3), (150.0, [(256, 1)] * 3 + [(1024, 3)])],
                         ids=["emulated: the probe alone", "native: then the full measure"])
def test_an_emulated_dtype_is_measured_on_the_probe_alone(monkeypatch, probe, products):
    """bf16 on the AVX2 kind runs at 1-3 GFLOP/s: one n=1024 product there takes about a second, so
    matmul_gflops stops at the 256 probe (the best of three) when it is under EMULATED_GFLOPS (20)."""
    asked = []

    def rate(dtype, n, repeats):
        asked.append((n, repeats))
        return probe if n == host.PROBE_N else 160.0

    monkeypatch.setattr(host, "_product_rate", rate)
    assert host.matmul_gflops("bf16", n=1024, repeats=3) == (160.0 if (1024, 3) in products else probe)
    assert asked == products


def test_results_file_has_the_schema_and_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGFT_RUN_DIR", str(tmp_path))
    clock = results.Clock()
    with clock.stage("work"):
        pass
    run = results.ChapterRun("01_prompting", config.resolve("01_prompting", "smoke"), tmp_path, clock)
    measured = results.Measured()
    measured.metric("closed_book_contains", 0.0, "rate", n=12)
    measured.metric("prompt_tokens_per_query_gold_context", 200.5, "exact")
    doc = json.loads(run.save(measured).read_text())
    assert set(doc) == {"chapter", "profile", "params", "metrics", "metric_rules", "outcomes", "outcome_tokens",
                        "comparisons", "artifacts", "tables", "timings", "provenance", "units"}
    assert doc["profile"] == "smoke" and "wall_s" in doc["timings"] and "work" in doc["timings"]["stages"]
    prov = doc["provenance"]
    for key in ("git_sha", "git_dirty", "python", "packages", "cpu", "threads", "seed", "started_utc"):
        assert key in prov
    assert prov["git_sha"] is None or len(prov["git_sha"]) == 40


def test_metrics_must_be_numbers_and_a_bad_one_loses_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGFT_RUN_DIR", str(tmp_path))
    run = results.ChapterRun("01_prompting", config.resolve("01_prompting", "smoke"))
    measured = results.Measured()
    measured.metric("acc", 0.5, "rate", n=10)
    measured.record("rag", {"q1": 1})
    measured.metrics["bad"] = "high"
    measured.metric("nan_one", float("nan"), "exact")
    with pytest.raises(TypeError, match=r"'bad'.*'nan_one'.*saved in"):
        run.save(measured)
    doc = json.loads((tmp_path / "results" / "01_prompting.json").read_text())  # a finished chapter is kept
    assert doc["metrics"] == {"acc": 0.5} and doc["outcomes"] == {"rag": {"q1": 1}}
    assert set(doc["rejected_metrics"]) == {"bad", "nan_one"} and not list((tmp_path / "results").glob(".*tmp"))


def test_a_truncated_results_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGFT_RUN_DIR", str(tmp_path))
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "03_finetune.json").write_text('{"metrics": {"a": 0.')
    with pytest.raises(ValueError, match="03_finetune.json: not a readable results file"):
        results.read_chapter("03_finetune")
    with pytest.raises(ValueError, match="03_finetune.json"):
        results.load_results(tmp_path / "results")


def test_metrics_need_a_declared_kind(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGFT_RUN_DIR", str(tmp_path))
    run = results.ChapterRun("01_prompting", config.resolve("01_prompting", "smoke"))
    measured = results.Measured(metrics={"undeclared": 0.5})
    with pytest.raises(TypeError, match="undeclared"):
        run.save(measured)
    with pytest.raises(ValueError, match="needs the number of questions"):
        measured.metric("acc", 0.5, "rate")
    with pytest.raises(ValueError, match="tolerance"):
        measured.metric("ratio", 0.9, "derived")
    with pytest.raises(ValueError, match="kind"):
        measured.metric("acc", 0.5, "accuracy", n=10)


def test_each_condition_metric_and_table_has_one_author():
    """Two steps that measure the same name would overwrite each other on the results file: refused,
    within a step and when the chapter's save puts the steps' records together."""
    a, b = results.Measured(), results.Measured()
    a.record("rag", {"q1": 1})
    with pytest.raises(ValueError, match="recorded twice"):
        a.record("rag", {"q1": 0})
    a.metric("acc", 0.5, "rate", n=2)
    with pytest.raises(ValueError, match="measured twice"):
        a.metric("acc", 0.5, "rate", n=2)
    b.record("rag", {"q2": 1})
    with pytest.raises(ValueError, match=r"outcomes \['rag'\] are measured twice"):
        results.Measured.merged(a, b)
    merged = results.Measured.merged(a, None, results.Measured(tables={"t": [1]}))  # None: a step that did not run
    assert merged.outcomes == {"rag": {"q1": 1.0}} and merged["acc"] == 0.5 and merged.tables == {"t": [1]}
    assert "acc" in merged and merged.get("missing") is None


def test_outcomes_and_comparisons_reach_the_results_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGFT_RUN_DIR", str(tmp_path))
    run = results.ChapterRun("01_prompting", config.resolve("01_prompting", "smoke"))
    measured = results.Measured()
    measured.record("gold document", {f"q{i}": 1 for i in range(40)}, tokens={f"q{i}": (300, 12) for i in range(40)})
    measured.record("instruction", {f"q{i}": int(i < 15) for i in range(40)})  # 0.375: clear of the floor (0.25 + 0.10)
    measured.metric("rag_contains", 1.0, "rate", n=40)
    labels = {"K9-long-context": ("", ""), "K1-gold-document": ("gold document", "instruction prompt"),
              "prompting-few-shot": ("", ""), "refusal-instruction": ("", "")}
    stated = results.state_comparisons("01_prompting", measured.outcomes, labels, {"tokens": 600, "k": 3},
                                       {"refusal-instruction": "no unanswerable questions"}, profile="smoke")
    c = stated["K1-gold-document"].comparison
    assert c.verdict == "supported" and c.n == 40
    # an arm this run did not ask is said, not judged; a reason the chapter gives is kept as given
    assert stated["K9-long-context"].comparison is None and "was not asked" in stated["K9-long-context"].missing
    assert stated["refusal-instruction"].missing == "no unanswerable questions"
    doc = json.loads(run.save(measured, results.judged_of(stated)).read_text())
    assert doc["outcomes"]["instruction"]["q3"] == 1.0 and doc["outcome_tokens"]["gold document"]["q0"] == [300, 12]
    (row,) = doc["comparisons"]  # only the judged one reaches the file
    assert {"claim", "a", "b", "n", "diff", "ci_low", "ci_high", "p", "verdict"} <= set(row)
    assert doc["metric_rules"]["rag_contains"] == {"kind": "rate", "n": 40}
    with pytest.raises(ValueError, match="give each declared comparison its two labels"):
        results.state_comparisons("01_prompting", measured.outcomes, {"K1-gold-document": ("a", "b")},
                                  {"tokens": 600, "k": 3}, profile="smoke")
    with pytest.raises(ValueError, match="judged twice"):
        run.save(measured, results.judged_of(stated) * 2)


RULES = {"acc16": {"kind": "rate", "n": 16}, "acc36": {"kind": "rate", "n": 36}, "acc200": {"kind": "rate", "n": 200},
         "f1": {"kind": "mean", "n": 20}, "tokens": {"kind": "exact"}, "latency_s": {"kind": "machine"},
         "best_p": {"kind": "choice"}, "quality_ratio": {"kind": "derived", "tol": 0.1}}
BASE = {"acc16": 0.59, "acc36": 0.69, "acc200": 0.5, "f1": 0.4, "tokens": 250.0, "latency_s": 1.0, "best_p": 0.8,
        "quality_ratio": 0.95}


def test_tolerance_follows_n_and_kind():
    # two answers, or 5 % of the questions when that is more
    assert drift.tolerance(RULES["acc16"]) == pytest.approx(2 / 16)
    assert drift.tolerance(RULES["acc200"]) == pytest.approx(10 / 200)
    assert drift.tolerance(RULES["tokens"]) == 0.0
    assert drift.tolerance(RULES["latency_s"]) is None and drift.tolerance(RULES["best_p"]) is None
    assert drift.tolerance(RULES["quality_ratio"]) == 0.1


def test_near_tie_flips_on_another_cpu_pass():
    """What another CPU's BLAS does: a couple of near-tie answers flip, an argmax moves, timings move."""
    flipped = {**BASE, "acc16": 0.59 - 2 / 16, "acc36": 0.69 - 2 / 36, "acc200": 0.5 + 9 / 200, "f1": 0.43,
               "latency_s": 9.0, "best_p": 1.0, "quality_ratio": 0.88}
    drifts, notes = drift.compare(BASE, flipped, RULES)
    assert drifts == [] and notes == []


@pytest.mark.parametrize("key,value", [("acc16", 0.0), ("acc36", 0.5), ("acc200", 0.62), ("f1", 0.1),
                                       ("tokens", 251.0), ("quality_ratio", 0.0)])
def test_real_changes_fail(key, value):
    """Planted real changes: full fine-tuning collapsing (0.59 -> 0), a lost fifth of the answers, a
    prompt that grew by one token, a ratio that became 0/0."""
    drifts, _ = drift.compare(BASE, {**BASE, key: value}, RULES)
    assert len(drifts) == 1 and drifts[0].startswith(key)


def test_missing_and_undeclared_metrics_are_drift():
    drifts, notes = drift.compare({**BASE, "gone": 1.0}, {**BASE, "extra": 2.0}, {**RULES, "gone": {"kind": "exact"}})
    assert drifts == ["gone: in the committed results, missing from the run"] and notes == ["extra: new metric 2.0"]
    drifts, _ = drift.compare({"mystery": 1.0}, {"mystery": 1.0}, {})
    assert "no declared kind" in drifts[0]


def _doc(chapter="01_prompting", metrics=None, rules=None, **extra):
    return {"chapter": chapter, "profile": "cpu", "metrics": metrics or {"acc16": 0.5},
            "metric_rules": rules or {"acc16": RULES["acc16"]}, **extra}


def test_check_names_the_file_for_every_problem(tmp_path):
    committed, run_dir = tmp_path / "committed", tmp_path / "run"
    (run_dir / "results").mkdir(parents=True)
    committed.mkdir()
    (committed / "01_prompting.json").write_text(json.dumps(_doc()))
    (run_dir / "results" / "01_prompting.json").write_text(json.dumps(_doc(metrics={"acc16": 0.9})))
    assert len(drift.check("cpu", run_dir, committed)) == 1
    (run_dir / "results" / "01_prompting.json").write_text(json.dumps(_doc()))
    assert drift.check("cpu", run_dir, committed) == []
    (committed / "02_rag.json").write_text(json.dumps(_doc("02_rag")))
    assert drift.check("cpu", run_dir, committed) == ["02_rag: committed, but the run wrote no results"]
    (committed / "02_rag.json").unlink()
    bad = run_dir / "results" / "01_prompting.json"
    for content, message in [('{"metrics": {"acc16": 0.', "not a readable results file"),
                             (json.dumps({"chapter": "01_prompting"}), "no `metrics`"),
                             (json.dumps(_doc(metrics={"acc16": "high"})), "must be numbers"),
                             (json.dumps(_doc(rules={"acc16": {"kind": "vibes"}})), "metric_rules")]:
        bad.write_text(content)
        (problem,) = drift.check("cpu", run_dir, committed)
        assert str(bad) in problem and message in problem


def test_check_names_other_cpu_kernels_as_the_likely_cause(tmp_path, capsys):
    committed, run_dir = tmp_path / "committed", tmp_path / "run"
    (run_dir / "results").mkdir(parents=True)
    committed.mkdir()
    (committed / "01_prompting.json").write_text(json.dumps(_doc(provenance={"cpu_kernels": "AVX2"})))
    (run_dir / "results" / "01_prompting.json").write_text(json.dumps(_doc(provenance={"cpu_kernels": "AVX512"})))
    assert drift.check("cpu", run_dir, committed) == []
    assert "computed with PyTorch's AVX512 CPU kernels, published with AVX2" in capsys.readouterr().out


def test_accept_refuses_what_it_cannot_vouch_for(tmp_path, monkeypatch):
    head = drift.git("rev-parse", "HEAD").stdout.strip()
    clean = {"git_sha": head, "git_dirty": False}
    run_dir, target = tmp_path / "run", tmp_path / "published"
    (run_dir / "results").mkdir(parents=True)
    src = run_dir / "results" / "01_prompting.json"
    real_git = drift.git

    def git(dirty):
        def fake(*args):
            if args[0] == "status":
                return type("P", (), {"stdout": " M src/x.py" if dirty else "", "returncode": 0})()
            return real_git(*args)
        return fake

    monkeypatch.setattr(drift, "git", git(False))
    chapters = ["01_prompting"]
    src.write_text(json.dumps(_doc(provenance=clean)))
    assert [p.name for p in drift.accept("cpu", run_dir, target, chapters)] == ["01_prompting.json"]
    for doc, message in [(_doc(provenance={**clean, "git_dirty": True}), "uncommitted"),
                         (_doc(provenance={**clean, "git_sha": "f" * 40}), "not in this branch"),
                         (_doc(provenance=clean, profile="smoke"), "profile"),
                         (_doc("02_rag", provenance=clean), "expected '01_prompting'")]:
        src.write_text(json.dumps(doc))
        with pytest.raises(drift.ResultsError, match=message):
            drift.accept("cpu", run_dir, target, chapters)
    src.write_text('{"metrics": ')
    with pytest.raises(drift.ResultsError, match="01_prompting.json"):
        drift.accept("cpu", run_dir, target, chapters)
    src.unlink()
    (run_dir / "results" / "notes.json").write_text(json.dumps(_doc(provenance=clean)))
    with pytest.raises(drift.ResultsError, match="not a chapter"):
        drift.accept("cpu", run_dir, target, chapters)
    monkeypatch.setattr(drift, "git", git(True))
    with pytest.raises(drift.ResultsError, match="uncommitted changes"):
        drift.accept("cpu", run_dir, target, chapters)


def test_costs_use_the_dated_cited_table():
    from ragft import costs

    assert costs.prices_as_of()
    for row in costs.load_prices().values():
        assert row["source"] and row["input_per_mtok"] > 0
    # 500 tokens at $1.75 per million: $0.000875 per query (claim S4's arithmetic), $0.875 per 1,000
    assert costs.cost_per_1k_queries(500, 10, "s4_actian") == pytest.approx(0.875)


def _pair(tmp_path, committed_doc, run_doc):
    committed, run_dir = tmp_path / "committed", tmp_path / "run"
    (run_dir / "results").mkdir(parents=True, exist_ok=True)
    committed.mkdir(exist_ok=True)
    (committed / "01_prompting.json").write_text(json.dumps(committed_doc))
    (run_dir / "results" / "01_prompting.json").write_text(json.dumps(run_doc))
    return drift.check("cpu", run_dir, committed)


@pytest.mark.parametrize("run_rule", [{"kind": "rate", "n": 2}, {"kind": "machine"}, {"kind": "derived", "tol": 1.0}],
                         ids=["smaller-n", "another-kind", "derived"])
def test_a_run_cannot_loosen_its_own_check(tmp_path, run_rule):
    """The committed file defines the rules: a run that re-declares a metric drifts on it, even when
    its value moved by +0.5 that its own rule would pass."""
    problems = _pair(tmp_path, _doc(), _doc(metrics={"acc16": 1.0}, rules={"acc16": run_rule}))
    assert problems == [f"01_prompting: acc16: its rule changed from {RULES['acc16']} to {run_rule} (a rule is the committed file's)"]


@pytest.mark.parametrize("committed_value,run_value", [(0.5, float("nan")), (float("nan"), 0.5), (0.5, float("inf"))])
def test_non_finite_values_are_drift(tmp_path, committed_value, run_value):
    problems = _pair(tmp_path, _doc(metrics={"acc16": committed_value}), _doc(metrics={"acc16": run_value}))
    assert len(problems) == 1 and "not a finite number" in problems[0]


@pytest.mark.parametrize("rule,message", [({"kind": "rate"}, "needs n"), ({"kind": "rate", "n": 0}, "needs n"),
                                          ({"kind": "mean", "n": "16"}, "needs n"), ({"kind": "rate", "n": True}, "needs n"),
                                          ({"kind": "derived", "tol": float("nan")}, "needs tol"),
                                          ({"kind": "derived", "tol": float("inf")}, "needs tol"),
                                          ({"kind": "derived"}, "needs tol")])
def test_a_malformed_rule_names_the_file_and_the_metric(tmp_path, rule, message):
    (problem,) = _pair(tmp_path, _doc(rules={"acc16": rule}), _doc())
    assert "committed" in problem and "metric_rules['acc16']" in problem and message in problem


def _with_evidence(verdict="supported", flipped=0, timed_verdict="supported"):
    outcomes = {"rag": {f"q{i}": int(i >= flipped) for i in range(40)}, "closed": {f"q{i}": 0 for i in range(40)},
                "answer, merged": {f"r{i}": 200.0 + i for i in range(5)}}
    comparisons = [{"claim": "K1-x", "a": "rag", "b": "closed", "kind": "binary", "unit": "questions", "verdict": verdict},
                   {"claim": "T2-x", "a": "answer, merged", "b": "answer, merged", "kind": "continuous",
                    "unit": "timed answers", "verdict": timed_verdict}]
    return _doc(outcomes=outcomes, comparisons=comparisons)


def test_outcomes_and_verdicts_are_checked_not_only_the_headline(tmp_path):
    assert _pair(tmp_path, _with_evidence(), _with_evidence(flipped=2, timed_verdict="inconclusive at this n")) == []
    (problem,) = _pair(tmp_path, _with_evidence(), _with_evidence(flipped=20))  # half the answers flipped
    assert "outcomes of 'rag': 20 of 40 questions changed (at most 2 may" in problem
    (problem,) = _pair(tmp_path, _with_evidence(), _with_evidence(verdict="inconclusive at this n"))
    assert problem == "01_prompting: comparison K1-x: verdict 'supported' -> 'inconclusive at this n'"
    missing = _with_evidence()
    missing["comparisons"] = missing["comparisons"][1:]
    (problem,) = _pair(tmp_path, _with_evidence(), missing)
    assert "comparison K1-x: in the committed results, missing from the run" in problem
    # issue 51: a run holding K1-x twice, its first copy flipped, passed (the last copy hid the first)
    doubled = _with_evidence(verdict="inconclusive at this n")
    doubled["comparisons"].append(_with_evidence()["comparisons"][0])
    problems = _pair(tmp_path, _with_evidence(), doubled)
    assert problems == ["01_prompting: comparison K1-x: 2 copies in the run (an id names one comparison)"]


def test_the_matmul_probe_takes_the_best_of_three(monkeypatch):
    """One hiccup in the one-product probe (4.1 GFLOP/s) no longer reads as an emulated dtype: the best
    of three probes (130) is above the emulated line (20), so the full measurement runs (140); an
    emulated dtype's three probes all sit below it, and the best of them is its rate."""
    rates = iter([4.1, 130.0, 125.0, 140.0])
    monkeypatch.setattr(host, "_product_rate", lambda dtype, n, repeats: next(rates))
    assert host.matmul_gflops("fp32") == 140.0
    rates = iter([1.5, 2.0, 1.8])
    assert host.matmul_gflops("bf16") == 2.0


def test_a_failed_write_leaves_no_temporary_file_and_a_dead_writers_is_cleared(tmp_path):
    # issue 51: a crash during save left .<name>.<pid>.tmp beside the results file
    from ragft.files import write_atomically

    target = tmp_path / "01_prompting.json"
    write_atomically(target, "{}")
    with pytest.raises(UnicodeEncodeError):
        write_atomically(target, "{\ud800}")  # fails while writing the temporary file
    assert target.read_text() == "{}" and sorted(p.name for p in tmp_path.iterdir()) == ["01_prompting.json"]
    stale = tmp_path / ".01_prompting.json.999999999.tmp"  # a writer killed mid-write (no such process)
    stale.write_text("{")
    write_atomically(target, '{"a": 1}')
    assert not stale.exists() and target.read_text() == '{"a": 1}'


def test_a_unit_whose_key_moved_is_drift():
    """The results name the units their trained conditions came from; a run that asked for another
    key under a label, or not for a label at all, drifted (units asked for only by the run are new)."""
    from ragft.drift import compare_units

    k1, k2 = "1" * 16, "2" * 16
    committed = {"units": {"dsf-p3": {"key": k1, "read": True}, "raft-kb": {"key": k2, "read": True}}}
    assert compare_units(committed, {"units": {"dsf-p3": {"key": k1, "read": False}, "raft-kb": {"key": k2},
                                               "json-10": {"key": k1}}}) == []
    drifts = compare_units(committed, {"units": {"dsf-p3": {"key": k2}}})
    assert drifts == [f"unit dsf-p3: key {k1} -> {k2} (another training run)",
                      f"unit raft-kb: named by the committed results ({k2}), not asked for by the run"]
    assert compare_units({}, {"units": {"dsf-p3": {"key": k1}}}) == []  # results from before units
