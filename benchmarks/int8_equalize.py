"""Study (issue 25): activation equalization before int8, giving every channel of a ReLU tensor the tensor's int8 range.

    python -m benchmarks.int8_equalize RUN_DIR [VARIANT ...]     # VARIANT: none | HEADROOM,MAX_SCALE,POWER

For one trained run with a test split: the export's int8 ``.tflite`` and ``.onnx`` built as ``export --int8``
builds them (GPTQ rounding, default activation ranges, no doctor), once per variant, with the folded model
equalized on the export's calibration images before GPTQ (``none``: as edgetl ships). Each file: top-1
agreement with the Keras model on val and test, and the error of its output probabilities (mean L1, RMS)
over val + test. Appends to ``benchmarks/results/int8_equalize_<run>.jsonl``. A study: measured
2026-12-06, it did not help (``benchmarks/results/int8_equalize_sign_digits_20261206.md``), so edgetl does
not ship it.

Both converters quantize an activation tensor with one scale for all of its channels (per tensor),
so a channel whose values never exceed 0.5 in a ReLU6 tensor that reaches 6 uses 21 of the 255
steps: its rounding noise, relative to its own signal, is 12 times that of a channel filling the range.
In EfficientNet-Lite0 on ordinary photos the per-channel maxima of the last stage's ReLU6 tensors have
a median of 0.8-2.4 (tensor maximum 6).

The rescaling here changes no function (cross-layer equalization, Nagel et al., "Data-Free
Quantization Through Weight Equalization and Bias Correction", 2019; here driven by the activation
ranges measured on calibration images, as in Meller et al., 2019): for a chain

    producer (Conv2D / DepthwiseConv2D, with bias) -> ReLU (max 6 or none)
        [-> ZeroPadding2D / GlobalAveragePooling2D / Dropout] -> consumer (Conv2D / DepthwiseConv2D / Dense)

channel ``i`` of the producer's kernel and bias is multiplied by ``c_i >= 1`` and the consumer's
input channel ``i`` is divided by it. ReLU is positively homogeneous, and ReLU6 is too on values
below ``6 / c_i``: ``c_i`` is chosen so that the channel's maximum on the calibration images times
``c_i`` stays at or under the clip (``6 / HEADROOM``), so the rescaled model gives the same outputs on
those images. A value above the calibration maximum times ``HEADROOM`` is clipped there (a float model
would clip it at 6): the same kind of clipping a calibrated int8 range applies anyway.

The cost is on the consumer's side when it mixes channels (Conv2D 1x1, Dense): its weights are quantized
per *output* channel, so input channels divided by a large ``c_i`` get coarser relative weight steps
there. GPTQ rounding, which runs after this on the rescaled model, measures and compensates that. A
depthwise consumer, and every producer, is quantized per channel, so their side is free.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: no channel is scaled by more than this (a near-dead channel would otherwise take an enormous factor)
MAX_SCALE = 16.0
#: a channel is scaled so that its calibration maximum lands at ``clip / HEADROOM``
HEADROOM = 1.0
#: exponent on the ideal factor (1: the channel fills the range; 0.5: half of it, in log terms)
POWER = 1.0
_PASS = ("ZeroPadding2D", "GlobalAveragePooling2D", "Dropout")
_PRODUCERS = ("Conv2D", "DepthwiseConv2D")
_CONSUMERS = ("Conv2D", "DepthwiseConv2D", "Dense")


@dataclass
class EqualizeReport:
    #: (ReLU layer, number of channels, median factor, largest factor)
    tensors: list[tuple[str, int, float, float]] = field(default_factory=list)

    def summary(self) -> str:
        if not self.tensors:
            return "activation equalization: no ReLU chain to equalize"
        med = np.median([t[2] for t in self.tensors])
        return (f"activation equalization of {len(self.tensors)} ReLU tensors "
                f"(median channel factor {med:.2f}, largest {max(t[3] for t in self.tensors):.1f})")


def _graph(model: Any) -> tuple[dict[int, list[Any]], dict[int, Any]]:
    consumers: dict[int, list[Any]] = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for t in node.input_tensors:
                consumers.setdefault(id(t), []).append(layer)
    producer = {id(layer.output): layer for layer in model.layers if type(layer).__name__ != "InputLayer"}
    return consumers, producer


def _is_relu(layer: Any) -> bool:
    if type(layer).__name__ != "ReLU":
        return False
    slope = float(np.asarray(getattr(layer, "negative_slope", 0.0)))
    thr = float(np.asarray(getattr(layer, "threshold", 0.0)))
    return slope == 0.0 and thr == 0.0


def chains(model: Any) -> list[tuple[Any, Any, Any]]:
    """Every (producer, ReLU, consumer) chain :func:`equalize_activations` may rescale."""
    consumers, producer = _graph(model)
    out = []
    for relu in model.layers:
        if not _is_relu(relu) or len(relu._inbound_nodes) != 1:
            continue
        src_t = relu._inbound_nodes[0].input_tensors[0]
        prod = producer.get(id(src_t))
        if prod is None or type(prod).__name__ not in _PRODUCERS or len(consumers.get(id(src_t), [])) != 1:
            continue
        if len(prod.get_weights()) != 2 or getattr(prod, "activation", None).__name__ != "linear":
            continue  # no bias (BN not folded) or an activation inside the layer
        if type(prod).__name__ == "DepthwiseConv2D" and prod.get_weights()[0].shape[3] != 1:
            continue
        t, cons = relu.output, None
        while True:
            nxt = consumers.get(id(t), [])
            if len(nxt) != 1:
                break
            layer = nxt[0]
            kind = type(layer).__name__
            if kind in _PASS:
                t = layer.output
                continue
            if kind in _CONSUMERS and len(layer._inbound_nodes) == 1:
                cons = layer
            break
        if cons is None:
            continue
        if type(cons).__name__ == "DepthwiseConv2D" and cons.get_weights()[0].shape[3] != 1:
            continue
        out.append((prod, relu, cons))
    return out


def channel_maxima(model: Any, relus: list[Any], pixels: np.ndarray, batch: int = 8) -> list[np.ndarray]:
    """Per-channel maximum of each ReLU's output over ``pixels``."""
    import keras

    probe = keras.Model(model.inputs, [r.output for r in relus])
    maxima = [np.zeros(int(r.output.shape[-1]), np.float64) for r in relus]
    for i in range(0, len(pixels), batch):
        outs = probe(np.asarray(pixels[i:i + batch], np.float32), training=False)
        if len(relus) == 1:
            outs = [outs]
        for k, o in enumerate(outs):
            o = np.asarray(o)
            maxima[k] = np.maximum(maxima[k], o.reshape(-1, o.shape[-1]).max(axis=0))
    return maxima


def factors(maxima: np.ndarray, clip: float | None) -> np.ndarray:
    """The channel factors for one ReLU tensor: its per-channel maxima -> ``c_i`` in [1, MAX_SCALE]."""
    top = float(maxima.max()) if maxima.size else 0.0
    if top <= 0.0:
        return np.ones_like(maxima)
    target = clip / HEADROOM if clip is not None else top
    alive = maxima > 1e-6 * top
    c = np.ones_like(maxima)
    c[alive] = (target / maxima[alive]) ** POWER
    return np.clip(c, 1.0, MAX_SCALE)


def equalize_activations(model: Any, pixels: np.ndarray) -> EqualizeReport:
    """Rescale ``model``'s weights in place (BN folded) so its ReLU tensors use their int8 range; see the module doc."""
    report = EqualizeReport()
    found = chains(model)
    if not found or len(pixels) == 0:
        return report
    maxima = channel_maxima(model, [r for _, r, _ in found], pixels)
    for (prod, relu, cons), mx in zip(found, maxima):
        clip = getattr(relu, "max_value", None)
        clip = float(np.asarray(clip)) if clip is not None else None
        c = factors(mx, clip).astype(np.float32)
        if np.all(c == 1.0):
            continue
        k, b = prod.get_weights()
        if type(prod).__name__ == "DepthwiseConv2D":
            k = k * c.reshape(1, 1, -1, 1)
        else:
            k = k * c
        prod.set_weights([k.astype(np.float32), (b * c).astype(np.float32)])
        w = cons.get_weights()
        kind = type(cons).__name__
        if kind == "Dense":
            w[0] = w[0] / c.reshape(-1, 1)
        else:  # Conv2D (kh, kw, in, out) and DepthwiseConv2D (kh, kw, in, 1): input channel on axis 2
            w[0] = w[0] / c.reshape(1, 1, -1, 1)
        cons.set_weights([a.astype(np.float32) for a in w])
        report.tensors.append((relu.name, int(c.size), float(np.median(c)), float(c.max())))
    return report


def _measure(path: Path, ctx: Any, test_px: np.ndarray, ref_test: np.ndarray) -> dict:
    from edgetl.runtime.loader import runner_for

    px = np.concatenate([ctx.val_px, test_px])
    ref = np.concatenate([ctx.ref, ref_test])
    p = runner_for(path, threads=None).predict(px)
    d = p - ref
    n_val = len(ctx.val_px)
    same = p.argmax(1) == ref.argmax(1)
    return {"val_agree": int(same[:n_val].sum()), "val_n": n_val, "test_agree": int(same[n_val:].sum()),
            "test_n": int(len(test_px)), "prob_l1": round(float(np.abs(d).sum(1).mean()), 5),
            "prob_rms": round(float(np.sqrt((d ** 2).mean())), 5)}


def main(argv: list[str]) -> int:
    from benchmarks.act_ranges_bench import _context
    from edgetl.export import ptq
    from edgetl.export.artifacts import make_artifact
    from edgetl.formats import FORMATS

    global HEADROOM, MAX_SCALE, POWER
    run_dir = Path(argv[0])
    variants = argv[1:] or ["none", "1.25,4,1"]
    out = Path("/tmp/int8_equalize") / run_dir.name
    ctx, test_px, _, ref_test = _context(run_dir, out)
    fold = ptq.fold_batchnorm
    results = Path(__file__).resolve().parent / "results" / f"int8_equalize_{run_dir.name}.jsonl"
    for v in variants:
        if v == "none":
            ptq.fold_batchnorm = fold
        else:
            HEADROOM, MAX_SCALE, POWER = (float(t) for t in v.split(","))

            def fold_and_equalize(model: Any) -> tuple[Any, int]:
                folded, n = fold(model)
                print("   ", equalize_activations(folded, ctx.calibration()).summary(), flush=True)
                return folded, n

            ptq.fold_batchnorm = fold_and_equalize
        ctx.quant_models, ctx.calibrated = {}, {}
        for fmt, ext in (("tflite_int8", ".tflite"), ("onnx_int8", ".onnx")):
            path = out / f"{v.replace(',', '_')}_int8{ext}"
            t0 = time.perf_counter()
            art = make_artifact(ctx, FORMATS[fmt], path, quant=ctx.config.int8_quant(), verify=False)
            row = {"run": run_dir.name, "variant": v, "format": fmt, "build_s": round(time.perf_counter() - t0, 1)}
            row.update({"error": art.error} if art.error else _measure(path, ctx, test_px, ref_test))
            print(json.dumps(row), flush=True)
            with open(results, "a") as fh:
                fh.write(json.dumps(row) + "\n")
    ptq.fold_batchnorm = fold
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main(sys.argv[1:]))
