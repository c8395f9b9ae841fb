"""Why images flip between client resizes, and what a frozen-base model can do about it (issue 22 study).

    python -m benchmarks.resize_study RUN_DIR SPLIT_DIR [--blur 0,1,2] [--lams 0,1,3]

``RUN_DIR`` is a feature-extraction run (``model.keras`` with ``head_pool`` and ``probs``), ``SPLIT_DIR``
a folder with ``train/``, ``val/`` and ``test/`` class folders (``benchmarks/splits.py`` builds one).
Every image is resized by each of the three client resizes (``mediapipe``, ``gpu``, ``pillow``),
optionally low-passed by a Gaussian of ``sigma`` output pixels (a fixed blur that could sit at the
model's input), and embedded by the run's frozen base. Then, per sigma, on val and test:

* the relative embedding change between resizes (median ``|e_a - e_b| / |e_a|``);
* flips (the three resizes do not give the same top-1) and accuracy (MediaPipe's resize) of: the
  run's own head (sigma 0 only); a softmax head refitted on all three resizes of every train image
  (full batch, Adam, L2 1e-4, 400 steps); the same plus a consistency penalty
  ``lam * mean |W (e_a - e_b)|^2`` over the three resize pairs; and the refitted head after projecting
  out the ``k`` embedding directions with the largest resize-variance / total-variance ratio.

Writes ``benchmarks/results/resize_study_<name>_<timestamp>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PAIRS = (("mediapipe", "gpu"), ("mediapipe", "pillow"), ("gpu", "pillow"))


def split_files(split: Path, labels: list[str]) -> tuple[list[str], np.ndarray]:
    paths, ys = [], []
    for i, c in enumerate(labels):
        for f in sorted((split / c).iterdir()):
            paths.append(str(f))
            ys.append(i)
    return paths, np.asarray(ys)


def embed(run: Path, data: Path, sigma: float) -> dict[str, np.ndarray]:
    """``{split}_{resize}`` embeddings and ``{split}_y`` labels; ``W``/``b``: the run's head."""
    import keras
    import tensorflow as tf

    from edgetl.preprocess import RESIZES, Preprocessing, prepare_batch

    cfg = json.loads((run / "config.json").read_text())
    pre = Preprocessing.from_dict(cfg["preprocessing"])
    model = keras.saving.load_model(run / "model.keras", compile=False)
    fe = keras.Model(model.input, model.get_layer("head_pool").output)
    w, b = model.get_layer("probs").get_weights()
    out: dict[str, np.ndarray] = {"W": w, "b": b}
    if sigma > 0:
        r = int(np.ceil(3 * sigma))
        g = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma ** 2))
        g /= g.sum()
        k = tf.constant(np.outer(g, g)[:, :, None, None] * np.ones((1, 1, 3, 1)), tf.float32)

        def low_pass(x: np.ndarray) -> np.ndarray:
            x = tf.pad(tf.constant(x, tf.float32), [[0, 0], [r, r], [r, r], [0, 0]], mode="SYMMETRIC")
            return tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], "VALID").numpy()
    for split in ("train", "val", "test"):
        paths, y = split_files(data / split, cfg["labels"])
        out[f"{split}_y"] = y
        for m in RESIZES:
            x = prepare_batch(paths, replace(pre, resize=m))
            if sigma > 0:
                x = np.concatenate([low_pass(x[i:i + 64]) for i in range(0, len(x), 64)])
            out[f"{split}_{m}"] = fe.predict(x, batch_size=32, verbose=0)
    return out


def fit_head(x: np.ndarray, y: np.ndarray, diffs: np.ndarray, lam: float, steps: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf

    tf.random.set_seed(seed)
    n_cls = int(y.max()) + 1
    xt, yt, dt = tf.constant(x, tf.float32), tf.one_hot(y, n_cls), tf.constant(diffs, tf.float32)
    w = tf.Variable(tf.random.normal([x.shape[1], n_cls], stddev=0.01))
    b = tf.Variable(tf.zeros([n_cls]))
    opt = tf.keras.optimizers.Adam(0.01)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            ce = tf.reduce_mean(tf.keras.losses.categorical_crossentropy(yt, tf.matmul(xt, w) + b, from_logits=True))
            loss = ce + 1e-4 * tf.reduce_sum(w * w)
            if lam > 0:
                loss += lam * tf.reduce_mean(tf.reduce_sum(tf.square(tf.matmul(dt, w)), 1))
        opt.apply_gradients(zip(tape.gradient(loss, [w, b]), [w, b]))
    return w.numpy(), b.numpy()


def score(d: dict[str, np.ndarray], w: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    out = {}
    for split in ("val", "test"):
        p = {m: (d[f"{split}_{m}"] @ w + b).argmax(1) for m in ("mediapipe", "gpu", "pillow")}
        y = d[f"{split}_y"]
        flips = ~((p["mediapipe"] == p["gpu"]) & (p["gpu"] == p["pillow"]))
        out[split] = {"n": int(len(y)), "flips": int(flips.sum()), "correct": int((p["mediapipe"] == y).sum())}
    return out


def study(d: dict[str, np.ndarray], lams: list[float], ks: list[int]) -> list[dict[str, Any]]:
    import scipy.linalg

    rows = []
    if "W" in d:
        rows.append({"head": "the run's own head", **score(d, d["W"], d["b"])})
    x = np.concatenate([d[f"train_{m}"] for m in ("mediapipe", "gpu", "pillow")])
    y = np.concatenate([d["train_y"]] * 3)
    diffs = np.concatenate([d[f"train_{a}"] - d[f"train_{b}"] for a, b in PAIRS])
    for lam in lams:
        w, b = fit_head(x, y, diffs, lam)
        rows.append({"head": f"refit on 3 resizes, consistency lam={lam:g}", **score(d, w, b)})
    total = np.cov((x - x.mean(0)).T) + 1e-3 * np.eye(x.shape[1])
    ratio, vecs = scipy.linalg.eigh(diffs.T @ diffs / len(diffs), total)
    for k in ks:
        v = vecs[:, -k:]
        proj = np.eye(len(ratio)) - v @ np.linalg.pinv(v)
        w, b = fit_head(x @ proj.T, y, diffs @ proj.T, 0.0)
        rows.append({"head": f"refit, {k} most resize-sensitive directions projected out", **score(d, proj.T @ w, b)})
    return rows


def markdown(doc: dict[str, Any]) -> str:
    from edgetl.report import markdown_table

    lines = [f"# Resize flips of a frozen-base model: {doc['name']}", "", f"{doc['date']}, {doc['total_s']:.0f} s; CPU: {doc['cpu']}; "
             f"command: `{doc['command']}`", "", "Flips: the three client resizes (mediapipe, gpu, pillow) do not give the same top-1. "
             "Accuracy: MediaPipe's resize. Embedding change: median relative L2 change of the pooled embedding vs the mediapipe resize (test).", ""]
    rows = []
    for s in doc["sigmas"]:
        for r in s["rows"]:
            rows.append({"input low-pass sigma px": s["sigma"], "embedding change gpu / pillow": s["embedding_change"],
                         "head": r["head"], **{f"{sp} flips": f"{r[sp]['flips']}/{r[sp]['n']}" for sp in ("val", "test")},
                         **{f"{sp} acc %": f"{100 * r[sp]['correct'] / r[sp]['n']:.2f}" for sp in ("val", "test")}})
    lines += [markdown_table(rows, list(rows[0])) if rows else "(no rows)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--blur", default="0,1", help="comma-separated Gaussian sigmas in output pixels (0: none)")
    ap.add_argument("--lams", default="0,1,3")
    ap.add_argument("--ks", default="32,128")
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    from edgetl.report import atomic_write_text, write_json
    from edgetl.runtime.env import environment

    started = time.perf_counter()
    env = environment()
    cpu = env.get("cpu", {}).get("model", "?") if isinstance(env.get("cpu"), dict) else env.get("cpu_model", "?")
    name = args.name or args.run.name
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    doc: dict[str, Any] = {"name": name, "date": _dt.datetime.now().isoformat(timespec="seconds"), "cpu": cpu,
                           "command": "python -m benchmarks.resize_study " + " ".join(argv if argv is not None else sys.argv[1:]),
                           "run": str(args.run), "data": str(args.data), "sigmas": []}
    for sigma in (float(v) for v in args.blur.split(",")):
        d = embed(args.run, args.data, sigma)
        if sigma > 0:
            d.pop("W"), d.pop("b")  # the run's head was trained without the low-pass
        e = d["test_mediapipe"]
        change = " / ".join(f"{np.median(np.linalg.norm(d[f'test_{m}'] - e, axis=1) / np.linalg.norm(e, axis=1)):.3f}" for m in ("gpu", "pillow"))
        rows = study(d, [float(v) for v in args.lams.split(",")], [int(v) for v in args.ks.split(",") if v] if sigma == 0 else [])
        doc["sigmas"].append({"sigma": sigma, "embedding_change": change, "rows": rows})
        doc["total_s"] = round(time.perf_counter() - started, 1)
        RESULTS.mkdir(exist_ok=True)
        write_json(RESULTS / f"resize_study_{name}_{stamp}.json", doc)
        atomic_write_text(RESULTS / f"resize_study_{name}_{stamp}.md", markdown(doc))
        print(markdown(doc), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
