"""What the data audit adds to the start of ``make train``: the audit step and its TensorBoard panels.

    python -m benchmarks.audit_fit_start [--repeats 3]

Runs, in a fresh process each time, what a default training run does before its first epoch on
the 5,000 built-in digits: the audit step of ``train.py`` (``runs/audit_step.FitStartAudit``,
cheap mode: one decode of every image, hash search, quality flags, the report files) and the
``callbacks.data_audit`` panels (thumbnails, galleries, the class-balance chart, written to an
event file). The catalogue is built first and not timed (training builds it with or without the
audit). Writes ``benchmarks/results/audit_fit_start.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from benchmarks.common import RESULTS, ROOT, machine


def _child() -> None:
    import time
    from pathlib import Path

    from callbacks.data_audit import AuditPanels, class_examples
    from data_audit import read_audit
    from datamodules import Catalogue
    from runs import environment
    from runs.audit_step import AuditSettings, FitStartAudit
    from runs.folder import RunFolder

    environment.setup()
    from torch.utils.tensorboard import SummaryWriter

    folder = RunFolder(tempfile.mkdtemp(prefix="audit-fit-start-"))
    catalogue = Catalogue.build(
        source="builtin", root=str(ROOT / "data" / "mnist"), val_fraction=0.1, test_fraction=0.1
    )
    step = FitStartAudit(AuditSettings(progress=False), folder, model={}, options={})
    load = os.getloadavg()[0]  # this machine is shared: say how busy it was
    start = time.perf_counter()
    step(catalogue)
    audited = time.perf_counter()
    panels = AuditPanels()
    examples = class_examples(catalogue.splits["train"], per_class=panels.per_class, max_classes=20, seed=42)
    with SummaryWriter(str(Path(folder.tensorboard))) as writer:
        panels.log(writer, read_audit(step.report_dir), examples, step=0)
    drawn = time.perf_counter()
    print(
        json.dumps(
            {
                "audit_seconds": audited - start,
                "panel_seconds": drawn - audited,
                "stages": step.findings.seconds,
                "load_average_1m": [load, os.getloadavg()[0]],
                "counts": {k: v for k, v in step.findings.counts().items() if isinstance(v, int)},
            }
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child()
        return
    runs = []
    for _ in range(args.repeats):
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.audit_fit_start", "--child"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]))
    summary = {key: statistics.median(r[key] for r in runs) for key in ("audit_seconds", "panel_seconds")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "audit_fit_start.json").write_text(
        json.dumps({"machine": machine(), "median": summary, "runs": runs}, indent=2) + "\n"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
