"""Units computed apart from the chapters: the jobs a collecting run wrote, computed in processes of their
own, as many at once as the device holds, on any machine with torch, transformers and peft (a GPU machine
with none of the book's other libraries included), one shard of them per machine where there are several.

A job (ragft.train.units, RAGFT_UNITS=collect) is a unit not computed yet, or a stored unit with scorings
not computed yet: its spec, the question sets asked of it (prompts, retrieved contexts and candidates
whole) and which checkpoint, form and question set each scoring is. Computing it is what a chapter's run
does in `use` mode, apart from the chapter: train the spec (the trainer's cache answers a run it finished,
and a run that continues another waits for it), load each checkpoint asked in the form asked, score each
question set there, store the unit. So a unit computed here is the unit `make units` computes, to the bit
on the same machine family (the tests hold a parallel run to a sequential one, and a collect-then-compute
round to a chapter's own run).

A collecting run's chapters answer from placeholders, and what they choose on them (a learning rate, a
checkpoint, a reader's arm) is a guess: the units asked after a choice may be the wrong ones. Collecting
again once the jobs are computed asks for what the guesses missed; a study is complete when a collecting
run writes no job (its rounds: one per choice that decides what trains next). Units a guess asked for and
no chapter uses stay in --out, where no chapter reads them: `unused` names them (by the units the last
run's results files name) and `--delete` removes them before a commit.

  python -m ragft.train.jobs run JOBS --out DIR [--parallel N|auto] [--shard I/N] [--archive FILE] [--report FILE]
  python -m ragft.train.jobs list JOBS [--shard I/N]
  python -m ragft.train.jobs unused DIR --run RUN [--delete]
  python -m ragft.train.jobs bench UNIT... --report FILE [--parallel N ...]   training throughput, nothing stored
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from .. import models, settings
from ..files import write_atomically
from . import trainer, units
from .units import Unit, UnitError

PROGRESS = "[ragft.jobs]"


# ---------------------------------------------------------------------------------------------
# Which jobs, in which order, on which shard


def job_files(paths: list[Path]) -> list[Path]:
    """The job files named, a folder standing for every job file in it."""
    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out += sorted(p.glob("*.json"))
        elif p.is_file():
            out.append(p)
        else:
            raise UnitError(f"{p}: no such job file or folder (write jobs with `make jobs`)")
    return out


def parent_key(doc: dict) -> str | None:
    start = doc["spec"]["start"]
    return start["unit"] if start else None


def in_waves(docs: dict, parent=parent_key) -> list[list]:
    """The items of `docs` (name -> unit doc) in waves: a unit that continues another of them comes in a
    wave after it (its parent's checkpoint must exist before it trains); within a wave, in name order."""
    pending, waves = dict(docs), []
    while pending:
        keys = {d["key"] for d in pending.values()}
        wave = sorted(n for n, d in pending.items() if parent(d) not in keys)
        if not wave:
            raise UnitError(f"jobs {sorted(pending)} continue one another in a circle")
        waves.append(wave)
        for n in wave:
            del pending[n]
    return waves


def parse_shard(text: str) -> tuple[int, int]:
    """"I/N" -> (I, N), 1 <= I <= N: the I-th of N shards."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise UnitError(f"--shard {text!r}: give I/N, the I-th of N shards (1/4 ... 4/4)")
    i, n = int(m[1]), int(m[2])
    if n < 1 or not 1 <= i <= n:
        raise UnitError(f"--shard {text!r}: I must be between 1 and N (N at least 1)")
    return i, n


def shard(docs: dict, i: int, n: int) -> dict:
    """The jobs of shard i of n: whole chains (a unit and the units that continue it, which need its
    weights), chains dealt round-robin in the order of their first unit's key, so the shards of one job
    set cover every job exactly once whatever machine computes them."""
    by_key = {d["key"]: name for name, d in docs.items()}

    def root(name):
        seen = set()
        while (p := parent_key(docs[name])) in by_key and name not in seen:
            seen.add(name)
            name = by_key[p]
        return docs[name]["key"]

    roots = sorted({root(name) for name in docs})
    mine = {r for j, r in enumerate(roots) if j % n == i - 1}
    return {name: d for name, d in docs.items() if root(name) in mine}


def read_jobs(paths: list[Path]) -> dict[str, Unit]:
    """Every job named, read and checked (ragft.train.units.read_job), by file name; one unit once."""
    jobs = {}
    for path in job_files(paths):
        job = units.read_job(path)
        jobs[f"{job.label}-{job.key}"] = job
    if not jobs:
        raise UnitError(f"no job in {[str(p) for p in paths]}: a collecting run (make jobs) found every unit stored")
    return jobs


# ---------------------------------------------------------------------------------------------
# Computing one job


def exact_fp32() -> None:
    """fp32 as a CPU computes it: no TF32 on a GPU (whose matrix products would otherwise round to
    10-bit mantissas), so a GPU computes the units a CPU does."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def checkpoints_asked(doc: dict) -> list[tuple[int, str, list[str]]]:
    """(epoch, form, scored keys) of a job's scorings, in the order asked, grouped by checkpoint."""
    groups: dict[tuple[int, str], list[str]] = {}
    for k in doc["job"]["asked"]:
        e, form, _ = k.split("/")
        groups.setdefault((int(e[1:]), form), []).append(k)
    return [(e, form, keys) for (e, form), keys in groups.items()]


def compute(job: Unit, out: Path, checkpoint_every: int = 0, cache: bool = True) -> dict:
    """A job computed here, as a chapter's `use` run computes it: the spec trained (or, `cache`, its
    finished run found in the trainer's cache), each checkpoint asked loaded in its form and its question
    sets scored, the unit stored in `out`. Returns its measurements (tokens, seconds) for the run's report."""
    doc, t0 = job.doc, time.perf_counter()
    spec, label = doc["spec"], doc["label"]
    elsewhere = units.scored_elsewhere(doc) if doc["job"]["stored"] else None  # a stored unit's twin scores here
    if elsewhere:
        units.say_elsewhere(doc, elsewhere)
    asked = checkpoints_asked(doc)
    epochs = spec["config"]["epochs"]
    result = units.train_unit(spec, label, cache=cache, snapshots=tuple(e for e, _, _ in asked if e < epochs),
                              checkpoint_every=checkpoint_every)
    train_wall = time.perf_counter() - t0
    training = doc["training"] if doc["job"]["stored"] else \
        {"metrics": units._plain(result.metrics), "losses": units._plain(result.losses), "seconds": round(train_wall, 2)}
    unit = Unit(out / f"{label}-{doc['key']}.json",
                {"format": doc["format"], "key": doc["key"], "label": label, "spec": spec, "training": training,
                 "questions": doc["questions"], "scored": dict(doc["scored"]),
                 "where": doc["where"] or units.where(result.metrics.get("device", "cpu"),
                                                      result.metrics.get("dtype", spec["config"]["dtype"])),
                 **({"scored_on": dict(doc["scored_on"])} if doc.get("scored_on") else {})})
    s0 = time.perf_counter()
    for epoch, form, keys in asked:
        folder = result.artifact if epoch == epochs else trainer.snapshot_folder(result.artifact, epoch)
        lm = trainer.load_artifact(spec["model"], folder, unit.config(), merge=form == "merged")
        for k in keys:
            qset = doc["questions"][units.qsha_of(doc, k)]
            stored = units._plain(units.encode(qset["op"], units._op_function(qset["op"])(lm, **units._call_inputs(qset))))
            bad = units._non_finite(stored)
            if bad is not None:
                raise UnitError(f"job {label}-{doc['key']}: a {qset['op']} at epoch {epoch} gave a non-finite number "
                                f"({bad}): not stored")
            unit.doc["scored"][k] = stored
            if elsewhere:
                unit.doc.setdefault("scored_on", {})[k] = elsewhere
        del lm
    unit.save()
    return row(label, doc["key"], unit.path.name, result.metrics, trained=not doc["job"]["stored"],
               scorings=len(doc["job"]["asked"]), score_s=time.perf_counter() - s0, wall_s=time.perf_counter() - t0)


def row(label: str, key: str, file: str, m: dict, trained: bool = True, scorings: int = 0, score_s: float = 0.0,
        wall_s: float | None = None) -> dict:
    """One unit's line of a report: its training tokens, seconds and FLOPs (the trainer's metrics `m`)."""
    return {"label": label, "key": key, "file": file, "trained": trained, "train_tokens": m["train_tokens"],
            "train_s": round(m["train_s"], 3), "flops": m["flops"], "peak_gflops": m["peak_gflops"],
            "tokens_per_s": round(m["train_tokens"] / max(m["train_s"], 1e-9), 1), "scorings": scorings,
            "score_s": round(score_s, 3), "wall_s": round(m["train_s"] if wall_s is None else wall_s, 3)}


def _worker(args: tuple) -> dict:
    path, out, threads, env = args
    os.environ.update(env)
    settings.set_determinism(0, threads)
    exact_fp32()
    units._OPEN.clear()
    return compute(units.read_job(path), Path(out), settings.checkpoint_every())


# ---------------------------------------------------------------------------------------------
# Running many


@dataclass
class Plan:
    """What `run` computes: the jobs (this shard's), how many processes at once, where units go."""

    jobs: dict[str, Unit]
    out: Path
    parallel: int
    threads: int
    device: str


def auto_parallel(device: str, threads: int) -> int:
    """Processes at once: on a GPU, as many as its memory holds runs of the book's model (about 3 GiB
    each in fp32 with the scorer's batches, a guess until a GPU measures it) and the host's cores feed,
    one a core; on a CPU, the cores by the threads each run computes with (a fixed count: another
    changes the numbers). More threads than cores make torch's threads spin against each other: on 2
    cores, a second process of 2 threads beside a training took 56 s a step, against 2.0 s alone."""
    cores = os.cpu_count() or 1
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return max(1, min((cores - 1) // threads, int(free / (3 * 2**30))))
    return max(1, cores // threads)


def plan(paths: list[Path], out: Path, parallel: str | int = 1, shard_of: str | None = None, threads: int = 2,
         device: str = "auto") -> Plan:
    """Everything `run` needs, checked before any model loads: the jobs readable and whole, the shard,
    the count of processes, the device there."""
    if device not in ("auto", "cpu", "cuda"):
        raise UnitError(f"--device {device!r}: use auto, cpu or cuda")
    if threads < 1:
        raise UnitError(f"--threads {threads}: at least 1")
    if device == "cuda" and models.select_device("auto") != "cuda":
        raise UnitError("--device cuda: this machine has no CUDA device torch can use")
    resolved = models.select_device("auto") if device == "auto" else device
    if str(parallel) == "auto":
        n = auto_parallel(resolved, threads)
    elif re.fullmatch(r"\d+", str(parallel)) and int(parallel) >= 1:
        n = int(parallel)
    else:
        raise UnitError(f"--parallel {parallel!r}: a count of processes (1 or more), or auto")
    part = parse_shard(shard_of) if shard_of is not None else None
    jobs = read_jobs(paths)
    if part is not None:
        jobs = {name: jobs[name] for name in shard({name: j.doc for name, j in jobs.items()}, *part)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise UnitError(f"--out {out}: not writable")
    keys = {j.key for j in jobs.values()}
    for name, job in sorted(jobs.items()):
        start = job.spec["start"]
        if start and start["unit"] not in keys and not any((d / f"{start['label']}-{start['unit']}.json").exists()
                                                            for d in (units.committed_dir(), out)):
            raise UnitError(f"job {name} continues unit {start['label']}-{start['unit']}, which is neither among these "
                            f"jobs nor stored in {units.committed_dir()} or {out}: bring the units it continues from "
                            "(RAGFT_COMMITTED_UNITS names their folder), or that unit's job")
    return Plan(jobs, out, n, threads, resolved)


def run(p: Plan, say=print) -> dict:
    """The plan's jobs computed, `p.parallel` processes at once (spawned: each its own torch, trainer
    folder and unit file), wave by wave (a continued run after its parent). Returns the report: each
    unit's tokens and seconds, and the aggregate: training tokens per second of the whole run's wall
    time, beside the device's fp32 bound for this mix (its peak FLOP rate over the FLOPs a token costs)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    import multiprocessing

    env = {"RAGFT_UNITS": "use", "RAGFT_UNITS_DIR": str(p.out.resolve())}  # a parent computed here is found here
    if p.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    waves = in_waves({n: j.doc for n, j in p.jobs.items()})
    say(f"{PROGRESS} {len(p.jobs)} jobs in {len(waves)} wave(s), {p.parallel} at once on {p.device}, into {p.out}")
    done, failed, t0 = [], {}, time.perf_counter()
    with ProcessPoolExecutor(max_workers=p.parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
        for wave in waves:  # one pool for every wave: its processes start (import torch) once
            for n in wave:  # a run whose parent failed cannot start: said, not tried
                parent = parent_key(p.jobs[n].doc)
                if parent in {p.jobs[f].key for f in failed}:
                    failed[n] = f"the unit it continues ({parent}) failed"
            futures = {pool.submit(_worker, (str(p.jobs[n].path), str(p.out), p.threads, env)): n
                       for n in wave if n not in failed}
            for f in as_completed(futures):
                try:
                    r = f.result()
                except Exception as e:  # noqa: BLE001 - one job's failure is reported; the others go on
                    failed[futures[f]] = f"{type(e).__name__}: {e}"
                    say(f"{PROGRESS} FAILED {futures[f]}: {failed[futures[f]]}")
                    continue
                done.append(r)
                wall = time.perf_counter() - t0
                tokens = sum(x["train_tokens"] for x in done)
                say(f"{PROGRESS} {len(done)}/{len(p.jobs)} {r['file']}: {r['train_tokens']:,} tokens in {r['train_s']:.0f} s "
                    f"({r['tokens_per_s']:,.0f}/s), {r['scorings']} scorings in {r['score_s']:.0f} s; all so far "
                    f"{tokens / wall:,.0f} tokens/s")
    return {**report(done, time.perf_counter() - t0, p), "failed": failed}


def report(done: list[dict], wall: float, p: Plan) -> dict:
    tokens = sum(r["train_tokens"] for r in done)
    flops = sum(r["flops"] for r in done)
    # each process measured the matrix-product peak of what it has: on a GPU, the one device all of them
    # share (so the best of their measures is the device's); on a CPU, its own threads (so the host's is
    # that times the processes running at once on cores of their own)
    peak = max((r["peak_gflops"] for r in done), default=0.0)
    if p.device == "cpu":
        peak *= max(1, min(p.parallel, (os.cpu_count() or 1) // p.threads))
    per_token = flops / tokens if tokens else None
    bound = peak * 1e9 / per_token if per_token else None
    rate = tokens / wall if wall > 0 else None
    return {"device": device_name(p.device), "family": units.family(p.device), "parallel": p.parallel,
            "threads": p.threads, "cores": os.cpu_count(),
            # the host's 1-minute load at the end: above the run's own processes, others shared the CPU
            "load_1min": round(os.getloadavg()[0], 2), "units": sorted(done, key=lambda r: r["file"]),
            "aggregate": {"units": len(done), "train_tokens": tokens, "wall_s": round(wall, 2),
                          "tokens_per_s": round(rate, 1) if rate else None,
                          "flops_per_token": round(per_token) if per_token else None, "peak_gflops": peak,
                          "bound_tokens_per_s": round(bound, 1) if bound else None,
                          "share_of_bound": round(rate / bound, 4) if rate and bound else None}}


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    from ..host import _cpu_model

    return _cpu_model()


def archive(files: list[str], out: Path, target: Path) -> Path:
    """The units computed, as one .tar.gz of bare file names (unpack it in the units folder)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for name in sorted(files):
            tar.add(out / name, arcname=name)
    tmp.replace(target)
    return target


def unused(folder: Path, runs: list[Path]) -> list[Path]:
    """The unit files of `folder` that no results file of the runs names (their `units`, the units each
    chapter asked for): a guess's units, after the last round's run has asked for every one it uses."""
    asked = set()
    for run in runs:
        found = sorted((Path(run) / "results").glob("*.json"))
        if not found:
            raise UnitError(f"--run {run}: no results files (run/results/*.json) to say which units are used")
        for path in found:
            asked |= {u["key"] for u in (json.loads(path.read_text()).get("units") or {}).values()}
    return [p for p in units.unit_files([Path(folder)]) if p.stem.rsplit("-", 1)[-1] not in asked]


# ---------------------------------------------------------------------------------------------
# Throughput of training alone: the benchmark


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def bench(unit_paths: list[Path], epochs: int, parallel: int, threads: int, device: str, dtype: str | None = None,
          say=print) -> dict:
    """Training throughput on a mix of units (their specs, each trained `epochs` epochs, nothing cached,
    stored or scored), `parallel` at once: each unit's tokens per second of its own steps, and the
    aggregate over the whole wall time, beside the device's bound. `dtype` (bf16, fp16): the specs
    trained in it instead, for what a lower precision would buy (other units: never stored)."""
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    specs = [units.verify(p) for p in unit_paths]
    if not specs:
        raise UnitError("bench: name at least one unit file, the mix to train")
    if dtype is not None:
        for u in specs:
            u.doc["spec"] = {**u.spec, "config": {**u.spec["config"], "dtype": DTYPES[dtype]}}
    env = {"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {}
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = list(pool.map(_bench_worker, [(u.spec, u.label, epochs, threads, env) for u in specs]))
    for r in done:
        say(f"{PROGRESS} bench {r['file']}: {r['train_tokens']:,} tokens in {r['train_s']:.1f} s ({r['tokens_per_s']:,.0f}/s)")
    return report(done, time.perf_counter() - t0, Plan({}, Path("."), parallel, threads, device))


def _bench_worker(args: tuple) -> dict:
    spec, label, epochs, threads, env = args
    os.environ.update(env)
    settings.set_determinism(0, threads)
    exact_fp32()
    import shutil

    result = units.train_unit(spec, f"bench-{label}", cache=False, stop_after=min(epochs, spec["config"]["epochs"]))
    shutil.rmtree(result.artifact, ignore_errors=True)
    key = units.key_of(spec)
    return row(label, key, f"{label}-{key}", result.metrics)


# ---------------------------------------------------------------------------------------------
# The command line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ragft.train.jobs", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="compute jobs into unit files")
    r.add_argument("jobs", nargs="+", type=Path, help="job files, or folders of them (make jobs writes _build/jobs/<profile>)")
    r.add_argument("--out", type=Path, required=True, help="where the units go (a units folder: experiments/units)")
    r.add_argument("--parallel", default="1", help="processes at once, or auto (a GPU: as many as its memory holds)")
    r.add_argument("--shard", help="I/N: compute only the I-th of N shards (a job array's task)")
    r.add_argument("--threads", type=int, default=int(os.environ.get("RAGFT_THREADS", "2")),
                   help="threads each process computes with (the profile's: 2; another count changes CPU numbers)")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda")
    r.add_argument("--archive", type=Path, help="also pack the units computed into this .tar.gz")
    r.add_argument("--report", type=Path, help="write the throughput report (JSON) here")
    ls = sub.add_parser("list", help="the jobs (of a shard) and what each asks")
    ls.add_argument("jobs", nargs="+", type=Path)
    ls.add_argument("--shard")
    un = sub.add_parser("unused", help="the unit files no chapter of a run asked for (a guess's)")
    un.add_argument("folder", type=Path)
    un.add_argument("--run", type=Path, nargs="+", required=True, help="run folders whose results name the units used")
    un.add_argument("--delete", action="store_true")
    b = sub.add_parser("bench", help="training throughput on a mix of units' specs (nothing stored)")
    b.add_argument("units", nargs="+", type=Path, help="unit files whose specs make the mix")
    b.add_argument("--epochs", type=int, default=1, help="epochs each trains (its schedule, stopped there)")
    b.add_argument("--parallel", type=int, nargs="+", default=[1], help="process counts to measure, each a run")
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--device", default="auto")
    b.add_argument("--dtype", choices=sorted(DTYPES), help="train the mix in this dtype instead of the units' own")
    b.add_argument("--report", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        return _command(args)
    except UnitError as e:
        print(f"{PROGRESS} {e}", file=sys.stderr)
        return 2


def _command(args) -> int:
    if args.command == "list":
        jobs = read_jobs(args.jobs)
        if args.shard:
            jobs = {n: jobs[n] for n in shard({n: j.doc for n, j in jobs.items()}, *parse_shard(args.shard))}
        for name, job in sorted(jobs.items()):
            what = "scorings for the stored unit" if job.doc["job"]["stored"] else "train, then scorings"
            print(f"{name}: {what}: {len(job.doc['job']['asked'])} at epochs "
                  f"{sorted({e for e, _, _ in checkpoints_asked(job.doc)})}")
        return 0
    if args.command == "unused":
        found = unused(args.folder, args.run)
        for path in found:
            print(f"{PROGRESS} {'deleted' if args.delete else 'unused'}: {path}")
            if args.delete:
                path.unlink()
        print(f"{PROGRESS} {len(found)} unit file(s) of {args.folder} no chapter of {[str(r) for r in args.run]} asked for")
        return 0
    if args.command == "run":
        p = plan(args.jobs, args.out, args.parallel, args.shard, args.threads, args.device)
        rep = run(p)
        a = rep["aggregate"]
        print(f"{PROGRESS} {a['units']} units, {a['train_tokens']:,} training tokens in {a['wall_s']:.0f} s: "
              f"{a['tokens_per_s']:,.0f} tokens/s on {rep['device']} ({rep['parallel']} at once)", flush=True)
        if args.report:
            write_atomically(args.report, json.dumps(rep, indent=1) + "\n")
        if args.archive:
            print(f"{PROGRESS} archive {archive([u['file'] for u in rep['units']], p.out, args.archive)}")
        for name, why in rep["failed"].items():
            print(f"{PROGRESS} not computed: {name}: {why}", file=sys.stderr)
        return 1 if rep["failed"] else 0
    if args.command == "bench":
        if args.device not in ("auto", "cpu", "cuda") or any(n < 1 for n in args.parallel) or args.epochs < 1:
            raise UnitError("bench: --device auto|cpu|cuda, --parallel counts of 1 or more, --epochs 1 or more")
        device = models.select_device("auto") if args.device == "auto" else args.device
        runs = [bench(args.units, args.epochs, n, args.threads, device, args.dtype) for n in args.parallel]
        write_atomically(args.report, json.dumps({"runs": runs}, indent=1) + "\n")
        for rep in runs:
            a = rep["aggregate"]
            print(f"{PROGRESS} bench, {rep['parallel']} at once: {a['tokens_per_s']:,.0f} tokens/s "
                  f"({a['share_of_bound']:.1%} of the bound {a['bound_tokens_per_s']:,.0f} at its dtype) on {rep['device']}")
        return 0
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
