"""The fine-tune activation cache: the frozen part's output (the input of the first unfrozen block) for
every view of every image, float16, in one preallocated array in RAM, or spilled to a file on disk
when it does not fit its RAM budget (``cache_limit_mb``); read back a batch at a time either way.

The budget counts every copy the cache really makes (:func:`cache_plan`): the store itself (one copy:
it is filled in place, a chunk of images at a time, never concatenated or copied into a tensor), the
chunk in flight during the frozen-base pass (the forward's float16 batches and their joined chunk,
plus one float32 batch), and the batches in flight while training (a gathered float16 batch and its
float32 cast for each of the parallel map calls and prefetched batches), and in a multi-worker run the
copies of the val chunks being all-gathered. The disk store is read with positioned reads (``os.preadv``),
not memory-mapped, so the pages it reads stay in the page cache (reclaimable) instead of in the process.

In a multi-worker run (``r.shard``) each worker embeds only its :func:`~edgetl.train.distribute.shard_rows`
of the train files, so its store holds only those rows (the head and the tail train on them through
``sharded_train_data``); the val rows are sharded too, chunk by chunk, and each chunk's embeddings and
activations are all-gathered, so every worker holds every val row in the same order (the same val
loss, early stopping and keep/restore decision on every worker).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgetl.pixels import RowStore
from edgetl.train.state import _log, _Run

SPILL_DIR = "activations"  # in the run folder, deleted when training ends
#: parallel gathers and prefetched batches of the training pipeline (fixed, so the budget can count them)
IN_FLIGHT = 2


class ActivationStore(RowStore):
    """``n`` rows of float16 activations of shape ``shape``: in RAM (``path`` None) or in a ``.npy`` file."""

    def __init__(self, n: int, shape: tuple[int, ...], path: Path | None = None):
        super().__init__(n, shape, np.float16, path)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one row."""
        return self.row_shape


def cache_plan(cfg: Any, elems: int, n_rows: int, pass_rows: int, gather_rows: int = 0) -> dict[str, Any]:
    """Where the activation cache goes: ``{"where": "ram"|"disk"|"off", "store_bytes", "transient_bytes",
    "ram_bytes", "budget_bytes"}`` for ``n_rows`` rows of ``elems`` values (train views + val);
    ``pass_rows`` images are decoded and embedded at a time; ``gather_rows`` float16 rows are held at once
    while a val chunk is all-gathered (multi-worker, :func:`gather_rows`). ``cache_limit_mb`` 0 turns the
    cache off (fine-tuning on images)."""
    budget = int(cfg.cache_limit_mb) * 2**20
    store = elems * 2 * n_rows
    bs32 = max(cfg.batch_size, 32)
    # pass: float16 batches + their joined chunk, one float32 forward batch (+ a val chunk being gathered);
    # training: per batch in flight (IN_FLIGHT parallel gathers + IN_FLIGHT prefetched) float16 + float32
    transient = (elems * (2 * 2 * pass_rows + 4 * bs32) + elems * 2 * gather_rows
                 + elems * 6 * cfg.batch_size * 2 * IN_FLIGHT)
    plan = {"store_bytes": store, "transient_bytes": transient, "budget_bytes": budget}
    if budget <= 0:
        return {**plan, "where": "off", "ram_bytes": 0}
    if store + transient <= budget:
        return {**plan, "where": "ram", "ram_bytes": store + transient}
    return {**plan, "where": "disk", "ram_bytes": transient}


def open_stores(r: _Run, n_train: int, n_val: int) -> None:
    """``r.act_tr`` / ``r.act_va`` as the plan (``r.act_plan``) says: in RAM or in the run folder."""
    shape = tuple(int(d) for d in r.boundary.shape[1:])
    disk = r.act_plan["where"] == "disk"
    folder = r.run_dir / SPILL_DIR
    r.act_tr = ActivationStore(n_train, shape, folder / "train.npy" if disk else None)
    r.act_va = ActivationStore(n_val, shape, folder / "val.npy" if disk else None)


def close_stores(r: _Run) -> None:
    """Release the stores and delete the spilled files (end of training, or a failure)."""
    for store in (r.act_tr, r.act_va):
        if isinstance(store, ActivationStore):
            store.close()
    shutil.rmtree(r.run_dir / SPILL_DIR, ignore_errors=True)


def val_chunk(chunk: int, count: int) -> int:
    """The val images all-gathered at a time among ``count`` workers: a multiple of ``count`` (so each
    chunk's rows are every worker's :func:`shard_rows` of it), about ``chunk``."""
    return max(count, chunk - chunk % count)


def gather_rows(chunk: int, count: int) -> int:
    """Float16 activation rows held at once while a val chunk is all-gathered (:func:`gather_shards`):
    the local part zero-padded and its tensor, the gathered tensor, its array and the ordered copy."""
    if count <= 1:
        return 0
    step = val_chunk(chunk, count)
    return 2 * -(-step // count) + 3 * step


def embed_with_activations(r: _Run, n_passes: int, extract: Callable[..., Any], resize_view: Callable[..., Any],
                           pass_label: Callable[[int, int], str]) -> None:
    """The frozen-base pass of a fine-tune on cached activations: the files decoded a chunk at a time
    (the streamed pass's chunks and augmentation seeds), embeddings kept in RAM, activations written
    into the stores in place. In a multi-worker run (``r.shard``) only this worker's train rows, and its
    rows of each val chunk, whose embeddings and activations are all-gathered (every worker holds all val).
    ``extract``, ``resize_view``, ``pass_label``: the frozen-base pass's own (edgetl/train/embed.py)."""
    from edgetl.data import decode_paths
    from edgetl.embed_cache import SHARD_BATCHES
    from edgetl.train.distribute import gather_shards, shard_rows

    cfg, pre = r.cfg, r.spec.preprocessing
    bs = max(cfg.batch_size, 32)
    chunk = bs * SHARD_BATCHES
    index, count = r.shard if r.shard is not None else (0, 1)
    tr_rows = shard_rows(len(r.ytr), index, count)
    tr_paths = [r.ds.train.paths[i] for i in tr_rows]
    n_va = len(r.yva)
    open_stores(r, (n_passes - 1) * len(tr_paths), n_va)

    def pixels(paths: list[str], view: int, start: int, stop: int) -> np.ndarray:
        if view and cfg.augment.resize:
            return resize_view(r, view, start, stop, paths)
        return decode_paths(paths[start:stop], pre, cfg.workers, cfg.max_pixels or None)

    def run(paths: list[str], view: int, label: str, store: ActivationStore) -> list[np.ndarray]:
        embs = []
        for start in range(0, len(paths), chunk):
            stop = min(len(paths), start + chunk)
            x = pixels(paths, view, start, stop)
            part = f" [{start}:{stop}]" if len(paths) > chunk else ""  # one line per pass when one chunk
            emb, act = extract(r, x, r.augmenter if view else None, view, label + part, first_batch=start // bs)
            del x
            embs.append(emb)
            store.append(act)
            del act
        return embs

    def run_val_sharded(label: str) -> list[np.ndarray]:
        step, embs = val_chunk(chunk, count), []
        for a in range(0, n_va, step):  # the same chunks, hence the same collectives, on every worker
            b = min(n_va, a + step)
            mine = [r.ds.val.paths[i] for i in range(a + index, b, count)]
            emb = np.zeros((0, r.feat_dim), np.float32)
            act = np.zeros((0, *r.act_va.shape), np.float16)
            if mine:
                emb, act = extract(r, pixels(mine, 0, 0, len(mine)), None, 0, f"{label} [{a}:{b}], this worker's {len(mine)}")
            embs.append(gather_shards(r.strategy, np.asarray(emb, np.float32), b - a, count))
            r.act_va.append(gather_shards(r.strategy, act, b - a, count))
            del act
        return embs

    embs: list[np.ndarray] = []
    for view in range(0, n_passes - 1):
        tv = time.perf_counter()
        embs += run(tr_paths, view, pass_label(view, n_passes), r.act_tr)
        r.view_seconds.append(time.perf_counter() - tv)
    tv = time.perf_counter()
    label = f"{n_passes}/{n_passes} (val)"
    va = run(r.ds.val.paths, 0, label, r.act_va) if r.shard is None else run_val_sharded(label)
    r.view_seconds.append(time.perf_counter() - tv)
    r.emb_tr = np.concatenate(embs) if embs else np.zeros((0, r.feat_dim), np.float32)
    r.emb_va = np.concatenate(va) if va else np.zeros((0, r.feat_dim), np.float32)
    r.y_views = np.tile(r.ytr[list(tr_rows)], n_passes - 1)
    if r.act_tr.on_disk:
        _log(cfg, f"activation cache spilled to {r.act_tr.path.parent} ({(r.act_tr.nbytes + r.act_va.nbytes) / 2**20:.0f} MB)")
    if r.shard is not None:
        _log(cfg, f"worker {index}: cached the activations of its own {len(tr_paths)} of {len(r.ytr)} train images "
                  f"x {n_passes - 1} view(s); val gathered from {count} workers ({n_va} images)")


def activation_dataset(store: ActivationStore, y: np.ndarray, num_classes: int, batch_size: int, seed: int,
                       shuffle: bool = True, sample_weight: np.ndarray | None = None) -> Any:
    """``(x float32, one-hot y[, w])`` batches gathered from the store: the row order is shuffled
    (seeded, reshuffled every epoch) exactly as :func:`edgetl.data.training_dataset` shuffles rows."""
    import tensorflow as tf

    y_t = tf.constant(np.asarray(y, np.int32))
    w_t = tf.constant(np.asarray(sample_weight, np.float32)) if sample_weight is not None else None
    ds = tf.data.Dataset.range(store.n)
    if shuffle:
        ds = ds.shuffle(max(store.n, 1), seed=seed, reshuffle_each_iteration=True)

    def fetch(i: Any) -> Any:
        x = tf.numpy_function(store.gather, [i], tf.float16, stateful=False)
        x.set_shape((None, *store.shape))
        out = (tf.cast(x, tf.float32), tf.one_hot(tf.gather(y_t, i), num_classes))
        return out + ((tf.gather(w_t, i),) if w_t is not None else ())

    return ds.batch(batch_size).map(fetch, num_parallel_calls=IN_FLIGHT).prefetch(IN_FLIGHT)


def predict_tail(r: _Run, store: ActivationStore, batch: int = 256) -> np.ndarray:
    """The tail's probabilities on every row of ``store``, a batch at a time."""
    parts = [np.asarray(r.tail(store.rows(i, i + batch).astype(np.float32), training=False), np.float32)
             for i in range(0, store.n, batch)]
    return np.concatenate(parts) if parts else np.zeros((0, r.n_cls), np.float32)
