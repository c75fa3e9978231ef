"""One training interface over LoRA, QLoRA and full fine-tuning, with its costs measured.

`train(model_name, examples, TrainConfig(...))` loads a fresh base model through the registry,
fine-tunes it (loss on the answer tokens only), saves the artifact (a LoRA adapter, or the full
weights) and returns the trained model with its measurements. Artifacts live in the cache under a
hash of the model, the config and the data: the same call again, in this chapter or a later one,
loads the artifact instead of retraining. With `checkpoint_every`, an interrupted run continues
from its last checkpoint when called again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import models, settings
from ..files import write_atomically
from ..progress import progress
from ..host import matmul_gflops
from . import measure, memory
from .data import SFTExample, Tokenized, batches, collate, tokenize

METHODS = ("lora", "qlora", "full")
TARGETS = {
    "all-linear": "all-linear",  # peft: every linear layer of the transformer, not the output head
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
}
SCHEDULES = ("linear", "constant")
ARTIFACT_VERSION = 1  # bump when the training code changes what an artifact holds


@dataclass(frozen=True)
class TrainConfig:
    method: str = "lora"  # lora | qlora | full
    rank: int = 16  # LoRA rank
    alpha: int = 32  # LoRA scaling numerator (scale = alpha / rank)
    target: str = "all-linear"  # all-linear | attention: the layers that get adapters
    lr: float = 1e-3
    epochs: int = 3
    batch_size: int = 8
    max_len: int = 256  # longer examples are an error, not silently cut
    seed: int = 0
    checkpoint_every: int = 0  # steps between checkpoints (0: none)
    # linear: warm-up, then linear decay to 0 at the last step; constant: warm-up, then the rate held,
    # so that the model after any epoch is what a run of that many epochs gives (a curve's checkpoints)
    schedule: str = "linear"
    warmup: int = 0  # optimizer steps of linear warm-up from 1/(warmup+1) of the rate
    dtype: str = "auto"  # compute dtype (models.select_dtype); full fine-tuning keeps fp32 master weights
    device: str = "auto"

    def validate(self) -> None:
        def bad(name, allowed):
            raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} is not allowed: {allowed}")

        if self.method not in METHODS:
            bad("method", f"use one of {list(METHODS)}")
        if self.method != "full":
            if not (isinstance(self.rank, int) and self.rank >= 1):
                bad("rank", "the LoRA rank must be an integer >= 1 (rank 0 would train nothing)")
            if self.target not in TARGETS:
                bad("target", f"use one of {list(TARGETS)}")
            if self.alpha <= 0:
                bad("alpha", "use a positive number")
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            bad("epochs", "use an integer >= 1")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            bad("batch_size", "use an integer >= 1")
        if not (0 < self.lr < 1):
            bad("lr", "use a learning rate in (0, 1)")
        if not (isinstance(self.max_len, int) and 8 <= self.max_len <= 131_072):
            bad("max_len", "use an integer in [8, 131072]")
        if not (isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0):
            bad("checkpoint_every", "use an integer >= 0")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"use one of {list(SCHEDULES)}")
        if not (isinstance(self.warmup, int) and self.warmup >= 0):
            bad("warmup", "use an integer >= 0")


class NonFiniteTraining(RuntimeError):
    """A training run whose loss or weights stopped being finite: nothing of it is saved or cached."""


def _refuse_non_finite(what: str, folder: Path, label: str, cfg: TrainConfig, dtype, step: int, epoch: int) -> None:
    """Delete everything the run wrote (checkpoint, snapshots) and stop with what went wrong and where."""
    shutil.rmtree(folder, ignore_errors=True)
    raise NonFiniteTraining(
        f"{label}: {what} at optimizer step {step + 1} (epoch {epoch + 1}) of {cfg.method} training in "
        f"{str(dtype).replace('torch.', '')}: nothing was saved or cached. Config: lr {cfg.lr:g}, rank "
        f"{cfg.rank}, batch {cfg.batch_size}, schedule {cfg.schedule}, warm-up {cfg.warmup}, epochs {cfg.epochs}, "
        f"max_len {cfg.max_len}. Try " + ("fp32 (dtype='fp32'), " if "32" not in str(dtype) else "")
        + "a lower lr, or a smaller batch")


def _finite_weights(params: dict) -> bool:
    import torch

    return all(bool(torch.isfinite(p).all()) for p in params.values())


@dataclass
class TrainResult:
    lm: models.LoadedLM  # the trained model, ready for generation.generate
    artifact: Path
    metrics: dict  # measurements of the run that trained it (also when loaded from the cache)
    losses: list = field(default_factory=list)
    cached: bool = False


def artifact_key(model_name: str, cfg: TrainConfig, data: list[Tokenized], start: dict | None = None) -> str:
    h = hashlib.sha256()
    identity = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "checkpoint_every"}
    for k, default in (("schedule", "linear"), ("warmup", 0)):  # fields added later: old runs keep their hash
        if identity[k] == default:
            del identity[k]
    h.update(json.dumps([ARTIFACT_VERSION, model_name, identity], sort_keys=True).encode())
    for name in sorted(start or {}):  # a continued run is another run for every starting adapter
        h.update(name.encode() + start[name].float().numpy().tobytes())
    for t in data:
        h.update(json.dumps([t.input_ids, t.n_answer]).encode())
    return h.hexdigest()[:16]


def _load_base(model_name: str, cfg: TrainConfig, master_fp32: bool = False) -> models.LoadedLM:
    dtype = "fp32" if master_fp32 else cfg.dtype
    return models.load_lm(model_name, cfg.device, dtype, quantization="nf4" if cfg.method == "qlora" else None)


def mixed_precision(cfg: TrainConfig):
    """The compute dtype when full fine-tuning must keep fp32 master weights, else None.

    Full fine-tuning updates every weight: in pure bf16 an update smaller than a weight's rounding
    step (lr 1e-4 x a weight of 0.05 is far below bf16's 8 bits of mantissa) is lost, and the model
    learned nothing. The standard recipe keeps the weights and AdamW states in fp32 and runs the
    forward and backward passes under autocast in the low-precision dtype. LoRA and QLoRA need no
    recipe: the base is frozen, and peft keeps the adapter weights in fp32.
    """
    import torch

    compute = models.select_dtype(models.select_device(cfg.device), cfg.dtype)
    return compute if cfg.method == "full" and compute != torch.float32 else None


def _wrap(lm: models.LoadedLM, cfg: TrainConfig):
    """The trainable model: LoRA adapters (on a 4-bit base for QLoRA) or every weight."""
    import torch

    model = lm.model
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.method == "qlora":
        # no gradient checkpointing: these sequences are short, and it would re-run the forward pass
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    torch.manual_seed(cfg.seed)  # LoRA's A matrices are drawn at random
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=TARGETS[cfg.target],
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def _adapter_weights(folder: str | Path, cfg: TrainConfig) -> dict:
    """The tensors of a saved LoRA adapter, checked against the run that continues it."""
    folder = Path(folder)
    if cfg.method == "full":
        raise ValueError("init_from continues a LoRA or QLoRA adapter; full fine-tuning starts from a model name")
    weights, config = folder / "adapter_model.safetensors", folder / "adapter_config.json"
    if not (weights.is_file() and config.is_file()):
        raise FileNotFoundError(f"init_from={str(folder)!r} holds no LoRA adapter (adapter_model.safetensors and "
                                "adapter_config.json)")
    saved = json.loads(config.read_text())
    targets = TARGETS[cfg.target]
    same_target = sorted(saved.get("target_modules") or []) == sorted(targets) if isinstance(targets, list) else True
    if saved.get("r") != cfg.rank or not same_target:
        raise ValueError(f"init_from={str(folder)!r} has rank {saved.get('r')} on {saved.get('target_modules')}; this run "
                         f"trains rank {cfg.rank} on {cfg.target}: continue an adapter with the same shape")
    from safetensors.torch import load_file

    return load_file(weights)


def _trainable(model) -> dict:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _save_artifact(model, tokenizer, cfg: TrainConfig, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if cfg.method == "full":
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    else:
        model.save_pretrained(folder)  # peft: the adapter only


def load_artifact(model_name: str, folder: str | Path, cfg: TrainConfig, merge: bool = False) -> models.LoadedLM:
    """A trained model from its artifact folder: the full weights, or the base model plus the adapter
    (merged into the base weights when merge=True and the base is not 4-bit)."""
    folder = Path(folder)
    weights = list(folder.glob("adapter_model.*")) + list(folder.glob("model*.safetensors"))
    if not folder.is_dir() or not weights:
        raise FileNotFoundError(f"no trained artifact in {folder}: expected an adapter (adapter_model.safetensors) "
                                "or full weights (model.safetensors); train first or check the path")
    if cfg.method == "full":
        return models.load_lm(str(folder), cfg.device, cfg.dtype)  # saved with its tokenizer
    from peft import PeftModel

    lm = _load_base(model_name, cfg)
    lm.model = PeftModel.from_pretrained(lm.model, folder).eval()
    return merged(lm) if merge else lm


def merged(lm: models.LoadedLM) -> models.LoadedLM:
    """The model with its LoRA adapter merged into the base weights, for answering: the same function
    up to float rounding, and cheaper, since an unmerged adapter adds its own matrix products to every
    linear layer (measured here, rank 8 on every linear layer of the 135M model, 24 prompts of 300
    tokens: 17.2 s unmerged against 12.2 s merged). In fp32 only: a bf16 weight's rounding step is as
    large as many LoRA updates, so a bf16 model (the gpu profile), a 4-bit base (QLoRA) or a model
    without an adapter is returned as it is. Each merged weight is written to a new tensor (peft's
    safe_merge, which also refuses a sum that is not finite): the base weights are memory-mapped from
    the cache's safetensors file, and an in-place sum copies each page on its first write (the 135 M
    model: 0.85 s in place against 0.37 s, the same bits)."""
    import torch
    from peft import PeftModel

    if hasattr(lm, "as_merged"):  # a trained unit's model (ragft.units): its answers are read or stored merged
        return lm.as_merged()
    if isinstance(getattr(lm, "model", None), PeftModel) and lm.quantization is None and lm.dtype == torch.float32:
        lm.model = lm.model.merge_and_unload(safe_merge=True).eval()
    return lm


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    """The share of cfg.lr at optimizer step `step` (0-based) of `total`: a linear warm-up over
    cfg.warmup steps, then the rate held (constant) or decayed linearly to 0 at `total` (linear)."""
    if step < cfg.warmup:
        return (step + 1) / (cfg.warmup + 1)
    return 1.0 if cfg.schedule == "constant" else 1 - step / total


def snapshot_folder(folder: str | Path, epoch: int) -> Path:
    """Where a run's model after `epoch` epochs is kept (train's `snapshots`): an artifact folder
    of its own (load_artifact reads it)."""
    return Path(folder) / "snapshots" / f"epoch-{epoch}"


def attendable(mask):
    """The attention mask a training batch is run with. Without padding: the 2D mask as it is (the
    attention runs causal, with no mask). With left padding: the 4D boolean mask SDPA reads (True
    attends: causal, real keys only), where each padding query also attends to itself. transformers
    (5.x, `masking_utils.sdpa_mask`) leaves a left-padding query row with no key to attend to, and a
    GPU's attention kernels return NaN for such a row; 0 * NaN then carries it into the real rows'
    values and gradients (issue 47: bf16 LoRA went NaN at a padded batch and saved a NaN adapter). A
    padding row's own output is never scored, and the real rows' mask is unchanged, so their numbers
    are the same as with the 2D mask."""
    import torch

    if bool(mask.all()):
        return mask
    n = mask.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=mask.device).tril()
    return (causal[None, None] & mask.bool()[:, None, None, :]) | torch.eye(n, dtype=torch.bool, device=mask.device)


def _loss(model, batch):
    import torch.nn.functional as F

    ids, mask, positions, labels, keep = batch
    logits = model(input_ids=ids, attention_mask=attendable(mask), position_ids=positions, logits_to_keep=keep,
                   use_cache=False).logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def _to(batch: tuple, device: str) -> tuple:
    return tuple(t.to(device) if hasattr(t, "to") else t for t in batch)


def _on_device(data: list[Tokenized], indices: list[int], lm: models.LoadedLM) -> tuple:
    """The batch of these examples (collate), its tensors on the model's device."""
    return _to(collate(data, indices, lm.tokenizer.pad_token_id), lm.device)


# The devices on which a run says, before it trains, how long it will take at the device's measured
# rate (expected_time). On the CPU the chapters say it from the host's measured speed instead
# (ragft.host), for free: timing passes there would cost seconds of the book's budget.
ESTIMATE_DEVICES = ("cuda",)
ESTIMATE_PASSES = 3  # timed forward and backward passes, after one warm-up pass


def expected_time(model, data: list[Tokenized], cfg: TrainConfig, lm: models.LoadedLM, autocast, label: str,
                  dtype, share_left: float = 1.0) -> str:
    """What the run will take here, said before it trains: its training tokens (share_left of them
    when a resumed run has some done) at the rate the device runs forward and backward passes of the
    run's largest batch in the run's dtype (one warm-up pass, then ESTIMATE_PASSES timed). The model
    runs the passes in eval mode, so no dropout draws a random number, and their gradients are
    dropped: the training that follows is the same as without them (tested). The optimizer's steps
    are not timed, so the time is a lower bound, close for adapters."""
    import torch

    indices = max(batches(data, cfg.batch_size, cfg.seed, 0), key=lambda b: sum(len(data[i].input_ids) for i in b))
    batch = _on_device(data, indices, lm)
    seconds = []
    model.eval()
    try:
        for i in range(1 + ESTIMATE_PASSES):
            t0 = time.perf_counter()
            with autocast():
                loss = _loss(model, batch)
            loss.backward()
            if lm.device == "cuda":
                torch.cuda.synchronize()
            if i:
                seconds.append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
    finally:
        model.train()
    rate = int(batch[1].sum()) * len(seconds) / sum(seconds)
    tokens = round(sum(len(d.input_ids) for d in data) * cfg.epochs * share_left)
    took = tokens / rate
    took = f"{took:.0f} s" if took < 120 else f"{took / 60:.0f} minutes"
    where = torch.cuda.get_device_name() if lm.device == "cuda" else f"this {lm.device}"
    return (f"[ragft.train] {label} ({cfg.method}, {str(dtype).replace('torch.', '')}): expected about {took} for "
            f"{tokens:,} training tokens at {rate:,.0f} tokens/s, measured on {where} (forward and backward passes of "
            "its largest batch; the optimizer's steps add to it)")


def _finished(done: Path) -> dict | None:
    """A cached run's finished-marker (train_metrics.json), or None, with the path and what happens
    next printed, when it cannot be read whole: the artifact beside it is not trusted, and the run
    trains again."""
    try:
        saved = json.loads(done.read_text())
        if not isinstance(saved, dict) or not {"metrics", "losses"} <= set(saved):
            raise ValueError("missing metrics or losses")
        return saved
    except (ValueError, OSError) as e:  # json.JSONDecodeError is a ValueError
        print(f"[ragft.train] {done} cannot be read ({e}): training again (the artifact beside it is not used)")
        return None


RESUME = "resume.pt"  # a finished prefix's last state: a longer run of the same key starts from it


def _state(model, optimizer, schedule, step, losses, kept, step_s, step_tokens, step_flops, pad, family) -> dict:
    """A run's state after `step` steps, all it needs to go on to the same outcomes (a checkpoint), and
    the device family that computed it (another family's state would not go on to the same weights)."""
    return {"family": family, "weights": {n: p.detach().clone() for n, p in _trainable(model).items()},
            "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "step": step, "losses": losses,
            "snapshots": kept, "step_s": step_s, "step_tokens": step_tokens, "step_flops": step_flops, "pad": pad}


def _ours(saved: dict | None, here: str) -> bool:
    """A cached run (its train_metrics.json) this device family computed: its weights are what training
    here gives, to the bit. A run from before runs recorded their family counts as ours."""
    return saved is not None and saved["metrics"].get("family", here) == here


def _resume_from_shorter_prefix(folder: Path, whole: str, target: int, snapshots: tuple[int, ...], here: str) -> None:
    """A run about to train (a prefix up to `target` epochs, or the whole run) starts from the longest
    finished shorter prefix of the same key that kept every snapshot it asks for below that prefix's
    end, where it has none of its own checkpoints: that prefix's last state becomes its checkpoint and
    its snapshots are copied beside it, so that scoring a stored unit's checkpoints in rising order
    trains each epoch once (resuming is exact, as after an interruption)."""
    if (folder / "checkpoint.pt").exists() or (folder / "train_metrics.json").exists():
        return
    shorter = []
    for p in folder.parent.glob(f"{whole}-to-e*"):
        epoch = p.name.rsplit("-to-e", 1)[1]
        if not (epoch.isdigit() and int(epoch) < target and (p / RESUME).exists() and (p / "train_metrics.json").exists()):
            continue
        saved = _finished(p / "train_metrics.json")
        kept = {int(e) for e in (saved or {}).get("metrics", {}).get("snapshots", {})}
        if _ours(saved, here) and {e for e in snapshots if e < int(epoch)} <= kept:
            shorter.append((int(epoch), p))
    if not shorter:
        return
    _, prefix = max(shorter)
    folder.mkdir(parents=True, exist_ok=True)
    if (prefix / "snapshots").is_dir():
        shutil.copytree(prefix / "snapshots", folder / "snapshots", dirs_exist_ok=True)
    shutil.copyfile(prefix / RESUME, folder / "checkpoint.tmp")
    (folder / "checkpoint.tmp").replace(folder / "checkpoint.pt")


def train(model_name: str, examples: list[SFTExample], cfg: TrainConfig, label: str = "run",
          on_step=None, cache: bool = True, init_from: str | Path | None = None,
          snapshots: tuple[int, ...] = (), load: bool = True, stop_after: int | None = None) -> TrainResult:
    """Fine-tune `model_name` on `examples`. `on_step(step, loss)` is called after every optimizer
    step (for tests that interrupt a run). With cache=True a finished artifact is reused.
    `init_from`: a LoRA adapter folder trained with the same method, rank and target, whose weights
    the run starts from (continued training) instead of fresh adapters. `snapshots`: epochs after
    which the model is saved as an artifact of its own (snapshot_folder), with the run's seconds,
    tokens and FLOPs up to there in metrics["snapshots"]; the last epoch's is the artifact itself.
    `load=False`: a cached run returns its artifact folder without loading the model (lm is None).
    `stop_after`: the same schedule (the rate of an `epochs`-long run), stopped after that epoch, whose
    model is the artifact: the weights the whole run has after that epoch, at a fraction of its cost (a
    unit's prefix: the rotation's, or a checkpoint a scoring asks for). A finished whole run that kept
    that epoch answers it; else the prefix is a run of its own, cached under its own name."""
    import torch

    cfg.validate()
    if stop_after is not None and not (isinstance(stop_after, int) and 1 <= stop_after <= cfg.epochs):
        raise ValueError(f"stop_after={stop_after!r}: use an epoch between 1 and epochs={cfg.epochs}")
    if stop_after == cfg.epochs:
        stop_after = None  # stopped after its last epoch: the whole run
    snapshots = tuple(sorted(set(snapshots)))
    if snapshots and not all(isinstance(e, int) and 1 <= e <= cfg.epochs for e in snapshots):
        raise ValueError(f"snapshots={list(snapshots)}: use epochs between 1 and epochs={cfg.epochs}")
    from transformers import AutoTokenizer

    start = _adapter_weights(init_from, cfg) if init_from is not None else None
    data = tokenize(AutoTokenizer.from_pretrained(models.model_source(model_name)), examples, cfg.max_len)
    key = artifact_key(model_name, cfg, data, start)
    whole_run = f"{label}-{key}"  # the whole run's folder; a prefix's is named after it
    folder = settings.cache_dir() / "trained" / whole_run
    here = models.device_family(models.select_device(cfg.device))
    if stop_after is not None:
        whole = _finished(folder / "train_metrics.json") if cache and (folder / "train_metrics.json").exists() else None
        if _ours(whole, here) and str(stop_after) in whole["metrics"].get("snapshots", {}) and \
                all(math.isfinite(x) for x in whole["losses"]):
            kept_at = snapshot_folder(folder, stop_after)
            return TrainResult(load_artifact(model_name, kept_at, cfg) if load else None, kept_at, whole["metrics"],
                               whole["losses"], cached=True)
        folder = folder.with_name(f"{folder.name}-to-e{stop_after}")  # a run stopped early is a run of its own
    done = folder / "train_metrics.json"
    if cache and done.exists():
        saved = _finished(done)
        if saved is None:  # a marker cut short (a full disk, a kill mid-write before writes were atomic)
            cache = False
        elif not _ours(saved, here):  # a cache carried from another device family: not this family's weights
            print(f"[ragft.train] {label}: the cached run was trained on {saved['metrics']['family']}, this is "
                  f"{here}: training again here", flush=True)
            cache = False
        elif not all(math.isfinite(x) for x in saved["losses"]):
            cache = False  # a non-finite run saved before runs were refused: never reloaded, trained again
        elif set(snapshots) <= {int(e) for e in saved["metrics"].get("snapshots", {})}:
            # a run saved before runs were flagged is flagged now, from its own losses
            return TrainResult(load_artifact(model_name, folder, cfg) if load else None, folder,
                               flag_divergence(saved["metrics"], label),
                               saved["losses"], cached=True)
        cache = False  # the finished run lacks a snapshot asked for now: train it again
    if not cache:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        _resume_from_shorter_prefix(folder, whole_run, stop_after or cfg.epochs, snapshots, here)
    import contextlib

    compute = mixed_precision(cfg)
    device = models.select_device(cfg.device)
    method = "lora-attention" if cfg.method == "lora" and cfg.target == "attention" else cfg.method
    # memory before the first step (before the base loads): a step of batch_size examples of the longest
    # length, against what the device has free; where it does not fit, micro-batches (said), or a refusal
    micro, note = memory.micro_batch(model_name, memory.shape_of(model_name), method,
                                     models.dtype_name(compute or models.select_dtype(device, cfg.dtype)),
                                     cfg.batch_size, max(len(d.input_ids) for d in data), device,
                                     memory.free_bytes(device))
    if note:
        print(f"[ragft.train] {label}: {note}", flush=True)
    base = _load_base(model_name, cfg, master_fp32=compute is not None)
    autocast = (lambda: torch.autocast(device_type=base.device, dtype=compute)) if compute else contextlib.nullcontext
    # fp16 gradients underflow without loss scaling, whatever the method (LoRA's fp32 adapters take their
    # gradients through the fp16 base's activations); bf16 has fp32's range and needs none
    train_dtype = compute or base.dtype  # what the passes compute in
    scaler = torch.amp.GradScaler(base.device) if train_dtype == torch.float16 else None

    body, head = measure.matmul_shapes(base.model)
    base_weight_mb = base.model.get_memory_footprint() / 2**20
    peak_gflops = _peak_gflops(train_dtype, base.device)
    torch.manual_seed(cfg.seed)
    with measure.PeakMemory(base.device) as mem:
        model = _wrap(base, cfg)
        if start is not None:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, start)
        model.train()
        params = _trainable(model)
        optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=0.0)
        steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
        total = steps_per_epoch * cfg.epochs
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, total))
        ckpt = folder / "checkpoint.pt"
        step, losses, step_s, step_tokens, step_flops, pad = 0, [], [], [], [], 0
        kept: dict = {}  # epoch -> the run's cost up to its snapshot
        state = torch.load(ckpt, weights_only=True) if ckpt.exists() else None  # tensors, numbers, lists: no code runs
        if state is not None and state.get("family", here) != here:
            print(f"[ragft.train] {label}: its checkpoint was computed on {state['family']}, this is {here}: "
                  "starting over", flush=True)
            state = None
        if state is not None:
            model.load_state_dict(state["weights"], strict=False)
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            step, losses = state["step"], state["losses"]
            kept = state.get("snapshots", {})
            # the interrupted steps' own seconds, tokens and FLOPs: the run's totals count every step once
            step_s, step_tokens, step_flops = state.get("step_s", []), state.get("step_tokens", []), state.get("step_flops", [])
            pad = state.get("pad", 0)
        end = steps_per_epoch * (stop_after or cfg.epochs)  # a prefix's last step
        if base.device in ESTIMATE_DEVICES and step < end:
            print(expected_time(model, data, cfg, base, autocast, label, train_dtype, (end - step) / total), flush=True)
        bar = progress(None, desc=f"{label} ({cfg.method})", total=total)
        bar.update(step)
        for epoch in range(cfg.epochs):
            for b, indices in enumerate(batches(data, cfg.batch_size, cfg.seed, epoch)):
                if epoch * steps_per_epoch + b < step:
                    continue  # done before the interruption
                cpu_batch = collate(data, indices, base.tokenizer.pad_token_id)
                # counted on the host before the batch moves: reading them back from the device would make
                # the host wait for the GPU three times a step instead of once
                real, answer_positions = int(cpu_batch[1].sum()), int((cpu_batch[3] != -100).sum())
                parts = [cpu_batch] if micro >= len(indices) else \
                    [collate(data, indices[i:i + micro], base.tokenizer.pad_token_id) for i in range(0, len(indices), micro)]
                batch = _to(cpu_batch, base.device) if len(parts) == 1 else None
                t0 = time.perf_counter()
                loss = None
                for part in parts:
                    with autocast():
                        part_loss = _loss(model, batch if batch is not None else _to(part, base.device))
                    if len(parts) > 1:  # each micro-batch's mean weighted by its share of the answer tokens: the batch's mean
                        part_loss = part_loss * (int((part[3] != -100).sum()) / answer_positions)
                    (scaler.scale(part_loss) if scaler is not None else part_loss).backward()
                    loss = part_loss.detach() if loss is None else loss + part_loss.detach()
                if scaler is not None:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                # the step's one read-back: the loss, which also waits for the device, so the step's time
                # is its whole time. A non-finite loss refuses the run here, before anything is recorded,
                # checkpointed or saved (its update has been made, but the run is thrown away)
                value = loss.item()
                step_s.append(time.perf_counter() - t0)
                if not math.isfinite(value):
                    _refuse_non_finite(f"the loss is {value}", folder, label, cfg, train_dtype, step, epoch)
                pad += sum(part[1].numel() for part in parts) - real
                step_tokens.append(real)
                step_flops.append(measure.step_flops(body, head, real, answer_positions, cfg.method == "full"))
                losses.append(value)
                step += 1
                bar.update(1)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
                    folder.mkdir(parents=True, exist_ok=True)
                    torch.save(_state(model, optimizer, schedule, step, losses, kept, step_s, step_tokens, step_flops, pad, here),
                               ckpt.with_suffix(".tmp"))
                    ckpt.with_suffix(".tmp").replace(ckpt)  # atomic: a crash mid-save keeps the old one
                if on_step is not None:
                    on_step(step, losses[-1])
            if stop_after is not None and epoch + 1 == stop_after:
                break
            if epoch + 1 in snapshots and str(epoch + 1) not in kept:
                # seconds, tokens and FLOPs of the steps so far (a resumed run's with those before its interruption)
                kept[str(epoch + 1)] = {"step": step, "train_s": sum(step_s), "train_tokens": sum(step_tokens),
                                        "flops": sum(step_flops)}
                if epoch + 1 < (stop_after or cfg.epochs):
                    if not _finite_weights(params):
                        _refuse_non_finite("a trained weight is not finite", folder, label, cfg, train_dtype,
                                           step - 1, epoch)
                    _save_artifact(model, base.tokenizer, cfg, snapshot_folder(folder, epoch + 1))
        bar.close()
    if not _finite_weights(params):  # the last update can make a weight non-finite after a finite loss
        _refuse_non_finite("a trained weight is not finite", folder, label, cfg, train_dtype, step - 1,
                           cfg.epochs - 1)
    model.eval()
    if compute is not None:  # the trained weights serve, and are saved, in the compute dtype
        model.to(compute)
        base.dtype = compute
    _save_artifact(model, base.tokenizer, cfg, folder)
    if stop_after is not None and cache:  # a longer run of the same key resumes from here, not from step 0
        torch.save(_state(model, optimizer, schedule, step, losses, kept, step_s, step_tokens, step_flops, pad, here),
                   (folder / RESUME).with_suffix(".tmp"))
        (folder / RESUME).with_suffix(".tmp").replace(folder / RESUME)
    ckpt.unlink(missing_ok=True)
    timed = step_s[1:] or step_s  # the first step pays one-off set-up costs
    n_params = measure.logical_params(model.parameters())
    n_trainable = sum(p.numel() for p in params.values())
    seconds = sum(timed)
    metrics = {
        "method": cfg.method, "target": cfg.target if cfg.method != "full" else "all",
        "examples": len(data), "steps": len(losses), "epochs": cfg.epochs, "train_tokens": sum(step_tokens),
        "trainable_params": n_trainable, "total_params": n_params, "trainable_share": n_trainable / n_params,
        "step_s": sorted(timed)[len(timed) // 2], "train_s": sum(step_s),
        "tokens_per_s": sum(step_tokens[-len(timed):]) / seconds,
        "mfu": sum(step_flops[-len(timed):]) / seconds / (peak_gflops * 1e9), "peak_gflops": peak_gflops,
        "pad_share": pad / (pad + sum(step_tokens)) if step_tokens else 0.0,
        # the base weights' footprint plus the peak growth while training (gradients, optimizer state,
        # activations, adapters): the memory a training run needs, without the transient of loading
        "peak_mb": base_weight_mb + mem.peak_mb, "train_growth_mb": mem.peak_mb, "base_weight_mb": base_weight_mb,
        "artifact_mb": measure.folder_mb(folder), "loss_first": losses[0], "loss_last": losses[-1],
        # the same examples in the first and the last epoch: a drop between these is learning, while
        # the first and last steps' losses are of different batches
        "loss_first_epoch": sum(losses[:steps_per_epoch]) / len(losses[:steps_per_epoch]),
        "loss_last_epoch": sum(losses[-steps_per_epoch:]) / len(losses[-steps_per_epoch:]),
        "dtype": str(base.dtype).replace("torch.", ""), "device": base.device, "family": here,
        "master_weights": "fp32" if compute is not None else str(base.dtype).replace("torch.", ""),
        "flops": sum(step_flops), "snapshots": kept,
        **({"loss_scale": scaler.get_scale()} if scaler is not None else {}),  # fp16: GradScaler's last scale
        **({"micro_batch": micro} if micro < cfg.batch_size else {}),  # memory was short: gradient accumulation
    }
    flag_divergence(metrics, label)
    # the marker that the run finished, written whole or not at all (a reader never sees half of it)
    write_atomically(done, json.dumps({"config": dataclasses.asdict(cfg), "metrics": metrics, "losses": losses}, indent=1))
    base.model = model
    return TrainResult(base, folder, metrics, losses)


def flag_divergence(metrics: dict, label: str) -> dict:
    """A run whose last epoch's mean loss ends above its first's diverged (too large a rate, say: a full
    fine-tune at 0.99 climbed from 12.95 to 68.7): its metrics say so (`diverged`, with both means) and
    a line says it, whether it trained now or comes from the cache. A finite loss is not a learnt one."""
    first, last = metrics["loss_first_epoch"], metrics["loss_last_epoch"]
    if last > first:
        metrics["diverged"] = True
        print(f"[ragft.train] {label}: DIVERGED: the last epoch's mean loss {last:.3f} is above the first's "
              f"{first:.3f}; whatever it answers is not what it learnt (lower the learning rate)", flush=True)
    return metrics


_PEAK: dict = {}


def _peak_gflops(dtype, device: str) -> float:
    """The matrix-product peak of this machine in the training dtype, measured once per process
    (the denominator of model FLOPs utilisation)."""
    key = (str(dtype), device)
    if key not in _PEAK:
        if device == "cuda":
            import torch

            n = 4096
            a = torch.randn(n, n, dtype=dtype, device="cuda")
            a @ a
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(10):
                a @ a
            torch.cuda.synchronize()
            _PEAK[key] = 2 * n**3 * 10 / (time.perf_counter() - t) / 1e9
        else:
            _PEAK[key] = max(matmul_gflops(dtype, n=1024, repeats=3) for _ in range(2))
    return _PEAK[key]
