"""Results files, the drift rules and the accept path."""

import json

import pytest

from ragft import config, drift, results


def test_results_file_has_the_schema_and_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGFT_RUN_DIR", str(tmp_path))
    run = results.ChapterRun("01_prompting", config.resolve("01_prompting", "smoke"))
    with run.stage("work"):
        pass
    run.metrics.update(closed_book_contains=0.0, prompt_tokens_per_query_gold_context=200.5)
    doc = json.loads(run.save().read_text())
    assert set(doc) == {"chapter", "profile", "params", "metrics", "tables", "timings", "provenance"}
    assert doc["profile"] == "smoke" and "wall_s" in doc["timings"] and "work" in doc["timings"]["stages"]
    prov = doc["provenance"]
    for key in ("git_sha", "git_dirty", "python", "packages", "cpu", "threads", "seed", "started_utc"):
        assert key in prov
    assert prov["git_sha"] is None or len(prov["git_sha"]) == 40


def test_metrics_must_be_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGFT_RUN_DIR", str(tmp_path))
    run = results.ChapterRun("01_prompting", config.resolve("01_prompting", "smoke"))
    run.metrics["bad"] = "high"
    with pytest.raises(TypeError, match="bad"):
        run.save()


@pytest.mark.parametrize("key,rule", [("latency_gold_context_s", "skip"), ("ttft_p50_ms", "skip"),
                                      ("ingest_chunks_per_s", "skip"), ("lora_mfu", "skip"),
                                      ("prompt_tokens_per_query_gold_context", "exact"),
                                      ("cost_per_1k_gold_context_usd", "exact"), ("gold_context_contains", 0.03),
                                      ("retrieval_p50_ms_100k", "skip"), ("rerank_ms_per_query", "skip"),
                                      ("ingest_share_of_embedder", "skip"), ("lora_peak_mb", "skip"),
                                      ("lora_step_ratio_vs_full", "skip"), ("lora_artifact_mb", 0.01), ("bf16_weight_mb", "exact"),
                                      ("lora_quality_ratio_vs_full", 0.03), ("lora_trainable_share", 0.03)])
def test_rules(key, rule):
    assert drift.rule_for(key) == rule


def test_compare_flags_real_drift_only():
    old = {"gold_context_contains": 0.70, "prompt_tokens_per_query_gold_context": 200.0, "latency_s": 1.0, "gone": 1.0}
    new = {"gold_context_contains": 0.72, "prompt_tokens_per_query_gold_context": 200.0, "latency_s": 9.0, "extra": 1.0}
    drifts, notes = drift.compare(old, new)
    assert drifts == ["gone: in the committed results, missing from the run"]
    assert notes == ["extra: new metric 1.0"]
    drifts, _ = drift.compare(old, {**new, "gold_context_contains": 0.60, "prompt_tokens_per_query_gold_context": 201.0, "gone": 1.0})
    assert len(drifts) == 2


def test_check_and_accept(tmp_path, monkeypatch):
    committed, run_dir = tmp_path / "committed", tmp_path / "run"
    (run_dir / "results").mkdir(parents=True)
    committed.mkdir()
    doc = {"metrics": {"gold_context_contains": 0.5}}
    (committed / "01_prompting.json").write_text(json.dumps(doc))
    (run_dir / "results" / "01_prompting.json").write_text(json.dumps({"metrics": {"gold_context_contains": 0.9}}))
    assert len(drift.check("cpu", run_dir, committed)) == 1
    (run_dir / "results" / "01_prompting.json").write_text(json.dumps(doc))
    assert drift.check("cpu", run_dir, committed) == []
    (committed / "02_rag.json").write_text(json.dumps(doc))
    assert drift.check("cpu", run_dir, committed) == ["02_rag: committed, but the run wrote no results"]


def test_costs_use_the_dated_cited_table():
    from ragft import costs

    assert costs.prices_as_of()
    for row in costs.load_prices().values():
        assert row["source"] and row["input_per_mtok"] > 0
    # 500 tokens at $1.75 per million: $0.000875 per query (claim S4's arithmetic), $0.875 per 1,000
    assert costs.cost_per_1k_queries(500, 10, "s4_actian") == pytest.approx(0.875)
