"""The data audit: duplicates, leakage across splits, conflicting labels, quality outliers, class balance.

A framework-free core (numpy, pandas, OpenCV, SciPy, faiss): no Trainer, no config. The
``audit.py`` command and the fit-start callback call :func:`run_audit` and
:func:`write_audit`, and take paths and galleries from :mod:`data_audit.selections`.
"""

from data_audit.audit import MODES, AuditFindings, run_audit
from data_audit.balance import BalanceSummary, class_balance
from data_audit.properties import PROPERTY_NAMES, image_properties
from data_audit.quality import FLAGS, QualityThresholds, quality_flags
from data_audit.report import FILES, audit_markdown, audit_summary, finding_rows, next_step, write_audit
from data_audit.saved import AuditTables, read_audit
from data_audit.selections import (
    FAIL_KINDS,
    DuplicateGroup,
    LeakedPair,
    class_samples,
    conflict_suggestions,
    conflicting_paths,
    duplicate_groups,
    fail_on_check,
    leaked_pairs,
    leaked_paths,
    quality_outliers,
    redundant_paths,
)

__all__ = [
    "FAIL_KINDS",
    "FILES",
    "FLAGS",
    "MODES",
    "PROPERTY_NAMES",
    "AuditFindings",
    "AuditTables",
    "BalanceSummary",
    "DuplicateGroup",
    "LeakedPair",
    "QualityThresholds",
    "audit_markdown",
    "audit_summary",
    "class_balance",
    "class_samples",
    "conflict_suggestions",
    "conflicting_paths",
    "duplicate_groups",
    "fail_on_check",
    "finding_rows",
    "image_properties",
    "leaked_pairs",
    "leaked_paths",
    "next_step",
    "quality_flags",
    "quality_outliers",
    "read_audit",
    "redundant_paths",
    "run_audit",
    "write_audit",
]
