"""Strip outputs and execution counts from notebooks, so git holds sources only, and regenerate each
chapter's `parameters` cell from the parameter declarations in ragft.config.

  python -m ragft.strip chapters/*.ipynb      (make strip)
"""

import sys
from pathlib import Path

import nbformat


def strip(path: str) -> bool:
    """Strip one notebook in place and rewrite its parameters cell; True when it changed."""
    from ragft.config import CHAPTER_PARAMS, parameters_cell

    nb = nbformat.read(path, as_version=4)
    changed = False
    chapter = Path(path).stem
    for cell in nb.cells:
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count, changed = [], None, True
        for key in ("execution", "papermill"):
            if key in cell.metadata:
                del cell.metadata[key]
                changed = True
        if "parameters" in cell.metadata.get("tags", []) and chapter in CHAPTER_PARAMS:
            source = parameters_cell(chapter)
            if cell.source != source:
                cell.source, changed = source, True
    if changed:
        nbformat.write(nb, path)
    return changed


if __name__ == "__main__":
    for p in sys.argv[1:]:
        if strip(p):
            print(f"stripped {p}")
