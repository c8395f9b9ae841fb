"""Feature extraction and fine-tuning: image folder in, run directory out.

How it stays fast on a CPU:

* no decoded image is kept: the files are checked once, then decoded a shard at a time for the
  frozen-base pass, whose embeddings go to an on-disk cache (:mod:`edgetl.embed_cache`: resumable
  shard by shard, reused when only head settings change); fine-tuning on images decodes them as a
  tf.data pipeline reads them (:mod:`edgetl.data.stream`);
* the frozen base runs once per image view, not once per epoch: the head is trained on
  cached pooled embeddings of the clean images plus ``augment.views`` augmented views;
* for fine-tuning, the same forward pass also caches the activations at the input of the
  first unfrozen block; BatchNormalization stays in inference mode, so the frozen part
  is a fixed function and training the unfrozen tail on those cached activations is
  exactly training the whole model on the same views, at a fraction of the cost. When
  the cache (every copy counted) would not fit in ``cache_limit_mb`` it spills to disk
  (:mod:`~edgetl.train.activations`); with ``cache_limit_mb`` 0 the tail is trained on images.

The saved ``model.keras`` is always one graph (pixels -> base -> head -> ``probs``):
the head and the fine-tuned blocks are layers of that graph, trained in place.

The package, one concern per module (each step reads and fills the shared :class:`~edgetl.train.state._Run`):

* :mod:`~edgetl.train.core`: ``train()``, the run directory, resume, multi-worker roles, setup, data;
* :mod:`~edgetl.train.distribute`: devices, ``TF_CONFIG`` roles, tf.distribute strategies, precision;
* :mod:`~edgetl.train.checkpoints`: per-epoch checkpoints, the phase callback, resume points;
* :mod:`~edgetl.train.graphs`: the Keras graphs (classifier, head, extractor, tail), compile, predict;
* :mod:`~edgetl.train.embed`: the frozen-base pass (in RAM or streamed through the on-disk cache);
* :mod:`~edgetl.train.head`: the head phase and the class-weight choice;
* :mod:`~edgetl.train.activations`: the fine-tune activation cache (RAM or spilled to disk);
* :mod:`~edgetl.train.finetune`: the fine-tune phase and its keep/restore decision;
* :mod:`~edgetl.train.evaluate`: evaluation and writing the run (:class:`TrainResult`);
* :mod:`~edgetl.train.state`: the run's shared state and its console output.
"""

from edgetl.train.checkpoints import CHECKPOINT_DIR
from edgetl.train.core import run_spec, train
from edgetl.train.distribute import (
    DISTRIBUTE_CHOICES,
    DISTRIBUTE_ENV,
    DevicePlan,
    WorkerRole,
    cluster_role,
    plan_devices,
    requested_distribution,
)
from edgetl.train.evaluate import HISTORY_COLUMNS, TrainResult
from edgetl.train.finetune import fine_tune_choice, fine_tune_summary
from edgetl.train.graphs import unfrozen_layer_names
from edgetl.train.head import WEIGHTING_FILE
from edgetl.train.state import progress_mode

__all__ = [
    "CHECKPOINT_DIR", "DISTRIBUTE_CHOICES", "DISTRIBUTE_ENV", "HISTORY_COLUMNS", "WEIGHTING_FILE", "DevicePlan", "TrainResult",
    "WorkerRole", "cluster_role", "fine_tune_choice", "fine_tune_summary", "plan_devices", "progress_mode",
    "requested_distribution", "run_spec", "train", "unfrozen_layer_names",
]
