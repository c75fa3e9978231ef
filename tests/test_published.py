"""The committed cpu results: complete, with provenance, and the knowledge base's sanity properties."""

import json
from pathlib import Path

import pytest

from conftest import ROOT
from ragft import run as runner

PUBLISHED = ROOT / "experiments" / "results" / "cpu"


@pytest.mark.parametrize("chapter", runner.toc_chapters())
def test_every_chapter_has_published_results_with_clean_provenance(chapter):
    import subprocess

    doc = json.loads((PUBLISHED / f"{chapter}.json").read_text())
    assert doc["profile"] == "cpu" and doc["metrics"]
    prov = doc["provenance"]
    assert prov["git_sha"] and len(prov["git_sha"]) == 40 and prov["python"] and prov["cpu"]
    # published from a clean tree, at a commit of this branch (make accept refuses anything else)
    assert prov["git_dirty"] is False
    ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", prov["git_sha"], "HEAD"], cwd=ROOT)
    assert ancestor.returncode == 0, f"{chapter}: published from {prov['git_sha'][:12]}, not in this branch"
    assert set(doc["metric_rules"]) == set(doc["metrics"]), "every published metric declares its kind"
    if chapter not in (runner.toc_chapters()[0], "07_verdict"):  # those two report on the others
        assert doc["outcomes"] and doc["comparisons"]
        # one dtype on every CPU: the published profile computes in fp32
        assert prov["dtype"] == "float32"


def test_prompting_headline_keys_and_sanity_properties():
    m = json.loads((PUBLISHED / "01_prompting.json").read_text())["metrics"]
    for key in ["closed_book_contains", "gold_context_contains", "few_shot_best_contains",
                "long_context_contains", "prompt_tokens_per_query_gold_context"]:
        assert key in m
    # The world is unknown to the model, and readable with the right document (issue: sanity properties).
    assert m["closed_book_contains"] <= 0.05
    # 12 generated answers: 10 right on the pilot's draw, 6 on d2's (ranked, on 64 questions, the gold
    # document's 0.98 and 0.91 say the same more surely): at least half
    assert m["gold_context_contains"] >= 0.5


def test_rag_headline_keys_and_performance_goals():
    m = json.loads((PUBLISHED / "02_rag.json").read_text())["metrics"]
    for key in ["recall_at_5_best", "best_chunk_size", "best_top_k", "rag_contains", "hybrid_recall_at_5",
                "rerank_recall_at_5", "refusal_f1_at_chosen", "citation_accuracy", "retrieval_p50_ms_10k",
                "retrieval_p50_ms_100k", "hnsw_recall_at_10_100k", "ingest_chunks_per_s",
                "embedder_only_chunks_per_s", "ttft_p50_ms", "squad_recall_at_5", "squad_rag_f1"]:
        assert key in m, key
    # issue 3's performance goals, as measured by the chapter's own benchmark when published
    assert m["retrieval_p50_ms_10k"] <= 5 and m["retrieval_p50_ms_100k"] <= 20
    assert m["hnsw_recall_at_10_100k"] >= 0.95
    assert m["ingest_chunks_per_s"] >= 0.7 * m["embedder_only_chunks_per_s"]


def test_rag_compares_chunk_sizes_the_embedder_reads_whole_and_off_the_ceiling():
    """Issue 29: no compared chunk is cut by the embedder (the window less [CLS] and [SEP] holds every
    size), and R1's and R2's arms sit below 0.9 on the test questions, so a difference can show."""
    doc = json.loads((PUBLISHED / "02_rag.json").read_text())
    m, params = doc["metrics"], doc["params"]
    sizes = [*params["chunk_sizes"], *params["squad_chunk_sizes"], params["own_chunk_size"]]
    assert m["embedder_window_tokens"] - 2 >= max(sizes)
    compared = {c["claim"]: c for c in doc["comparisons"]}
    for cid in ("R1-small-chunks", "R1-small-chunks-equal-k", "R2-top-k"):
        for arm in (compared[cid]["a"], compared[cid]["b"]):
            outcomes = doc["outcomes"][arm]
            assert sum(outcomes.values()) / len(outcomes) < 0.9, (cid, arm)
        assert compared[cid]["n"] == m["squad_n"] >= 400


def test_finetune_headline_keys_and_performance_goals():
    doc = json.loads((PUBLISHED / "03_finetune.json").read_text())
    m, compared = doc["metrics"], {c["claim"]: c for c in doc["comparisons"]}
    from test_notebooks import HEADLINE_03

    for key in HEADLINE_03:
        assert key in m, key
    # issue 71: at least 100 test facts, so that a reader's arm within a few points of RAG can be called
    # equivalent within 10 points; the title question's comparisons pair all of them (n: the questions
    # both arms' outcomes hold, counted by the test)
    assert m["n_facts"] >= 100
    for cid in ("K1-rag-vs-dsf", "K1-rag-vs-reader", "K1-reader-equivalent", "K5-rag-vs-reader-rag", "K6-reader-plus-rag"):
        assert compared[cid]["n"] == m["n_facts"], cid
    # issue 4's goals that hold at this scale with a margin, as measured by the chapter's own benchmark.
    # The step-time ratio and QLoRA's base-weight ratio (the unquantized embedding is a fifth of the
    # model) are reported and explained in the chapter instead: LoRA's step took 0.77 of full
    # fine-tuning's on one AVX2 host and 1.03 on another (2.76 against 2.69 s), whose latency-bound
    # small products ran about 1.6x slower while full fine-tuning's large ones did not.
    assert m["lora_trainable_share"] < 0.03
    assert m["lora_peak_mb"] <= 0.7 * m["full_peak_mb"]
    assert m["lora_mfu"] >= 0.25
    assert_at_chance(m["base_closed_ranked"], m["base_closed_n"], m["knowledge_chance"])  # the facts are new to the model


def assert_at_chance(rate: float, n: int, chance: float = 0.25):
    """A closed-book base model knows nothing of the invented world: its candidate accuracy (the gold
    among 4 values) is at chance, inside the rate's 95 % Wilson interval."""
    from ragft.stats import wilson_interval

    low, high = wilson_interval(rate * n, n)
    assert low <= chance <= high, f"{rate:.2f} on {n} questions: [{low:.2f}, {high:.2f}] excludes chance {chance:.2f}"


def test_raft_headline_keys_and_sanity():
    doc = json.loads((PUBLISHED / "04_raft.json").read_text())
    m = doc["metrics"]
    from test_notebooks import HEADLINE_04

    for key in HEADLINE_04:
        assert key in m, key
    assert m["base_closed_contains"] <= 0.05  # the facts are new to the model
    # the cpu profile runs no ablation, top-k curve or PubMedQA (the plan's `profiles`): RAFT does not
    # reach its fitness on 2 cores, and the ledger calls their claims not testable at cpu scale
    assert m["raft_dev_fitness"] == 0 and not {"raft_best_p", "topk_n", "pubmedqa_raft_acc"} & set(m)
    ledger = {r["claim"]: r for r in json.loads((PUBLISHED / "07_verdict.json").read_text())["ledger"]}
    assert all(ledger[c]["verdict"] == "not testable at cpu scale" for c in ("F2", "F5", "F6"))
    # HotpotQA, a capability check that carries no verdict, runs in the smoke and gpu profiles (issue 46)
    assert not {"hotpotqa_raft_f1", "hotpotqa_n_test"} & set(m)


# Each chapter's cap in seconds in the notebook, cpu profile, at the reference speed (2 cores of the
# faster CPU kind training LoRA at 278 tokens/s), and the book's; the slower kind runs every chapter
# about 2.0 times as long (ragft.host.SLOWER_KIND_RATIO). Since issue 70 the book reads its trained
# units and trains nothing, so chapters 3, 4, 5 and 8 keep only their base-model, retrieval and replay
# work: the first publication from units (an AMD EPYC with AVX2 only, x2.0) took chapter 1 408 s, 2 555,
# 3 247, 4 91, 5 125, 6 58, 7 3 and 8 55 (chapter 1 beside this stop's unit tests). The caps leave room
# for a host of the faster kind whose chapters run slower than its matmul rate says (the last Intel
# publication: chapters 1 and 2 in 304 and 442 s at x1.13, where the training throughput no longer
# raises the factor of a run that read its units): 1,300 s at the reference speed, about 43 minutes on
# the slower kind, against 1,950 when the book trained. Draw d2's publication (an Intel host with AMX whose
# slow disk put it at x2.0) took chapter 1 367 s, 2 628, 3 404, 4 331, 5 171, 6 50, 7 3 and 8 64: chapter
# 4 reads three seeds of two RAFTs and scores the reader arms with RAG on 104 facts, so its cap rose from
# 120 to 180 and chapter 2's fell from 400 to 340, the book's unchanged.
CAP_S = {"01_prompting": 280, "02_rag": 340, "03_finetune": 250, "04_raft": 180, "05_freshness": 120,
         "06_cost": 40, "07_verdict": 10, "08_your_case": 80}
BOOK_CAP_S = 1300


def publication_factor(published: Path = PUBLISHED) -> float:
    """What the caps are multiplied by for the published run: its host's speed as the provenance
    records it (x2.0 on the AVX2-only kind; on the faster kind the ratio of the reference matmul rate
    to the host's, at most 2.0), or, where the host trained slower than its matmul rate says, the
    ratio of its training throughput to the reference's (ragft.host.run_factor)."""
    from ragft.host import run_factor

    return run_factor(published)


def test_published_cpu_budget():
    """Each chapter within its cap, as measured when published, scaled by the publishing host's
    speed (publication_factor). The front page's own time counts towards the verdict's, as in
    DESIGN.md's table."""
    front = json.loads((PUBLISHED / "00_front.json").read_text())
    times = {row["chapter"]: row["in the notebook (s)"] for row in front["tables"]["chapter_times"]}
    assert set(times) == set(CAP_S) and sum(CAP_S.values()) <= BOOK_CAP_S
    times["07_verdict"] += front["timings"]["wall_s"]
    factor = publication_factor()
    print(f"published cpu times against their caps, scaled x{factor:.2f} by the publishing host's speed: "
          + ", ".join(f"{c} {t:.0f}/{CAP_S[c] * factor:.0f} s" for c, t in times.items()))
    over = {c: (t, CAP_S[c] * factor) for c, t in times.items() if t > CAP_S[c] * factor}
    assert not over, f"over the cap (seconds, scaled cap): {over}"
    assert sum(times.values()) <= BOOK_CAP_S * factor


def test_publication_factor_takes_the_slowest_measured_rate(tmp_path):
    """The matmul rate at the reference's gives x1; the training runs decide: the slower of the method
    run (the reference's 1,804 tokens) and the curve run, 278 / 211.6 = 1.314."""
    from ragft.host import REFERENCE_LORA_TOKENS_PER_S

    prov = {"matmul_gflops_fp32": 190.6, "matmul_gflops_bf16": 800.0}
    (tmp_path / "00_front.json").write_text(json.dumps({"provenance": {}}))  # no model: not read
    (tmp_path / "01_prompting.json").write_text(json.dumps({"provenance": prov}))

    def chapter3(method_tokens, method_rate, curve):
        tables = {"train_runs": {"lora": {"train_tokens": method_tokens, "tokens_per_s": method_rate}}, **curve}
        (tmp_path / "03_finetune.json").write_text(json.dumps({"provenance": prov, "tables": tables}))
        return publication_factor(tmp_path)

    assert chapter3(1804, 228.5, {"curve_run": {"method": "lora", "tokens_per_s": 211.6}}) == pytest.approx(
        REFERENCE_LORA_TOKENS_PER_S / 211.6)
    assert chapter3(1804, 184.5, {"curve_run": {"method": "lora", "tokens_per_s": 211.6}}) == pytest.approx(278 / 184.5)
    assert chapter3(900, 100.0, {}) == 1.0  # another method run is another workload; no curve: the matmul rate alone
    assert chapter3(1804, 400.0, {}) == 1.0  # never less than the reference's time
    # a chapter whose one-product fp32 probe hiccuped (4.1 beside native bf16 at 807: fp32 is never
    # emulated) does not make the host the slower kind; a real slower-kind chapter (bf16 emulated) does
    (tmp_path / "02_rag.json").write_text(json.dumps({"provenance": {"matmul_gflops_fp32": 4.1, "matmul_gflops_bf16": 807.2}}))
    assert chapter3(1804, 400.0, {}) == 1.0
    (tmp_path / "02_rag.json").write_text(json.dumps({"provenance": {"matmul_gflops_fp32": 110.0, "matmul_gflops_bf16": 2.0}}))
    assert chapter3(1804, 400.0, {}) == 2.0


def test_host_time_factor():
    """The scaling rule on its own: the faster kind at the reference rate is x1; at half the rate
    x2 (never more); a CPU that emulates bf16 (slower than its fp32) is the slower kind, x2.0."""
    from ragft import host

    assert host.time_factor(host.REFERENCE_GFLOPS, 4 * host.REFERENCE_GFLOPS) == 1.0
    assert host.time_factor(250.0, 1000.0) == 1.0  # a faster host gets no extra time
    assert host.time_factor(host.REFERENCE_GFLOPS / 1.25, 600.0) == pytest.approx(1.25)
    assert host.time_factor(30.0, 400.0) == host.SLOWER_KIND_RATIO
    assert host.time_factor(118.0, 40.0) == host.SLOWER_KIND_RATIO
    # an EPYC of the faster kind measured bf16 at 1.97x its fp32 in one chapter, 2.6x in another: native
    assert host.time_factor(191.4, 377.8) == 1.0 and host.time_factor(118.0, 1.4 * 118.0) == host.SLOWER_KIND_RATIO
    assert host.training_factor(host.REFERENCE_LORA_TOKENS_PER_S) == 1.0
    assert host.training_factor(1000.0) == 1.0  # never less than the reference's time
    assert host.training_factor(host.REFERENCE_LORA_TOKENS_PER_S / 1.45) == pytest.approx(1.45)
    assert host.training_factor(50.0) == host.SLOWER_KIND_RATIO
    with pytest.raises(ValueError, match="throughput"):
        host.training_factor(0.0)


def test_published_verdict_has_every_claim_and_matches_the_chapters():
    """The ledger's verdicts are the published comparisons' (recomputed here from the files)."""
    from ragft.claims import load_claims
    from ragft.verdict import counts, ledger

    docs = {p.stem: json.loads(p.read_text()) for p in PUBLISHED.glob("*.json")}
    verdict = docs.pop("07_verdict")
    docs.pop("00_front")
    rows = ledger(load_claims(), docs)
    assert [r["verdict"] for r in verdict["ledger"]] == [r.verdict for r in rows]
    tally = counts(rows)
    assert verdict["metrics"]["n_supported"] == tally["supported"] and verdict["metrics"]["n_claims"] == len(rows)


def test_ci_budget_line_scales_45_minutes_at_the_reference_by_the_runs_host(tmp_path):
    """CI's closing line: 45 minutes at the reference speed is 2,700 s; a run whose host measured half
    the reference's fp32 rate (native bf16) gets x2.0, 5,400 s; 2,700 s there is 50 % of it and about
    22 minutes at the reference speed."""
    from ragft import host

    assert host.ci_budget_s(1.0) == 2700 and host.ci_budget_s(host.SLOWER_KIND_RATIO) == 5400
    prov = {"matmul_gflops_fp32": host.REFERENCE_GFLOPS / 2, "matmul_gflops_bf16": 4 * host.REFERENCE_GFLOPS}
    tables = {"train_runs": {"lora": {"train_tokens": 1804, "tokens_per_s": 278.0}}}
    (tmp_path / "03_finetune.json").write_text(json.dumps({"provenance": prov, "tables": tables}))
    line = host.ci_line(2700, tmp_path)
    assert "2,700 s (45.0 min) against 5,400 s (90.0 min)" in line and "x2.00 (the book's run)" in line
    assert "50% of it" in line
    assert "about 22 minutes at the reference speed" in line


def test_run_factor_leaves_out_the_training_of_units_read(tmp_path):
    """A run that read chapter 3's units did not train: their throughput is the computing host's, so
    only the matmul rate gives the factor (x1 here, where the units' 139 tokens/s would say 2.0)."""
    from ragft import host

    prov = {"matmul_gflops_fp32": host.REFERENCE_GFLOPS, "matmul_gflops_bf16": 4 * host.REFERENCE_GFLOPS}
    tables = {"train_runs": {"lora": {"train_tokens": 1804, "tokens_per_s": 139.0}}}
    doc = {"provenance": prov, "tables": tables, "units": {"dsf-p3": {"key": "0" * 16, "read": True}}}
    (tmp_path / "03_finetune.json").write_text(json.dumps(doc))
    assert host.run_factor(tmp_path) == 1.0
    doc["units"]["dsf-p3"]["read"] = False  # trained here: its throughput is this host's
    (tmp_path / "03_finetune.json").write_text(json.dumps(doc))
    assert host.run_factor(tmp_path) == host.SLOWER_KIND_RATIO
