"""edgetl.export.act_ranges: activation ranges chosen per tensor (MSE, percentile) for the TFLite and ONNX int8 files.

Generated histograms, and the tiny Lite-like models of test_ptq / test_onnx_int8 on generated images.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgetl.export import act_ranges


def _hist(values: np.ndarray, bins: int = act_ranges.BINS):
    return np.histogram(values, bins=bins, range=(float(values.min()), float(values.max())))


def _quant_mse(v: np.ndarray, lo: float, hi: float) -> float:
    """Mean squared error of uint8 fake quantization of ``v`` on [lo, hi] (zero point rounded)."""
    s = (hi - lo) / 255
    zp = np.round(-lo / s)
    q = (np.clip(np.round(v / s) + zp, 0, 255) - zp) * s
    return float(np.mean((v - q) ** 2))


def test_mse_range_clips_a_rare_tail_but_not_a_uniform_tensor():
    rng = np.random.default_rng(0)
    tail = np.concatenate([rng.normal(0, 1, 200_000), [40.0, -35.0]])  # two outliers set min/max
    lo, hi = act_ranges.mse_range(*_hist(tail))
    assert -35.0 < lo < -2.0 and 2.0 < hi < 40.0 and hi - lo < 0.8 * 75.0
    # the real (simulated) quantization error is smaller than with the min/max range
    assert _quant_mse(tail, lo, hi) < 0.8 * _quant_mse(tail, -35.0, 40.0)
    flat = rng.uniform(-3, 5, 200_000)
    lo, hi = act_ranges.mse_range(*_hist(flat))
    assert lo <= -0.9 * 3 and hi >= 0.9 * 5  # nothing worth clipping
    relu = np.maximum(rng.normal(0, 1, 100_000), 0)  # one-sided: lower end stays at 0
    lo, hi = act_ranges.mse_range(*_hist(relu))
    assert lo == 0.0 and 0 < hi <= relu.max()


def test_percentile_range_drops_the_tails_and_holds_zero():
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.uniform(1, 2, 1_000_000), [100.0]])
    hist, edges = _hist(v, 8192)
    width = edges[1] - edges[0]
    lo, hi = act_ranges.percentile_range(hist, edges)
    assert lo == 0.0  # widened to hold 0 (every int8 range does)
    # the right edge of the bin holding the 99.99 % quantile, not the outlier's 100
    assert np.quantile(v, 0.9999) <= hi <= np.quantile(v, 0.9999) + width
    lo, hi = act_ranges.percentile_range(hist, edges, percentile=99.0)
    assert np.quantile(v, 0.99) <= hi <= np.quantile(v, 0.99) + width
    # two-sided: the low tail is cut at the 0.01 % quantile when the range already holds 0
    w = np.concatenate([rng.normal(0, 1, 1_000_000), [-80.0, 90.0]])
    hist, edges = _hist(w, 8192)
    width = edges[1] - edges[0]
    lo, hi = act_ranges.percentile_range(hist, edges)
    assert np.quantile(w, 0.0001) - width <= lo <= np.quantile(w, 0.0001)
    assert np.quantile(w, 0.9999) <= hi <= np.quantile(w, 0.9999) + width


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="mse"):
        act_ranges.choose_range("kl", np.ones(4), np.linspace(0, 1, 5))


@pytest.fixture(scope="module")
def calibrated():
    """(converter factory, calibrated float flatbuffer, input map) of test_ptq's tiny Lite-like model."""
    from test_ptq import _model, _pixels

    from edgetl.export import ptq, tflite
    from edgetl.quant import QuantizationConfig

    model, affine = ptq.split_input_normalization(ptq.fold_batchnorm(_model())[0])
    pixels = _pixels(16, 3)
    quant = QuantizationConfig.for_int8(calib_samples=16)
    factory = lambda: tflite.converter_for(model, quant, pixels, affine)  # noqa: E731
    return factory, tflite.tflite_calibrated_model(factory), affine


def _activation_scales(raw: bytes) -> dict[str, float]:
    from edgetl.runtime.tflite_runner import inspect_interpreter

    it = inspect_interpreter(raw)
    return {t["name"]: float(t["quantization"][0]) for t in it.get_tensor_details()
            if np.dtype(t["dtype"]) in (np.int8, np.uint8)}


@pytest.mark.parametrize("method", ["mse", "percentile"])
def test_tflite_ranges_shrink_activation_scales_and_keep_input_and_output(calibrated, method):
    from edgetl.export import tflite

    factory, cal, affine = calibrated
    new, summary = act_ranges.tflite_ranges(cal, act_ranges.representative_samples(factory()), method)
    assert summary["tensors"] >= 4  # stem, depthwise, project, pool, logits
    base = tflite.tflite_denylisted_model(factory, [], affine=affine, calibrated=cal)
    raw = tflite.tflite_denylisted_model(factory, [], affine=affine, calibrated=new)
    assert tflite.io_details(raw) == tflite.io_details(base)  # uint8 input 1/128 @ 127, uint8 softmax output
    s0, s1 = _activation_scales(base), _activation_scales(raw)
    assert s0.keys() == s1.keys()
    smaller = [n for n in s0 if s1[n] < s0[n] * 0.999]
    assert smaller, "no activation range changed"
    assert all(s1[n] <= s0[n] * 1.001 for n in s0)  # a chosen range is never wider than min/max


def test_tflite_histograms_see_the_calibrated_extremes(calibrated):
    """The preserved intermediate tensors are the real activations: the calibrated min and max
    (recorded on the same images) fall in the first and last bins."""
    factory, cal, _ = calibrated
    hists, names = act_ranges.tflite_histograms(cal, act_ranges.representative_samples(factory())())
    assert hists
    for i, (counts, edges) in hists.items():
        assert counts.sum() > 0 and counts[0] > 0 and counts[-1] > 0, names[i]


def test_onnx_mse_ranges_change_the_scales_and_agree_with_minmax():
    """calib_method='mse' on the ONNX path: ORT's histograms, edgetl's choice, handed over as a MinMax cache."""
    from test_onnx_int8 import SIZE, _residual_dw_model

    from edgetl.export import onnx as onnx_export
    from edgetl.quant import QuantizationConfig
    from edgetl.runtime.onnx_runner import OnnxRunner

    fp32 = onnx_export.convert(_residual_dw_model())
    pixels = np.random.default_rng(0).integers(0, 256, (12, SIZE, SIZE, 3), dtype=np.uint8)
    quant = QuantizationConfig.for_int8(calib_samples=12, rounding="nearest")
    q_mm, _ = onnx_export.quantize(fp32, pixels, quant)
    q_mse, notes = onnx_export.quantize(fp32, pixels, quant.with_(calib_method="mse"))
    assert any("activation ranges: mse" in n for n in notes)

    def scales(proto):
        init = {t.name: t for t in proto.graph.initializer}
        out = {}
        for n in proto.graph.node:
            if n.op_type == "QuantizeLinear" and n.input[1] in init:
                from onnx import numpy_helper

                out[n.input[0]] = float(numpy_helper.to_array(init[n.input[1]]))
        return out

    a, b = scales(q_mm), scales(q_mse)
    assert a.keys() == b.keys() and a
    assert any(b[k] < a[k] * 0.999 for k in a) and all(b[k] <= a[k] * 1.001 for k in a)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        p1, p2 = Path(tmp) / "mm.onnx", Path(tmp) / "mse.onnx"
        p1.write_bytes(q_mm.SerializeToString())
        p2.write_bytes(q_mse.SerializeToString())
        x = pixels[:8]
        y1, y2 = OnnxRunner(p1).predict(x), OnnxRunner(p2).predict(x)
    assert np.abs(y1 - y2).max() < 0.2  # same model, a slightly different grid


def test_export_with_mse_ranges_records_them_and_writes_other_files(tiny_run, tmp_path):
    """ExportConfig.calib_method='mse' reaches both int8 files: the note in export.json, another graph
    than min/max, the same uint8 input contract; min/max (the default) has no ranges note."""
    from edgetl.export.api import ExportConfig, export_run

    sha = {}
    for method in ("minmax", "mse"):
        res = export_run(tiny_run, ExportConfig(formats=("tflite_int8", "onnx_int8"), calib_samples=8, doctor=False,
                                                quant_report=False, calib_method=method, out_dir=str(tmp_path / method)))
        for fmt in ("tflite_int8", "onnx_int8"):
            art = res.artifact(fmt)
            assert art.error is None, art.error
            assert art.quantization["calib_method"] == method
            noted = [n for n in art.notes if n.startswith("activation ranges: mse")]
            assert bool(noted) == (method == "mse"), art.notes
            sha[(method, fmt)] = art.quantization["graph_sha256"]
        assert res.artifact("tflite_int8").io["input_dtype"] == "uint8"
    for fmt in ("tflite_int8", "onnx_int8"):
        assert sha[("minmax", fmt)] != sha[("mse", fmt)]


def test_bad_calib_method_is_a_usage_error():
    from edgetl.errors import UsageError
    from edgetl.export.api import ExportConfig

    with pytest.raises(UsageError, match="calibration method"):
        ExportConfig(int8=True, calib_method="kl").resolve_formats()


def test_doctor_offers_the_other_tflite_ranges_priced_by_what_they_recompute():
    """Default (auto: percentile in TFLite): the remedy is the converter's min/max (the cached calibration, a
    quantization only); with min/max asked for, the remedy is percentile ranges (one histogram pass)."""
    from types import SimpleNamespace as NS

    from edgetl.export import doctor
    from edgetl.quant import QuantizationConfig

    auto = QuantizationConfig.for_int8(calib_samples=300, calib_method="auto")
    art0 = NS(export_s=90.0, verify_s=5.0, format="tflite_int8", size_bytes=1000, quantization={"calib_samples_used": 300})
    ctx0 = NS(calibrated={"cached": b""}, train_samples=list(range(50)), reports={"tflite_int8": []},
              model=NS(count_params=lambda: 10_000), config=NS(calib_samples=300, int8_quant=lambda: auto, qat_time=120.0, doctor=None))
    got0 = {r: qq for r, _, qq in doctor._remedies(ctx0, art0, 0)}
    assert doctor.RANGES_REMEDY not in got0 and got0[doctor.MINMAX_REMEDY].calib_method == "minmax"
    assert doctor._Costs(ctx0, art0).estimate(doctor.MINMAX_REMEDY, got0[doctor.MINMAX_REMEDY]) == 10.0

    q = QuantizationConfig.for_int8(calib_samples=300)
    art = NS(export_s=90.0, verify_s=5.0, format="tflite_int8", size_bytes=1000, quantization={"calib_samples_used": 300})
    ctx = NS(calibrated={"cached": b""}, train_samples=list(range(50)), reports={"tflite_int8": [], "onnx_int8": []},
             model=NS(count_params=lambda: 10_000),
             config=NS(calib_samples=300, int8_quant=lambda: q, qat_time=120.0, doctor=False))
    got = {r: (f, qq) for r, f, qq in doctor._remedies(ctx, art, 0)}
    fmt, quant = got[doctor.RANGES_REMEDY]
    assert fmt == "tflite_int8" and quant.calib_method == "percentile" and quant.rounding == "gptq"
    onnx = {r for r, _, _ in doctor._remedies(ctx, NS(**{**vars(art), "format": "onnx_int8"}), 0)}
    assert doctor.RANGES_REMEDY not in onnx and "Percentile calibration (99.999)" in onnx
    assert "Entropy calibration" not in onnx  # ORT's Entropy ranges: only when --doctor asks for every remedy
    ctx.config.doctor = True
    assert "Entropy calibration" in {r for r, _, _ in doctor._remedies(ctx, NS(**{**vars(art), "format": "onnx_int8"}), 0)}
    ctx.config.doctor = False
    c = doctor._Costs(ctx, art)
    assert c.estimate(doctor.RANGES_REMEDY, quant) == doctor.RANGES_S_PER_IMAGE * 300 + 5.0 + 5.0
    assert c.estimate(doctor.RANGES_REMEDY, quant) < c.estimate("round-to-nearest weights (no GPTQ)", q)


def test_doctor_tries_the_other_ranges_on_the_tflite_file(tiny_run, tmp_path, monkeypatch):
    """--doctor on the tiny run: the range remedy builds another file than the plain one and verifies it,
    both ways round; the default export's TFLite file has percentile ranges, its ONNX file min/max.

    The tiny run's tensors hold so few values that the 99.99 % quantile often falls in the histogram's last
    bin, which makes percentile ranges equal min/max (an identical file, seen in one CI run): the test's
    percentile is 99 %, so the two files must differ whatever the tiny model's activations are."""
    from edgetl.export import doctor
    from edgetl.export.api import ExportConfig, export_run

    real = act_ranges.choose_range
    monkeypatch.setattr(act_ranges, "choose_range", lambda m, h, e: act_ranges.percentile_range(h, e, 99.0)
                        if m == "percentile" else real(m, h, e))

    for method, remedy in (("auto", doctor.MINMAX_REMEDY), ("minmax", doctor.RANGES_REMEDY)):
        res = export_run(tiny_run, ExportConfig(formats=("tflite_int8",), calib_samples=8, doctor=True,
                                                quant_report=False, calib_method=method, out_dir=str(tmp_path / method)))
        d = next(d for d in res.doctor if d["target"] == "tflite_int8")
        (a,) = [a for a in d["attempts"] if a["remedy"] == remedy]
        assert a["error"] is None and a["agreement"] is not None and "identical_to" not in a



def test_default_export_has_percentile_ranges_in_tflite_and_minmax_in_onnx(tiny_run, tmp_path):
    from edgetl.export.api import ExportConfig, export_run

    res = export_run(tiny_run, ExportConfig(formats=("tflite_int8", "onnx_int8"), calib_samples=8, doctor=False,
                                            quant_report=False, out_dir=str(tmp_path / "out")))
    tfl, onx = res.artifact("tflite_int8"), res.artifact("onnx_int8")
    assert tfl.quantization["calib_method"] == "percentile" and onx.quantization["calib_method"] == "minmax"
    assert any(n.startswith("activation ranges: percentile") for n in tfl.notes), tfl.notes
    assert not any(n.startswith("activation ranges") for n in onx.notes)
    saved = json.loads((tmp_path / "out" / "export.json").read_text())
    assert {a["format"]: a["quantization"]["calib_method"] for a in saved["artifacts"]} == {
        "tflite_int8": "percentile", "onnx_int8": "minmax"}


def test_doctor_offers_8_bit_onnx_weights_first_when_the_overflow_fix_is_on():
    """The 7-bit overflow fix can cost a few images; the doctor's first ONNX remedy is the 8-bit file (exact
    on VNNI/ARM, and with the session option in its metadata on every x86 CPU); not offered for TFLite or
    when the fix is off already."""
    from types import SimpleNamespace as NS

    from edgetl.export import doctor
    from edgetl.quant import QuantizationConfig

    art = NS(export_s=90.0, verify_s=5.0, format="onnx_int8", size_bytes=1000, quantization={"calib_samples_used": 300})
    for fix in (True, False):
        q = QuantizationConfig.for_int8(calib_samples=300, overflow_fix=fix)
        ctx = NS(calibrated={}, train_samples=list(range(50)), reports={"onnx_int8": [], "tflite_int8": []},
                 model=NS(count_params=lambda: 10_000), config=NS(calib_samples=300, int8_quant=lambda q=q: q, qat_time=120.0, doctor=False))
        got = doctor._remedies(ctx, art, 0)
        names = [r for r, _, _ in got]
        assert (doctor.EIGHT_BIT_REMEDY in names) is fix
        if fix:
            remedy, fmt, quant = got[[r for r, _, _ in got].index(doctor.EIGHT_BIT_REMEDY)]
            assert fmt == "onnx_int8" and quant.overflow_fix is False and quant.rounding == "gptq"
            assert names.index(doctor.EIGHT_BIT_REMEDY) == 0  # the most promising ONNX remedy, pure int8 and cheap
        tfl = [r for r, _, _ in doctor._remedies(ctx, NS(**{**vars(art), "format": "tflite_int8"}), 0)]
        assert doctor.EIGHT_BIT_REMEDY not in tfl
