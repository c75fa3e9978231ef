"""A development probe of the knowledge study's reader arms, on documents that hold no test fact.

  python experiments/probes/reader_arms.py --kb-seed 1 --out probe.jsonl [--device auto] [--dtype fp32]

The study's design (issue 62) draws its test facts as every fact of `--test-documents` documents among
the knowledge base's richer ones (KnowledgeBase.documents_drawn, seed 0) and its development facts as
every fact of `--dev-documents` others (seed 1). This probe never trains on or scores a test document: it
trains each reader arm (tasks.injection_examples: the documents as they are, rewritten, the rule's cloze
questions) on the development documents plus as many other non-test documents as the test draw holds
(seed 2: a training set of the study's size), scores every checkpoint of `--exposures` on their facts
(held-out question ranked among look-alikes; stored: the value where the arm's own text states it, as
chapter 3's `stored`), and writes one JSON line per arm, seed, batch and checkpoint. It needs torch,
transformers, peft, the offline model and this package only, so it runs on a lent GPU machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

from ragft import models, settings
from ragft.corpus import build_kb, injection
from ragft.corpus.kb import KBSizes
from ragft.scoring import rank_candidates
from ragft.train import load_artifact, tasks, train
from ragft.train.measure import release_memory
from ragft.train.trainer import snapshot_folder

CPU_KB = dict(n_series=12, models_per_series=3, n_people=24, n_sites=8, n_policies=8)  # the cpu profile's base
LOOKALIKES = 3


def probe_documents(kb, test_documents: int, dev_documents: int, min_facts: int) -> tuple[list, list]:
    """(development facts, the probe's other facts): the study's development documents' facts and those
    of as many other non-test documents as the test draw holds."""
    test = kb.documents_drawn(test_documents, 0, min_facts)
    dev = kb.documents_drawn(dev_documents, 1, min_facts, exclude=tuple(test))
    others = kb.documents_drawn(test_documents, 2, min_facts, exclude=tuple(test + dev))
    return kb.facts_of(dev), kb.facts_of(others)


def score(kb, lm, arm: str, facts: list, seed: int) -> tuple[list[int], list[int]]:
    """Held-out (the fact's held-out question, closed book) and stored (chapter 3's `stored`) outcomes."""
    pairs = [kb.candidates(q, LOOKALIKES, seed) for q in facts]
    cands, gold = [c for c, _ in pairs], [g for _, g in pairs]
    held = rank_candidates(lm, [tasks.dsf_messages(q.test_text) for q in facts], cands, gold, desc="held-out").correct
    if arm == "generated":
        stored = rank_candidates(lm, [tasks.dsf_messages(injection.fact_cloze(kb, q)) for q in facts], cands, gold,
                                 desc="stored").correct
    else:
        variant = None if arm == "documents" else 0
        stored = rank_candidates(lm, [tasks.recite_messages(kb.doc(q.doc_ids[0])) for q in facts],
                                 [[" " + c for c in cs] for cs in cands], gold, desc="stored",
                                 reply_prefixes=[injection.statement_prefix(kb, q, variant) for q in facts]).correct
    return [int(x) for x in held], [int(x) for x in stored]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kb-seed", type=int, required=True)
    ap.add_argument("--test-documents", type=int, default=10)
    ap.add_argument("--dev-documents", type=int, default=3)
    ap.add_argument("--min-facts", type=int, default=6)
    ap.add_argument("--arms", default="documents,rewritten,generated")
    ap.add_argument("--exposures", default="6,12,18,24,36,48")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--batches", default="8")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    exposures = [int(x) for x in a.exposures.split(",")]
    settings.set_determinism(0, 2)
    device = models.select_device(a.device)
    kb = build_kb(a.kb_seed, KBSizes(**CPU_KB))
    dev, others = probe_documents(kb, a.test_documents, a.dev_documents, a.min_facts)
    facts = dev + others
    out = Path(a.out)
    for seed in [int(s) for s in a.seeds.split(",")]:
        for batch in [int(b) for b in a.batches.split(",")]:
            for arm in a.arms.split(","):
                per = tasks.INJECTION_ARMS[arm]
                p = SimpleNamespace(lora_rank=a.rank, lora_alpha=2 * a.rank, lora_lr=a.lr, train_batch_size=batch,
                                    seed=seed, dtype=a.dtype, device=device, warmup_steps=2)
                cfg = tasks.injection_config(p, arm, max(exposures), a.lr)
                examples = tasks.injection_examples(kb, facts, arm)
                start = time.perf_counter()
                result = train(a.model, examples, cfg, label=f"probe-{arm}",
                               snapshots=tuple(e // per for e in exposures))
                trained_s = time.perf_counter() - start
                for e in exposures:
                    folder = result.artifact if e // per == result.metrics["epochs"] else snapshot_folder(result.artifact, e // per)
                    lm = load_artifact(a.model, folder, cfg, merge=True)
                    held, stored = score(kb, lm, arm, facts, 0)
                    n_dev = len(dev)
                    snap = result.metrics["snapshots"][str(e // per)]
                    row = {"kb_seed": a.kb_seed, "arm": arm, "seed": seed, "batch": batch, "exposures": e,
                           "device": device, "dtype": a.dtype, "n_dev": n_dev, "n_all": len(facts),
                           "dev_heldout": sum(held[:n_dev]) / n_dev, "dev_stored": sum(stored[:n_dev]) / n_dev,
                           "all_heldout": sum(held) / len(held), "all_stored": sum(stored) / len(stored),
                           "train_tokens": snap["train_tokens"], "train_s": snap["train_s"],
                           "examples_per_epoch": len(examples), "run_s": round(trained_s, 1),
                           "held": held, "stored": stored}
                    with out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print({k: v for k, v in row.items() if k not in ("held", "stored")}, flush=True)
                    del lm
                    release_memory()


if __name__ == "__main__":
    main()
