"""Writing the findings to ``reports/audit/``: one CSV per finding, ``audit.json`` and ``audit.md``.

Every per-image CSV has a ``path`` column, so each one can be handed to the next run as it is
(``data.exclude=<run>/reports/audit/<file>.csv``). Files are written to a temporary name and
moved into place (``os.replace``), so a reader never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from data_audit.audit import AuditFindings
from data_audit.quality import FLAGS, SCORE_MEANING
from data_audit.selections import conflicting_paths, leaked_paths, redundant_paths

FILES = {
    "duplicates": "duplicates.csv",
    "leakage": "leakage.csv",
    "conflicting_labels": "conflicting_labels.csv",
    "quality": "quality.csv",
    "class_balance": "class_balance.csv",
    "unreadable": "unreadable.csv",
    "suggested_exclude": "suggested_exclude.csv",
    "json": "audit.json",
    "markdown": "audit.md",
}
"""What :func:`write_audit` writes. ``quality.csv`` lists only the images with at least one flag;
``suggested_exclude.csv`` the redundant duplicate copies (all but the kept one of each group,
which also removes every leaked image) and every image with conflicting labels."""


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    _atomic_write(path, frame.to_csv(index=False))


def suggested_exclusions(findings: AuditFindings) -> pd.DataFrame:
    """``path`` and ``reason`` of what the audit suggests leaving out of the next run."""
    reasons: dict[str, list[str]] = {}
    for path in redundant_paths(findings):
        reasons.setdefault(path, []).append("duplicate of a kept image")
    for path in leaked_paths(findings):
        reasons.setdefault(path, []).append("leaked: twin in an earlier split")
    for path in conflicting_paths(findings):
        reasons.setdefault(path, []).append("conflicting labels")
    return pd.DataFrame({"path": list(reasons), "reason": ["; ".join(dict.fromkeys(r)) for r in reasons.values()]})


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinity become None (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def audit_summary(findings: AuditFindings) -> dict[str, Any]:
    """The content of ``audit.json``: counts, class balance summary, settings, timings, notes."""
    b = findings.balance
    return _clean(
        {
            "mode": findings.mode,
            "counts": findings.counts(),
            "class_balance": {
                "classes": b.classes,
                "imbalance_ratio": b.imbalance_ratio,
                "majority_class": b.majority_class,
                "majority_accuracy": b.majority_accuracy,
            },
            "settings": findings.settings,
            "quality_scores": SCORE_MEANING,
            "seconds": findings.seconds,
            "notes": findings.notes,
            "files": FILES,
        }
    )


def audit_markdown(findings: AuditFindings, report_dir: str | os.PathLike = "<run>/reports/audit") -> str:
    """A short human summary: what was found, and the next command to run."""
    c = findings.counts()
    b = findings.balance
    lines = [
        "# Data audit",
        "",
        f"{c['found']} images found: {c['audited']} audited, {c['unreadable']} unreadable ({FILES['unreadable']}).",
        "",
        "| finding | count | file |",
        "|---|---|---|",
        f"| duplicate groups (exact: {c['exact_duplicate_groups']}) | {c['duplicate_groups']} "
        f"({c['redundant_copies']} redundant copies) | {FILES['duplicates']} |",
        f"| val/test images leaked from an earlier split | {c['leaked_images']} | {FILES['leakage']} |",
        f"| groups with conflicting labels | {c['conflicting_label_groups']} "
        f"({c['images_with_conflicting_labels']} images) | {FILES['conflicting_labels']} |",
        f"| images with a quality flag | {c['images_with_any_quality_flag']} | {FILES['quality']} |",
    ]
    lines += [f"| - {name} | {c['quality_flagged'][name]} | |" for name in FLAGS]
    if b.classes:
        accuracy = ", ".join(f"{s} {a:.1%}" for s, a in b.majority_accuracy.items() if a == a)
        lines += [
            "",
            f"Classes: {b.classes}; largest/smallest = {b.imbalance_ratio:.1f}; always predicting "
            f"{b.majority_class!r} scores {accuracy} ({FILES['class_balance']}).",
        ]
    if findings.notes:
        lines += ["", *[f"- {note}" for note in findings.notes]]
    folder = str(report_dir).rstrip("/")
    lines += ["", "## Next", ""]
    if c["unreadable"]:
        lines += [
            f"Fix or remove the {c['unreadable']} unreadable file(s) listed in {FILES['unreadable']} "
            "(the run leaves them out either way).",
            "",
        ]
    if not c["audited"]:
        lines += ["No image could be read, so there is nothing else to report."]
    elif c["leaked_images"] or c["redundant_copies"] or c["images_with_conflicting_labels"]:
        lines += [
            "Look at the groups first (duplicates.csv, conflicting_labels.csv), then train without the copies, "
            "the leaked images and the conflicting labels:",
            "",
            f"    python train.py ... data.exclude={folder}/{FILES['suggested_exclude']}",
            "",
            f"or only make the metrics honest: `data.exclude={folder}/{FILES['leakage']}`.",
        ]
    elif c["images_with_any_quality_flag"]:
        lines += [
            "No duplicates or leakage. Look at the flagged images; to leave them all out:",
            "",
            f"    python train.py ... data.exclude={folder}/{FILES['quality']}",
        ]
    else:
        lines += ["Nothing to act on: train as planned (`python train.py ...`)."]
    return "\n".join(lines) + "\n"


def write_audit(findings: AuditFindings, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Writes every file of :data:`FILES` under ``out_dir`` (atomically); returns their paths by key."""
    out = Path(out_dir)
    quality = findings.quality
    flagged = quality[quality["flags"] != ""] if not quality.empty else quality
    unreadable = findings.exclusions
    tables = {
        "duplicates": findings.duplicates,
        "leakage": findings.leakage,
        "conflicting_labels": findings.conflicts,
        "quality": flagged,
        "class_balance": findings.class_balance,
        "unreadable": unreadable,
        "suggested_exclude": suggested_exclusions(findings),
    }
    paths = {key: out / FILES[key] for key in FILES}
    for key, frame in tables.items():
        _write_csv(paths[key], frame)
    _atomic_write(paths["json"], json.dumps(audit_summary(findings), indent=2) + "\n")
    _atomic_write(paths["markdown"], audit_markdown(findings, out))
    return paths
