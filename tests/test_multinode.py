"""Two "nodes" of one process each on localhost, started the way a cluster scheduler starts them: each
process composes its own config, with only ``MASTER_ADDR``, ``MASTER_PORT``, ``NODE_RANK`` and
``WORLD_SIZE`` telling them apart. One run folder, every file written by rank zero alone, every sample
counted once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from runs.ddp import DDP_ENV
from tests.conftest import ROOT, tiny_overrides, write_digits
from tests.test_ddp import _check_run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_nodes(args: list[str], tmp_path: Path, nodes: int = 2) -> list[tuple[subprocess.Popen, Path, Path]]:
    """Starts one ``train.py`` process per node under ``tests/write_audit.py``; returns (process, stdout, audit)."""
    port = str(_free_port())
    started = []
    for node in range(nodes):
        env = {k: v for k, v in os.environ.items() if k not in DDP_ENV and not k.startswith(("SLURM_", "SUBMITIT_"))}
        env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": str(node), "WORLD_SIZE": str(nodes)}
        env |= {"HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}
        out, audit = tmp_path / f"node{node}.out", tmp_path / f"node{node}.writes"
        with open(out, "w") as stdout:
            process = subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "write_audit.py"), str(audit), str(ROOT / "train.py"), *args],
                cwd=ROOT,
                env=env,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed as a whole if the test gives up
            )
        started.append((process, out, audit))
    return started


def _wait(started, timeout: float) -> None:
    try:
        for process, out, _ in started:
            if process.wait(timeout=timeout) != 0:
                raise AssertionError(f"{out.name} exited with {process.returncode}:\n{out.read_text()[-6000:]}")
    finally:
        for process, _, _ in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _written(audit: Path, folder: Path) -> list[str]:
    """The files and folders a process wrote, created or renamed into inside ``folder``, relative to it."""
    lines = audit.read_text().splitlines() if audit.exists() else []
    paths = (Path(p) for _, p in (line.split("\t", 1) for line in lines))
    return [str(p.relative_to(folder)) for p in paths if p.is_relative_to(folder)]


@pytest.mark.slow
def test_two_nodes_write_one_run_folder_once_and_count_each_sample_once(tmp_path):
    # 9 classes x 24 images: 45 validation and 171 training samples, both odd (as in test_ddp).
    data = write_digits(tmp_path / "data", per_class=24, classes=9)
    run_dir = tmp_path / "run"
    keep = [o for o in tiny_overrides(data, run_dir) if not o.startswith(("paths.output_dir", "trainer="))]
    args = [
        *keep,
        "trainer=ddp_sim",
        "trainer.devices=1",
        "trainer.num_nodes=2",
        "data.batch_size=17",
        # The frozen phase's shortcut (no backward pass through the backbone) under DDP: every
        # parameter must still reach the reducer, or the second step fails.
        "model.freeze_backbone_epochs=1",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"hydra.run.dir={run_dir}",  # what a multi-node job must set: one folder for every node
    ]
    started = _start_nodes(args, tmp_path)
    _wait(started, timeout=300)
    (_, out0, audit0), (_, out1, audit1) = started

    _check_run(run_dir, epochs=2)  # confusion matrix = the validation split; suspects: every sample once
    assert not (tmp_path / "logs").exists()  # no second, timestamped run folder
    assert (out0.read_text() + out1.read_text()).count("run folder") == 1  # one summary, by rank zero

    by_zero, by_one = _written(audit0, run_dir), _written(audit1, run_dir)
    # Rank one writes nothing in the run folder but its lines of Hydra's log, which every process
    # opens (Hydra also makes sure the folder exists).
    assert set(by_one) <= {".", "train.log"}, by_one
    by_zero_names = set(by_zero)
    for expected in (".lock", "config.yaml", "catalogue.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert expected in by_zero_names
    for report in ("metrics.json", "label_scores.csv", "val/confusion_matrix.csv", "data_summary.json"):
        assert f"reports/{report}" in by_zero_names
    assert any(name.startswith("tensorboard/events.out.tfevents") for name in by_zero_names)
    assert not (run_dir / ".lock").exists()  # released at the end
