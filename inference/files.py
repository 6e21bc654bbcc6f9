"""Writing the plain CSV files of the inference modules atomically (a reader never sees a
half-written file, even when a run is interrupted), and reading them back as text rows."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """Writes ``rows`` under ``header`` to ``path`` through a temporary file; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def read_csv(path: str | os.PathLike, required: Sequence[str]) -> list[dict[str, str]]:
    """Reads ``path`` as dict rows of text; every column in ``required`` must be present.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a required column is missing (the message lists the columns found).
    """
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        found = reader.fieldnames or []
        missing = [c for c in required if c not in found]
        if missing:
            raise ValueError(f"{path} lacks column(s) {missing}; it has {found}. Expected at least {list(required)}.")
        return list(reader)


def format_float(value: float, digits: int = 6) -> str:
    """A float as CSV text: rounded, blank for NaN (no value), so files stay small and readable."""
    return "" if value != value else f"{value:.{digits}g}"
