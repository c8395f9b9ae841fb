"""The Keras graphs of a run: the one-graph classifier, the head on embeddings, the frozen extractor and
the trainable tail; compiling and predicting."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgetl.config import TrainConfig
from edgetl.errors import EdgetlError
from edgetl.models.registry import block_index
from edgetl.train.distribute import _multi_worker_build_fix, _scope
from edgetl.train.state import _log, _Run


def unfrozen_layer_names(layer_names: Sequence[str], k: int) -> set[str]:
    """Layers of the top ``k`` blocks (by the ``block{N}_`` prefix) plus the ``top_*`` layers."""
    indices = sorted({i for i in (block_index(n) for n in layer_names) if i is not None})
    chosen = set(indices[len(indices) - k:]) if k > 0 else set()
    return {n for n in layer_names if n.startswith("top_") or block_index(n) in chosen} if k > 0 else set()


def _boundary_tensor(base: Any, unfrozen: set[str]) -> Any | None:
    """The input tensor of the first unfrozen layer (in graph order), or None."""
    for layer in base.layers:
        if layer.name in unfrozen:
            inp = layer.input
            return None if isinstance(inp, (list, tuple)) else inp
    return None


def _optimizer(lr: Any, weight_decay: float) -> Any:
    import keras

    if weight_decay > 0:
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=weight_decay)
    return keras.optimizers.Adam(learning_rate=lr)


def _compile(model: Any, lr: Any, cfg: TrainConfig, jit: bool, steps_per_execution: int = 1) -> None:
    import keras

    model.compile(
        optimizer=_optimizer(lr, cfg.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=jit,
        steps_per_execution=steps_per_execution,
    )


def _predict(model: Any, x: Any, batch: int, verbose: int = 0) -> Any:
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(x).batch(batch).map(lambda b: tf.cast(b, tf.float32)).prefetch(2)
    return model.predict(ds, verbose=verbose)


def _head_layers(keras: Any, x: Any, cfg: TrainConfig, n_cls: int) -> Any:
    """Dropout + Dense softmax classifier on ``x`` (the same L2 penalty in both phases: a no-op for
    inference and export). Built once on the pooled features and once on cached embeddings."""
    reg = keras.regularizers.L2(cfg.head_l2) if cfg.head_l2 > 0 else None
    dropped = keras.layers.Dropout(cfg.dropout, name="head_dropout")(x)
    return keras.layers.Dense(n_cls, activation="softmax", dtype="float32", name="probs", kernel_regularizer=reg)(dropped)


def _build_graphs(r: _Run) -> None:
    """The one-graph classifier, the head on embeddings, the frozen extractor, and (fine-tuning on
    cached activations) the trainable tail after the frozen part."""
    import keras

    from edgetl.models import build

    cfg, spec = r.cfg, r.spec
    with _scope(r.strategy):
        r.base = base = build(spec, weights=cfg.weights, include_top=False)
        layer_names = [layer.name for layer in base.layers]
        r.k = spec.unfreeze_blocks if cfg.unfreeze is None else cfg.unfreeze
        r.fine_tune = cfg.strategy == "fine-tune" and cfg.fine_tune_epochs > 0 and r.k > 0
        r.unfrozen = unfrozen_layer_names(layer_names, r.k) if r.fine_tune else set()
        if r.fine_tune and not r.unfrozen:
            raise EdgetlError(f"backbone {spec.name} has no block{{N}}_ / top_ layers to unfreeze")
        base.trainable = False
        pooled = keras.layers.GlobalAveragePooling2D(name="head_pool")(base.output)
        r.full = keras.Model(base.input, _head_layers(keras, pooled, cfg, r.n_cls), name=f"{spec.name}_classifier")
        r.feat_dim = int(pooled.shape[-1])
        emb_in = keras.Input((r.feat_dim,), name="embedding")
        r.head = keras.Model(emb_in, _head_layers(keras, emb_in, cfg, r.n_cls), name="head")

        # Fine-tuning on cached activations: only when the frozen part ends cleanly at one tensor.
        r.boundary = _boundary_tensor(base, r.unfrozen) if r.fine_tune else None
        r.tail = None
        if r.boundary is not None:
            try:
                r.tail = keras.Model(r.boundary, r.full.output, name="tail")
                extra = {layer.name for layer in r.tail.layers if not isinstance(layer, keras.layers.InputLayer)} - r.unfrozen - {
                    "head_pool", "head_dropout", "probs"}
                if extra:
                    r.tail = None
            except Exception:  # noqa: BLE001 - any graph the split cannot express falls back to images
                r.tail = None
        r.n_views = 1 + (cfg.augment.views if cfg.augment.enabled else 0)
        if r.tail is not None:
            _plan_activation_cache(r)
        outputs = [pooled] + ([r.boundary] if r.tail is not None else [])
        r.extractor = keras.Model(base.input, outputs, name="extractor")
    if r.plan.distribute == "multi-worker":
        for m in (r.head, r.full, r.tail):
            if m is not None:
                _multi_worker_build_fix(m, r.strategy)


def _plan_activation_cache(r: _Run) -> None:
    """In RAM when the cache and its copies in flight fit ``cache_limit_mb``, else spilled to disk (when
    the disk has room), else (or with ``cache_limit_mb`` 0) no cache: fine-tuning on images."""
    import shutil

    from edgetl.embed_cache import SHARD_BATCHES
    from edgetl.train.activations import SPILL_DIR, cache_plan, gather_rows
    from edgetl.train.distribute import shard_rows

    cfg = r.cfg
    elems = int(np.prod(r.boundary.shape[1:]))
    # multi-worker: a worker caches its train rows only (the largest shard's count: one plan on every worker)
    workers = r.role.workers if r.role is not None else 1
    n_tr = len(shard_rows(len(r.ytr), 0, workers))
    chunk = max(cfg.batch_size, 32) * SHARD_BATCHES
    r.act_plan = plan = cache_plan(cfg, elems, r.n_views * n_tr + len(r.yva), chunk, gather_rows(chunk, workers))
    r.cache_bytes = plan["store_bytes"]
    mb = lambda b: f"{b / 2**20:.0f} MB"  # noqa: E731
    if plan["where"] == "off":
        _log(cfg, "activation cache off (cache_limit_mb 0): fine-tuning on images")
        r.tail = None
    elif plan["where"] == "disk":
        free = shutil.disk_usage(r.run_dir).free
        if free < plan["store_bytes"] + 2**28:  # keep 256 MB free for checkpoints and the model
            _log(cfg, f"activation cache would need {mb(plan['store_bytes'])} > {cfg.cache_limit_mb} MB of RAM and "
                      f"{mb(free)} free on disk: fine-tuning on images")
            r.tail = None
        else:
            _log(cfg, f"activation cache {mb(plan['store_bytes'])} + {mb(plan['transient_bytes'])} in flight > "
                      f"{cfg.cache_limit_mb} MB: spilled to disk ({r.run_dir / SPILL_DIR}), read back a batch at a time")
