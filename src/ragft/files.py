"""File and git helpers every floor above may use: atomic writes, reading a results file with its
name in the error, and one way to ask git."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from .constants import PROJECT_ROOT


def git(*args: str, root: Path = PROJECT_ROOT, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
    """`git args` in `root`. A git that cannot run (not installed, timed out) reads as a failed command
    (return code 127, its reason in stderr); with check=True a failure raises, naming the command."""
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as e:
        out = subprocess.CompletedProcess(["git", *args], 127, "", str(e))
    if check and out.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {root}: {out.stderr.strip()}")
    return out


def write_atomically(path: Path, text: str) -> None:
    """Write a file so that a reader sees the old one or the new one, never a half-written one: a
    temporary file beside it, then a rename. A write that fails removes its temporary file, and one
    left by a process that no longer runs (killed mid-write) is removed by the next write."""
    import glob

    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = stale.name[len(path.name) + 2:-len(".tmp")]
        if pid.isdigit() and not _running(int(pid)):
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _running(pid: int) -> bool:
    """Whether a process runs (POSIX: signal 0 checks without sending; elsewhere, assume it does)."""
    if os.name != "posix":  # Windows' os.kill would end the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: running
        return True
    return True


def read_json(path: Path) -> dict:
    """A results file, with its name in the error when it cannot be parsed (a truncated write, say)."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a readable results file ({e})") from None


class RunFolderBusy(RuntimeError):
    """Another process runs the same chapter in the same run folder (its pid, host and command named)."""


_HELD: dict[Path, object] = {}  # lock file -> the open handle that holds it, for this process's life


def hold_chapter(run_dir: Path, chapter: str) -> None:
    """Take this process's hold on `chapter` in `run_dir` (`.<chapter>.run-lock`) for the rest of its
    life, before the chapter deletes or writes anything there (its Chroma folder, its results file):
    two runs sharing a run folder (notebooks run by hand share _build/run/interactive) would delete
    each other's store and write one results file. The second is refused, naming the first; the same
    process again (a notebook run twice) holds it already. The hold goes with the process."""
    import fcntl
    import socket
    import sys
    import time

    path = Path(run_dir) / f".{chapter}.run-lock"
    if path in _HELD:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "a process that has not said who it is"
        handle.close()
        raise RunFolderBusy(f"chapter {chapter} is already running in the run folder {path.parent} ({holder}): two "
                            "runs there would delete each other's store and write one results file. Wait for it to "
                            "finish, or give this run a folder of its own (RAGFT_RUN_DIR=another/folder)") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                 f"{' '.join(sys.argv)[:200]}")
    handle.flush()
    _HELD[path] = handle
