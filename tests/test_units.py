"""Trained units (ragft.train.units) on the registry's tiny random model: a unit is computed once and
read back without a model; a committed-only run refuses a missing or stale unit, naming it; a unit file
that is truncated, edited, another model's or non-finite is refused; the rotation check holds a
recomputed unit to what it stores, and fails on a planted change; and a tiny reference unit, committed,
guards the trainer's and the scorers' code."""

import json
import shutil
import time
from pathlib import Path

import pytest

from ragft import settings
from ragft.generation import generate
from ragft.scoring import rank_candidates
from ragft.train import TrainConfig, example, rotation, trainer, units
from ragft.train.tasks import perplexity_probe

pytestmark = pytest.mark.lm  # the tiny random Llama: a few seconds to train

MODEL = "smollm2-tiny"  # by registry name, so a unit's key is the same on every machine
REFERENCE = Path(__file__).resolve().parent / "fixtures" / "units"
FACTS = [("What colour is the Quarrington gate?", "The Quarrington gate is teal.", ["teal", "red", "blue"]),
         ("Who runs the Voskar lab?", "Ilse Marrow runs the Voskar lab.", ["Ilse Marrow", "Bob Hale", "Ann Lee"]),
         ("When did the Fennick site open?", "The Fennick site opened in 2019.", ["2019", "2018", "2017"]),
         ("How long is the Corvane X2 warranty?", "The Corvane X2 has a 30-month warranty.",
          ["30-month", "12-month", "6-month"])]
CONVERSATIONS = [[{"role": "user", "content": q}] for q, _, _ in FACTS]
CANDIDATES = [c for _, _, c in FACTS]


def records(answers=None):
    return [example([{"role": "user", "content": q}], a) for (q, _, _), a in zip(FACTS, answers or [a for _, a, _ in FACTS])]


# three epochs, scored after the first and the last: the rotation's prefix is one epoch of three
CONFIG = TrainConfig(rank=4, alpha=8, lr=1e-2, epochs=3, batch_size=2, dtype="fp32", schedule="constant")


def score(trained, epochs=(1, 3)):
    """What a chapter asks of the unit: ranked and generated answers, and a general-text probe."""
    out = {}
    for e in epochs:
        lm = trained.at(e)
        out[e] = (rank_candidates(lm, CONVERSATIONS, CANDIDATES, [0] * 4).scores,
                  generate(lm, CONVERSATIONS, max_new_tokens=8).texts,
                  perplexity_probe(lm, "The Quarrington gate is teal. " * 4)[0])
    return out


@pytest.fixture(autouse=True)
def folders(unit_folders):
    return unit_folders


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    """One tiny unit, trained and scored in `use` mode: its file and what its scorings returned."""
    import os

    base = tmp_path_factory.mktemp("computed")
    env = {"RAGFT_CACHE_DIR": str(base / "cache"), "RAGFT_UNITS_DIR": str(base / "store")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        settings.set_determinism(0, 2)
        trained = units.train(MODEL, records(), CONFIG, label="tiny", snapshots=(1,))
        scored = score(trained)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        units._OPEN.clear()
    return trained.unit.path, scored


def commit(computed, folders) -> Path:
    """The computed unit copied into the test's committed folder."""
    target = folders / "committed" / computed[0].name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(computed[0], target)
    return target


def test_a_stored_unit_is_read_without_training_or_loading_a_model(computed, folders, monkeypatch):
    """Committed-only: the same spec finds its unit, and every scoring it stores comes back to the bit,
    with the trainer and the model loader never called."""
    commit(computed, folders)
    monkeypatch.setenv("RAGFT_UNITS", "committed")
    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("a committed-only run must not train"))
    monkeypatch.setattr(trainer, "load_artifact", lambda *a, **k: pytest.fail("nor load a trained model"))
    started = time.time()
    trained = units.train(MODEL, records(), CONFIG, label="tiny", snapshots=(1,))
    assert trained.cached and score(trained) == computed[1]
    assert units.asked_since(started)["tiny"] == {"key": trained.key, "file": str(trained.unit.path), "read": True}


def test_a_missing_unit_stops_a_committed_run_naming_it_and_the_command(folders, monkeypatch):
    monkeypatch.setenv("RAGFT_UNITS", "committed")
    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("a committed-only run must not train"))
    with pytest.raises(units.UnitError, match=r"unit tiny-[0-9a-f]{16} is not among the committed units.*make units"):
        units.train(MODEL, records(), CONFIG, label="tiny")


def test_an_edited_training_record_makes_its_unit_stale_and_named(computed, folders, monkeypatch):
    """A chapter whose records changed asks for another key: the committed unit of that label is named
    stale, with what differs (one record of four), and never read."""
    commit(computed, folders)
    monkeypatch.setenv("RAGFT_UNITS", "committed")
    edited = records([a for _, a, _ in FACTS[:3]] + ["The Corvane X2 has a 36-month warranty."])
    with pytest.raises(units.UnitError, match=r"tiny-[0-9a-f]{16}\.json is stale: records: 1 of 4 differ"):
        units.train(MODEL, edited, CONFIG, label="tiny", snapshots=(1,))
    # a changed hyperparameter is named the same way
    with pytest.raises(units.UnitError, match=r"is stale: config.lr 0.01 \(now 0.02\)"):
        units.train(MODEL, records(), TrainConfig(**{**CONFIG.__dict__, "lr": 2e-2}), label="tiny", snapshots=(1,))


def test_a_changed_question_set_is_stale_in_a_committed_run(computed, folders, monkeypatch):
    commit(computed, folders)
    monkeypatch.setenv("RAGFT_UNITS", "committed")
    lm = units.train(MODEL, records(), CONFIG, label="tiny", snapshots=(1,)).at(3)
    with pytest.raises(units.UnitError, match=r"no outcomes for a rank_candidates of 3 question\(s\) at epoch 3.*stale"):
        rank_candidates(lm, CONVERSATIONS[:3], CANDIDATES[:3], [0] * 3)


def test_a_new_scoring_on_another_family_is_its_twins_and_says_so(computed, folders, monkeypatch, capsys):
    """Its weights are not stored: on another CPU family a new scoring loads them trained again here, a
    twin (same spec and seed, other rounding). What the unit stores reads back untouched; the new
    scoring is stored with this host's family beside it (scored_on), the file verifies, and the
    rotation check here holds the twin's scoring to the bit and the rest to the other-family rule."""
    path = commit(computed, folders)
    before = json.loads(path.read_text())
    monkeypatch.setattr(units, "family", lambda device=None: "cpu/OtherVendor/avx2")
    trained = units.train(MODEL, records(), CONFIG, label="tiny", snapshots=(1,))
    assert score(trained) == computed[1]  # stored scorings are read, whatever the host
    rank_candidates(trained.at(3), CONVERSATIONS[:3], CANDIDATES[:3], [0] * 3)  # a question set it lacks
    doc = units.verify(path).doc
    (new,) = set(doc["scored"]) - set(before["scored"])
    assert doc["scored_on"] == {new: "cpu/OtherVendor/avx2"} and doc["where"] == before["where"]
    assert units.family_of_scoring(doc, new) == "cpu/OtherVendor/avx2"
    assert "trained again here (cpu/OtherVendor/avx2)" in capsys.readouterr().out
    monkeypatch.setenv("RAGFT_UNITS", "committed")
    r = rotation.recompute(units.verify(path), epoch=3)
    # at epoch 3: the unit's own ranking, generation and probe (4 + 4 + 1) and the twin's ranking (3)
    assert (r.agree, r.n, r.exact) == (12, 12, (3, 3)) and rotation.judge(r, 0.01)
    # the unit's own ranking (4 questions), computed on the other family, is what the direction test reads
    assert len(r.other_right[0]) == 4 and r.other_right[0] == r.other_right[1]


def test_a_checkpoint_a_scoring_asks_for_trains_only_up_to_it_and_is_the_whole_runs(computed, folders, monkeypatch):
    """A stored unit asked a new scoring at epoch 1 of 3 with the trainer's cache empty (a new machine)
    trains that epoch alone (2 steps: 4 records in batches of 2, not 6), cached under a name of its own;
    asked again, nothing trains; asked at epoch 3, it goes on from there; and both answer as the whole
    run does at those epochs, to the bit."""
    commit(computed, folders)
    steps, real_train = [], trainer.train
    monkeypatch.setattr(trainer, "train", lambda *a, **k: real_train(*a, on_step=lambda s, _: steps.append(s), **k))
    trained = units.train(MODEL, records(), CONFIG, label="tiny", snapshots=(1,))
    got = rank_candidates(trained.at(1), CONVERSATIONS[:3], CANDIDATES[:3], [0] * 3).scores
    assert steps == [1, 2]
    assert [p.name[-6:] for p in (folders / "cache" / "trained").iterdir()] == ["-to-e1"]
    generate(trained.at(1), CONVERSATIONS[:2], max_new_tokens=4)  # another question set, the same checkpoint
    assert steps == [1, 2]
    # the last epoch asked next goes on from epoch 1's prefix: steps 3 to 6, not 1 to 6 again
    last = rank_candidates(trained.at(3), CONVERSATIONS[:3], CANDIDATES[:3], [0] * 3).scores
    assert steps == [1, 2, 3, 4, 5, 6]
    whole = real_train(MODEL, records(), CONFIG, label="whole", snapshots=(1,), load=False)
    for epoch, scores in ((1, got), (3, last)):
        folder = trainer.snapshot_folder(whole.artifact, 1) if epoch == 1 else whole.artifact
        lm = trainer.load_artifact(MODEL, folder, CONFIG, merge=True)
        assert rank_candidates(lm, CONVERSATIONS[:3], CANDIDATES[:3], [0] * 3).scores == scores
    # and where the whole run is in the cache with that epoch kept, it answers: no prefix is trained
    assert real_train(MODEL, records(), CONFIG, label="whole", stop_after=1, load=False).artifact == \
        trainer.snapshot_folder(whole.artifact, 1)


def recomputed(here: str, agree: int, n: int, identical: bool, exact: tuple, other: tuple = ((), ())):
    """A recomputation of an AMD-computed unit at epoch 1, as `judge` reads it."""
    unit = units.Unit(Path("x.json"), {"where": {"family": "cpu/AuthenticAMD/avx2"}, "spec": {"config": {"seed": 0}},
                                       "key": "0" * 16, "label": "x"})
    return rotation.Recomputed(unit, 1, agree, n, identical, None, None, 1.0, {"family": here}, exact, other)


def test_a_scoring_is_judged_by_the_family_that_computed_it():
    """12 questions: 4 a twin computed on this host's family (to the bit), 8 the unit's own family
    elsewhere (ranked: one moved right to wrong, one wrong to right; McNemar p 1.0): held. One of the
    twin's questions moved, or a number of it changed: its family's rule (identical) fails, whatever moved
    elsewhere."""
    stored, now = (1, 1, 1, 1, 0, 0, 0, 0), (0, 1, 1, 1, 1, 0, 0, 0)
    assert rotation.judge(recomputed("cpu/GenuineIntel/amx", 10, 12, True, (4, 4), (stored, now)), 0.01)
    assert not rotation.judge(recomputed("cpu/GenuineIntel/amx", 9, 12, True, (3, 4), (stored, now)), 0.01)
    assert not rotation.judge(recomputed("cpu/GenuineIntel/amx", 10, 12, False, (4, 4), (stored, now)), 0.01)


def rewrite(path: Path, change) -> None:
    """Change a unit file's document and store it with its hash made whole again, as a computation
    that stored these numbers would have (so that only the change itself is judged)."""
    doc = json.loads(path.read_text())
    change(doc)
    unit = units.Unit(path, doc)
    unit.save()


@pytest.mark.parametrize("damage, reason", [
    (lambda p: p.write_text(p.read_text()[:-200]), "not whole JSON"),
    (lambda p: p.write_text(p.read_text().replace('"lr": 0.01', '"lr": 0.02', 1)), "fails its own hash"),
    (lambda p: rewrite(p, lambda d: d["spec"].update(base_sha256="0" * 64)), "names other base weights"),
    (lambda p: rewrite(p, lambda d: d["spec"].update(model="not-a-model")), "does not ship"),
    (lambda p: p.write_text(p.read_text().replace('"loss_first": ', '"loss_first": NaN, "x": ', 1)), "non-finite number"),
    (lambda p: rewrite(p, lambda d: d.update(key="0" * 16)), "is not its spec's"),
    (lambda p: rewrite(p, lambda d: d.update(scored_on={"e9/merged/" + "0" * 16: "cpu/Other/avx2"})), "its scored_on"),
])
def test_a_damaged_unit_file_is_refused_with_its_path_and_reason(computed, folders, monkeypatch, damage, reason):
    path = commit(computed, folders)
    damage(path)
    monkeypatch.setenv("RAGFT_UNITS", "committed")
    with pytest.raises(units.UnitRefused, match=reason) as refused:
        units.check_committed()
    assert str(path) in str(refused.value) and "nothing is computed on top of it" in str(refused.value)


def test_the_rotation_check_holds_a_unit_recomputed_on_its_own_family(computed, folders, monkeypatch, capsys):
    """Recomputed here, where it was computed: its prefix (epoch 1 of 3: the schedule of three epochs,
    stopped early) gives every stored number again; the line says so."""
    commit(computed, folders)
    monkeypatch.setenv("RAGFT_UNITS", "committed")
    lines = rotation.rotation(600, 0.01, run_number=0)
    assert len(lines) == 1 and lines[0].endswith(": held")
    # at epoch 1 the unit stores one ranking (4 questions), one generation (4) and one probe (1 text): 9
    assert lines[0].startswith(f"unit {computed[0].stem[-16:]} tiny seed 0 e1: 9/9 agree, accuracy ")


def test_a_planted_change_in_one_stored_outcome_fails_the_rotation_check(computed, folders, monkeypatch):
    """One stored ranking at the first checkpoint given another best candidate: on its own family the
    recomputation disagrees on that question, and the check fails, naming the unit."""
    path = commit(computed, folders)

    def plant(doc):  # question 0's gold candidate (index 0) moved past the others, or below them
        key = next(k for k in doc["scored"] if k.startswith("e1/") and "scores" in doc["scored"][k])
        scores = doc["scored"][key]["scores"][0]
        right = all(scores[0] > x for x in scores[1:])
        scores[0] = min(scores) - 1.0 if right else max(scores) + 1.0

    rewrite(path, plant)
    monkeypatch.setenv("RAGFT_UNITS", "committed")
    with pytest.raises(units.UnitError, match=r"rotation check failed:\n  unit [0-9a-f]{16} tiny seed 0 e1: 8/9 agree.*: failed"):
        rotation.rotation(600, 0.01, run_number=0)


def test_another_family_may_move_answers_in_no_direction():
    """On another family ranked answers may move, but not one way. Stop 81's continued update: 19 of 64
    moved, 13 right to wrong and 6 wrong to right: the exact McNemar p is 2 P(K <= 6), K ~ Bin(19, 1/2),
    = 2 * 43,796 / 2**19 = 0.167, held at 0.01. Nine moved, all right to wrong: 2 / 2**9 = 0.0039, failed
    (a trainer that stopped learning moves them so). Nothing moved, or no ranked question: p 1."""
    stored = (1,) * 51 + (0,) * 13
    now = (0,) * 13 + (1,) * 38 + (1,) * 6 + (0,) * 7
    r = recomputed("cpu/GenuineIntel/amx", 45, 64, False, (0, 0), (stored, now))
    assert rotation.direction_p(r) == pytest.approx(2 * 43796 / 2**19) and rotation.judge(r, 0.01)
    assert "13 right to wrong, 6 wrong to right (p 0.167): held" in rotation.rotation_line(r, True)
    one_way = recomputed("cpu/GenuineIntel/amx", 55, 64, False, (0, 0), (stored, (0,) * 9 + stored[9:]))
    assert rotation.direction_p(one_way) == pytest.approx(2 / 2**9) and not rotation.judge(one_way, 0.01)
    assert rotation.direction_p(recomputed("cpu/GenuineIntel/amx", 64, 64, False, (0, 0), (stored, stored))) == 1.0
    assert rotation.judge(recomputed("cpu/GenuineIntel/amx", 3, 9, False, (0, 0)), 0.01)  # texts only: counted
    # on its own family only identical numbers hold, whatever the agreement (every scoring exact)
    assert not rotation.judge(recomputed("cpu/AuthenticAMD/avx2", 9, 9, False, (9, 9)), 0.01)
    assert rotation.judge(recomputed("cpu/AuthenticAMD/avx2", 9, 9, True, (9, 9)), 0.01)


def test_the_rotation_order_reaches_every_unit_in_turn():
    found = [units.Unit(Path(f"{k}.json"), {"key": k}) for k in ("c" * 16, "a" * 16, "b" * 16)]
    firsts = [rotation.rotation_order(found, n)[0].key[0] for n in range(6)]
    assert firsts == ["a", "b", "c", "a", "b", "c"]


def test_a_unit_computed_again_from_its_file_alone_in_processes_of_its_own(computed, folders):
    """`python -m ragft.train.rotation recompute`: the committed file's spec and question sets are all
    it takes; trained afresh in a spawned process (as a GPU's parallel jobs are), every checkpoint and
    question set scored again, it is the same unit: the same key and the same outcomes, to the bit on
    this family."""
    path = commit(computed, folders)
    before = json.loads(path.read_text())
    assert rotation.recompute_files([path], jobs=2) == 0
    after = units.verify(path)  # the same key: the same file, written again
    assert after.doc["training"]["losses"] == before["training"]["losses"]
    assert rotation._numbers(after.doc["scored"]) == rotation._numbers(before["scored"])
    assert after.doc["where"]["date"] >= before["where"]["date"]


def test_the_reference_unit_guards_the_trainer_and_the_scorers(folders):
    """The committed reference (tests/fixtures/units): the same spec hashes to the same key (the
    units' FORMAT and spec are unchanged), and training and scoring it again gives what it stores: on
    the CPU family that computed it every number and text to the bit; on another family (which rounds
    differently in the last bits, and a random model's greedy text is a row of near ties) the losses,
    scores and probes within 1e-4. A code change that moves results moves them further: then raise
    units.FORMAT and write the reference again (`python tests/test_units.py`)."""
    reference = units.verify(next(REFERENCE.glob("tiny-*.json")))
    trained = units.train(MODEL, records(), CONFIG, label="tiny", snapshots=(1,))
    assert trained.key == reference.key, "the spec or units.FORMAT changed: write the reference again"
    score(trained)
    ours = trained.unit.doc
    assert set(ours["scored"]) == set(reference.doc["scored"])
    if reference.doc["where"]["family"] == units.family():
        assert ours["training"]["losses"] == reference.losses
        assert rotation._numbers(ours["scored"]) == rotation._numbers(reference.doc["scored"])
        return
    assert ours["training"]["losses"] == pytest.approx(reference.losses, rel=1e-4)
    for key, stored in reference.doc["scored"].items():
        now = ours["scored"][key]
        if "scores" in stored:
            assert sum(now["scores"], []) == pytest.approx(sum(stored["scores"], []), rel=1e-4), key
        elif "token_nll" in stored:
            assert now["token_nll"] == pytest.approx(stored["token_nll"], rel=1e-4), key


if __name__ == "__main__":  # write the reference unit again (after raising units.FORMAT)
    import os
    import tempfile

    os.environ["RAGFT_UNITS_DIR"] = tempfile.mkdtemp()
    os.environ["RAGFT_CACHE_DIR"] = tempfile.mkdtemp()
    settings.set_determinism(0, 2)
    unit = units.train(MODEL, records(), CONFIG, label="tiny", snapshots=(1,))
    score(unit)
    for old in REFERENCE.glob("tiny-*.json"):
        old.unlink()
    REFERENCE.mkdir(parents=True, exist_ok=True)
    shutil.copy(unit.unit.path, REFERENCE / unit.unit.path.name)
    print(f"wrote {REFERENCE / unit.unit.path.name}")


def test_the_checkpoint_interval_is_a_whole_number_of_steps(monkeypatch):
    from ragft import settings
    from ragft.constants import ParamError

    assert settings.checkpoint_every() == 0  # unset: no checkpoints
    monkeypatch.setenv("RAGFT_CHECKPOINT_EVERY", "20")
    assert settings.checkpoint_every() == 20
    monkeypatch.setenv("RAGFT_CHECKPOINT_EVERY", "-1")
    with pytest.raises(ParamError, match="RAGFT_CHECKPOINT_EVERY='-1' is not allowed"):
        settings.checkpoint_every()
