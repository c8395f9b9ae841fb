"""Output-folder guards: one writer per folder, and checks made before any long work starts.

:class:`DirLock` makes a second ``edgetl train`` (or ``edgetl export``) pointed at a folder
that another live edgetl process is writing refuse at once instead of interleaving files::

    with DirLock(run_dir, what="training run"):
        ...  # only this process writes run_dir

The lock is ``<folder>/.edgetl.lock``: an exclusive, non-blocking ``fcntl.flock`` on that
file, plus the holder's PID written into it (for the error message and for file systems
without ``flock``). The kernel drops a ``flock`` when its process dies, even by SIGKILL, so
a lock file left by a dead process is simply taken over (with a warning); the PID alone is
only trusted where ``flock`` is unavailable (then a PID that is no longer running is stale).

:func:`check_output_dir` refuses, before hours of training, an output path under a regular
file, a folder that cannot be written, or a file system with less free space than needed.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

from edgetl.errors import EdgetlError, UsageError

LOCK_NAME = ".edgetl.lock"
#: Free space required in the output folder's file system before training starts.
DEFAULT_MIN_FREE_MB = 100


class LockedError(EdgetlError):
    """Another live edgetl process holds the folder's lock."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return None


class DirLock:
    """An exclusive lock on a folder (created if needed) for the life of one process's writing.

    Args:
        folder: the folder to lock; the lock file is ``folder/.edgetl.lock``.
        what: words for the error message ("training run", "export folder").
        warn: called with one line when a stale lock is taken over (default: stderr).

    Raises (on :meth:`acquire`):
        LockedError: another live process holds the lock (message names its PID).
        EdgetlError: the folder cannot be created or written.
    """

    def __init__(self, folder: str | Path, what: str = "folder", warn: Callable[[str], None] | None = None):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr, flush=True))
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "DirLock":
        if self._fd is not None:
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgetlError(f"cannot create {self.folder}: {exc.strerror or exc}") from None
        for _ in range(10):  # retried only when the file is replaced under us (see below)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise EdgetlError(f"cannot write to {self.folder}: {exc.strerror or exc}") from None
            try:
                previous = self._lock_fd(fd)
            except BaseException:
                os.close(fd)
                raise
            # The holder unlinks the file when it releases; if that happened between our
            # open() and flock(), we hold a lock on a deleted inode: open the new file.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            if previous is not None and previous != os.getpid():
                self.warn(f"taking over a stale lock on {self.folder} left by PID {previous} (no longer running)")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            os.fsync(fd)
            self._fd = fd
            return self
        raise LockedError(f"{self.folder} is in use by another edgetl process (its lock file keeps changing)")

    def _lock_fd(self, fd: int) -> int | None:
        """Lock ``fd`` or raise LockedError; returns the PID recorded by a previous (dead) holder, if any."""
        previous = _read_pid(self.path)
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return previous
        except ImportError:  # pragma: no cover - not POSIX: PID file only
            pass
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = _read_pid(self.path)
                who = f"PID {holder}" if holder else "another process"
                raise LockedError(
                    f"{self.folder} is in use by another edgetl {self.what} ({who}); wait for it to finish "
                    f"or choose another output folder"
                ) from None
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise EdgetlError(f"cannot lock {self.path}: {exc.strerror or exc}") from None
        # No flock on this file system: trust the PID file.
        if previous is not None and previous != os.getpid() and _pid_alive(previous):
            raise LockedError(f"{self.folder} is in use by another edgetl {self.what} (PID {previous}); "
                              f"wait for it to finish or choose another output folder")
        return previous

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if os.fstat(fd).st_nlink and os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                os.unlink(self.path)  # unlink while still locked, then unlock by closing
        except OSError:
            pass  # the folder was removed (e.g. a failed run cleaned up): nothing to tidy
        os.close(fd)

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def free_bytes(path: str | Path) -> int:
    """Free bytes (for this user) on the file system holding ``path`` or its nearest existing parent."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def check_output_dir(path: str | Path, min_free_mb: float = DEFAULT_MIN_FREE_MB, option: str = "--out") -> None:
    """Fail fast on an output folder that cannot work: under a regular file, not a folder, no space.

    Nothing is created. ``EDGETL_MIN_FREE_MB`` overrides ``min_free_mb``.

    Raises:
        UsageError: ``path`` is an existing file (exit code 2).
        EdgetlError: with one line saying what is wrong.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{option} {p} exists and is not a folder")
    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise EdgetlError(f"cannot write to the run directory {p}: {parent} is a file, not a folder")
            break
    env = os.environ.get("EDGETL_MIN_FREE_MB")
    if env:
        try:
            min_free_mb = float(env)
        except ValueError:
            raise EdgetlError(f"EDGETL_MIN_FREE_MB must be a number of megabytes, got {env!r}") from None
    try:
        free = free_bytes(p)
    except OSError:
        return  # cannot tell: the write probe that follows will report a real problem
    if free < min_free_mb * 2**20:
        raise EdgetlError(f"not enough free space for {p}: {free / 2**20:.0f} MB free, at least {min_free_mb:.0f} MB needed "
                          f"(free some space or choose another {option})")
