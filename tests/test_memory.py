"""The GPU rules a Colab reader meets, with CUDA simulated: the compute dtype follows native bf16
support, and a training method too large for the card is skipped with what it would need."""

import pytest

from ragft import config, models
from ragft.experiments import ch03_finetune as ch03
from ragft.train import memory

GB = 2**30
T4, A100 = 15.6 * GB, 40 * GB  # what torch reports as total_memory, about


def simulate_cuda(monkeypatch, capability: tuple[int, int], total_bytes: float):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    # a T4 says True here through emulation; only the native question tells it apart
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or capability[0] >= 8)
    monkeypatch.setattr(memory, "device_bytes", lambda device: total_bytes if device == "cuda" else 24 * GB)


@pytest.mark.parametrize("capability,dtype", [((7, 5), "float16"), ((8, 0), "bfloat16"), ((9, 0), "bfloat16")],
                         ids=["T4-fp16", "A100-bf16", "H100-bf16"])
def test_the_gpu_dtype_follows_native_bf16_support(monkeypatch, capability, dtype):
    import torch

    simulate_cuda(monkeypatch, capability, T4)
    assert models.select_dtype("cuda") == getattr(torch, dtype)
    assert models.select_dtype("cpu") == torch.float32  # the published cpu profiles, on any CPU


def test_the_estimate_counts_full_fine_tunings_state_and_lora_s_small_share():
    """Full fine-tuning: 16 bytes a parameter (fp32 weights, gradients, two Adam moments): 1.544 B
    parameters -> 24.7 GB before activations, the "about 25 GB" a T4 cannot hold."""
    shape = memory.Shape(*models.get_spec("qwen2.5-1.5b").shape)
    full = memory.training_bytes(shape, "full", "fp16", 8 * 256)
    assert full["state"] == pytest.approx(16 * 1.544e9) and full["total"] > T4
    lora = memory.training_bytes(shape, "lora", "fp16", 8 * 256)
    qlora = memory.training_bytes(shape, "qlora", "fp16", 8 * 256)
    assert qlora["state"] < lora["state"] < full["state"] / 5 and lora["total"] < T4
    with pytest.raises(ValueError, match="method"):
        memory.training_bytes(shape, "adapter", "fp16", 1)


def test_a_method_too_large_for_a_t4_is_skipped_with_what_it_needs(monkeypatch):
    simulate_cuda(monkeypatch, (7, 5), T4)
    params = config.resolve("03_finetune", "gpu", model="qwen2.5-1.5b", methods=["lora", "qlora", "full"],
                            sweep_methods=["lora", "full"])
    skipped = ch03.methods_that_do_not_fit(params, "cuda")
    assert set(skipped) == {"full"}
    assert "full of qwen2.5-1.5b skipped: it needs about" in skipped["full"] and "this cuda has 15.6 GB" in skipped["full"]
    simulate_cuda(monkeypatch, (8, 0), A100)  # the same run on a 40 GB card trains every method
    assert ch03.methods_that_do_not_fit(params, "cuda") == {}


def test_the_cpu_profile_on_this_machine_skips_nothing():
    assert ch03.methods_that_do_not_fit(config.resolve("03_finetune", "cpu"), "cpu") == {}
