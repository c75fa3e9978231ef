"""Trained units computed again: the rotation check every CI run makes, and units recomputed from their
files alone (ragft.train.units holds the units themselves).

The rotation check (the analysis plan's `units.rotation`) recomputes, on this machine, the unit whose
turn it is (the commit count picks it) up to the first checkpoint it was scored at (its schedule,
stopped early), then further units while the plan's slice lasts, and judges each scoring: identical on
the CPU family or GPU that computed it (the unit's, or its twin's: `scored_on`); elsewhere, its ranked
answers moving in no direction (the exact McNemar test). A unit
recomputed whole (`recompute`) trains its spec afresh and scores every question set it stores, in
parallel processes, fp32 without TF32, so that a GPU computes the units a CPU would.

  python -m ragft.train.rotation check        the rotation check (CI)
  python -m ragft.train.rotation verify       verify every committed unit
  python -m ragft.train.rotation recompute    compute units again (--jobs N processes)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .. import models, settings
from ..constants import DATA_DIR
from ..files import git
from ..stats import mcnemar_exact
from . import trainer
from .jobs import compute, exact_fp32, in_waves
from .units import (FORMAT, Unit, UnitError, _call_inputs, _find, _op_function, _plain, check_committed,
                    committed_dir, encode, family, family_of_scoring, key_of, qsha_of, train_unit, unit_files, verify,
                    where)

@dataclass
class Recomputed:
    """A unit recomputed at one checkpoint, against what it stores: per question, the same outcome
    (the ranked answer right or wrong, the generated text) or not."""

    unit: Unit
    epoch: int
    agree: int
    n: int
    identical: bool  # every number and text this host's family stored the same, to the bit
    acc_stored: float | None  # the share of ranked questions right, stored and recomputed
    acc_now: float | None
    seconds: float
    where: dict
    exact: tuple[int, int]  # (agree, n) of the scorings this host's family computed (judged to the bit)
    # the ranked questions of the scorings another family computed, right (1) or wrong (0): (stored, now);
    # required, as `exact` is, so that no constructor leaves the direction test silently empty
    other_right: tuple[tuple[int, ...], tuple[int, ...]]

    @property
    def seed(self) -> int:
        return self.unit.spec["config"]["seed"]


def _per_question(op: str, out: dict) -> tuple[list, list[int]]:
    """(one comparable outcome per question, the ranked questions' 0/1) of a stored scoring."""
    from ..scoring import Ranking

    if op == "perplexity_probe":  # one text: its loss to 4 decimals (the drift rule's tolerance scale)
        return [round(out["perplexity"], 4)], []
    if op == "generate":
        return list(out["texts"]), []
    ranking = Ranking(**(out["ranking"] if op == "rank_after_generating" else out))
    texts = out["generation"]["texts"] if op == "rank_after_generating" else [None] * len(ranking.gold)
    return list(zip(ranking.correct, texts)), ranking.correct


def prefix_cost_s(unit: Unit, epoch: int) -> float:
    """The stored seconds of training up to `epoch` and of scoring there (what recomputing that prefix
    cost where the unit was computed), a continued run's start included."""
    m = unit.metrics
    train_s = m["train_s"] if epoch == unit.spec["config"]["epochs"] else m["snapshots"][str(epoch)]["train_s"]
    score_s = 0.0
    for key, out in unit.doc["scored"].items():
        if key.startswith(f"e{epoch}/"):
            op = unit.doc["questions"][qsha_of(unit.doc, key)]["op"]
            parts = [out["generation"], out["ranking"]] if op == "rank_after_generating" else [out]
            score_s += sum(p.get("seconds", 0.0) for p in parts)
    start = unit.spec["start"]
    if start is not None:
        parent = _find(start["label"], start["unit"])
        train_s += prefix_cost_s(parent, start["epoch"]) if parent is not None else 0.0
    return train_s + score_s


def first_checkpoint(unit: Unit) -> int:
    epochs = sorted({int(k.split("/")[0][1:]) for k in unit.doc["scored"]})
    if not epochs:
        raise UnitError(f"unit {unit.label}-{unit.key} was scored at no checkpoint: nothing to recompute")
    return epochs[0]


def recompute(unit: Unit, epoch: int | None = None) -> Recomputed:
    """Train the unit's spec on this machine up to `epoch` (its first scored checkpoint by default:
    the same schedule, stopped early) and score there every question set it stores, in the form it was
    scored in; nothing is cached or stored."""
    import shutil

    epoch = first_checkpoint(unit) if epoch is None else epoch
    t0 = time.perf_counter()
    here = where(models.select_device("auto"), unit.spec["config"]["dtype"])
    result = train_unit(unit.spec, f"rotation-{unit.label}", cache=False, stop_after=epoch)
    try:
        agree = n = exact_agree = exact_n = 0
        identical = True
        right_stored: list[int] = []
        right_now: list[int] = []
        other_stored: list[int] = []
        other_now: list[int] = []
        for form in ("adapter", "merged"):
            keys = [k for k in unit.doc["scored"] if k.startswith(f"e{epoch}/{form}/")]
            if not keys:
                continue
            lm = trainer.load_artifact(unit.spec["model"], result.artifact, unit.config(), merge=form == "merged")
            for key in keys:
                qset = unit.doc["questions"][qsha_of(unit.doc, key)]
                out = _plain(encode(qset["op"], _op_function(qset["op"])(lm, **_call_inputs(qset))))
                stored = unit.doc["scored"][key]
                then, then_right = _per_question(qset["op"], stored)
                now, now_right = _per_question(qset["op"], out)
                same = sum(a == b for a, b in zip(then, now))
                agree += same
                n += len(then)
                right_stored += then_right
                right_now += now_right
                if family_of_scoring(unit.doc, key) == here["family"]:  # computed by this family: to the bit
                    exact_agree += same
                    exact_n += len(then)
                    identical &= _numbers(stored) == _numbers(out)
                else:
                    other_stored += then_right
                    other_now += now_right
            del lm
    finally:
        shutil.rmtree(result.artifact, ignore_errors=True)
    mean = (lambda xs: sum(xs) / len(xs) if xs else None)
    return Recomputed(unit, epoch, agree, n, identical, mean(right_stored), mean(right_now),
                      time.perf_counter() - t0, here, (exact_agree, exact_n), (tuple(other_stored), tuple(other_now)))


def _numbers(out: dict):
    """A scoring's outcomes without its timings (seconds differ on every run)."""
    if isinstance(out, dict):
        return {k: _numbers(v) for k, v in out.items() if k not in ("seconds", "per_query_s", "prefix_prefill_s")}
    return out


PLAN_FILE = DATA_DIR / "analysis_plan.yaml"
ROTATION_FIELDS = {"order", "checkpoint", "slice_minutes", "same_family", "other_family", "alpha", "why"}


def rotation_rule(path: Path = PLAN_FILE) -> dict:
    """The rotation check as the analysis plan declares it (`units.rotation`), checked."""
    import yaml

    rule = ((yaml.safe_load(Path(path).read_text()) or {}).get("units") or {}).get("rotation")
    if not isinstance(rule, dict) or set(rule) != ROTATION_FIELDS:
        raise UnitError(f"{path}: units.rotation must give {sorted(ROTATION_FIELDS)}")
    if rule["checkpoint"] != "first" or rule["same_family"] != "identical" or rule["other_family"] != "no_direction":
        raise UnitError(f"{path}: units.rotation: the engine implements checkpoint: first, same_family: identical and "
                        "other_family: no_direction")
    for field in ("slice_minutes", "alpha"):
        if not (isinstance(rule[field], (int, float)) and rule[field] > 0):
            raise UnitError(f"{path}: units.rotation.{field} must be a positive number")
    if rule["alpha"] >= 1:
        raise UnitError(f"{path}: units.rotation.alpha must be below 1")
    return rule


def rotation_order(found: list[Unit], run_number: int) -> list[Unit]:
    """The units in key order, starting at run_number modulo their count: successive runs (commits)
    start at successive units, so every unit comes first in turn."""
    ordered = sorted(found, key=lambda u: u.key)
    at = run_number % len(ordered)
    return ordered[at:] + ordered[:at]


def commit_count() -> int:
    out = git("rev-list", "--count", "HEAD", timeout=30)
    if out.returncode != 0 or not out.stdout.strip().isdigit():
        raise UnitError(f"the rotation needs the commit count (git rev-list --count HEAD): {out.stderr.strip()}")
    return int(out.stdout.strip())


def direction_p(r: Recomputed) -> float:
    """The exact McNemar p of the ranked questions that moved between the stored scorings another family
    computed and their recomputation here: right to wrong against wrong to right (1 where none moved)."""
    stored, now = r.other_right
    return mcnemar_exact(stored, now) if stored else 1.0


def judge(r: Recomputed, alpha: float) -> bool:
    """The plan's rule (units.rotation), scoring by scoring: identical where this host's family computed
    it (the unit, or its twin: `scored_on`); elsewhere the ranked questions that moved moved in no
    direction (`direction_p` at least `alpha`): another rounding, amplified by training, moves answers
    both ways, as a second seed does; a change of code or data that the key does not see moves them one."""
    exact_agree, exact_n = r.exact
    exact_held = exact_n == 0 or (r.identical and exact_agree == exact_n)
    return exact_held and direction_p(r) >= alpha


def rotation_line(r: Recomputed, held: bool) -> str:
    acc = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    stored, now = r.other_right
    other = ""
    if stored:  # the other family's ranked questions: how many moved each way, and the test's p
        lost = sum(a > b for a, b in zip(stored, now))
        gained = sum(a < b for a, b in zip(stored, now))
        other = (f", another family's ranked answers {lost} right to wrong, {gained} wrong to right "
                 f"(p {direction_p(r):.3g})")
    return (f"unit {r.unit.key} {r.unit.label} seed {r.seed} e{r.epoch}: {r.agree}/{r.n} agree, accuracy "
            f"{acc(r.acc_now)} vs {acc(r.acc_stored)}{other}: {'held' if held else 'failed'}")


def rotation(slice_s: float, alpha: float, run_number: int | None = None, folder: Path | None = None) -> list[str]:
    """The rotation check (the plan's units.rotation): the unit at the run's place in the rotation
    (rotation_order) is recomputed here up to its first scored checkpoint and judged (judge), then the
    units after it whose prefix fits what is left of `slice_s` (as long as it took where it was
    computed). Returns the lines; raises UnitError when one failed, after checking the rest."""
    # a unit scored at no checkpoint (chapter 5's timed one-fact runs) stores seconds, no outcome: the
    # plan leaves it out of the rotation, since a timing is the machine's
    found = [u for u in check_committed(folder) if u.doc["scored"]]
    if not found:
        raise UnitError("no committed unit with outcomes to check")
    order = rotation_order(found, commit_count() if run_number is None else run_number)
    lines, failed, spent = [], [], 0.0
    for unit in order:
        if lines and prefix_cost_s(unit, first_checkpoint(unit)) > slice_s - spent:
            continue  # the unit whose turn it is goes whatever its cost; the others while the slice lasts
        r = recompute(unit)
        spent += r.seconds
        held = judge(r, alpha)
        lines.append(rotation_line(r, held))
        print(lines[-1], flush=True)
        if not held:
            failed.append(lines[-1])
        if spent >= slice_s:
            break
    if failed:
        raise UnitError("the rotation check failed:\n  " + "\n  ".join(failed))
    return lines


def recompute_unit(path: Path, parents: dict[str, str] | None = None) -> Path:
    """A unit computed again from its file alone: its spec trained afresh on this machine (a continued
    run from its parent's new key, `parents`: old key -> new), every stored question set scored again
    at the checkpoint and in the form it was scored in (the job runner's `compute`, nothing taken from the
    trainer's cache), stored under the current FORMAT (the old file removed when the key moved)."""
    exact_fp32()
    old = verify(path)
    spec = json.loads(json.dumps(old.spec))
    if spec["start"] is not None and parents and spec["start"]["unit"] in parents:
        spec["start"]["unit"] = parents[spec["start"]["unit"]]
    key = key_of(spec)
    job = Unit(Path(path), {"format": FORMAT, "key": key, "label": old.label, "spec": spec, "training": None,
                            "questions": old.doc["questions"], "scored": {}, "where": None,
                            "job": {"asked": sorted(old.doc["scored"]), "stored": None}})
    new = Path(path).parent / compute(job, Path(path).parent, cache=False)["file"]
    if new.resolve() != Path(path).resolve():
        Path(path).unlink()
    return new


def _recompute_worker(args: tuple) -> tuple[str, str]:
    path, parents, threads = args
    settings.set_determinism(0, threads)
    new = recompute_unit(Path(path), parents)
    return str(path), new.name.rsplit("-", 1)[1][:-len(".json")]


def recompute_files(files: list[Path], jobs: int = 1, threads: int = 2) -> int:
    """Every unit of `files` (default: the committed ones that are stale) computed again, `jobs` at a
    time in processes of their own (each its own trainer folder and unit file: nothing shared but the
    converted base model, written once and atomically); a continued run waits for the unit it continues."""
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    if not files:
        files = [p for p in unit_files([committed_dir()]) if verify(p).doc["format"] != FORMAT]
    docs = {Path(p): verify(p).doc for p in files}
    done, parents = set(), {}
    for wave in in_waves(docs):
        with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
            for old_path, new_key in pool.map(_recompute_worker, [(str(p), dict(parents), threads) for p in wave]):
                parents[docs[Path(old_path)]["key"]] = new_key
                done.add(old_path)
                print(f"[ragft.rotation] {Path(old_path).name} -> key {new_key}", flush=True)
    print(f"[ragft.rotation] {len(done)} units computed again", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ragft.train.rotation", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("verify", help="verify every committed unit (hash, key, base weights, finite numbers, format)")
    rot = sub.add_parser("check", help="the rotation check: recompute this run's units of the rotation and judge them")
    rot.add_argument("--run-number", type=int, help="the run's place in the rotation (default: the commit count)")
    redo = sub.add_parser("recompute", help="compute committed units again from their files alone (spec and question "
                                            "sets), every checkpoint, in parallel processes; store them")
    redo.add_argument("files", nargs="*", type=Path, help="unit files (default: every stale one)")
    redo.add_argument("--jobs", type=int, default=1, help="parallel processes (a GPU holds about ten 135M fp32 runs)")
    args = ap.parse_args(argv)
    if args.command == "check":
        from ..host import measure

        settings.set_determinism(0, int(os.environ.get("RAGFT_THREADS", "2")))
        rule = rotation_rule()
        speed = measure()
        slice_s = rule["slice_minutes"] * 60 * speed.factor
        print(f"[ragft.rotation] {rule['slice_minutes']} minutes on the faster CPU kind, {slice_s:.0f} s on this "
              f"host ({speed.describe()}); family {family()}", flush=True)
        rotation(slice_s, rule["alpha"], args.run_number)
        return 0
    if args.command == "recompute":
        return recompute_files(args.files, args.jobs)
    if args.command == "verify":
        found = check_committed()
        size = sum(u.path.stat().st_size for u in found)
        print(f"[ragft.rotation] {len(found)} committed units verified ({size / 2**20:.1f} MiB) in {committed_dir()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
