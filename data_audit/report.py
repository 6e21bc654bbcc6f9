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
from data_audit.quality import SCORE_MEANING
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


def finding_rows(findings: AuditFindings, *, all_flags: bool = True) -> list[tuple[str, str, str]]:
    """``(finding, count, file)`` rows: the table of ``audit.md`` and of ``audit.py``'s printout.

    Args:
        findings: the audit's findings.
        all_flags: one row per quality flag; False leaves out the flags no image raised.
    """
    c = findings.counts()
    rows = [
        (
            f"duplicate groups (exact: {c['exact_duplicate_groups']})",
            f"{c['duplicate_groups']} ({c['redundant_copies']} redundant copies)",
            FILES["duplicates"],
        ),
    ]
    if findings.mode == "full":
        rows.append(
            (
                "- images linked only by embeddings",
                str(c["images_linked_only_by_embeddings"]),
                f"{FILES['duplicates']} (method = embedding)",
            )
        )
    rows += [
        ("val/test images leaked from an earlier split", str(c["leaked_images"]), FILES["leakage"]),
        (
            "groups with conflicting labels",
            f"{c['conflicting_label_groups']} ({c['images_with_conflicting_labels']} images)",
            FILES["conflicting_labels"],
        ),
        ("images with a quality flag", str(c["images_with_any_quality_flag"]), FILES["quality"]),
    ]
    rows += [(f"- {name}", str(n), "") for name, n in c["quality_flagged"].items() if all_flags or n]
    rows.append(("unreadable files", str(c["unreadable"]), FILES["unreadable"]))
    return rows


def next_step(
    findings: AuditFindings, report_dir: str | os.PathLike, train_command: str = "python train.py ..."
) -> tuple[str, str | None]:
    """What to do next: ``(advice, command)``; the command is None when there is nothing to run.

    Args:
        findings: the audit's findings.
        report_dir: where the report files are (named in the command).
        train_command: the training command the data options are given to, e.g.
            ``python train.py data=folder data.root=~/shots``.
    """
    c = findings.counts()
    folder = str(report_dir).rstrip("/")
    if not c["audited"]:
        return "No image could be read, so there is nothing else to report.", None
    if c["leaked_images"] or c["redundant_copies"] or c["images_with_conflicting_labels"]:
        return _excluding(
            train_command,
            "Look at the groups first (duplicates.csv, conflicting_labels.csv), then train without the copies, "
            f"the leaked images and the conflicting labels (or only make the metrics honest: "
            f"data.exclude={folder}/{FILES['leakage']}):",
            f"{folder}/{FILES['suggested_exclude']}",
        )
    if c["images_with_any_quality_flag"]:
        return _excluding(
            train_command,
            "No duplicates or leakage. Look at the flagged images; to leave them all out:",
            f"{folder}/{FILES['quality']}",
        )
    return "Nothing to act on: train as planned.", train_command


def _excluding(train_command: str, advice: str, exclude: str) -> tuple[str, str | None]:
    """``train_command`` with ``data.exclude=exclude``; when the command already has a
    ``data.exclude`` (Hydra would keep only the last one, silently dropping the user's list), advice
    to merge the two files instead of a command."""
    if any(part.startswith("data.exclude=") for part in train_command.split()):
        return (
            f"{advice} data.exclude takes one CSV and this audit already ran with one: add the rows of {exclude} "
            f"to it (both have a path column), then run {train_command}",
            None,
        )
    return advice, f"{train_command} data.exclude={exclude}"


def audit_markdown(
    findings: AuditFindings,
    report_dir: str | os.PathLike = "<run>/reports/audit",
    train_command: str = "python train.py ...",
) -> str:
    """A short human summary: what was found, and the next command to run."""
    c = findings.counts()
    b = findings.balance
    lines = [
        "# Data audit",
        "",
        f"{c['found']} images found: {c['audited']} audited, {c['unreadable']} unreadable ({FILES['unreadable']}); "
        f"mode {findings.mode}.",
        "",
        "| finding | count | file |",
        "|---|---|---|",
        *[f"| {finding} | {count} | {file} |" for finding, count, file in finding_rows(findings)],
    ]
    if b.classes:
        accuracy = ", ".join(f"{s} {a:.1%}" for s, a in b.majority_accuracy.items() if a == a)
        lines += [
            "",
            f"Classes: {b.classes}; largest/smallest = {b.imbalance_ratio:.1f}; always predicting "
            f"{b.majority_class!r} scores {accuracy} ({FILES['class_balance']}).",
        ]
    if findings.notes:
        lines += ["", *[f"- {note}" for note in findings.notes]]
    lines += ["", "## Next", ""]
    if c["unreadable"]:
        lines += [
            f"Fix or remove the {c['unreadable']} unreadable file(s) listed in {FILES['unreadable']} "
            "(the run leaves them out either way).",
            "",
        ]
    advice, command = next_step(findings, report_dir, train_command)
    lines.append(advice)
    if command:
        lines += ["", f"    {command}"]
    return "\n".join(lines) + "\n"


def write_audit(
    findings: AuditFindings, out_dir: str | os.PathLike, train_command: str = "python train.py ..."
) -> dict[str, Path]:
    """Writes every file of :data:`FILES` under ``out_dir`` (atomically); returns their paths by key.

    ``train_command`` is the training command the next-step advice of ``audit.md`` extends.
    """
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
    _atomic_write(paths["markdown"], audit_markdown(findings, out, train_command))
    return paths
