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
