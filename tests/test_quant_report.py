"""edgetl.export.quant_report: per-layer int8 error of TFLite and ONNX files, on a deliberately damaged layer.

The tiny run's model gets one layer whose int8 weights cannot work: channel 0 of block0's
output is always 0 (BN beta -100 before ReLU6) and block1's conv weighs it 1000 in every
output channel. Per-channel int8 weights then round every other block1 weight to 0, so block1
computes a constant while the float model does not: the report must put block1 first, and
keeping it in float must bring the output back towards the float model's.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_image
from edgetl.errors import EdgetlError
from edgetl.export import quant_report as qr

SIZE = 32  # tiny_cnn input


def _pixels(n: int, seed: int) -> np.ndarray:
    return np.stack([np.asarray(make_image(i % 3, SIZE, seed + i)) for i in range(n)])


@pytest.fixture(scope="module")
def damaged(tiny_run):
    """(Keras model with block1 damaged for int8, calibration pixels, debug pixels)."""
    import keras

    model = keras.saving.load_model(tiny_run / "model.keras")
    bn = model.get_layer("block0_bn")
    gamma, beta, mean, var = bn.get_weights()
    beta[0] = -100.0
    bn.set_weights([gamma, beta, mean, var])
    conv = model.get_layer("block1_conv")
    (kernel,) = conv.get_weights()
    kernel[:, :, 0, :] = 1000.0
    conv.set_weights([kernel])
    return model, _pixels(16, 100), _pixels(8, 500)


def _factory(model, calib):
    """A fresh converter set up as edgetl.export.tflite.convert sets it for int8 with uint8 IO."""
    import tensorflow as tf

    from edgetl.export.tflite import _converter, representative_dataset

    def make():
        conv = _converter(model)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative_dataset(calib)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
        conv.inference_output_type = tf.uint8
        return conv

    return make


def _tflite_probs(model_bytes: bytes, pixels: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model_bytes)
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    out = []
    for x in pixels:
        it.set_tensor(i["index"], x[None].astype(i["dtype"]))
        it.invoke()
        y = it.get_tensor(o["index"]).astype(np.float32)
        scale, zp = o["quantization"]
        out.append((y - zp) * scale if scale else y)
    return np.concatenate(out)


def _check_rows(rows, keys):
    assert rows, "no rows"
    names = [r["name"] for r in rows]
    assert len(set(names)) == len(names), "names must be unique"
    assert [r["index"] for r in rows] == list(range(len(rows)))
    for r in rows:
        assert keys <= set(r), r
        assert math.isfinite(r["rmse_scale"]) and r["rmse_scale"] >= 0, r
        assert math.isfinite(r["mean_error_scale"]) and r["scale"] > 0, r


# --------------------------------------------------------------------------- TFLite


@pytest.fixture(scope="module")
def tflite_rows(damaged):
    model, calib, debug = damaged
    return qr.tflite_layer_report(_factory(model, calib), None, debug)


def test_tflite_report_ranks_the_damaged_layer_first(tflite_rows):
    _check_rows(tflite_rows, {"name", "op", "rmse_scale", "mean_error_scale", "max_abs_error", "scale", "index"})
    (worst,) = qr.rank(tflite_rows, 1)
    row = next(r for r in tflite_rows if r["name"] == worst)
    assert row["op"] == "CONV_2D" and "block1" in worst, tflite_rows
    others = sorted(r["rmse_scale"] for r in tflite_rows if r["name"] != worst)
    # The damaged conv is off by many steps; every other op adds rounding-sized error.
    assert row["rmse_scale"] > 10 and row["rmse_scale"] > 5 * others[-1], tflite_rows
    assert np.median(others) < 1.0


def test_tflite_calib_pixels_replace_the_converters_set(damaged, tflite_rows):
    """Calibrated on images 8x darker than the debug set, block0's range is too narrow: it clips."""
    model, calib, debug = damaged
    rows = qr.tflite_layer_report(_factory(model, calib), calib // 8, debug)
    assert [r["name"] for r in rows] == [r["name"] for r in tflite_rows]
    before, after = (next(r["rmse_scale"] for r in rs if "block0" in r["name"]) for rs in (tflite_rows, rows))
    assert before < 1 and after > 5, (before, after)


def test_tflite_denylisted_model_keeps_layer_float_and_uint8_io(damaged, tflite_rows):
    import keras

    from edgetl.export import tflite
    from edgetl.quant import QuantizationConfig

    model, calib, debug = damaged
    worst = qr.rank(tflite_rows, 1)[0]
    fixed = qr.tflite_denylisted_model(_factory(model, calib), [worst])
    io = tflite.io_details(fixed)
    assert (io["input_dtype"], io["output_dtype"]) == ("uint8", "uint8")
    assert io["input_quantization"] == [1.0, 0]  # raw pixels still go straight in
    floats = qr.float_op_outputs(fixed)
    assert any(op == "CONV_2D" and (t == worst or t.startswith(worst)) for t, op in floats.items()), floats
    assert len(floats) == 1, f"only the denylisted op may be float: {floats}"

    plain = tflite.convert(model, QuantizationConfig.for_int8(), calib)
    assert not qr.float_op_outputs(plain)
    ref = np.asarray(keras.ops.convert_to_numpy(model(debug.astype(np.float32), training=False)))
    err_plain = np.abs(_tflite_probs(plain, debug) - ref).mean()
    err_fixed = np.abs(_tflite_probs(fixed, debug) - ref).mean()
    assert err_fixed < err_plain / 3, (err_fixed, err_plain)

    # No denylist: the same model edgetl's own int8 export writes.
    same = qr.tflite_denylisted_model(_factory(model, calib), [])
    np.testing.assert_array_equal(_tflite_probs(same, debug), _tflite_probs(plain, debug))


def test_float_layer_candidates_share_one_calibration(damaged, tflite_rows):
    """The doctor's float-layer candidates calibrate once: the slow pass is cached, the MLIR
    quantization with each denylist is redone, and the files are what an uncached build makes."""
    from edgetl.export import tflite
    from edgetl.quant import QuantizationConfig

    model, calib, _ = damaged
    names = qr.rank(tflite_rows, 3)
    cache: dict[str, bytes] = {}
    calls = []

    def calibrated(factory):
        if "c" not in cache:
            calls.append(1)
            cache["c"] = qr.tflite_calibrated_model(factory)
        return cache["c"]

    q = QuantizationConfig.for_int8()
    one = tflite.convert(model, q.with_(float_nodes=(names[0],)), calib, calibrated=calibrated)
    three = tflite.convert(model, q.with_(float_nodes=tuple(names)), calib, calibrated=calibrated)
    assert len(calls) == 1
    assert len(qr.float_op_outputs(one)) == 1 and len(qr.float_op_outputs(three)) == 3
    assert one == qr.tflite_denylisted_model(_factory(model, calib), [names[0]])


def test_tflite_unknown_node_is_an_error(damaged):
    model, calib, debug = damaged
    with pytest.raises(EdgetlError, match="not kept in float"):
        qr.tflite_denylisted_model(_factory(model, calib), ["no/such/layer"])


# --------------------------------------------------------------------------- ONNX


@pytest.fixture(scope="module")
def onnx_files(damaged, tmp_path_factory):
    import onnx

    from edgetl.export import onnx as onnx_export
    from edgetl.quant import QuantizationConfig

    model, calib, _ = damaged
    d = tmp_path_factory.mktemp("quant_report_onnx")
    fp32 = onnx_export.convert(model)
    q8, _ = onnx_export.quantize(fp32, calib, QuantizationConfig.for_int8())
    onnx.save(fp32, d / "fp32.onnx")
    onnx.save(q8, d / "int8.onnx")
    return d / "fp32.onnx", d / "int8.onnx"


@pytest.fixture(scope="module")
def onnx_rows(onnx_files, damaged):
    return qr.onnx_layer_report(*onnx_files, damaged[2], threads=1)


def test_onnx_report_ranks_the_damaged_layer_first(onnx_files, onnx_rows):
    import onnx

    _check_rows(onnx_rows, {"name", "op", "tensor", "rmse_scale", "sqnr_db", "total_rmse_scale", "local", "index"})
    float_nodes = {n.name for n in onnx.load(onnx_files[0]).graph.node}
    int8_nodes = {n.name for n in onnx.load(onnx_files[1]).graph.node}
    for r in onnx_rows:
        # Names are those of the graph quantize_static saw (after quant_pre_process); the
        # tf2onnx file has them too except for fusions (MatMul + Add -> Gemm ".../MatMulAddFusion").
        assert r["name"] in int8_nodes, r
        assert r["name"] in float_nodes or r["name"].endswith("Fusion"), r
        assert r["local"], f"no float twin for {r}"
        # Past the damaged layer the accumulated error can exceed the signal: SQNR below 0 dB.
        assert math.isfinite(r["sqnr_db"]) and math.isfinite(r["total_rmse_scale"]), r
    (worst,) = qr.rank(onnx_rows, 1)
    row = next(r for r in onnx_rows if r["name"] == worst)
    assert row["op"] == "Conv" and "block1" in row["tensor"], onnx_rows  # tf2onnx may name it "Conv__20"
    others = sorted(r["rmse_scale"] for r in onnx_rows if r["name"] != worst)
    assert row["rmse_scale"] > 10 and row["rmse_scale"] > 5 * others[-1], onnx_rows
    assert np.median(others) < 1.0


def test_onnx_name_is_what_nodes_to_exclude_takes(onnx_files, onnx_rows, damaged, monkeypatch):
    """Requantized through edgetl's own pipeline with the worst node excluded: that node is float."""
    import onnx

    from edgetl.export import onnx as onnx_export
    from edgetl.quant import QuantizationConfig

    worst = qr.rank(onnx_rows, 1)[0]
    q8, _ = onnx_export.quantize(onnx.load(onnx_files[0]), damaged[1], QuantizationConfig.for_int8().with_(float_nodes=(worst,)))

    def dq_fed(proto):
        prod = {o: n.op_type for n in proto.graph.node for o in n.output}
        node = next(n for n in proto.graph.node if n.name == worst)
        return [prod.get(i) == "DequantizeLinear" for i in node.input]

    assert dq_fed(onnx.load(onnx_files[1]))[:2] == [True, True]  # activation and weight int8
    assert dq_fed(q8)[1] is False  # float weight: the Conv runs in float
    path = onnx_files[1].with_name("int8_excluded.onnx")
    onnx.save(q8, path)
    rows = qr.onnx_layer_report(onnx_files[0], path, damaged[2][:4], threads=1)
    # Its output is still quantized for the int8 layer after it: that rounding is all it adds now.
    assert all(r["rmse_scale"] < 1 for r in rows), rows


def test_onnx_models_that_do_not_match(onnx_files, damaged):
    with pytest.raises(EdgetlError, match="no quantized activation"):
        qr.onnx_layer_report(onnx_files[0], onnx_files[0], damaged[2][:1])


# --------------------------------------------------------------------------- rows -> names, line, files


ROWS = [
    {"name": "m/stem_conv;m/stem_bn", "rmse_scale": 0.31, "index": 0},
    {"name": "m/block0_dw/depthwise", "rmse_scale": 2.71, "index": 1},
    {"name": "m/block0_pw/conv", "rmse_scale": float("nan"), "index": 2},
    {"name": "split", "rmse_scale": 2.03, "index": 3},
    {"name": "split", "rmse_scale": 1.5, "index": 4},
    {"name": "head", "rmse_scale": 0.29, "index": 5, "sqnr_db": math.inf},
]


def test_rank_and_summary_line():
    assert qr.rank(ROWS, 2) == ["m/block0_dw/depthwise", "split"]
    assert qr.rank(ROWS, 10)[-1] == "m/block0_pw/conv"  # NaN last, each name once
    assert len(qr.rank(ROWS, 10)) == 5 and qr.rank(ROWS, 0) == []
    assert qr.summary_line(ROWS, 2) == ("worst layers: block0_dw/depthwise 2.71 steps, split 2.03 steps; "
                                        "median 1.50 steps over 5 layers")
    assert qr.summary_line([]) == "no quantized layer measured"


def test_write_and_plot_report(tmp_path):
    qr.write_report(tmp_path / "r.json", ROWS, "crafted")
    data = json.loads((tmp_path / "r.json").read_text())  # strict JSON: no NaN / Infinity tokens
    assert "NaN" not in (tmp_path / "r.json").read_text() and "Infinity" not in (tmp_path / "r.json").read_text()
    assert data["worst"][:2] == ["m/block0_dw/depthwise", "split"] and data["layers"][5]["sqnr_db"] is None
    assert data["summary"].startswith("worst layers: block0_dw/depthwise 2.71")
    qr.plot_report(tmp_path / "r.png", ROWS, "crafted")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp")), "atomic writes leave no temporary file"


def test_module_imports_without_tensorflow_or_onnxruntime():
    code = ("import sys, edgetl.export.quant_report; "
            "print([m for m in ('tensorflow', 'keras', 'onnxruntime', 'onnx', 'matplotlib') if m in sys.modules])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "[]", (p.stdout, p.stderr)
