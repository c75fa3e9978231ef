"""JSONL in and out, one implementation: every reader of the book's JSONL files (training data,
RAFT records, your questions) goes through `read_rows`, so a bad line is always named by file and
line."""

from __future__ import annotations

import json
import math
from pathlib import Path


def read_rows(path: str | Path, error: type[Exception] = ValueError) -> list[tuple[int, object]]:
    """(line number, parsed value) for each non-blank line; raises `error` naming the file and line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise error(f"file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark, as some editors write, is accepted
    except UnicodeDecodeError as e:
        raise error(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): save it as UTF-8") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise error(f"{path}, line {n}: not JSON ({e.msg})") from None
    return rows


def write_rows(rows: list, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def json_safe(value):
    """JSON-safe: numpy scalars to Python numbers, NaN to None."""
    if hasattr(value, "item") and not isinstance(value, (list, dict)):
        value = value.item()
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
