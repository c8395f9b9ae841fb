"""Keep the console readable: capture what TensorFlow and the converters print, show edgetl's own lines.

A heavy step (training, conversion, calibration, benchmarking) makes TensorFlow, tf2onnx, the
TFLite converter and ONNX Runtime print hundreds of lines from Python *and* from C++ ("Saved
artifact at ... Captures: TensorSpec(...)", ``fully_quantize: 0, inference_type: 6 ...``,
"Collecting tensor data and making histogram ...", converter ``UserWarning``\\ s). While
:class:`Capture` is active:

* file descriptors 1 and 2 point at a temporary log file (``os.dup2``), so C++ output is captured;
* ``sys.stdout`` / ``sys.stderr``, Python warnings and the ``logging`` stream handlers that wrote
  to the console (TensorFlow's, absl's) write into the same file;
* edgetl's own progress goes to the real terminal through :func:`say` / :func:`console`
  (a duplicate of the original descriptor, opened before the redirection).

When the step raises an unexpected exception, the tail of the captured text is printed with the
path of the full log (which is kept); edgetl's own one-line errors (:class:`~edgetl.errors.EdgetlError`)
stay one line. ``edgetl --verbose`` (or ``--debug``, or ``EDGETL_VERBOSE=1``) captures nothing.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, TextIO

TAIL_LINES = 40

# Log-level variables of the native libraries, set only when the user has not set them.
QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow / XLA C++ INFO and WARNING
    "GRPC_VERBOSITY": "ERROR",  # gRPC (multi-worker training)
    "GLOG_minloglevel": "2",  # glog users (MediaPipe)
    "KERAS_BACKEND": "tensorflow",
}

_ACTIVE: list["Capture"] = []


def quiet_env() -> None:
    """Default the native libraries' log levels (an explicit user setting always wins)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def verbose_requested() -> bool:
    return os.environ.get("EDGETL_VERBOSE", "").strip().lower() in ("1", "true", "yes", "on")


def active() -> "Capture | None":
    return _ACTIVE[-1] if _ACTIVE else None


def console(stream: str = "err") -> TextIO:
    """Where edgetl's own output goes: the real terminal while a capture is active, else sys.stdout/stderr."""
    cap = active()
    if cap is not None:
        return cap.console_out if stream == "out" else cap.console_err
    return sys.stdout if stream == "out" else sys.stderr


def say(line: str, stream: str = "err") -> None:
    """Print one progress line to the console (bypassing an active capture)."""
    out = console(stream)
    out.write(line + "\n")
    out.flush()


def on_terminal() -> bool:
    """Whether edgetl's standard output is an interactive terminal (the real one during a capture)."""
    try:
        return bool(console("out").isatty())
    except (AttributeError, ValueError, OSError):
        return False


class to_console:
    """Temporarily point ``sys.stdout``/``sys.stderr`` at the console (for Keras progress bars).

    A no-op when no capture is active.
    """

    def __enter__(self) -> None:
        cap = active()
        self._saved = (sys.stdout, sys.stderr) if cap is not None else None
        if cap is not None:
            sys.stdout, sys.stderr = cap.console_out, cap.console_err

    def __exit__(self, *exc: Any) -> None:
        if self._saved is not None:
            for s in (sys.stdout, sys.stderr):
                try:
                    s.flush()
                except (OSError, ValueError):
                    pass
            sys.stdout, sys.stderr = self._saved


def _real_fd(stream: Any, fd: int) -> bool:
    """True when ``stream`` writes straight to file descriptor ``fd`` (not a test double)."""
    try:
        return stream.fileno() == fd
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return False


def _flush(*streams: Any) -> None:
    for s in streams:
        try:
            s.flush()
        except (AttributeError, OSError, ValueError):
            pass


def _flush_c_stdio() -> None:
    """Flush C ``stdio`` buffers (``printf`` from native code) so they land on the right side of a redirect."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # pragma: no cover - non-POSIX
        pass


class _LogWriter(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` during a capture: lines go to the log; edgetl's own
    ``warning: ...`` lines (e.g. a stale lock taken over) are also shown on the console."""

    def __init__(self, log: TextIO, console: TextIO):
        super().__init__()
        self._log = log
        self._console = console
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._log.write(text)
        self._partial += text
        if "\n" in self._partial:
            *lines, self._partial = self._partial.split("\n")
            shown = [line for line in lines if line.startswith(FORWARD_PREFIXES)]
            if shown:
                self._console.write("\n".join(shown) + "\n")
                self._console.flush()
        return len(text)

    def flush(self) -> None:
        self._log.flush()

    def fileno(self) -> int:
        return self._log.fileno()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


# Lines printed while a capture is active that are edgetl's own messages, shown on the console too.
FORWARD_PREFIXES = ("warning: ",)
_PACKAGE_DIR = str(Path(__file__).resolve().parent)


class Capture:
    """Capture fds 1 and 2, Python output, warnings and logging while a heavy step runs.

    Args:
        what: a few words for the failure header ("export", "training").
        enabled: False captures nothing (``--verbose``/``--debug``); :func:`say` still works.
        tail_lines: how many captured lines to print after an unexpected exception.

    Use as a context manager; ``keep()`` keeps the log file after a clean exit (its path is
    :attr:`log_path`). Nested captures are no-ops (the outer one already captures everything).
    """

    def __init__(self, what: str = "this step", *, enabled: bool = True, tail_lines: int = TAIL_LINES):
        self.what = what
        self.enabled = enabled and not _ACTIVE
        self.tail_lines = tail_lines
        self.log_path: Path | None = None
        self.kept = False
        self.console_out: TextIO = sys.stdout
        self.console_err: TextIO = sys.stderr
        self._owned: list[TextIO] = []

    # ------------------------------------------------------------------ public

    def say(self, line: str) -> None:
        say(line)

    def keep(self) -> Path | None:
        """Keep the log file after exit (e.g. a format failed); returns its path."""
        self.kept = True
        return self.log_path

    def text(self) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        _flush(sys.stdout, sys.stderr)
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> "Capture":
        if not self.enabled:
            return self
        _flush(sys.stdout, sys.stderr)
        _flush_c_stdio()
        fd, name = tempfile.mkstemp(prefix=f"edgetl-{self.what.replace(' ', '-')}-", suffix=".log")
        self.log_path = Path(name)
        self._log_fd = fd
        self._orig_streams = (sys.stdout, sys.stderr)
        # The console: a duplicate of the real descriptor when sys.stdout/err write to it, else the
        # stream object itself (pytest's capsys, typer's CliRunner, an embedding application).
        self._saved_fds: dict[int, int] = {}
        for target in (1, 2):
            try:
                self._saved_fds[target] = os.dup(target)
            except OSError:
                pass
        self.console_out = self._console_for(sys.stdout, 1)
        self.console_err = self._console_for(sys.stderr, 2)
        for target in self._saved_fds:
            os.dup2(fd, target)
        self._log = open(fd, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)
        self._text = _LogWriter(self._log, self.console_err)
        sys.stdout = sys.stderr = self._text
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.showwarning = self._showwarning
        self._handlers = self._retarget_logging()
        _ACTIVE.append(self)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if not self.enabled:
            return False
        _ACTIVE.remove(self)
        for handler, stream in self._handlers:
            handler.setStream(stream)
        self._warnings.__exit__(None, None, None)
        _flush(self._text, *self._orig_streams)
        _flush_c_stdio()
        sys.stdout, sys.stderr = self._orig_streams
        for target, saved in self._saved_fds.items():
            os.dup2(saved, target)
            os.close(saved)
        self._log.close()
        os.close(self._log_fd)
        for f in self._owned:
            try:
                f.close()
            except OSError:
                pass
        assert self.log_path is not None
        if exc_type is not None and self._show_on(exc_type):
            self._print_tail()
            self.kept = True
        if not self.kept:
            try:
                self.log_path.unlink()
            except OSError:
                pass
        return False

    # ------------------------------------------------------------------ internals

    def _console_for(self, stream: Any, fd: int) -> TextIO:
        if fd in self._saved_fds and _real_fd(stream, fd):
            f = open(os.dup(self._saved_fds[fd]), "w", encoding=getattr(stream, "encoding", None) or "utf-8",
                     errors="replace", buffering=1)
            self._owned.append(f)
            return f
        return stream

    def _showwarning(self, message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        self._log.write(warnings.formatwarning(message, category, filename, lineno, line))
        if str(Path(filename).resolve()).startswith(_PACKAGE_DIR):  # edgetl's own warning: the user must see it
            say(f"warning: {message}")

    def _retarget_logging(self) -> list[tuple[logging.StreamHandler, Any]]:
        """Point console logging handlers (root, TensorFlow, absl, ...) at the log file."""
        consoles = {id(s) for s in (*self._orig_streams, sys.__stdout__, sys.__stderr__) if s is not None}
        loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
        changed: list[tuple[logging.StreamHandler, Any]] = []
        seen: set[int] = set()
        for lg in loggers:
            for h in lg.handlers:
                if id(h) in seen or not isinstance(h, logging.StreamHandler) or isinstance(h, logging.FileHandler):
                    continue
                seen.add(id(h))
                if id(getattr(h, "stream", None)) in consoles:
                    changed.append((h, h.setStream(self._text)))
        return changed

    @staticmethod
    def _show_on(exc_type: Any) -> bool:
        """Unexpected exceptions show the captured output; edgetl's own errors, exits and Ctrl-C do not."""
        from edgetl.errors import EdgetlError

        quiet_types: tuple[type, ...] = (EdgetlError, KeyboardInterrupt, SystemExit)
        try:
            import typer

            quiet_types += (typer.Exit, typer.Abort)
            try:  # Typer >= 0.17 vendors Click
                from typer._click.exceptions import ClickException
            except ImportError:  # pragma: no cover
                from click.exceptions import ClickException  # type: ignore[no-redef]
            quiet_types += (ClickException,)
        except ImportError:  # pragma: no cover - the library without the CLI
            pass
        return not issubclass(exc_type, quiet_types)

    def _print_tail(self) -> None:
        lines = self.text().splitlines()
        if not lines:
            return
        tail = lines[-self.tail_lines:]
        err = sys.stderr
        head = (f"--- output captured during {self.what}" + (f" (last {len(tail)} of {len(lines)} lines)" if len(tail) < len(lines) else "")
                + f"; full log: {self.log_path} ---")
        err.write(head + "\n" + "\n".join(tail) + "\n--- end of captured output ---\n")
        err.flush()



class Progress:
    """Counts, rate and time left of a step that may take more than a few seconds.

    Nothing is printed for a step that ends within ``after`` seconds. On a terminal the line is
    redrawn in place (``\\r``, at most 5 times a second); anywhere else (a log, CI, ``| tee``) it is
    a plain line at most every ``every`` seconds, and a last one when the count is complete.

    Args:
        what: what is being counted (``"checking images"``, ``"GPTQ layers"``).
        say: where plain lines go (default :func:`say`); a custom ``say`` always gets plain lines.
        terminal: redraw in place (default: when ``say`` is the default and the console is a terminal).
        clock: seconds (tests pass a fake clock).
    """

    def __init__(self, what: str, say: Any = None, *, terminal: bool | None = None, after: float = 2.0,
                 every: float = 10.0, clock: Any = None):
        import time

        self.what = what
        default = say is None or say is globals()["say"]
        self._say = say or globals()["say"]
        if terminal is None:
            try:
                terminal = default and bool(console("err").isatty())
            except (AttributeError, ValueError, OSError):
                terminal = False
        self.terminal = terminal
        self.after, self.every = after, every
        self.clock = clock or time.monotonic
        self.start: float | None = self.clock()  # the step starts when its progress is set up
        self.last: float | None = None
        self.shown = False

    def line(self, done: int, total: int | None, now: float) -> str:
        """``what: done/total (rate/s, about N s left)``."""
        elapsed = max(now - (self.start or now), 1e-9)
        rate = done / elapsed
        text = f"{self.what}: {done}" + (f"/{total}" if total else "")
        text += f" ({rate:.1f}/s" if rate >= 1 else f" ({elapsed / max(done, 1):.1f} s each"
        if total and done < total and done > 0:
            text += f", about {_duration((total - done) / rate)} left"
        elif total and done >= total:
            text += f", {_duration(elapsed)}"
        return text + ")"

    def update(self, done: int, total: int | None = None) -> None:
        now = self.clock()
        if self.start is None:
            self.start = now
        finished = bool(total) and done >= total
        if now - self.start < self.after and not (finished and self.shown):
            return
        if self.terminal:
            if finished or self.last is None or now - self.last >= 0.2:
                out = console("err")
                out.write("\r" + self.line(done, total, now) + ("\n" if finished else ""))
                out.flush()
                self.last, self.shown = now, True
        elif finished and self.shown or self.last is None or now - self.last >= self.every:
            self._say(self.line(done, total, now))
            self.last, self.shown = now, True


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"
