"""Process-wide settings read from the environment: folders, network policy, threads, seeds.

Environment variables (all optional):
  RAGFT_DATA_DIR   folder with the public benchmark files (CI: ../shared/data)
  RAGFT_CACHE_DIR  converted models and trained artifacts (default ~/.cache/ragft)
  RAGFT_RUN_DIR    the current run's folder; chapters write their results there (set by the runner)
  RAGFT_ONLINE     "1" lets hub ids load; the default is offline, so a run makes no network call
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
_HUB_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


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


def configure(params) -> None:
    """Apply a chapter's parameters to the process: network policy, seeds, thread count."""
    set_online(params.online)
    set_determinism(params.seed, params.threads)


def cache_dir() -> Path:
    path = Path(os.environ.get("RAGFT_CACHE_DIR") or Path.home() / ".cache" / "ragft").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir(override: str | None = None) -> Path | None:
    """The benchmark data folder: a parameter wins over RAGFT_DATA_DIR; None when neither is set."""
    value = override or os.environ.get("RAGFT_DATA_DIR")
    return Path(value).expanduser() if value else None


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
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
