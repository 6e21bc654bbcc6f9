"""Errors a user can fix, and how an entry point reports them: one line and exit code 1, not a traceback."""

from __future__ import annotations

import contextlib
import sys


class LookoutError(Exception):
    """A problem with the user's input (data, config, checkpoint, weights, run folder).

    The message names the file, option or value, and says how to fix it. Entry points print it
    as one line and exit with code 1 (:func:`reported`), since a traceback adds nothing to it.
    """


class ConfigError(LookoutError, ValueError):
    """A config value cannot work; the message names the option and the fix."""


class CheckpointError(LookoutError):
    """A checkpoint cannot be read or does not hold what lookout saves."""


class ExportError(LookoutError):
    """An export does not compute what its checkpoint computes."""


class RunFolderError(LookoutError):
    """The run folder is in use by another run, or holds a finished run that was not asked to resume."""


@contextlib.contextmanager
def reported():
    """Turns a :class:`LookoutError` into ``error: <message>`` on stderr and exit code 1.

    Any other exception keeps its traceback: it is a bug, not a user's mistake.
    """
    try:
        yield
    except LookoutError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)
