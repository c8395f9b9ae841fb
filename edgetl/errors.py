"""Errors that edgetl reports to the user as one line, without a traceback."""

from __future__ import annotations


class EdgetlError(Exception):
    """A problem the user can fix (bad input, missing file, ...).

    The CLI prints ``error: <message>`` and exits with ``exit_code``; ``--debug``
    shows the traceback.
    """

    exit_code = 1


class UsageError(EdgetlError):
    """A bad command-line argument or option value (exit code 2, like Click)."""

    exit_code = 2


class WeightsUnavailableError(EdgetlError):
    """Pretrained weights cannot be found locally and cannot be downloaded."""


class ModelFileError(EdgetlError):
    """A model, checkpoint or cache file is missing, truncated or not what it claims to be."""
