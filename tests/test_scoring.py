"""Candidate log-likelihood scoring and the knowledge base's look-alike candidates."""

import pytest

from ragft import prompts
from ragft.metrics import normalize
from ragft.scoring import Ranking, rank_candidates


def test_candidates_are_the_gold_and_distinct_look_alikes_of_its_attribute(kb):
    for q in kb.by_kind("single")[:40] + kb.by_kind("multihop")[:10]:
        cands, gold = kb.candidates(q, k=3, seed=0)
        assert cands[gold] == q.answer and len(cands) == len({normalize(c) for c in cands})
        right = {normalize(a) for a in q.answers}
        assert not any(normalize(c) in right for i, c in enumerate(cands) if i != gold)
        pool = {x.answer for x in kb.questions if x.attribute == q.attribute}
        if q.attribute in ("price", "warranty", "launch"):  # same attribute, not merely the same kind
            assert set(cands) <= pool
    q = kb.by_kind("single")[0]
    assert kb.candidates(q, 3, 0) == kb.candidates(q, 3, 0)
    golds = {kb.candidates(x, 3, 0)[1] for x in kb.by_kind("single")}
    assert golds == {0, 1, 2, 3}  # the gold's position is drawn, never always first


def test_candidates_refuse_what_has_no_single_value(kb):
    q = kb.by_kind("unanswerable")[0]
    values, gold = kb.candidates(q, k=3)
    assert gold is None and len(values) == 4 and len(set(values)) == 4
    with pytest.raises(ValueError, match="structured"):
        kb.candidates(kb.by_kind("structured")[0])
    with pytest.raises(ValueError, match="k=0"):
        kb.candidates(kb.by_kind("single")[0], k=0)


def test_ranking_matches_full_sequence_log_likelihood_and_reads_documents(lm, kb):
    import torch

    qs = kb.sample("single", 6, 0)
    cands = [kb.candidates(q, 3, 0) for q in qs]
    # the sentence that holds the fact, not its whole document: the same code path on shorter prompts
    # (26 s -> 14 s on a host of the faster kind; it was among `make test`'s slowest)
    convs = [prompts.build_messages(q.test_text, passages=[" ".join(q.gold_sentences)]) for q in qs]
    ranked = rank_candidates(lm, convs, [c for c, _ in cands], [g for _, g in cands], batch_size=4)
    tok = lm.tokenizer

    def plain(conv, candidates):  # each candidate after the prompt, with no cache and no mask
        prompt = tok(tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]
        ids = [tok(c, add_special_tokens=False)["input_ids"] for c in candidates]
        # one row per candidate, padded on the right: in a causal model a position never sees what
        # follows it, so each row's own tokens score as that sequence alone would (one pass a question)
        width = max(len(prompt) + len(x) for x in ids)
        rows = [prompt + x + [tok.eos_token_id] * (width - len(prompt) - len(x)) for x in ids]
        with torch.inference_mode():
            logp = torch.log_softmax(lm.model(torch.tensor(rows)).logits.float(), -1)
        return [sum(float(logp[r, len(prompt) - 1 + t, x[t]]) for t in range(len(x))) for r, x in enumerate(ids)]

    for i in range(len(qs)):  # batched (padded, in batches of 4 and 2) = every candidate alone
        for j, want in enumerate(plain(convs[i], cands[i][0])):
            assert ranked.scores[i][j] == pytest.approx(want, abs=1e-3)
    # no shared prefix (different system prompts): plain left padding, and candidates of unequal counts
    convs2 = [prompts.build_messages(qs[0].test_text, system="Hi."), prompts.build_messages(qs[1].test_text)]
    cands2 = [cands[0][0], cands[1][0][:2] + ["I don't know"] + cands[1][0][2:]]
    ranked2 = rank_candidates(lm, convs2, cands2, [0, 0], max_cached_tokens=1)  # one question a batch
    ranked3 = rank_candidates(lm, convs2, cands2, [0, 0])
    for i, conv in enumerate(convs2):
        for j, want in enumerate(plain(conv, cands2[i])):
            assert ranked2.scores[i][j] == pytest.approx(want, abs=1e-3)
            assert ranked3.scores[i][j] == pytest.approx(want, abs=1e-3)
    assert ranked.accuracy >= 5 / 6  # the answer is in the document: the model finds it
    assert ranked.chance == pytest.approx(0.25) and len(ranked.margins) == 6
    assert set(ranked.outcomes([q.qid for q in qs])) == {q.qid for q in qs}


def test_ranking_counts_ties_as_wrong_and_refuses_bad_input(lm):
    r = Ranking([[-1.0, -1.0], [-1.0, -2.0]], [0, 0], [5, 5], 0.0)
    assert r.correct == [0, 1] and r.margins == [0.0, 1.0]
    conv = [prompts.build_messages("Hi?")]
    with pytest.raises(ValueError, match="pair up"):
        rank_candidates(lm, conv, [["a", "b"], ["c", "d"]], [0])
    with pytest.raises(ValueError, match="at least 2"):
        rank_candidates(lm, conv, [["a"]], [0])
    with pytest.raises(ValueError, match="gold=2"):
        rank_candidates(lm, conv, [["a", "b"]], [2])


def test_auroc_and_recall_at_a_false_refusal_rate():
    from ragft.stats import auroc, recall_at_fpr

    assert auroc([3, 4, 5], [0, 1, 2]) == 1.0 and auroc([0, 1], [0, 1]) == 0.5
    assert auroc([0, 1, 2], [3, 4, 5]) == 0.0
    negatives = list(range(20))  # 5 % of 20 is one negative allowed above the threshold
    recall, threshold = recall_at_fpr([18.5, 19.5, 30, 2], negatives, max_fpr=0.05)
    assert threshold == 18 and recall == 0.75
    assert recall_at_fpr([1, 2], [0, 0, 0], max_fpr=0.0) == (1.0, 0.0)
    with pytest.raises(ValueError, match="both kinds"):
        auroc([], [1])


def test_batches_bound_the_cache_the_candidates_and_the_padding():
    from ragft.scoring import _batches

    # short prompts, four candidates each: the candidate rows bound a batch (10 * 4 * 3 > 100)
    assert _batches(list(range(6)), [10] * 6, [4] * 6, 16, 100) == [[0, 1], [2, 3], [4, 5]]
    # a long shared prefix counts once per question in the cache: 3 questions of 10 + 40 fit in 150
    assert _batches(list(range(6)), [10] * 6, [1] * 6, 16, 150, prefix=40) == [[0, 1, 2], [3, 4, 5]]
    # shortest first; a prompt over 10 % (and 8 tokens) longer than the batch's first starts a new batch
    assert _batches([0, 1, 2, 3], [100, 105, 119, 121], [1] * 4, 16, 10_000) == [[0, 1], [2, 3]]
    assert _batches([0], [5_000], [5], 16, 100) == [[0]]  # alone, a question may exceed the bound


def test_packed_candidates_score_the_same_under_eager_attention(lm, kb):
    """The block mask is additive, so an attention implementation other than SDPA reads it the same."""
    qs = kb.sample("single", 3, 0)
    cands = [kb.candidates(q, 3, 0) for q in qs]
    convs = [prompts.build_messages(q.test_text, passages=[" ".join(q.gold_sentences)]) for q in qs]  # short prompts
    sdpa = rank_candidates(lm, convs, [c for c, _ in cands], [g for _, g in cands])
    lm.model.set_attn_implementation("eager")
    try:
        eager = rank_candidates(lm, convs, [c for c, _ in cands], [g for _, g in cands])
    finally:
        lm.model.set_attn_implementation("sdpa")
    for a, b in zip(sdpa.scores, eager.scores):
        assert a == pytest.approx(b, abs=1e-3)
