"""The data audit inside a command: its settings, the samples it reads, its report files, ``audit.fail_on``,
and, in training, the leaked validation and test images set aside and what they inflated.

``train.py`` runs :class:`FitStartAudit` on global rank zero between building the sample
catalogue and saving it, so every other rank loads a catalogue that already has the leaked images
set aside and never audits itself. ``audit.py`` calls :func:`audit` on the same samples.
The audit itself is :mod:`data_audit` (no torch); the loops that need a model are in
:mod:`runs.audit_loops`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from data_audit import FAIL_KINDS, MODES, AuditFindings, QualityThresholds, fail_on_check, leaked_paths, run_audit
from data_audit.fingerprints import EXECUTORS, ProgressCallback
from data_audit.report import write_audit
from datamodules import Catalogue, DataError, Sample
from runs.errors import ConfigError, LookoutError
from runs.folder import RunFolder

LEAKED = {"val": "leaked_val", "test": "leaked_test"}
"""Where ``audit.drop_leaked`` sets aside the validation and test images that have a twin in an earlier split."""

# Splits as the audit compares them: a K-fold job's held-out fold is training data, and images
# already set aside keep the split they leaked into.
AUDIT_SPLIT = {"heldout": "train", **{leaked: split for split, leaked in LEAKED.items()}}


class AuditError(LookoutError):
    """The audit found what ``audit.fail_on`` stops on; the message lists the files."""


@dataclasses.dataclass(frozen=True)
class AuditSettings:
    """The ``audit`` config group as checked plain values (see ``conf/audit/default.yaml`` for units).

    Raises:
        ConfigError: (in :meth:`from_config`) an unknown key, or a value of the wrong type or range.
    """

    enabled: bool = True
    mode: str = "cheap"
    fail_on: tuple[str, ...] = ()
    drop_leaked: bool = False
    phash_max_bits: int = 10
    embedding_min_cosine: float = 0.9
    workers: int | None = None
    executor: str = "thread"
    progress: bool = True
    quality: QualityThresholds = dataclasses.field(default_factory=QualityThresholds)

    @classmethod
    def from_config(cls, node: DictConfig | Mapping | None) -> AuditSettings:
        if node is None:
            return cls(enabled=False)
        values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ConfigError(f"unknown audit option(s) {unknown}; the options are {sorted(fields)}.")
        quality = dict(values.pop("quality", None) or {})
        names = {f.name for f in dataclasses.fields(QualityThresholds)}
        if set(quality) - names:
            raise ConfigError(
                f"unknown audit.quality option(s) {sorted(set(quality) - names)}; they are {sorted(names)}."
            )
        for key, value in quality.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"audit.quality.{key}={value!r} must be a number >= 0.")
        fail_on = values.get("fail_on") or ()
        # audit.fail_on=leakage (one kind without brackets) is a string, not a list of characters.
        values["fail_on"] = (fail_on,) if isinstance(fail_on, str) else tuple(fail_on)
        settings = cls(**values, quality=QualityThresholds(**quality))
        settings._check()
        return settings

    def _check(self) -> None:
        def bad(option: str, value: Any, allowed: str) -> ConfigError:
            return ConfigError(f"audit.{option}={value!r}: {allowed}.")

        for option in ("enabled", "drop_leaked", "progress"):
            if not isinstance(getattr(self, option), bool):
                raise bad(option, getattr(self, option), "give true or false")
        if self.mode not in MODES:
            raise bad("mode", self.mode, f"choose one of {list(MODES)}")
        unknown = [k for k in self.fail_on if k not in FAIL_KINDS]
        if unknown:
            raise bad("fail_on", list(self.fail_on), f"{unknown} unknown; choose from {list(FAIL_KINDS)}")
        if not isinstance(self.phash_max_bits, int) or not 0 <= self.phash_max_bits <= 24:
            raise bad("phash_max_bits", self.phash_max_bits, "give a number of bits (of 64) in 0..24")
        if not isinstance(self.embedding_min_cosine, int | float) or not 0 < self.embedding_min_cosine <= 1:
            raise bad("embedding_min_cosine", self.embedding_min_cosine, "give a cosine similarity in (0, 1]")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise bad("workers", self.workers, "give a number of workers >= 1, or null for one per CPU core")
        if self.executor not in EXECUTORS:
            raise bad("executor", self.executor, f"choose one of {list(EXECUTORS)}")
        if not self.enabled and (self.fail_on or self.drop_leaked):
            raise ConfigError(
                "audit.fail_on and audit.drop_leaked act on the audit's findings, but the audit is switched off "
                "(audit=off or audit.enabled=false): switch it on, or leave those options out."
            )


# ---------------------------------------------------------------------- the samples
def audit_samples(catalogue: Catalogue) -> tuple[list[Sample], dict[str, str]]:
    """Every sample of every split as the audit compares them, plus the files the scan found
    unreadable (listed, not decoded again): ``(samples, {path: reason})``."""
    samples = [
        Sample(s.path, s.label, AUDIT_SPLIT.get(split, split), s.meta)
        for split, group in catalogue.splits.items()
        for s in group
    ]
    unreadable = {u["path"]: u["reason"] for u in catalogue.unreadable}
    samples += [Sample(u["path"], u.get("label") or "", u.get("split") or None) for u in catalogue.unreadable]
    return samples, unreadable


def listed_samples(options: Mapping[str, Any]) -> tuple[list[Sample], dict[str, str]]:
    """The source's samples without splitting them (``data.exclude`` and ``data.relabel`` applied,
    scanned): what ``audit.py`` audits when the data cannot be split for training (one class, one
    image per class). Errors of the listing itself (no such folder, no class folders) propagate.

    Raises:
        DataError: the source cannot be listed.
    """
    from datamodules.catalogue import list_source
    from datamodules.image_io import scan_images
    from datamodules.label_edits import exclude_samples, relabel_samples

    listing, root = list_source(options["source"], root=options.get("root"), manifest=options.get("manifest"))
    samples = listing.samples
    if options.get("exclude"):
        samples, _ = exclude_samples(samples, options["exclude"], base=root)
    if options.get("relabel"):
        relabel_samples(samples, options["relabel"], base=root)
    return samples, scan_images([s.path for s in samples], mode=options.get("scan") or "fast")


# ---------------------------------------------------------------------- the audit
@contextlib.contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[ProgressCallback]:
    """A ``progress(done, total)`` hook drawing a tqdm bar on a terminal, once a scan has run for
    two seconds (short scans print nothing); nothing when ``enabled`` is false or output is a file."""
    from tqdm import tqdm

    bars: list[tqdm] = []

    def update(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc=description, unit="img", delay=2.0, disable=None if enabled else True))
        bars[0].update(done - bars[0].n)

    try:
        yield update
    finally:
        for bar in bars:
            bar.close()


def audit(
    samples: Sequence[Sample],
    unreadable: Mapping[str, str],
    settings: AuditSettings,
    report_dir: str | Path,
    *,
    model: Mapping | None = None,
    options: Mapping | None = None,
    notes: Sequence[str] = (),
    train_command: str = "python train.py ...",
) -> AuditFindings:
    """Runs the audit with ``settings`` and writes its report files to ``report_dir``.

    Args:
        samples: what to audit (:func:`audit_samples`).
        unreadable: ``{path: reason}`` already known.
        settings: the ``audit`` options.
        report_dir: ``<run>/reports/audit``.
        model: the ``model`` options, whose pretrained backbone embeds the images in ``audit.mode=full``.
        options: the ``data`` options (preprocessing and loader values for those embeddings).
        notes: messages for ``audit.md`` besides the audit's own.
        train_command: the training command ``audit.md``'s next step extends.
    """
    embeddings, notes, seconds = None, list(notes), 0.0
    if settings.mode == "full":
        from runs import audit_loops

        started = time.perf_counter()
        paths = [s.path for s in samples]
        embeddings = audit_loops.backbone_embeddings(
            paths, model=model or {}, options=options or {}, progress=settings.progress
        )
        seconds = time.perf_counter() - started
        notes += audit_loops.embedding_notes(model or {})
    with progress_bar("audit: reading images", settings.progress) as progress:
        findings = run_audit(
            samples,
            mode=settings.mode,
            embeddings=embeddings,
            unreadable=dict(unreadable),
            thresholds=settings.quality,
            phash_max_bits=settings.phash_max_bits,
            embedding_min_cosine=settings.embedding_min_cosine,
            workers=settings.workers,
            executor=settings.executor,
            progress=progress,
        )
    findings.notes = [*notes, *findings.notes]
    if embeddings is not None:
        findings.seconds = {"embeddings": seconds, **findings.seconds}
    write_audit(findings, report_dir, train_command)
    return findings


def check_fail_on(findings: AuditFindings, settings: AuditSettings, report_dir: str | Path) -> None:
    """Raises:
    AuditError: the findings include a kind listed in ``audit.fail_on``; the message lists the files."""
    message = fail_on_check(findings, settings.fail_on)
    if message:
        raise AuditError(message.replace("<run>/reports/audit", str(report_dir)))


def set_aside_leaked(catalogue: Catalogue, paths: Sequence[str]) -> dict[str, int]:
    """Moves the validation and test samples in ``paths`` to their own splits (:data:`LEAKED`), in place.

    The moved samples keep their order; the ones left keep theirs, so a sample's index is its
    position in its split as saved with the run, as always.

    Raises:
        DataError: every validation image has a twin in train (nothing would be left to validate on).
    """
    leaked = set(paths)
    moved: dict[str, int] = {}
    for split, aside in LEAKED.items():
        group = catalogue.splits.get(split, [])
        out = [s for s in group if s.path in leaked]
        if not out:
            continue
        kept = [s for s in group if s.path not in leaked]
        if not kept and split == "val":
            raise DataError(
                f"audit.drop_leaked=true would set aside all {len(group)} validation images: each has a twin in "
                "train. Split the data so that copies stay in one split, or leave audit.drop_leaked off."
            )
        for sample in out:
            sample.split = aside
        catalogue.splits[split] = kept
        catalogue.splits[aside] = catalogue.splits.get(aside, []) + out
        moved[aside] = len(out)
    if "test" in catalogue.splits and not catalogue.splits["test"]:
        del catalogue.splits["test"]  # every test image leaked: nothing left to test on
    catalogue.summary["used"] = catalogue.used()
    catalogue.summary["set_aside_as_leaked"] = {k: len(v) for k, v in catalogue.splits.items() if k in LEAKED.values()}
    return moved


class FitStartAudit:
    """The audit at the start of training: called with the freshly built catalogue on global rank
    zero, before the catalogue is saved (``build.catalogue(..., before_save=...)``).

    Args:
        settings: the ``audit`` options.
        folder: the run folder; the reports go to ``reports/audit/``.
        model: the ``model`` options (``name``, ``pretrained``, ``weights``, ``cache_dir``), for
            the embeddings of ``audit.mode=full``.
        options: the ``data`` options (preprocessing and loader values for those embeddings).
    """

    def __init__(self, settings: AuditSettings, folder: RunFolder, *, model: Mapping, options: Mapping) -> None:
        self.settings, self.folder, self.model, self.options = settings, folder, dict(model), dict(options)
        self.findings: AuditFindings | None = None
        self.set_aside: dict[str, int] = {}
        self.seconds = 0.0

    @property
    def report_dir(self) -> Path:
        return self.folder.reports / "audit"

    def __call__(self, catalogue: Catalogue) -> None:
        started = time.perf_counter()
        samples, unreadable = audit_samples(catalogue)
        self.findings = audit(
            samples, unreadable, self.settings, self.report_dir, model=self.model, options=self.options
        )
        self.seconds = time.perf_counter() - started
        check_fail_on(self.findings, self.settings, self.report_dir)
        if self.settings.drop_leaked:
            self.set_aside = set_aside_leaked(catalogue, leaked_paths(self.findings))

    def summary(self) -> str:
        """One line for the end-of-run summary."""
        c = self.findings.counts()
        aside = ", ".join(f"{k} {n}" for k, n in self.set_aside.items())
        return (
            f"duplicate groups {c['duplicate_groups']}, leaked val/test images {c['leaked_images']}"
            + (f" (set aside: {aside})" if aside else "")
            + f", conflicting-label groups {c['conflicting_label_groups']}, images with a quality flag "
            f"{c['images_with_any_quality_flag']} ({self.seconds:.1f} s; {self.report_dir / 'audit.md'})"
        )
