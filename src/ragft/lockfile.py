"""The lock on the machines readers have: Linux x86-64 and macOS arm64, with only PyPI reachable.

`make install` installs in two steps. First torch alone, from requirements-torch.txt, with its
dependencies: that file names the index that serves the CPU-only build (small, no CUDA libraries),
and a machine that cannot reach it takes PyPI's torch of the same version instead (on Linux the CUDA
build with its nvidia-* libraries, which runs on a CPU too; on macOS PyPI's only build). Then every
other package at the version of requirements.lock, without dependencies: the lock is complete, and
lines that only one platform needs carry an environment marker (`; sys_platform == "darwin"`).

`resolve(platform, python)` runs pip's dry run of both steps for a target platform and Python with an
isolated configuration (no local wheel folder, no extra index of this machine) against PyPI, and
returns what would be missing: a pin with no wheel for the target (pip's refusal), or a requirement
of a locked package, its markers evaluated for the target, that neither step installs
(`unmet`). pip evaluates markers for the machine it runs on, not for `--platform`, so the lock's
markers are evaluated here for the target before pip sees the file (`for_target`).

`python -m ragft.lockfile annotate FREEZE` turns a `pip freeze` of the Linux lock virtualenv into the
lock: torch's local label dropped (the CPU build and PyPI's share the version), each package that
only platform-specific requirements reach given their marker, and the packages that macOS needs and
Linux does not (resolved for macOS with the lock as constraints) added with theirs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from .constants import PROJECT_ROOT

LOCK = "requirements.lock"
TORCH_FILE = "requirements-torch.txt"  # torch alone, with the index of its CPU-only build
NODEPS_FILE = "requirements-nodeps.txt"  # installed without their dependencies (they compile)
PYPI = "https://pypi.org/simple"
# README's Pythons, each at the oldest release the lock installs on: numpy 2.4 and pandas 3 need 3.11,
# soupsieve 4.1 needs 3.11.5
PYTHONS = ("3.11.5", "3.12.0", "3.13.0")
# pip's --platform tags of each target: manylinux at every glibc from 2.28 (Debian 10, Ubuntu 20.04 and
# later have it) down (pip does not add the older ones itself, and wheels are built for many: NCCL's for
# 2.18); macOS 14 on Apple silicon (pip adds the older macOS versions and universal2 itself)
PLATFORMS = {
    "linux-x86_64": [f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)]
                    + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"],
    "macos-arm64": ["macosx_14_0_arm64"],
}
_MARKER_ENV = {
    "linux-x86_64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"},
    "macos-arm64": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64"},
}
# the marker written on a lock line that one platform alone needs
PLATFORM_MARKER = {"linux-x86_64": 'sys_platform == "linux"', "macos-arm64": 'sys_platform == "darwin"'}


def environment(platform: str, python: str) -> dict[str, str]:
    """The environment markers of a target, as pip on that machine would evaluate them."""
    if platform not in PLATFORMS:
        raise ValueError(f"platform={platform!r}: use one of {sorted(PLATFORMS)}")
    short = ".".join(python.split(".")[:2])
    return {**_MARKER_ENV[platform], "python_version": short, "python_full_version": python,
            "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "implementation_version": python, "platform_release": "", "platform_version": "", "extra": ""}


def requirements(path: Path) -> list[Requirement]:
    """The requirement lines of a requirements file (comments, blank lines and pip options skipped)."""
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
        if line and not line.startswith("-"):
            out.append(Requirement(line))
    return out


def for_target(reqs: list[Requirement], env: dict) -> list[Requirement]:
    """The requirements whose markers hold on the target."""
    return [r for r in reqs if r.marker is None or r.marker.evaluate(env)]


def _pip(args: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    # --isolated: no pip.conf, no PIP_* variables, so this machine's local wheel folder and extra
    # indexes cannot stand in for PyPI; one retry, since an unreachable index must not wait minutes
    cmd = [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", "--retries", "1", "--timeout", "20",
           "install", "--dry-run", "--ignore-installed", "--only-binary=:all:", "--index-url", PYPI, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)


def dry_run(lines: list[str], platform: str, python: str, deps: bool = False, constraints: list[str] = (),
            timeout_s: float = 600) -> dict:
    """pip's dry run of these requirement lines for the target, with an isolated configuration, against
    PyPI: name -> the report's metadata of what it would install. Raises RuntimeError with pip's reason
    when it does not resolve."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "req.txt").write_text("\n".join(lines) + "\n")
        args = ["-r", str(tmp / "req.txt"), "--report", str(tmp / "report.json"), "--target", str(tmp / "target"),
                "--python-version", python, "--implementation", "cp"]
        for tag in PLATFORMS[platform]:
            args += ["--platform", tag]
        if constraints:
            (tmp / "constraints.txt").write_text("\n".join(constraints) + "\n")
            args += ["-c", str(tmp / "constraints.txt")]
        if not deps:
            args.append("--no-deps")
        done = _pip(args, timeout_s)
        if done.returncode != 0:
            reason = [line for line in (done.stdout + done.stderr).splitlines()
                      if line.startswith("ERROR") and "Ignored the following versions" not in line]
            raise RuntimeError(f"{platform}, Python {python}: pip's dry run does not resolve:\n" + "\n".join(reason[-12:]))
        report = json.loads((tmp / "report.json").read_text())
    return {canonicalize_name(item["metadata"]["name"]): item for item in report["install"]}


def unmet(metadata: dict[str, dict], versions: dict[str, str], env: dict, nodeps: set[str] = frozenset()) -> list[str]:
    """Every requirement of an installed package (its markers, extras included, evaluated for the
    target) that the installed versions do not satisfy: 'package requires X, which is not installed'
    or '... which is at V'. `metadata`: name -> pip report item; `versions`: name -> the version that
    ends up installed; packages in `nodeps` are installed without their requirements, by design."""
    problems, seen = [], set()
    todo = [(name, "") for name in metadata if name not in nodeps]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen or name not in metadata:
            continue
        seen.add((name, extra))
        for text in metadata[name]["metadata"].get("requires_dist") or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({**env, "extra": extra}):
                continue
            dep = canonicalize_name(req.name)
            where = f"{name}[{extra}]" if extra else name
            if dep not in versions:
                problems.append(f"{where} requires {text}, which is not installed")
                continue
            if not req.specifier.contains(Version(versions[dep]), prereleases=True):
                problems.append(f"{where} requires {text}, which is at {versions[dep]}")
            todo += [(dep, "")] + [(dep, e) for e in req.extras]
    return sorted(set(problems))


def _pure(item: dict) -> bool:
    """The wheel pip chose is the same on every platform and Python 3 (`py3-none-any`)."""
    from packaging.utils import parse_wheel_filename

    tags = parse_wheel_filename(item["download_info"]["url"].rsplit("/", 1)[-1])[3]
    return all(t.abi == "none" and t.platform == "any" and t.interpreter.startswith("py") for t in tags)


def resolve(platform: str, home: Path = PROJECT_ROOT, pythons: tuple[str, ...] = PYTHONS, timeout_s: float = 600) -> dict:
    """Both install steps, dry, for the platform at each Python: python -> name -> version installed.
    The whole lock resolves at the first Python; at the others, the packages whose wheel is not
    pure Python (`py3-none-any`) resolve again for that Python, and the pure ones' Requires-Python and
    every requirement are checked from their metadata. Raises RuntimeError naming what is missing."""
    lock, nodeps = requirements(home / LOCK), {canonicalize_name(r.name) for r in requirements(home / NODEPS_FILE)}
    torch_options = [line for line in (home / TORCH_FILE).read_text().splitlines() if line.startswith("-")]
    out, metadata = {}, {}
    for i, python in enumerate(pythons):
        env = environment(platform, python)
        lines = [str(r).split(";")[0].strip() for r in for_target(lock, env)]
        names = {canonicalize_name(Requirement(line).name): line for line in lines}
        # step 1: torch with its dependencies, held to the lock (pip evaluates markers for this host, which
        # is Linux x86-64, so the dependencies are resolved for that target only; elsewhere torch alone)
        torch_lines = torch_options + [str(r).split(";")[0].strip() for r in for_target(requirements(home / TORCH_FILE), env)]
        if i == 0:  # torch's step: what it brings beside the lock (PyPI's CUDA libraries) holds at every Python
            torch_step = dry_run(torch_lines, platform, python, deps=platform == "linux-x86_64",
                                 constraints=lines, timeout_s=timeout_s)
            step2 = dry_run(lines, platform, python, timeout_s=timeout_s)
        else:
            again = [line for name, line in names.items() if name not in metadata or not _pure(metadata[name])]
            step2 = dry_run(again, platform, python, timeout_s=timeout_s) if again else {}
            for name, line in names.items():
                if name not in step2 and name in metadata:
                    needs = metadata[name]["metadata"].get("requires_python")
                    if needs and not SpecifierSet(needs).contains(Version(python)):
                        raise RuntimeError(f"{platform}, Python {python}: {line} requires Python {needs}")
        metadata = {**metadata, **torch_step, **step2}
        installed = {name: metadata[name]["metadata"]["version"] for name in names}
        installed.update({n: item["metadata"]["version"] for n, item in torch_step.items() if n not in names})
        problems = unmet({n: metadata[n] for n in installed}, installed, env, nodeps)
        if problems:
            raise RuntimeError(f"{platform}, Python {python}: the lock is not complete:\n" + "\n".join(problems))
        out[python] = installed
    return out


# ---------------------------------------------------------------------------------------------
# make lock: from the Linux virtualenv's freeze to the lock for every platform


def reached(roots: set[str], metadata: dict[str, dict], env: dict, nodeps: set[str] = frozenset()) -> set[str]:
    """The packages the roots need on a target, through every requirement whose markers (extras
    included) hold there; packages in `nodeps` bring none of theirs."""
    seen, todo = set(), [(name, "") for name in roots]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        if name in nodeps or name not in metadata:
            continue
        for text in metadata[name]["metadata"].get("requires_dist") or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({**env, "extra": extra}):
                dep = canonicalize_name(req.name)
                todo += [(dep, "")] + [(dep, e) for e in req.extras]
    return {name for name, _ in seen}


def annotate(freeze: list[str], home: Path = PROJECT_ROOT, python: str = PYTHONS[0]) -> list[str]:
    """The lock's lines from a `pip freeze` of the Linux lock virtualenv (see the module's docstring)."""
    pins = {canonicalize_name(Requirement(line).name): Requirement(line) for line in freeze
            if line.strip() and not line.startswith("#")}
    for req in pins.values():
        req.specifier = SpecifierSet(f"=={Version(next(iter(req.specifier)).version).public}")  # 2.13.0+cpu -> 2.13.0
    nodeps = {canonicalize_name(r.name) for r in requirements(home / NODEPS_FILE)}
    roots = {canonicalize_name(r.name) for r in requirements(home / "requirements.txt")} | nodeps
    linux = dry_run([str(r) for r in pins.values()], "linux-x86_64", python)
    mac_env = environment("macos-arm64", python)
    # a package of the Linux freeze that macOS's requirements never reach is Linux's alone
    markers = {name: PLATFORM_MARKER["linux-x86_64"] for name in pins if name not in reached(roots, linux, mac_env, nodeps)}
    # what macOS needs that the Linux freeze lacks, resolved for macOS under the lock's pins, until nothing is missing
    while True:
        mac_lines = [str(r) for n, r in pins.items() if n not in markers or markers[n] != PLATFORM_MARKER["linux-x86_64"]]
        mac = dry_run(mac_lines, "macos-arm64", python)
        versions = {n: item["metadata"]["version"] for n, item in mac.items()}
        missing = {canonicalize_name(Requirement(p.split(" requires ")[1].split(", which")[0]).name)
                   for p in unmet(mac, versions, mac_env, nodeps) if p.endswith("is not installed")}
        if not missing:
            break
        added = dry_run(sorted(missing), "macos-arm64", python, constraints=mac_lines)
        for name, item in added.items():
            pins[name] = Requirement(f"{item['metadata']['name']}=={item['metadata']['version']}")
            markers[name] = PLATFORM_MARKER["macos-arm64"]
    return [f"{pins[n]} ; {markers[n]}" if n in markers else str(pins[n]) for n in sorted(pins)]


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ragft.lockfile", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("annotate", help="a Linux pip freeze -> the lock's lines, on stdout")
    a.add_argument("freeze", type=Path)
    r = sub.add_parser("resolve", help="both install steps, dry, for a platform at README's Pythons")
    r.add_argument("platform", choices=sorted(PLATFORMS))
    args = parser.parse_args(argv)
    if args.command == "annotate":
        print("\n".join(annotate(args.freeze.read_text().splitlines())))
    else:
        for python, installed in resolve(args.platform).items():
            print(f"{args.platform}, Python {python}: {len(installed)} packages resolve, nothing missing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
