"""Writing the plain report files under a run's ``reports/`` folder (atomically: a reader never
sees a half-written file, even when a run is interrupted)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)


def write_records(path: Path, columns: Sequence[str], records: Sequence[dict[str, Any]]) -> None:
    """``write_csv`` for dict rows; missing keys are left blank."""
    write_csv(path, columns, [[record.get(c, "") for c in columns] for record in records])


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
