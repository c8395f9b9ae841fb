"""Checkpoints (one complete checkpoint per epoch, written atomically), the per-phase callback (early
stopping, best-weights restore, history rows) and resuming a phase from its checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgetl import quiet
from edgetl.errors import EdgetlError
from edgetl.report import write_json
from edgetl.train.distribute import _scope
from edgetl.train.state import _epoch_lines, _log, _Run


CHECKPOINT_DIR = "checkpoints"


class _Checkpoints:
    """One complete checkpoint per epoch: ``checkpoints/<phase>-<epoch>/`` + ``latest.json``.

    A checkpoint folder is written under a temporary name and renamed into place, and
    ``latest.json`` is replaced atomically after it, so an interruption at any moment
    leaves the previous checkpoint intact.
    """

    def __init__(self, root: Path, strategy: Any = None):
        self.root = root
        self.strategy = strategy  # optimizer slots are created under the training strategy

    def save(self, model: Any, state: dict[str, Any], best_weights: list[np.ndarray] | None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"{state['phase']}-{state['epoch']:04d}"
        tmp = self.root / f".tmp-{name}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        np.savez(tmp / "weights.npz", *model.get_weights())
        opt = model.optimizer
        np.savez(tmp / "optimizer.npz", *[np.asarray(v.numpy()) for v in opt.variables])
        if best_weights is not None:
            np.savez(tmp / "best.npz", *best_weights)
        write_json(tmp / "state.json", state)
        final = self.root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_json(self.root / "latest.json", {"checkpoint": name})
        for old in self.root.iterdir():
            if old.is_dir() and old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def latest(self) -> tuple[dict[str, Any], Path] | None:
        try:
            name = json.loads((self.root / "latest.json").read_text())["checkpoint"]
            path = self.root / name
            return json.loads((path / "state.json").read_text()), path
        except (OSError, ValueError, KeyError):
            return None

    @staticmethod
    def arrays(path: Path) -> list[np.ndarray]:
        try:
            with np.load(path) as z:
                return [z[f"arr_{i}"] for i in range(len(z.files))]
        except Exception as exc:  # noqa: BLE001 - zip/npy/pickle errors all mean a damaged checkpoint
            raise EdgetlError(f"checkpoint file {path} is damaged ({type(exc).__name__}); "
                              f"start a new run with --overwrite") from None

    def restore(self, model: Any, path: Path) -> list[np.ndarray] | None:
        """Load weights and optimizer state into ``model`` (compiled); return the best weights."""
        model.set_weights(self.arrays(path / "weights.npz"))
        opt = model.optimizer
        with _scope(self.strategy):
            opt.build(model.trainable_variables)
        saved = self.arrays(path / "optimizer.npz")
        if len(saved) != len(opt.variables):
            raise EdgetlError(f"checkpoint {path} does not match this model's optimizer ({len(saved)} vs {len(opt.variables)} variables)")
        for var, val in zip(opt.variables, saved):
            var.assign(val)
        best = path / "best.npz"
        return self.arrays(best) if best.is_file() else None


def _make_phase_callback(phase: str, total_epochs: int, epoch_offset: int, patience: int, ckpt: _Checkpoints,
                         history: list[dict[str, Any]], n_train: int, state: dict[str, Any] | None,
                         best_weights: list[np.ndarray] | None) -> Any:
    import keras

    class PhaseCallback(keras.callbacks.Callback):
        """Early stopping on val loss with best-weights restore, history rows and a checkpoint per epoch."""

        def __init__(self) -> None:
            super().__init__()
            self.best = float(state["best"]) if state and state.get("best") is not None else float("inf")
            self.wait = int(state["wait"]) if state else 0
            self.best_weights = best_weights
            # The best epoch of this phase alone (the starting point excluded): the fine-tuned candidate
            # of the keep/restore choice, reported beside the head-only model even when it loses.
            self.phase_best = float("inf")
            self.phase_best_weights: list[np.ndarray] | None = None
            # Saved with every checkpoint, so a resumed run still knows it (the head-only val metrics).
            self.extra_state: dict[str, Any] = dict(state.get("extra") or {}) if state else {}
            self.train_seconds: list[float] = []
            self.stopped_early = False

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._t0 = time.perf_counter()
            self._t_train: float | None = None

        def on_test_begin(self, logs: Any = None) -> None:
            if getattr(self, "_t0", None) is not None and self._t_train is None:
                self._t_train = time.perf_counter() - self._t0

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = dict(logs or {})
            elapsed = time.perf_counter() - self._t0
            t_train = self._t_train if self._t_train is not None else elapsed
            self.train_seconds.append(t_train)
            try:
                lr = float(np.asarray(self.model.optimizer.learning_rate))
            except Exception:  # noqa: BLE001 - logging only
                lr = None
            row = {
                "phase": phase, "epoch": epoch_offset + epoch + 1, "phase_epoch": epoch + 1,
                "loss": logs.get("loss"), "accuracy": logs.get("accuracy"),
                "val_loss": logs.get("val_loss"), "val_accuracy": logs.get("val_accuracy"),
                "lr": lr, "train_seconds": round(t_train, 3), "epoch_seconds": round(elapsed, 3),
                "train_images_per_s": round(n_train / t_train, 2) if t_train > 0 else None,
            }
            history.append({k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in row.items()})
            val_loss = logs.get("val_loss")
            weights = None
            if val_loss is not None and float(val_loss) < self.best:
                self.best, self.wait = float(val_loss), 0
                self.best_weights = weights = self.model.get_weights()
            else:
                self.wait += 1
            if val_loss is not None and float(val_loss) < self.phase_best:
                self.phase_best = float(val_loss)
                self.phase_best_weights = weights if weights is not None else self.model.get_weights()
            if patience and self.wait >= patience:
                self.model.stop_training = True
                self.stopped_early = True
            done = self.model.stop_training or epoch + 1 >= total_epochs
            ckpt.save(self.model, {"phase": phase, "epoch": epoch + 1, "done": bool(done), "best": self.best,
                                   "wait": self.wait, "history": history, "extra": self.extra_state}, self.best_weights)

        def on_train_end(self, logs: Any = None) -> None:
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    return PhaseCallback()


def _fit_phase(r: _Run, phase: str, model: Any, train_ds: Any, val: Any, epochs: int, epoch_offset: int, n_train: int,
               state: Any, best_w: Any, start: int, prepare: Any = None) -> Any:
    """``model.fit`` for one phase with its checkpoint/early-stopping callback; returns the callback.
    ``prepare(cb)`` runs before fitting (the fine-tune phase seeds the callback with the head's val loss)."""
    cb = _make_phase_callback(phase, epochs, epoch_offset, r.cfg.patience, r.ckpt, r.history, n_train,
                              state[0] if state else None, best_w)
    if prepare is not None:
        prepare(cb)
    lines = [_epoch_lines(r.cfg, phase, epochs)] if r.mode == "lines" else []
    with quiet.to_console() if r.mode == "bars" else contextlib.nullcontext():
        model.fit(train_ds, validation_data=val, epochs=epochs, initial_epoch=start,
                  callbacks=[cb, *lines, *r.extra_callbacks], verbose=1 if r.mode == "bars" else 0, shuffle=False)
    return cb


def _resume_point(r: _Run, phase: str, model: Any) -> tuple[Any, Any, int]:
    """(checkpoint state of ``phase`` or None, its best weights restored into ``model``, first epoch)."""
    state = r.resume_state if r.resumed_phase == phase else None
    if not state:
        return None, None, 0
    best_w = r.ckpt.restore(model, state[1])
    start = int(state[0]["epoch"])
    if phase != "head" or not state[0].get("done"):
        _log(r.cfg, f"resuming the {phase} phase after epoch {start}")
    return state, best_w, start


class _NoCheckpoints:
    """The checkpoint sink of a candidate head fit (only the chosen head is checkpointed)."""

    def save(self, model: Any, state: dict[str, Any], best_weights: Any) -> None:
        pass
