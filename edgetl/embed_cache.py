"""Frozen-base embeddings on disk: ``.npy`` shards keyed by what produced them (no TensorFlow here).

The feature-extraction pass decodes the images a shard at a time, embeds them and writes each shard
atomically (temp + rename), so no code path holds every decoded image, a killed pass resumes from
the last finished shard, and a later run that changes only head settings finds every shard done.
The folder name is a hash of everything the numbers depend on (the files with their sizes and
modification times, the frozen weights, the preprocessing, the seed and augmentation of the views,
the shard size); ``key.json`` in it says what that was. Shards of one part are joined once into one
``.npy`` file that the head reads memory-mapped.

Location: ``$EDGETL_EMBED_CACHE``, else ``cache_dir()/embeddings`` (see :mod:`edgetl.models.weights`).
Nothing is evicted: delete the folder to reclaim the space.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from edgetl.errors import EdgetlError
from edgetl.report import atomic_write, atomic_write_text

CACHE_VERSION = 1
ENV = "EDGETL_EMBED_CACHE"
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
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if not (self.folder / "key.json").is_file():
                atomic_write_text(self.folder / "key.json", json.dumps(doc, indent=2, sort_keys=True, default=str))
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

    def to_dict(self) -> dict[str, Any]:
        return {"dir": str(self.folder), "key": self.key, "shard_size": self.shard_size,
                "shards_computed": self.computed, "shards_reused": self.reused, "rows_computed": self.rows_computed}
