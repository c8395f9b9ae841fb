"""edgetl.export.ptq: BN folding, GPTQ weight rounding, and the input normalization moved into the input quantization.

Small functional models with random weights and non-trivial BN statistics, generated images.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_image
from edgetl.export import ptq

SIZE = 32


def _pixels(n: int, seed: int) -> np.ndarray:
    return np.stack([np.asarray(make_image(i % 3, SIZE, seed + i)) for i in range(n)])


def _model(mean: float = 127.0, std: float = 128.0, seed: int = 0):
    """Lite-like: normalization, conv-BN-ReLU6, depthwise-BN-ReLU6, 1x1 project-BN, pool, dense softmax."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((SIZE, SIZE, 3), name="pixels")
    x = keras.layers.Rescaling(1.0 / std, offset=-mean / std, name="stem_normalize")(inp)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="block0_dwconv")(x)
    x = keras.layers.BatchNormalization(name="block0_bn")(x)
    x = keras.layers.ReLU(6.0, name="block0_relu")(x)
    x = keras.layers.Conv2D(24, 1, use_bias=False, name="block0_project_conv")(x)
    x = keras.layers.BatchNormalization(name="block0_project_bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    out = keras.layers.Dense(3, activation="softmax", name="probs")(x)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2.0, n), rng.normal(0, 0.3, n), rng.normal(0, 0.5, n),
                               rng.uniform(0.2, 3.0, n)])
    return model


def test_fold_batchnorm_keeps_outputs_and_removes_every_bn():
    model = _model()
    x = _pixels(6, 1).astype(np.float32)
    folded, n = ptq.fold_batchnorm(model)
    assert n == 3
    assert not [l for l in folded.layers if type(l).__name__ == "BatchNormalization"]
    assert all(folded.get_layer(name).use_bias for name in ("stem_conv", "block0_dwconv", "block0_project_conv"))
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), atol=2e-5)
    # the original model is untouched (GPTQ later changes the folded copy's weights in place)
    assert len(model.get_layer("stem_bn").get_weights()) == 4


def test_split_input_normalization_is_exact_only_on_the_int8_grid():
    model = _model(127.0, 128.0)
    split = ptq.split_input_normalization(model)
    assert split is not None
    stripped, affine = split
    assert affine.scale == 1 / 128 and affine.uint8_zero_point == 127
    assert not [l for l in stripped.layers if type(l).__name__ == "Rescaling"]
    x = _pixels(4, 2)
    np.testing.assert_allclose(stripped.predict(affine.apply(x), verbose=0),
                               model.predict(x.astype(np.float32), verbose=0), atol=1e-6)
    # x / 127.5 - 1 (MobileNetV2): zero point 127.5 is not an integer -> stays in the graph
    assert ptq.split_input_normalization(_model(127.5, 127.5)) is None


def _on_grid(kernel: np.ndarray, ref: np.ndarray, qmax: int = 127) -> tuple[float, float]:
    """(max distance of kernel/scale from an integer, max relative change of the channel's max |w|)."""
    k2 = kernel.reshape(-1, kernel.shape[-1]) if kernel.ndim == 2 or kernel.shape[-1] > 1 else kernel.reshape(-1, kernel.shape[2])
    r2 = ref.reshape(k2.shape)
    scale = np.abs(r2).max(axis=0) / qmax
    steps = k2 / scale
    return float(np.abs(steps - np.round(steps)).max()), float(np.abs(np.abs(k2).max(0) / np.abs(r2).max(0) - 1).max())


def test_gptq_rounds_onto_the_converters_grid_and_beats_nearest():
    model, _ = ptq.fold_batchnorm(_model())
    before = {l.name: l.get_weights()[0].copy() for l in model.layers if type(l).__name__ in ("Conv2D", "DepthwiseConv2D", "Dense")}
    stripped, affine = ptq.split_input_normalization(model)
    report = ptq.gptq_round(stripped, affine.apply(_pixels(24, 3)))
    assert report.layers == 4
    for name, ref in before.items():
        kernel = stripped.get_layer(name).get_weights()[0]
        frac, max_change = _on_grid(kernel, ref)
        assert frac < 1e-3, name          # every weight is an int8 step of the unchanged per-channel scale
        assert max_change < 1e-6, name    # the largest weight per channel is kept -> the converter's scale is the same
        assert not np.allclose(kernel, ref)
    rtn = np.array([e[1] for e in report.errors])
    gq = np.array([e[2] for e in report.errors])
    assert np.all(gq <= rtn + 1e-9) and gq.sum() < 0.8 * rtn.sum(), report.errors


def _pair_sums(kernel: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """|q_2i| + |q_2i+1| over adjacent input channels of a 1x1 conv / dense kernel, on the 8-bit grid of ``ref``."""
    k2 = kernel.reshape(-1, kernel.shape[-1])  # (cin, out)
    q = np.abs(np.round(k2 / (np.abs(ref.reshape(k2.shape)).max(0) / 127)))
    n = q.shape[0] // 2 * 2
    return q[0:n:2] + q[1:n:2]


@pytest.mark.parametrize("mode", ["pairs", "7bit"])
def test_overflow_safe_gptq_keeps_every_pair_inside_int16_and_reuses_the_hessians(mode):
    """The overflow fix: no pair of uint8 x int8 products of adjacent input channels can pass 32767.
    ``pairs``: 1x1 conv and dense stay on the 8-bit grid with |q1| + |q2| <= 128 (plain GPTQ breaks
    that on this model), the 3x3 stem goes to [-64, 64]; ``7bit``: every conv/dense on [-64, 64];
    depthwise on the int8 grid either way. A second rounding from the Hessians of the first runs no
    statistics pass and rounds exactly as a fresh one."""
    folded, _ = ptq.fold_batchnorm(_model())
    before = {l.name: l.get_weights()[0].copy() for l in ptq._targets(folded)}
    x = (_pixels(16, 6).astype(np.float32))
    grid = lambda layer: ptq.overflow_grid(layer, mode)  # noqa: E731
    hessians: dict = {}
    plain = ptq.copy_model(folded)
    ptq.gptq_round(plain, x, hessians=hessians)
    assert len(hessians) == 4
    totals: list[int] = []
    cached = ptq.copy_model(folded)
    ptq.gptq_round(cached, x, grid_for=grid, hessians=hessians, step=lambda d, t: totals.append(t))
    assert set(totals) == {4}  # the 4 layers, no statistics batch
    fresh = ptq.copy_model(folded)
    ptq.gptq_round(fresh, x, grid_for=grid)
    kinds = {}
    for layer in ptq._targets(cached):
        kernel = layer.get_weights()[0]
        np.testing.assert_array_equal(kernel, fresh.get_layer(layer.name).get_weights()[0])
        qmax, pairs = grid(layer)
        kinds[layer.name] = (qmax, pairs)
        frac, max_change = _on_grid(kernel, before[layer.name], qmax)
        assert frac < 1e-3 and max_change < 1e-6, layer.name
        if pairs:
            assert _pair_sums(kernel, before[layer.name]).max() <= ptq.PAIR_MAX, layer.name
            assert _pair_sums(plain.get_layer(layer.name).get_weights()[0], before[layer.name]).max() > ptq.PAIR_MAX
    assert kinds["block0_dwconv"] == (127, False)
    assert kinds["stem_conv"] == (64, False)
    one_by_one = (127, True) if mode == "pairs" else (64, False)
    assert kinds["block0_project_conv"] == one_by_one and kinds["probs"] == one_by_one
    assert 255 * ptq.PAIR_MAX <= 32767 and 255 * 2 * ptq.QMAX_7BIT <= 32767


def test_tflite_file_holds_exactly_the_gptq_weights_and_takes_raw_pixels():
    """The converter keeps GPTQ's int8 values (same scale, no re-rounding), uint8 input carries the normalization."""
    from ai_edge_litert.interpreter import Interpreter

    from edgetl.export import tflite
    from edgetl.export.verify import run_tflite
    from edgetl.quant import QuantizationConfig

    model = _model()
    folded, _ = ptq.fold_batchnorm(model)
    stripped, affine = ptq.split_input_normalization(folded)
    calib = _pixels(24, 4)
    ptq.gptq_round(stripped, affine.apply(calib))
    raw = tflite.convert(stripped, QuantizationConfig.for_int8(calib_samples=24), calib, affine)
    assert tflite.io_details(raw)["input_quantization"] == [pytest.approx(1 / 128), 127]
    it = Interpreter(model_content=raw)
    want = stripped.get_layer("block0_project_conv").get_weights()[0]  # (1, 1, 16, 24)
    found = False
    for d in it.get_tensor_details():
        if d["dtype"] == np.int8 and tuple(d["shape"]) == (24, 1, 1, 16):
            q = it.get_tensor(d["index"]).astype(np.float64) * d["quantization_parameters"]["scales"][:, None, None, None]
            np.testing.assert_allclose(q.transpose(1, 2, 3, 0), want, atol=1e-6)
            found = True
    assert found
    # raw pixels in (no normalization by the caller): the int8 file follows the float model
    x = _pixels(12, 5)
    p_int8 = run_tflite(raw, x)
    p_float = model.predict(x.astype(np.float32), verbose=0)
    assert np.abs(p_int8 - p_float).max() < 0.1


def test_export_records_the_rounding_and_nearest_is_a_different_file(tiny_run, tmp_path):
    """export.json says how the int8 weights were rounded; --rounding nearest makes another file."""
    from edgetl.export.api import ExportConfig, export_run

    files = {}
    for rounding in ("gptq", "nearest"):
        res = export_run(tiny_run, ExportConfig(formats=("tflite_int8", "onnx_int8"), calib_samples=8, doctor=False,
                                                quant_report=False, rounding=rounding, out_dir=str(tmp_path / rounding)))
        for fmt in ("tflite_int8", "onnx_int8"):
            art = res.artifact(fmt)
            assert art.error is None, art.error
            assert art.quantization["rounding"] == rounding
            gptq_notes = [n for n in art.notes if n.startswith("int8 weights: GPTQ")]
            assert bool(gptq_notes) == (rounding == "gptq"), art.notes
            files[(rounding, fmt)] = art.quantization["model_sha256"]
        from edgetl.cli import degraded_notes

        assert not degraded_notes(res)  # the GPTQ note is information, not a WARNING line on the console
    for fmt in ("tflite_int8", "onnx_int8"):
        assert files[("gptq", fmt)] != files[("nearest", fmt)]


def test_export_puts_the_overflow_fix_into_the_onnx_file_only(tiny_run, tmp_path):
    """Default export: the int8 .onnx is GPTQ-rounded onto the overflow-safe grid and says so in its
    metadata (runners then need no session option); the .tflite keeps 8 bits; --no-onnx-overflow-fix
    writes the 8-bit file with the x86 session option in its metadata, as before."""
    import onnx

    from edgetl.export.api import ExportConfig, export_run
    from edgetl.runtime.onnx_runner import ORT_CONFIG_KEY, OVERFLOW_SAFE_KEY

    for fix in (True, False):
        res = export_run(tiny_run, ExportConfig(formats=("tflite_int8", "onnx_int8"), calib_samples=8, doctor=False,
                                                quant_report=False, onnx_overflow_fix=fix, out_dir=str(tmp_path / str(fix))))
        art = res.artifact("onnx_int8")
        assert art.error is None, art.error
        assert art.quantization["overflow_fix"] is fix
        assert res.artifact("tflite_int8").quantization["overflow_fix"] is False
        assert any("overflow-safe grid" in n for n in art.notes) is fix, art.notes
        keys = {p.key for p in onnx.load(art.path).metadata_props}
        assert (OVERFLOW_SAFE_KEY in keys, ORT_CONFIG_KEY in keys) == (fix, not fix), keys
        assert art.verification.agreement >= 90


def test_bad_rounding_option_is_a_usage_error():
    from edgetl.errors import UsageError
    from edgetl.export.api import ExportConfig

    with pytest.raises(UsageError, match="--rounding"):
        ExportConfig(int8=True, rounding="stochastic").resolve_formats()
    with pytest.raises(UsageError, match="--rounding-samples"):
        ExportConfig(int8=True, rounding_samples=0).resolve_formats()


def test_sequential_gptq_sees_the_rounded_prefix_and_stays_on_the_grid():
    """Sequential GPTQ (each H from the already rounded layers, biases corrected for the mean shift) is not
    the parallel version (every H from the float model): the first layer's kernel has no rounded prefix, so
    both round it alike; the layers after it differ. Every kernel stays on the converters' per-channel int8
    grid with its scale unchanged, and the sequential model is closer to the float model's outputs."""
    base, _ = ptq.fold_batchnorm(_model(seed=2))
    for layer in ptq._targets(base):  # one outlier weight per channel: a coarse grid, large rounding errors
        w = layer.get_weights()
        k = w[0].reshape(-1, w[0].shape[-1] if w[0].ndim != 4 or w[0].shape[-1] > 1 else w[0].shape[2])
        k[0] *= 30.0
        w[0] = k.reshape(w[0].shape)
        layer.set_weights(w)
    x = _pixels(24, 5).astype(np.float32)
    kernels, biases, dev = {}, {}, {}
    want = base.predict(x, verbose=0)
    for mode in (0, 1):
        m = ptq.copy_model(base)
        before = {l.name: l.get_weights()[0].copy() for l in ptq._targets(m)}
        rep = ptq.gptq_round(m, x, sequential=mode)  # 1: fully sequential
        assert rep.layers == 4
        kernels[mode] = {}
        for name, ref in before.items():
            k = m.get_layer(name).get_weights()[0]
            frac, max_change = _on_grid(k, ref)
            assert frac < 1e-3 and max_change < 1e-6, (mode, name)
            kernels[mode][name] = k
        biases[mode] = {l.name: l.get_weights()[1] for l in ptq._targets(m) if len(l.get_weights()) > 1}
        assert rep.sequential == bool(mode) and rep.bias_corrected == (len(biases[mode]) if mode else 0)
        dev[mode] = float(np.abs(m.predict(x, verbose=0) - want).mean())
    names = [l.name for l in ptq._targets(base)]
    np.testing.assert_allclose(kernels[0][names[0]], kernels[1][names[0]], atol=1e-7)
    differ = [n for n in names[1:] if not np.allclose(kernels[0][n], kernels[1][n])
              or not np.allclose(biases[0].get(n, 0), biases[1].get(n, 0))]
    assert differ, "sequential GPTQ rounded every later layer exactly like the parallel version"
    assert dev[1] < dev[0], dev


def test_qat_activation_ranges_start_at_the_float_models(monkeypatch):
    """tfmot starts every activation range at [-6, 6]; init_ranges sets each to the float model's on the images,
    measured a few images at a time (all of a model's activations for the whole sample once took 11 GB)."""
    from edgetl.export import qat as Q

    monkeypatch.setattr(Q, "RANGE_BATCH", 3)  # 16 images in 6 passes: the ranges must still cover all of them
    m, _ = ptq.fold_batchnorm(_model(seed=1))
    tk = Q.to_tf_keras(m)
    q, _ = Q.quantize_aware(tk)
    x = _pixels(16, 3).astype(np.float32)
    assert Q.init_ranges(q, tk, x) >= 3
    checked = 0
    for layer in q.layers:
        inner = getattr(layer, "layer", None)
        for v in layer.weights:
            if v.name.split("/")[-1].startswith(("output_max", "post_activation_max")) and inner is not None:
                ref = tf_keras_output(tk, inner.name, x)
                np.testing.assert_allclose(float(np.max(v.numpy())), max(0.0, float(ref.max())), rtol=1e-5)
                checked += 1
    assert checked >= 3


def tf_keras_output(tk, name, x):
    import tf_keras

    return tf_keras.Model(tk.inputs, tk.get_layer(name).output).predict(x, verbose=0)
