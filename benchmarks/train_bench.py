"""Training benchmark: edgetl defaults vs the plain-Keras tutorial recipe, on ../shared/datasets.

    python -m benchmarks.train_bench --data ../shared/datasets [--quick] [--only cats_dogs:fe,baseline,...]

Runs (in this order, results written after each one so a partial run still reports):
``cats_dogs:fe``, ``cats_dogs:baseline`` (frozen base + GAP/Dense head, ``model.fit`` through the base
every epoch, 10 epochs), ``hymenoptera:fe``, ``hymenoptera:ft``, ``cats_dogs:ft`` and
``cats_dogs:plain_ft_throughput`` (plain ``model.fit`` on the same model with the same blocks unfrozen,
timed over a fixed number of steps). Writes ``benchmarks/results/train_<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ALL = ["cats_dogs:fe", "cats_dogs:baseline", "hymenoptera:fe", "hymenoptera:ft", "cats_dogs:ft", "cats_dogs:plain_ft_throughput"]
TARGETS = {("cats_dogs", "feature-extraction"): 0.988, ("cats_dogs", "fine-tune"): 0.990,
           ("hymenoptera", "feature-extraction"): 0.948, ("hymenoptera", "fine-tune"): 0.954}


def run_edgetl(data: Path, strategy: str, out: Path, quick: bool) -> dict:
    from edgetl.config import TrainConfig
    from edgetl.train import train

    kw = dict(epochs=2, fine_tune_epochs=1) if quick else {}
    t0 = time.perf_counter()
    res = train(TrainConfig(data_dir=str(data), strategy=strategy, out=str(out), overwrite=True, verbose=2, **kw))
    wall = time.perf_counter() - t0
    m = res.metrics
    return {
        "dataset": data.name, "method": f"edgetl {strategy}", "strategy": strategy,
        "val_accuracy": m["val"]["accuracy"], "correct": m["val"]["correct"], "total": m["val"]["total"],
        "val_loss": m["val"]["loss"], "wall_seconds": wall, "decode_seconds": m["decode_seconds"],
        "embed_seconds": m["embed_seconds"], "embed_images_per_s": m["embed_images_per_s"],
        "fine_tune_images_per_s": m["fine_tune_images_per_s"], "fine_tune_mode": m["fine_tune_mode"],
        "epochs_run": m["epochs_run"], "target": TARGETS.get((data.name, strategy)), "run_dir": str(out),
    }


def _plain_model(n_classes: int, unfreeze: int = 0):
    import keras

    from edgetl.models import build
    from edgetl.train import unfrozen_layer_names

    base = build("efficientnet_lite0", weights="imagenet")
    base.trainable = unfreeze > 0
    if unfreeze:
        keep = unfrozen_layer_names([layer.name for layer in base.layers], unfreeze)
        for layer in base.layers:
            layer.trainable = layer.name in keep and not isinstance(layer, keras.layers.BatchNormalization)
    x = keras.layers.GlobalAveragePooling2D()(base.output)
    x = keras.layers.Dropout(0.2)(x)
    out = keras.layers.Dense(n_classes, activation="softmax")(x)
    return keras.Model(base.input, out)


def _tutorial_datasets(data: Path, batch: int = 32):
    import keras
    import tensorflow as tf

    kw = dict(image_size=(224, 224), batch_size=batch, label_mode="int", seed=0, verbose=False)
    tr = keras.utils.image_dataset_from_directory(data / "train", shuffle=True, **kw).prefetch(tf.data.AUTOTUNE)
    va = keras.utils.image_dataset_from_directory(data / "val", shuffle=False, **kw).prefetch(tf.data.AUTOTUNE)
    return tr, va


def run_baseline(data: Path, epochs: int) -> dict:
    """The tutorial recipe: the frozen base runs on every image in every epoch."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    t0 = time.perf_counter()
    tr, va = _tutorial_datasets(data)
    model = _plain_model(2)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(tr, validation_data=va, epochs=epochs, verbose=2)
    wall = time.perf_counter() - t0
    ys = np.concatenate([y.numpy() for _, y in va])
    acc = float(hist.history["val_accuracy"][-1])
    return {"dataset": data.name, "method": f"plain model.fit, frozen base, {epochs} epochs", "strategy": "baseline",
            "val_accuracy": acc, "correct": int(round(acc * len(ys))), "total": int(len(ys)), "wall_seconds": wall}


def run_plain_ft_throughput(data: Path, steps: int) -> dict:
    """Images/s of plain ``model.fit`` with the default top blocks unfrozen (same batch 32, same data)."""
    import keras

    from edgetl.models import get_spec

    tr, _ = _tutorial_datasets(data)
    tr = tr.repeat()
    model = _plain_model(2, get_spec("efficientnet_lite0").unfreeze_blocks)
    model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(tr, epochs=1, steps_per_epoch=3, verbose=0)  # trace + warm up
    t0 = time.perf_counter()
    model.fit(tr, epochs=1, steps_per_epoch=steps, verbose=0)
    dt = time.perf_counter() - t0
    return {"dataset": data.name, "method": "plain model.fit, top blocks unfrozen (throughput only)",
            "strategy": "plain-ft-throughput", "fine_tune_images_per_s": steps * 32 / dt, "wall_seconds": dt}


def markdown(results: list[dict]) -> str:
    from edgetl.report import markdown_table

    rows = []
    base = {r["dataset"]: r["wall_seconds"] for r in results if r["strategy"] == "baseline"}
    plain_ips = {r["dataset"]: r["fine_tune_images_per_s"] for r in results if r["strategy"] == "plain-ft-throughput"}
    for r in results:
        row = {"dataset": r["dataset"], "method": r["method"],
               "val accuracy": f"{r['val_accuracy']:.2%} ({r['correct']}/{r['total']})" if "val_accuracy" in r else "-",
               "target": f">= {r['target']:.1%}" if r.get("target") else "-",
               "wall s": round(r["wall_seconds"], 1),
               "ratio vs baseline": round(r["wall_seconds"] / base[r["dataset"]], 3) if r["strategy"] == "feature-extraction" and r["dataset"] in base else None,
               "fine-tune img/s": round(r["fine_tune_images_per_s"], 1) if r.get("fine_tune_images_per_s") else None,
               "img/s vs plain": round(r["fine_tune_images_per_s"] / plain_ips[r["dataset"]], 1) if r["strategy"] == "fine-tune" and r["dataset"] in plain_ips and r.get("fine_tune_images_per_s") else None}
        rows.append(row)
    cols = ["dataset", "method", "val accuracy", "target", "wall s", "ratio vs baseline", "fine-tune img/s", "img/s vs plain"]
    return markdown_table(rows, cols)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets"))
    ap.add_argument("--quick", action="store_true", help="2 head epochs, 1 fine-tune epoch, hymenoptera only")
    ap.add_argument("--only", default=None, help="comma-separated subset of " + ",".join(ALL))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: {args.data} not found (the benchmark needs ../shared/datasets)", file=sys.stderr)
        return 2
    todo = args.only.split(",") if args.only else (["hymenoptera:fe", "hymenoptera:ft"] if args.quick else ALL)
    import keras
    import tensorflow as tf

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out / f"train_{stamp}.json", args.out / f"train_{stamp}.md"
    work = Path(tempfile.mkdtemp(prefix="edgetl-train-bench-"))
    meta = {"date": stamp, "quick": args.quick, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "tensorflow": tf.__version__, "keras": keras.__version__, "gpus": len(tf.config.list_physical_devices("GPU"))}
    results: list[dict] = []
    from edgetl.report import write_json

    for item in todo:
        name, what = item.split(":")
        data = args.data / name
        print(f"== {item}", file=sys.stderr, flush=True)
        if what == "fe":
            r = run_edgetl(data, "feature-extraction", work / f"{name}-fe", args.quick)
        elif what == "ft":
            r = run_edgetl(data, "fine-tune", work / f"{name}-ft", args.quick)
        elif what == "baseline":
            r = run_baseline(data, 2 if args.quick else 10)
        elif what == "plain_ft_throughput":
            r = run_plain_ft_throughput(data, 5 if args.quick else 30)
        else:
            raise SystemExit(f"unknown item {item}")
        results.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
        write_json(json_path, {"meta": meta, "results": results})
        md_path.write_text(f"# edgetl train benchmark {stamp}\n\n{markdown(results)}\n", encoding="utf-8")
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
