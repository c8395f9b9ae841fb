"""Frozen-base embeddings on disk: ``.npy`` shards keyed by what produced them (no TensorFlow here).

The feature-extraction pass decodes the images a shard at a time, embeds them and writes each shard
atomically (temp + rename), so no code path holds every decoded image, a killed pass resumes from
the last finished shard, and a later run that changes only head settings finds every shard done.
The folder name is a hash of everything the numbers depend on (the files with their sizes and
modification times, the frozen weights, the preprocessing, the seed and augmentation of the views,
the shard size); ``key.json`` in it says what that was. Shards of one part are joined once into one
``.npy`` file that the head reads memory-mapped.

Location: ``$EDGETL_EMBED_CACHE``, else ``cache_dir()/embeddings`` (see :mod:`edgetl.models.weights`).

Size: after each pass the cache is trimmed to ``$EDGETL_EMBED_CACHE_MAX_GB`` (default
``DEFAULT_MAX_GB``; 0 keeps nothing but the folder just used): the least recently used key folders
go first. A folder that a live process has open (a shared ``flock`` on its ``.inuse`` file, held
while the run uses it) is never removed, nor is the one the run just used, even when it alone is
over the limit. Removal renames the folder away first, so a reader never sees half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from edgetl.errors import EdgetlError
from edgetl.report import atomic_write, atomic_write_text

CACHE_VERSION = 1
ENV = "EDGETL_EMBED_CACHE"
MAX_ENV = "EDGETL_EMBED_CACHE_MAX_GB"
#: default size limit of the whole cache (GB = 1e9 bytes): about 2.6 million 1280-float32 embeddings
DEFAULT_MAX_GB = 20.0
INUSE = ".inuse"
#: batches per shard: decoded pixels held at once are about ``SHARD_BATCHES * batch * H * W * 3`` bytes.
SHARD_BATCHES = 16
#: test hook: called as ``after_shard(part, index)`` after each shard is written (tests raise here to
#: simulate a kill); None outside tests.
after_shard: Callable[[str, int], None] | None = None


def cache_root() -> Path:
    env = os.environ.get(ENV)
    if env:
        return Path(env)
    from edgetl.models.weights import cache_dir

    return cache_dir() / "embeddings"


def files_stamp(paths: Iterable[str]) -> str:
    """sha256 of the ``absolute path <TAB> size <TAB> mtime_ns`` lines, in order: a file replaced or
    touched (even with the same size) changes it."""
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            stamp = f"{st.st_size}\t{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{os.path.abspath(p)}\t{stamp}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def weights_sha256(arrays: Sequence[np.ndarray]) -> str:
    """sha256 of the frozen weights (shapes, dtypes and bytes): covers the backbone, its weight file
    and a seeded random init alike."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def key_doc(spec: Any, cfg: Any, frozen_weights: Sequence[np.ndarray], ds: Any, augmented: bool) -> dict[str, Any]:
    """Everything a run's cached embeddings depend on: the backbone and its frozen weights, the
    preprocessing (input size, resize), the train and val files, and for the augmented views the
    seed and augmentation (not their number: a run with more views reuses the first ones)."""
    from dataclasses import asdict

    aug = {k: v for k, v in asdict(cfg.augment).items() if k != "views"}
    return {"backbone": spec.name, "weights_sha256": weights_sha256(frozen_weights),
            "preprocessing": spec.preprocessing.to_dict(), "max_pixels": cfg.max_pixels,
            "train_files": files_stamp(ds.train.paths), "val_files": files_stamp(ds.val.paths),
            "seed": cfg.seed, "augment": aug if augmented else None,
            "shard_size": max(cfg.batch_size, 32) * SHARD_BATCHES}


class ShardCache:
    """The shards of one cache key: ``<root>/<key>/<part>/<index>.npy`` plus joined ``<name>.npy``."""

    def __init__(self, key_doc: dict[str, Any], root: Path | None = None):
        doc = {"cache_version": CACHE_VERSION, **key_doc}
        self.key = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:32]
        self.folder = (root or cache_root()) / self.key
        self.shard_size = int(key_doc["shard_size"])
        self.computed = 0
        self.reused = 0
        self.rows_computed = 0
        self.evicted: dict[str, Any] = {"folders": 0, "bytes": 0}
        self._inuse: Any = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if not (self.folder / "key.json").is_file():
                atomic_write_text(self.folder / "key.json", json.dumps(doc, indent=2, sort_keys=True, default=str))
            os.utime(self.folder / "key.json")  # last used: the eviction order
            self._inuse = _hold(self.folder / INUSE)
        except OSError as exc:
            raise EdgetlError(f"cannot write the embedding cache {self.folder}: {exc.strerror or exc} (set {ENV} to another folder)") from None

    def shard_path(self, part: str, index: int) -> Path:
        return self.folder / part / f"{index:05d}.npy"

    def complete(self, parts: Sequence[tuple[str, int]]) -> bool:
        """Whether every shard of every ``(part, rows)`` is on disk."""
        return all(self.shard_path(part, i).is_file() for part, n in parts for i in range((n + self.shard_size - 1) // self.shard_size))

    def fill(self, part: str, n: int, compute: Callable[[int, int], np.ndarray]) -> None:
        """Every shard of ``part`` (``n`` rows): ``compute(start, stop)`` for each one not on disk yet."""
        for index, start in enumerate(range(0, n, self.shard_size)):
            path = self.shard_path(part, index)
            if path.is_file():
                self.reused += 1
                continue
            stop = min(n, start + self.shard_size)
            arr = np.ascontiguousarray(compute(start, stop))
            if len(arr) != stop - start:
                raise EdgetlError(f"internal error: shard {part}/{index} has {len(arr)} rows, expected {stop - start}")
            atomic_write(path, lambda fh: np.save(fh, arr, allow_pickle=False))
            self.computed += 1
            self.rows_computed += len(arr)
            if after_shard is not None:
                after_shard(part, index)

    def read(self, parts: Sequence[str], n: int, dim: int) -> np.ndarray:
        """The shards of ``parts`` (``n`` rows each) one after another, joined once into one file and
        returned memory-mapped (read-only)."""
        path = self.folder / ("+".join(parts) + ".npy")
        if not path.is_file():
            self._join(parts, n, dim, path)
        return np.load(path, mmap_mode="r") if n else np.zeros((0, dim), np.float32)

    def _join(self, parts: Sequence[str], n: int, dim: int, path: Path) -> None:
        if not n:
            return
        first = np.load(self.shard_path(parts[0], 0), mmap_mode="r")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=first.dtype, shape=(n * len(parts), dim))
        try:
            row = 0
            for part in parts:
                for index in range((n + self.shard_size - 1) // self.shard_size):
                    shard = np.load(self.shard_path(part, index), mmap_mode="r")
                    out[row:row + len(shard)] = shard
                    row += len(shard)
            if row != len(out):
                raise EdgetlError(f"internal error: the embedding shards of {self.folder} hold {row} rows, expected {len(out)}")
            out.flush()
            del out
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def trim(self, max_bytes: float | None = None) -> dict[str, Any]:
        """Evict other key folders, least recently used first, until the cache is within ``max_bytes``
        (default: :func:`max_bytes_limit`); returns (and adds to ``self.evicted``) what was removed."""
        got = evict(self.folder.parent, max_bytes if max_bytes is not None else max_bytes_limit(), keep=self.folder)
        self.evicted["folders"] += got["folders"]
        self.evicted["bytes"] += got["bytes"]
        return got

    def close(self) -> None:
        """Release the in-use lock (also released when the process exits)."""
        if self._inuse is not None:
            self._inuse.close()
            self._inuse = None

    def to_dict(self) -> dict[str, Any]:
        return {"dir": str(self.folder), "key": self.key, "shard_size": self.shard_size,
                "shards_computed": self.computed, "shards_reused": self.reused, "rows_computed": self.rows_computed,
                "evicted_folders": self.evicted["folders"], "evicted_bytes": self.evicted["bytes"]}


def max_bytes_limit() -> float:
    """The cache's size limit in bytes, from ``$EDGETL_EMBED_CACHE_MAX_GB`` (a bad value: one-line error)."""
    raw = os.environ.get(MAX_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_MAX_GB * 1e9
    try:
        gb = float(raw)
    except ValueError:
        gb = -1.0
    if not gb >= 0:  # also NaN
        raise EdgetlError(f"{MAX_ENV} must be a number of GB >= 0, got {raw!r}")
    return gb * 1e9


def _hold(path: Path) -> Any:
    """Open ``path`` with a shared ``flock`` (a sign that this folder is in use); None where flock is unavailable."""
    fh = open(path, "a")  # noqa: SIM115 - held open for the lock's lifetime
    try:
        import fcntl

        fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except (ImportError, OSError):
        pass  # no flock here (or an exclusive holder mid-eviction): the run still works, only unprotected
    return fh


def _in_use(folder: Path) -> bool:
    """Whether a live process holds ``folder``'s in-use lock (a non-blocking exclusive lock fails)."""
    path = folder / INUSE
    if not path.is_file():
        return False
    try:
        import fcntl
    except ImportError:
        return True  # cannot tell: never remove
    try:
        with open(path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fh, fcntl.LOCK_UN)
    except OSError:
        return True  # held by another process (or the lock cannot be taken): keep it
    return False


def _folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def evict(root: Path, max_bytes: float, keep: Path | None = None) -> dict[str, Any]:
    """Remove key folders under ``root``, least recently used (``key.json``'s mtime) first, until the
    folders left total at most ``max_bytes``; never ``keep`` nor a folder in use by a live process."""
    folders = []
    for d in (root.iterdir() if root.is_dir() else []):
        if d.is_dir() and not d.name.startswith(".") and (d / "key.json").is_file():
            try:
                used = (d / "key.json").stat().st_mtime
            except OSError:
                continue
            folders.append((used, d, _folder_bytes(d)))
    total = sum(b for _, _, b in folders)
    out: dict[str, Any] = {"folders": 0, "bytes": 0}
    for _, d, size in sorted(folders, key=lambda t: t[0]):
        if total <= max_bytes:
            break
        if (keep is not None and d.resolve() == keep.resolve()) or _in_use(d):
            continue
        trash = root / f".evicting-{d.name}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            os.replace(d, trash)
        except OSError:
            continue
        shutil.rmtree(trash, ignore_errors=True)
        total -= size
        out["folders"] += 1
        out["bytes"] += size
    return out
