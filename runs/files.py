"""Atomic writes of plain report files: a reader never sees a half-written file, even when a run is
interrupted (write to a temporary file beside the target, then rename it over the target)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _replace(path: Path, write) -> None:
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

    _replace(Path(path), write)


def write_records(path: str | os.PathLike, columns: Sequence[str], records: Sequence[dict[str, Any]]) -> None:
    """:func:`write_csv` for dict rows; missing keys are left blank."""
    write_csv(path, columns, [[record.get(c, "") for c in columns] for record in records])


def write_json(path: str | os.PathLike, data: Any) -> None:
    _replace(Path(path), lambda tmp: tmp.write_text(json.dumps(data, indent=1) + "\n"))


def write_text(path: str | os.PathLike, text: str) -> None:
    _replace(Path(path), lambda tmp: tmp.write_text(text))
