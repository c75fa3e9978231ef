"""Supervised fine-tuning data: chat examples tokenized with the loss on the answer only, and
length-bucketed batches (examples of similar length together, so little compute goes to padding).

An example is the prompt conversation (system and user turns, as the evaluation will send them)
plus the assistant answer. The documented JSONL form, one example per line, is
`{"messages": [{"role": ..., "content": ...}, ...], "answer": "..."}`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from ..jsonl import read_rows, write_rows


class TrainingDataError(ValueError):
    """Training input that cannot be used; the message says what is wrong and where."""


@dataclass(frozen=True)
class SFTExample:
    messages: tuple  # the prompt conversation: dicts with role and content
    answer: str

    def to_json(self) -> dict:
        return {"messages": list(self.messages), "answer": self.answer}


def example(messages: list[dict], answer: str) -> SFTExample:
    return SFTExample(tuple(dict(m) for m in messages), answer)


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    return write_rows(rows, path)


def read_jsonl(path: str | Path, parse, expected: str) -> list:
    """`parse(row)` for each line of a JSONL file; a bad line raises TrainingDataError naming it."""
    out = []
    for n, row in read_rows(path, TrainingDataError):
        try:
            out.append(parse(row))
        except (KeyError, TypeError) as e:
            raise TrainingDataError(f"{path}, line {n}: expected {expected} ({e})") from e
    return out


def save_jsonl(examples: list[SFTExample], path: str | Path) -> Path:
    return write_jsonl([e.to_json() for e in examples], path)


def load_jsonl(path: str | Path) -> list[SFTExample]:
    return read_jsonl(path, lambda row: example(row["messages"], row["answer"]), '{"messages": [...], "answer": "..."}')


@dataclass(frozen=True)
class Tokenized:
    input_ids: tuple[int, ...]
    n_answer: int  # the last n_answer tokens are the answer (the loss is computed on them only)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize(tokenizer, examples: list[SFTExample], max_len: int) -> list[Tokenized]:
    """Token ids through the model's chat template; the answer's tokens end the sequence.
    Fails on an empty dataset, an empty answer, or examples longer than max_len (naming them)."""
    if not examples:
        raise TrainingDataError("the training dataset is empty: nothing to fine-tune on")
    out, too_long = [], []
    for i, ex in enumerate(examples):
        if not ex.answer.strip():
            raise TrainingDataError(f"example {i} has an empty answer: the loss would have nothing to learn")
        # the same text -> ids route as generation.generate, so training sees the prompts evaluation sends
        prompt = _ids(tokenizer, tokenizer.apply_chat_template(list(ex.messages), tokenize=False, add_generation_prompt=True))
        full = _ids(tokenizer, tokenizer.apply_chat_template(
            list(ex.messages) + [{"role": "assistant", "content": ex.answer}], tokenize=False))
        if full[:len(prompt)] != prompt:  # a template that rewrites earlier turns: append answer + end
            full = prompt + _ids(tokenizer, ex.answer) + [tokenizer.eos_token_id]
        while len(full) > len(prompt) + 1 and tokenizer.decode(full[-1:]).strip() == "":
            full = full[:-1]  # the template's trailing newline after the end-of-turn token: nothing to learn
        if len(full) > max_len:
            too_long.append((i, len(full)))
        out.append(Tokenized(tuple(full), len(full) - len(prompt)))
    if too_long:
        shown = ", ".join(f"#{i} ({n} tokens)" for i, n in too_long[:5])
        raise TrainingDataError(f"{len(too_long)} of {len(examples)} examples are longer than max_len={max_len}: "
                                f"{shown}{' ...' if len(too_long) > 5 else ''}; shorten them or raise max_len")
    return out


def batches(data: list[Tokenized], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Indices of one epoch's batches: sorted by length (shuffled among equal lengths) and cut into
    batches, the batch order then shuffled. Deterministic for (seed, epoch), so a resumed run sees
    the same batches."""
    rng = random.Random(seed * 100_003 + epoch)
    order = sorted(range(len(data)), key=lambda i: (len(data[i].input_ids), rng.random()))
    out = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(out)
    return out


def collate(data: list[Tokenized], indices: list[int], pad_id: int):
    """Left-padded tensors: every sequence ends at the last position, so the answers sit in the last
    max(n_answer) positions and the output head runs only there. Position ids count real tokens."""
    import torch

    rows = [data[i] for i in indices]
    width = max(len(r.input_ids) for r in rows)
    keep = max(r.n_answer for r in rows) + 1  # positions whose logits predict an answer token
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), keep - 1), -100, dtype=torch.long)
    for j, r in enumerate(rows):
        n = len(r.input_ids)
        ids[j, width - n:] = torch.tensor(r.input_ids)
        mask[j, width - n:] = 1
        labels[j, keep - 1 - r.n_answer:] = torch.tensor(r.input_ids[n - r.n_answer:])
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    return ids, mask, positions, labels, keep
