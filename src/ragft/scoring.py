"""Scoring by log-likelihood: rank a question's candidate answers by how likely the model finds each
as its reply, as knowledge-injection studies score knowledge (multiple choice, Ovadia et al. 2024).

One prefill per question (the prompt, after a prefix every prompt shares is computed once), then
all candidates in one small batch on top of that cache: several times cheaper than decoding an
answer, and it measures what the model knows rather than how it phrases it. The candidate is scored
as the first words of the assistant's reply, summed over its tokens (lm-evaluation-harness "acc");
candidates of one question are values of the same attribute, so their lengths are alike.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

from .generation import MIN_SHARED_PREFIX, _common_prefix_len


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


def rank_candidates(lm, conversations: list[list[dict]], candidates: list[list[str]], gold: list[int],
                    desc: str = "scoring") -> Ranking:
    """Log-likelihood of each candidate reply to each conversation (chat template, as `generate`
    sends it). `candidates[i]` are question i's answers to rank, `gold[i]` the index of the right one."""
    import torch

    from .progress import progress

    if not (len(conversations) == len(candidates) == len(gold)):
        raise ValueError(f"{len(conversations)} conversations, {len(candidates)} candidate lists and "
                         f"{len(gold)} gold indices: they must pair up")
    for i, (cands, g) in enumerate(zip(candidates, gold)):
        if len(cands) < 2 or not all(isinstance(c, str) and c.strip() for c in cands):
            raise ValueError(f"question {i}: needs at least 2 non-empty candidate strings, got {cands!r}")
        if not (isinstance(g, int) and 0 <= g < len(cands)):
            raise ValueError(f"question {i}: gold={g!r} is not an index into its {len(cands)} candidates")
    tok, model = lm.tokenizer, lm.model
    ids = [tok(tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True),
               add_special_tokens=False)["input_ids"] for c in conversations]
    start = time.perf_counter()
    n_common = _common_prefix_len(ids) if len(ids) > 1 else 0
    shared = None
    with torch.inference_mode():
        if n_common >= MIN_SHARED_PREFIX:
            shared = model(torch.tensor([ids[0][:n_common]], device=lm.device), use_cache=True).past_key_values
        else:
            n_common = 0
        scores = []
        for prompt, cands in progress(list(zip(ids, candidates)), desc=desc):
            # the question's own prompt on top of the shared prefix; its last logits predict token 1
            out = model(torch.tensor([prompt[n_common:]], device=lm.device), use_cache=True,
                        past_key_values=copy.deepcopy(shared) if shared is not None else None)
            first = torch.log_softmax(out.logits[0, -1].float(), -1)
            cand_ids = [tok(c, add_special_tokens=False)["input_ids"] for c in cands]
            width = max(len(c) for c in cand_ids)
            cache = out.past_key_values
            cache.batch_repeat_interleave(len(cands))
            rows = [c + [tok.pad_token_id] * (width - len(c)) for c in cand_ids]
            mask = [[1] * len(prompt) + [1] * len(c) + [0] * (width - len(c)) for c in cand_ids]
            logits = model(torch.tensor(rows, device=lm.device), past_key_values=cache,
                           attention_mask=torch.tensor(mask, device=lm.device)).logits.float()
            logp = torch.log_softmax(logits, -1)
            row = []
            for j, c in enumerate(cand_ids):
                total = float(first[c[0]])  # later tokens are predicted by the candidate's own positions
                total += sum(float(logp[j, t - 1, c[t]]) for t in range(1, len(c)))
                row.append(total)
            scores.append(row)
    return Ranking(scores, list(gold), [len(x) for x in ids], time.perf_counter() - start)
