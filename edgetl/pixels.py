"""Decoded images that need not fit in RAM: a store of uint8 (N, H, W, 3) model inputs that export and
bench fill once and every runner reads a chunk at a time.

A :class:`PixelStore` is one preallocated array in RAM while every store alive together fits the RAM
budget (:func:`ram_budget`: ``PIXEL_RAM_MB``, or the ``EDGETL_PIXEL_RAM_MB`` environment variable);
past it, its rows are written once to a temporary file (in ``TMPDIR``) and read back with positioned
reads (``os.preadv``), not memory-mapped, so the pages read stay in the page cache instead of in the
process. The file is unlinked as soon as it is opened: nothing is left on disk when the store is
closed, garbage-collected, or the process dies.

It answers what callers do with an array of images: ``len``, ``.shape``, ``px[a:b]`` and ``px[i]``
(numpy arrays), ``px[index_array]`` (a lazy :class:`PixelView`: nothing is read until it is sliced),
:meth:`chunks`. ``np.asarray`` of a store works in RAM and refuses on disk, so no caller can turn a
large set back into one array by accident. :class:`RowStore` (rows of any dtype, in RAM or in a file)
is shared with the fine-tune activation cache (:mod:`edgetl.train.activations`).

This module imports numpy only (and :mod:`edgetl.preprocess` to decode), so it runs on a device.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from edgetl.errors import EdgetlError, UsageError

#: decoded pixels every store alive together may hold in RAM (MB) before the next one goes to disk
PIXEL_RAM_MB = 1024
#: environment variable that overrides :data:`PIXEL_RAM_MB` (MB; 0: every store on disk)
PIXEL_RAM_ENV = "EDGETL_PIXEL_RAM_MB"

_lock = threading.Lock()
_ram_used = [0]  # bytes reserved by the stores in RAM that are alive
_scopes = threading.local()  # .open: a list per active closing_stores(), of weak references to the stores made in it


def ram_budget() -> int:
    """Bytes of decoded pixels all stores may hold in RAM (``EDGETL_PIXEL_RAM_MB`` or :data:`PIXEL_RAM_MB`)."""
    text = os.environ.get(PIXEL_RAM_ENV, "").strip()
    if not text:
        return PIXEL_RAM_MB * 2**20
    try:
        mb = float(text)
    except ValueError:
        mb = -1.0
    if not mb >= 0:
        raise UsageError(f"{PIXEL_RAM_ENV} must be a number of MB >= 0, got {text!r}")
    return int(mb * 2**20)


def ram_in_use() -> int:
    """Bytes reserved in RAM by the pixel stores alive now."""
    return _ram_used[0]


def _reserve(nbytes: int, budget: int) -> bool:
    with _lock:
        if _ram_used[0] + nbytes > budget:
            return False
        _ram_used[0] += nbytes
        return True


def _release(nbytes: int) -> None:
    with _lock:
        _ram_used[0] -= nbytes


class RowStore:
    """``n`` rows of ``dtype`` values of shape ``row_shape``: in RAM (``path`` None), or in a ``.npy``
    file at ``path`` written with ``pwrite`` and read with ``preadv``; filled in order by :meth:`append`."""

    def __init__(self, n: int, row_shape: tuple[int, ...], dtype: Any, path: Path | None = None):
        self.n, self.row_shape, self.path = int(n), tuple(int(d) for d in row_shape), path
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.filled = 0
        self.arr: np.ndarray | None = None
        self.fd: int | None = None
        if path is None:
            self.arr = np.empty((self.n, *self.row_shape), self.dtype)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:  # a valid .npy (np.load(path, mmap_mode="r") reads it back)
            np.lib.format.write_array_header_1_0(fh, {"descr": self.dtype.str, "fortran_order": False,
                                                      "shape": (self.n, *self.row_shape)})
            self.offset = fh.tell()
        self.fd = os.open(path, os.O_RDWR)

    @property
    def on_disk(self) -> bool:
        return self.fd is not None

    @property
    def nbytes(self) -> int:
        return self.n * self.row_bytes

    def append(self, chunk: np.ndarray) -> None:
        chunk = np.ascontiguousarray(chunk, self.dtype)
        stop = self.filled + len(chunk)
        if stop > self.n:
            raise ValueError(f"store overflow: {stop} > {self.n} rows")
        if self.arr is not None:
            self.arr[self.filled:stop] = chunk
        else:
            view, done = memoryview(chunk).cast("B"), 0
            while done < len(view):
                done += os.pwrite(self.fd, view[done:], self.offset + self.filled * self.row_bytes + done)
        self.filled = stop

    def _read(self, out: np.ndarray, row: int, count: int, at: int) -> None:
        buf = memoryview(out).cast("B")[at * self.row_bytes:(at + count) * self.row_bytes]
        done = 0
        while done < len(buf):
            got = os.preadv(self.fd, [buf[done:]], self.offset + row * self.row_bytes + done)
            if got <= 0:
                raise OSError(f"short read from {self.path}")
            done += got

    def gather(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (in that order): from disk, one read per run of consecutive rows."""
        idx = np.asarray(idx, np.int64).reshape(-1)
        if self.arr is not None:
            return self.arr[idx]
        out = np.empty((len(idx), *self.row_shape), self.dtype)
        if len(idx):
            cut = np.flatnonzero(np.diff(idx) != 1) + 1
            for s, e in zip(np.r_[0, cut], np.r_[cut, len(idx)]):
                self._read(out, int(idx[s]), int(e - s), int(s))
        return out

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start:stop]`` (a view in RAM, one read from disk)."""
        stop = min(stop, self.n)
        if self.arr is not None:
            return self.arr[start:stop]
        out = np.empty((max(stop - start, 0), *self.row_shape), self.dtype)
        if stop > start:
            self._read(out, start, stop - start, 0)
        return out

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.arr = None


def _finish(fd: int | None, reserved: int) -> None:
    """What a :class:`PixelStore` gives back when closed or collected: its file and its RAM reservation."""
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
    if reserved:
        _release(reserved)


class _Pixels:
    """What a store and a view share: numpy-like access to uint8 (N, H, W, 3) images read on demand."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __len__(self) -> int:
        return len(self._index())

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self._store().row_shape)

    @property
    def nbytes(self) -> int:
        return len(self) * self._store().row_bytes

    @property
    def on_disk(self) -> bool:
        return self._store().on_disk

    def __getitem__(self, key: Any) -> Any:
        idx = self._index()
        if isinstance(key, tuple):  # px[i, ...] / px[a:b, ...]: the images first, then numpy's indexing
            if not key or not isinstance(key[0], (int, np.integer, slice)):
                raise IndexError("images are indexed by an integer or a slice before further axes")
            return self[key[0]][key[1:] if isinstance(key[0], (int, np.integer)) else (slice(None),) + key[1:]]
        if isinstance(key, (int, np.integer)):
            i = int(key)
            if not -len(idx) <= i < len(idx):
                raise IndexError(f"index {i} is out of bounds for {len(idx)} images")
            i %= len(idx)
            return self._rows(idx[i:i + 1])[0]
        if isinstance(key, slice):
            return self._rows(idx[key])
        sel = np.asarray(key)
        if sel.dtype == bool:
            if sel.shape != (len(idx),):
                raise IndexError(f"boolean index of shape {sel.shape} for {len(idx)} images")
            sel = np.flatnonzero(sel)
        if sel.size and sel.dtype.kind not in "iu":
            raise IndexError(f"images are indexed by integers, slices or booleans, not {sel.dtype}")
        base = np.arange(idx.start, idx.stop) if isinstance(idx, range) else idx
        return PixelView(self._store(), base[sel.astype(np.int64).reshape(-1)])  # numpy's bounds check

    def _rows(self, idx: Any) -> np.ndarray:
        store = self._store()
        if isinstance(idx, range) and idx.step == 1:
            return store.rows(idx.start, idx.stop)
        return store.gather(np.asarray(idx, np.int64))

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        """The images in order, ``size`` at a time (numpy arrays)."""
        for start in range(0, len(self), max(1, int(size))):
            yield self[start:start + size]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if self.on_disk:
            raise TypeError(f"{len(self)} images on disk are read a chunk at a time (px[a:b]), not as one array")
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, {'disk' if self.on_disk else 'RAM'})"


class PixelStore(RowStore, _Pixels):
    """``n`` decoded images of ``size`` = (H, W): in RAM while the budget allows, else in an unlinked temp file.

    Args:
        budget: bytes all stores alive may hold in RAM (default :func:`ram_budget`).
        in_ram: True: in RAM whatever the budget, not counted in it (for callers that need one array).
        dir: folder of the temporary file (default: ``tempfile``'s, i.e. ``TMPDIR``).
    """

    def __init__(self, n: int, size: tuple[int, int], budget: int | None = None, in_ram: bool = False,
                 dir: str | Path | None = None):
        h, w = int(size[0]), int(size[1])
        need = int(n) * h * w * 3
        reserved = 0
        if in_ram or _reserve(need, ram_budget() if budget is None else budget):
            reserved = 0 if in_ram else need
            super().__init__(n, (h, w, 3), np.uint8)
        else:
            try:
                fd, name = tempfile.mkstemp(prefix="edgetl-pixels-", suffix=".npy", dir=dir)
            except OSError as exc:
                raise EdgetlError(f"cannot write decoded images to a temporary file: {exc.strerror or exc}") from None
            os.close(fd)
            try:
                super().__init__(n, (h, w, 3), np.uint8, Path(name))
            finally:
                os.unlink(name)  # gone from the folder now; the space is freed when the fd closes
        self._done = weakref.finalize(self, _finish, self.fd, reserved)
        for made in getattr(_scopes, "open", []):
            made.append(weakref.ref(self))

    def _index(self) -> range:
        return range(self.n)

    def _store(self) -> "PixelStore":
        return self

    @property
    def ram_bytes(self) -> int:
        """Bytes of pixels this store holds in RAM (0 on disk)."""
        return 0 if self.arr is None else self.arr.nbytes

    def truncate(self) -> None:
        """Keep the rows filled so far (after skipped files): a copy in RAM, as a shorter array would be."""
        if self.filled < self.n:
            if self.arr is not None:
                self.arr = self.arr[:self.filled].copy()
            self.n = self.filled

    def array(self) -> np.ndarray:
        """The images as one numpy array (in RAM only)."""
        if self.arr is None:
            raise TypeError("a store on disk has no array; read it in chunks")
        return self.arr

    def close(self) -> None:
        """Release the RAM or the file now (the temp file is already unlinked)."""
        self.fd = None
        self.arr = None
        self._done()

    def __enter__(self) -> "PixelStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class PixelView(_Pixels):
    """Images ``idx`` of a store (``store[index_array]``), read only when sliced."""

    def __init__(self, store: PixelStore, idx: np.ndarray):
        self.store, self.idx = store, np.asarray(idx, np.int64)
        if len(self.idx) and (self.idx.min() < 0 or self.idx.max() >= store.n):
            raise IndexError(f"index out of bounds for {store.n} images")

    def _index(self) -> np.ndarray:
        return self.idx

    def _store(self) -> PixelStore:
        return self.store

    ram_bytes = 0  # the store's, not the view's


@contextlib.contextmanager
def closing_stores() -> Iterator[None]:
    """Every :class:`PixelStore` made inside (in this thread) is closed when the block ends, error or not:
    its RAM and its temporary file's disk space are given back then, not whenever it is collected."""
    stack = _scopes.__dict__.setdefault("open", [])
    made: list[Any] = []
    stack.append(made)
    try:
        yield
    finally:
        stack.pop()  # ours: the blocks nest
        for ref in made:
            store = ref()
            if store is not None:
                store.close()


def is_pixels(x: Any) -> bool:
    """True for a :class:`PixelStore` or :class:`PixelView` (runners read them a batch at a time)."""
    return isinstance(x, _Pixels)


def decode_store(paths: Sequence[str | Path], pre: Any, progress: Callable[[int, int], None] | None = None,
                 skip_bad: bool = False, in_ram: bool = False,
                 budget: int | None = None) -> tuple[PixelStore, list[int], list[str]]:
    """Decode ``paths`` with :func:`edgetl.preprocess.prepare` into a :class:`PixelStore`, one image at a time.

    Returns (store, indices of the paths kept, one warning per skipped file). ``skip_bad``: an unreadable
    file is skipped with a warning, otherwise its EdgetlError is raised (the store closed first).
    """
    from edgetl.preprocess import prepare

    store = PixelStore(len(paths), pre.input_size, budget=budget, in_ram=in_ram)
    kept: list[int] = []
    bad: list[str] = []
    try:
        for i, p in enumerate(paths):
            try:
                store.append(prepare(p, pre)[None])
                kept.append(i)
            except EdgetlError as exc:
                if not skip_bad:
                    raise
                bad.append(f"skipped unreadable image: {exc}")
            if progress is not None:
                progress(i + 1, len(paths))
    except BaseException:
        store.close()
        raise
    store.truncate()
    return store, kept, bad
