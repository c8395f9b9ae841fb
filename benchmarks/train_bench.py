"""Training benchmark: edgetl defaults vs the plain-Keras tutorial recipe, on ../shared/datasets.

    python -m benchmarks.train_bench --data ../shared/datasets [--quick] [--only cats_dogs:fe,baseline,...]

Runs (in this order, results written after each one so a partial run still reports):
``cats_dogs:fe``, ``cats_dogs:baseline`` (frozen base + GAP/Dense head, ``model.fit`` through the base
every epoch, 10 epochs; the same fit also trains issue 6's peer, the tutorial Flatten/Dense head, whose
default TFLite conversion is then checked on the val set: ``--no-peer`` leaves it out), ``hymenoptera:fe``, ``hymenoptera:ft``, ``cats_dogs:ft`` and
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
    rep = m.get("test") or m["val"]
    return {
        "dataset": data.name, "method": f"edgetl {strategy}", "strategy": strategy, "split": "test" if m.get("test") else "val",
        "accuracy": rep["accuracy"], "correct": rep["correct"], "total": rep["total"], "val_accuracy": m["val"]["accuracy"],
        "val_loss": m["val"]["loss"], "wall_seconds": wall, "decode_seconds": m["decode_seconds"],
        "embed_seconds": m["embed_seconds"], "embed_images_per_s": m["embed_images_per_s"],
        "fine_tune_images_per_s": m["fine_tune_images_per_s"], "fine_tune_mode": m["fine_tune_mode"],
        "epochs_run": m["epochs_run"], "target": TARGETS.get((data.name, strategy)), "run_dir": str(out),
    }


def _plain_model(n_classes: int, unfreeze: int = 0, peer: bool = False):
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
    out = keras.layers.Dense(n_classes, activation="softmax", name="gap_head")(x)
    if peer:
        p = keras.layers.Flatten(name="peer_flatten")(base.output)
        pout = keras.layers.Dense(n_classes, activation="softmax", name="peer_head")(p)
        return keras.Model(base.input, [out, pout]), keras.Model(base.input, pout)
    return keras.Model(base.input, out)


def _tutorial_datasets(data: Path, batch: int = 32, seed: int = 0):
    """(train, val, test or None), the tutorials' ``image_dataset_from_directory`` at 224 px."""
    import keras
    import tensorflow as tf

    kw = dict(image_size=(224, 224), batch_size=batch, label_mode="int", seed=seed, verbose=False, follow_links=True)
    tr = keras.utils.image_dataset_from_directory(data / "train", shuffle=True, **kw).prefetch(tf.data.AUTOTUNE)
    va = keras.utils.image_dataset_from_directory(data / "val", shuffle=False, **kw).prefetch(tf.data.AUTOTUNE)
    te = (keras.utils.image_dataset_from_directory(data / "test", shuffle=False, **kw).prefetch(tf.data.AUTOTUNE)
          if (data / "test").is_dir() else None)
    return tr, va, te


def _selection_callback(heads: dict[str, str]):
    """Best-epoch restore per head on the selection split (edgetl's rule: the lowest val loss), and the
    time ``model.fit`` spends validating (``on_test_begin`` .. ``on_test_end``, every epoch).

    ``heads`` maps a head layer's name to its val-loss key in the logs. Only the heads train (the base
    is frozen), so keeping a head's weights at its best epoch is keeping that model's best epoch."""
    import keras

    class Selection(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.best = {h: (float("inf"), None, None) for h in heads}  # loss, epoch, weights
            self.val_seconds: list[float] = []
            self._t = 0.0

        def on_test_begin(self, logs=None):
            self._t = time.perf_counter()

        def on_test_end(self, logs=None):
            self.val_seconds.append(time.perf_counter() - self._t)

        def on_epoch_end(self, epoch, logs=None):
            for head, key in heads.items():
                loss = float((logs or {}).get(key, float("inf")))
                if loss < self.best[head][0]:
                    self.best[head] = (loss, epoch + 1, self.model.get_layer(head).get_weights())

        def restore(self) -> dict[str, int | None]:
            for head, (_, _, w) in self.best.items():
                if w is not None:
                    self.model.get_layer(head).set_weights(w)
            return {h: b[1] for h, b in self.best.items()}

    return Selection()


def _accuracy(model, ds) -> tuple[list[int], int, "np.ndarray"]:
    """(correct per output, total, labels) of ``model`` on ``ds``: one pass over the images, every output."""
    import numpy as np

    ys = np.concatenate([y.numpy() for _, y in ds])
    probs = model.predict(ds.map(lambda x, y: x), verbose=0)
    outputs = probs if isinstance(probs, (list, tuple)) else [probs]
    return [int((np.asarray(p).argmax(1) == ys).sum()) for p in outputs], int(len(ys)), ys


def run_baseline(data: Path, epochs: int, peer: bool = True, seed: int = 0) -> list[dict]:
    """The tutorial recipe: the frozen base runs on every image in every epoch.

    Selection as edgetl's (issue 13): every epoch is validated on ``val/``, the epoch with the lowest
    val loss is restored, and accuracy is reported on ``test/`` when the folder has one (the same
    test images as edgetl's). The time spent validating is measured separately, so the row also gives
    the wall time of the same recipe validating once at the end (``wall_seconds_validate_once``:
    the fit's wall time minus the per-epoch validation passes plus one of them).

    With ``peer``, the same ``model.fit`` also trains the other head tutorials use on the same frozen
    base, ``Flatten`` + ``Dense`` (issue 6's peer), as a second output: the heads share the frozen
    base's forward pass and get independent gradients (the loss is their sum, Adam is per weight), so
    each is trained exactly as it would be alone, and each gets its own best epoch. The Flatten head
    adds ~125k multiply-adds per image to the base's ~400M (< 0.1 %), so the baseline's wall time is
    unaffected within noise. The peer's model is then converted the default way
    (``optimizations=[DEFAULT]``, no representative data: dynamic range) and that ``.tflite`` is run
    on the test images (val when there is no test split) with LiteRT.
    """
    import keras

    keras.utils.set_random_seed(seed)
    t0 = time.perf_counter()
    tr, va, te = _tutorial_datasets(data, seed=seed)
    if peer:
        model, peer_model = _plain_model(2, peer=True)
        tr = tr.map(lambda x, y: (x, (y, y)))
        va2 = va.map(lambda x, y: (x, (y, y)))
        model.compile(keras.optimizers.Adam(1e-3), ["sparse_categorical_crossentropy"] * 2, metrics=[["accuracy"], ["accuracy"]])
        sel = _selection_callback({"gap_head": "val_gap_head_loss", "peer_head": "val_peer_head_loss"})
        model.fit(tr, validation_data=va2, epochs=epochs, verbose=2, callbacks=[sel])
    else:
        model = _plain_model(2)
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
        sel = _selection_callback({"gap_head": "val_loss"})
        model.fit(tr, validation_data=va, epochs=epochs, verbose=2, callbacks=[sel])
    wall = time.perf_counter() - t0
    best = sel.restore()
    val_s = float(sum(sel.val_seconds))
    once = wall - val_s + (val_s / len(sel.val_seconds) if sel.val_seconds else 0.0)
    report = te if te is not None else va
    split = "test" if te is not None else "val"
    (v_correct, *_), v_total, _ = _accuracy(model, va)
    (correct, *p_correct), total, ys = _accuracy(model, report)  # the peer head's count, when there is one
    out = [{"dataset": data.name, "method": f"plain model.fit, frozen base, {epochs} epochs, best val-loss epoch restored",
            "strategy": "baseline", "split": split, "accuracy": correct / total, "correct": correct, "total": total,
            "val_accuracy": v_correct / v_total, "val_correct": v_correct, "val_total": v_total, "best_epoch": best["gap_head"],
            "wall_seconds": wall, "validation_seconds": round(val_s, 1), "validation_passes": len(sel.val_seconds),
            "wall_seconds_validate_once": round(once, 1), "trained_with_peer_head": peer, "seed": seed}]
    if peer:
        out.append(run_peer_tflite(data, peer_model, report, ys, p_correct[0] / total, wall, epochs, split, best["peer_head"]))
    return out


def run_peer_tflite(data: Path, peer_model, ds, ys, float_acc: float, fit_seconds: float, epochs: int,
                    split: str = "val", best_epoch: int | None = None) -> dict:
    """Default TFLite conversion of the tutorial Flatten/Dense model and its accuracy under LiteRT (2 threads)."""
    import numpy as np
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    t0 = time.perf_counter()
    how = "from_keras_model"
    try:
        conv = tf.lite.TFLiteConverter.from_keras_model(peer_model)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        blob = conv.convert()
    except Exception:  # noqa: BLE001 - Keras 3 models sometimes need the concrete-function route (same graph)
        how = "from_concrete_functions (from_keras_model failed)"
        spec = tf.TensorSpec([None, *peer_model.input_shape[1:]], tf.float32)
        fn = tf.function(lambda x: peer_model(x, training=False)).get_concrete_function(spec)
        conv = tf.lite.TFLiteConverter.from_concrete_functions([fn], peer_model)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        blob = conv.convert()
    convert_s = time.perf_counter() - t0
    threads = 2
    interp = Interpreter(model_content=blob, num_threads=threads)
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], [1, *peer_model.input_shape[1:]])
    interp.allocate_tensors()
    preds = []
    t0 = time.perf_counter()
    for xb, _ in ds:
        for img in xb.numpy().astype(np.float32):
            interp.set_tensor(inp["index"], img[None])
            interp.invoke()
            preds.append(int(np.argmax(interp.get_tensor(outp["index"])[0])))
    eval_s = time.perf_counter() - t0
    preds = np.asarray(preds)
    correct = int((preds == ys).sum())
    n_params = int(peer_model.count_params())
    return {"dataset": data.name, "method": f"peer: tutorial Flatten/Dense head, model.fit {epochs} epochs (float), best val-loss epoch restored",
            "strategy": "peer", "split": split, "best_epoch": best_epoch, "accuracy": float_acc,
            "correct": int(round(float_acc * len(ys))), "total": int(len(ys)),
            "wall_seconds": fit_seconds, "wall_seconds_note": "the model.fit shared with the baseline row",
            "params": n_params, "float32_size_mb": round(n_params * 4 / 1e6, 2),
            "tflite_converter": how, "tflite_optimizations": "DEFAULT (dynamic range, no representative data)",
            "tflite_size_mb": round(len(blob) / 1e6, 2), "tflite_convert_seconds": round(convert_s, 1),
            "tflite_accuracy": correct / len(ys), "tflite_correct": correct,
            "tflite_eval_threads": threads, "tflite_eval_ms_per_image": round(1000 * eval_s / len(ys), 2)}


def run_plain_ft_throughput(data: Path, steps: int) -> dict:
    """Images/s of plain ``model.fit`` with the default top blocks unfrozen (same batch 32, same data)."""
    import keras

    from edgetl.models import get_spec

    tr, _, _ = _tutorial_datasets(data)
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
               "accuracy": f"{r['accuracy']:.2%} ({r['correct']}/{r['total']}, {r.get('split', 'val')})" if "accuracy" in r else "-",
               "target": f">= {r['target']:.1%}" if r.get("target") else "-",
               "wall s": round(r["wall_seconds"], 1),
               "ratio vs baseline": round(r["wall_seconds"] / base[r["dataset"]], 3) if r["strategy"] == "feature-extraction" and r["dataset"] in base else None,
               "fine-tune img/s": round(r["fine_tune_images_per_s"], 1) if r.get("fine_tune_images_per_s") else None,
               "img/s vs plain": round(r["fine_tune_images_per_s"] / plain_ips[r["dataset"]], 1) if r["strategy"] == "fine-tune" and r["dataset"] in plain_ips and r.get("fine_tune_images_per_s") else None}
        rows.append(row)
    base_correct = {r["dataset"]: r["correct"] for r in results if r["strategy"] == "baseline"}
    for r, row in zip(results, rows):
        row["images vs baseline"] = (f"{r['correct'] - base_correct[r['dataset']]:+d}"
                                     if r["strategy"] in ("feature-extraction", "fine-tune", "peer") and r["dataset"] in base_correct else None)
    cols = ["dataset", "method", "accuracy", "target", "images vs baseline", "wall s", "ratio vs baseline",
            "fine-tune img/s", "img/s vs plain"]
    text = markdown_table(rows, cols)
    peers = [r for r in results if r["strategy"] == "peer"]
    if peers:
        prow = [{"dataset": r["dataset"], "float accuracy": f"{r['accuracy']:.2%} ({r['correct']}/{r['total']}, {r['split']})",
                 "TFLite (DEFAULT) accuracy": f"{r['tflite_accuracy']:.2%} ({r['tflite_correct']}/{r['total']})",
                 "training s (shared fit)": round(r["wall_seconds"], 1), "params": r["params"],
                 "float32 MB": r["float32_size_mb"], "TFLite MB": r["tflite_size_mb"],
                 "convert s": r["tflite_convert_seconds"], "ms/image (LiteRT, 2 threads)": r["tflite_eval_ms_per_image"]}
                for r in peers]
        text += ("\n\nPeer (issue 6): the tutorial recipe, frozen base + Flatten/Dense head trained with model.fit "
                 "(same fit as the baseline, second output), converted with `TFLiteConverter.from_keras_model`, "
                 "`optimizations=[DEFAULT]`, no representative data.\n\n"
                 + markdown_table(prow, list(prow[0])))
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets"))
    ap.add_argument("--quick", action="store_true", help="2 head epochs, 1 fine-tune epoch, hymenoptera only")
    ap.add_argument("--only", default=None, help="comma-separated subset of " + ",".join(ALL))
    ap.add_argument("--no-peer", action="store_true", help="baseline without the Flatten/Dense peer head and its TFLite check")
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
            r = run_baseline(data, 2 if args.quick else 10, peer=not args.no_peer)
        elif what == "plain_ft_throughput":
            r = run_plain_ft_throughput(data, 5 if args.quick else 30)
        else:
            raise SystemExit(f"unknown item {item}")
        for one in r if isinstance(r, list) else [r]:
            results.append(one)
            print(json.dumps(one), file=sys.stderr, flush=True)
        write_json(json_path, {"meta": meta, "results": results})
        md_path.write_text(f"# edgetl train benchmark {stamp}\n\n{markdown(results)}\n", encoding="utf-8")
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
