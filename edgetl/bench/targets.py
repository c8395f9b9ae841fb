"""What to bench and on which images: the targets of run directories and files, the labelled evaluation
set (the run's own split or ``--data``), and the label check made before any row."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgetl.bench.results import FORMAT_ORDER, PRECISION_ORDER, Target
from edgetl.errors import EdgetlError, ModelFileError, UsageError
from edgetl.runtime.fileinfo import onnx_metadata


def discover_targets(items: Sequence[str | Path], keras: bool = True) -> tuple[list[Target], Any]:
    """Run directories expand to their Keras model and every ``export/*.tflite|*.onnx``; files stay as given.

    Returns (targets, the first run's RunInfo or None).
    """
    from edgetl.run import load_run

    targets: list[Target] = []
    first_run = None
    for item in items:
        p = Path(item)
        if not p.exists():
            raise UsageError(f"not found: {p}")
        if p.is_dir() and not (p / "model.keras").exists():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in (".tflite", ".onnx") and f.is_file())
            if files:  # a folder of exported files (e.g. RUN_DIR/export copied to a device)
                targets += [Target(f, f.suffix.lower()[1:]) for f in files]
                continue
        if p.is_dir():
            info = load_run(p)
            first_run = first_run or info
            found: list[Target] = []
            if keras:
                found.append(Target(info.model_path, "keras", p, "fp32"))
            if info.export_dir.is_dir():
                for f in sorted(info.export_dir.iterdir()):
                    if f.suffix.lower() in (".tflite", ".onnx") and f.is_file():
                        found.append(Target(f, f.suffix.lower()[1:], p))
            if not found:
                raise EdgetlError(f"{p}: nothing to bench (no export/ artifacts and --no-keras); run 'edgetl export {p}' first")
            targets += found
        else:
            fmt = p.suffix.lower()[1:]
            if fmt not in ("tflite", "onnx", "keras"):
                raise ModelFileError(f"{p}: unsupported model file type {p.suffix!r}; expected .tflite, .onnx or .keras")
            if fmt == "keras" and not keras:
                continue
            targets.append(Target(p, fmt))
    if not targets:
        raise UsageError("nothing to bench")
    from edgetl.runtime.fileinfo import precision_from_name

    def order(t: Target) -> tuple:
        prec = t.precision_hint or precision_from_name(t.path) or "zz"
        return (FORMAT_ORDER.get(t.format, 9), PRECISION_ORDER.get(prec, 5), str(t.path))

    seen: set[Path] = set()
    unique = []
    for t in sorted(targets, key=order):
        key = t.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(t)
    return unique, first_run


@dataclass
class EvalSet:
    paths: list[str]
    y: np.ndarray
    classes: list[str]
    source: str
    note: str | None = None
    split_sha256: str | None = None  # of the whole split the images come from (data.split_sha256 in config.json)
    warning: str | None = None


def majority_for(run: Any, labels: Sequence[str], y: np.ndarray) -> dict[str, Any] | None:
    """What always answering the run's largest training class scores on these images (percent), when
    its training classes were unbalanced (``config.json`` counts, the run's ``imbalance_ratio``); else None."""
    from edgetl.metrics import imbalance_ratio, majority_baseline

    counts = (((run.config.get("data") or {}).get("counts") or {}).get("train") or {}) if run is not None else {}
    if not counts or list(run.labels) != list(labels):
        return None
    train = [int(counts.get(c, 0)) for c in labels]
    ratio = imbalance_ratio(train)
    if ratio is None or ratio <= float((run.config.get("train_config") or {}).get("imbalance_ratio", 1.5)):
        return None
    b = majority_baseline(train, y)
    if b is None:
        return None
    return {"class": labels[b["class_index"]], "imbalance_ratio": ratio, "top1": 100.0 * b["accuracy"],
            "balanced_accuracy": 100.0 * b["balanced_accuracy"]}


def eval_set_for(labels: Sequence[str], data: str | Path | None, run: Any, samples: int | None, seed: int,
                 accept_changed: bool = False,
                 decode_progress: Callable[[str], Callable[[int, int], None]] | None = None) -> EvalSet | None:
    """Labelled validation images for a model with ``labels``.

    With ``data``: ``data/val/<class>/`` when present, else ``data/<class>/``; class folders are matched to
    the model's labels by name (models without labels, i.e. ``class_0..``, take the sorted folder names).
    Without it: the run's own test split when its data has one, else its validation split, rebuilt
    exactly as training built it and checked against config.json. None when there is neither.

    Raises:
        DataChangedError: the run's folder no longer gives the recorded split (unless ``accept_changed``).
    """
    from edgetl.data import scan_folder, split_sha256, stratified_sample

    labels = list(labels)
    note = warning = None
    if data is None:
        if run is None or list(run.labels) != labels:
            return None
        # Every choice of the run (early stopping, keeping the fine-tuned weights, the doctor) looked at
        # val; a test split, when the data has one, is what no choice saw: report on it.
        ds, warning = run.checked_dataset(accept_changed=accept_changed,
                                          **({"progress": decode_progress("checking the run's images")} if decode_progress else {}))
        root = ds.root
        use_test = ds.test is not None and bool(ds.test.samples)
        split = ds.test if use_test else ds.val
        source = (f"{run.config.get('data_dir') or (run.config.get('data') or {}).get('root')} "
                  f"(the run's {'test' if use_test else 'validation'} split)")
    else:
        root, folders = _data_classes(data, labels)
        classes = labels
        if not set(folders) & set(labels):
            if _matched_by_order(labels, folders):
                note = f"the model carries no labels; class folders matched by sorted name: {', '.join(folders)}"
                split = scan_folder(root, folders)
                split.classes = labels
            else:
                raise LabelMismatchError(_mismatch_message(data, folders, [labels]))
        else:
            extra = sorted(set(folders) - set(labels))
            if extra:
                note = f"ignored class folders the model does not know: {', '.join(extra[:8])}"
            split = scan_folder(root, classes)
        source = str(root)
    samples_ = stratified_sample(split.samples, samples, seed=seed) if samples else list(split.samples)
    if not samples_:
        raise EdgetlError(f"no labelled images for bench in {source}")
    return EvalSet([s.path for s in samples_], np.array([s.label for s in samples_], dtype=np.int64), labels, source, note,
                   split_sha256(split, root), warning)


class LabelMismatchError(EdgetlError):
    """The ``--data`` class folders match none of a model's labels: its rows cannot measure accuracy."""


def _data_classes(data: str | Path, labels: Sequence[str]) -> tuple[Path, list[str]]:
    """The folder ``eval_set_for`` reads (``data/val/`` or ``data/validation/`` when present) and its class folders."""
    root = Path(data)
    if not root.is_dir():
        raise UsageError(f"--data folder not found: {root}")
    for sub in ("val", "validation"):
        if (root / sub).is_dir() and any((root / sub / c).is_dir() for c in list(labels) + _folders(root / sub)):
            root = root / sub
            break
    folders = _folders(root)
    if not folders:
        raise UsageError(f"--data {data}: no class folders found")
    return root, folders


def _matched_by_order(labels: Sequence[str], folders: Sequence[str]) -> bool:
    """A model without labels (``class_0..``) takes the sorted folder names when the counts agree."""
    return list(labels) == [f"class_{i}" for i in range(len(labels))] and len(folders) == len(labels)


def _label_mismatch(labels: Sequence[str], folders: Sequence[str]) -> bool:
    return not set(folders) & set(labels) and not _matched_by_order(labels, folders)


def _names(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _mismatch_message(data: str | Path, folders: Sequence[str], label_sets: Sequence[Sequence[str]]) -> str:
    first = list(label_sets[0])
    more = f" (and {len(label_sets) - 1} other label set(s), none matching either)" if len(label_sets) > 1 else ""
    return (f"--data {data}: class folders ({_names(list(folders))}) match none of the model's labels "
            f"({_names(first)}){more}: no accuracy can be measured; pass a folder whose class folders are named like "
            f"the labels")


def _target_labels(target: Target) -> list[str] | None:
    """The labels a target's runner will report, read without loading the model (run directory, labels
    embedded in a TFLite or ONNX file); None when only the model can tell (labels.txt vs class count)."""
    from edgetl.runtime.fileinfo import labels_from_meta

    try:
        if target.format == "keras" and target.run_dir is not None:
            from edgetl.run import load_run

            return list(load_run(target.run_dir).labels)  # what runner_for(run_dir) uses
        if target.format == "tflite":
            from edgetl.runtime.fileinfo import read_edgetl_json

            return labels_from_meta(read_edgetl_json(target.path).get("labels"), 0)
        if target.format == "onnx":
            return labels_from_meta(onnx_metadata(target.path).get("edgetl.labels"), 0)
    except Exception:  # noqa: BLE001 - unknown here; the row itself will say what is wrong
        return None
    return None


def _opened_labels(target: Target) -> list[str] | None:
    """The labels of a target by opening it (only used while every target so far is doomed)."""
    from edgetl.runtime.loader import runner_for

    try:
        if target.format == "onnx":
            runner = runner_for(target.path, threads=1, providers=("cpu",))
        else:
            runner = runner_for(target.run_dir or target.path, threads=1)
        return list(runner.labels)
    except Exception:  # noqa: BLE001 - not a label problem: the row will report it
        return None


def check_labels_up_front(targets: Sequence[Target], data: str | Path) -> None:
    """Raise :class:`LabelMismatchError` once, before any row, when ``data`` matches no target's labels.

    Labels are read without loading the models where the files carry them (run directory, edgetl's
    TFLite/ONNX metadata); when one of those matches, the check ends there, so a normal bench pays
    nothing. A target whose labels need the model is opened only while every other target is doomed;
    one that cannot be opened ends the check (its row will report its own error).
    """
    known = [(t, _target_labels(t)) for t in targets]
    folders: list[str] | None = None
    seen: list[list[str]] = []

    def doomed(labels: list[str]) -> bool:
        nonlocal folders
        if folders is None:
            _, folders = _data_classes(data, labels)  # no class folders at all dooms every row too
        if not _label_mismatch(labels, folders):
            return False
        if labels not in seen:
            seen.append(labels)
        return True

    for _, labels in known:
        if labels is not None and not doomed(labels):
            return
    for t, labels in known:
        if labels is None:
            labels = _opened_labels(t)
            if labels is None or not doomed(labels):
                return
    if seen and folders is not None:
        raise LabelMismatchError(_mismatch_message(data, folders, seen))


def _folders(root: Path) -> list[str]:
    try:
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
