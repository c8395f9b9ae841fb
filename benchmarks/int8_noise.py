"""Why int8 flips a model's predictions: feature noise against the float model's margins (issue 25).

Usage::

    python -m benchmarks.int8_noise ../shared/datasets/sign_digits/test RUN_DIR:EXPORT_DIR [RUN_DIR:EXPORT_DIR ...]
        [--name NAME]

For each run and its exported ``*_int8.tflite`` (a feature-extraction or fine-tune run whose classifier is
its last ``Dense`` layer), on the images of the given folder (``<class>/<image>``):

* the file's top-1 agreement with the Keras model, and the float model's near-ties (top-2 margin < 0.05);
* the pooled features the int8 file feeds its last ``FULLY_CONNECTED`` (read back with
  ``experimental_preserve_all_tensors``, dequantized) against the Keras model's: relative RMS error, and the
  share of it that is a constant offset (the part a bias correction could remove);
* agreement of the *float* classifier on the int8 features (is the classifier's own quantization the
  problem?) and after subtracting the mean feature error measured on these same images (an oracle: an
  upper bound for any bias correction);
* a noise model: the logit differences ``z_top - z_c`` of the float model against the spread of the int8
  logit error ``(e_top - e_c)`` over the images gives each image's flip probability
  ``sum_c Phi(-(z_top - z_c) / sd_c)``; their sum, the expected flips, beside the observed ones; and the
  factor by which the feature noise would have to shrink for the expected agreement to reach 99 %.

Writes ``benchmarks/results/int8_noise_<name>_<timestamp>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
NEAR_TIE = 0.05


def _images(folder: Path, labels: list[str]) -> list[str]:
    return [str(p) for c in labels for p in sorted((folder / c).iterdir()) if p.is_file()]


def _int8_features(path: Path, px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dequantized input of the last FULLY_CONNECTED, output probabilities) of an int8 ``.tflite``."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(str(path), experimental_preserve_all_tensors=True, num_threads=1)
    it.allocate_tensors()
    fc = [o for o in it._get_ops_details() if o["op_name"] == "FULLY_CONNECTED"][-1]
    feat_t = int(fc["inputs"][0])
    det = {d["index"]: d for d in it.get_tensor_details()}
    inp, out = it.get_input_details()[0], it.get_output_details()[0]

    def deq(d: dict, a: np.ndarray) -> np.ndarray:
        s, z = d["quantization"]
        return (a.astype(np.float32) - z) * s if s else a.astype(np.float32)

    feats, probs = [], []
    for x in px:
        it.set_tensor(inp["index"], x[None].astype(inp["dtype"]))
        it.invoke()
        feats.append(deq(det[feat_t], it.get_tensor(feat_t)).reshape(-1))
        probs.append(deq(out, it.get_tensor(out["index"]))[0])
    return np.array(feats), np.array(probs)


def expected_flips(z: np.ndarray, ez: np.ndarray, scale: float = 1.0) -> float:
    """Sum over images of ``sum_c Phi(-(z_top - z_c) / (scale * sd(e_top - e_c)))`` (a union bound per image)."""
    top = z.argmax(-1)
    total = 0.0
    for i in range(len(z)):
        a = top[i]
        for c in range(z.shape[1]):
            if c == a:
                continue
            sd = scale * float(np.std(ez[:, a] - ez[:, c]))
            d = float(z[i, a] - z[i, c])
            total += 0.5 * math.erfc(d / (sd * math.sqrt(2))) if sd > 0 else float(d <= 0)
    return total


def analyse(run_dir: Path, export_dir: Path, data: Path) -> dict:
    import keras

    from edgetl.preprocess import prepare_batch
    from edgetl.run import load_run

    run = load_run(run_dir)
    paths = _images(data, list(run.labels))
    px = prepare_batch(paths, run.preprocessing)
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    dense = [layer for layer in model.layers if type(layer).__name__ == "Dense"][-1]
    w, b = dense.get_weights()
    f_float = keras.Model(model.inputs, dense.input).predict(px.astype(np.float32), verbose=0).reshape(len(px), -1)
    z = f_float @ w + b
    tfl = sorted(export_dir.glob("*_int8.tflite"))[0]
    f_q, p_q = _int8_features(tfl, px)
    ref = z.argmax(-1)
    e = np.exp(z - z.max(-1, keepdims=True))
    s = np.sort(e / e.sum(-1, keepdims=True), -1)
    err = f_q - f_float
    ez = err @ w
    n = len(px)
    observed = int(np.sum(p_q.argmax(-1) != ref))
    exp1 = expected_flips(z, ez)
    lo, hi = 0.0, 1.0  # the noise factor whose expected flips are 1 % of the images
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_flips(z, ez, mid) <= 0.01 * n else (lo, mid)

    def agree(logits: np.ndarray) -> float:
        return round(100.0 * float(np.mean(logits.argmax(-1) == ref)), 2)

    return {"run": str(run_dir), "file": str(tfl), "images": n,
            "near_tie_pct": round(100.0 * float(np.mean(s[:, -1] - s[:, -2] < NEAR_TIE)), 2),
            "agreement_pct": round(100.0 * (n - observed) / n, 2), "observed_flips": observed,
            "feature_rel_rms_error": round(float(np.sqrt((err ** 2).mean() / (f_float ** 2).mean())), 4),
            "offset_share_of_error": round(float((err.mean(0) ** 2).sum() / (err ** 2).mean(0).sum()), 4),
            "float_head_on_int8_features_pct": agree(f_q @ w + b),
            "oracle_offset_corrected_pct": agree((f_q - err.mean(0)) @ w + b),
            "expected_flips": round(exp1, 1), "noise_factor_for_99pct": round(lo, 3)}


def _markdown(doc: dict) -> str:
    keys = ["run", "images", "near_tie_pct", "agreement_pct", "observed_flips", "expected_flips",
            "feature_rel_rms_error", "offset_share_of_error", "float_head_on_int8_features_pct",
            "oracle_offset_corrected_pct", "noise_factor_for_99pct"]
    lines = [f"# int8 noise vs margins: {doc['name']} ({doc['date']})", "",
             f"CPU: {doc['cpu']}. Data: `{doc['data']}`. Command: `{doc['command']}`", "",
             "| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    for r in doc["rows"]:
        lines.append("| " + " | ".join(str(Path(r[k]).name if k == "run" else r[k]) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def _cpu() -> str:
    from edgetl.runtime.env import cpu_info

    return str(cpu_info().get("model") or "unknown")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path, help="image folder: <class>/<image> (e.g. a test split)")
    ap.add_argument("pairs", nargs="+", help="RUN_DIR:EXPORT_DIR")
    ap.add_argument("--name", default="runs")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    rows = []
    for pair in a.pairs:
        run_dir, export_dir = (Path(p) for p in pair.split(":", 1))
        rows.append(analyse(run_dir, export_dir, a.data))
        print(json.dumps(rows[-1]), flush=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    doc = {"name": a.name, "date": stamp, "cpu": _cpu(), "data": str(a.data),
           "command": "python -m benchmarks.int8_noise " + " ".join(argv if argv is not None else sys.argv[1:]), "rows": rows}
    a.out.mkdir(parents=True, exist_ok=True)
    base = a.out / f"int8_noise_{a.name}_{stamp}"
    base.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    base.with_suffix(".md").write_text(_markdown(doc))
    print(f"wrote {base}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
