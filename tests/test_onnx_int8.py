"""int8 ONNX layout: ONNX Runtime fuses every Q/DQ pair into an int8 kernel (read from its optimized
graph), OpenVINO compiles the file, and the x86 precision option is applied only where it is needed."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.quant import QuantizationConfig

SIZE = 32


def _residual_dw_model():
    """A Lite0-like tiny network: input normalization, stem conv, depthwise conv, a residual block whose
    input feeds both a conv and the Add (a QuantizeLinear with two consumers), ReLU6, pool, dense softmax."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 128.0, offset=-127 / 128.0, name="normalize")(inp)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="stem")(x)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = keras.layers.ReLU(6.0, name="dw_relu")(y)
    y = keras.layers.Conv2D(16, 1, name="project")(y)
    x = keras.layers.Add(name="residual")([x, y])
    y = keras.layers.Conv2D(32, 1, name="expand")(x)
    y = keras.layers.ReLU(6.0, name="expand_relu")(y)
    y = keras.layers.GlobalAveragePooling2D(name="pool")(y)
    out = keras.layers.Dense(3, activation="softmax", name="probs")(y)
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def int8_pair(tmp_path_factory):
    """(float ONNX proto, int8 ONNX proto, path of the int8 file, calibration pixels)."""
    import onnx

    from edgetl.export import onnx as onnx_export

    fp32 = onnx_export.convert(_residual_dw_model())
    pixels = np.random.default_rng(0).integers(0, 256, (12, SIZE, SIZE, 3), dtype=np.uint8)
    q8, notes = onnx_export.quantize(fp32, pixels, QuantizationConfig.for_int8(calib_samples=12, rounding="nearest"))
    path = tmp_path_factory.mktemp("onnxint8") / "tiny_int8.onnx"
    onnx.save(q8, str(path))
    return fp32, q8, path, pixels, notes


def test_ort_runs_every_conv_and_the_dense_layer_as_int8_kernels(int8_pair):
    """The optimized graph has no float Conv/MatMul/Gemm left: with int8 activations (the old layout)
    ORT fused only the convs whose input QuantizeLinear had one consumer, and the conv behind the
    residual branch point ran in float."""
    from edgetl.runtime.onnx_runner import kernel_counts

    fp32, q8, path, _, notes = int8_pair
    convs = sum(n.op_type == "Conv" for n in fp32.graph.node)
    counts = kernel_counts(path)
    assert counts["float"] == {}, counts
    assert counts["quantized"].get("QLinearConv") == convs
    assert sum(counts["quantized"].values()) == convs + 1  # + the dense layer (QGemm or QLinearMatMul)
    # one QuantizeLinear where float pixels enter, one DequantizeLinear before the float softmax
    assert counts["quantize_linear"] == 1 and counts["dequantize_linear"] == 1
    assert any(n.startswith(f"ORT kernels: {convs + 1}/{convs + 1} compute ops quantized") for n in notes), notes


def test_int8_layout_is_u8_activations_s8_weights_with_float_ends(int8_pair):
    from onnx import TensorProto, numpy_helper

    from edgetl.export.onnx import float_edges

    fp32, q8, *_ = int8_pair
    edges = float_edges(fp32)
    kinds = {n.name: n.op_type for n in fp32.graph.node}
    assert [kinds[e] for e in edges][-1] == "Softmax" and {"Mul", "Add"} <= {kinds[e] for e in edges}
    assert "Add" not in {kinds[e] for e in edges[-1:]} and len(edges) == 3  # the residual Add is quantized
    inits = {t.name: t for t in q8.graph.initializer}
    act_zp = [inits[n.input[2]] for n in q8.graph.node if n.op_type == "QuantizeLinear"]
    w_q = [inits[n.input[0]] for n in q8.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
           and inits[n.input[0]].data_type != TensorProto.INT32]  # weights (biases are int32)
    assert act_zp and all(z.data_type == TensorProto.UINT8 for z in act_zp)
    assert w_q and all(w.data_type == TensorProto.INT8 for w in w_q)
    assert all(numpy_helper.to_array(inits[n.input[2]]).max() == 0  # symmetric weights
               for n in q8.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits and len(n.input) > 2
               and inits[n.input[0]].data_type == TensorProto.INT8)
    ops = {n.op_type for n in q8.graph.node}
    assert "Softmax" in ops


def test_int8_file_agrees_with_the_float_file(int8_pair):
    from edgetl.runtime.onnx_runner import session

    fp32, q8, _, pixels, _ = int8_pair
    x = pixels.astype(np.float32)
    a = session(fp32.SerializeToString()).run(None, {"image": x})[0]
    b = session(q8.SerializeToString()).run(None, {"image": x})[0]
    assert b.dtype == np.float32 and np.allclose(b.sum(1), 1.0, atol=1e-4)  # float probabilities out
    assert np.abs(a - b).max() < 0.1


def _have_openvino() -> bool:
    from edgetl.runtime.openvino_runner import available_devices

    return "CPU" in available_devices()


@pytest.mark.skipif(not _have_openvino(), reason="OpenVINO not installed (pip install 'edgetl[openvino]')")
def test_openvino_compiles_the_int8_file_on_int8_kernels(int8_pair):
    import openvino as ov

    _, _, path, pixels, _ = int8_pair
    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({model.inputs[0]: ov.PartialShape([1, SIZE, SIZE, 3])})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 1})  # the plugin's defaults otherwise
    precisions = [op.get_rt_info()["runtimePrecision"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops()
                  if op.get_rt_info()["layerType"].astype(str) == "Convolution"]
    assert precisions and set(precisions) <= {"u8", "i8"}, precisions
    out = compiled.create_infer_request().infer({0: pixels[:1].astype(np.float32)})[compiled.outputs[0]]
    assert out.shape == (1, 3) and np.isfinite(out).all()


@pytest.mark.parametrize("machine,flags,needed", [
    ("x86_64", "flags : fpu sse2 avx2 fma", True),                       # AVX2 only: vpmaddubsw saturates
    ("x86_64", "flags : sse2 avx2 avx512f avx512bw", True),              # AVX-512 without VNNI
    ("x86_64", "flags : sse2 avx2 avx512f avx512_vnni", False),          # VNNI: exact and fast without it
    ("x86_64", "flags : sse2 avx2 avx_vnni", False),
    ("x86_64", "", True),                                                # unknown: stay exact
    ("aarch64", "Features : fp asimd asimddp", False),                   # ARM does not read the option
])
def test_x64quantprecision_only_where_int8_kernels_saturate(machine, flags, needed):
    from edgetl.runtime.env import parse_cpuinfo
    from edgetl.runtime.onnx_runner import needs_exact_int8_config

    assert needs_exact_int8_config(machine, parse_cpuinfo(flags)["vnni_or_dotprod"]) is needed


def _precision_entry(so) -> str | None:
    try:
        return so.get_session_config_entry("session.x64quantprecision")
    except RuntimeError:  # ORT raises for an entry that was never set
        return None


def test_session_options_follow_the_cpu(monkeypatch):
    from edgetl.runtime import onnx_runner

    monkeypatch.setattr(onnx_runner, "needs_exact_int8_config", lambda: True)
    assert _precision_entry(onnx_runner.session_options(1)) == "1"
    assert _precision_entry(onnx_runner.session_options(1, exact_int8=False)) is None
    monkeypatch.setattr(onnx_runner, "needs_exact_int8_config", lambda: False)
    assert _precision_entry(onnx_runner.session_options(1)) is None


def test_bench_times_sessions_in_turns_and_reports_ratio_of_minima():
    from benchmarks.onnx_int8_bench import interleaved, ratio

    order: list[str] = []
    med = interleaved([lambda: order.append("a"), lambda: order.append("b")], rounds=3, runs=2, warmup=1)
    assert order == ["a", "b"] + ["a", "a", "b", "b"] * 3  # warm-up, then the timers take turns each round
    assert [len(m) for m in med] == [3, 3]
    r = ratio([6.0, 5.0, 7.0], [10.0, 12.0, 9.0])
    assert r["ratio_of_minima"] == round(5.0 / 9.0, 3) and r["median_round_ratio"] == round(6.0 / 10.0, 3)


def _saturating_model():
    """Pixels / 255 into a 1x1 conv whose weights are all at their channel's maximum: every pair of
    products of a bright uint8 activation (~255) and int8 weight 127 is ~64,800, twice what int16 holds."""
    import keras

    inp = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0, name="normalize")(inp)
    x = keras.layers.Conv2D(8, 1, name="widen", kernel_initializer="ones", bias_initializer="zeros")(x)
    x = keras.layers.ReLU(6.0, name="widen_relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw", depthwise_initializer="ones")(x)
    y = keras.layers.Conv2D(4, 1, name="mix", kernel_initializer="ones")(x)
    y = keras.layers.GlobalAveragePooling2D(name="pool")(y)
    return keras.Model(inp, y)


@pytest.fixture(scope="module")
def saturating_files(tmp_path_factory):
    """{False: 8-bit file, True: overflow-fixed file} of :func:`_saturating_model`, and bright pixels."""
    import onnx

    from edgetl.export import onnx as onnx_export

    fp32 = onnx_export.convert(_saturating_model())
    rng = np.random.default_rng(1)
    pixels = rng.integers(200, 256, (6, 8, 8, 3), dtype=np.uint8)
    out = {}
    for fix in (False, True):
        q8, _ = onnx_export.quantize(fp32, pixels, QuantizationConfig.for_int8(calib_samples=6, rounding="nearest",
                                                                               overflow_fix=fix))
        out[fix] = q8
        onnx.save(q8, str(tmp_path_factory.mktemp("sat") / f"fix_{fix}.onnx"))
    return fp32, out, pixels


def _weights_by_op(q8) -> dict[str, np.ndarray]:
    """The int8 weight of every Conv in the QDQ graph, by the Conv's group (1: conv/dense, >1: depthwise)."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in q8.graph.initializer}
    out_of = {o: n for n in q8.graph.node for o in n.output}
    found = {}
    for n in q8.graph.node:
        if n.op_type == "Conv":
            dq = out_of[n.input[1]]
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            found[f"{'depthwise' if group > 1 else 'conv'}:{n.name}"] = inits[dq.input[0]]
    return found


def test_overflow_fix_puts_conv_weights_on_7_bits_and_keeps_depthwise_at_8(saturating_files):
    _, files, _ = saturating_files
    w = _weights_by_op(files[True])
    assert any(k.startswith("depthwise") for k in w) and sum(k.startswith("conv") for k in w) == 2
    for name, q in w.items():
        assert q.dtype == np.int8
        assert np.abs(q.astype(int)).max() == (127 if name.startswith("depthwise") else 64), name
    assert max(np.abs(q.astype(int)).max() for q in _weights_by_op(files[False]).values()) == 127


def test_overflow_fixed_file_is_exact_with_ort_defaults_on_any_cpu(saturating_files, tmp_path):
    """ORT's default kernels and its exact (U8U8) kernels give the same numbers for the fixed file on
    every CPU, and every conv still runs as an int8 kernel. On x86 without VNNI the 8-bit file's
    default kernels saturate: the reason for the fix (checked where this machine is such a CPU)."""
    from edgetl.runtime.onnx_runner import EXACT_INT8_CONFIG, kernel_counts, needs_exact_int8_config, session

    fp32, files, pixels = saturating_files
    x = pixels.astype(np.float32)
    ref = session(fp32.SerializeToString(), 1, exact_int8=False).run(None, {"image": x})[0]
    got = {}
    for fix, q8 in files.items():
        data = q8.SerializeToString()
        default = session(data, 1, exact_int8=False).run(None, {"image": x})[0]
        exact = session(data, 1, exact_int8=False, config=EXACT_INT8_CONFIG).run(None, {"image": x})[0]
        got[fix] = (default, exact)
        assert np.abs(exact - ref).max() < 0.05 * np.abs(ref).max()  # the exact kernels follow the float model
    np.testing.assert_array_equal(got[True][0], got[True][1])
    assert kernel_counts(files[True].SerializeToString())["float"] == {}
    if needs_exact_int8_config():
        assert np.abs(got[False][0] - got[False][1]).max() > 0.05 * np.abs(ref).max()  # saturated


def test_runner_keeps_ort_defaults_for_an_overflow_safe_file(int8_pair, saturating_files, tmp_path, monkeypatch):
    """A file marked overflow-safe (export's metadata) runs on ORT's default kernels even where the
    exact option would be applied; an unmarked int8 file keeps the option there."""
    import onnx

    from edgetl.runtime import onnx_runner

    monkeypatch.setattr(onnx_runner, "needs_exact_int8_config", lambda *a, **k: True)
    _, q8, plain, *_ = int8_pair
    marked = onnx.ModelProto()
    marked.CopyFrom(q8)
    entry = marked.metadata_props.add()
    entry.key, entry.value = onnx_runner.OVERFLOW_SAFE_KEY, "7-bit conv/dense weights"
    path = tmp_path / "marked.onnx"
    onnx.save(marked, str(path))
    assert onnx_runner.overflow_safe(path) and not onnx_runner.overflow_safe(plain)
    assert onnx_runner.OnnxRunner(path, threads=1).describe()["ort_u8u8"] is False
    assert onnx_runner.OnnxRunner(plain, threads=1).describe()["ort_u8u8"] is True


@pytest.mark.parametrize("mode", ["pairs", "adaptive"])
def test_gptq_pair_budget_file_is_exact_with_ort_defaults(mode, monkeypatch):
    """The pair-budget overflow fixes end to end on the saturating model: GPTQ with the pair budget (on
    the 8-bit grid, or per channel on the finest grid its pairs allow), then ORT's quantizer (and, for the
    per-channel grid, edgetl's regrid of ORT's 8-bit values): the file holds exactly GPTQ's weights, every
    pair of adjacent input channels of the 1x1 convs is within 128, and ORT's default kernels give the
    exact kernels' outputs bit for bit."""
    from onnx import numpy_helper

    from edgetl.export import onnx as onnx_export
    from edgetl.export import ptq
    from edgetl.runtime.onnx_runner import EXACT_INT8_CONFIG, session

    monkeypatch.setattr(ptq, "OVERFLOW_MODE", mode)
    model = _saturating_model()
    rng = np.random.default_rng(2)
    for name in ("widen", "mix"):  # some channels with one large weight, some with two large neighbours
        k = model.get_layer(name).get_weights()
        k[0] = rng.uniform(-0.2, 0.2, k[0].shape).astype(np.float32)
        k[0][0, 0, 0, ::2] = 1.0
        k[0][0, 0, 1, ::3] = -0.9
        model.get_layer(name).set_weights(k)
    pixels = rng.integers(200, 256, (8, 8, 8, 3), dtype=np.uint8)
    ptq.gptq_round(model, pixels.astype(np.float32), grid_for=ptq.overflow_grid)
    q8, notes = onnx_export.quantize(onnx_export.convert(model), pixels,
                                     QuantizationConfig.for_int8(calib_samples=8, overflow_fix=True))
    inits = {t.name: numpy_helper.to_array(t) for t in q8.graph.initializer}
    out_of = {o: n for n in q8.graph.node for o in n.output}
    convs = 0
    for n in q8.graph.node:
        if n.op_type != "Conv" or next((a.i for a in n.attribute if a.name == "group"), 1) > 1:
            continue
        dq = out_of[n.input[1]]
        q = inits[dq.input[0]].astype(int)[:, :, 0, 0]  # (out, cin)
        scale = inits[dq.input[1]]
        layer = "widen" if q.shape[1] == 3 else "mix"
        want = model.get_layer(layer).get_weights()[0][0, 0].T  # (out, cin)
        np.testing.assert_allclose(q * scale[:, None], want, rtol=1e-5, atol=1e-7)  # GPTQ's values, exactly
        nn = q.shape[1] // 2 * 2  # an odd last channel pairs with the kernels' zero padding
        assert (np.abs(q[:, 0:nn:2]) + np.abs(q[:, 1:nn:2])).max() <= ptq.PAIR_MAX
        if mode == "adaptive":
            assert np.abs(q).max(axis=1).min() < 127  # some channel was put on a coarser grid of its own
        convs += 1
    assert convs == 2 and onnx_export.overflow_violations(q8) == []
    x = pixels.astype(np.float32)
    data = q8.SerializeToString()
    default = session(data, 1, exact_int8=False).run(None, {"image": x})[0]
    exact = session(data, 1, exact_int8=False, config=EXACT_INT8_CONFIG).run(None, {"image": x})[0]
    np.testing.assert_array_equal(default, exact)


def test_pair_qmax_gives_each_channel_the_finest_grid_its_pairs_allow():
    from edgetl.export import ptq

    w = np.array([[1.0, 0.0, 0.2, 0.3],     # the largest weight's neighbour is 0: all 127 steps
                  [1.0, 0.1, 0.2, 0.3],     # a neighbour of 0.1: floor(128 / 1.1) = 116 steps
                  [1.0, 1.0, 0.1, 0.0],     # two equal largest neighbours: 64 (255 * 128 fits int16)
                  [0.5, 0.0, 0.5, 0.5],     # a pair of 1.0 x max: 128 * 0.5 / 1.0 = 64
                  [1.0, 0.0, 0.6, 0.4]])    # worst pair 1.0 x max: 127
    assert ptq.pair_qmax(w).tolist() == [127, 116, 64, 64, 127]
    assert ptq.pair_qmax(np.array([[0.8, 0.4, 0.4]])).tolist() == [85]  # floor(128 * 0.8 / 1.2)


def test_overflow_violations_finds_what_8_bit_weights_break(int8_pair, saturating_files):
    """The plain 8-bit files have pairs over 128 (or stem weights over 64); the check names them, and
    finds nothing in the 7-bit file."""
    from edgetl.export.onnx import overflow_violations

    _, files, _ = saturating_files
    assert overflow_violations(files[False]) and overflow_violations(files[True]) == []
    _, q8, *_ = int8_pair
    assert overflow_violations(q8)
