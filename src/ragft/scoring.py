"""Scoring by log-likelihood: rank a question's candidate answers by how likely the model finds each
as its reply, as knowledge-injection studies score knowledge (multiple choice, Ovadia et al. 2024).

One prefill per question (the prompt, after a prefix every prompt shares is computed once; questions
batched), then all candidates in one batch on top of that cache: several times cheaper than decoding an
answer, and it measures what the model knows rather than how it phrases it. The candidate is scored
as the first words of the assistant's reply, summed over its tokens (lm-evaluation-harness "acc");
candidates of one question are values of the same attribute, so their lengths are alike. A reader
that reasons before it answers is generated and scored in one pass (`rank_after_generating`): its
candidates are scored on its generation's own KV cache, after its reasoning.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

from .generation import MIN_SHARED_PREFIX, Generation, _common_prefix_len, _decode_completion, generate
from .progress import progress
from .replay import replayable


@dataclass
class Ranking:
    """Candidate log-likelihoods per question; `gold` is the index of the right candidate."""

    scores: list[list[float]]
    gold: list[int]
    prompt_tokens: list[int]
    seconds: float

    @property
    def correct(self) -> list[int]:
        """1 where the gold candidate scores highest (a tie counts as wrong), else 0."""
        return [int(all(s[g] > x for j, x in enumerate(s) if j != g)) for s, g in zip(self.scores, self.gold)]

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / max(1, len(self.correct))

    @property
    def chance(self) -> float:
        """The accuracy of guessing: the mean of 1 / number of candidates."""
        return sum(1 / len(s) for s in self.scores) / max(1, len(self.scores))

    @property
    def margins(self) -> list[float]:
        """Gold log-likelihood minus the best other candidate's (> 0 where right): a confidence."""
        return [s[g] - max(x for j, x in enumerate(s) if j != g) for s, g in zip(self.scores, self.gold)]

    def outcomes(self, qids: list[str]) -> dict[str, int]:
        if len(qids) != len(self.scores):
            raise ValueError(f"{len(qids)} question ids for {len(self.scores)} ranked questions")
        return dict(zip(qids, self.correct))


PAD_SLACK = 0.1  # a batch's longest prompt is at most 10 % (and 8 tokens) longer than its shortest


def _batches(order: list[int], lengths: list[int], counts: list[int], batch_size: int,
             max_cached_tokens: int, prefix: int = 0) -> list[list[int]]:
    """Questions (in `order`, shortest first) grouped for batched scoring: at most batch_size questions;
    at most max_cached_tokens of their own tokens (`lengths`, after a shared `prefix`) times their
    `counts` of candidates, and of cached tokens, the prefix included, over the batch (a question
    alone in its batch may exceed both: measured, a long shared prefix repeated for many questions
    costs more in copies than it saves); none more than PAD_SLACK longer than the batch's first:
    prefill is the cost, and padding is prefill for nothing."""
    batches, current, width, rows = [], [], 0, 0
    for i in order:
        w, r = max(width, lengths[i]), rows + counts[i]
        if current and (len(current) >= batch_size or w * r > max_cached_tokens
                        or (prefix + w) * (len(current) + 1) > max_cached_tokens
                        or lengths[i] > lengths[current[0]] * (1 + PAD_SLACK) + 8):
            batches.append(current)
            current, w, r = [], lengths[i], counts[i]
        current.append(i)
        width, rows = w, r
    return batches + ([current] if current else [])


def _packed(candidates: list[list[int]]) -> list[tuple[int, int]]:
    """(start, end) of each candidate's tokens when a question's candidates are laid side by side."""
    spans, at = [], 0
    for c in candidates:
        spans.append((at, at + len(c)))
        at += len(c)
    return spans


def _check(conversations: list, candidates: list[list[str]], gold: list[int]) -> None:
    if not (len(conversations) == len(candidates) == len(gold)):
        raise ValueError(f"{len(conversations)} conversations, {len(candidates)} candidate lists and "
                         f"{len(gold)} gold indices: they must pair up")
    for i, (cands, g) in enumerate(zip(candidates, gold)):
        if len(cands) < 2 or not all(isinstance(c, str) and c.strip() for c in cands):
            raise ValueError(f"question {i}: needs at least 2 non-empty candidate strings, got {cands!r}")
        if not (isinstance(g, int) and 0 <= g < len(cands)):
            raise ValueError(f"question {i}: gold={g!r} is not an index into its {len(cands)} candidates")


@replayable("rank_candidates")
def rank_candidates(lm, conversations: list[list[dict]], candidates: list[list[str]], gold: list[int],
                    desc: str = "scoring", batch_size: int = 16, max_cached_tokens: int = 8192,
                    reply_prefixes: list[str] | None = None) -> Ranking:
    """Log-likelihood of each candidate reply to each conversation (chat template, as `generate`
    sends it). `candidates[i]` are question i's answers to rank, `gold[i]` the index of the right one.
    `reply_prefixes[i]`: the start of the reply the candidates continue (a reader's own reasoning),
    tokenized on its own as if it led every candidate string and scored once with the prompt, not
    once per candidate: it adds the same log-likelihood to each candidate, so it is left out of the
    scores and the ranking is that of the prefixed candidates.

    Questions are scored in batches (sorted by length, at most `batch_size`, at most
    `max_cached_tokens` of their own prompt tokens times their candidates): each prompt's own tokens
    are left-padded after the shared prefix (the mask hides the pads, position ids skip them), then
    each question's candidates are laid side by side in one row on top of its cache, a block mask
    keeping them apart. On 2 CPU cores this is several times faster than one question at a time for
    short prompts, and no cache is copied per candidate (a long shared haystack is not repeated
    five times); the scores are those of each prompt + candidate scored alone, without a cache
    (checked in the tests)."""
    import torch

    _check(conversations, candidates, gold)
    if reply_prefixes is not None and len(reply_prefixes) != len(conversations):
        raise ValueError(f"{len(reply_prefixes)} reply prefixes for {len(conversations)} conversations: they must pair up")
    tok, model = lm.tokenizer, lm.model
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = [tok(tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True),
               add_special_tokens=False)["input_ids"] for c in conversations]
    if reply_prefixes is not None:
        ids = [x + tok(r, add_special_tokens=False)["input_ids"] for x, r in zip(ids, reply_prefixes)]
    cand_ids = [[tok(c, add_special_tokens=False)["input_ids"] for c in cands] for cands in candidates]
    start = time.perf_counter()
    n_common = _common_prefix_len(ids) if len(ids) > 1 else 0
    n_common = n_common if n_common >= MIN_SHARED_PREFIX else 0
    shared = None
    scores: list[list[float]] = [[] for _ in ids]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    # batched by each question's own tokens (after the shared prefix, computed once) times its candidates
    lengths = [len(x) - n_common + max(len(c) for c in cs) for x, cs in zip(ids, cand_ids)]
    batches = _batches(order, lengths, [len(c) for c in cand_ids], batch_size, max_cached_tokens, n_common)

    def tensor(rows):
        return torch.tensor(rows, device=lm.device)

    with torch.inference_mode():
        if n_common:
            shared = model(tensor([ids[0][:n_common]]), use_cache=True, logits_to_keep=1).past_key_values
        for batch in progress(batches, desc=desc):
            # each question's own prompt, left-padded after the shared prefix; its last logits predict token 1
            own = [ids[i][n_common:] for i in batch]
            width = max(len(x) for x in own)
            mask = [[1] * n_common + [0] * (width - len(x)) + [1] * len(x) for x in own]
            positions = [[n_common] * (width - len(x)) + list(range(n_common, n_common + len(x))) for x in own]
            cache = None
            if shared is not None:
                cache = copy.deepcopy(shared)
                cache.batch_repeat_interleave(len(batch))
            out = model(tensor([[pad] * (width - len(x)) + x for x in own]), attention_mask=tensor(mask),
                        position_ids=tensor(positions), past_key_values=cache, use_cache=True, logits_to_keep=1)
            first = torch.log_softmax(out.logits[:, -1].float(), -1)
            rows = _packed_scores(lm, out.past_key_values, mask, [n_common + len(x) for x in own],
                                  [[] for _ in batch], [cand_ids[i] for i in batch], first)
            for b, i in enumerate(batch):
                scores[i] = rows[b]
    return Ranking(scores, list(gold), [len(x) for x in ids], time.perf_counter() - start)


@replayable("rank_after_generating")
def rank_after_generating(lm, conversations: list[list[dict]], candidates: list[list[str]], gold: list[int],
                          reply_prefix, max_new_tokens: int, batch_size: int = 16,
                          desc: str = "answering") -> tuple[Generation, Ranking]:
    """A reader that reasons before it answers, generated (`ragft.generation.generate`) and scored in
    one pass: each reply's candidates are scored after `reply_prefix(reply)` (its reasoning up to the
    final-answer marker), as `rank_candidates` with `reply_prefixes` scores them, but on top of the
    generation's own KV cache, so the prompt and the reasoning are not prefilled a second time.

    The prefix is tokenized on its own, as `rank_candidates` tokenizes it; where its tokens begin
    with the generated ones, those are reused from the cache, and the rest (a marker the token budget
    cut off, text that tokenizes differently once decoded) is fed before each candidate. So every
    candidate is conditioned on exactly the tokens `rank_candidates` conditions it on, and the scores
    are the same up to float rounding (checked in the tests); `prompt_tokens` counts the prompt and
    the prefix, as there. Returns (the generation, the ranking); the ranking's seconds are the
    scoring passes alone, and the generation's exclude them."""
    import torch

    _check(conversations, candidates, gold)
    tok = lm.tokenizer
    cand_ids = [[tok(c, add_special_tokens=False)["input_ids"] for c in cands] for cands in candidates]
    scores: list[list[float]] = [[] for _ in conversations]
    prefix_tokens, seconds = [0] * len(conversations), [0.0]

    def score_batch(batch, generated, cache, mask, starts):
        t = time.perf_counter()
        cached = cache.get_seq_length()
        tails, visible, positions = [], [], []
        for b, i in enumerate(batch):
            ids = generated[b].tolist()
            target = tok(reply_prefix(_decode_completion(tok, ids)[0]), add_special_tokens=False)["input_ids"]
            if not target:
                raise ValueError(f"conversation {i}: reply_prefix gave an empty prefix; the candidates must follow "
                                 "some of the reply (a quoting reader's reasoning and its final-answer marker)")
            prefix_tokens[i] = len(target)
            reuse = 0  # generated tokens the prefix starts with, up to the cache's end, leaving one to feed
            while reuse < min(len(target) - 1, cached - len(mask[b])) and ids[reuse] == target[reuse]:
                reuse += 1
            tails.append(target[reuse:])
            visible.append(mask[b] + [1] * reuse + [0] * (cached - len(mask[b]) - reuse))
            positions.append(starts[b] + reuse)
        with torch.inference_mode():
            rows = _packed_scores(lm, cache, visible, positions, tails, [cand_ids[i] for i in batch])
        for b, i in enumerate(batch):
            scores[i] = rows[b]
        seconds[0] += time.perf_counter() - t

    gen = generate(lm, conversations, max_new_tokens, batch_size, desc=desc, on_batch=score_batch)
    return gen, Ranking(scores, list(gold), [p + n for p, n in zip(gen.prompt_tokens, prefix_tokens)], seconds[0])


def _packed_scores(lm, cache, mask: list[list[int]], start: list[int], tails: list[list[int]],
                   cand_ids: list[list[list[int]]], first=None) -> list[list[float]]:
    """Each row's candidates scored on top of its KV cache: row b's cached tokens visible where
    `mask[b]` is 1; its candidates laid side by side in one row, each candidate being `tails[b]` (the
    end of the reply before the candidates, scored with each) and then the candidate's own tokens,
    at positions from `start[b]`. Each candidate sees the visible cache and its own earlier tokens
    only (a block mask), as if scored alone; no cache is copied per candidate. Only the candidate's
    own tokens are summed; with an empty tail its first token is predicted by `first[b]` (the log
    softmax of the row's last prompt logits)."""
    import torch

    tok, model = lm.tokenizer, lm.model
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    segments = [[tail + c for c in cands] for tail, cands in zip(tails, cand_ids)]
    spans = [_packed(seg) for seg in segments]
    w2 = max(end for sp in spans for _, end in sp)
    rows = [[t for c in seg for t in c] + [pad] * (w2 - sum(map(len, seg))) for seg in segments]
    cpos = [[s] * w2 for s in start]
    # an additive mask (0 where a token may look, the dtype's most negative elsewhere): every
    # attention implementation reads a ready 4D mask as it is
    bias = torch.full((len(rows), 1, w2, len(mask[0]) + w2), torch.finfo(model.dtype).min, dtype=model.dtype)
    for b, sp in enumerate(spans):
        bias[b, 0, :, len(mask[b]):].fill_diagonal_(0.0)  # a pad sees itself: no empty row, no NaN
        bias[b, 0, :, :len(mask[b])].masked_fill_(torch.tensor(mask[b], dtype=torch.bool), 0.0)
        for lo, hi in sp:
            cpos[b][lo:hi] = range(start[b], start[b] + hi - lo)
            own_tokens = bias[b, 0, lo:hi, len(mask[b]) + lo:len(mask[b]) + hi]
            own_tokens.masked_fill_(torch.ones(hi - lo, hi - lo, dtype=torch.bool).tril(), 0.0)
    logits = model(torch.tensor(rows, device=lm.device), attention_mask=bias.to(lm.device),
                   position_ids=torch.tensor(cpos, device=lm.device), past_key_values=cache).logits
    logp = torch.log_softmax(logits.float(), -1)
    scores = []
    for b in range(len(rows)):
        row, n_tail = [], len(tails[b])
        for c, (lo, _) in zip(cand_ids[b], spans[b]):
            # token t of the candidate sits at lo + n_tail + t and is predicted by the position before it
            total = float(first[b, c[0]]) if n_tail == 0 else float(logp[b, lo + n_tail - 1, c[0]])
            total += sum(float(logp[b, lo + n_tail + t - 1, c[t]]) for t in range(1, len(c)))
            row.append(total)
        scores.append(row)
    return scores
