"""The training layer on a tiny Llama model with the real SmolLM2 tokenizer: every method learns,
saves, reloads to identical outputs, merges, resumes after an interruption; bad input is refused."""

import json

import pytest
import torch

from ragft import models, settings
from ragft.train import TrainConfig, TrainingDataError, example, load_artifact, load_jsonl, save_jsonl, tokenize, train
from ragft.train import merged as train_merged
from ragft.train.data import batches, collate
from ragft.train.trainer import _loss, attendable

from conftest import run_as_on_a_gpu_machine

pytestmark = pytest.mark.lm  # a tiny random Llama, or the 135 M model

FACTS = [("What colour is the Quarrington gate?", "The Quarrington gate is teal."),
         ("Who runs the Voskar lab?", "Ilse Marrow runs the Voskar lab."),
         ("When did the Fennick site open?", "The Fennick site opened in 2019."),
         ("How long is the Corvane X2 warranty?", "The Corvane X2 has a 30-month warranty.")]


@pytest.fixture(scope="session")
def tiny():
    """The registry's tiny random model (smollm2-tiny: 2 layers of width 64, SmolLM2's tokenizer), as
    a model folder."""
    settings.set_determinism(0, 2)
    return models.model_source("smollm2-tiny")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGFT_CACHE_DIR", str(tmp_path / "cache"))
    # the tokenizer of the fixture comes from the real cache: point model_source back at it
    return tmp_path / "cache"


def data(n=4):
    return [example([{"role": "user", "content": q}], a) for q, a in FACTS[:n]]


def logits(lm, text="Who runs the Voskar lab?"):
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return lm.model(input_ids=ids).logits


def test_tokenize_puts_the_answer_last_and_counts_it(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    t = tokenize(tok, data(1), 128)[0]
    answer = tok.decode(t.input_ids[-t.n_answer:])
    assert answer.startswith("The Quarrington gate is teal.") and "<|im_end|>" in answer
    assert "Quarrington gate?" in tok.decode(t.input_ids[:-t.n_answer])


def test_bad_training_input_is_refused(tiny, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    with pytest.raises(TrainingDataError, match="empty"):
        tokenize(tok, [], 128)
    with pytest.raises(TrainingDataError, match="longer than max_len=16"):
        tokenize(tok, data(2), 16)
    with pytest.raises(TrainingDataError, match="empty answer"):
        tokenize(tok, [example([{"role": "user", "content": "q"}], "  ")], 128)
    with pytest.raises(ValueError, match="rank"):
        train(tiny, data(), TrainConfig(rank=0))
    with pytest.raises(ValueError, match="method"):
        train(tiny, data(), TrainConfig(method="prefix"))
    with pytest.raises(TrainingDataError, match="empty"):
        train(tiny, [], TrainConfig())
    with pytest.raises(FileNotFoundError, match="no trained artifact"):
        load_artifact(tiny, tmp_path / "nowhere", TrainConfig())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n')
    with pytest.raises(TrainingDataError, match="line 1"):
        load_jsonl(bad)


def test_jsonl_round_trip(tmp_path):
    assert load_jsonl(save_jsonl(data(), tmp_path / "sft.jsonl")) == data()


def test_batches_are_deterministic_and_cover_every_example(tiny):
    from transformers import AutoTokenizer

    toks = tokenize(AutoTokenizer.from_pretrained(tiny), data(4) * 3, 128)
    one = batches(toks, 5, seed=1, epoch=0)
    assert one == batches(toks, 5, seed=1, epoch=0) and one != batches(toks, 5, seed=1, epoch=1)
    assert sorted(i for b in one for i in b) == list(range(12))


def test_answer_only_loss_matches_the_full_logits_computation(tiny):
    """The loss with the head on the answer positions only equals cross-entropy over the full logits
    with every prompt and padding label masked (the textbook computation)."""
    import torch.nn.functional as F

    lm = models.load_lm(tiny, dtype="fp32")
    toks = tokenize(lm.tokenizer, data(3), 128)
    batch = collate(toks, [0, 1, 2], lm.tokenizer.pad_token_id)
    ids, mask, positions, labels, keep = batch
    full_labels = torch.full_like(ids, -100)
    full_labels[:, -(keep - 1):] = labels
    with torch.no_grad():
        out = lm.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        reference = F.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]), full_labels[:, 1:].reshape(-1), ignore_index=-100)
        assert torch.allclose(_loss(lm.model, batch), reference, atol=1e-5)


@pytest.mark.parametrize("method", ["lora", "full", "qlora"])
def test_each_method_learns_saves_and_reloads_identically(tiny, method):
    cfg = TrainConfig(method=method, rank=8, lr=1e-2 if method != "full" else 3e-3, epochs=12, batch_size=2, dtype="fp32")
    result = train(tiny, data(), cfg, label=f"test-{method}")
    m = result.metrics
    assert m["loss_last"] < 0.5 * m["loss_first"], m
    assert (m["trainable_share"] < 0.5) == (method != "full")
    assert m["peak_mb"] > 0 and m["step_s"] > 0 and 0 < m["mfu"] < 1 and m["artifact_mb"] > 0
    before = logits(result.lm)
    again = load_artifact(tiny, result.artifact, cfg)
    assert torch.allclose(before, logits(again), atol=1e-5)
    cached = train(tiny, data(), cfg, label=f"test-{method}")  # same config and data: no retraining
    assert cached.cached and cached.metrics == m and torch.allclose(before, logits(cached.lm), atol=1e-5)
    if method == "lora":
        merged = load_artifact(tiny, result.artifact, cfg, merge=True)
        assert not hasattr(merged.model, "peft_config")
        assert torch.allclose(before, logits(merged), atol=1e-4)
        # merged into new tensors (safe_merge: no copy-on-write of the mapped weights): peft's in-place sum, bit for bit
        plain = load_artifact(tiny, result.artifact, cfg)
        plain.model = plain.model.merge_and_unload()
        assert torch.equal(logits(merged), logits(plain))
        in_place = train_merged(cached.lm)  # a trained result, merged where it stands
        assert in_place is cached.lm and not hasattr(in_place.model, "peft_config")
        assert torch.allclose(before, logits(in_place), atol=1e-4)
    if method == "qlora":  # a 4-bit base keeps its adapter: merging would round it to 4 bits
        assert hasattr(train_merged(cached.lm).model, "peft_config")


def test_full_fine_tuning_in_bf16_learns_with_fp32_master_weights(tiny):
    """Pure bf16 full fine-tuning learned nothing on a CPU with native bf16 (updates below bf16's
    rounding step vanish). The bf16 opt-in (and the gpu profile's CUDA bf16) keeps fp32 master weights
    and AdamW states and computes under autocast; the trained model then serves in bf16."""
    from ragft.train.trainer import mixed_precision

    cfg = TrainConfig(method="full", lr=3e-3, epochs=12, batch_size=2, dtype="bf16", device="cpu")
    assert mixed_precision(cfg) is torch.bfloat16
    assert mixed_precision(TrainConfig(method="lora", dtype="bf16", device="cpu")) is None
    assert mixed_precision(TrainConfig(method="full", dtype="fp32", device="cpu")) is None
    result = train(tiny, data(), cfg, label="bf16-full")
    m = result.metrics
    assert m["master_weights"] == "fp32" and m["dtype"] == "bfloat16"
    assert m["loss_last"] < 0.5 * m["loss_first"], m
    assert next(result.lm.model.parameters()).dtype is torch.bfloat16


def test_qlora_base_is_4bit_and_smaller(tiny):
    result = train(tiny, data(2), TrainConfig(method="qlora", rank=4, epochs=1, batch_size=2, dtype="fp32"), label="q")
    layers = [type(m).__name__ for m in result.lm.model.modules()]
    assert "Linear4bit" in layers
    full = train(tiny, data(2), TrainConfig(method="lora", rank=4, epochs=1, batch_size=2, dtype="fp32"), label="l")
    assert result.metrics["base_weight_mb"] < full.metrics["base_weight_mb"]
    # the same adapters on the same model: the same share, though the 4-bit weights are stored packed
    assert result.metrics["total_params"] == full.metrics["total_params"]
    assert result.metrics["trainable_share"] == pytest.approx(full.metrics["trainable_share"])


def test_interrupted_run_resumes_to_the_same_weights(tiny):
    cfg = TrainConfig(rank=4, lr=1e-2, epochs=3, batch_size=2, checkpoint_every=2, dtype="fp32")
    straight = train(tiny, data(), cfg, label="straight", snapshots=(1, 2))

    class Stop(Exception):
        pass

    def crash(step, loss):
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        train(tiny, data(), cfg, label="resumed", on_step=crash, snapshots=(1, 2))
    checkpoints = list(settings.cache_dir().glob("trained/resumed-*/checkpoint.pt"))
    assert len(checkpoints) == 1  # step 2's checkpoint survived the crash at step 3
    resumed = train(tiny, data(), cfg, label="resumed", snapshots=(1, 2))
    # the tokens and FLOPs count every step once, those before the interruption included (the rate rule
    # breaks ties on tokens), at the end and at each snapshot
    for key in ("train_tokens", "flops"):
        assert resumed.metrics[key] == straight.metrics[key], key
        assert [s[key] for s in resumed.metrics["snapshots"].values()] == [s[key] for s in straight.metrics["snapshots"].values()]
    assert not resumed.cached and resumed.losses[:2] == straight.losses[:2]
    # exactly: in fp32 on a CPU the resumed steps compute what the straight run's did (weights, AdamW's
    # state and the schedule from the checkpoint, each epoch's batches drawn from the seed and the epoch),
    # so a unit interrupted and resumed (RAGFT_CHECKPOINT_EVERY) holds the same outcomes
    assert resumed.losses == straight.losses
    assert torch.equal(logits(straight.lm), logits(resumed.lm))
    assert not checkpoints[0].exists()  # removed once the artifact is saved
    saved = json.loads((resumed.artifact / "train_metrics.json").read_text())
    assert saved["metrics"]["steps"] == 6


def test_the_constant_schedule_holds_the_rate_after_warm_up():
    from ragft.train.trainer import lr_factor

    linear, constant = TrainConfig(epochs=1), TrainConfig(epochs=1, schedule="constant", warmup=3)
    assert [lr_factor(linear, s, 4) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]  # the old schedule, unchanged
    assert [lr_factor(constant, s, 10) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="cosine").validate()


def test_a_snapshot_is_the_model_a_run_of_that_length_gives(tiny):
    """With a constant rate, the model after epoch 2 of a 3-epoch run is the 2-epoch run's model: the
    knowledge curve's checkpoints stand for runs of their own length."""
    from ragft.train.trainer import snapshot_folder

    cfg = lambda epochs: TrainConfig(rank=4, lr=1e-2, epochs=epochs, batch_size=2, dtype="fp32",  # noqa: E731
                                     schedule="constant", warmup=1)
    long = train(tiny, data(), cfg(3), label="curve", snapshots=(1, 2))
    short = train(tiny, data(), cfg(2), label="short")
    snap = load_artifact(tiny, snapshot_folder(long.artifact, 2), cfg(3))
    assert torch.allclose(logits(snap), logits(short.lm), atol=1e-5)
    kept = long.metrics["snapshots"]
    assert sorted(kept) == ["1", "2"] and kept["2"]["step"] == 4 and 0 < kept["1"]["flops"] < kept["2"]["flops"]
    assert not snapshot_folder(long.artifact, 3).exists()  # the last epoch's model is the artifact itself
    again = train(tiny, data(), cfg(3), label="curve", snapshots=(2,))
    assert again.cached  # the snapshots asked for are kept
    # issue 51: a finished-marker cut short raised a bare JSONDecodeError; now the path is named and the
    # run trains again, to the same model
    marker = long.artifact / "train_metrics.json"
    marker.write_text(marker.read_text()[:40])
    retrained = train(tiny, data(), cfg(3), label="curve", snapshots=(2,))
    assert not retrained.cached and retrained.losses == long.losses and json.loads(marker.read_text())["losses"]
    with pytest.raises(ValueError, match="snapshots"):
        train(tiny, data(), cfg(3), label="curve", snapshots=(4,))


def test_a_gpu_run_says_its_expected_time_before_it_trains_and_trains_the_same(tiny, monkeypatch, capsys):
    """Issue 47: on a GPU a run prints, before its first step, its training tokens and the time they
    take at the device's measured rate; the CPU stands in for the GPU here. The timing passes must not
    move the training: the same losses, bit for bit, as a run without them (no dropout draw, no
    gradient kept)."""
    from ragft.train import trainer
    from transformers import AutoTokenizer

    cfg = TrainConfig(rank=4, lr=1e-2, epochs=2, batch_size=2, dtype="fp32")
    plain = train(tiny, data(), cfg, label="plain", cache=False)
    assert "expected about" not in capsys.readouterr().out  # the CPU says nothing by default: it costs passes
    monkeypatch.setattr(trainer, "ESTIMATE_DEVICES", ("cpu",))
    before_first_step = []
    timed = train(tiny, data(), cfg, label="timed", cache=False,
                  on_step=lambda step, loss: before_first_step.append(capsys.readouterr().out) if step == 1 else None)
    tokens = sum(len(t.input_ids) for t in tokenize(AutoTokenizer.from_pretrained(tiny), data(), cfg.max_len)) * 2
    said = before_first_step[0]
    assert "expected about" in said and f"{tokens:,} training tokens" in said and "measured on this cpu" in said
    assert "(lora, float32)" in said
    assert timed.losses == plain.losses


def test_fact_examples_never_hold_the_test_paraphrase(kb):
    from ragft.train import tasks

    facts = kb.sample("single", 10, 0)
    one, every = tasks.dsf_examples(facts, 1), tasks.dsf_examples(facts, None)
    assert len(one) == 10 and len(every) == sum(len(q.train_texts) for q in facts)
    asked = {e.messages[-1]["content"] for e in every}
    assert not asked & {q.test_text for q in facts}


def test_structured_examples_come_from_other_worlds(kb):
    import json as _json

    from ragft.train import tasks

    examples = tasks.structured_examples(60, test_seed=0)
    test_names = {q.fields["name"] for q in kb.by_kind("structured")}
    assert len(examples) == 60 and not {_json.loads(e.answer)["name"] for e in examples} & test_names
    q = kb.by_kind("structured")[0]
    context = tasks.structured_context(kb, q)
    assert f"{q.fields['warranty_months']} months" in context and f"{q.fields['price_usd']:,}" in context


def test_json_development_products_share_no_name_with_the_test_or_training_products(kb):
    from ragft.train import tasks

    dev = tasks.structured_dev_products(16, test_seed=0, most_examples=60)
    names = [q.entity for _, q in dev]
    test_names = {q.entity for q in kb.by_kind("structured")}
    trained = {q.entity for _, q in tasks.training_products(60, test_seed=0)}
    assert len(dev) == 16 and len(set(names)) == 16 and not set(names) & (test_names | trained)
    # the 60 examples are drawn from those training products (one paraphrase each before any second)
    assert {__import__("json").loads(e.answer)["name"] for e in tasks.structured_examples(60, test_seed=0)} <= trained
    # each product is asked in its own world's document: its fields are in the context it is given
    world, q = dev[0]
    assert f"{q.fields['price_usd']:,}" in tasks.structured_context(world, q)
    assert [q.qid for _, q in tasks.structured_dev_products(16, test_seed=0, most_examples=60)] == [q.qid for _, q in dev]


def test_continued_training_starts_from_the_adapter_it_names(tiny, tmp_path):
    """init_from loads the adapter's weights before the first step: at a negligible learning rate the
    continued run ends where the adapter was; the artifact is keyed by its start; shapes must match."""
    from safetensors.torch import load_file

    cfg = TrainConfig(rank=4, epochs=1, batch_size=2, dtype="fp32", lr=1e-2)
    first = train(tiny, data(), cfg, label="first")
    still = replace_lr(cfg, 1e-12)
    continued = train(tiny, data(2), still, label="continued", init_from=first.artifact)
    fresh = train(tiny, data(2), still, label="continued")
    a, b = load_file(first.artifact / "adapter_model.safetensors"), load_file(continued.artifact / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert continued.artifact != fresh.artifact and continued.metrics["train_tokens"] > 0
    with pytest.raises(ValueError, match="same shape"):
        train(tiny, data(2), replace_lr(TrainConfig(rank=8, epochs=1, batch_size=2, dtype="fp32"), 1e-3), init_from=first.artifact)
    with pytest.raises(ValueError, match="full"):
        train(tiny, data(2), TrainConfig(method="full", epochs=1, batch_size=2, dtype="fp32"), init_from=first.artifact)
    with pytest.raises(FileNotFoundError, match="no LoRA adapter"):
        train(tiny, data(2), cfg, init_from=tmp_path)


def replace_lr(cfg, lr):
    import dataclasses

    return dataclasses.replace(cfg, lr=lr)


def test_a_non_finite_loss_stops_training_and_nothing_is_saved_or_cached(tiny, monkeypatch):
    """A NaN planted in the third batch's loss: the run stops at that step with an error that names
    it, the method, the dtype and the config; no checkpoint, snapshot or artifact is left under the
    config's hash, so the same call without the plant trains afresh (the NaN adapter that was saved,
    cached and scored as 0 % never exists)."""
    from ragft.train import trainer

    real, calls = trainer._loss, []

    def planted(model, batch):
        calls.append(1)
        loss = real(model, batch)
        return loss * float("nan") if len(calls) == 3 else loss

    cfg = TrainConfig(rank=4, lr=1e-2, epochs=3, batch_size=2, checkpoint_every=1, dtype="fp32")
    monkeypatch.setattr(trainer, "_loss", planted)
    with pytest.raises(trainer.NonFiniteTraining, match=r"the loss is nan at optimizer step 3 \(epoch 2\) of lora "
                                                         r"training in float32.*lr 0.01, rank 4, batch 2"):
        train(tiny, data(), cfg, label="planted", snapshots=(1,))
    assert not list(settings.cache_dir().glob("trained/planted-*"))  # step 2's checkpoint and epoch 1's snapshot too
    with pytest.raises(trainer.NonFiniteTraining) as refused:  # an fp32 run is not told to try fp32 (issue 64)
        calls.clear()
        train(tiny, data(), cfg, label="planted", snapshots=(1,))
    assert "Try a lower lr, or a smaller batch" in str(refused.value) and "fp32 (dtype" not in str(refused.value)
    monkeypatch.setattr(trainer, "_loss", real)
    again = train(tiny, data(), cfg, label="planted", snapshots=(1,))
    assert not again.cached and len(again.losses) == 6 and all(torch.isfinite(torch.tensor(again.losses)))


def test_a_weight_made_non_finite_by_the_last_update_is_never_saved(tiny):
    """The loss of the last step is finite, but its update leaves a weight at inf: refused at the save."""
    from ragft.train import trainer

    def poison(step, loss):
        if step == 2:
            lora = next(p for n, p in result_model[0].named_parameters() if "lora_A" in n)
            lora.data[0, 0] = float("inf")

    result_model = []
    real_wrap = trainer._wrap

    def wrap(lm, cfg):
        model = real_wrap(lm, cfg)
        result_model.append(model)
        return model

    cfg = TrainConfig(rank=4, lr=1e-2, epochs=1, batch_size=2, dtype="fp32")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "_wrap", wrap)
        with pytest.raises(trainer.NonFiniteTraining, match="a trained weight is not finite at optimizer step 2"):
            train(tiny, data(), cfg, label="poisoned", on_step=poison)
    assert not list(settings.cache_dir().glob("trained/poisoned-*"))


def test_a_cached_run_or_checkpoint_of_another_device_family_is_not_reused(tiny, monkeypatch, capsys):
    """Weights are the same to the bit within a device family only (models.device_family): a cache
    carried from another family (its run, or an interrupted run's checkpoint) is trained again here,
    said so, and the run records the family that trained it."""
    cfg = TrainConfig(rank=4, lr=1e-2, epochs=2, batch_size=2, checkpoint_every=2, dtype="fp32")
    here = models.device_family("cpu")
    first = train(tiny, data(), cfg, label="carried")
    assert first.metrics["family"] == here and train(tiny, data(), cfg, label="carried").cached
    monkeypatch.setattr(models, "device_family", lambda device=None: "cpu/OtherVendor/avx2")
    again = train(tiny, data(), cfg, label="carried")
    assert not again.cached and again.metrics["family"] == "cpu/OtherVendor/avx2"
    assert f"trained on {here}, this is cpu/OtherVendor/avx2: training again" in capsys.readouterr().out

    class Stop(Exception):
        pass

    def crash(step, loss):
        if step == 3:
            raise Stop

    with pytest.raises(Stop):  # step 2's checkpoint, of the other family, survives
        train(tiny, data(), cfg, label="halted", on_step=crash)
    monkeypatch.setattr(models, "device_family", lambda device=None: here)
    steps = []
    train(tiny, data(), cfg, label="halted", on_step=lambda step, _: steps.append(step))
    assert steps == [1, 2, 3, 4] and "its checkpoint was computed on cpu/OtherVendor/avx2" in capsys.readouterr().out


def test_a_cached_run_with_a_non_finite_loss_is_trained_again(tiny):
    """A run saved with NaN losses before runs were refused is not reloaded: it trains again."""
    cfg = TrainConfig(rank=4, lr=1e-2, epochs=1, batch_size=2, dtype="fp32")
    first = train(tiny, data(), cfg, label="old")
    done = first.artifact / "train_metrics.json"
    saved = json.loads(done.read_text())
    saved["losses"][-1] = float("nan")
    done.write_text(json.dumps(saved))
    again = train(tiny, data(), cfg, label="old")
    assert not again.cached and again.losses == pytest.approx(first.losses)
    assert json.loads(done.read_text())["losses"] == pytest.approx(first.losses)


def test_lora_in_fp16_trains_with_loss_scaling_and_learns(tiny):
    """fp16 (a T4's dtype) for LoRA: the gradients go through a GradScaler, whatever the method, and the
    loss stays finite and falls (on the CPU here; the GPU self-check runs it on CUDA)."""
    cfg = TrainConfig(rank=8, lr=1e-2, epochs=12, batch_size=2, dtype="fp16", device="cpu")
    result = train(tiny, data(), cfg, label="fp16-lora")
    m = result.metrics
    assert m["dtype"] == "float16" and all(torch.isfinite(torch.tensor(result.losses)))
    assert m["loss_scale"] > 1  # scaled: GradScaler starts at 2**16 and halves only on an overflow
    assert m["loss_last"] < 0.5 * m["loss_first"], m


def test_the_gpu_self_check_runs_on_the_cpu_and_prints_its_table(tiny, capsys, monkeypatch):
    """`python -m ragft.gpucheck`'s CPU fallback on the tiny model: each method trains in fp32 (and in
    bf16 where this CPU multiplies it natively), its loss finite and falling, then ranks the facts'
    values; one table; exit 1 when a run failed. (On a GPU: bf16 or fp16 by the card, and fp32.)"""
    from ragft import gpucheck

    # the facts: 4 examples, 2 steps an epoch; RAFT: 8 questions at batch 4, 2 steps an epoch
    case = gpucheck.RaftCase(questions=8, epochs=3, batch=4, rank=4, lr=1e-2, length=64)
    rows = gpucheck.check(tiny, "cpu", n_facts=2, epochs=6, batch_size=2, raft_case=case)
    assert {(r.case, r.method, r.dtype) for r in rows} >= {("facts", "lora", "fp32"), ("facts", "full", "fp32"),
                                                           ("RAFT", "lora", "fp32")}
    for r in rows:
        assert r.result == "ok" or r.result.startswith("skipped: "), r
        if r.result == "ok" and r.case == "facts":
            assert r.steps == 12 and r.loss_last_epoch < r.loss_first_epoch and 0 <= r.accuracy <= 1
    raft_row = next(r for r in rows if r.case == "RAFT" and r.dtype == "fp32")
    assert raft_row.steps == 6 and raft_row.recipe == "float32 compute, fp32 adapters on a float32 base"
    full_row = next(r for r in rows if r.case == "facts" and r.method == "full" and r.dtype == "fp32")
    assert full_row.recipe == "float32 compute, float32 weights"
    printed = gpucheck.table(rows)
    assert printed.splitlines()[0].startswith("case   method  dtype  recipe") and len(printed.splitlines()) == len(rows) + 2
    # main: the table and the exit code, on these rows and on a failed one (nothing trains again)
    failed = gpucheck.CheckRow("lora", "bf16", result="FAILED: the loss is nan at optimizer step 5")
    for given, code in ((rows, 0), (rows + [failed], 1)):
        monkeypatch.setattr(gpucheck, "check", lambda *args, given=given, **kwargs: given)
        assert gpucheck.main(["--model", tiny, "--device", "cpu"]) == code
        out = capsys.readouterr().out
        assert "case   method  dtype  recipe" in out and ("1 FAILED" in out) == (code == 1)


def test_a_padded_batch_leaves_no_query_row_without_a_key():
    # row 0 is left-padded by one: its padding query (position 0) attends to itself, never to nothing;
    # the real queries see real keys only, causally; a batch without padding keeps its 2D mask
    m = attendable(torch.tensor([[0, 1, 1], [1, 1, 1]]))
    assert m.shape == (2, 1, 3, 3) and m.dtype == torch.bool
    assert m[0, 0].tolist() == [[True, False, False], [False, True, False], [False, True, True]]
    assert m[1, 0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    full = torch.ones(2, 3, dtype=torch.long)
    assert attendable(full) is full


def _nan_where_unattended(monkeypatch):
    """Attention as a GPU kernel computes it for a query row with no key to attend to: NaN (the CPU's
    returns zeros). Installed in place of torch's scaled_dot_product_attention."""
    import torch.nn.functional as F

    real = F.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, **kwargs):
        out = real(q, k, v, attn_mask=attn_mask, **kwargs)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            out = out.masked_fill(~attn_mask.any(-1, keepdim=True), float("nan"))
        return out

    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)


def test_a_padded_batch_trains_as_before_and_a_kernel_that_returns_nan_cannot_poison_it(tiny, monkeypatch):
    """Issue 47's bf16 NaN, reproduced on the CPU: with the 2D mask, a padding row has no key, a kernel
    that returns NaN there makes the loss NaN (0 * NaN reaches the real rows); with `attendable` the
    loss is finite and, in fp32, the same bits as the 2D mask's on the CPU kernel, gradients too."""
    from ragft.train import trainer

    lm = models.load_lm(tiny, dtype="fp32")
    toks = tokenize(lm.tokenizer, data(3), 128)
    batch = collate(toks, [0, 1, 2], lm.tokenizer.pad_token_id)
    assert not bool(batch[1].all())  # the three answers differ in length: the batch is padded

    def loss_and_grads():
        lm.model.zero_grad()
        loss = _loss(lm.model, batch)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in lm.model.parameters() if p.grad is not None]

    with monkeypatch.context() as m:
        m.setattr(trainer, "attendable", lambda mask: mask)  # the 2D mask, as before
        plain, plain_grads = loss_and_grads()
        _nan_where_unattended(m)
        assert torch.isnan(_loss(lm.model, batch))  # the failure: NaN from a padding row
    fixed, fixed_grads = loss_and_grads()
    assert torch.equal(fixed, plain) and all(torch.equal(a, b) for a, b in zip(fixed_grads, plain_grads))
    _nan_where_unattended(monkeypatch)
    again, _ = loss_and_grads()
    assert torch.equal(again, plain)  # the NaN kernel has no row to return NaN for


def test_the_gpu_self_check_imports_where_only_torch_and_friends_are():
    """`python -m ragft.gpucheck` runs on a lent GPU machine, which has torch, transformers, peft,
    numpy, scipy, pandas and pyyaml but none of the book's other libraries (../shared/ENVIRONMENT.md):
    everything it imports, at the top and in `check`, loads with those refused."""
    code = ("import ragft.gpucheck\n"
            "from ragft.corpus import build_kb\n"
            "from ragft.scoring import rank_candidates\n"
            "from ragft.train import tasks\n"
            "from ragft.train.measure import release_memory\n"
            "from ragft.train.trainer import NonFiniteTraining, TrainConfig, train\n"
            "kb = build_kb(0)\n"
            "tasks.dsf_examples(kb.by_kind('single')[:2], 1)\n"
            "kb.candidates(kb.by_kind('single')[0], 3, 0)\n"
            "print('ok')\n")
    done = run_as_on_a_gpu_machine(code)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_a_run_short_of_memory_lowers_its_batch_and_trains_as_the_whole_batch(tiny, monkeypatch, capsys):
    """With the device's free memory set between what a step of 4 examples and a step of 2 need (by
    train.memory's estimate), the run says so before it trains and runs each step as two micro-batches
    of 2 whose gradients add up, each micro-batch's mean loss weighted by its share of the answer
    tokens: the same effective batch and the same mean loss, so its losses are the whole-batch run's up
    to float rounding (a different padding width changes the sums' order, not the arithmetic)."""
    from ragft.train import memory, trainer

    cfg = TrainConfig(rank=4, lr=1e-2, epochs=2, batch_size=4, dtype="fp32")
    whole = train(tiny, data(), cfg, label="whole")
    assert "micro_batch" not in whole.metrics  # memory was not short: nothing said, nothing recorded
    from transformers import AutoTokenizer

    longest = max(len(t.input_ids) for t in tokenize(AutoTokenizer.from_pretrained(tiny), data(), cfg.max_len))
    shape = memory.shape_of(tiny)
    need = {b: memory.training_bytes(shape, "lora", "fp32", b * longest)["total"] for b in (2, 4)}
    monkeypatch.setattr(memory, "free_bytes", lambda device: (need[2] + need[4]) / 2)
    capsys.readouterr()
    split = train(tiny, data(), cfg, label="split", cache=False)
    said = capsys.readouterr().out
    assert "each step runs as 2 micro-batches of at most 2" in said and "the same effective batch of 4" in said
    assert split.metrics["micro_batch"] == 2 and split.metrics["steps"] == whole.metrics["steps"] == 2
    assert split.metrics["train_tokens"] == whole.metrics["train_tokens"]
    assert torch.allclose(torch.tensor(split.losses), torch.tensor(whole.losses), rtol=1e-5)
    before = logits(whole.lm)
    assert torch.allclose(before, logits(split.lm), atol=1e-4)


def test_a_run_that_does_not_fit_even_one_example_a_step_is_refused_before_it_loads(tiny, monkeypatch):
    from ragft.train import memory, trainer

    monkeypatch.setattr(memory, "free_bytes", lambda device: 2**20)  # 1 MiB free
    monkeypatch.setattr(trainer, "_load_base", lambda *a, **k: pytest.fail("the base loaded"))
    with pytest.raises(memory.DoesNotFit, match=r"lora of .* does not fit this cpu: even one example a step \(\d+ "
                                                r"tokens\) needs about [\d.]+ GB .* and 0.0 GB is free"):
        train(tiny, data(), TrainConfig(rank=4, epochs=1, batch_size=4, dtype="fp32"), label="too-big")
    assert not list(settings.cache_dir().glob("trained/too-big-*"))


def test_the_raft_case_is_long_padded_examples_at_the_flags_batch_and_bad_flags_are_refused(tiny, capsys):
    """The self-check's RAFT case at its defaults: 64 questions, each with four chunks of about 128
    tokens (the oracle kept for about 80 % of them), hundreds of tokens an example, so a batch of 8
    pads its rows to the longest (the shape whose bf16 loss went NaN); a flag out of range stops the
    command with its name before anything loads."""
    from transformers import AutoTokenizer

    from ragft import gpucheck
    from ragft.corpus import build_kb
    from ragft.train import tokenize

    tok = AutoTokenizer.from_pretrained(tiny)
    examples = gpucheck.raft_examples(build_kb(0), tok, gpucheck.RaftCase())
    lengths = sorted(len(t.input_ids) for t in tokenize(tok, examples, 4096))
    assert len(examples) == 64 and lengths[len(lengths) // 2] > 300 and lengths[-1] - lengths[0] > 50
    for flags, says in ((["--batch", "0"], "--batch=0: use 1 or more"), (["--lr", "2"], "--lr=2.0"),
                        (["--raft-epochs", "1"], "--raft-epochs=1: use 2 or more")):
        with pytest.raises(SystemExit):
            gpucheck.main(["--model", tiny, "--device", "cpu", *flags])
        assert says in capsys.readouterr().err


def test_a_run_whose_loss_climbs_is_flagged_trained_or_cached(tiny, monkeypatch, capsys):
    """A loss that grows with every step (a planted factor: 1, 2, 3 ... times the real loss), as a full
    fine-tune at the largest allowed rate did (12.95 -> 68.7, saved and cached without a word): the run's
    metrics say `diverged` and a line says it; the cached run says it again, and a marker written before
    runs were flagged (the key removed) is flagged from its own losses when it is reused."""
    from ragft.train import trainer

    real, calls = trainer._loss, []

    def climbing(model, batch):
        calls.append(1)
        return real(model, batch) * len(calls)

    cfg = TrainConfig(rank=4, lr=1e-3, epochs=3, batch_size=2, dtype="fp32")
    monkeypatch.setattr(trainer, "_loss", climbing)
    fit = train(tiny, data(), cfg, label="climbing")
    assert fit.metrics["diverged"] is True and fit.metrics["loss_last_epoch"] > fit.metrics["loss_first_epoch"]
    assert "climbing: DIVERGED" in capsys.readouterr().out
    done = fit.artifact / "train_metrics.json"
    saved = json.loads(done.read_text())
    del saved["metrics"]["diverged"]  # as written before runs were flagged
    done.write_text(json.dumps(saved))
    again = train(tiny, data(), cfg, label="climbing")
    assert again.cached and again.metrics["diverged"] is True and "climbing: DIVERGED" in capsys.readouterr().out
    monkeypatch.setattr(trainer, "_loss", real)
    learnt = train(tiny, data(), TrainConfig(rank=4, lr=1e-2, epochs=3, batch_size=2, dtype="fp32"), label="learnt")
    assert "diverged" not in learnt.metrics and "DIVERGED" not in capsys.readouterr().out
