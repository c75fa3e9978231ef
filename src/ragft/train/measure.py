"""What a training run costs: peak memory while it runs, model FLOPs, disk size.

Peak memory on the CPU is the resident set (RSS) sampled by a background thread, reported as the
growth over the process when the block started (the trainer starts it once the base model is loaded,
so the growth is gradients, optimizer state, activations and adapters; it adds the base weights'
footprint). Freed memory is handed back to the OS first (`malloc_trim`), so a run is not flattered
by heap pages an earlier run left behind. On CUDA it is torch's peak allocation.
"""

from __future__ import annotations

import ctypes
import gc
import math
import threading
import time
from pathlib import Path


def release_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


class PeakMemory:
    """Context manager: `peak_mb` is the peak memory growth while the block ran."""

    def __init__(self, device: str = "cpu", interval_s: float = 0.02):
        self.device, self.interval_s = device, interval_s
        self.peak_mb = 0.0

    def __enter__(self):
        release_memory()
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        import psutil

        self._proc = psutil.Process()
        self._base = self._peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, self._proc.memory_info().rss)
            time.sleep(self.interval_s)

    def __exit__(self, *exc):
        if self.device == "cuda":
            import torch

            self.peak_mb = (torch.cuda.max_memory_allocated() - self._base) / 2**20
            return False
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._proc.memory_info().rss)
        self.peak_mb = (self._peak - self._base) / 2**20
        return False


def folder_mb(path: str | Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


def matmul_shapes(model) -> tuple[int, int]:
    """(parameters in the transformer's linear layers, parameters of the output head), counted from
    in/out features so that 4-bit layers count as the matrices they stand for."""
    body = head = 0
    for name, module in model.named_modules():
        if hasattr(module, "in_features") and hasattr(module, "out_features") and "lora_" not in name:
            if name.split(".")[-1] == "base_layer":
                continue  # peft's wrapper and its base layer are the same matrix
            n = module.in_features * module.out_features
            if name.endswith("lm_head"):
                head += n
            else:
                body += n
    return body, head


def logical_params(params) -> int:
    """Parameter count as the model defines it: a 4-bit weight stores two numbers per byte in a
    packed tensor, and counts as the matrix it stands for (its quant_state keeps the shape)."""
    total = 0
    for p in params:
        state = getattr(p, "quant_state", None)
        total += math.prod(state.shape) if state is not None else p.numel()
    return total


def step_flops(body_params: int, head_params: int, tokens: int, head_positions: int, full: bool) -> float:
    """Model FLOPs of one training step: 2 per multiply-add forward, and a backward of twice that
    when the weights get gradients (full fine-tuning) or once (frozen weights: only the activations'
    gradients flow, as in LoRA). The head runs only on the answer positions. Attention's own
    products (about 3 % at these lengths) are left out, so the utilisation is a slight undercount."""
    factor = 6 if full else 4
    return factor * (body_params * tokens + head_params * head_positions)
