"""Quantization-aware fine-tuning with tensorflow-model-optimization (tfmot).

tfmot only accepts tf_keras (Keras 2) models with one flat functional graph, and
edgetl's models are Keras 3. So the same graph is rebuilt layer by layer in
tf_keras from each Keras 3 layer's config, and the weights are copied over; the
rebuilt model is checked to give the same outputs before anything else happens.
Layers that tfmot cannot quantize (e.g. the folded-in ``Normalization``) are left
un-annotated: they train in float and the TFLite converter quantizes them with the
representative dataset like any PTQ layer.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from edgetl.errors import EdgetlError

# Config keys that Keras 3 writes and tf_keras does not understand, or that do not matter
# once the weights are copied (initializers, regularizers, constraints).
_DROP_KEYS = {
    "quantization_config", "lora_rank", "lora_alpha", "synchronized", "gamma_initializer", "beta_initializer",
    "moving_mean_initializer", "moving_variance_initializer", "kernel_initializer", "bias_initializer",
    "depthwise_initializer", "pointwise_initializer", "kernel_regularizer", "bias_regularizer",
    "activity_regularizer", "depthwise_regularizer", "pointwise_regularizer", "gamma_regularizer",
    "beta_regularizer", "kernel_constraint", "bias_constraint", "depthwise_constraint",
    "pointwise_constraint", "gamma_constraint", "beta_constraint", "seed",
}


def _tf_keras_config(layer: Any) -> dict[str, Any]:
    cfg = dict(layer.get_config())
    for k in list(cfg):
        if k in _DROP_KEYS:
            cfg.pop(k)
    dtype = cfg.get("dtype")
    if isinstance(dtype, dict):  # Keras 3 DTypePolicy -> its name
        cfg["dtype"] = dtype.get("config", {}).get("name", "float32")
    return cfg


def to_tf_keras(model: Any) -> Any:
    """Rebuild a flat Keras 3 functional model in tf_keras with the same weights.

    Raises:
        EdgetlError: a layer type tf_keras lacks, a nested model, or a config it rejects.
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "0")
    import tf_keras

    tensors: dict[int, Any] = {}
    inputs = []
    for layer in model.layers:
        cls = type(layer).__name__
        if cls == "InputLayer":
            shape = tuple(model.input_shape[1:]) if len(model.inputs) == 1 else tuple(layer.output.shape[1:])
            t = tf_keras.Input(shape=shape, name=layer.name)
            tensors[id(layer.output)] = t
            inputs.append(t)
            continue
        if hasattr(layer, "layers"):
            raise EdgetlError(f"QAT needs one flat graph; layer {layer.name!r} is a nested model")
        tk_cls = getattr(tf_keras.layers, cls, None)
        if tk_cls is None:
            raise EdgetlError(f"QAT: tf_keras has no layer class {cls} (layer {layer.name!r})")
        try:
            new = tk_cls.from_config(_tf_keras_config(layer))
        except Exception as exc:  # noqa: BLE001
            raise EdgetlError(f"QAT: cannot rebuild layer {layer.name!r} ({cls}) in tf_keras: {type(exc).__name__}: {exc}") from None
        if len(layer._inbound_nodes) != 1:
            raise EdgetlError(f"QAT: layer {layer.name!r} is used {len(layer._inbound_nodes)} times; only single-use layers are supported")
        node = layer._inbound_nodes[0]
        args = [tensors[id(t)] for t in node.input_tensors]
        y = new(args[0] if len(args) == 1 else args)
        tensors[id(layer.output)] = y
        src = layer.get_weights()
        dst = new.get_weights()
        if len(src) != len(dst) or any(a.shape != b.shape for a, b in zip(src, dst)):
            if src or dst:
                if cls == "Normalization" and not dst:
                    continue  # constants baked into the tf_keras layer from mean/variance in the config
                raise EdgetlError(f"QAT: weights of layer {layer.name!r} ({cls}) do not match after the rebuild")
        else:
            new.set_weights(src)
    outputs = [tensors[id(t)] for t in model.outputs]
    return tf_keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs[0] if len(outputs) == 1 else outputs,
                          name=model.name)


def quantize_aware(tk_model: Any) -> tuple[Any, list[str]]:
    """tfmot QAT model: every layer tfmot supports is annotated, the rest stays float."""
    import tf_keras
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import default_8bit_quantize_registry

    registry = default_8bit_quantize_registry.Default8BitQuantizeRegistry()
    skipped: list[str] = []

    def annotate(layer: Any) -> Any:
        if isinstance(layer, tf_keras.layers.InputLayer):
            return layer
        # BatchNormalization is "unsupported" on its own, but tfmot folds Conv+BN(+ReLU) when both are annotated.
        if registry.supports(layer) or isinstance(layer, tf_keras.layers.BatchNormalization):
            return tfmot.quantization.keras.quantize_annotate_layer(layer)
        skipped.append(f"{layer.name} ({type(layer).__name__})")
        return layer

    annotated = tf_keras.models.clone_model(tk_model, clone_function=annotate)
    annotated.set_weights(tk_model.get_weights())
    with tfmot.quantization.keras.quantize_scope():
        qat = tfmot.quantization.keras.quantize_apply(annotated)
    notes = [f"QAT left {len(skipped)} layer(s) in float (tfmot cannot quantize them; PTQ calibrates them): {', '.join(skipped)}"] if skipped else []
    return qat, notes


#: Adam learning rate of the QAT fine-tune: low, the float weights are already good; QAT only moves them
#: (and the fake-quant ranges) toward what survives 8-bit rounding
QAT_LR = 1e-5
#: QAT training batch
QAT_BATCH = 16
#: where QAT starts: "gptq" (the PTQ file's rounded weights, when the export rounds with GPTQ) or "float"
QAT_START = "gptq"


def qat_finetune(ctx: Any, seconds: float | None = None, epochs: int | None = None) -> tuple[Any, list[str]]:
    """BN folded, rebuilt in tf_keras, annotated, fine-tuned by distillation from the float model.

    Trains ``epochs`` (default ``qat_epochs``) epochs over ``qat_samples`` training images, or until ``seconds`` of training
    have passed (the doctor's time budget for this remedy), whichever comes first; at least one step.
    The targets are the float model's own probabilities: the goal is an int8 file that agrees with the
    float model, not a model fitted to the labels again.
    """
    from edgetl.data import stratified_sample
    from edgetl.export import ptq
    from edgetl.preprocess import prepare_batch

    cfg = ctx.config
    epochs = epochs or cfg.qat_epochs
    notes: list[str] = []
    if QAT_START == "gptq" and cfg.rounding == "gptq":
        # start from the post-training solution: BN folded and every kernel GPTQ-rounded on the converter's
        # grid (the export's own rounded model, shared with the PTQ file), so the fine-tune moves on from
        # the PTQ file's agreement instead of from round-to-nearest
        folded, n_bn = ctx.rounded_model(cfg.int8_quant(), "tflite")
        notes.append("QAT starts from the GPTQ-rounded weights of the int8 file")
    else:
        folded, n_bn = ptq.fold_batchnorm(ctx.model)  # tfmot would fold Conv+BN itself, but not every pattern
    tk = to_tf_keras(folded)
    probe = ctx.calibration()[:8].astype(np.float32)
    diff = float(np.max(np.abs(tk.predict(probe, verbose=0) - folded.predict(probe, verbose=0))))
    if diff > 1e-3:
        raise EdgetlError(f"QAT: the tf_keras rebuild differs from the Keras 3 model by {diff:.3g} (max |dp|)")
    import tf_keras

    qat, qnotes = quantize_aware(tk)
    notes += qnotes
    picked = stratified_sample(ctx.train_samples, cfg.qat_samples, seed=cfg.seed)
    x = prepare_batch([s.path for s in picked], ctx.run.preprocessing).astype(np.float32)
    if len(x) > QAT_BATCH:
        # whole batches only: a last, smaller batch makes tf_keras trace the training step a second time
        # (tens of seconds of a time-limited fine-tune for Lite0); the stratified sample is label-sorted,
        # so a spread subset is dropped, not the last class
        keep = len(x) - len(x) % QAT_BATCH
        x = x[np.sort(np.random.default_rng(cfg.seed).permutation(len(x))[:keep])]
    y = ctx.model.predict(x, batch_size=32, verbose=0).astype(np.float32)
    n_init = init_ranges(qat, tk, x[:64])
    budget = f", at most {seconds:.0f} s" if seconds is not None else ""
    ctx.say(f"  QAT: fine-tuning up to {epochs} epoch(s) on {len(x)} training images{budget} "
            f"({n_bn} BN folded, Adam {QAT_LR:g}, targets: the float model's probabilities)")
    steps, took, hit_at, agreement = _train(qat, x, y, epochs, seconds, cfg.seed)
    notes.append(f"QAT: {steps} step(s) of {QAT_BATCH} images ({steps * QAT_BATCH / max(1, len(x)):.1f} epoch(s) of {len(x)} "
                 f"images) in {took:.0f} s{budget + ' budget' if budget else ''}"
                 + (f" (stopped by the time budget after {hit_at:.0f} s)" if hit_at is not None else "")
                 + f", distilled from the float model, {n_bn} BN folded, {n_init} activation ranges set from the "
                 f"float model's activations, final train agreement {100 * agreement:.1f}%")
    return qat, notes


#: images per forward pass when :func:`init_ranges` measures the float model's activation ranges
RANGE_BATCH = 16


def init_ranges(qat: Any, tk: Any, x: np.ndarray) -> int:
    """Set every activation quantizer's range (tfmot starts them at [-6, 6] and moves them by a 0.999
    moving average: a short fine-tune never gets them right) to the float model's range on ``x``;
    returns how many ranges were set."""
    import tf_keras

    pairs = []
    for layer in qat.layers:
        inner = getattr(layer, "layer", None)
        try:
            src = tk.get_layer(inner.name) if inner is not None else None
        except ValueError:
            src = None
        if src is not None:
            pairs.append((layer, src.output))
        elif type(layer).__name__ == "QuantizeLayer":
            pairs.append((layer, tk.inputs[0]))
    if not pairs:
        return 0
    # Running min / max over batches: predicting every quantized tensor of every image at once held all of
    # Lite0's activations for the whole QAT sample in memory (11.4 GB peak RSS for 300 images at 224 px).
    probe = tf_keras.Model(tk.inputs, [t for _, t in pairs])
    lows = np.zeros(len(pairs))
    highs = np.zeros(len(pairs))
    for i in range(0, len(x), RANGE_BATCH):
        outs = probe(x[i:i + RANGE_BATCH], training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for k, out in enumerate(outs):
            out = np.asarray(out)
            lows[k] = min(lows[k], float(out.min()))
            highs[k] = max(highs[k], float(out.max()))
    n = 0
    for (layer, _), lo, hi in zip(pairs, lows, highs):
        lo, hi = float(lo), float(hi)
        for v in layer.weights:
            short = v.name.split("/")[-1].split(":")[0]
            if short.endswith(("post_activation_min", "output_min")) or short == f"{layer.name}_min":
                v.assign(np.full(v.shape, lo, v.dtype.as_numpy_dtype))
                n += 1
            elif short.endswith(("post_activation_max", "output_max")) or short == f"{layer.name}_max":
                v.assign(np.full(v.shape, hi, v.dtype.as_numpy_dtype))
    return n


def _train(model: Any, x: np.ndarray, y: np.ndarray, epochs: int, seconds: float | None, seed: int
           ) -> tuple[int, float, float | None, float]:
    """Adam on the distillation loss, shuffled whole batches, until ``epochs`` epochs or ``seconds`` have
    passed (checked after each step; at least one step): (steps, seconds taken, when the limit stopped it
    or None, agreement with the targets over the last epoch's steps).

    A plain loop rather than ``fit``: tf_keras' ``fit`` went on for 9-30 s after a callback stopped it
    (measured on Lite0), time a limited fine-tune does not have."""
    import time

    import tensorflow as tf
    import tf_keras

    opt = tf_keras.optimizers.Adam(QAT_LR)
    loss_fn = tf_keras.losses.CategoricalCrossentropy()

    @tf.function
    def step(xb: Any, yb: Any) -> Any:
        with tf.GradientTape() as tape:
            p = model(xb, training=True)
            loss = loss_fn(yb, p)
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(p, -1), tf.argmax(yb, -1)), tf.int32))

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    steps, hit_at, hits, seen = 0, None, 0, 0
    for _ in range(max(1, epochs)):
        order = rng.permutation(len(x))
        hits = seen = 0
        for i in range(0, len(x), QAT_BATCH):
            idx = np.sort(order[i:i + QAT_BATCH])
            hits += int(step(tf.constant(x[idx]), tf.constant(y[idx])))
            seen += len(idx)
            steps += 1
            if seconds is not None and time.perf_counter() - t0 > seconds:
                hit_at = time.perf_counter() - t0
                break
        if hit_at is not None:
            break
    return steps, time.perf_counter() - t0, hit_at, hits / max(1, seen)
