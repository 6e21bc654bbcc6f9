"""The data audit: one pass over the images, then every finding from the kept numbers.

    from data_audit import run_audit, write_audit
    findings = run_audit(samples)                        # cheap: digest + hash + quality
    findings = run_audit(samples, mode="full", embeddings=features)   # + embedding near duplicates
    write_audit(findings, run_dir / "reports" / "audit")

Costs (2-core CPU, ``cheap`` mode): the 5,000 built-in digits in about 1.2 s; 10,000 images of
64-96 px in 6-7 s, growing linearly (``benchmarks/audit_scale.py``). Memory: about 1 KB per
image for the tables, plus the embeddings when given; the pixels are never kept.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from data_audit.balance import BalanceSummary, class_balance
from data_audit.fingerprints import ProgressCallback, fingerprint_paths
from data_audit.groups import conflict_table, duplicate_table, leakage_table
from data_audit.near_duplicates import (
    EMBEDDING_MIN_COSINE,
    PHASH_MAX_BITS,
    embedding_pairs,
    empty_pairs,
    exact_pairs,
    hash_pairs,
    hash_threshold,
)
from data_audit.properties import PROPERTY_NAMES
from data_audit.quality import FLAGS, QualityThresholds, quality_flags, relative_limits
from datamodules.sources import DataError, Sample

MODES = ("cheap", "full")


@dataclass
class AuditFindings:
    """Everything the audit found; every table is a pandas DataFrame with documented columns.

    Attributes:
        mode: ``"cheap"`` or ``"full"``.
        images: one row per audited (readable) image: ``row`` (position in the samples given),
            ``path``, ``label``, ``split``, then every :data:`data_audit.properties.PROPERTY_NAMES`.
        exclusions: files that could not be read: ``path``, ``label``, ``split``, ``reason``.
        pairs: every linked pair: ``path_a``, ``path_b``, ``method``, ``distance`` (see
            :data:`data_audit.near_duplicates.PAIR_COLUMNS`); a pair found by several methods
            is listed once per method.
        duplicates: :data:`data_audit.groups.DUPLICATE_COLUMNS`.
        leakage: :data:`data_audit.groups.LEAKAGE_COLUMNS`.
        conflicts: :data:`data_audit.groups.CONFLICT_COLUMNS`.
        quality: one row per audited image: ``path``, ``split``, ``label``, then ``<flag>`` and
            ``<flag>_score`` for every flag in :data:`data_audit.quality.FLAGS`, and ``flags``.
        class_balance: :data:`data_audit.balance.BALANCE_COLUMNS`.
        balance: :class:`data_audit.balance.BalanceSummary`.
        settings: thresholds used (the fixed ones and those derived from this data set).
        seconds: wall time per stage.
        notes: plain-language messages for the user (one class, one image, ...).
    """

    mode: str
    images: pd.DataFrame
    exclusions: pd.DataFrame
    pairs: pd.DataFrame
    duplicates: pd.DataFrame
    leakage: pd.DataFrame
    conflicts: pd.DataFrame
    quality: pd.DataFrame
    class_balance: pd.DataFrame
    balance: BalanceSummary
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        """The headline numbers (``audit.json``); ``found = unreadable + audited``."""
        flagged = self.quality[list(FLAGS)] if not self.quality.empty else pd.DataFrame(columns=list(FLAGS))
        groups = self.duplicates.groupby("group_id") if not self.duplicates.empty else None
        exact_groups = 0
        if groups is not None:
            exact_groups = int(groups["method"].apply(lambda m: (m == "exact").all()).sum())
        return {
            "found": len(self.images) + len(self.exclusions),
            "unreadable": len(self.exclusions),
            "audited": len(self.images),
            "duplicate_groups": int(self.duplicates["group_id"].nunique()) if not self.duplicates.empty else 0,
            "exact_duplicate_groups": exact_groups,
            "images_in_duplicate_groups": len(self.duplicates),
            "redundant_copies": int((~self.duplicates["keep"].astype(bool)).sum()) if not self.duplicates.empty else 0,
            "pairs_by_method": {m: int(n) for m, n in self.pairs["method"].value_counts().items()},
            # Near duplicates no pixel digest or hash linked: what only the embeddings (full mode) found.
            "images_linked_only_by_embeddings": int((self.duplicates["method"] == "embedding").sum())
            if not self.duplicates.empty
            else 0,
            "leaked_images": len(self.leakage),
            "conflicting_label_groups": int(self.conflicts["group_id"].nunique()) if not self.conflicts.empty else 0,
            "images_with_conflicting_labels": len(self.conflicts),
            "quality_flagged": {name: int(flagged[name].sum()) for name in FLAGS},
            "images_with_any_quality_flag": int(flagged.any(axis=1).sum()) if len(flagged) else 0,
            "classes": self.balance.classes,
        }


def run_audit(
    samples: Sequence[Sample],
    *,
    mode: str = "cheap",
    embeddings: np.ndarray | None = None,
    unreadable: dict[str, str] | None = None,
    thresholds: QualityThresholds | None = None,
    phash_max_bits: int = PHASH_MAX_BITS,
    embedding_min_cosine: float = EMBEDDING_MIN_COSINE,
    workers: int | None = None,
    executor: str = "thread",
    progress: ProgressCallback | None = None,
) -> AuditFindings:
    """Audits ``samples``: duplicates, leakage, conflicting labels, quality outliers, class balance.

    Args:
        samples: the data set (path, label, split; split may be None before splitting).
        mode: ``"cheap"`` (pixel digest, perceptual hash, quality) or ``"full"`` (also the
            embedding near-duplicate search; needs ``embeddings``).
        embeddings: ``(len(samples), D)`` features aligned with ``samples`` (rows of unreadable
            images are ignored), e.g. the pretrained backbone's pooled features.
        unreadable: ``{path: reason}`` already known (the data scan's); these are not decoded again.
        thresholds: quality thresholds; default :class:`data_audit.quality.QualityThresholds`.
        phash_max_bits: upper bound of the perceptual-hash threshold (it may be lowered for
            data sets whose images are alike, see :func:`data_audit.near_duplicates.hash_threshold`).
        embedding_min_cosine: embedding similarity threshold.
        workers: parallel workers for the image pass (default: one per core).
        executor: ``"process"`` or ``"thread"`` for the image pass.
        progress: ``progress(done, total)`` during the image pass (a progress bar's hook).

    Raises:
        DataError: no samples, an unknown mode, or embeddings missing or of the wrong length.
    """
    if mode not in MODES:
        raise DataError(f"audit mode={mode!r} is not one of {MODES}.")
    if not samples:
        raise DataError("There are no images to audit: the data source listed none. Check data.root or data.manifest.")
    if mode == "full" and embeddings is None:
        raise DataError(
            "audit mode='full' needs embeddings (N x D features aligned with the samples); use mode='cheap'."
        )
    if embeddings is not None and (embeddings.ndim != 2 or len(embeddings) != len(samples)):
        raise DataError(f"embeddings have shape {embeddings.shape}; expected ({len(samples)}, D), one row per sample.")
    seconds: dict[str, float] = {}
    unreadable = dict(unreadable or {})
    table = pd.DataFrame(
        {
            "path": [s.path for s in samples],
            "label": [str(s.label) for s in samples],
            "split": [s.split for s in samples],
        }
    )
    to_read = np.flatnonzero(~table["path"].isin(unreadable).to_numpy())
    prints = fingerprint_paths(
        table["path"].iloc[to_read].tolist(), workers=workers, executor=executor, progress=progress
    )
    seconds["image_pass"] = prints.seconds

    started = time.perf_counter()
    n = len(table)
    digests = np.zeros((n, 2), dtype=np.uint64)
    phashes = np.zeros(n, dtype=np.uint64)
    thumbnails = np.zeros((n, prints.thumbnails.shape[1]), dtype=np.uint8)
    properties = np.full((n, len(PROPERTY_NAMES)), np.nan, dtype=np.float32)
    digests[to_read], phashes[to_read], properties[to_read] = prints.digests, prints.phashes, prints.properties
    thumbnails[to_read] = prints.thumbnails
    reasons = pd.Series([unreadable.get(p, "") for p in table["path"]], index=table.index, dtype=object)
    for row, reason in prints.reasons.items():
        reasons.iloc[to_read[row]] = reason
    readable = (reasons == "").to_numpy()
    rows = np.flatnonzero(readable)
    for name, column in zip(PROPERTY_NAMES, properties.T, strict=True):
        table[name] = column

    images = table.iloc[rows].reset_index(names="row")
    flags = quality_flags(images[list(PROPERTY_NAMES)], thresholds)
    quality = pd.concat([images[["path", "split", "label"]], flags], axis=1)
    # The hash of a flat image is its noise, and its embedding that of any other flat image:
    # blank images of different colours would all match. They are compared by digest only.
    comparable = rows[~flags["low_information"].to_numpy(dtype=bool)]
    bits, hash_stats = hash_threshold(phashes[comparable], max_bits=phash_max_bits)
    found = [exact_pairs(digests, rows), hash_pairs(phashes, comparable, bits, thumbnails=thumbnails)]
    seconds["hash_search"] = time.perf_counter() - started
    if mode == "full":
        started = time.perf_counter()
        found.append(embedding_pairs(embeddings, comparable, min_cosine=embedding_min_cosine))
        seconds["embedding_search"] = time.perf_counter() - started

    started = time.perf_counter()
    pairs = pd.concat([p for p in found if not p.empty] or [empty_pairs()], ignore_index=True)
    # Identical pixels are reported once, as exact; the hash finds them too, at distance 0.
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    identical = (digests[a] == digests[b]).all(axis=1)
    pairs = pairs[~(identical & (pairs["method"] != "exact").to_numpy())]
    pairs = pairs.reset_index(drop=True)
    duplicates = duplicate_table(table, pairs)
    balance_table, balance = class_balance(images)
    seconds["findings"] = time.perf_counter() - started

    exclusions = table.loc[~readable, ["path", "label", "split"]].assign(reason=reasons[~readable].to_numpy())
    path_of = table["path"].to_numpy()
    notes = list(balance.notes)
    if len(rows) == 0:
        notes.append("no image could be read: see the exclusions")
    elif len(rows) == 1:
        notes.append("only one readable image: nothing to compare it with")
    return AuditFindings(
        mode=mode,
        images=images,
        exclusions=exclusions.reset_index(drop=True),
        pairs=pd.DataFrame(
            {
                "path_a": path_of[pairs["a"].to_numpy()],
                "path_b": path_of[pairs["b"].to_numpy()],
                "method": pairs["method"].to_numpy(),
                "distance": pairs["distance"].to_numpy(),
            }
        ),
        duplicates=duplicates,
        leakage=leakage_table(duplicates),
        conflicts=conflict_table(duplicates),
        quality=quality,
        class_balance=balance_table,
        balance=balance,
        settings={
            "phash_bits": bits,
            "phash_max_bits": phash_max_bits,
            **hash_stats,
            "embedding_min_cosine": embedding_min_cosine if mode == "full" else None,
            "quality": (thresholds or QualityThresholds()).as_dict(),
            "quality_relative": relative_limits(images[list(PROPERTY_NAMES)], thresholds),
            "image_pass": {"executor": prints.executor, "workers": prints.workers},
        },
        seconds=seconds,
        notes=notes,
    )
