"""Study (issue 25): where a Lite0 run's int8 error comes from, by simulated quantization of one tensor class at a time.

    python -m benchmarks.int8_error_sources RUN_DIR [RUN_DIR ...] [--data DIR] [--calib 128]

For each run (a feature-extraction or fine-tune run whose data has a ``test/`` split): the BN-folded Keras
model is rebuilt with fake quantization (uint8, one scale and zero point per tensor, the range from
``--calib`` training images: min/max, or the 0.01 / 99.99 % quantiles) after the tensors of one class
at a time, the way both converters quantize them: ``relu`` (every ReLU6 output, the fused conv before it
is not quantized separately), ``project`` (the linear 1x1 projection convs), ``add`` (residual sums),
``pool`` (the pooled features), ``input`` (the normalized input); ``weights``: round-to-nearest per output
channel, symmetric int8 (edgetl ships GPTQ rounding, which is far more exact; this row is the naive
bound). Each variant: the relative RMS error of the pooled features (what the classifier reads) and the
top-1 agreement with the float model, on the test split. ``all activations 10-bit`` shows what two more
bits of activation precision would give.

Writes ``benchmarks/results/int8_error_sources_<timestamp>.json`` and ``.md``. A study, not a product
feature: the simulation rounds like the converters but is not bit-exact with either runtime.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
ACTS = ("relu", "add", "project", "pool", "input")
VARIANTS = [  # (name, tensor classes, range method, bits, RTN weights)
    ("all activations (min/max) + RTN weights", ACTS, "minmax", 8, True),
    ("all activations (min/max), float weights", ACTS, "minmax", 8, False),
    ("all activations (percentile), float weights", ACTS, "percentile", 8, False),
    ("RTN weights only", (), "minmax", 8, True),
    ("relu tensors only", ("relu",), "minmax", 8, False),
    ("project outputs only", ("project",), "minmax", 8, False),
    ("add outputs only", ("add",), "minmax", 8, False),
    ("pool output only", ("pool",), "minmax", 8, False),
    ("project+add (linear) only", ("project", "add"), "minmax", 8, False),
    ("all activations 10-bit", ACTS, "minmax", 10, False),
]


def tensor_class(layer) -> str | None:
    kind, name = type(layer).__name__, layer.name
    if kind == "ReLU":
        return "relu"
    if kind == "Add":
        return "add"
    if kind == "Conv2D" and name.endswith("project_conv"):
        return "project"
    if kind == "GlobalAveragePooling2D":
        return "pool"
    if kind == "Rescaling":
        return "input"
    return None


def fake_quant(lo: float, hi: float, bits: int):
    import keras

    n = 2 ** bits - 1
    s = (hi - lo) / n if hi > lo else 1.0
    zp = float(np.round(-lo / s))

    def f(t):
        return (keras.ops.clip(keras.ops.round(t / s) + zp, 0, n) - zp) * s

    return f


def rtn_weights(model) -> None:
    """Round every conv / dense kernel to nearest on edgetl's int8 grid (:func:`edgetl.export.ptq._rtn`, per channel)."""
    from edgetl.export import ptq

    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in ("Conv2D", "DepthwiseConv2D", "Dense"):
            continue
        w = layer.get_weights()
        k = w[0]
        if kind == "DepthwiseConv2D":  # (kh, kw, C, 1): one row per channel, as ptq rounds it
            w[0] = ptq._rtn(k.reshape(-1, k.shape[2]).T).T.reshape(k.shape).astype(np.float32)
        else:  # (..., out): one row per output channel
            w[0] = ptq._rtn(k.reshape(-1, k.shape[-1]).T).T.reshape(k.shape).astype(np.float32)
        layer.set_weights(w)


def study_run(run_dir: Path, data: Path | None, n_calib: int) -> dict:
    import keras

    from edgetl.export import ptq
    from edgetl.preprocess import prepare_batch
    from edgetl.run import load_run

    run = load_run(run_dir)
    data = Path(data or run.config["data_dir"])
    folded, _ = ptq.fold_batchnorm(run.load_model())
    train = sorted(str(p) for p in (data / "train").glob("*/*"))
    test = sorted(str(p) for p in (data / "test").glob("*/*"))
    if not test:
        raise SystemExit(f"{data}: a test/ split is needed")
    calib = prepare_batch(train[:: max(1, len(train) // n_calib)][:n_calib], run.preprocessing).astype(np.float32)
    test_px = prepare_batch(test, run.preprocessing).astype(np.float32)

    targets = [l for l in folded.layers if tensor_class(l)]
    outs = keras.Model(folded.inputs, [l.output for l in targets]).predict(calib, batch_size=16, verbose=0)
    ranges = {"minmax": {}, "percentile": {}}
    for layer, o in zip(targets, outs):
        o = np.asarray(o)
        ranges["minmax"][layer.name] = (min(0.0, float(o.min())), max(0.0, float(o.max())))
        ranges["percentile"][layer.name] = (min(0.0, float(np.percentile(o, 0.01))), max(0.0, float(np.percentile(o, 99.99))))
    del outs

    def build(classes, method, bits, weights):
        def rewrite(layer, args):
            y = ptq._clone_layer(layer)(args[0] if len(args) == 1 else args)
            if tensor_class(layer) in classes:
                y = keras.layers.Lambda(fake_quant(*ranges[method][layer.name], bits), name=layer.name + "_fq")(y)
            return y

        model = ptq._replay(folded, rewrite)
        if weights:
            rtn_weights(model)
        return model

    def pooled(model):
        names = [l.name for l in model.layers]
        out = model.get_layer("head_pool_fq" if "head_pool_fq" in names else "head_pool").output
        return keras.Model(model.inputs, [out, model.outputs[0]]).predict(test_px, batch_size=16, verbose=0)

    f0, p0 = pooled(folded)
    top2 = np.sort(p0, axis=1)[:, -2:]
    rows = []
    for name, classes, method, bits, weights in VARIANTS:
        f, p = pooled(build(classes, method, bits, weights))
        err = float(np.sqrt(((f - f0) ** 2).mean()) / np.sqrt((f0 ** 2).mean()))
        k = int((p.argmax(1) == p0.argmax(1)).sum())
        rows.append({"variant": name, "feature_rel_rms_pct": round(100 * err, 2), "agree": k, "n": int(len(p))})
        print(f"  {run_dir.name}: {name}: features {100 * err:.2f} %, agreement {k}/{len(p)}", flush=True)
    return {"run": str(run_dir), "low_margin_test_pct": round(100 * float(np.mean(top2[:, 1] - top2[:, 0] < 0.05)), 2),
            "calibration_images": int(len(calib)), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, default=None, help="data folder with train/ and test/ (default: the run's)")
    ap.add_argument("--calib", type=int, default=128)
    args = ap.parse_args(argv)
    from edgetl.runtime.env import cpu_info

    result = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "cpu": cpu_info().get("model"),
              "runs": [study_run(r, args.data, args.calib) for r in args.runs]}
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"int8_error_sources_{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Where int8 error comes from (simulated, per tensor class), {result['date']}", "",
             f"CPU: {result['cpu']}. Pooled-feature relative RMS error and top-1 agreement with the float model on test.", "",
             "| run | low-margin share | variant | feature error % | agreement |", "| --- | --- | --- | --- | --- |"]
    for r in result["runs"]:
        for row in r["rows"]:
            lines.append(f"| {Path(r['run']).name} | {r['low_margin_test_pct']} % | {row['variant']} | "
                         f"{row['feature_rel_rms_pct']} | {row['agree']}/{row['n']} |")
    (RESULTS / f"int8_error_sources_{stamp}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / f'int8_error_sources_{stamp}'}.json and .md")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
