"""Image folders -> labelled file lists (no TensorFlow here).

Two layouts are accepted:

* ``DATA_DIR/train/<class>/...`` and ``DATA_DIR/val/<class>/...`` (optionally ``test/``);
* ``DATA_DIR/<class>/...``, split into train/val by ``val_split`` (stratified, seeded).

Class names are the sorted folder names. Files that are not decodable images are
skipped, named once in a warning, and counted in the run record.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from edgetl.errors import EdgetlError, UsageError
from edgetl.preprocess import DEFAULT_MAX_PIXELS, Preprocessing, is_image_file, load_rgb, resize_rgb, resize_variant

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    path: str
    label: int


@dataclass
class Split:
    """The labelled files of one split, plus the files that were skipped."""

    samples: list[Sample]
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def paths(self) -> list[str]:
        return [s.path for s in self.samples]

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def counts(self) -> dict[str, int]:
        c = Counter(s.label for s in self.samples)
        return {name: c.get(i, 0) for i, name in enumerate(self.classes)}


@dataclass(frozen=True)
class CheckShard:
    """This process's part of the image check of a multi-worker run (worker ``index`` of ``count``).

    It decodes only the listed files ``index, index + count, ...`` (the ``shard_rows`` convention of
    edgetl/train/distribute.py), then ``combine(names, reasons)`` (``names``: every listed file, relative
    to the data folder, in listing order; ``reasons``: this worker's results, None for a good file) returns
    every listed file's reason, identical on every worker (e.g. all-gathered across the workers).
    """

    index: int
    count: int
    combine: Callable[[list[str], list[str | None]], list[str | None]]


@dataclass
class Dataset:
    classes: list[str]
    train: Split
    val: Split
    test: Split | None
    layout: str  # "split-folders" or "class-folders"
    root: str
    #: path -> uint8 (H, W, 3) model input, filled when ``load_dataset(preprocessing=...)`` decoded the files.
    pixels: dict[str, Any] | None = field(default=None, repr=False)
    #: files this process decoded to check them (all listed files; its share with ``check_shard``; 0 unvalidated).
    checked: int = 0

    def arrays(self, split: str) -> tuple[Any, Any]:
        """``(x uint8 (N, H, W, 3), y int32 (N,))`` of a split, from the pixels decoded at load time."""
        import numpy as np

        sp = {"train": self.train, "val": self.val, "test": self.test}[split]
        if sp is None:
            raise EdgetlError(f"no {split} split in {self.root}")
        if self.pixels is None:
            raise EdgetlError("dataset was loaded without preprocessing=...; pixels were not decoded")
        x = np.stack([self.pixels[p] for p in sp.paths]) if sp.samples else np.zeros((0, 1, 1, 3), np.uint8)
        return x, np.asarray(sp.labels, dtype=np.int32)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        out = list(self.train.skipped) + list(self.val.skipped)
        if self.test:
            out += self.test.skipped
        return out

    def fingerprint(self) -> dict:
        """Per-class counts, skipped files and a hash of the file list (for config.json)."""
        h = hashlib.sha256()
        for name, split in (("train", self.train), ("val", self.val), ("test", self.test)):
            if split is None:
                continue
            for s in sorted(split.samples, key=lambda s: s.path):
                rel = os.path.relpath(s.path, self.root)
                h.update(f"{name}\t{rel}\t{s.label}\t{_size(s.path)}\n".encode("utf-8", "surrogateescape"))
        return {
            "root": self.root,
            "layout": self.layout,
            "classes": self.classes,
            "counts": {
                "train": self.train.counts(),
                "val": self.val.counts(),
                **({"test": self.test.counts()} if self.test else {}),
            },
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "num_skipped": len(self.skipped),
            "files_sha256": h.hexdigest(),
            "split_sha256": self.split_hashes(),
        }

    def split_hashes(self) -> dict[str, str]:
        """``{split: sha256}`` of each split's sorted (relative path, size) list (see :func:`split_sha256`)."""
        out = {"train": split_sha256(self.train, self.root), "val": split_sha256(self.val, self.root)}
        if self.test is not None:
            out["test"] = split_sha256(self.test, self.root)
        return out


def split_sha256(split: Split, root: str | Path) -> str:
    """sha256 of the sorted ``relative path <TAB> size`` lines of a split's files: the same images
    (by name and size, wherever the folder now lives) give the same hash."""
    lines = sorted(f"{os.path.relpath(s.path, root)}\t{_size(s.path)}" for s in split.samples)
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


class DataChangedError(EdgetlError):
    """The data folder no longer gives the split a run was trained on."""


def split_changes(ds: Dataset, recorded: dict[str, Any]) -> str | None:
    """What differs between ``ds`` and a run's recorded ``data`` fingerprint, in one line; None when
    every recorded split hash matches (or nothing was recorded: runs from before split hashes)."""
    want = recorded.get("split_sha256") or {}
    have = ds.split_hashes()
    parts = []
    for name in SPLITS:
        if name not in want and name not in have:
            continue
        if want.get(name) is not None and want.get(name) == have.get(name):
            continue
        if name not in want:
            if not recorded.get("split_sha256"):
                continue  # an old run: nothing to compare with
            parts.append(f"{name}: {len(getattr(ds, name).samples)} images now, no such split at training")
            continue
        if name not in have:
            parts.append(f"{name}: gone (recorded {sum((recorded.get('counts') or {}).get(name, {}).values())} images)")
            continue
        old = (recorded.get("counts") or {}).get(name) or {}
        new = getattr(ds, name).counts()
        n_old, n_new = sum(old.values()), sum(new.values())
        diff = [f"{c} {old.get(c, 0)}->{new.get(c, 0)}" for c in sorted(set(old) | set(new)) if old.get(c, 0) != new.get(c, 0)]
        if n_new > n_old:
            what = f"{n_new - n_old} image(s) added"
        elif n_new < n_old:
            what = f"{n_old - n_new} image(s) removed"
        else:
            what = "same count, files renamed, replaced or changed in size"
        parts.append(f"{name}: {n_new} images now vs {n_old} at training ({what}" + (f"; {', '.join(diff[:6])}" if diff else "") + ")")
    if not parts:
        return None
    skipped = recorded.get("num_skipped")
    if skipped is not None and skipped != len(ds.skipped):
        parts.append(f"undecodable files {len(ds.skipped)} now vs {skipped} at training")
    return "; ".join(parts)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def _list_class_dirs(folder: Path) -> list[Path]:
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise EdgetlError(f"cannot read folder {folder}: {exc.strerror or exc}") from None
    return [p for p in entries if p.is_dir() and not p.name.startswith(".")]


def _walk_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursing into subfolders, following symlinks safely)."""
    out: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=None):
        try:
            st = os.stat(dirpath)
            key = (st.st_dev, st.st_ino)
        except OSError:
            continue
        if key in seen:  # a symlink loop or a second link to the same folder
            dirnames[:] = []
            continue
        seen.add(key)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            if is_image_file(p):
                out.append(p)
    return out


def _decode_one(path: Path, max_pixels: int | None, pre: Preprocessing | None) -> tuple[Any, str | None]:
    """(pixels or None, reason or None): decode, convert and resize one file exactly once."""
    try:
        im = load_rgb(path, max_pixels=max_pixels)
    except EdgetlError as exc:
        msg = str(exc)
        return None, (msg.split(": ", 1)[1] if ": " in msg else msg)
    return (resize_rgb(im, pre) if pre is not None else None), None


def _candidates(folder: Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    out: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        cdir = folder / name
        if cdir.is_dir():
            out += [(p, label) for p in _walk_images(cdir)]
    return out


def _decode_files(paths: Sequence[Path], max_pixels: int | None, pre: Preprocessing | None, workers: int | None,
                  progress: Callable[[int, int], None] | None) -> list[tuple[Any, str | None]]:
    """:func:`_decode_one` of every path, in order, in one thread pool (one progress count)."""
    # Pillow releases the GIL while decoding and resizing, so threads use every core.
    n = workers or os.cpu_count() or 1
    results = []
    with ThreadPoolExecutor(max_workers=n) as pool:
        for i, r in enumerate(pool.map(lambda p: _decode_one(p, max_pixels, pre), paths)):
            results.append(r)
            if progress is not None:
                progress(i + 1, len(paths))
    return results


def _decode_all(groups: list[list[tuple[Path, int]]], classes: Sequence[str], validate: bool, max_pixels: int | None,
                pre: Preprocessing | None = None, pixels: dict[str, Any] | None = None, workers: int | None = None,
                progress: Callable[[int, int], None] | None = None, shard: CheckShard | None = None,
                root: Path | None = None) -> tuple[list[Split], int]:
    """One :class:`Split` per group of (file, label) candidates, decoded in one thread pool (one
    progress count over every group): undecodable files are moved to ``skipped``. With ``shard`` (only
    checking, no ``pre``) this process decodes its share and the shard's ``combine`` gives every result.
    Returns (splits, files decoded here)."""
    if not (validate or pre is not None):
        return [Split([Sample(str(p), lab) for p, lab in g], list(classes), []) for g in groups], 0
    flat = [c for g in groups for c in g]
    if shard is not None:
        if pre is not None:
            raise ValueError("a sharded image check keeps no pixels (preprocessing must be None)")
        mine = [p for p, _ in flat[shard.index::shard.count]]
        local = [reason for _, reason in _decode_files(mine, max_pixels, None, workers, progress)]
        names = [os.path.relpath(p, root) if root is not None else str(p) for p, _ in flat]
        reasons = shard.combine(names, local)
        if len(reasons) != len(flat):
            raise EdgetlError(f"the combined image check has {len(reasons)} results for {len(flat)} listed files")
        results: list[tuple[Any, str | None]] = [(None, reason) for reason in reasons]
        checked = len(mine)
    else:
        results = _decode_files([p for p, _ in flat], max_pixels, pre, workers, progress)
        checked = len(flat)
    out, k = [], 0
    for g in groups:
        samples: list[Sample] = []
        skipped: list[tuple[str, str]] = []
        for (p, label), (arr, reason) in zip(g, results[k:k + len(g)]):
            if reason is None:
                samples.append(Sample(str(p), label))
                if pixels is not None and arr is not None:
                    pixels[str(p)] = arr
            else:
                skipped.append((str(p), reason))
        k += len(g)
        out.append(Split(samples, list(classes), skipped))
    return out, checked


def _scan_classes(folder: Path, classes: Sequence[str], validate: bool, max_pixels: int | None,
                  pre: Preprocessing | None = None, pixels: dict[str, Any] | None = None,
                  workers: int | None = None) -> Split:
    return _decode_all([_candidates(folder, classes)], classes, validate, max_pixels, pre, pixels, workers)[0][0]


def decode_paths(paths: Sequence[str], pre: Preprocessing, workers: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Any:
    """uint8 (N, H, W, 3) model inputs of ``paths``, decoded and resized exactly like
    ``load_dataset(preprocessing=pre)`` does (a file that no longer decodes raises EdgetlError)."""
    import numpy as np

    h, w = pre.input_size
    if not paths:
        return np.zeros((0, h, w, 3), np.uint8)
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return np.stack(list(pool.map(lambda p: resize_rgb(load_rgb(p, max_pixels=max_pixels), pre), paths)))


def resize_views(paths: Sequence[str], pre: Preprocessing, seed: int, view: int, workers: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, start: int = 0) -> Any:
    """uint8 (N, H, W, 3): every file decoded again and resized by a randomly drawn client resize
    (:func:`edgetl.preprocess.resize_variant`), seeded by ``(seed, view, start + index)`` so a run
    repeats exactly, whether the split is resized at once or a chunk at a time from ``start``."""
    import numpy as np

    def one(item: tuple[int, str]) -> Any:
        i, path = item
        i += start
        im = np.asarray(load_rgb(path, max_pixels=max_pixels), dtype=np.uint8)
        return resize_variant(im, pre.input_size, np.random.default_rng([seed, view, i]))

    h, w = pre.input_size
    if not paths:
        return np.zeros((0, h, w, 3), np.uint8)
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return np.stack(list(pool.map(one, enumerate(paths))))


def scan_folder(folder: str | Path, classes: Sequence[str], validate: bool = True,
                max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Split:
    """Labelled images in ``folder/<class>/`` for a known class list (e.g. a run's labels)."""
    return _scan_classes(Path(folder), classes, validate, max_pixels)


def _stratified_split(samples: list[Sample], n_classes: int, val_split: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    for label in range(n_classes):
        group = [s for s in samples if s.label == label]
        rng.shuffle(group)
        n_val = int(round(len(group) * val_split))
        if len(group) >= 2:
            n_val = min(max(n_val, 1), len(group) - 1)
        else:
            n_val = 0
        val += group[:n_val]
        train += group[n_val:]
    key = lambda s: (s.label, s.path)  # noqa: E731
    return sorted(train, key=key), sorted(val, key=key)


def load_dataset(data_dir: str | Path, val_split: float = 0.2, seed: int = 0, validate: bool = True,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, preprocessing: Preprocessing | None = None,
                 workers: int | None = None, progress: Callable[[int, int], None] | None = None,
                 check_shard: CheckShard | None = None) -> Dataset:
    """Scan ``data_dir`` into train/val(/test) splits.

    Args:
        preprocessing: when given, every file is decoded and resized exactly once (in a
            thread pool) and the uint8 model inputs are kept in ``Dataset.pixels``; the
            decode doubles as the validation, so the splits are identical to ``validate=True``.
        workers: decoding threads (default: CPU count).
        progress: called as ``progress(done, total)`` after each decoded file.
        check_shard: a multi-worker run's share of the check (:class:`CheckShard`; not with
            ``preprocessing``): this process decodes only its share of the listed files and the
            splits, skipped files and messages are those of one process checking every file.

    Raises:
        UsageError: the folder does not exist or is not a folder.
        EdgetlError: fewer than two classes, or a class without a valid image.
    """
    root = Path(data_dir)
    if not root.exists():
        raise UsageError(f"data folder not found: {root}")
    if not root.is_dir():
        raise UsageError(f"not a folder: {root} (expected DATA_DIR/<class>/ or DATA_DIR/train/<class>/)")
    if not 0.0 < val_split < 1.0:
        raise UsageError(f"--val-split must be between 0 and 1 (exclusive), got {val_split}")
    pixels: dict[str, Any] | None = {} if preprocessing is not None else None
    kw = dict(pre=preprocessing, pixels=pixels, workers=workers, progress=progress, shard=check_shard, root=root)
    top = _list_class_dirs(root)
    top_names = {p.name for p in top}
    if "train" in top_names and ("val" in top_names or "validation" in top_names):
        layout = "split-folders"
        val_name = "val" if "val" in top_names else "validation"
        classes = [p.name for p in _list_class_dirs(root / "train")]
        _check_classes(classes, root / "train")
        extra = sorted({p.name for p in _list_class_dirs(root / val_name)} - set(classes))
        if extra:
            raise EdgetlError(f"{root / val_name} has classes not in train/: {', '.join(extra)}")
        groups = [_candidates(root / "train", classes), _candidates(root / val_name, classes)]
        if "test" in top_names:
            groups.append(_candidates(root / "test", classes))
        (train, val, *rest), checked = _decode_all(groups, classes, validate, max_pixels, **kw)
        test = rest[0] if rest else None
    else:
        layout = "class-folders"
        classes = [p.name for p in top]
        _check_classes(classes, root)
        (everything,), checked = _decode_all([_candidates(root, classes)], classes, validate, max_pixels, **kw)
        tr, va = _stratified_split(everything.samples, len(classes), val_split, seed)
        train = Split(tr, classes, everything.skipped)
        val = Split(va, classes, [])
        test = None
    _check_nonempty(train, root, "train")
    if not val.samples:
        raise EdgetlError(f"no validation images found under {root}")
    if test is not None and not test.samples and not test.skipped:
        test = None
    return Dataset(classes, train, val, test, layout, str(root), pixels, checked)


def _check_classes(classes: list[str], folder: Path) -> None:
    if len(classes) < 2:
        found = f"found {len(classes)}" + (f" ({classes[0]})" if classes else "")
        raise EdgetlError(f"need at least two class folders in {folder}, {found}")
    lower = Counter(c.lower() for c in classes)
    clash = sorted(c for c in classes if lower[c.lower()] > 1)
    if clash:
        raise EdgetlError(
            f"class folders in {folder} differ only by letter case: {', '.join(clash)} "
            "(they would collide on case-insensitive file systems; rename one)"
        )


def _check_nonempty(split: Split, root: Path, name: str) -> None:
    empty = [c for c, n in split.counts().items() if n == 0]
    if empty:
        raise EdgetlError(f"no valid image in class {', '.join(repr(c) for c in empty)} of the {name} split under {root}")


def stratified_sample(samples: Sequence[Sample], n: int | None, seed: int = 0) -> list[Sample]:
    """A class-balanced subset of ``n`` samples (all of them when ``n`` is None or too big)."""
    if n is None or n >= len(samples):
        return list(samples)
    rng = random.Random(seed)
    by_label: dict[int, list[Sample]] = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    for group in by_label.values():
        rng.shuffle(group)
    out: list[Sample] = []
    labels = sorted(by_label)
    i = 0
    while len(out) < n:
        for lab in labels:
            if i < len(by_label[lab]) and len(out) < n:
                out.append(by_label[lab][i])
        i += 1
    return sorted(out, key=lambda s: (s.label, s.path))


def summarize_skipped(skipped: Iterable[tuple[str, str]], limit: int = 5) -> str | None:
    """One warning line naming the skipped files (first ``limit``) and counting them."""
    skipped = list(skipped)
    if not skipped:
        return None
    names = ", ".join(f"{p} ({r})" for p, r in skipped[:limit])
    more = f" and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return f"skipped {len(skipped)} file(s) that are not decodable images: {names}{more}"
