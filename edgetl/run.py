"""A run directory: what ``edgetl train`` writes and ``export``/``bench``/``predict`` read.

Layout::

    RUN_DIR/
      model.keras        one functional graph: float32 pixels [0,255] (N,H,W,3) -> softmax (N,C)
      labels.txt         class names, one per line, in output order
      config.json        every resolved setting, versions, preprocessing, data fingerprint
      history.csv, metrics.json, curves.png, confusion_matrix.png
      export/            written by ``edgetl export``
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetl.errors import EdgetlError, UsageError
from edgetl.preprocess import DEFAULT_MAX_PIXELS, Preprocessing

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.txt"
CONFIG_FILE = "config.json"


@dataclass
class RunInfo:
    path: Path
    config: dict[str, Any]
    labels: list[str]
    preprocessing: Preprocessing

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def backbone(self) -> str:
        return str(self.config.get("backbone", "model"))

    @property
    def export_dir(self) -> Path:
        return self.path / "export"

    def load_model(self) -> Any:
        """The Keras model, loaded in safe mode (no arbitrary code from the file)."""
        from edgetl.runtime.keras_runner import load_keras_model

        return load_keras_model(self.model_path)

    def dataset(self, validate: bool = True, data_dir: str | Path | None = None, progress: Any = None):
        """Re-scan the run's data folder (or ``data_dir``) with the run's own split settings.

        With ``validate`` (the default) every file is decoded as training decoded it (same
        ``max_pixels``), so files that fail are dropped before the seeded split, as in training.
        """
        from edgetl.data import load_dataset

        root: str | Path | None = data_dir
        if root is None:
            data = self.config.get("data") or {}
            # config.json records the folder as given (data.root, maybe relative to where train ran) and
            # resolved (data_dir): a relative path must not break export/bench run from another folder.
            given = [r for r in (self.config.get("data_dir"), data.get("root")) if r]
            root = next((r for r in given if Path(r).is_absolute() and Path(r).is_dir()), given[0] if given else None)
            if not root:
                raise EdgetlError(f"{self.path / CONFIG_FILE} does not record the data folder; pass --data")
            if not Path(root).is_dir():
                raise EdgetlError(f"the run's data folder {root} is gone; pass --data DIR")
        max_pixels = (self.config.get("train_config") or {}).get("max_pixels", DEFAULT_MAX_PIXELS)
        ds = load_dataset(root, val_split=float(self.config.get("val_split", 0.2)), seed=int(self.config.get("seed", 0)),
                          validate=validate, max_pixels=max_pixels or None, progress=progress)
        if ds.classes != self.labels:
            raise EdgetlError(f"classes in {root} ({', '.join(ds.classes)}) differ from the run's labels ({', '.join(self.labels)})")
        return ds

    def checked_dataset(self, data_dir: str | Path | None = None, accept_changed: bool = False,
                        progress: Any = None) -> tuple[Any, str | None]:
        """(dataset, warning): the split rebuilt exactly as training built it, checked against the
        ``data.split_sha256`` that ``config.json`` recorded.

        Returns a warning (for the output files) instead of raising when ``accept_changed`` is set,
        or when the run records no split hashes (made before they existed).

        No file is decoded when the folder, listed without decoding, gives every recorded split hash
        (relative paths and sizes): training skipped no file then, and the splits are the recorded ones.
        Otherwise every file is decoded as training decoded it (``progress(done, total)``), which drops
        the files training dropped before the seeded split.

        Raises:
            DataChangedError: the folder no longer gives the recorded split (one line: what changed).
        """
        from edgetl.data import DataChangedError, split_changes

        recorded = self.config.get("data") or {}
        if recorded.get("split_sha256"):
            try:
                listed = self.dataset(validate=False, data_dir=data_dir)
            except EdgetlError:
                listed = None  # the decoding pass below says what is wrong
            if listed is not None and split_changes(listed, recorded) is None:
                return listed, None
        ds = self.dataset(validate=True, data_dir=data_dir, progress=progress)
        if not recorded.get("split_sha256"):
            return ds, "config.json records no split hashes (a run from an older edgetl): the split was not checked"
        changed = split_changes(ds, recorded)
        if changed is None:
            return ds, None
        where = data_dir or ds.root
        if not accept_changed:
            raise DataChangedError(f"{where} no longer gives the split this run was trained on: {changed} "
                                   "(--accept-changed-data to go on with the new split)")
        return ds, (f"DATA CHANGED since training, measured on the new split anyway (--accept-changed-data): {changed}")


def write_config(run_dir: str | Path, doc: dict[str, Any]) -> None:
    """Write the run's ``config.json`` (atomically): ``edgetl train`` at the start and at the end."""
    from edgetl.report import write_json

    write_json(Path(run_dir) / CONFIG_FILE, doc)


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``config.json`` as a dict.

    Raises:
        EdgetlError: missing or not a JSON object.
    """
    p = Path(run_dir) / CONFIG_FILE
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EdgetlError(f"{p} is missing or unreadable ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise EdgetlError(f"{p} is not a JSON object")
    return doc


def read_labels(path: Path) -> list[str]:
    return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_run(run_dir: str | Path) -> RunInfo:
    """Open a run directory.

    Raises:
        UsageError: not a folder.
        EdgetlError: the folder is not a complete run (no model, labels or config).
    """
    p = Path(run_dir)
    if not p.exists():
        raise UsageError(f"run directory not found: {p}")
    if not p.is_dir():
        raise UsageError(f"not a run directory: {p} (expected a folder made by 'edgetl train')")
    for name in (MODEL_FILE, LABELS_FILE, CONFIG_FILE):
        if not (p / name).is_file():
            raise EdgetlError(f"{p} is not a complete run: {name} is missing (did 'edgetl train' finish?)")
    try:
        config = json.loads((p / CONFIG_FILE).read_text(encoding="utf-8"))
        pre = Preprocessing.from_dict(config["preprocessing"])
    except (ValueError, KeyError, TypeError) as exc:
        raise EdgetlError(f"{p / CONFIG_FILE} is unreadable or incomplete ({type(exc).__name__}: {exc})") from None
    labels = read_labels(p / LABELS_FILE)
    if len(labels) < 2:
        raise EdgetlError(f"{p / LABELS_FILE} lists {len(labels)} class(es); expected at least 2")
    return RunInfo(p, config, labels, pre)
