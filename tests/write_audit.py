"""Runs a script and records every file it opens for writing, renames or creates a folder for, so a test can
tell which process wrote what.

    python tests/write_audit.py LOG SCRIPT [ARGS ...]

One line per event in LOG: ``<event>\\t<path>``. Python's audit hooks (PEP 578) see every ``open``,
``os.open``, ``os.rename``/``os.replace`` and ``os.mkdir`` made from Python code, whichever library
makes it (fsspec for checkpoints, TensorBoard's event writer, the run folder's atomic writes); files
written from C++ alone would not show up.
"""

from __future__ import annotations

import os
import runpy
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _path(value) -> str | None:
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if isinstance(value, str | os.PathLike):
        return os.path.abspath(os.fspath(value))
    return None  # a file descriptor


def main() -> None:
    log_path, script, *args = sys.argv[1:]
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 (open for the life of the process)

    def hook(event: str, details: tuple) -> None:
        if event == "open":
            path, mode, flags = details
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITE_FLAGS)
            if writes and (path := _path(path)) is not None and path != log_path:
                log.write(f"open\t{path}\n")
        elif event == "os.rename":
            if (path := _path(details[1])) is not None:
                log.write(f"rename\t{path}\n")
        elif event == "os.mkdir" and (path := _path(details[0])) is not None:
            log.write(f"mkdir\t{path}\n")

    log_path = os.path.abspath(log_path)
    sys.addaudithook(hook)
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(script))  # as `python SCRIPT` would have it
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
