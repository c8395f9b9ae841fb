"""Better post-training quantization of a Keras model, done before the converter sees it.

Two graph rewrites and one weight-rounding method, all converter-independent:

* :func:`fold_batchnorm` folds every inference-mode ``BatchNormalization`` into the
  convolution or dense layer before it (the converters do the same when they convert;
  doing it here makes the weights the converter quantizes the weights edgetl chose).
* :func:`gptq_round` rounds every convolution / dense kernel to the int8 grid the
  converters use (symmetric, per output channel, ``scale = max|w| / 127``) with the
  error-compensating rounding of GPTQ / OBQ (Frantar et al., 2022; Frantar & Alistarh,
  2022): the kernel's input columns are rounded one at a time and the rounding error of
  each is pushed onto the columns not rounded yet, weighted by the inverse of the layer's
  input second-moment matrix ``H = X^T X`` measured on calibration images. It minimises
  the layer's *output* error on those images, where round-to-nearest minimises only the
  weight error. The largest weight of each channel is never moved, so the converter
  finds the same scale and re-rounds nothing: the int8 values in the file are exactly
  the ones chosen here.
* :func:`split_input_normalization` takes a leading ``Rescaling`` whose affine map sends
  the uint8 pixel grid onto an int8 grid (EfficientNet-Lite's ``(x - 127) / 128``) out of
  the graph: the file's uint8 input then carries the normalization in its own
  quantization parameters (scale 1/128, zero point 127), exactly, with no op at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from edgetl.errors import EdgetlError

#: GPTQ's damping of H (fraction of the mean diagonal), the value of the reference implementation
DAMP = 0.01
QMAX = 127
#: the 7-bit grid of :func:`overflow_grid` (ONNX Runtime's ``reduce_range`` int8 weights: [-64, 64],
#: ``scale = max|w| / 64``)
QMAX_7BIT = 64
#: GPTQ's "act-order" (see :func:`_gptq`)
ACT_ORDER = True
#: layers per statistics pass of :func:`gptq_round` (1: fully sequential, each H from the rounded prefix;
#: 0: parallel). Fully sequential costs one prefix pass per layer: measured 312 s for Lite0's 50 layers on
#: 64 images on the shared 2-core Xeon, over the export's time budget; 8 layers per pass is ~7 passes.
#: Default 0 (parallel): on a sign_digits run, 8 layers per pass + bias correction agreed on 97.7 % (TFLite) /
#: 98.1 % (ONNX) of the val images against 99.03 % / 98.71 % for parallel, at the same GPTQ time (56 vs 57 s);
#: the variants differed by 1-4 images in opposite directions on val and test
#: (benchmarks/results/gptq_sequential_sign_digits_s0_20261205.json): not shown to generalise better.
SEQUENTIAL = 0
#: empirical bias correction of the sequential pass (see :func:`gptq_round`)
BIAS_CORRECTION = True


# --------------------------------------------------------------------------- graph rewrites

def _replay(model: Any, rewrite: Callable[[Any, list[Any]], Any | None], inputs: Any | None = None) -> Any:
    """Rebuild a flat functional model layer by layer; ``rewrite(layer, args)`` may return a new output."""
    import keras

    tensors: dict[int, Any] = {}
    new_inputs = []
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            t = keras.Input(shape=tuple(layer.output.shape[1:]), name=layer.name, dtype=layer.output.dtype)
            tensors[id(layer.output)] = t
            new_inputs.append(t)
            continue
        if hasattr(layer, "layers"):
            raise EdgetlError(f"layer {layer.name!r} is a nested model; edgetl's PTQ needs one flat graph")
        if len(layer._inbound_nodes) != 1:
            raise EdgetlError(f"layer {layer.name!r} is used {len(layer._inbound_nodes)} times; PTQ needs single-use layers")
        node = layer._inbound_nodes[0]
        args = [tensors[id(t)] for t in node.input_tensors]
        y = rewrite(layer, args)
        if y is None:
            y = _clone_layer(layer)(args[0] if len(args) == 1 else args)
        tensors[id(layer.output)] = y
    outputs = [tensors[id(t)] for t in model.outputs]
    return keras.Model(new_inputs[0] if len(new_inputs) == 1 else new_inputs,
                       outputs[0] if len(outputs) == 1 else outputs, name=model.name)


def _clone_layer(layer: Any) -> Any:
    """A fresh copy of ``layer`` (config + weights), so the rebuilt model shares nothing with the original."""
    new = type(layer).from_config(layer.get_config())
    weights = layer.get_weights()
    if weights:
        new.build(layer.input.shape)
        new.set_weights(weights)
    return new


_FOLDABLE = ("Conv2D", "DepthwiseConv2D", "Dense")


def fold_batchnorm(model: Any) -> tuple[Any, int]:
    """A copy of ``model`` with each BN folded into the linear layer feeding it: (model, number folded).

    A BN is folded only when its input comes from a Conv2D / DepthwiseConv2D / Dense with
    a linear activation whose output nothing else reads. Layers are shared with the original
    except the folded ones (new layers with a bias).
    """
    import keras

    consumers: dict[int, int] = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for t in node.input_tensors:
                consumers[id(t)] = consumers.get(id(t), 0) + 1
    producer = {id(layer.output): layer for layer in model.layers if type(layer).__name__ != "InputLayer"}
    folded: dict[str, Any] = {}   # BN name -> new linear layer
    skip: set[str] = set()        # linear layers replaced by their folded copy

    for layer in model.layers:
        if type(layer).__name__ != "BatchNormalization" or len(layer._inbound_nodes) != 1:
            continue
        src_t = layer._inbound_nodes[0].input_tensors[0]
        src = producer.get(id(src_t))
        if src is None or type(src).__name__ not in _FOLDABLE or consumers.get(id(src_t), 0) != 1:
            continue
        if getattr(src, "activation", None) not in (None, keras.activations.linear):
            continue
        axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
        if axis not in (-1, len(src_t.shape) - 1):
            continue
        gamma = layer.gamma.numpy() if layer.scale else 1.0
        beta = layer.beta.numpy() if layer.center else 0.0
        mult = gamma / np.sqrt(layer.moving_variance.numpy() + layer.epsilon)
        shift = beta - layer.moving_mean.numpy() * mult
        w = src.get_weights()
        kernel = w[0]
        bias = w[1] if len(w) > 1 else np.zeros(mult.shape, np.float32)
        if type(src).__name__ == "DepthwiseConv2D":
            k2 = kernel * mult.reshape(1, 1, kernel.shape[2], kernel.shape[3])
        else:
            k2 = kernel * mult
        b2 = bias * mult + shift
        cfg = src.get_config()
        cfg["use_bias"] = True
        cfg["name"] = src.name
        new = type(src).from_config(cfg)
        new.build(src.input.shape)
        new.set_weights([k2.astype(np.float32), b2.astype(np.float32)])
        folded[layer.name] = new
        skip.add(src.name)

    if not folded:
        return model, 0

    def rewrite(layer: Any, args: list[Any]) -> Any | None:
        if layer.name in skip:
            return args[0]  # placeholder: its only consumer is the BN, rewritten below
        if layer.name in folded:
            new = folded[layer.name]
            return new(args[0])
        return None

    return _replay(model, rewrite), len(folded)


def copy_model(model: Any) -> Any:
    """A copy of a flat functional model with its own layers and weights."""
    return _replay(model, lambda layer, args: None)


@dataclass(frozen=True)
class InputAffine:
    """The map ``x -> x * scale + offset`` taken out of the graph (pixels [0, 255] -> model input)."""

    scale: float
    offset: float

    @property
    def uint8_zero_point(self) -> int:
        return int(round(-self.offset / self.scale))

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        return pixels.astype(np.float32) * np.float32(self.scale) + np.float32(self.offset)


def split_input_normalization(model: Any) -> tuple[Any, InputAffine] | None:
    """(model without its leading Rescaling / Normalization, the affine map) when the map is exact on the int8 grid.

    Exact means one scale and one offset for all channels, and ``-offset / scale`` an integer
    in [0, 255]: the uint8 pixel is then itself the quantized value of the normalized input
    (zero point ``-offset / scale``), and the converter's calibrated range over pixels 0..255
    gives exactly that scale and zero point. ``None`` when the model does not start that way
    (e.g. MobileNetV2's ``x / 127.5 - 1``: zero point 127.5).
    """
    layers = [l for l in model.layers if type(l).__name__ != "InputLayer"]
    if not layers or len(model.inputs) != 1:
        return None
    first = layers[0]
    kind = type(first).__name__
    if kind == "Rescaling":
        scale = np.asarray(first.scale, dtype=np.float64).ravel()
        offset = np.asarray(first.offset, dtype=np.float64).ravel()
    elif kind == "Normalization" and not getattr(first, "invert", False):
        std = np.sqrt(np.asarray(first.variance, dtype=np.float64).ravel())
        mean = np.asarray(first.mean, dtype=np.float64).ravel()
        if np.ptp(std) > 1e-9 or np.ptp(mean) > 1e-9 or std[0] <= 1e-7:
            return None  # per-channel statistics cannot live in one per-tensor input quantization
        scale, offset = 1.0 / std[:1], -mean[:1] / std[:1]
    else:
        return None
    if scale.size != 1 or offset.size != 1 or scale[0] <= 0:
        return None
    zp = -offset[0] / scale[0]
    if abs(zp - round(zp)) > 1e-6 or not 0 <= round(zp) <= 255:
        return None
    affine = InputAffine(float(scale[0]), float(offset[0]))

    def rewrite(layer: Any, args: list[Any]) -> Any | None:
        return args[0] if layer is first else None

    return _replay(model, rewrite), affine


# --------------------------------------------------------------------------- GPTQ rounding

@dataclass
class RoundingReport:
    layers: int = 0
    bias_corrected: int = 0
    sequential: bool = False
    #: per layer: (name, relative output error of round-to-nearest, of GPTQ) on the calibration images
    errors: list[tuple[str, float, float]] = field(default_factory=list)

    def summary(self) -> str:
        if not self.errors:
            return "GPTQ rounding: no layers"
        rtn = np.array([e[1] for e in self.errors])
        gq = np.array([e[2] for e in self.errors])
        # "deviation", not "error": the CLI treats notes with "error" in them as something that went wrong
        return (f"GPTQ rounding of {self.layers} layers ({'sequential' if self.sequential else 'parallel'}"
                + (f", {self.bias_corrected} biases corrected" if self.bias_corrected else "") + "): "
                f"mean relative output deviation {np.mean(gq):.4f} (round-to-nearest {np.mean(rtn):.4f})")


def _scales(w2d: np.ndarray, qmax: Any = QMAX) -> np.ndarray:
    """Per-row scales ``max|w| / qmax`` (``qmax``: one number, or one per row)."""
    amax = np.max(np.abs(w2d), axis=1)
    return np.where(amax > 0, amax / qmax, 1.0)


def pair_qmax(w2d: np.ndarray) -> np.ndarray:
    """Per row, the finest grid (64-127 steps each side) on which no pair of adjacent columns exceeds
    :data:`PAIR_MAX` steps before rounding: ``floor(PAIR_MAX * max|w| / max(|w_2i| + |w_2i+1|))``.
    A row whose largest weight has only small neighbours keeps all 127 steps; a row with two large
    neighbours gets fewer (64 at worst, when they are both its largest)."""
    a = np.abs(np.asarray(w2d, np.float64))
    d = a.shape[1] // 2 * 2
    amax = a.max(axis=1)
    pairs = (a[:, 0:d:2] + a[:, 1:d:2]).max(axis=1) if d else amax
    pairs = np.maximum(pairs, amax)  # an odd last column pairs with zero padding
    q = np.floor(PAIR_MAX * amax / np.where(pairs > 0, pairs, 1.0) + 1e-9)
    return np.clip(q, QMAX_7BIT, QMAX).astype(np.int64)


#: the largest ``|q1| + |q2|`` of a pair of int8 weights that ``vpmaddubsw`` multiplies by two uint8
#: activations and adds into int16: 255 * 128 = 32640 <= 32767
PAIR_MAX = 128


#: how :func:`overflow_grid` keeps pairs inside int16: ``adaptive`` (per-channel grid of :func:`pair_qmax`
#: plus the pair budget), ``pairs`` (8-bit grid, pair budget only) or ``7bit`` (every conv/dense weight on
#: [-64, 64], as ONNX Runtime's ``reduce_range`` and NNCF's overflow fix)
OVERFLOW_MODE = "7bit"
OVERFLOW_MODES = ("7bit", "adaptive", "pairs")


def overflow_summary(mode: str | None = None) -> str:
    """How :func:`overflow_grid` keeps a model's int8 weights from overflowing, in a few words."""
    mode = mode or OVERFLOW_MODE
    if mode == "pairs":
        return f"1x1 conv/dense pairs within {PAIR_MAX}, other convs 7-bit, depthwise 8-bit"
    if mode == "adaptive":
        return f"1x1 conv/dense on 64-127 steps per channel with pairs within {PAIR_MAX}, other convs 7-bit, depthwise 8-bit"
    return "7-bit conv/dense, 8-bit depthwise"


def overflow_grid(layer: Any, mode: str | None = None) -> tuple[Any, bool]:
    """(qmax, pair budget) that keeps ``layer`` exact on x86 int8 kernels without VNNI.

    Those kernels (ONNX Runtime's MLAS and OpenVINO's oneDNN on AVX2, and on AVX-512 without VNNI)
    multiply uint8 activations by int8 weights with ``vpmaddubsw``, which adds *pairs* of products
    (input channels 2i and 2i+1) into int16 with saturation: ``255 * (|w1| + |w2|)`` overflows
    32767 once ``|w1| + |w2| > 128``. Two ways out:

    * ``pairs``: 1x1 convolutions and dense layers stay on the 8-bit grid and GPTQ keeps every pair
      of adjacent input channels within :data:`PAIR_MAX` (measured: 4.4 % of Lite0's pairs are over it
      after plain GPTQ); other convolutions (the stem, whose im2col order pairs taps differently in
      different runtimes) go to the 7-bit grid.
    * ``adaptive``: as ``pairs``, on the per-channel grid of :func:`pair_qmax` (``qmax`` is then the
      string ``"adaptive"``), so the budget only trims what rounding and GPTQ's updates add.
    * ``7bit``: every convolution and dense layer on [-64, 64] (255 * 128 = 32640).

    Depthwise convolutions keep 8 bits either way (those kernels widen to 16 bits before multiplying:
    measured exact on AVX2 with 8-bit depthwise weights).
    """
    kind = type(layer).__name__
    if kind == "DepthwiseConv2D":
        return QMAX, False
    mode = mode or OVERFLOW_MODE
    one_by_one = kind == "Dense" or tuple(getattr(layer, "kernel_size", (1, 1))) == (1, 1)
    if mode in ("pairs", "adaptive") and one_by_one:
        return ("adaptive" if mode == "adaptive" else QMAX), True
    return QMAX_7BIT, False


def _gptq(w: np.ndarray, h: np.ndarray, act_order: bool | None = None, qmax: Any = QMAX,
          partner: np.ndarray | None = None) -> np.ndarray:
    """GPTQ on one layer. Returns ``w`` rounded onto the per-row grid of ``qmax`` steps each side (int8: 127).

    ``w`` is (rows, d), a row per output channel. ``h`` is (d, d), shared by every row (conv,
    dense), or (rows, d, d), one per row (depthwise: each channel sees its own inputs).
    ``act_order``: round the input columns with the largest ``H`` diagonal (the most energetic
    inputs) first, so that their errors can still be compensated by the many columns after them.
    The largest weight of each row is never moved (it keeps the row's scale for the converter).
    ``partner``: (d,) the column each column shares a ``vpmaddubsw`` pair with (-1: none); the two
    integers of a pair then keep ``|q1| + |q2| <= PAIR_MAX`` (see :func:`overflow_grid`): the column
    rounded second is clipped to what its partner left (a fixed largest weight counts as rounded
    from the start), and GPTQ pushes that clipping error onto the columns after it like any other.
    """
    h = np.asarray(h, np.float64)
    h = h[None] if h.ndim == 2 else h
    if act_order if act_order is not None else ACT_ORDER:
        perm = np.argsort(-np.einsum("cii->ci", h), axis=1, kind="stable")  # (1 or rows, d)
        hp = np.take_along_axis(np.take_along_axis(h, perm[:, :, None], axis=1), perm[:, None, :], axis=2)
        pp = None
        if partner is not None and perm.shape[0] == 1:  # one column order for every row (conv, dense)
            pos = np.argsort(perm[0])
            pp = np.where(partner[perm[0]] >= 0, pos[np.maximum(partner[perm[0]], 0)], -1)
        out = _gptq(np.take_along_axis(w, perm, axis=1), hp, act_order=False, qmax=qmax, partner=pp)
        return np.take_along_axis(out, np.argsort(perm, axis=1), axis=1)
    w = w.astype(np.float64).copy()
    rows, d = w.shape
    s = _scales(w, qmax)
    free = np.ones_like(w, bool)
    free[np.arange(rows), np.argmax(np.abs(w), axis=1)] = False
    h = h.copy()
    idx = np.arange(d)
    diag = h[:, idx, idx]
    h[:, idx, idx] = np.where(diag > 0, diag, 1.0)  # inputs that are always 0
    h += (DAMP * h[:, idx, idx].mean(axis=1))[:, None, None] * np.eye(d)[None]
    try:
        hinv = np.transpose(np.linalg.cholesky(np.linalg.inv(h)), (0, 2, 1))  # upper triangular
    except np.linalg.LinAlgError:  # round to nearest (no error to push), still within the pair budget
        hinv = np.broadcast_to(np.eye(d), h.shape).copy()
    q = np.empty_like(w)
    qi = np.where(free, 0.0, np.round(w / s[:, None]))  # integers: the fixed largest weights are known already
    done = ~free
    for j in range(d):
        col = w[:, j]
        qint = np.clip(np.round(col / s), -qmax, qmax)
        if partner is not None and partner[j] >= 0:
            other = np.where(done[:, partner[j]], np.abs(qi[:, partner[j]]), 0.0)
            limit = PAIR_MAX - other
            qint = np.clip(qint, -limit, limit)
        qi[:, j] = qint
        done[:, j] = True
        qc = qint * s
        q[:, j] = qc
        if j + 1 < d:
            err = (col - qc) / hinv[:, j, j]
            w[:, j + 1 :] -= err[:, None] * hinv[:, j, j + 1 :] * free[:, j + 1 :]
    return q


def _patches(x: Any, layer: Any) -> Any:
    """im2col of a conv layer's input: (N*oh*ow, kh*kw*cin), in the kernel's (kh, kw, cin) order."""
    import tensorflow as tf

    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    dh, dw = layer.dilation_rate
    if (kh, kw, sh, sw) == (1, 1, 1, 1):
        return tf.reshape(x, [-1, x.shape[-1]])
    p = tf.image.extract_patches(x, sizes=[1, kh, kw, 1], strides=[1, sh, sw, 1], rates=[1, dh, dw, 1],
                                 padding=layer.padding.upper())
    return tf.reshape(p, [-1, p.shape[-1]])


def _targets(model: Any) -> list[Any]:
    return [l for l in model.layers if type(l).__name__ in _FOLDABLE and l.weights]


def _accumulate(hs: list[Any], layers: list[Any], outs: list[Any], sums: list[Any] | None = None) -> None:
    """Add one batch's ``X^T X`` (per layer kind, see :func:`_gptq`) to ``hs`` in float64; with ``sums``,
    also the column sums of X and the row count (``[sum, n]``), for the bias correction."""
    import tensorflow as tf

    for i, (layer, x) in enumerate(zip(layers, outs)):
        if sums is not None:
            _add_sum(sums, i, layer, x)
        if hs is None:
            continue
        kind = type(layer).__name__
        # float32 products per batch, float64 sums across batches
        if kind == "Dense":
            xm = tf.reshape(x, [-1, x.shape[-1]])
            contrib = tf.matmul(xm, xm, transpose_a=True)
        elif kind == "Conv2D":
            pm = _patches(x, layer)
            contrib = tf.matmul(pm, pm, transpose_a=True)
        else:  # depthwise: one H per channel, (C, k*k, k*k)
            kh, kw = layer.kernel_size
            pm = tf.transpose(tf.reshape(_patches(x, layer), [-1, kh * kw, x.shape[-1]]), [2, 1, 0])
            contrib = tf.matmul(pm, pm, transpose_b=True)
        c64 = contrib.numpy().astype(np.float64)
        hs[i] = c64 if hs[i] is None else hs[i] + c64


def _add_sum(sums: list[Any], i: int, layer: Any, x: Any) -> None:
    """Column sums of the layer's input matrix (depthwise: per channel, (C, k*k)) and the row count."""
    import tensorflow as tf

    kind = type(layer).__name__
    if kind == "Dense":
        xm = tf.reshape(x, [-1, x.shape[-1]])
    elif kind == "Conv2D":
        xm = _patches(x, layer)
    else:
        kh, kw = layer.kernel_size
        xm = tf.transpose(tf.reshape(_patches(x, layer), [-1, kh * kw, x.shape[-1]]), [0, 2, 1])  # (N, C, k*k)
    s = tf.reduce_sum(xm, axis=0).numpy().astype(np.float64)
    n = int(xm.shape[0])
    sums[i] = [s, n] if sums[i] is None else [sums[i][0] + s, sums[i][1] + n]


def gptq_round(model: Any, inputs: np.ndarray, batch: int = 8, progress: Callable[[str], None] | None = None,
               step: Callable[[int, int], None] | None = None, sequential: int | None = None,
               bias_correction: bool | None = None, grid_for: Callable[[Any], tuple[int, bool]] | None = None,
               hessians: dict[int, Any] | None = None) -> RoundingReport:
    """Round every Conv2D / DepthwiseConv2D / Dense kernel of ``model`` in place with GPTQ.

    Args:
        model: flat functional Keras model, BN already folded (:func:`fold_batchnorm`).
        inputs: calibration inputs, exactly what the model takes (float32).
        batch: images per forward pass while H is accumulated.
        progress: called with one line per rounded layer.
        step: called as ``step(done, total)`` over the statistics passes and the layers.
        sequential: layers per statistics pass (default ``SEQUENTIAL``). ``1``: each layer's ``H`` is measured
            on the inputs it gets from the *already rounded* layers before it (sequential GPTQ, as the
            reference implementation runs it); ``k``: the next ``k`` layers share one pass (each sees
            the rounded layers of the earlier passes); ``0``: one pass for all layers, every ``H`` from
            the float model (the original, parallel version).
        bias_correction: (default ``BIAS_CORRECTION``) sequential only: each layer's bias absorbs the mean output shift that the
            rounded prefix and its own rounding cause on the calibration images (``b += W mean(x_float)
            - Q mean(x_rounded)``, per output channel; empirical bias correction, Nagel et al., 2019).
        grid_for: the grid of each layer, ``(qmax, pair budget)`` (default: int8's 127 steps each side,
            no budget; :func:`overflow_grid` for files that must be exact on x86 without VNNI).
        hessians: parallel only: a dict that the first call fills with every layer's ``H`` (by layer
            index) and later calls on the same graph (another copy of the folded model, another
            ``qmax_for``) read instead of running the statistics passes again.

    The biases stay float (the converters keep them in int32 at input scale x weight scale).
    """
    import keras

    sequential = SEQUENTIAL if sequential is None else sequential
    bias_correction = BIAS_CORRECTION if bias_correction is None else bias_correction
    targets = _targets(model)
    report = RoundingReport()
    if not targets:
        return report
    chunk = len(targets) if sequential <= 0 else sequential
    groups = [targets[i : i + chunk] for i in range(0, len(targets), chunk)]
    report.sequential = len(groups) > 1
    correct = bias_correction and report.sequential
    cached = hessians is not None and not report.sequential and len(hessians) == len(targets)
    n_batches = 0 if cached else -(-len(inputs) // batch)
    total = (len(groups) + correct) * n_batches + len(targets)
    done = 0
    sums_f: list[Any] = [None] * len(targets)
    if correct:  # the float model's input means of every layer: one pass before anything is rounded
        probe = keras.Model(model.inputs, [t.input for t in targets])
        for start in range(0, len(inputs), batch):
            outs = probe(inputs[start : start + batch], training=False)
            _accumulate(None, targets, [outs] if len(targets) == 1 else outs, sums_f)
            done += 1
            if step:
                step(done, total)
    first = 0
    for group in groups:
        # the model's layers are rounded in place: this probe runs the already rounded prefix
        probe = None if cached else keras.Model(model.inputs, [t.input for t in group])
        hs: list[Any] = [None] * len(group)
        sums_q: list[Any] = [None] * len(group)
        if cached:
            hs = [hessians[first + i] for i in range(len(group))]
        for start in range(0, 0 if cached else len(inputs), batch):
            outs = probe(inputs[start : start + batch], training=False)
            _accumulate(hs, group, [outs] if len(group) == 1 else outs, sums_q if correct else None)
            done += 1
            if step:
                step(done, total)
        if hessians is not None and not report.sequential and not cached:
            hessians.update({first + i: h for i, h in enumerate(hs)})
        for i, (layer, h) in enumerate(zip(group, hs)):
            done += 1
            if step:
                step(done, total)
            w_float = layer.get_weights()[0].copy()
            _round_layer(layer, h, report, progress, *((QMAX, False) if grid_for is None else grid_for(layer)))
            if correct:
                f = sums_f[first + i]
                _correct_bias(layer, w_float, f[0] / f[1], sums_q[i][0] / sums_q[i][1], report)
        first += len(group)
    return report


def _correct_bias(layer: Any, w_float: np.ndarray, mean_f: np.ndarray, mean_q: np.ndarray, report: RoundingReport) -> None:
    """``b += W mean_f - Q mean_q`` per output channel (no-op for a layer without bias)."""
    weights = layer.get_weights()
    if len(weights) < 2:
        return
    q = weights[0]
    if type(layer).__name__ == "DepthwiseConv2D":
        kh, kw, c, _ = q.shape
        wf, wq = w_float.reshape(kh * kw, c).T, q.reshape(kh * kw, c).T  # (C, d); means (C, d)
        shift = np.sum(wf * mean_f, axis=1) - np.sum(wq * mean_q, axis=1)
    else:
        wf, wq = w_float.reshape(-1, q.shape[-1]), q.reshape(-1, q.shape[-1])  # (d, out)
        shift = mean_f @ wf - mean_q @ wq
    weights[1] = (weights[1] + shift).astype(np.float32)
    layer.set_weights(weights)
    report.bias_corrected += 1


def _round_layer(layer: Any, h: np.ndarray, report: RoundingReport, progress: Callable[[str], None] | None,
                 qmax: Any = QMAX, pairs: bool = False) -> None:
    weights = layer.get_weights()
    kernel = weights[0]
    if type(layer).__name__ == "DepthwiseConv2D":
        kh, kw, c, m = kernel.shape
        if m != 1:
            return
        w2 = kernel.reshape(kh * kw, c).T  # (C, d), one H per channel
    else:
        w2 = kernel.reshape(-1, kernel.shape[-1]).T  # (out, d), one shared H
    d = w2.shape[1]
    if isinstance(qmax, str):  # "adaptive": per output channel, the finest grid its pairs allow
        qmax = pair_qmax(w2)
    partner = (np.arange(d) ^ 1) if pairs else None  # input channel 2i with 2i+1 (1x1 conv, dense: columns are channels)
    if partner is not None:
        partner = np.where(partner < d, partner, -1)
    q2 = _gptq(w2, h, qmax=qmax, partner=partner)
    err_rtn, err_q = _rel_err(w2, _rtn(w2, qmax), h), _rel_err(w2, q2, h)
    weights[0] = q2.T.reshape(kernel.shape).astype(np.float32)
    layer.set_weights(weights)
    report.layers += 1
    report.errors.append((layer.name, err_rtn, err_q))
    if progress:
        progress(f"{layer.name}: output error {err_rtn:.4f} -> {err_q:.4f}")


def _rtn(w2: np.ndarray, qmax: Any = QMAX) -> np.ndarray:
    s = _scales(w2, qmax)[:, None]
    qm = np.asarray(qmax)[:, None] if np.ndim(qmax) else qmax
    return np.clip(np.round(w2 / s), -qm, qm) * s


def _rel_err(w: np.ndarray, q: np.ndarray, h: np.ndarray) -> float:
    """Relative output error ``sqrt(dW H dW^T / W H W^T)``, H shared (d, d) or per row (rows, d, d)."""
    def energy(a: np.ndarray) -> float:
        ah = a @ h if h.ndim == 2 else np.einsum("ri,rij->rj", a, h)
        return float(np.sum(ah * a))

    return float(np.sqrt(max(energy((q - w).astype(np.float64)), 0.0) / max(energy(w.astype(np.float64)), 1e-30)))
