"""Will a training method fit the device? An estimate made before anything loads, so that a method
too large for the card (full fine-tuning of a 1.5 B model on a 16 GB T4, say) is skipped with what it
would need instead of ending the chapter with an out-of-memory error.

The estimate, in bytes, for P parameters, T tokens a step, L layers of width H and a vocabulary V:
  full fine-tuning  16 P: fp32 weights (master copy when computing in bf16/fp16), fp32 gradients and
                    Adam's two moments (4 + 4 + 8); 1.5 B parameters -> 24.6 GB
  LoRA              P x the compute dtype's bytes, plus 16 bytes for each trainable parameter (at most
                    TRAINABLE_SHARE of P)
  QLoRA             NF4 weights with double quantization, about 0.56 bytes a parameter, plus LoRA's
  activations       T x L x 34 x H x (bytes / 2) (Korthikanti et al. 2022, no recomputation, attention
                    by a fused kernel) plus the fp32 logits and their gradient, T x V x 12
then MARGIN over the total for the allocator and the CUDA context.
"""

from __future__ import annotations

from dataclasses import dataclass

TRAINABLE_SHARE = 0.03  # LoRA at the book's ranks trains 0.3-2.5 % of the weights: a ceiling
MARGIN = 1.2
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
NF4_BYTES = 0.5625  # 4 bits, plus the block scales quantized again (double quantization)


@dataclass(frozen=True)
class Shape:
    """What the estimate needs to know of a model: parameters, layers, width, vocabulary."""

    n_params: float
    layers: int
    hidden: int
    vocab: int


def training_bytes(shape: Shape, method: str, dtype: str, tokens_per_step: int) -> dict[str, float]:
    """Estimated bytes by part (weights and optimizer state, activations) and in total."""
    if method not in ("lora", "lora-attention", "qlora", "full"):
        raise ValueError(f"method={method!r}: use lora, lora-attention, qlora or full")
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype={dtype!r}: use one of {sorted(DTYPE_BYTES)}")
    width = DTYPE_BYTES[dtype]
    if method == "full":
        state = 16 * shape.n_params
    else:
        base = NF4_BYTES if method == "qlora" else width
        state = base * shape.n_params + 16 * TRAINABLE_SHARE * shape.n_params
    activations = tokens_per_step * shape.layers * 34 * shape.hidden * width / 2 + tokens_per_step * shape.vocab * 12
    return {"state": state, "activations": activations, "total": MARGIN * (state + activations)}


def fit_message(model: str, shape: Shape, method: str, dtype: str, tokens_per_step: int,
                device: str, available_bytes: float) -> str | None:
    """None when the method fits the device's memory; otherwise the sentence that says it is
    skipped and what it would need."""
    need = training_bytes(shape, method, dtype, tokens_per_step)
    if need["total"] <= available_bytes:
        return None
    gb = 2**30
    return (f"{method} of {model} skipped: it needs about {need['total'] / gb:.1f} GB (weights, gradients and "
            f"optimizer state {need['state'] / gb:.1f} GB, activations {need['activations'] / gb:.1f} GB, "
            f"with a {MARGIN:.1f}x margin) and this {device} has {available_bytes / gb:.1f} GB. LoRA or QLoRA fit "
            "where full fine-tuning does not; a larger GPU runs it")


def device_bytes(device: str) -> float:
    """Memory the device offers: the GPU's total, or the machine's physical memory on a CPU."""
    if device == "cuda":
        import torch

        return float(torch.cuda.get_device_properties(0).total_memory)
    import os

    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


class DoesNotFit(MemoryError):
    """A training run that would not fit the device's free memory even one example a step."""


def shape_of(model_name: str) -> Shape:
    """The registry's shape of a model, or one read from its config (parameters from the layers'
    and the embedding's sizes, about 12 H^2 a layer plus V H) for a model the registry does not size."""
    from .. import models

    try:
        spec = models.get_spec(model_name, "lm")
    except models.ModelUnavailable:  # a model folder or another hub id
        spec = None
    if spec is not None and spec.shape is not None:
        return Shape(*spec.shape)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(models.model_source(model_name))
    layers, hidden, vocab = config.num_hidden_layers, config.hidden_size, config.vocab_size
    return Shape(12 * layers * hidden**2 + vocab * hidden, layers, hidden, vocab)


def free_bytes(device: str) -> float:
    """Memory free for a training run now: the GPU's free memory (what this process and others
    already hold is not free), or the machine's available memory on a CPU (MemAvailable: free pages
    and the cache the kernel can reclaim)."""
    if device == "cuda":
        import torch

        return float(torch.cuda.mem_get_info()[0])
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return device_bytes(device)


def micro_batch(model: str, shape: Shape, method: str, dtype: str, batch_size: int, longest: int, device: str,
                available: float) -> tuple[int, str | None]:
    """The micro-batch a run of `batch_size` examples a step (the longest `longest` tokens, so a
    padded step holds at most batch_size x longest) fits into `available` bytes, with the sentence
    that says so when it is smaller than the batch: the batch then runs as micro-batches whose
    gradients accumulate, the same effective batch. Raises DoesNotFit, with the numbers, when even one
    example a step does not fit."""
    gb = 2**30
    need = training_bytes(shape, method, dtype, batch_size * longest)["total"]
    micro = batch_size
    while micro > 1 and training_bytes(shape, method, dtype, micro * longest)["total"] > available:
        micro = (micro + 1) // 2
    fits = training_bytes(shape, method, dtype, micro * longest)
    if fits["total"] > available:
        raise DoesNotFit(
            f"{method} of {model} does not fit this {device}: even one example a step ({longest} tokens) needs about "
            f"{fits['total'] / gb:.1f} GB (weights, gradients and optimizer state {fits['state'] / gb:.1f} GB, "
            f"activations {fits['activations'] / gb:.1f} GB, with a {MARGIN:.1f}x margin) and {available / gb:.1f} GB "
            "is free. Free memory (other models, other processes), use LoRA or QLoRA, or shorten the examples")
    if micro == batch_size:
        return micro, None
    steps = -(-batch_size // micro)
    return micro, (f"{method} of {model}: a step of {batch_size} examples up to {longest} tokens needs about "
                   f"{need / gb:.1f} GB and this {device} has {available / gb:.1f} GB free, so each step runs as "
                   f"{steps} micro-batches of at most {micro} whose gradients add up (gradient accumulation: the same "
                   f"effective batch of {batch_size} and the same mean loss; about {fits['total'] / gb:.1f} GB)")
