"""The papermill runner: execute the book's chapters for a profile, then (optionally) build the book.

  python -m ragft.run --profile cpu                       # every chapter, into _build/run/cpu
  python -m ragft.run --profile smoke --chapters 01_prompting
  python -m ragft.run --profile cpu --book                # and build _build/html with -W

Each chapter runs in its own kernel with `profile` injected after its `parameters` cell and
RAGFT_RUN_DIR pointing at the run folder, so its results land in <run>/results/<chapter>.json.
`--one-kernel` (the tests' smoke run, and CI's book) executes every chapter in one kernel instead,
each from an empty namespace: the modules one chapter imports (torch, transformers, peft: 15-20 s a
kernel on the slower CPU kind) serve the next. CI's drift check holds its results to the published
ones, which ran a kernel per chapter (0 drifts at cb00509; beside the last run with a kernel per
chapter on the same kind, every outcome equal but 1-2 of 400 SQuAD retrievals, which Chroma's
multi-threaded HNSW build moves from run to run); a chapter's seconds then leave out the imports an
earlier chapter made, so a published run keeps a kernel per chapter.
The source notebooks are never written to: executed copies go to <run>/notebooks/.
The book's root page (chapters/00_front) summarises the others, so it runs last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import yaml

from .constants import PROFILES, PROJECT_ROOT
from .prose import READER_COPY
from .train import units

BUILD = PROJECT_ROOT / "_build"
BOOK_FILES = ["_config.yml", "_toc.yml", "references.bib"]
RUNNER_TIMINGS = "runner_seconds.json"  # chapter -> seconds including kernel start, written by run_chapters
COLAB_URL = "https://colab.research.google.com"
CELL_TIMEOUT_S = 1800  # a long experiment cell on 2 cores; a hung kernel still fails the run


def toc_chapters(toc_file: Path = PROJECT_ROOT / "_toc.yml") -> list[str]:
    """Notebook chapters (file stems) in book order, root first; markdown pages need no run."""
    toc = yaml.safe_load(toc_file.read_text())
    files = [toc["root"]]
    for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]):
        files += [c["file"] for c in part.get("chapters", [])]
    return [Path(f).stem for f in files if (PROJECT_ROOT / f).with_suffix(".ipynb").exists()]


# Chapters that run (in the smoke profile, and by name) but are not in the published book yet: none
# now. A chapter waits here while CI, which executes the whole cpu book after the tests within 90
# minutes, cannot hold it (chapter 5 did, until the candidate scoring stopped copying caches).
DRAFTS: tuple[str, ...] = ()
BEFORE_DRAFTS = "07_verdict"  # drafts run before the verdict, which reads every chapter's comparisons


def all_chapters() -> list[str]:
    """The book's chapters with the drafts in their place (before the verdict)."""
    book = toc_chapters()
    at = book.index(BEFORE_DRAFTS) if BEFORE_DRAFTS in book else len(book)
    return book[:at] + list(DRAFTS) + book[at:]


def execution_order(chapters: list[str]) -> list[str]:
    root = toc_chapters()[0]
    order = all_chapters()
    chapters = sorted(chapters, key=lambda c: order.index(c) if c in order else len(order))
    return [c for c in chapters if c != root] + ([root] if root in chapters else [])


def published_seconds(profile: str) -> dict[str, float]:
    """Each chapter's time in the last published run of the profile (with kernel start), as the
    front page recorded it; empty where the profile has none published."""
    front = PROJECT_ROOT / "experiments" / "results" / profile / f"{toc_chapters()[0]}.json"
    if not front.exists():
        return {}
    rows = json.loads(front.read_text()).get("tables", {}).get("chapter_times", [])
    return {r["chapter"]: r["with kernel start and imports (s)"] for r in rows}


# Run in one kernel, a chapter starts from what a new kernel holds (IPython's reset: its names, its
# history and its execution count), its figures closed; the modules it imports stay imported
FRESH_NAMESPACE = ("import sys\n"
                   "if 'matplotlib.pyplot' in sys.modules:\n"
                   "    sys.modules['matplotlib.pyplot'].close('all')\n"
                   "get_ipython().reset(new_session=True)\n"
                   "__import__('gc').collect()\n")


@contextmanager
def shared_kernel(cwd: Path):
    """A started python3 kernel for several notebooks, shut down on leaving. papermill asks it for a
    client per notebook and, since it does not own the kernel, leaves that client open: the kernel
    keeps them, and `fresh(kernel)` closes them before the next notebook."""
    from jupyter_client.manager import KernelManager

    class SharedKernel(KernelManager):
        def client(self, **kwargs):
            kc = super().client(**kwargs)
            self.clients.append(kc)
            return kc

    kernel = SharedKernel(kernel_name="python3")
    kernel.clients = []
    kernel.start_kernel(cwd=str(cwd))
    try:
        yield kernel
    finally:
        _close_clients(kernel)
        kernel.shutdown_kernel(now=True)


def _close_clients(kernel) -> None:
    for kc in kernel.clients:
        kc.stop_channels()
    kernel.clients.clear()


def fresh(kernel, env: dict[str, str] | None = None) -> None:
    """Close the last chapter's clients, then empty the kernel's namespace (FRESH_NAMESPACE); `env` is
    set in the kernel's environment (a started kernel no longer sees its parent's, so a test that runs
    a chapter into its own folder sets RAGFT_RUN_DIR here)."""
    _close_clients(kernel)
    kc = kernel.client()
    kc.start_channels()
    code = FRESH_NAMESPACE + (f"__import__('os').environ.update({dict(env)!r})\n" if env else "")
    try:
        kc.wait_for_ready(timeout=60)
        reply = kc.execute_interactive(code, store_history=False, timeout=60, output_hook=lambda msg: None)
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"could not empty the kernel's namespace: {reply['content'].get('evalue')}")
    finally:
        _close_clients(kernel)


def run_chapters(profile: str, chapters: list[str], run_dir: Path, params: dict | None = None,
                 one_kernel: bool = False) -> dict[str, float]:
    """Execute chapters in order; stop at the first failure (papermill marks the failing cell).
    `one_kernel`: every chapter in one kernel, each from an empty namespace (fresh); a chapter's time
    then leaves out the kernel's start and the imports an earlier chapter made."""
    import papermill as pm

    run_dir.mkdir(parents=True, exist_ok=True)
    timings = run_dir / RUNNER_TIMINGS
    # a chapter re-run into a folder keeps the other chapters' times there (the root page lists them all)
    earlier = json.loads(timings.read_text()) if timings.exists() else {}
    earlier = {c: s for c, s in earlier.items() if c not in chapters}
    os.environ["RAGFT_RUN_DIR"] = str(run_dir.resolve())
    out_dir = run_dir / "notebooks" / "chapters"
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds, expected = {}, published_seconds(profile)
    order = execution_order(chapters)
    missing = [c for c in order if not (PROJECT_ROOT / "chapters" / f"{c}.ipynb").exists()]
    if missing:
        raise FileNotFoundError(f"no chapter {missing[0]!r}: expected {PROJECT_ROOT / 'chapters' / missing[0]}.ipynb")
    with shared_kernel(PROJECT_ROOT / "chapters") if one_kernel else nullcontext() as kernel:
        for i, chapter in enumerate(order, 1):
            seconds[chapter] = _run_chapter(pm, profile, chapter, f"{i} of {len(order)}", out_dir, expected, params, kernel)
            # with kernel start and imports, which the chapter's own wall_s cannot see; the root page reads it
            timings.write_text(json.dumps(earlier | seconds, indent=1) + "\n")
    return seconds


def _run_chapter(pm, profile: str, chapter: str, place: str, out_dir: Path, expected: dict, params: dict | None,
                 kernel) -> float:
    """One chapter by papermill, in a new kernel or in `kernel` (emptied first); its seconds."""
    src = PROJECT_ROOT / "chapters" / f"{chapter}.ipynb"
    was = f", {expected[chapter]:.0f} s in the last published run" if chapter in expected else ""
    print(f"[ragft.run] {profile}: {chapter} ({place}{was})", flush=True)
    t = time.time()
    if kernel is not None:
        fresh(kernel)
    # cells done and time elapsed, on the terminal; a log file gets a line every minute at most
    progress = {"desc": chapter, "file": sys.stderr, "mininterval": 1 if sys.stderr.isatty() else 60}
    pm.execute_notebook(str(src), str(out_dir / src.name), parameters={"profile": profile, **(params or {})},
                        kernel_name="python3", cwd=str(src.parent), progress_bar=progress,
                        execution_timeout=CELL_TIMEOUT_S, log_output=False, **({"km": kernel} if kernel else {}))
    seconds = round(time.time() - t, 1)
    print(f"[ragft.run] {chapter} done in {seconds} s", flush=True)
    return seconds


def stage_book(run_dir: Path, dest: Path, repository_url: str | None = None) -> Path:
    """Lay out the book sources with the executed notebooks in place of the stripped ones;
    `repository_url` replaces _config.yml's for this build only (its launch buttons appear with one;
    the chapters' Colab cells take theirs from _config.yml through `make strip`, so publish by
    setting it there)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in BOOK_FILES:
        shutil.copy(PROJECT_ROOT / name, dest / name)
    config = yaml.safe_load((dest / "_config.yml").read_text())
    if repository_url is not None:
        config.setdefault("repository", {})["url"] = repository_url
    if (config.get("repository") or {}).get("url"):  # the one setting that turns the Colab buttons on
        config.setdefault("launch_buttons", {})["colab_url"] = COLAB_URL
    (dest / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copytree(PROJECT_ROOT / "chapters", dest / "chapters", ignore=shutil.ignore_patterns("*.ipynb", ".*"))
    for nb in (run_dir / "notebooks" / "chapters").glob("*.ipynb"):
        _for_the_book(nb, dest / "chapters" / nb.name)
    missing = [c for c in toc_chapters() if not (dest / "chapters" / f"{c}.ipynb").exists()]
    if missing:
        raise FileNotFoundError(f"the book needs every chapter executed; missing {missing} in {run_dir}")
    (dest / "chapters" / "execution_status.md").write_text(execution_status(run_dir))
    return dest


def execution_status(run_dir: Path) -> str:
    """The execution-status page: per chapter, from papermill's metadata in the executed notebook
    (myst-nb's own table stays empty with execute_notebooks off) and the commit its results name."""
    import nbformat

    lines = ["# How this book was executed", "",
             "Each chapter was executed by papermill (`python -m ragft.run`) before the build; this table "
             "comes from the metadata papermill wrote into each executed notebook.", "",
             "| chapter | profile | commit | started (UTC) | duration (s) | outcome |", "|---|---|---|---|---|---|"]
    for chapter in toc_chapters():
        nb = nbformat.read(run_dir / "notebooks" / "chapters" / f"{chapter}.ipynb", as_version=4)
        meta = nb.metadata.get("papermill", {})
        results = run_dir / "results" / f"{chapter}.json"
        prov = json.loads(results.read_text()).get("provenance", {}) if results.exists() else {}
        sha = (prov.get("git_sha") or "")[:10] + (" (dirty)" if prov.get("git_dirty") else "")
        outcome = "finished" if meta.get("exception") is None and meta.get("end_time") else "failed"
        duration = f"{meta['duration']:.1f}" if meta.get("duration") is not None else "–"
        lines.append(f"| {chapter} | {meta.get('parameters', {}).get('profile', '–')} | {sha or '–'} | "
                     f"{(meta.get('start_time') or '–')[:19].replace('T', ' ')} | {duration} | {outcome} |")
    return "\n".join(lines) + "\n"


def _for_the_book(src: Path, dest: Path) -> None:
    """Copy an executed notebook for the book: papermill's injected-parameters cell removed from the
    page (the chapter's own parameters cell, folded, already lists every parameter, and the injected
    one would show as a second parameters cell), and the reader's copies of glued values dropped
    (prose.READER_COPY: the prose shows them where it cites them, so the page shows each once)."""
    import nbformat

    nb = nbformat.read(src, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if READER_COPY not in o.get("metadata", {})]
    nbformat.write(nb, dest)


def build_book(run_dir: Path, html_parent: Path = PROJECT_ROOT, repository_url: str | None = None) -> Path:
    """jupyter-book build on the executed notebooks, warnings as errors; returns the html folder
    (jupyter-book writes to <html_parent>/_build/html)."""
    src = stage_book(run_dir, html_parent / "_build" / "src", repository_url)
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(src), "--path-output",
           str(html_parent), "-W", "--keep-going", "--all", "-q"]
    result = subprocess.run(cmd, cwd=PROJECT_ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"the book build failed (warnings are errors): {' '.join(cmd)}")
    html = html_parent / "_build" / "html"
    for page in html.rglob("*.html"):
        _declare_thebe_once(page)
    return html


THEBE_CONFIG = "<script>const THEBE_JS_URL"


def _declare_thebe_once(page: Path) -> None:
    """sphinx-thebe (with jupyter-book 1.0.4) writes its inline configuration script twice into every
    page, and the second `const THEBE_JS_URL` is a JavaScript SyntaxError the browser check reports:
    keep the first."""
    text = page.read_text()
    first = text.find(THEBE_CONFIG)
    if first < 0 or text.find(THEBE_CONFIG, first + 1) < 0:
        return
    head, tail = text[: first + 1], text[first + 1:]
    tail = "\n".join(line for line in tail.split("\n") if not line.lstrip().startswith(THEBE_CONFIG))
    page.write_text(head + tail)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ragft.run", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", required=True, choices=PROFILES)
    ap.add_argument("--chapters", nargs="*", help="chapter stems (default: every chapter in _toc.yml)")
    ap.add_argument("--drafts", action="store_true", help=f"also run the draft chapters, not yet in the book: {list(DRAFTS)}")
    ap.add_argument("--out", type=Path, help="run folder (default: _build/run/<profile>)")
    ap.add_argument("--book", action="store_true", help="build the HTML book from this run (-W)")
    ap.add_argument("--one-kernel", action="store_true",
                    help="every chapter in one kernel, each from an empty namespace (the tests' smoke run, CI's book)")
    args = ap.parse_args(argv)
    known = all_chapters()
    chapters = args.chapters or (known if args.drafts else toc_chapters())
    unknown = [c for c in chapters if c not in known]
    if unknown:
        ap.error(f"unknown chapters {unknown}; the book has {toc_chapters()} and the drafts {list(DRAFTS)}")
    run_dir = args.out or BUILD / "run" / args.profile
    if units.mode() == "committed":  # a refused or stale unit stops the run before any model loads
        print(f"[ragft.run] reading committed units only: {len(units.check_committed())} verified", flush=True)
    seconds = run_chapters(args.profile, chapters, run_dir, one_kernel=args.one_kernel)
    print(f"[ragft.run] {args.profile}: {len(seconds)} chapters in {sum(seconds.values()):.0f} s -> {run_dir}")
    if args.book:
        html = build_book(run_dir)
        print(f"[ragft.run] book: {html / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
