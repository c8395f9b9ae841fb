"""The frozen-base pass: every view of every image through the frozen base once, decoded from the files a
shard at a time, through the on-disk cache (:mod:`edgetl.embed_cache`) or, fine-tuning on cached
activations, into the activation cache (:mod:`edgetl.train.activations`). In a multi-worker run both
are sharded: each worker embeds only its rows (:func:`shard_rows`) and keeps its own train embeddings
(and activations) for the head (and the tail); the val embeddings (and activations) and each worker's
counts are all-gathered."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Sequence

import numpy as np

from edgetl import quiet
from edgetl.embed import FrozenForward, frozen_forward
from edgetl.errors import EdgetlError
from edgetl.train.state import _log, _Run, _warn, progress_mode


def _extract(r: _Run, x: np.ndarray, aug: Any | None, view: int, label: str,
             first_batch: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """One forward pass of the frozen base over ``x`` (from batch ``first_batch`` of its split):
    (embeddings, float16 tail activations or None)."""
    import keras

    from edgetl.data import pixel_batches, pixels_dataset

    bs = max(r.cfg.batch_size, 32)
    tp = time.perf_counter()
    embs: list[np.ndarray] = []
    acts: list[np.ndarray] = []
    with quiet.to_console() if r.mode == "bars" else contextlib.nullcontext():
        bar = keras.utils.Progbar(int(np.ceil(len(x) / bs))) if r.mode == "bars" else None
        if r.forward.engine == "onnxruntime":  # uses every core: no TF work alongside it
            batches = pixel_batches(x, bs, aug, view, first_batch=first_batch)
        else:
            batches = (b.numpy() for b in pixels_dataset(x, bs, aug, view=view, first_batch=first_batch))
        for i, b in enumerate(batches):
            out = r.forward(b)
            embs.append(out[0])
            if len(out) > 1:
                acts.append(out[1].astype(np.float16))
            if bar is not None:
                bar.update(i + 1)
    if r.mode == "lines":
        _log(r.cfg, f"frozen-base pass {label}: {len(x)} images in {time.perf_counter() - tp:.1f} s")
    emb = np.concatenate(embs) if embs else np.zeros((0, r.feat_dim), np.float32)
    return emb, (np.concatenate(acts) if acts else None)


def _resize_view(r: _Run, view: int, start: int = 0, stop: int | None = None,
                 paths: Sequence[str] | None = None) -> np.ndarray:
    """The train images ``[start:stop]`` (of ``paths``, default all train files) of one augmented view,
    each resized by a randomly drawn client resize."""
    from edgetl.data import resize_views

    t0 = time.perf_counter()
    files = r.ds.train.paths if paths is None else paths
    x = resize_views(files[start:stop], r.spec.preprocessing, r.cfg.seed, view, workers=r.cfg.workers,
                     max_pixels=r.cfg.max_pixels or None, start=start)
    r.resize_view_seconds += time.perf_counter() - t0
    return x


def _embed_views(r: _Run) -> None:
    """The frozen base runs once per view: clean + augmented train views, then val."""
    from edgetl.data import build_augmenter

    cfg = r.cfg
    r.augmenter = build_augmenter(cfg.augment, cfg.seed)
    t0 = time.perf_counter()
    r.mode = progress_mode(cfg.verbose)
    n_passes = 2 + (cfg.augment.views if r.augmenter is not None else 0)
    # fine-tuning on cached activations keeps them (edgetl/train/activations.py); else only embeddings, on disk
    cache = _open_embed_cache(r) if r.tail is None else None
    # Multi-worker: each worker embeds its rows only (into the embedding cache or its activation cache).
    r.shard = (r.role.index, r.role.workers) if r.role is not None else None
    sfx = _part_suffix(r)
    parts = ([(f"train_v{v}{sfx}", len(_rows(r, len(r.ytr)))) for v in range(n_passes - 1)]
             + [(f"val{sfx}", len(_rows(r, len(r.yva))))])
    if cache is not None and cache.complete(parts):  # nothing to embed: no engine to set up
        r.forward = FrozenForward("cached", run=lambda b: [])
        _log(cfg, f"every embedding is in the cache {cache.folder}")
    else:
        _start_forward(r)
    forward, n_notes = r.forward, len(r.forward.notes)
    if cache is not None:
        _embed_streamed(r, n_passes, cache)
        r.n_embedded = cache.rows_computed
    else:
        from edgetl.train.activations import embed_with_activations

        embed_with_activations(r, n_passes, _extract, _resize_view, _pass_label)  # val gathered in the pass
        r.n_embedded = len(r.emb_tr) + len(_rows(r, len(r.yva)))
    r.embed_seconds = time.perf_counter() - t0
    if r.role is not None:
        _gather_worker_parts(r)
    for note in forward.notes[n_notes:]:  # a fallback decided on the first batch
        _warn(cfg, note, r.warnings)
    if r.n_embedded:
        _log(cfg, f"embedded {r.n_embedded} views in {r.embed_seconds:.1f} s ({r.n_embedded / r.embed_seconds:.1f} images/s, {forward.engine}"
                  + (f", max |difference| vs TensorFlow {forward.max_abs_diff:.1e}" if forward.max_abs_diff is not None else "") + ")")


def _rows(r: _Run, n: int) -> range:
    """The rows of ``n`` this process embeds: its shard in a sharded multi-worker run, else all."""
    from edgetl.train.distribute import shard_rows

    return shard_rows(n, *r.shard) if r.shard is not None else range(n)


def _part_suffix(r: _Run) -> str:
    """Cache part names of a worker's shard (``train_v0.w1of2``): shards of different splits never mix."""
    return f".w{r.shard[0]}of{r.shard[1]}" if r.shard is not None else ""


def _gather_worker_parts(r: _Run) -> None:
    """Multi-worker: every worker gets the whole val set's embeddings (so the val loss, early stopping and
    the chief's metrics are those of one run) and ``r.metrics["distributed"]`` each worker's share and seconds."""
    from edgetl.train.distribute import gather_shards

    workers = r.role.workers
    if r.shard is not None and r.tail is None:  # fine-tuning on cached activations gathered val in its pass
        t0 = time.perf_counter()
        r.emb_va = gather_shards(r.strategy, np.asarray(r.emb_va, np.float32), len(r.yva), workers)
        _log(r.cfg, f"gathered {len(r.emb_va)} val embeddings from {workers} workers in {time.perf_counter() - t0:.1f} s")
    n_tr, n_va = len(_rows(r, len(r.ytr))), len(_rows(r, len(r.yva)))
    # the fine-tune (on images or on cached activations) trains on the same shard (edgetl/train/finetune.py)
    ft = (n_tr if r.shard is not None else len(r.ytr)) if r.fine_tune else 0
    mine = np.array([[r.role.index, n_tr, n_va, r.n_embedded, r.embed_seconds, ft, r.checked_images, r.decode_seconds]], np.float64)
    every = gather_shards(r.strategy, mine, workers, workers)
    r.metrics["distributed"] = {
        "num_workers": workers, "sharded": r.shard is not None, "task": r.role.index,
        "fine_tune_sharded": bool(r.fine_tune and r.shard is not None),
        "per_worker": [{"task": int(t), "images": int(a + b), "train_images": int(a), "val_images": int(b),
                        "embedded_views": int(e), "seconds": round(float(s), 3), "fine_tune_images": int(f),
                        "checked_images": int(c), "check_seconds": round(float(cs), 3)}
                       for t, a, b, e, s, f, c, cs in every]}


def _start_forward(r: _Run) -> None:
    """The frozen base as a batch function (on ONNX Runtime when it reproduces TensorFlow)."""
    cfg = r.cfg
    r.forward = forward = frozen_forward(r.extractor, cfg.embed_engine, gpu=bool(r.plan.gpus))
    for note in forward.notes:
        _warn(cfg, note, r.warnings)
    _log(cfg, f"embedding {len(r.ytr)} train images x {r.n_views} view(s) + {len(r.yva)} val images with the frozen {r.spec.name} "
              f"({forward.engine}{f', converted in {forward.convert_seconds:.1f} s' if forward.convert_seconds else ''}) ...")


def _pass_label(view: int, n_passes: int) -> str:
    return f"{view + 1}/{n_passes} (train, " + (f"augmented view {view})" if view else "clean)")


def _open_embed_cache(r: _Run) -> Any:
    from edgetl import embed_cache

    embed_cache.max_bytes_limit()  # a bad $EDGETL_EMBED_CACHE_MAX_GB fails now, not after the pass
    key = embed_cache.key_doc(r.spec, r.cfg, r.extractor.get_weights(), r.ds, augmented=r.augmenter is not None)
    try:
        r.embed_cache = embed_cache.ShardCache(key)
    except EdgetlError as exc:  # e.g. a read-only home: the run folder is writable (checked at start)
        _warn(r.cfg, f"{exc}; caching the embeddings in the run folder instead", r.warnings)
        r.embed_cache = embed_cache.ShardCache(key, root=r.run_dir / "embed_cache")
    return r.embed_cache


def _embed_streamed(r: _Run, n_passes: int, cache: Any) -> None:
    """The views from the files, a shard at a time, through the on-disk cache (only shards not on
    disk yet are decoded and embedded); the embeddings are read back memory-mapped."""
    from edgetl.data import decode_paths

    cfg, pre = r.cfg, r.spec.preprocessing
    bs = max(cfg.batch_size, 32)

    sfx = _part_suffix(r)
    tr_rows, va_rows = _rows(r, len(r.ytr)), _rows(r, len(r.yva))
    tr_paths = [r.ds.train.paths[i] for i in tr_rows]
    va_paths = [r.ds.val.paths[i] for i in va_rows]

    def shard(paths: Sequence[str], view: int, label: str) -> Any:
        def compute(start: int, stop: int) -> np.ndarray:
            if view and cfg.augment.resize:
                x = _resize_view(r, view, start, stop, paths)
            else:
                x = decode_paths(paths[start:stop], pre, cfg.workers, cfg.max_pixels or None)
            return _extract(r, x, r.augmenter if view else None, view, f"{label} [{start}:{stop}]", first_batch=start // bs)[0]
        return compute

    for view in range(0, n_passes - 1):
        tv = time.perf_counter()
        cache.fill(f"train_v{view}{sfx}", len(tr_paths), shard(tr_paths, view, _pass_label(view, n_passes)))
        r.view_seconds.append(time.perf_counter() - tv)
    tv = time.perf_counter()
    cache.fill(f"val{sfx}", len(va_paths), shard(va_paths, 0, f"{n_passes}/{n_passes} (val)"))
    r.view_seconds.append(time.perf_counter() - tv)
    r.emb_tr = cache.read([f"train_v{v}{sfx}" for v in range(n_passes - 1)], len(tr_paths), r.feat_dim)
    r.emb_va = cache.read([f"val{sfx}"], len(va_paths), r.feat_dim)  # this worker's rows: gathered after the pass
    r.y_views = np.tile(np.asarray(r.ytr)[list(tr_rows)], n_passes - 1)
    if cache.reused:
        _log(cfg, f"embedding cache {cache.folder}: {cache.reused} shard(s) reused, {cache.computed} computed")
    gone = cache.trim()  # least recently used other keys, down to $EDGETL_EMBED_CACHE_MAX_GB
    if gone["folders"]:
        from edgetl.embed_cache import MAX_ENV, max_bytes_limit

        _log(cfg, f"embedding cache: removed {gone['folders']} least recently used folder(s) ({gone['bytes'] / 1e9:.2f} GB) "
                  f"to stay within {max_bytes_limit() / 1e9:g} GB (${MAX_ENV})")
