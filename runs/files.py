"""Atomic writes of plain report files: a reader never sees a half-written file, even when a run is
interrupted (write to a temporary file beside the target, then rename it over the target)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_atomically(path: Path, write) -> None:
    """``write(tmp)`` beside ``path``, then ``tmp`` replaces ``path``: a reader sees the old file
    or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)

    write_atomically(Path(path), write)


def write_records(path: str | os.PathLike, columns: Sequence[str], records: Sequence[dict[str, Any]]) -> None:
    """:func:`write_csv` for dict rows; missing keys are left blank."""
    write_csv(path, columns, [[record.get(c, "") for c in columns] for record in records])


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_atomically(Path(path), lambda tmp: tmp.write_text(json.dumps(data, indent=1) + "\n"))


def write_text(path: str | os.PathLike, text: str) -> None:
    write_atomically(Path(path), lambda tmp: tmp.write_text(text))


class CsvStream:
    """A CSV file written row by row, for outputs too large to hold (one row per predicted image),
    and still atomic: rows go to a temporary file beside the target, renamed over it when the
    stream closes without an error. A stream that ends in an error leaves no file behind.

    Example::

        with CsvStream(folder.root / "predictions.csv", header) as out:
            for rows in batches:
                out.write(rows)
    """

    def __init__(self, path: str | os.PathLike, header: Sequence[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._file = open(self._tmp, "w", newline="")  # noqa: SIM115 - closed in close()
        self._writer = csv.writer(self._file)
        self._writer.writerow(header)
        self.rows = 0

    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        self._writer.writerows(rows)
        self.rows += len(rows)

    def close(self, *, keep: bool = True) -> None:
        """Closes the stream; ``keep`` renames it over the target, otherwise it is deleted."""
        if self._file.closed:
            return
        self._file.close()
        if keep:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> CsvStream:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(keep=exc_type is None)


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
    """A float as CSV text: rounded, blank for NaN (no value), so report files stay small and readable."""
    return "" if value != value else f"{value:.{digits}g}"
