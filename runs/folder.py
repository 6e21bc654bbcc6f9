"""A run's folder as one object: where its reports, event files, checkpoints and saved samples live,
who may use it, and the summary printed at the end of a run.

```
<run>/
  .lock             while a run uses the folder: pid, host, start time (removed at the end)
  config.yaml       the resolved config; .hydra/overrides.yaml the command-line overrides
  catalogue.json    the samples, classes and splits the run used (DDP ranks, eval, predict load it)
  tensorboard/  checkpoints/  reports/
```
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runs import files
from runs.errors import RunFolderError

# What a run that got going leaves behind; a folder holding any of these holds a run. A run that
# stopped at a mistake in its data or config, or at a data-audit finding (audit.fail_on), leaves only
# config.yaml, catalogue.json and data reports: the same command, fixed, may use the folder again.
# (Hydra's own log file, `<task>.log`, is opened before any of lookout's code runs and does not count.)
RUN_CONTENTS = ("checkpoints", "tensorboard", "csv", "reports/metrics.json", "predictions.csv")


class RunFolder:
    """The folder of one run (train, eval, audit, predict).

    Args:
        root: the folder (``paths.output_dir``: Hydra's run or sweep-job folder).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser().absolute()
        self._locked = False

    @classmethod
    def of(cls, trainer) -> RunFolder:
        """The run folder of a Trainer (its ``default_root_dir``, set to ``paths.output_dir``)."""
        return cls(trainer.default_root_dir)

    # ------------------------------------------------------------------ layout
    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def catalogue_file(self) -> Path:
        return self.root / "catalogue.json"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    def report(self, *parts: str) -> Path:
        """``reports/<parts>``; its parent folder is created."""
        path = self.reports.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # ------------------------------------------------------------------ atomic report files
    def write_csv(self, name: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
        path = self.report(name)
        files.write_csv(path, header, rows)
        return path

    def write_records(self, name: str, columns: Sequence[str], records: Sequence[dict[str, Any]]) -> Path:
        path = self.report(name)
        files.write_records(path, columns, records)
        return path

    def write_json(self, name: str, data: Any) -> Path:
        path = self.report(name)
        files.write_json(path, data)
        return path

    # ------------------------------------------------------------------ who may use it
    def holds_run(self) -> bool:
        for name in RUN_CONTENTS:
            path = self.root / name
            if path.is_file() or (path.is_dir() and any(path.iterdir())):
                return True
        return False

    def claim(self, *, resume_from: str | os.PathLike | None = None) -> None:
        """Takes the folder for this process, or refuses with the reason.

        A folder another live process uses is refused. A folder that holds a finished (or
        interrupted) run is refused too, unless this run resumes it from one of its own
        checkpoints: two runs never mix their reports, checkpoints and event files.

        Raises:
            RunFolderError: the folder is in use, or holds another run.
        """
        owner = self._owner()
        if owner is not None and owner.get("pid") != os.getpid() and _alive(owner):
            raise RunFolderError(
                f"the run folder {self.root} is in use by process {owner.get('pid')} on {owner.get('host')} "
                f"(started {owner.get('started')}). Wait for it to finish, or give this run another folder "
                "(leave hydra.run.dir unset for a new timestamped one). If no run is using it, delete "
                f"{self.lock_file}."
            )
        resumes = resume_from is not None and self._inside_checkpoints(resume_from)
        if self.holds_run() and not resumes and not (owner and owner.get("pid") == os.getpid()):
            raise RunFolderError(
                f"the run folder {self.root} already holds a run. To continue it, resume from its checkpoint: "
                f"ckpt_path={self.checkpoints / 'last.ckpt'} hydra.run.dir={self.root}. To start a new run, "
                "leave hydra.run.dir unset (a new timestamped folder) or give a new folder."
            )
        self.root.mkdir(parents=True, exist_ok=True)
        record = json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        )
        self.lock_file.unlink(missing_ok=True)  # a stale lock of a process that is gone
        try:
            fd = os.open(self.lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:  # another run took it between the check and here
            raise RunFolderError(f"the run folder {self.root} was just taken by another run.") from None
        with os.fdopen(fd, "w") as f:
            f.write(record)
        self._locked = True

    def release(self) -> None:
        """Gives the folder up (at the end of the run, also after an error)."""
        if self._locked:
            owner = self._owner()
            if owner is not None and owner.get("pid") == os.getpid():
                self.lock_file.unlink(missing_ok=True)
            self._locked = False

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.lock_file.read_text())
        except (OSError, ValueError):
            return None

    def _inside_checkpoints(self, path: str | os.PathLike) -> bool:
        resolved = Path(path).expanduser().resolve()
        return resolved.is_relative_to(self.checkpoints.resolve())

    # ------------------------------------------------------------------ end of run
    def print_summary(self, rows: Sequence[tuple[str, str]], *, review: str | None = None) -> None:
        """The end-of-run summary, the same for every command: the run folder first, the command (or
        file) to review it last, by default TensorBoard on the folder. Call on global rank zero only."""
        review = review or f"tensorboard --logdir {self.root} --samples_per_plugin images=1000"
        rows = [("run folder", str(self.root)), *rows, ("review", review)]
        column = max(13, *(len(key) + 2 for key, _ in rows))  # a long key (test/f1_macro) keeps a gap
        lines = [f"{key:<{column}}{value}" for key, value in rows]
        width = max(len(line) for line in lines)
        print("\n" + "=" * width, *lines, "=" * width, sep="\n", flush=True)


def _alive(owner: dict) -> bool:
    """Whether the process that wrote a lock still runs. On another host we cannot tell: assume it does."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        pid = int(owner.get("pid", 0))
        if pid <= 0:
            return False
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True
