"""One training run's shared state (:class:`_Run`, filled step by step) and its console output."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgetl import quiet
from edgetl.config import TrainConfig


def _log(cfg: TrainConfig, msg: str) -> None:
    # quiet.console(): the real terminal even while the CLI captures TensorFlow's output (edgetl/quiet.py)
    if cfg.verbose:
        quiet.say(msg)


def _warn(cfg: TrainConfig, msg: str, sink: list[str]) -> None:
    sink.append(msg)
    quiet.say(f"warning: {msg}")


def progress_mode(verbose: int) -> str:
    """How training shows progress: ``bars`` (Keras progress bars), ``lines`` or ``off``.

    Progress bars (carriage returns, ANSI codes) only with ``verbose=1`` on an interactive terminal;
    elsewhere (CI logs, ``nohup``, ``| tee``) and with ``verbose=2``: one plain line per epoch and per
    frozen-base pass.
    """
    if verbose == 0:
        return "off"
    return "bars" if verbose == 1 and quiet.on_terminal() else "lines"


def _epoch_lines(cfg: TrainConfig, phase: str, total: int) -> Any:
    """A Keras callback printing one plain line per epoch (no carriage return, no escape codes)."""
    import keras

    class EpochLine(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = logs or {}
            parts = [f"{k} {float(logs[k]):.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy") if logs.get(k) is not None]
            _log(cfg, f"{phase} epoch {epoch + 1}/{total}: {', '.join(parts)} ({time.perf_counter() - self._t0:.1f} s)")

    return EpochLine()


@dataclass
class _Run:
    """One training run's shared state, filled step by step by :func:`_train`'s named steps."""

    cfg: TrainConfig
    spec: Any
    run_dir: Path
    extra_callbacks: Sequence[Any]
    warnings: list[str] = field(default_factory=list)
    t_start: float = field(default_factory=time.perf_counter)
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    # devices and checkpoints (_setup)
    plan: Any = None
    strategy: Any = None
    device_doc: dict[str, Any] = field(default_factory=dict)
    ckpt: Any = None
    resume_state: Any = None
    role: Any = None  # this process's WorkerRole in a multi-worker cluster (None: one process)
    # data (_load_data)
    ds: Any = None
    ytr: Any = None
    yva: Any = None
    classes: list[str] = field(default_factory=list)
    cw: dict[int, float] | None = None
    train_counts: list[int] = field(default_factory=list)
    weightings: list[str] = field(default_factory=lambda: ["off"])  # class-weight candidates, lightest first
    weighting_doc: dict[str, Any] | None = None  # the class-weight choice (_choose_weighting)
    va_sw: Any = None  # val sample weights of the objective (None: plain val loss)
    decode_seconds: float = 0.0
    checked_images: int = 0  # files this process decoded in the image check (its share in a multi-worker run)
    config_doc: dict[str, Any] = field(default_factory=dict)
    # graphs (_build_graphs)
    base: Any = None
    full: Any = None
    head: Any = None
    tail: Any = None
    extractor: Any = None
    boundary: Any = None
    unfrozen: set[str] = field(default_factory=set)
    fine_tune: bool = False
    k: int = 0
    feat_dim: int = 0
    n_views: int = 1
    cache_bytes: int = 0
    act_plan: dict[str, Any] | None = None  # where the activation cache goes (edgetl/train/activations.py)
    # embeddings (_embed_views)
    augmenter: Any = None
    forward: Any = None
    mode: str = "off"
    emb_tr: Any = None
    act_tr: Any = None
    emb_va: Any = None
    act_va: Any = None
    y_views: Any = None
    view_seconds: list[float] = field(default_factory=list)
    resize_view_seconds: float = 0.0  # decoding + client resizes of the resize-robust views (inside view_seconds)
    embed_seconds: float = 0.0
    n_embedded: int = 0
    embed_cache: Any = None  # the on-disk shards of a streamed pass (edgetl.embed_cache.ShardCache)
    shard: tuple[int, int] | None = None  # (worker index, workers) when each worker embedded only its rows
    # phases
    head_epochs_run: int = 0
    ft_epochs_run: int = 0
    ft_mode: str | None = None
    ft_train_seconds: float = 0.0
    ft_images: int = 0
    ft_cb: Any = None
    ft_model: Any = None
    head_only_w: list[np.ndarray] | None = None  # the head-only candidate's weights (known unless resumed mid-phase)
    head_only_doc: dict[str, Any] | None = None  # its val loss/accuracy, as the keep/restore rule saw them
    agree: float = 0.0
    fine_tune_doc: dict[str, Any] | None = None

    @property
    def n_cls(self) -> int:
        return len(self.classes)

    @property
    def resumed_phase(self) -> str | None:
        return self.resume_state[0]["phase"] if self.resume_state else None
