"""Progress bars that show in a terminal and in papermill logs but stay out of the rendered book.

tqdm writes to stderr, and the book is built with `nb_output_stderr: remove`; the notebook
widget form (tqdm.auto) would leave widget placeholders in static HTML instead.
"""

import sys

from tqdm import tqdm


def progress(iterable, desc: str = "", total: int | None = None):
    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, mininterval=5.0, leave=False)
