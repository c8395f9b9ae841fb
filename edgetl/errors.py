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


def first_line(exc: BaseException, limit: int = 300, last: bool = False) -> str:
    """The first (or ``last``) non-empty line of an exception's text, at most ``limit`` characters:
    converters and runtimes raise with pages of text, edgetl shows one line."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return (lines[-1] if last else lines[0])[:limit] if lines else ""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``"TypeName: first line"``; edgetl's own errors are already one line and keep their text alone."""
    if isinstance(exc, EdgetlError):
        return first_line(exc, limit)
    text = first_line(exc, limit)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
