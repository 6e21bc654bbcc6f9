"""A user's mistake stops the command with one line, `error: ...`, and exit code 1 — no traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import run_cli, tiny_overrides, write_digits


def _fails_with(args: list[str], message: str, cwd=None) -> str:
    kwargs = {"cwd": cwd} if cwd else {}
    result = run_cli(args, check=False, timeout=300, **kwargs)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    return last


def _overrides(data_root, run_dir):
    return [o for o in tiny_overrides(data_root, run_dir) if not o.startswith("paths.output_dir")] + [
        f"hydra.run.dir={run_dir}"
    ]


@pytest.mark.slow
def test_data_folder_without_a_root_stops_instead_of_training_on_the_digits(tmp_path):
    _fails_with(["train.py", "data=folder", f"hydra.run.dir={tmp_path / 'run'}"], "data=folder needs data.root=DIR")
    assert not (tmp_path / "run" / "reports").exists()


@pytest.mark.slow
def test_manifest_and_config_mistakes(digits_folder, tmp_path):
    run = tmp_path / "run"
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("path,label\n")
    for manifest, message in (
        ("empty.csv", "empty.csv is empty"),
        ("header.csv", "has a header (path, label) but no rows"),
    ):
        args = ["train.py", *_overrides(digits_folder, run), "data=csv", f"data.manifest={tmp_path / manifest}"]
        _fails_with([a for a in args if a != "data=folder"], message)
    _fails_with(["train.py", *_overrides(digits_folder, run), "trainer.max_epochs=-1"], "trainer.max_epochs=-1 must be")
    _fails_with(
        ["train.py", *_overrides(digits_folder, run), "data.batch_size=abc"], "data.batch_size='abc' must be an"
    )
    assert not (run / "reports").exists()  # stopped before the scan wrote anything


@pytest.mark.slow
def test_one_class_a_looping_class_folder_and_a_truncated_checkpoint(digits_folder, tmp_path):
    one = tmp_path / "one"
    shutil.copytree(digits_folder / "digit_4", one / "digit_4")
    _fails_with(["train.py", *_overrides(one, tmp_path / "r1")], "has only one class ('digit_4')")
    looping = write_digits(tmp_path / "loop", per_class=6, classes=3)
    (looping / "cats").symlink_to(looping / "cats")
    _fails_with(["train.py", *_overrides(looping, tmp_path / "r2")], "cats is a symbolic link that loops back")
    (tmp_path / "half.ckpt").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    _fails_with(["eval.py", f"ckpt_path={tmp_path / 'half.ckpt'}"], "truncated or not a PyTorch checkpoint")


@pytest.mark.slow
def test_a_second_run_in_a_busy_folder_stops_with_one_line(digits_folder, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (run / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename, "started": "now"}))
        _fails_with(["train.py", *_overrides(digits_folder, run)], f"is in use by process {sleeper.pid}")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert sorted(p.name for p in run.iterdir()) == [".lock", "train.log"]  # nothing of the refused run


@pytest.mark.slow
def test_paths_with_spaces_and_non_ascii_characters_work_as_the_readme_quotes_them(digits_folder, tmp_path):
    root = tmp_path / "my shots" / "Zürich ${x}"
    shutil.copytree(digits_folder, root)
    run = tmp_path / "run ü"
    args = [a for a in _overrides(digits_folder, run) if not a.startswith(("data.root", "hydra.run.dir"))]
    # As README.md shows: the value in double quotes for Hydra, and ${ escaped as \${.
    quoted = str(root).replace("${", "\\${")
    run_cli(
        [
            "train.py",
            *args,
            f'data.root="{quoted}"',
            f'hydra.run.dir="{run}"',
            "trainer.max_epochs=1",
            "callbacks=minimal",
        ]
    )
    summary = json.loads((run / "reports" / "data_summary.json").read_text())
    assert summary["location"] == str(root) and sum(summary["used"].values()) == 300
