"""Look at the data before training: duplicates, leakage across splits, conflicting labels, image-quality
outliers and class balance, in reports and TensorBoard panels; no training.

    python audit.py                                              # the built-in digits
    python audit.py data=folder data.root=~/shots                # any source, the same options as training
    python audit.py data=folder data.root=~/shots audit.mode=full    # + near duplicates by backbone embeddings
    python audit.py data=folder data.root=~/shots 'audit.fail_on=[leakage,conflicting_labels]'   # exit 1 if found

The samples are those training would use (the same catalogue: scan, ``data.exclude``,
``data.relabel``, splits), saved with the audit's run folder under ``logs/audit/runs/<timestamp>/``.
No Trainer is built, and no model unless ``audit.mode=full``, which adds the pooled embeddings of
the pretrained backbone ``model.name`` (a plain no-grad loop with the evaluation transform).

Data that training would refuse because it cannot be split (one class, a class with a single
image) is still audited, unsplit; the summary says what training would stop at. Data that cannot
be listed at all (no folder, no class folders, no images) stops with that message.
"""

from __future__ import annotations

import shlex

import hydra
from omegaconf import DictConfig, OmegaConf

from data_audit import AuditFindings, finding_rows, next_step, read_audit
from datamodules import DataError
from runs import audit_step, build, ddp, environment
from runs.errors import ConfigError, reported
from runs.folder import RunFolder


def audit(cfg: DictConfig) -> AuditFindings:
    """Audits the data of ``cfg.data``; writes ``<run>/reports/audit/`` and the TensorBoard panels.

    Raises:
        ConfigError: a bad ``data`` or ``audit`` option, or the audit switched off.
        DataError: the data cannot be listed.
        AuditError: the findings include a kind listed in ``audit.fail_on`` (after the reports are written).
    """
    settings = audit_step.AuditSettings.from_config(cfg.audit)
    if not settings.enabled:
        raise ConfigError("audit.enabled=false (audit=off) switches the audit off; python audit.py has nothing to do.")
    options = build.data_options(cfg)
    build.loader_options(options)
    with build.claimed(cfg, RunFolder(cfg.paths.output_dir)) as folder:
        return _audit(cfg, folder, options, settings)


def _audit(cfg: DictConfig, folder: RunFolder, options: dict, settings) -> AuditFindings:
    notes, catalogue = [], None
    try:
        catalogue = build.catalogue(options, folder, child=False)
        samples, unreadable = audit_step.audit_samples(catalogue)
    except DataError as err:
        if options["source"] == "run":
            raise
        samples, unreadable = audit_step.listed_samples(options)  # its own error if the data cannot be listed
        notes.append(f"audited unsplit: training would stop here: {err}")
    report_dir = folder.reports / "audit"
    command = _train_command()
    model = OmegaConf.to_container(cfg.model, resolve=True)
    findings = audit_step.audit(
        samples, unreadable, settings, report_dir, model=model, options=options, notes=notes, train_command=command
    )
    _panels(cfg, folder, catalogue.splits.get("train", samples) if catalogue else samples)

    rows = [("finding", "count", "file"), *finding_rows(findings, all_flags=False)]
    widths = [max(len(row[k]) for row in rows) + 3 for k in (0, 1)]
    print("\n".join(f"{a:<{widths[0]}}{b:<{widths[1]}}{c}" for a, b, c in rows), flush=True)
    c = findings.counts()
    summary = [
        ("data", catalogue.describe() if catalogue else f"{c['found']} listed, unsplit"),
        ("audit", f"{report_dir / 'audit.md'} ({sum(findings.seconds.values()):.1f} s, mode {findings.mode})"),
        *[("note", note) for note in findings.notes],
    ]
    advice, next_command = next_step(findings, report_dir, command)
    summary.append(("next", next_command or advice))
    folder.print_summary(summary)
    audit_step.check_fail_on(findings, settings, report_dir)
    return findings


def _panels(cfg: DictConfig, folder: RunFolder, samples) -> None:
    """The training run's audit panels (``callbacks.data_audit``), written to ``<run>/tensorboard/``."""
    from torch.utils.tensorboard import SummaryWriter

    from callbacks.data_audit import AuditPanels, class_examples

    tables = read_audit(folder.reports / "audit")
    panels = AuditPanels()
    examples = class_examples(samples, per_class=panels.per_class, max_classes=20, seed=int(cfg.seed))
    with SummaryWriter(str(folder.tensorboard)) as writer:
        panels.log(writer, tables, examples, step=0)


def _train_command() -> str:
    """``python train.py`` with this command's data options, for the next step the reports suggest."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # composed without @hydra.main (tests)
        overrides = []
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~").split(".")[0] in ("data", "experiment")]
    return " ".join(["python train.py", *(shlex.quote(o) for o in kept)])


@hydra.main(version_base="1.3", config_path="conf", config_name="audit")
def main(cfg: DictConfig) -> None:
    with reported(), ddp.job_scope():
        audit(cfg)


if __name__ == "__main__":
    environment.setup()
    ddp.run_job(audit, main)
