"""Trained units: every training run computed once, committed, read by every run, checked by rotation.

A unit is one training run and the scoring of the checkpoints asked of it. Its spec is everything that
decides its numbers: the training records, every hyperparameter resolved (the dtype by name, never
"auto"), the seed, the base weights by sha256, the versions of torch, transformers and peft, and, for
a run that continues another, that unit's key and epoch. Its key is a hash of the spec. Each question
set it is scored on (the prompts fully formed, retrieved contexts and candidates included) is stored
with its own hash, and each scoring at a checkpoint with its outcome, so the unit holds the
per-question outcomes of every condition at every checkpoint, its losses, tokens and seconds, and
where it ran. A unit is a JSON file, `experiments/units/<label>-<key>.json`: no weights, no pickles.

`train(...)` is the chapters' door: a unit found is read, a unit missing is trained and stored, and
the models it returns (`UnitLM`) answer every scoring (`ragft.replay`) from the unit, computing and
storing what it lacks. The mode (RAGFT_UNITS) says what a run may do:
  use        (default) read what is stored; train and score what is missing, into RAGFT_UNITS_DIR
             (default the cache's units/; `make units` names experiments/units)
  committed  read the committed units only (`make book`, CI): a missing unit or question set stops
             the run, naming the unit and the command that computes it
  recompute  train and score live, reading and storing nothing (a reader who wants to watch it train)
  collect    compute nothing: a unit or a scoring that is not stored is written as a job (RAGFT_JOBS_DIR,
             default the cache's jobs/) and the chapter goes on with placeholder outcomes, never stored;
             ragft.train.jobs computes the jobs, many at once, on any machine with torch (`make jobs`)

A unit's weights are not stored: a scoring it lacks loads them trained again from its spec, to the bit
on the CPU family (or GPU) that trained it. On another family that is a twin (the same spec and seed,
other rounding): its scorings are stored with that family beside them (`scored_on`), so a draw can be
finished on whatever host comes, and the rotation check judges each scoring by the family that computed it.

The trainer's and the scorer's code are not in the key: the tests train and score a tiny reference
unit and compare it with a committed one, and a change that moves it raises FORMAT, which makes every
unit stale. ragft.train.rotation recomputes committed units (CI's rotation check, a whole recomputation).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .. import models, settings
from ..constants import PROJECT_ROOT
from ..files import write_atomically
from . import trainer
from .data import SFTExample, example

FORMAT = 1  # raise when the trainer or the scorers change what a unit computes: every unit goes stale
COMMITTED = PROJECT_ROOT / "experiments" / "units"  # the book's units, committed with it
MODES = ("use", "committed", "recompute", "collect")
COMPUTE_COMMAND = "make units PROFILE={profile}"
# The scorers a unit's model answers through (ragft.replay), by the name a unit stores them under
OPS = {"generate": "ragft.generation:generate", "rank_candidates": "ragft.scoring:rank_candidates",
       "rank_after_generating": "ragft.scoring:rank_after_generating",
       "perplexity_probe": "ragft.train.tasks:perplexity_probe"}
NOT_INPUTS = ("desc",)  # arguments that name a progress bar, not a question set
VERSIONED = ("torch", "transformers", "peft")


class UnitError(RuntimeError):
    """A unit that cannot be used: missing where only committed units may be read, stale, or refused."""


class UnitRefused(UnitError):
    """A unit file that is not what it says: truncated, edited, another model's, non-finite."""


def mode() -> str:
    value = os.environ.get("RAGFT_UNITS", "use")
    if value not in MODES:
        raise UnitError(f"RAGFT_UNITS={value!r} is not a mode: use one of {list(MODES)}")
    return value


def committed_dir() -> Path:
    """The committed units: the repository's experiments/units (RAGFT_COMMITTED_UNITS names another
    folder, for a test's own committed set)."""
    value = os.environ.get("RAGFT_COMMITTED_UNITS")
    return Path(value).expanduser() if value else COMMITTED


def store_dir() -> Path:
    """Where computed units go: RAGFT_UNITS_DIR, or the cache's units/ (a reader's run never writes
    into the repository unless it asks to)."""
    value = os.environ.get("RAGFT_UNITS_DIR")
    return Path(value).expanduser() if value else settings.cache_dir() / "units"


def jobs_dir() -> Path:
    """Where a collecting run writes its jobs: RAGFT_JOBS_DIR, or the cache's jobs/."""
    value = os.environ.get("RAGFT_JOBS_DIR")
    return Path(value).expanduser() if value else settings.cache_dir() / "jobs"


def search_dirs() -> list[Path]:
    """Where units are read from, committed first; a committed-only run reads nothing else."""
    if mode() == "committed":
        return [committed_dir()]
    dirs = [committed_dir(), store_dir()]
    return [d for i, d in enumerate(dirs) if d.resolve() not in {x.resolve() for x in dirs[:i]}]


# ---------------------------------------------------------------------------------------------
# Canonical JSON and hashes


def canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_of(value) -> str:
    return hashlib.sha256(canonical(value).encode()).hexdigest()


def _plain(value):
    """JSON's own types (tuples as lists), so a value hashes the same before and after a round trip."""
    return json.loads(canonical(value))


def _non_finite(value, where: str = "") -> str | None:
    """The path of the first number in `value` that is not finite, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "."
    if isinstance(value, dict):
        for k, v in value.items():
            if (bad := _non_finite(v, f"{where}/{k}")) is not None:
                return bad
    if isinstance(value, list):
        for i, v in enumerate(value):
            if (bad := _non_finite(v, f"{where}/{i}")) is not None:
                return bad
    return None


# ---------------------------------------------------------------------------------------------
# The spec: what decides a unit's numbers


def versions() -> dict[str, str]:
    from importlib import metadata

    return {p: metadata.version(p).split("+")[0] for p in VERSIONED}


def base_sha256(model_name: str) -> str:
    """The base weights' sha256: the registry's GGUF for a package-shipped model (a random-weight test
    model shares its GGUF and differs by name), the weights files of a local folder."""
    if models.is_folder(model_name):
        h = hashlib.sha256()
        for f in sorted(Path(model_name).glob("*.safetensors")):
            h.update(f.read_bytes())
        return h.hexdigest()
    spec = models.get_spec(model_name, "lm")
    if not spec.sha256:
        raise UnitError(f"model {model_name!r} has no pinned sha256 in ragft.models.REGISTRY: a unit needs its base "
                        "weights by hash (a hub model's revision is not pinned); train it live (RAGFT_UNITS=recompute)")
    return spec.sha256


def resolved_config(cfg: trainer.TrainConfig) -> dict:
    """The config as it trains: the dtype by name ("auto" resolved on this device), without the device
    (a GPU in fp32 with TF32 off computes the units a CPU does) and the checkpoint interval."""
    out = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("device", "checkpoint_every")}
    out["dtype"] = models.dtype_name(models.select_dtype(models.select_device(cfg.device), cfg.dtype))
    return out


@dataclass(frozen=True)
class Start:
    """A checkpoint of another unit that a run continues from (chapter 5's continued training)."""

    key: str
    label: str
    epoch: int

    def as_dict(self) -> dict:
        return {"unit": self.key, "label": self.label, "epoch": self.epoch}


def make_spec(model_name: str, examples: list[SFTExample], cfg: trainer.TrainConfig, snapshots=(),
              start: Start | None = None) -> dict:
    cfg.validate()
    records = [e.to_json() for e in examples]
    if not records:
        raise UnitError("a unit needs at least one training record")
    return _plain({"model": model_name, "base_sha256": base_sha256(model_name), "config": resolved_config(cfg),
                   "versions": versions(), "start": start.as_dict() if start else None,
                   "snapshots": sorted(set(int(e) for e in snapshots)),
                   "records_sha256": sha256_of(records), "records": records})


def key_of(spec: dict) -> str:
    """The unit's key: the spec's hash, snapshots aside (which epochs are kept does not change a number)."""
    return sha256_of([FORMAT, {k: v for k, v in spec.items() if k not in ("snapshots", "records")}])[:16]


# ---------------------------------------------------------------------------------------------
# Where a unit ran


def family(device: str | None = None) -> str:
    """The host family whose units reproduce exactly (`models.device_family`)."""
    return models.device_family(device)


def scored_elsewhere(doc: dict, device: str | None = None) -> str | None:
    """The family of this host where it is not the one that trained the unit, else None. A unit's weights
    are not kept: a new scoring loads them trained again from its spec, which reproduces them to the bit
    on the family that trained them alone; on another family they are a twin (the same spec, seed and
    records, other rounding), and the scoring is stored with that family beside it (`scored_on`), so the
    rotation check judges it by the family that computed it: identical there; elsewhere (the unit's own
    family included) its ranked answers may move, in no direction."""
    here = family(device)
    return here if here != doc["where"]["family"] else None


_SAID_ELSEWHERE: set[str] = set()


def say_elsewhere(doc: dict, here: str) -> None:
    name = f"{doc['label']}-{doc['key']}"
    if name not in _SAID_ELSEWHERE:
        _SAID_ELSEWHERE.add(name)
        print(f"[ragft.units] unit {name} was trained on {doc['where']['family']}; its new scorings are computed "
              f"on its twin trained again here ({here}) and stored as such (scored_on)", flush=True)


def where(device: str, dtype: str) -> dict:
    import torch

    from ..host import _cpu_model, commit_state

    sha, dirty = commit_state()
    return {"family": family(device), "device": device, "cpu": _cpu_model(),
            "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None, "dtype": dtype,
            "threads": torch.get_num_threads(), "commit": sha, "dirty": dirty,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


# ---------------------------------------------------------------------------------------------
# The unit file


@dataclass
class Unit:
    path: Path
    doc: dict

    @property
    def key(self) -> str:
        return self.doc["key"]

    @property
    def label(self) -> str:
        return self.doc["label"]

    @property
    def spec(self) -> dict:
        return self.doc["spec"]

    @property
    def metrics(self) -> dict:
        return self.doc["training"]["metrics"]

    @property
    def losses(self) -> list:
        return self.doc["training"]["losses"]

    def save(self) -> None:
        body = {k: v for k, v in self.doc.items() if k != "sha256"}
        bad = _non_finite(body)
        if bad is not None:
            raise UnitError(f"unit {self.label}-{self.key}: {bad} is not finite: not stored")
        self.doc = {**body, "sha256": sha256_of(body)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, json.dumps(self.doc, indent=1, ensure_ascii=False, allow_nan=False) + "\n")

    def config(self) -> trainer.TrainConfig:
        return spec_config(self.spec)


def spec_config(spec: dict) -> trainer.TrainConfig:
    """A spec's config as the trainer takes it (its dtype by the trainer's name: float32 -> fp32)."""
    c = dict(spec["config"])
    return trainer.TrainConfig(**{**c, "dtype": {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
                                  .get(c["dtype"], c["dtype"])})


def _refuse(path: Path, reason: str) -> UnitRefused:
    return UnitRefused(f"unit file {path} is refused: {reason}; nothing is computed on top of it. Delete it and "
                       "compute the unit again (make units), or restore it from git")


_ASKED: list[tuple] = []  # (when, label, key, read, file): the units this process asked for, as
# provenance (the results file names the units its trained conditions came from: `asked_since`)
_OPEN: dict[Path, Unit] = {}  # the units this process has read or written, one object a file: a scoring
# added by one holder of a unit is never lost to another holder's save


def read(path: str | Path) -> Unit:
    """The unit of a file, read and verified once a process (`verify`)."""
    path = Path(path).resolve()
    if path not in _OPEN:
        _OPEN[path] = verify(path)
    return _OPEN[path]


def verify(path: str | Path) -> Unit:
    """A unit file, verified: whole JSON, its own hash, its key from its spec, the base weights of a
    model this package ships, every number finite. Anything else is refused with the path and why."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise _refuse(path, f"it cannot be read ({e})") from e

    class NonFinite(ValueError):
        pass

    def no_constant(name):
        raise NonFinite(name)

    try:
        doc = json.loads(text, parse_constant=no_constant)
    except NonFinite as e:
        raise _refuse(path, f"it carries a non-finite number ({e})") from e
    except ValueError as e:
        raise _refuse(path, f"it is not whole JSON (truncated?): {e}") from e
    if not isinstance(doc, dict) or not {"format", "key", "label", "spec", "training", "questions", "scored",
                                         "where", "sha256"} <= set(doc):
        raise _refuse(path, "it lacks the fields of a unit (format, key, label, spec, training, questions, scored, "
                            "where, sha256)")
    bad = _non_finite(doc)
    if bad is not None:
        raise _refuse(path, f"it carries a non-finite number at {bad}")
    body = {k: v for k, v in doc.items() if k != "sha256"}
    if sha256_of(body) != doc["sha256"]:
        raise _refuse(path, "it fails its own hash (edited after it was computed)")
    spec = doc["spec"]
    if sha256_of(spec.get("records")) != spec.get("records_sha256"):
        raise _refuse(path, "its training records do not match their hash")
    try:
        expected = base_sha256(spec["model"])
    except (UnitError, KeyError, ValueError, models.ModelUnavailable) as e:
        raise _refuse(path, f"it names a model this package does not ship ({spec.get('model')!r}: {e})") from e
    if spec["base_sha256"] != expected:
        raise _refuse(path, f"it names other base weights for {spec['model']!r} (sha256 {spec['base_sha256'][:12]}, "
                            f"this package ships {expected[:12]})")
    if doc["format"] == FORMAT and key_of(spec) != doc["key"]:
        raise _refuse(path, f"its key {doc['key']} is not its spec's ({key_of(spec)})")
    elsewhere = doc.get("scored_on", {})
    if not isinstance(elsewhere, dict) or not set(elsewhere) <= set(doc["scored"]) or \
            doc["where"]["family"] in elsewhere.values():
        raise _refuse(path, "its scored_on names a scoring it does not store, or the family that trained it")
    return Unit(path, doc)


def family_of_scoring(doc: dict, scored_key_: str) -> str:
    """The family whose weights gave a stored scoring: the unit's own, or its twin's (`scored_on`)."""
    return doc.get("scored_on", {}).get(scored_key_, doc["where"]["family"])


def unit_files(dirs: list[Path] | None = None) -> list[Path]:
    return sorted(p for d in (dirs or search_dirs()) if d.is_dir() for p in d.glob("*.json"))


def _find(label: str, key: str) -> Unit | None:
    for d in search_dirs():
        path = d / f"{label}-{key}.json"
        if path.exists():
            return read(path)
    if mode() == "collect":  # a unit this collecting run (or an earlier kernel of it) wrote as a job
        return _pending_job(label, key)
    return None


def _stale_reason(label: str, spec: dict) -> str:
    """Why a unit of this label is not the one asked for: the other units of the label, and what in their
    spec differs (the format, a hyperparameter, the records, the versions, the start)."""
    found = []
    for path in unit_files():
        if not path.name.startswith(f"{label}-") or not re.fullmatch(rf"{re.escape(label)}-[0-9a-f]{{16}}\.json", path.name):
            continue
        try:
            doc = json.loads(path.read_text())
        except ValueError:
            continue
        other, diffs = doc.get("spec", {}), []
        if doc.get("format") != FORMAT:
            diffs.append(f"format {doc.get('format')} (now {FORMAT})")
        for k in ("model", "base_sha256", "versions", "start"):
            if other.get(k) != spec[k]:
                diffs.append(f"{k} {other.get(k)!r} (now {spec[k]!r})")
        for k, v in spec["config"].items():
            if other.get("config", {}).get(k) != v:
                diffs.append(f"config.{k} {other.get('config', {}).get(k)!r} (now {v!r})")
        if other.get("records_sha256") != spec["records_sha256"]:
            mine, theirs = spec["records"], other.get("records", [])
            changed = sum(a != b for a, b in zip(mine, theirs)) + abs(len(mine) - len(theirs))
            diffs.append(f"records: {changed} of {len(mine)} differ")
        found.append(f"{path.name} is stale: " + "; ".join(diffs or ["its key"]))
    return (" " + " ".join(found)) if found else " No unit of that label is stored."


# ---------------------------------------------------------------------------------------------
# Question sets and their outcomes


def _op_function(op: str):
    import importlib

    module, name = OPS[op].split(":")
    fn = getattr(importlib.import_module(module), name)
    return getattr(fn, "unwrapped", fn)


def question_set(op: str, fn, args: tuple, kwargs: dict) -> dict:
    """A scoring call's inputs as JSON: every argument but the model and the progress bar's name; a
    function argument (a reader's reasoning prefix) by its import name."""
    if op not in OPS:
        raise UnitError(f"{op!r} is not a scoring a unit can store: {sorted(OPS)}")
    bound = inspect.signature(fn).bind(None, *args, **kwargs)
    bound.apply_defaults()
    inputs = dict(list(bound.arguments.items())[1:])
    for name in NOT_INPUTS:
        inputs.pop(name, None)
    for name in ("logits_processors", "on_batch"):
        if inputs.get(name) is not None:
            raise UnitError(f"{op}: a unit's model is not scored with {name} (per-call state a unit cannot store)")
        inputs.pop(name, None)
    for name, value in list(inputs.items()):
        if callable(value):
            qualname = getattr(value, "__qualname__", "")
            if "<" in qualname or not getattr(value, "__module__", None):
                raise UnitError(f"{op}: argument {name} is {value!r}; a unit stores a function by its import name, "
                                "so it must be a module-level function")
            inputs[name] = {"function": f"{value.__module__}:{qualname}"}
    return _plain({"op": op, "inputs": inputs})


def _call_inputs(qset: dict) -> dict:
    import importlib

    inputs = dict(qset["inputs"])
    for name, value in inputs.items():
        if isinstance(value, dict) and set(value) == {"function"}:
            module, qualname = value["function"].split(":")
            obj = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
            inputs[name] = obj
    return inputs


def encode(op: str, out) -> dict:
    if op == "rank_after_generating":
        gen, ranking = out
        return {"generation": dataclasses.asdict(gen), "ranking": dataclasses.asdict(ranking)}
    if op == "perplexity_probe":
        return {"perplexity": out[0], "token_nll": list(out[1])}
    return dataclasses.asdict(out)


def decode(op: str, stored: dict):
    from ..generation import Generation
    from ..scoring import Ranking

    if op == "generate":
        return Generation(**stored)
    if op == "rank_candidates":
        return Ranking(**stored)
    if op == "rank_after_generating":
        return Generation(**stored["generation"]), Ranking(**stored["ranking"])
    return stored["perplexity"], list(stored["token_nll"])


def scored_key(epoch: int, form: str, qsha: str) -> str:
    return f"e{epoch}/{form}/{qsha[:16]}"


def qsha_of(doc: dict, scored_key_: str) -> str | None:
    """The full hash of the question set a scored key names (its last part is the hash's first 16), or None."""
    short = scored_key_.rsplit("/", 1)[1]
    return next((q for q in doc["questions"] if q.startswith(short)), None)


# ---------------------------------------------------------------------------------------------
# Collecting (RAGFT_UNITS=collect): what a run would compute, written as jobs for ragft.train.jobs

PENDING_TEXT = "(pending)"  # a placeholder's generated text: what a collecting run's chapters see
_JOBS: dict[str, Unit] = {}  # label-key -> the job of this collecting process, one object a unit


def job_path(label: str, key: str) -> Path:
    return jobs_dir() / f"{label}-{key}.json"


def placeholder_training(spec: dict) -> dict:
    """A job's training as a collecting run's chapters read it: its steps counted from its records, every
    cost 1 a step, losses falling from 1 to 0.5 (so nothing divides by zero and no arm reads as diverged);
    never stored in a unit."""
    cfg = spec["config"]
    per = math.ceil(len(spec["records"]) / cfg["batch_size"])
    steps = per * cfg["epochs"]
    cost = {str(e): {"step": per * e, "train_s": float(per * e), "train_tokens": per * e, "flops": float(per * e)}
            for e in spec["snapshots"]}
    metrics = {"method": cfg["method"], "target": cfg.get("target", "all"), "examples": len(spec["records"]),
               "steps": steps, "epochs": cfg["epochs"], "train_tokens": steps, "trainable_params": 1, "total_params": 1,
               "trainable_share": 1.0, "step_s": 1.0, "train_s": float(steps), "tokens_per_s": 1.0, "mfu": 0.0,
               "peak_gflops": 1.0, "pad_share": 0.0, "peak_mb": 1.0, "train_growth_mb": 1.0, "base_weight_mb": 1.0,
               "artifact_mb": 1.0, "loss_first": 1.0, "loss_last": 0.5, "loss_first_epoch": 1.0, "loss_last_epoch": 0.5,
               "dtype": cfg["dtype"], "device": "pending", "master_weights": cfg["dtype"], "flops": float(steps),
               "snapshots": cost}
    return {"metrics": metrics, "losses": [1.0 - 0.5 * i / max(1, steps - 1) for i in range(steps)], "seconds": 0.0}


def placeholder(op: str, qset: dict):
    """What a collecting run's chapter gets for a scoring not computed yet: every candidate tied (so
    every ranked answer counts as wrong), every generated text PENDING_TEXT, a perplexity of 1."""
    from ..generation import Generation
    from ..scoring import Ranking

    inputs = qset["inputs"]
    if op == "perplexity_probe":
        return 1.0, [0.0] * max(1, len(inputs["text"]))
    n = len(inputs["conversations"])
    gen = Generation([PENDING_TEXT] * n, [1] * n, [1] * n, 1.0, [1.0 / max(1, n)] * n)
    if op == "generate":
        return gen
    ranking = Ranking([[0.0] * len(c) for c in inputs["candidates"]], list(inputs["gold"]), [1] * n, 1.0)
    return ranking if op == "rank_candidates" else (gen, ranking)


def _new_job(label: str, key: str, spec: dict) -> Unit:
    """A unit this collecting run asks for and nothing stores: a job (its training a placeholder)."""
    job = Unit(job_path(label, key), {"format": FORMAT, "key": key, "label": label, "spec": spec,
                                      "training": placeholder_training(spec), "questions": {}, "scored": {},
                                      "where": None, "job": {"asked": [], "stored": None}})
    _JOBS[f"{label}-{key}"] = job
    save_job(job)
    return job


def _job_of(unit: Unit) -> Unit:
    """The job that computes what a unit lacks: the unit itself where it is a job; for a stored unit, a
    job that carries it whole (its training, where and scorings kept) and adds the scorings asked."""
    if "job" in unit.doc:
        return unit
    name = f"{unit.label}-{unit.key}"
    if _pending_job(unit.label, unit.key) is None:  # an earlier kernel of this run may have begun it
        doc = {k: v for k, v in json.loads(json.dumps(unit.doc)).items() if k != "sha256"}
        _JOBS[name] = Unit(job_path(unit.label, unit.key), {**doc, "job": {"asked": [], "stored": unit.path.name}})
    return _JOBS[name]


def save_job(job: Unit) -> None:
    """A job's file: the unit as the job computes it from (a new one's training left out)."""
    doc = dict(job.doc)
    if doc["job"]["stored"] is None:
        doc["training"] = None
    job.path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(job.path, json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False) + "\n")


def read_job(path: str | Path) -> Unit:
    """A job file, checked: a unit's fields and the job's, its key its spec's, its format this one's."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UnitError(f"job file {path} cannot be read as JSON: {e}") from e
    need = {"format", "key", "label", "spec", "training", "questions", "scored", "where", "job"}
    if not isinstance(doc, dict) or not need <= set(doc) or not isinstance(doc["job"], dict) or \
            not {"asked", "stored"} <= set(doc["job"]):
        raise UnitError(f"job file {path} is not a job (it needs {sorted(need)}, and job.asked, job.stored): "
                        "write jobs with a collecting run (make jobs)")
    if doc["format"] != FORMAT:
        raise UnitError(f"job file {path} is of format {doc['format']}, this trainer's is {FORMAT}: collect it again")
    if key_of(doc["spec"]) != doc["key"]:
        raise UnitError(f"job file {path}: its key {doc['key']} is not its spec's ({key_of(doc['spec'])})")
    for k in doc["job"]["asked"]:
        if not re.fullmatch(r"e\d+/(adapter|merged)/[0-9a-f]{16}", k) or qsha_of(doc, k) is None:
            raise UnitError(f"job file {path}: asked scoring {k!r} names no question set of the job")
    if doc["job"]["stored"] is None:
        doc["training"] = placeholder_training(doc["spec"])
    return Unit(path, doc)


def _pending_job(label: str, key: str) -> Unit | None:
    name = f"{label}-{key}"
    if name not in _JOBS and job_path(label, key).exists():
        _JOBS[name] = read_job(job_path(label, key))
    return _JOBS.get(name)


# ---------------------------------------------------------------------------------------------
# Weights, when a unit has to be computed


def _start_folder(start: dict | None) -> Path | None:
    if start is None:
        return None
    parent = _find(start["label"], start["unit"])
    if parent is None:
        raise UnitError(f"unit {start['label']}-{start['unit']}, which this unit continues, is not stored")
    return checkpoint_folder(parent, start["epoch"])


def train_unit(unit_spec: dict, label: str, cache: bool = True, stop_after: int | None = None,
               snapshots: tuple = (), checkpoint_every: int = 0) -> trainer.TrainResult:
    """Train a unit's spec (the trainer's cache answers a run it has finished). `stop_after`: the same
    schedule, stopped after that epoch (the rotation's prefix, or a checkpoint a scoring asks for: the
    weights the whole run has there). `checkpoint_every`: steps between the
    trainer's checkpoints, from which an interrupted run resumes to the same outcomes (not in the key)."""
    records = [example(r["messages"], r["answer"]) for r in unit_spec["records"]]
    cfg = dataclasses.replace(spec_config(unit_spec), checkpoint_every=checkpoint_every)
    kept = tuple(sorted(set(unit_spec["snapshots"]) | set(snapshots)))
    if stop_after is not None:  # the epoch it stops after is the artifact itself
        kept = tuple(e for e in kept if e < stop_after)
    return trainer.train(unit_spec["model"], records, cfg, label=label, cache=cache,
                         init_from=_start_folder(unit_spec["start"]), snapshots=kept, load=False,
                         stop_after=stop_after)


def checkpoint_folder(unit: Unit, epoch: int) -> Path:
    """The artifact of a unit's checkpoint, found in the trainer's cache or trained from its spec up to
    that epoch only (the same schedule stopped there: the weights the whole run has there), checkpointed
    every RAGFT_CHECKPOINT_EVERY steps so that an interrupted run resumes to the same weights."""
    epochs = unit.spec["config"]["epochs"]
    return train_unit(unit.spec, unit.label, stop_after=epoch if epoch < epochs else None,
                      checkpoint_every=settings.checkpoint_every()).artifact


# ---------------------------------------------------------------------------------------------
# A unit's model


class UnitLM:
    """A unit's model at one checkpoint, as the scorers see it: `ragft.replay` hands it every scoring,
    which it answers from the unit, or computes on the real model (loaded at its first such call) and
    stores. `form`: "merged" (the adapter merged into the base weights, as chapters answer) or
    "adapter" (the model as the trainer returns it)."""

    def __init__(self, trained: "Trained", epoch: int, form: str):
        self.trained, self.epoch, self.form = trained, epoch, form
        self.name = trained.unit.spec["model"]
        self.quantization = "nf4" if trained.unit.spec["config"]["method"] == "qlora" else None
        self._real = None
        self._tokenizer = None

    @property
    def unit(self) -> Unit:
        return self.trained.unit

    @property
    def tokenizer(self):
        if self._real is not None:
            return self._real.tokenizer
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(models.model_source(self.name))
            self._tokenizer.padding_side = "left"
        return self._tokenizer

    @property
    def device(self) -> str:
        return models.select_device("auto")

    @property
    def dtype(self):
        return getattr(__import__("torch"), self.unit.spec["config"]["dtype"])

    def as_merged(self) -> "UnitLM":
        return self if self.form == "merged" else UnitLM(self.trained, self.epoch, "merged")

    def real(self):
        """The trained model itself (loaded once): for a computation, never for a read."""
        if self._real is None:
            if mode() in ("committed", "collect"):
                raise UnitError(f"unit {self.unit.label}-{self.unit.key}: a {mode()} run (RAGFT_UNITS={mode()}) loads no "
                                "trained model")
            folder = checkpoint_folder(self.unit, self.epoch)
            self._real = trainer.load_artifact(self.name, folder, self.trained.unit.config(), merge=self.form == "merged")
        return self._real

    def unit_call(self, op: str, fn, args: tuple, kwargs: dict):
        qset = question_set(op, fn, args, kwargs)
        qsha = sha256_of(qset)
        key = scored_key(self.epoch, self.form, qsha)
        unit = self.unit
        if key in unit.doc["scored"]:
            return decode(op, unit.doc["scored"][key])
        if mode() == "collect":
            job = _job_of(unit)
            job.doc["questions"].setdefault(qsha, qset)
            if key not in job.doc["job"]["asked"]:
                job.doc["job"]["asked"].append(key)
            save_job(job)
            return placeholder(op, qset)
        if mode() == "committed":
            raise UnitError(f"unit {unit.label}-{unit.key} ({unit.path}) has no outcomes for a {op} of "
                            f"{_size(qset)} at epoch {self.epoch} ({self.form}): the question set changed since it "
                            f"was computed (stale). Compute it: {COMPUTE_COMMAND.format(profile=_profile())}")
        elsewhere = scored_elsewhere(unit.doc)
        if elsewhere:
            say_elsewhere(unit.doc, elsewhere)
        out = fn(self.real(), *args, **kwargs)
        stored = _plain(encode(op, out))
        bad = _non_finite(stored)
        if bad is not None:
            raise UnitError(f"unit {unit.label}-{unit.key}: a {op} at epoch {self.epoch} gave a non-finite number "
                            f"({bad}): not stored")
        unit.doc["questions"].setdefault(qsha, qset)
        unit.doc["scored"][key] = stored
        if elsewhere:
            unit.doc.setdefault("scored_on", {})[key] = elsewhere
        unit.save()
        return out


def _size(qset: dict) -> str:
    inputs = qset["inputs"]
    n = len(inputs.get("conversations") or []) or (1 if "text" in inputs else 0)
    return f"{n} question(s)"


def _profile() -> str:
    return os.environ.get("RAGFT_PROFILE", "cpu")


class _Checkpoints:
    """What a trained run names for other runs: its checkpoints (`key`, `label`, `epochs` its own)."""

    def start(self, epoch: int | None = None) -> Start:
        """A checkpoint of this unit for another run to continue from."""
        return Start(self.key, self.label, self.epochs if epoch is None else epoch)

    def ref(self, epoch: int | None = None) -> str:
        """The checkpoint by name, for a hand-over between chapters: "unit:<label>-<key>@<epoch>"."""
        return f"unit:{self.label}-{self.key}@{self.epochs if epoch is None else epoch}"


@dataclass
class Trained(_Checkpoints):
    """A unit as a chapter uses it: its training's measurements and its models by checkpoint."""

    unit: Unit
    cached: bool  # read from a stored unit, not trained by this run
    form: str = "adapter"  # how `lm` answers: as the trainer returns it, or merged (`merge`)

    def merge(self) -> "Trained":
        """Answer merged from now on (trainer.merged, for the model `lm` gives)."""
        self.form = "merged"
        return self

    @property
    def key(self) -> str:
        return self.unit.key

    @property
    def label(self) -> str:
        return self.unit.label

    @property
    def metrics(self) -> dict:
        return self.unit.metrics

    @property
    def losses(self) -> list:
        return self.unit.losses

    @property
    def epochs(self) -> int:
        return self.unit.spec["config"]["epochs"]

    @property
    def lm(self) -> UnitLM:
        """The model after the last epoch, as the trainer returns it, or merged after `merge`."""
        return UnitLM(self, self.epochs, self.form)

    def at(self, epoch: int | None = None) -> UnitLM:
        """The model after `epoch` (the last by default), merged for answering."""
        epoch = self.epochs if epoch is None else epoch
        if epoch != self.epochs and epoch not in self.unit.spec["snapshots"]:
            raise UnitError(f"unit {self.label}: epoch {epoch} is not one of its checkpoints "
                            f"{self.unit.spec['snapshots'] + [self.epochs]}")
        return UnitLM(self, epoch, "merged")


class Live(_Checkpoints):
    """A run trained live (RAGFT_UNITS=recompute): the trainer's result, with the units' interface."""

    def __init__(self, result: trainer.TrainResult, model_name: str, cfg: trainer.TrainConfig, spec: dict, label: str):
        self.result, self.model_name, self.cfg, self.spec, self.label = result, model_name, cfg, spec, label
        self.key = key_of(spec)
        self.cached = False
        self.metrics, self.losses = result.metrics, result.losses

    @property
    def epochs(self) -> int:
        return self.cfg.epochs

    @property
    def lm(self):
        return self.result.lm

    def merge(self) -> "Live":
        trainer.merged(self.result.lm)
        return self

    def at(self, epoch: int | None = None):
        epoch = self.epochs if epoch is None else epoch
        folder = self.result.artifact if epoch == self.epochs else trainer.snapshot_folder(self.result.artifact, epoch)
        return trainer.load_artifact(self.model_name, folder, self.cfg, merge=True)


def train(model_name: str, examples: list[SFTExample], cfg: trainer.TrainConfig, label: str,
          snapshots: tuple[int, ...] = (), start: Start | None = None) -> Trained | Live:
    """The unit of this training run: read where stored, trained and stored where missing (the mode
    allowing), or trained live (RAGFT_UNITS=recompute). `start`: another unit's checkpoint to continue
    from. In a committed-only run a missing unit stops the run here, before any model loads."""
    label = re.sub(r"[^A-Za-z0-9_.=+-]", "_", label)  # it names a file: "fresh-one-single:x" -> "fresh-one-single_x"
    spec = make_spec(model_name, examples, cfg, snapshots, start)
    key = key_of(spec)
    if mode() == "recompute":
        folder = _start_folder(spec["start"]) if start else None
        result = trainer.train(model_name, examples, cfg, label=label, snapshots=tuple(spec["snapshots"]),
                               init_from=folder)
        return _asked(Live(result, model_name, cfg, spec, label))
    found = _find(label, key)
    if found is not None:
        if found.doc["format"] != FORMAT:
            found = None if mode() != "committed" else _stale(label, key, spec, found)
        else:
            missing = sorted(set(spec["snapshots"]) - set(found.spec["snapshots"]))
            if not missing:
                return _asked(Trained(found, cached=True))
            if mode() == "committed":
                raise UnitError(f"unit {label}-{key} ({found.path}) kept no checkpoint at epoch(s) {missing}, "
                                f"now asked for: compute it again: {COMPUTE_COMMAND.format(profile=_profile())}")
    if mode() == "collect":
        return _asked(Trained(_new_job(label, key, spec), cached=False))
    if mode() == "committed":
        raise UnitError(f"unit {label}-{key} is not among the committed units ({committed_dir()}), and a committed-only run "
                        f"trains nothing.{_stale_reason(label, spec)} Compute it: "
                        f"{COMPUTE_COMMAND.format(profile=_profile())}")
    t0 = time.perf_counter()
    result = train_unit(spec, label, checkpoint_every=settings.checkpoint_every())
    dtype = result.metrics.get("dtype", spec["config"]["dtype"])
    unit = Unit((store_dir() / f"{label}-{key}.json").resolve(),
                {"format": FORMAT, "key": key, "label": label, "spec": spec,
                 "training": {"metrics": _plain(result.metrics), "losses": _plain(result.losses),
                              "seconds": round(time.perf_counter() - t0, 2)},
                 "questions": {}, "scored": {}, "where": where(result.metrics.get("device", "cpu"), dtype)})
    unit.save()
    _OPEN[unit.path] = unit
    return _asked(Trained(unit, cached=False))


def _asked(trained):
    path = getattr(getattr(trained, "unit", None), "path", None)
    if path is None:
        file = "trained live, not stored"
    else:
        file = str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)
    _ASKED.append((time.time(), trained.label, trained.key, trained.cached, file))
    return trained


def asked_since(started: float) -> dict[str, dict]:
    """The units asked for since `started` (a chapter's start), by label: key, file and whether it was
    read or computed. A chapter's results file names them (ragft.results)."""
    out = {}
    for when, label, key, read_, file in _ASKED:
        if when >= started:
            out.setdefault(label, {"key": key, "file": file, "read": read_})
            if out[label]["key"] != key:  # one label, two units (a sweep's rates): each by its key
                out[f"{label}-{key}"] = {"key": key, "file": file, "read": read_}
    return out


def _stale(label: str, key: str, spec: dict, found: Unit):
    raise UnitError(f"unit {label}-{key} ({found.path}) is stale: format {found.doc['format']}, now {FORMAT} (the "
                    f"trainer or a scorer changed what units compute). Compute it: "
                    f"{COMPUTE_COMMAND.format(profile=_profile())}")


def by_ref(ref: str) -> Trained:
    """A unit named by `Trained.ref` (a chapter's hand-over), and its epoch: (Trained, epoch)."""
    m = re.fullmatch(r"unit:(?P<label>.+)-(?P<key>[0-9a-f]{16})@(?P<epoch>\d+)", str(ref))
    if not m:
        raise UnitError(f"{ref!r} does not name a unit checkpoint (unit:<label>-<key>@<epoch>)")
    found = _find(m["label"], m["key"])
    if found is None:
        raise UnitError(f"unit {m['label']}-{m['key']} named by {ref!r} is not stored in {search_dirs()}")
    return Trained(found, cached=True), int(m["epoch"])


def model(ref: str) -> UnitLM:
    """The model of a checkpoint named by `Trained.ref` (a hand-over), merged for answering."""
    trained, epoch = by_ref(ref)
    return _asked(trained).at(epoch)


def start_of(ref: str) -> Start:
    """A checkpoint named by `Trained.ref`, for a run that continues from it."""
    trained, epoch = by_ref(ref)
    return trained.start(epoch)


def is_ref(value) -> bool:
    return isinstance(value, str) and value.startswith("unit:")


def check_committed(folder: Path | None = None) -> list[Unit]:
    """Every committed unit, verified, before a committed-only run loads any model: a refused or stale
    file stops it here, each named with the reason."""
    folder = folder or committed_dir()
    found, problems, refused = [], [], False
    for path in unit_files([folder]):
        try:
            unit = read(path)
        except UnitRefused as e:
            problems.append(str(e))
            refused = True
            continue
        if unit.doc["format"] != FORMAT:
            problems.append(f"unit file {path} is stale: format {unit.doc['format']}, now {FORMAT}")
            continue
        found.append(unit)
    if problems:
        raise (UnitRefused if refused else UnitError)(f"{len(problems)} of {len(found) + len(problems)} committed units cannot be used:\n  "
                        + "\n  ".join(problems) + f"\nCompute them again: {COMPUTE_COMMAND.format(profile=_profile())}")
    return found
