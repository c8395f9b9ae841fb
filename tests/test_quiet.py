"""edgetl/quiet.py: tool output is captured (C++ file descriptors included), edgetl's own lines are not.

Each case runs in a subprocess whose stdout/stderr are files, so the file-descriptor redirection
is exercised for real (pytest's own capture sits on the same descriptors in-process).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

NOISE = textwrap.dedent(
    """
    import ctypes, logging, os, sys, warnings
    from edgetl.errors import EdgetlError
    from edgetl.quiet import Capture, say

    logging.basicConfig()

    def noisy():
        print("PY-STDOUT-NOISE")
        print("PY-STDERR-NOISE", file=sys.stderr)
        os.write(1, b"FD1-NOISE\\n")
        os.write(2, b"FD2-NOISE\\n")
        ctypes.CDLL(None).printf(b"C-PRINTF-NOISE\\n")  # C stdio, buffered: flushed into the log
        warnings.warn("WARN-NOISE")
        logging.getLogger("tool").warning("LOG-NOISE")
        say("PROGRESS-LINE")
    """
)
NOISE_WORDS = ["PY-STDOUT-NOISE", "PY-STDERR-NOISE", "FD1-NOISE", "FD2-NOISE", "C-PRINTF-NOISE", "WARN-NOISE", "LOG-NOISE"]


def _run(tmp_path: Path, body: str) -> tuple[int, str, str]:
    script = tmp_path / "case.py"
    script.write_text(NOISE + textwrap.dedent(body))
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        rc = subprocess.run([sys.executable, str(script)], stdout=fo, stderr=fe, timeout=60, cwd=tmp_path).returncode
    return rc, out.read_text(), err.read_text()


def test_capture_hides_tool_output_and_shows_progress(tmp_path):
    rc, out, err = _run(tmp_path, """
        with Capture("step") as cap:
            noisy()
        print("LOG-EXISTS", cap.log_path.exists())
        print("AFTER-ON-STDOUT")
    """)
    assert rc == 0, err
    for word in NOISE_WORDS:
        assert word not in out + err, word
    assert err.strip() == "PROGRESS-LINE"  # edgetl's own line reached the real stderr
    assert "LOG-EXISTS False" in out and "AFTER-ON-STDOUT" in out  # streams restored, log removed


def test_edgetl_warnings_reach_the_console(tmp_path):
    """edgetl's own 'warning: ...' lines (e.g. a stale lock taken over) and warnings raised in edgetl's code."""
    rc, out, err = _run(tmp_path, """
        import edgetl.quiet
        with Capture("step"):
            noisy()
            print("warning: taking over a stale lock", file=sys.stderr)
            warnings.warn_explicit("rebuilding a cache", RuntimeWarning, filename=edgetl.quiet.__file__, lineno=1)
    """)
    assert rc == 0, err
    assert err.splitlines() == ["PROGRESS-LINE", "warning: taking over a stale lock", "warning: rebuilding a cache"]
    for word in NOISE_WORDS:
        assert word not in out + err, word


def test_unexpected_error_shows_the_captured_tail_and_keeps_the_log(tmp_path):
    rc, out, err = _run(tmp_path, """
        with Capture("step"):
            noisy()
            raise RuntimeError("boom")
    """)
    assert rc == 1
    assert "RuntimeError: boom" in err
    assert "--- output captured during step; full log: " in err
    for word in NOISE_WORDS:
        assert word in err, word  # every kind of captured output is in the tail
    log = Path(err.split("full log: ", 1)[1].split(" ---", 1)[0])
    text = log.read_text()
    assert "FD1-NOISE" in text and "C-PRINTF-NOISE" in text
    log.unlink()


def test_tail_is_limited_to_the_last_lines(tmp_path):
    rc, out, err = _run(tmp_path, """
        with Capture("step", tail_lines=5):
            for i in range(100):
                print(f"line-{i}")
            raise RuntimeError("boom")
    """)
    assert rc == 1
    assert "(last 5 of 100 lines)" in err and "line-99" in err and "line-94" not in err
    Path(err.split("full log: ", 1)[1].split(" ---", 1)[0]).unlink()


def test_edgetl_errors_stay_one_line(tmp_path):
    rc, out, err = _run(tmp_path, """
        try:
            with Capture("step") as cap:
                noisy()
                raise EdgetlError("bad input")
        except EdgetlError as exc:
            print(f"error: {exc}", file=sys.stderr)
        print("LOG-EXISTS", cap.log_path.exists())
    """)
    assert rc == 0
    assert err.splitlines() == ["PROGRESS-LINE", "error: bad input"]
    assert "LOG-EXISTS False" in out


def test_disabled_capture_shows_everything(tmp_path):
    rc, out, err = _run(tmp_path, """
        with Capture("step", enabled=False):
            noisy()
    """)
    assert rc == 0
    for word in NOISE_WORDS:
        assert word in out + err, word


def test_in_process_streams_without_a_descriptor(capsys):
    """Under capsys / CliRunner (no real fd), progress goes to the replaced stream, prints are captured."""
    from edgetl import quiet

    with quiet.Capture("step"):
        print("HIDDEN")
        quiet.say("SHOWN")
        with quiet.to_console():
            print("BAR")  # Keras progress bars print to sys.stdout inside to_console()
    out, err = capsys.readouterr()
    assert "HIDDEN" not in out + err
    assert err == "SHOWN\n" and out == "BAR\n"


def test_quiet_env_respects_user_settings(monkeypatch):
    from edgetl import quiet

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    quiet.quiet_env()
    import os

    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"  # the user's choice wins
    assert os.environ["GRPC_VERBOSITY"] == "ERROR"


@pytest.mark.parametrize("verbose, tty, mode", [(0, True, "off"), (1, True, "bars"), (1, False, "lines"), (2, True, "lines")])
def test_progress_mode(monkeypatch, verbose, tty, mode):
    from edgetl import quiet, train

    monkeypatch.setattr(quiet, "on_terminal", lambda: tty)
    assert train.progress_mode(verbose) == mode
