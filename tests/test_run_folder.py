"""One run per folder: a busy folder and a finished run are refused; a run resumes only in its own folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from runs.errors import RunFolderError
from runs.folder import RunFolder
from train import train


def test_a_folder_in_use_by_a_live_process_is_refused(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = RunFolder(tmp_path / "run")
        busy.root.mkdir()
        busy.lock_file.write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename, "started": "now"}))
        with pytest.raises(RunFolderError, match=rf"is in use by process {sleeper.pid}"):
            busy.claim()
    finally:
        sleeper.kill()
        sleeper.wait()
    RunFolder(tmp_path / "run").claim()  # the process is gone: its lock is stale and is taken over


def test_claim_writes_a_lock_and_release_removes_it(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.claim()
    assert json.loads(folder.lock_file.read_text())["pid"] == os.getpid()
    folder.release()
    assert not folder.lock_file.exists()


def test_a_finished_run_is_resumed_only_from_its_own_checkpoint(tiny_cfg, tmp_path):
    first = train(tiny_cfg("trainer.max_epochs=1", "callbacks=minimal"))
    run = tmp_path / "run"
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    mtimes = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    with pytest.raises(RunFolderError, match=r"already holds a run\. To continue it, resume from its checkpoint"):
        train(tiny_cfg("trainer.max_epochs=1", "callbacks=minimal"))
    elsewhere = tmp_path / "other.ckpt"
    elsewhere.write_bytes((run / "checkpoints" / "last.ckpt").read_bytes())
    with pytest.raises(RunFolderError, match="already holds a run"):
        train(tiny_cfg("trainer.max_epochs=2", "callbacks=minimal", f"ckpt_path={elsewhere}"))
    # Nothing of the refused runs was written: same files, untouched.
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    resumed = train(tiny_cfg("trainer.max_epochs=2", "callbacks=minimal", f"ckpt_path={run}/checkpoints/last.ckpt"))
    assert resumed["val/acc_best"] >= first["val/acc_best"]
    assert not (run / ".lock").exists()
