"""The findings as :func:`data_audit.report.write_audit` saved them, read back from ``reports/audit/``.

What reads them: the fit-start TensorBoard panels (``callbacks/data_audit.py``) and the label
suspects (conflicting labels ranked first), which run in the training process after the audit
step wrote the files. The files are plain text a user may have edited, so every column is read
as text and converted to the type it must have; a value that does not convert becomes empty
(NaN), never code or config.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from data_audit.quality import FLAGS
from data_audit.report import FILES

_INTEGER = ("group_id", "group_size")
_NUMBER = ("distance", "total", "share", *(f"{flag}_score" for flag in FLAGS))
_BOOLEAN = ("keep", *FLAGS)


@dataclass
class AuditTables:
    """The saved findings: the same tables as :class:`data_audit.audit.AuditFindings` where they
    were written (``quality`` holds only the flagged images, as ``quality.csv`` does).

    Attributes:
        folder: the report folder read.
        duplicates, leakage, conflicts, quality, class_balance, exclusions: the CSV files.
        summary: ``audit.json`` (counts, class-balance summary, settings, timings, notes).
        markdown: ``audit.md``.
    """

    folder: Path
    duplicates: pd.DataFrame
    leakage: pd.DataFrame
    conflicts: pd.DataFrame
    quality: pd.DataFrame
    class_balance: pd.DataFrame
    exclusions: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)
    markdown: str = ""

    @property
    def counts(self) -> dict[str, Any]:
        return dict(self.summary.get("counts", {}))


def _table(path: Path, *, text_columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """A saved CSV with typed columns; with ``text_columns``, every other column is numeric."""
    if not path.is_file():
        return pd.DataFrame()
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    for column in table.columns:
        if column in _INTEGER:
            table[column] = pd.to_numeric(table[column], errors="coerce").astype("Int64")
        elif column in _NUMBER or (text_columns is not None and column not in text_columns):
            table[column] = pd.to_numeric(table[column], errors="coerce")
        elif column in _BOOLEAN:
            table[column] = table[column].str.strip().str.lower() == "true"
    return table


def read_audit(folder: str | os.PathLike) -> AuditTables | None:
    """The findings saved in ``folder`` (``<run>/reports/audit``), or None when no audit was saved there."""
    folder = Path(folder)
    summary_file = folder / FILES["json"]
    if not summary_file.is_file():
        return None
    try:
        summary = json.loads(summary_file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict):
        return None
    markdown_file = folder / FILES["markdown"]
    return AuditTables(
        folder=folder,
        duplicates=_table(folder / FILES["duplicates"]),
        leakage=_table(folder / FILES["leakage"]),
        conflicts=_table(folder / FILES["conflicting_labels"]),
        quality=_table(folder / FILES["quality"]),
        class_balance=_table(folder / FILES["class_balance"], text_columns=("label",)),
        exclusions=_table(folder / FILES["unreadable"]),
        summary=summary,
        markdown=markdown_file.read_text() if markdown_file.is_file() else "",
    )
