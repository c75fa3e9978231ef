"""Process-wide settings read from the environment: folders, network policy, threads, seeds.

Environment variables (all optional):
  RAGFT_DATA_DIR   folder with the public benchmark files (default: the repository's data/benchmarks)
  RAGFT_CACHE_DIR  converted models and trained artifacts (default ~/.cache/ragft)
  RAGFT_RUN_DIR    the current run's folder; chapters write their results there (set by the runner)
  RAGFT_ONLINE     "1" lets hub ids load; the default is offline, so a run makes no network call
  RAGFT_UNITS      use | committed | recompute | collect: how trained units are read (ragft.train.units; a
                   chapter's recompute=True sets recompute; collect writes what is missing as jobs)
  RAGFT_JOBS_DIR   where a collecting run writes its jobs (ragft.train.jobs computes them)
  RAGFT_CHECKPOINT_EVERY  steps between a computed unit's checkpoints (0, the default: none): an
                   interrupted `make units` resumes its unit from the last one, to the same outcomes
  ATEN_CPU_CAPABILITY, MKL_CBWR   the CPU kernels (CPU_KERNELS: AVX2 on x86 unless set)
"""

from __future__ import annotations

import os
import platform
import random
import sys
import warnings
from pathlib import Path

from .constants import PROJECT_ROOT, ParamError

_HUB_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
# PyTorch's vector kernels and MKL's GEMM each pick AVX2 or AVX512 code by the CPU, and the two round
# differently. Training amplifies that rounding: chapter 5 moved 4 answers of 30, and a verdict, between
# an AVX2 machine and an AVX512 one. Every x86 CPU with AVX2 computes with the AVX2 kernels (all the
# machines seen have it; on an AVX512 one they were no slower), so the published numbers are the same on
# both. oneDNN is left free: fp32 products do not use it here, and bf16 ones (an opt-in) need its
# AVX512-BF16 and AMX code to be fast. Read once per process, at the first operation: `import ragft`
# sets them before that.
CPU_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}


def offline() -> bool:
    return os.environ.get("RAGFT_ONLINE", "0") != "1"


def apply_network_policy() -> None:
    """Make the Hugging Face libraries fail fast instead of trying the hub (3.6 s instead of 49 s).

    Must run before transformers / huggingface_hub are imported, which read these at import;
    `import ragft` does it.
    """
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")  # chromadb
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for var in _HUB_OFFLINE_VARS:
        if offline():
            os.environ.setdefault(var, "1")
        elif os.environ.get(var) == "1":
            del os.environ[var]


def pin_cpu_kernels() -> None:
    """Select the AVX2 kernels on an x86 CPU that has AVX2 and FMA (CPU_KERNELS), unless the variables
    are set already; elsewhere nothing (asking for AVX2 code on a CPU without it would crash)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy 1 kept them under numpy.core
        from numpy.core._multiarray_umath import __cpu_features__ as features
    if features.get("AVX2") and features.get("FMA3"):
        for var, value in CPU_KERNELS.items():
            os.environ.setdefault(var, value)


def set_online(online: bool) -> None:
    """Switch the network policy at run time (a chapter's `online` parameter: the gpu profile on
    Colab). The Hugging Face libraries read their offline flags at import, so the ones already
    imported are updated too."""
    os.environ["RAGFT_ONLINE"] = "1" if online else "0"
    for var in _HUB_OFFLINE_VARS:
        os.environ[var] = "0" if online else "1"
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:
        hub.HF_HUB_OFFLINE = not online
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = datasets_config.HF_DATASETS_OFFLINE = not online


def refuse_without_cuda(params) -> None:
    """The gpu profile on a machine without a CUDA GPU, refused before anything goes online (the
    parameters cell of every chapter, chapter 8's estimate, configure), unless device names the CPU on
    purpose: it would fetch the hub's larger model and run GPU-sized samples on the CPU for hours."""
    if getattr(params, "profile", None) == "gpu" and getattr(params, "device", "auto") in (None, "auto"):
        import torch

        if not torch.cuda.is_available():
            raise ParamError("profile='gpu' needs a CUDA GPU, and this machine has none: it would load the hub's "
                             "larger model online and run GPU-sized samples on the CPU. Use profile='cpu' (offline, "
                             "the published numbers), or pass device='cpu' to run the gpu profile here on purpose")


def configure(params) -> None:
    """Apply a chapter's parameters to the process: network policy, seeds, thread count. The gpu
    profile on a machine without a CUDA GPU is refused before anything goes online, unless device
    names the CPU on purpose: it would fetch the hub's larger model and run GPU-sized samples on the
    CPU for hours."""
    refuse_without_cuda(params)
    set_online(params.online)
    set_determinism(params.seed, params.threads)
    if getattr(params, "recompute", False):  # a chapter that trains live (ragft.train.units reads the mode)
        os.environ["RAGFT_UNITS"] = "recompute"


def cache_dir() -> Path:
    path = Path(os.environ.get("RAGFT_CACHE_DIR") or Path.home() / ".cache" / "ragft").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


BUNDLED_DATA = PROJECT_ROOT / "data" / "benchmarks"  # the benchmark files the repository carries


def data_dir(override: str | None = None) -> Path | None:
    """The benchmark data folder: a parameter wins over RAGFT_DATA_DIR, which wins over the
    repository's own data/benchmarks; None when none of them is there (an installed package without
    the repository)."""
    value = override or os.environ.get("RAGFT_DATA_DIR")
    if value:
        return Path(value).expanduser()
    return BUNDLED_DATA if BUNDLED_DATA.is_dir() else None


def checkpoint_every() -> int:
    """RAGFT_CHECKPOINT_EVERY: steps between the checkpoints of a unit computed here (0: none)."""
    value = os.environ.get("RAGFT_CHECKPOINT_EVERY", "0")
    if not value.isdigit():
        raise ParamError(f"RAGFT_CHECKPOINT_EVERY={value!r} is not allowed: use a whole number of steps >= 0 (0: none)")
    return int(value)


def run_dir() -> Path:
    """Where this run's results go: RAGFT_RUN_DIR, or _build/run/interactive for a notebook opened by hand."""
    path = Path(os.environ.get("RAGFT_RUN_DIR") or PROJECT_ROOT / "_build" / "run" / "interactive")
    path.mkdir(parents=True, exist_ok=True)
    return path


def set_determinism(seed: int, threads: int) -> None:
    """Fixed seeds and a fixed thread count: two runs on the same machine give the same metrics."""
    import numpy as np
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)
    want, have = os.environ.get("ATEN_CPU_CAPABILITY"), torch.backends.cpu.get_cpu_capability()
    if want and have.lower() != want.lower() and have != "DEFAULT":
        warnings.warn(f"PyTorch computes with its {have} kernels, not {want}: it ran before `import ragft` "
                      "could select them, so numbers may differ from the published ones; restart the kernel "
                      "and import ragft before torch", stacklevel=2)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
