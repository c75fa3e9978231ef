"""The complete lock (requirements.lock, `make lock`) against the ranges people install the package
with (pyproject.toml) and the pins it was generated from (requirements.txt): the drift check holds
the published numbers to the lock's versions, so every package of the lock is pinned exactly, and
every range a reader's install resolves admits the version the book was measured with."""

import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import ROOT


def pins(path) -> dict[str, Version]:
    """name -> version of a requirements file of exact pins (comments and blank lines skipped)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            specs = list(req.specifier)
            assert len(specs) == 1 and specs[0].operator == "==", f"{path.name}: {line!r} is not an exact pin"
            name = canonicalize_name(req.name)
            assert name not in out, f"{path.name}: {req.name} pinned twice"
            out[name] = Version(specs[0].version)
    return out


def test_the_lock_pins_every_package_exactly_once():
    lock = pins(ROOT / "requirements.lock")
    assert len(lock) > 100  # a clean install brings about 220 packages; the 27 inputs alone are not a lock
    assert "ragft" not in lock  # the book's own package is installed editable, not from the lock
    assert lock["torch"].local == "cpu"  # the CPU wheel: a CUDA build would bring several GB of nvidia-* packages
    assert not any(name.startswith("nvidia-") for name in lock)


def test_the_lock_satisfies_the_packages_ranges_and_its_inputs():
    lock = pins(ROOT / "requirements.lock")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ranges = [Requirement(r) for r in project["dependencies"]]
    ranges += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    for req in ranges:
        name = canonicalize_name(req.name)
        assert name in lock, f"pyproject.toml needs {req.name}, which the lock does not install"
        assert req.specifier.contains(lock[name], prereleases=True), \
            f"pyproject.toml's {req} does not admit the locked {req.name}=={lock[name]}"
    for path in ("requirements.txt", "requirements-nodeps.txt"):
        for line in (ROOT / path).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                req = Requirement(line)
                name = canonicalize_name(req.name)
                assert name in lock and req.specifier.contains(lock[name], prereleases=True), \
                    f"{path}'s {line} and the lock's {lock.get(name)} disagree: run `make lock`"


def test_the_pin_reader_refuses_a_range(tmp_path):
    (tmp_path / "r.txt").write_text("numpy>=2\n")
    with pytest.raises(AssertionError, match="not an exact pin"):
        pins(tmp_path / "r.txt")
