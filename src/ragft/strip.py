"""Strip outputs and execution counts from notebooks, so git holds sources only, and regenerate each
chapter's generated cells: the hidden Colab set-up cell first (ragft.colab, from _config.yml's
repository) and the `parameters` cell (from the parameter declarations in ragft.config).

  python -m ragft.strip chapters/*.ipynb      (make strip)
"""

import sys
from pathlib import Path

import nbformat

from ragft import colab
from ragft.config import CHAPTER_PARAMS, parameters_cell


def strip(path: str) -> bool:
    """Strip one notebook in place and rewrite its parameters cell; True when it changed."""
    nb = nbformat.read(path, as_version=4)
    changed = False
    chapter = Path(path).stem
    if chapter in CHAPTER_PARAMS:
        if not nb.cells or colab.TAG not in nb.cells[0].metadata.get("tags", []):
            nb.cells.insert(0, nbformat.v4.new_code_cell(metadata={"tags": [colab.TAG, "remove-cell"]}))
            changed = True
        if nb.cells[0].source != colab.setup_cell():
            nb.cells[0].source, changed = colab.setup_cell(), True
    if chapter in CHAPTER_PARAMS and any(nb.metadata.get(k) != v for k, v in colab.NOTEBOOK_METADATA.items()):
        nb.metadata.update(colab.NOTEBOOK_METADATA)  # Colab opens the chapter on a GPU runtime (a T4)
        changed = True
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
            if "hide-cell" not in cell.metadata["tags"]:  # folded on the page: a dropdown, not a wall of names
                cell.metadata["tags"].append("hide-cell")
                changed = True
    if changed:
        nbformat.write(nb, path)
    return changed


if __name__ == "__main__":
    for p in sys.argv[1:]:
        if strip(p):
            print(f"stripped {p}")
